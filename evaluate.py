"""Evaluate the trained model on held-out, later commits, beside baselines that need no model.

Reads
    commits.json, chunks.jsonl          the history and the truth (files, change types, modules, symbols)
    training_data_{train,<split>}.pt    which commits are training history and which are targets
    model/                              the trained model (skipped with --baselines-only)

Writes
    evaluation.json                     every metric for the model and each baseline, per-commit rows
    evaluation.md                       the same as a Markdown table, with where the model loses
    evaluation.png                      a bar chart: model vs baselines

Predictors, all scored on the same target commits:
    model       generates the target commit from the exact prompt the dataset builder made for it
                (the test example's ids up to its target), parsed with the commit language
    frequent    files changed most often in the mined history
    recent      files changed most recently before the target
    cochange    association rules x -> y mined from the history (Zimmermann et al., ROSE):
                support = commits that changed x and y, confidence = support / commits that changed x;
                antecedents are the files of the last `recent_commits` commits before the target,
                a candidate scores its best rule (confidence, then support)
The baselines predict a file's change type as its most frequent one in the mined history, its module
as the one its chunks last had, and its symbols as those most often changed in it.

The changed files of a commit are those with chunks (what the commit language renders; binary and
filtered files are invisible to the model and count for no predictor). Metrics (per target commit,
then averaged over the target commits where they apply):
    recall@k            |top-k predicted files ∩ changed files| / min(k, |changed files|)
                        (1.0 means the k slots were used as well as possible)
    change_type_acc     over the changed files a predictor named in its top 10: the share whose
                        predicted main change type is one of the file's actual change types (pooled)
    module_acc          the predictor's first module is one of the commit's modules
                        (commits whose chunks have a module)
    symbol_recall       |predicted symbols ∩ changed symbols| / |changed symbols| (commits with symbols)
    loss, perplexity    the model's mean cross-entropy on target tokens (all examples of the split)

Config keys (section `evaluation`):
    split                   test | val: the split whose targets are evaluated (default test)
    max_examples            at most this many targets get a generation (evenly spaced; 0 = all); the
                            baselines are scored on the same commits (default 40)
    recent_commits          commits before the target whose files are the co-change antecedent (3)
    mine_from               train: frequency, rules, change types and symbols mined from the training
                            history only; before_target: from every commit before each target (train)
    rules_min_support       a rule needs this many co-changing commits (1)
    rules_min_confidence    and at least this confidence (0.0)
    rules_max_commit_files  commits touching more files are left out of rule mining, as in ROSE (30)
    symbols_per_file        baseline symbols predicted per predicted file (5)
    baselines_only          skip the model (no model needed) (false)
    test_from               evaluate commits from this 0-based position of commits.json on, mining from
                            those before; ignores the .pt splits, baselines only (null)
    device                  cpu, cuda, cuda:0 ... (cpu)
Generation settings (decoding, max_new_tokens, candidates) come from the `prediction` section.

    python evaluate.py --config config.yaml
    python evaluate.py --baselines-only --test-from 200 --commits outputs/commits.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

from repo2model.artifacts import atomic_open, atomic_path, iter_commit_dicts, iter_commits_with_chunks, require, write_json
from repo2model.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.config import load_config
from repo2model.errors import UserError
from repo2model.paths import ArtifactPaths

SECTION = "evaluation"
# The pipeline runs this as its last stage and passes the `prediction` section as run(prediction=...).
USES_SECTIONS = {"prediction": "prediction"}
log = logging.getLogger("evaluate")

KS = (1, 5, 10)
BASELINES = ("frequent", "recent", "cochange")


@dataclass
class Config:
    split: Literal["test", "val"] = "test"
    max_examples: int = 40
    recent_commits: int = 3
    mine_from: Literal["train", "before_target"] = "train"
    rules_min_support: int = 1
    rules_min_confidence: float = 0.0
    rules_max_commit_files: int = 30
    symbols_per_file: int = 5
    baselines_only: bool = False
    test_from: int | None = None
    device: str = "cpu"

    def __post_init__(self):
        if self.max_examples < 0:
            raise ValueError("max_examples: must be >= 0 (0 = all)")
        if self.recent_commits < 1:
            raise ValueError("recent_commits: must be >= 1")
        if self.rules_min_support < 1:
            raise ValueError("rules_min_support: must be >= 1")
        if not 0.0 <= self.rules_min_confidence <= 1.0:
            raise ValueError("rules_min_confidence: must be between 0 and 1")
        if self.rules_max_commit_files < 2:
            raise ValueError("rules_max_commit_files: must be >= 2")
        if self.symbols_per_file < 0:
            raise ValueError("symbols_per_file: must be >= 0")
        if self.test_from is not None and self.test_from < 1:
            raise ValueError("test_from: must be >= 1 (some history must come before the targets)")


# ---------------------------------------------------------------- what is compared


@dataclass
class Prediction:
    """What one predictor says about one target commit."""

    files: list[tuple[str, float]]  # ranked, best first
    change_types: dict[str, str] = field(default_factory=dict)  # file -> its main predicted change type
    modules: list[str] = field(default_factory=list)  # ranked
    symbols: list[str] = field(default_factory=list)


@dataclass
class Truth:
    """What the target commit really changed."""

    commit: str
    files: list[str]
    change_types: dict[str, set[str]]
    modules: set[str]
    symbols: set[str]

    @classmethod
    def of(cls, commit: dict, chunks: list[dict]) -> "Truth":
        change_types: dict[str, set[str]] = {}
        for chunk in chunks:
            change_types.setdefault(chunk["file"], set()).add(chunk["change_type"])
        return cls(
            commit=commit["hash"],
            files=rendered_files(chunks),
            change_types=change_types,
            modules={c["module"] for c in chunks if c.get("module")},
            symbols={c["symbol"] for c in chunks if c.get("symbol")},
        )


def rendered_files(chunks: list[dict]) -> list[str]:
    """The files of a commit as the commit language renders them (those with chunks), in order.

    Files without chunks (binary, filtered) are invisible to the model, so they count for no predictor.
    """
    return list(dict.fromkeys(chunk["file"] for chunk in chunks))


def score(pred: Prediction, truth: Truth, ks: Iterable[int] = KS) -> dict:
    """The per-commit metrics of one prediction (None where a metric does not apply)."""
    actual = set(truth.files)
    ranked = [path for path, _ in pred.files]
    row: dict = {}
    for k in ks:
        row[f"recall@{k}"] = len(set(ranked[:k]) & actual) / min(k, len(actual)) if actual else None
    hits = [path for path in ranked[: max(ks)] if path in actual and truth.change_types.get(path)]
    row["change_type_hits"] = len(hits)
    row["change_type_correct"] = sum(pred.change_types.get(path) in truth.change_types[path] for path in hits)
    row["module_acc"] = (float(bool(pred.modules) and pred.modules[0] in truth.modules) if truth.modules else None)
    row["symbol_recall"] = (len(set(pred.symbols) & truth.symbols) / len(truth.symbols) if truth.symbols else None)
    return row


def aggregate(rows: list[dict], ks: Iterable[int] = KS) -> dict:
    """Per-commit rows -> one figure per metric (means over the commits where it applies)."""

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    hits = sum(r["change_type_hits"] for r in rows)
    out = {f"recall@{k}": mean(f"recall@{k}") for k in ks}
    out["change_type_acc"] = sum(r["change_type_correct"] for r in rows) / hits if hits else None
    out["change_type_files"] = hits
    out["module_acc"] = mean("module_acc")
    out["symbol_recall"] = mean("symbol_recall")
    out["commits"] = len(rows)
    return out


# ---------------------------------------------------------------- baselines


class History:
    """What the baselines know: counters mined from past commits, and the recent commits' files.

    `mine(files, chunks)` adds a commit to the mined statistics; `observe(files)` records it as
    seen (recency and the co-change antecedent). A commit of the mined history does both.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.file_commits: Counter[str] = Counter()  # commits that changed each file
        self.pairs: Counter[tuple[str, str]] = Counter()  # commits that changed both (x, y), x != y
        self.file_types: dict[str, Counter[str]] = {}
        self.file_symbols: dict[str, Counter[str]] = {}
        self.file_module: dict[str, str] = {}
        self.last_seen: dict[str, int] = {}  # file -> position of the last commit that changed it
        self.recent: deque[list[str]] = deque(maxlen=cfg.recent_commits)
        self.position = 0
        self._cooccurring: dict[str, set[str]] = {}

    def mine(self, files: list[str], chunks: list[dict]) -> None:
        unique = sorted(set(files))
        self.file_commits.update(unique)
        if len(unique) <= self.cfg.rules_max_commit_files:
            for x in unique:
                partners = self._cooccurring.setdefault(x, set())
                for y in unique:
                    if x != y:
                        self.pairs[(x, y)] += 1
                        partners.add(y)
        for chunk in chunks:
            path = chunk["file"]
            self.file_types.setdefault(path, Counter())[chunk["change_type"]] += 1
            if chunk.get("symbol"):
                self.file_symbols.setdefault(path, Counter())[chunk["symbol"]] += 1
            if chunk.get("module"):
                self.file_module[path] = chunk["module"]

    def observe(self, files: list[str]) -> None:
        for path in files:
            self.last_seen[path] = self.position
        self.recent.append(sorted(set(files)))
        self.position += 1

    # Each baseline returns at most `limit` files, best first, ties broken by path.

    def frequent(self, limit: int) -> list[tuple[str, float]]:
        total = max(1, self.position)
        ranked = sorted(self.file_commits.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [(path, count / total) for path, count in ranked]

    def most_recent(self, limit: int) -> list[tuple[str, float]]:
        ranked = sorted(self.last_seen.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [(path, 1.0 / (1 + self.position - 1 - seen)) for path, seen in ranked]

    def cochange(self, limit: int) -> list[tuple[str, float]]:
        antecedents = sorted({path for files in self.recent for path in files})
        best: dict[str, tuple[float, int]] = {}
        for x in antecedents:
            support_x = self.file_commits.get(x, 0)
            if not support_x:
                continue
            for y in self._cooccurring.get(x, ()):
                support = self.pairs[(x, y)]
                confidence = support / support_x
                if support < self.cfg.rules_min_support or confidence < self.cfg.rules_min_confidence:
                    continue
                if (confidence, support) > best.get(y, (-1.0, -1)):
                    best[y] = (confidence, support)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:limit]
        return [(path, conf) for path, (conf, _) in ranked]

    def predict(self, name: str, limit: int = max(KS)) -> Prediction:
        files = {"frequent": self.frequent, "recent": self.most_recent, "cochange": self.cochange}[name](limit)
        change_types, modules, symbols = {}, [], []
        for path, _ in files:
            if path in self.file_types:
                change_types[path] = min(self.file_types[path].items(), key=lambda kv: (-kv[1], kv[0]))[0]
            module = self.file_module.get(path)
            if module and module not in modules:
                modules.append(module)
            ranked = sorted(self.file_symbols.get(path, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))
            symbols.extend(s for s, _ in ranked[: self.cfg.symbols_per_file] if s not in symbols)
        return Prediction(files=files, change_types=change_types, modules=modules, symbols=symbols)


def iter_history(commits_path: Path, chunks_path: Path) -> Iterator[tuple[int, dict, list[dict]]]:
    """(position, commit, its chunks) for every commit of commits.json, streaming both files."""
    for position, (commit, chunks) in enumerate(iter_commits_with_chunks(commits_path, chunks_path)):
        yield position, commit, chunks


def run_baselines(cfg: Config, paths: ArtifactPaths, targets: set[str], mined_until: int | None,
                  candidate_limit: int = 0) -> dict:
    """Score every baseline on `targets`, in one streaming pass over the history.

    `mined_until`: the last position whose commit belongs to the mined history (None: every commit
    before each target, i.e. `mine_from: before_target`). `candidate_limit` > 0: also the model's
    likelihood candidates of each target (`predict.CandidatePool.top` over every commit before it).
    Returns {"truths", "rows", "candidates"}.
    """
    import predict

    pool = predict.CandidatePool() if candidate_limit else None
    candidates: dict[str, list] = {}
    history = History(cfg)
    truths: dict[str, Truth] = {}
    rows: dict[str, dict[str, dict]] = {name: {} for name in BASELINES}
    for position, commit, chunks in iter_history(paths.commits, paths.chunks):
        files = rendered_files(chunks)
        if commit["hash"] in targets:
            truth = Truth.of(commit, chunks)
            truths[commit["hash"]] = truth
            for name in BASELINES:
                rows[name][commit["hash"]] = score(history.predict(name), truth)
            if pool is not None:
                candidates[commit["hash"]] = pool.top(candidate_limit)
        if mined_until is None or position <= mined_until:
            history.mine(files, chunks)
        history.observe(files)
        if pool is not None:
            pool.add_chunks(chunks)
    missing = targets - truths.keys()
    if missing:
        raise UserError(
            f"{len(missing)} target commits (e.g. {sorted(missing)[0][:12]}) are not in {paths.commits}: "
            "the dataset is older or newer than commits.json; rerun the dataset_builder stage"
        )
    return {"truths": truths, "rows": rows, "candidates": candidates}


# ---------------------------------------------------------------- the model


def evenly_spaced(n: int, limit: int) -> list[int]:
    """`limit` indices spread evenly over range(n) (all of them when limit is 0 or >= n)."""
    if limit == 0 or limit >= n:
        return list(range(n))
    if limit == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def target_loss(model, examples, device: str) -> dict:
    """Mean cross-entropy (nats/token) and perplexity over the target tokens of every example."""
    import torch
    from tqdm import tqdm

    total, count = 0.0, 0
    with torch.no_grad():
        for i in tqdm(range(len(examples)), desc="target loss", unit="ex", leave=False):
            ids = examples.ids(i).long().unsqueeze(0).to(device)
            labels = examples.labels(i).unsqueeze(0).to(device)
            n = int((labels[:, 1:] != -100).sum())
            if n == 0:
                continue
            loss = model(input_ids=ids, labels=labels).loss
            total += float(loss) * n
            count += n
    mean = total / count if count else None
    return {"loss": mean, "perplexity": math.exp(mean) if mean is not None else None, "target_tokens": count}


def prediction_from_output(output: dict) -> Prediction:
    """predict.py's JSON -> a Prediction."""
    files = [(f["path"], float(f["score"])) for f in output["files"]]
    change_types = {f["path"]: f["change_types"][0]["type"] for f in output["files"] if f["change_types"]}
    return Prediction(files=files, change_types=change_types, modules=list(output.get("modules", [])),
                      symbols=list(output.get("symbols", [])))


def run_model(cfg: Config, paths: ArtifactPaths, examples, chosen: list[int], truths: dict[str, Truth], seed: int,
              prediction=None, file_candidates: dict[str, list] | None = None):
    """Target loss over the whole split, and the model's scored predictions on the chosen examples
    (`file_candidates`: commit -> the files the likelihood ranking scores, see `run_baselines`)."""
    from tqdm import tqdm

    import predict

    predictor = predict.Predictor.load(paths.model_dir, prediction or predict.Config(), device=cfg.device, paths=paths)
    loss = target_loss(predictor.model, examples, cfg.device)
    rows, malformed, candidates, samples = {}, 0, 0, []
    for i in tqdm(chosen, desc="generating", unit="commit"):
        prompt = examples.ids(i)[: int(examples.target_starts[i])].tolist()
        output = predictor.predict_ids(prompt, seed=seed, candidates=(file_candidates or {}).get(examples.commits[i]))
        malformed += sum(c["malformed"] for c in output["candidates"])
        candidates += len(output["candidates"])
        truth = truths[examples.commits[i]]
        rows[truth.commit] = score(prediction_from_output(output), truth)
        if len(samples) < 3:
            samples.append({"commit": truth.commit, "actual_files": truth.files,
                            "predicted_files": [f["path"] for f in output["files"][:10]],
                            "raw_text": output["candidates"][0]["text"][:2000] if output["candidates"] else ""})
    return loss, rows, {"malformed_candidates": malformed, "candidates": candidates, "samples": samples}


# ---------------------------------------------------------------- the run


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42, prediction=None) -> dict:
    """Evaluate; `prediction` is the `prediction` section (predict.Config) for the generation settings."""
    started = time.monotonic()
    require(paths.commits, "git_scraper")
    require(paths.chunks, "semantic_chunker")
    examples = None
    if cfg.test_from is not None:
        positions = {c["hash"]: i for i, c in enumerate(iter_commit_dicts(paths.commits))}
        if cfg.test_from >= len(positions):
            raise UserError(f"evaluation.test_from: {cfg.test_from} is past the last commit ({len(positions)} commits)")
        target_order = [h for h, i in sorted(positions.items(), key=lambda kv: kv[1]) if i >= cfg.test_from]
        mined_until = cfg.test_from - 1
        use_model = False
    else:
        from repo2model.examples import ExampleSet

        examples = ExampleSet.load(require(paths.split_data(cfg.split), "dataset_builder"))
        train = ExampleSet.load(require(paths.train_data, "dataset_builder"))
        if not len(examples):
            raise UserError(f"{paths.split_data(cfg.split)}: has no examples: the history is too short to evaluate")
        train_commits = set(train.commits)
        positions = {c["hash"]: i for i, c in enumerate(iter_commit_dicts(paths.commits))}
        known = [positions[h] for h in train_commits if h in positions]
        mined_until = max(known) if known else -1
        use_model = not cfg.baselines_only
        if use_model:
            require(paths.model_dir, "train_model")
        chosen = evenly_spaced(len(examples), cfg.max_examples if use_model else 0)
        target_order = [examples.commits[i] for i in chosen]
    if cfg.mine_from == "before_target":
        mined_until = None

    if use_model:
        import predict

        prediction = prediction or predict.Config()
    ranks = use_model and prediction.file_ranking != "generation"
    baselines = run_baselines(cfg, paths, set(target_order), mined_until,
                              candidate_limit=prediction.rank_candidates if ranks else 0)
    truths, rows = baselines["truths"], baselines["rows"]
    model_info: dict = {}
    if use_model:
        loss, model_rows, generation = run_model(cfg, paths, examples, chosen, truths, seed, prediction,
                                                 baselines["candidates"])
        rows = {"model": model_rows, **rows}
        model_info = {**loss, **generation}

    metrics = {name: aggregate([by_commit[h] for h in target_order]) for name, by_commit in rows.items()}
    if use_model:
        metrics["model"]["loss"] = model_info["loss"]
        metrics["model"]["perplexity"] = model_info["perplexity"]
    result = {
        "split": "positions" if cfg.test_from is not None else cfg.split,
        "targets": len(target_order),
        "mined_history": "before_target" if mined_until is None else f"commits 0..{mined_until}",
        "metrics": metrics,
        "model": model_info or None,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        "per_commit": [
            {"commit": h, **{name: {k: v for k, v in by_commit[h].items() if not k.startswith("change_type_")}
                              for name, by_commit in rows.items()}}
            for h in target_order
        ],
    }
    write_json(paths.evaluation, result)
    table = markdown_report(result)
    with atomic_open(report_path(paths)) as fh:
        fh.write(table)
    write_chart(metrics, chart_path(paths))
    summary = {
        "evaluation": str(paths.evaluation),
        "report": str(report_path(paths)),
        "chart": str(chart_path(paths)),
        "targets": len(target_order),
        "metrics": {name: {k: m[k] for k in ("recall@1", "recall@5", "recall@10")} for name, m in metrics.items()},
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info(
        "evaluated %d target commits in %.1fs: %s -> %s",
        len(target_order), summary["seconds"],
        ", ".join(f"{name} recall@5 {fmt(m['recall@5'])}" for name, m in metrics.items()),
        paths.evaluation,
    )
    return summary


def report_path(paths: ArtifactPaths) -> Path:
    return paths.evaluation.with_suffix(".md")


def chart_path(paths: ArtifactPaths) -> Path:
    return paths.evaluation.with_suffix(".png")


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    inputs = [paths.commits, paths.chunks]
    if cfg.test_from is None:
        inputs += [paths.train_data, paths.split_data(cfg.split)]
        if not cfg.baselines_only:
            inputs.append(paths.model_dir)
    return inputs


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.evaluation, report_path(paths), chart_path(paths)]


# ---------------------------------------------------------------- report


METRIC_ROWS = ("recall@1", "recall@5", "recall@10", "change_type_acc", "module_acc", "symbol_recall")


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_report(result: dict) -> str:
    metrics = result["metrics"]
    names = list(metrics)
    lines = [
        f"# Evaluation on {result['targets']} target commits ({result['split']} split)",
        "",
        f"Baselines mined from: {result['mined_history']}. Higher is better; best of each row in bold.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key in METRIC_ROWS:
        values = [metrics[n].get(key) for n in names]
        present = [v for v in values if v is not None]
        best = max(present) if present else None
        bold = len(present) > 1 and min(present) < best  # no bold when every predictor ties
        cells = [f"**{fmt(v)}**" if bold and v == best else fmt(v) for v in values]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if "model" in metrics:
        model = metrics["model"]
        lines.append(f"| target loss (nats/token) | {fmt(model.get('loss'))} |" + " |" * (len(names) - 1))
        lines.append(f"| target perplexity | {fmt(model.get('perplexity'))} |" + " |" * (len(names) - 1))
        lines += ["", "## Where the model loses", ""]
        losses = []
        for key in METRIC_ROWS:
            mine = model.get(key)
            for name in BASELINES:
                theirs = metrics[name].get(key)
                if mine is not None and theirs is not None and theirs > mine:
                    losses.append(f"- {key}: model {fmt(mine)} < {name} {fmt(theirs)}")
        lines += losses or ["- nowhere: the model matches or beats every baseline on every metric."]
        info = result.get("model") or {}
        if info.get("candidates"):
            lines += ["", f"Malformed generations: {info['malformed_candidates']} of {info['candidates']} candidates."]
    lines += [
        "",
        "recall@k = |top-k ∩ changed| / min(k, |changed|); change_type_acc pools the changed files a predictor "
        "named in its top 10; module_acc: the first predicted module is one of the commit's modules.",
        "",
    ]
    return "\n".join(lines)


def write_chart(metrics: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics)
    keys = list(METRIC_ROWS)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    for j, name in enumerate(names):
        values = [metrics[name].get(k) or 0.0 for k in keys]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(keys))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    targets = metrics[names[0]]["commits"] if names else 0
    ax.set_title(f"Model vs baselines on {targets} target commits")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


# ---------------------------------------------------------------- CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--model", type=Path, help="the trained model folder (default: <output_dir>/model)")
    parser.add_argument("--commits", type=Path, help="commits.json (default: <output_dir>/commits.json)")
    parser.add_argument("--chunks", type=Path, help="chunks.jsonl (default: <output_dir>/chunks.jsonl)")
    parser.add_argument("--output", type=Path, help="evaluation.json (the .md and .png go beside it)")
    parser.add_argument("--split", choices=["test", "val"], help="override evaluation.split")
    parser.add_argument("--max-examples", type=int, help="override evaluation.max_examples (0 = all)")
    parser.add_argument("--baselines-only", action="store_true", help="score the baselines only (no model)")
    parser.add_argument("--test-from", type=int, help="targets from this commit position on (baselines only)")
    parser.add_argument("--device", help="override evaluation.device")
    parser.add_argument("--max-new-tokens", type=int, help="override prediction.max_new_tokens")
    parser.add_argument("--seed", type=int, help="override pipeline.seed")
    args = parser.parse_args(argv)
    cfg, pipeline_cfg, paths = load_stage(args, SECTION, Config)
    overrides = {}
    for name in ("split", "max_examples", "test_from", "device"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.baselines_only or args.test_from is not None:
        overrides["baselines_only"] = True
    cfg = apply_overrides(cfg, SECTION, overrides)
    for name, attr in (("model", "model_dir"), ("commits", "commits"), ("chunks", "chunks"), ("output", "evaluation")):
        if getattr(args, name) is not None:
            paths = dataclasses.replace(paths, **{attr: getattr(args, name).resolve()})
    prediction = None
    if not cfg.baselines_only:
        import predict

        prediction = predict.Config()
        if args.config is not None:
            prediction = load_config(args.config, {"prediction": predict.Config}, strict_sections=False)["prediction"]
        if args.max_new_tokens is not None:
            try:
                prediction = dataclasses.replace(prediction, max_new_tokens=args.max_new_tokens)
            except ValueError as exc:
                raise UserError(f"prediction.{exc}") from None
        if prediction.model_dir is not None and args.model is None:
            paths = dataclasses.replace(paths, model_dir=prediction.model_dir)
    run(cfg, paths, seed=args.seed if args.seed is not None else pipeline_cfg.seed, prediction=prediction)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
