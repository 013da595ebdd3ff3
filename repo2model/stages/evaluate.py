"""Evaluate every predictor on held-out, later commits: the baselines, the learned ranker, the language model.

Reads
    commits.json, chunks.jsonl          the history and the truth (files, change types, modules, symbols)
    training_data_{train,<split>}.pt    which commits are training history and which are targets
    the repository                      (named in commits.json) for code search, the tree and symbols at each
                                        target's parent; without it those parts are left out
    ranker/                             the learned ranker (train_ranker.py), if there is one
    model/                              the trained language model (skipped with --baselines-only)
Writes
    evaluation.json                     every metric of every predictor, per commit-size bucket, per commit
    evaluation.md                       the same as tables, the ranker's feature importances, where each loses
    evaluation.png                      every predictor side by side (both: repo2model.ranking.report)

Predictors, all scored on the same target commits, each knowing only the commits before its target:
    frequent, recent, cochange, similar_commits, code_search, fusion
                the baselines of repo2model.ranking.baselines (no model), on every target
    ranker      the LightGBM ranker over their signals (train_ranker.py), on every target
    ranker_lm   the ranker with the language model's features (when both exist), on every target
    model       the language model alone: generates the target from the exact prompt the dataset builder made
                for it and ranks files as `predict.file_ranking` says; on `max_examples` targets (evenly
                spaced: generation is slow)
Structure: a baseline names each predicted file's most frequent change type, the module its chunks last had,
and its most often changed symbols; the rankers use the change-type classifier (else the most frequent type)
and rank each predicted file's units at the parent by BM25 against the task, recency and frequency
(repo2model.ranking.symbols). With a symbol ranker in the ranker folder, `symbols` (evaluation.json, and a section
of evaluation.md) holds symbol recall@5/@10 and MRR of the symbol ranker, of that untrained fusion and of each
single signal, over the changed symbols that existed at the parent, per commit size
(repo2model.ranking.symbol_training). The rankers' feature rows of the test targets are those train_ranker saved in
the ranker folder when they were built with the same settings (baseline keys, mining, repository, history; the
language model's columns only from the same model), else they are computed.

The situation measured (`messages` in evaluation.json, a section of evaluation.md; repo2model.ranking.situation):
how many targets' messages are uninformative (boilerplate repeated across the history, or near-empty), every
predictor's figures on the informative ones apart, and the ranker's candidate recall by commit size.

The changed files of a commit are those with chunks (what the commit language renders; binary and filtered
files count for no predictor). Metrics are defined in repo2model.ranking.metrics (recall@k with min(k, |changed|)
as denominator, MRR, change-type accuracy, module accuracy, symbol recall); recall@k and MRR are also given
per commit size (changed files: 1, 2-3, 4-10, 11-30, 31+) so that large commits are not hidden by the mean.

Predictions as you code (repo2model.ranking.live_evaluation), on the same targets: `work_in_progress` (each
target's first 1, 2 and half of its files revealed: recall@k of the rest for the live ranker, the ranker without
the in-progress features and co-change from the revealed files alone), `who` (likely authors against the author of
the last commit) and `when` (the expected wait to the next commit touching the top files against the median gap
between commits), in evaluation.json and evaluation.md.

Config keys (section `evaluate`):
    split                   test | val: the split whose targets are evaluated (test)
    max_examples            targets that get a generation (evenly spaced; 0 = all) (40)
    recent_commits          commits before the target whose files are the co-change antecedent (3)
    mine_from               before_target: counts, rules, types and symbols from every commit before each target;
                            train: frozen at the end of the training history (before_target)
    rules_min_support       a co-change rule needs this many co-changing commits (1)
    rules_min_confidence    and at least this confidence (0.0)
    rules_max_commit_files  commits touching more files are left out of rule mining, as in ROSE (30)
    similar_commits         similar_commits: the most similar earlier commits whose files score (50)
    code_path_weight        code_search: a file's path words count this many times in its document (3)
    fusion_k                fusion: the k of 1 / (k + rank) (60)
    symbols_per_file        symbols predicted per predicted file (5)
    baselines_only          skip the language model (no model needed) (false)
    test_from               evaluate commits from this 0-based position of commits.json on, mining from those
                            before; ignores the .pt splits, no language model (null)
    device                  cpu, cuda, cuda:0 ... (cpu)
    update                  score only the targets the live evaluation (<output_dir>/evaluation.json, made
                            with the same settings) has not scored, carrying the others' figures when the
                            history before them is the same; generations for the scored ones, as many as
                            their share of max_examples; `update` in evaluation.json says what was carried
                            (pipeline.py --update sets it) (false)
The baseline keys also shape the ranker's features (train_ranker reads them). Generation settings
(decoding, max_new_tokens, file_ranking) come from the `predict` section.

    python evaluate.py --config config.yaml
    python evaluate.py --baselines-only --test-from 200 --commits outputs/commits.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from repo2model.core.artifacts import atomic_open, iter_commit_dicts, read_json, require, write_json
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.config import section_dict
from repo2model.core.errors import UserError, first_line
from repo2model.core.paths import ArtifactPaths
from repo2model.core.progress import progress
from repo2model.language.examples import ExampleSet
from repo2model.ranking.baselines import BASELINES, baseline_predictions
from repo2model.ranking.config import EvaluationConfig
from repo2model.ranking.features import CandidateRows, LMScorer, lm_scorer
from repo2model.ranking.file_ranking import ranker_predictions
from repo2model.ranking.live_evaluation import LiveEvaluation, live_report
from repo2model.ranking.metrics import KS, Prediction, Truth, aggregate, by_size, fmt, score
from repo2model.ranking.new_files import new_file_figures
from repo2model.ranking.ranker import Ranker, find_ranker, language_model_identity, reusable_test_rows, rows_settings
from repo2model.ranking.row_cache import chunks_digest
from repo2model.ranking.report import markdown_report, write_chart
from repo2model.ranking.situation import Situation, situation_report
from repo2model.ranking.symbol_training import SymbolEvaluation, symbol_report
from repo2model.ranking.symbols import SymbolIndexes
from repo2model.ranking.targets import repository_of, walk_targets
from repo2model.serving.backends import LanguageModelBackend
from repo2model.serving.prediction import Prediction as ModelPrediction  # the model's answer, scored as a Prediction
from repo2model.serving.predictor import CandidatePool, Predictor
from repo2model.serving.settings import PredictionConfig, load_prediction_config

SECTION = "evaluate"
# The packages it runs, which its fingerprint covers (export: llama.cpp scores with predict.backend llama_cpp).
CODE = ("core", "git", "code", "language", "training", "retrieval", "ranking", "serving", "export")
Config = EvaluationConfig
# The pipeline runs this as its last stage and passes the `predict` section as run(prediction=...).
USES_SECTIONS = {"prediction": "predict"}
log = logging.getLogger("evaluate")


@dataclass
class Plan:
    """Which commits are targets, what is mined, and which targets the language model generates for."""

    order: list[str]  # target commits in history order
    split: str
    mined_until: int | None  # last mined position (None: every commit before each target)
    examples: ExampleSet | None = None  # the split's examples (prompts for the language model)
    chosen: list[int] = dataclasses.field(default_factory=list)  # example indices that get a generation
    scored: list[str] | None = None  # an update: the targets this run scores (None: every one)
    history: dict[str, str] = dataclasses.field(default_factory=dict)  # target -> digest of the history up to it

    def scored_order(self) -> list[str]:
        return self.order if self.scored is None else [h for h in self.order if h in set(self.scored)]

    def scored_examples(self) -> list[int] | None:
        """The example indices of the scored targets (None: every example)."""
        if self.scored is None or self.examples is None:
            return None
        scored = set(self.scored)
        return [i for i, commit in enumerate(self.examples.commits) if commit in scored]

    def prompts(self) -> dict[str, list[int]]:
        """Each target's prompt: its example's ids up to the target, as the dataset builder made it."""
        if self.examples is None:
            return {}
        return {self.examples.commits[i]: self.examples.ids(i)[: int(self.examples.target_starts[i])].tolist()
                for i in range(len(self.examples))}


# ---------------------------------------------------------------- the run


def run(cfg: EvaluationConfig, paths: ArtifactPaths, seed: int = 42,
        prediction: PredictionConfig | None = None) -> dict:
    """Evaluate; `prediction` is the `predict` section (generation settings, model folder)."""
    started = time.monotonic()
    require(paths.commits, "git_scraper")
    require(paths.chunks, "semantic_chunker")
    prediction = prediction or PredictionConfig()
    plan = plan_targets(cfg, paths)
    model_dir = prediction.model_dir or paths.model_dir
    ranker = load_ranker(paths, model_dir)
    predictor = None
    if plan.examples is not None and not cfg.baselines_only:
        predictor = Predictor.load(require(Path(model_dir), "train_model"), prediction, device=cfg.device, paths=paths,
                                   ranker=False)  # the model alone: the rankers are scored apart
    repo = repository_of(paths.commits)
    if repo is None:
        log.warning("the repository of %s is not there: code search, the tree and symbols at the parent are left out",
                    paths.commits)
    live = LiveEvaluation(ranker)  # the work in progress, who and when, on the same targets
    symbols = SymbolEvaluation(ranker, cfg.symbols_per_file)  # the symbol ranker's recall, on the same targets
    situation = Situation(ranker)  # uninformative messages, candidate recall by commit size
    carried = carried_evaluation(cfg, paths, plan) if cfg.update else None
    chosen = plan.chosen
    if carried is not None:
        plan.scored = [h for h in plan.order if h not in carried.rows]
        plan.chosen = update_generations(cfg, plan)
    rows, generation = score_targets(cfg, paths, plan, repo, ranker, predictor, prediction, seed, live, symbols,
                                     situation)
    if carried is not None and any(carried.history[h] != plan.history.get(h) for h in carried.rows):
        # The history before a carried target was rewritten (a force-push): nothing is carried, all scored again.
        log.info("evaluate: update: the history before the live evaluation's targets changed: every target is scored")
        carried, plan.scored, plan.chosen = None, None, chosen
        live, symbols, situation = LiveEvaluation(ranker), SymbolEvaluation(ranker, cfg.symbols_per_file), Situation(ranker)
        rows, generation = score_targets(cfg, paths, plan, repo, ranker, predictor, prediction, seed, live, symbols,
                                         situation)
    for commit, per in (carried.rows if carried is not None else {}).items():
        for name, row in per.items():
            rows.setdefault(name, {})[commit] = row
    model_info: dict = {}
    if predictor is not None:
        model_info = {**target_loss(predictor.lm, plan.examples, plan.scored_examples()), **generation}
    result = {**evaluation_result(cfg, plan, rows, repo is not None, ranker, model_info), **live.figures()}
    result.update(symbols.figures())
    result.update(situation.figures(rows, plan.scored_order()))
    if carried is not None:
        result["update"] = update_figures(plan, rows, carried)
    write_outputs(result, paths)
    return summarize(result, paths, started)


@dataclass
class Carried:
    """What an update's evaluation keeps from the live evaluation: each target's figures (every predictor) and the
    digest of the history up to it, which must still be the same."""

    rows: dict[str, dict[str, dict]]  # commit -> predictor -> its per-commit row
    history: dict[str, str]  # commit -> history digest
    model: dict | None  # the live evaluation's model figures, for the record


def carried_evaluation(cfg: EvaluationConfig, paths: ArtifactPaths, plan: Plan) -> Carried | None:
    """The live output folder's evaluation.json, when an update's evaluation can carry its targets' figures: the
    same split and settings (baselines, mining, generation count), and targets of this plan among its own."""
    live = ArtifactPaths.under(paths.output_dir).evaluation
    if live == paths.evaluation or not live.is_file():
        return None
    try:
        previous = read_json(live)
    except (OSError, ValueError) as exc:
        log.info("evaluate: update: %s is not readable (%s): every target is scored", live, first_line(exc))
        return None
    same = {k: v for k, v in section_dict(cfg).items() if k != "update"}
    before = {k: v for k, v in (previous.get("config") or {}).items() if k != "update"}
    if before != same or previous.get("split") != plan.split:
        log.info("evaluate: update: the live evaluation was made with other settings: every target is scored")
        return None
    order = set(plan.order)
    rows, history = {}, {}
    for entry in previous.get("per_commit") or []:
        commit = entry.get("commit")
        if commit in order and entry.get("history"):
            rows[commit] = {k: v for k, v in entry.items() if k not in ("commit", "history")}
            history[commit] = entry["history"]
    return Carried(rows, history, previous.get("model"))


def update_generations(cfg: EvaluationConfig, plan: Plan) -> list[int]:
    """An update's generations: evenly spaced over the targets it scores, as many as their share of the split."""
    if cfg.baselines_only or plan.examples is None:
        return []
    scored = set(plan.scored or ())
    indices = [i for i, commit in enumerate(plan.examples.commits) if commit in scored]
    limit = len(indices) if not cfg.max_examples else max(1, round(cfg.max_examples * len(indices) / len(plan.order)))
    return [indices[i] for i in evenly_spaced(len(indices), limit)] if indices else []


def update_figures(plan: Plan, rows: dict[str, dict[str, dict]], carried: Carried) -> dict:
    """evaluation.json's `update`: which targets this run scored, which it carried, and the figures of the scored
    ones alone (the new model and ranker on the targets new since the last evaluation)."""
    scored = plan.scored_order()
    return {
        "scored": len(scored),
        "carried": len(plan.order) - len(scored),
        "note": ("an update scores the targets new since the live evaluation with the updated model and ranker, and "
                 "carries every other target's figures from the live evaluation (the model and ranker it replaced); "
                 "the work-in-progress, who/when, symbol and message sections and the model's loss are of the scored "
                 "targets only; a full run scores them all"),
        "metrics_scored": {name: aggregate([per[h] for h in scored if h in per]) for name, per in rows.items()},
        "replaced_model": carried.model and {k: carried.model.get(k) for k in ("loss", "perplexity", "target_tokens")},
    }


def evaluation_result(cfg: EvaluationConfig, plan: Plan, rows: dict[str, dict[str, dict]], code_search: bool,
                      ranker: Ranker | None, model_info: dict) -> dict:
    """evaluation.json: every predictor's figures over the targets, per commit size and per commit."""
    names = [n for n in ("ranker_lm", "ranker", "model", *BASELINES) if n in rows]
    metrics = {name: aggregate([rows[name][h] for h in plan.order if h in rows[name]]) for name in names}
    if model_info:
        metrics["model"].update(loss=model_info["loss"], perplexity=model_info["perplexity"])
    return {
        "split": plan.split,
        "targets": len(plan.order),
        "mined_history": "before_target" if plan.mined_until is None else f"commits 0..{plan.mined_until}",
        "code_search": code_search,
        "metrics": metrics,
        "by_size": {name: by_size([rows[name][h] for h in plan.order if h in rows[name]]) for name in names},
        "ranker": ranker_info(ranker),
        "model": model_info or None,
        "config": section_dict(cfg),
        "per_commit": [  # with the history digest up to each target: what an update may carry (carried_evaluation)
            {"commit": h, "history": plan.history.get(h), **{name: rows[name][h] for name in names if h in rows[name]}}
            for h in plan.order
        ],
    }


def write_outputs(result: dict, paths: ArtifactPaths) -> None:
    write_json(paths.evaluation, result)
    with atomic_open(report_path(paths)) as fh:
        fh.write("".join(line + "\n" for line in update_report(result)))
        fh.write(markdown_report(result) + "".join(line + "\n" for line in live_report(result)))
        fh.write("".join(line + "\n" for line in symbol_report(result)))
        fh.write("".join(line + "\n" for line in situation_report(result)))
    write_chart(result["metrics"], chart_path(paths))


def update_report(result: dict) -> list[str]:
    """evaluation.md's first lines after an update: what was scored and what carried ([] otherwise)."""
    update = result.get("update")
    if not update:
        return []
    scored = update["metrics_scored"]
    figures = ", ".join(f"{name} recall@5 {fmt(scored[name].get('recall@5'))}"
                        for name in ("ranker_lm", "ranker", "fusion") if name in scored)
    return [f"**Update:** {update['scored']} of {update['scored'] + update['carried']} targets scored by this model "
            f"and ranker ({figures} on them); the other {update['carried']} carried from the evaluation of the model "
            "it replaced. The work-in-progress, who/when, symbol and message sections and the model's loss are of "
            "the scored targets only; a full run scores them all.", ""]


def summarize(result: dict, paths: ArtifactPaths, started: float) -> dict:
    """The stage's summary (and its log line)."""
    metrics = result["metrics"]
    summary = {
        "evaluation": str(paths.evaluation),
        "report": str(report_path(paths)),
        "chart": str(chart_path(paths)),
        "targets": result["targets"],
        "metrics": {name: {k: m[k] for k in ("recall@1", "recall@5", "recall@10", "mrr")}
                    for name, m in metrics.items()},
        "seconds": round(time.monotonic() - started, 1),
    }
    update = result.get("update")
    carried = f" ({update['scored']} scored, {update['carried']} carried from the live evaluation)" if update else ""
    log.info("evaluated %d target commits%s in %.1fs: %s -> %s", result["targets"], carried, summary["seconds"],
             ", ".join(f"{name} recall@5 {fmt(m['recall@5'])}" for name, m in metrics.items()), paths.evaluation)
    return summary


def plan_targets(cfg: EvaluationConfig, paths: ArtifactPaths) -> Plan:
    positions = {c["hash"]: i for i, c in enumerate(iter_commit_dicts(paths.commits))}
    if cfg.test_from is not None:
        if cfg.test_from >= len(positions):
            raise UserError(f"evaluate.test_from: {cfg.test_from} is past the last commit ({len(positions)} commits)")
        order = [h for h, i in sorted(positions.items(), key=lambda kv: kv[1]) if i >= cfg.test_from]
        return Plan(order, "positions", None if cfg.mine_from == "before_target" else cfg.test_from - 1)
    examples = ExampleSet.load(require(paths.split_data(cfg.split), "dataset_builder"))
    train = ExampleSet.load(require(paths.train_data, "dataset_builder"))
    if not len(examples):
        raise UserError(f"{paths.split_data(cfg.split)}: has no examples: the history is too short to evaluate")
    known = [positions[h] for h in train.commits if h in positions]
    mined_until = None if cfg.mine_from == "before_target" else (max(known) if known else -1)
    chosen = [] if cfg.baselines_only else evenly_spaced(len(examples), cfg.max_examples)
    order = sorted((h for h in examples.commits if h in positions), key=positions.__getitem__)
    missing = set(examples.commits) - set(order)
    if missing:
        raise UserError(f"{len(missing)} target commits (e.g. {sorted(missing)[0][:12]}) are not in {paths.commits}: "
                        "the dataset is older or newer than commits.json; rerun the dataset_builder stage")
    return Plan(order, cfg.split, mined_until, examples, chosen)


def load_ranker(paths: ArtifactPaths, model_dir: Path) -> Ranker | None:
    folder = find_ranker(paths.ranker_dir, Path(model_dir) / "ranker")
    if folder is None:
        log.info("no ranker in %s: the baselines and the model only (run the train_ranker stage for it)",
                 paths.ranker_dir)
        return None
    return Ranker.load(folder)


def ranker_info(ranker: Ranker | None) -> dict | None:
    if ranker is None:
        return None
    metrics = ranker.metrics
    return {"folder": str(ranker.folder), "feature_importance": metrics.get("feature_importance"),
            "feature_importance_lm": metrics.get("feature_importance_lm"), "trees": metrics.get("trees"),
            "fit_seconds": metrics.get("fit_seconds"), "change_types": metrics.get("change_types"),
            "lm_choice": metrics.get("lm_choice"), "prior": metrics.get("prior"),
            "prior_ablation": metrics.get("prior_ablation")}


def score_targets(cfg: EvaluationConfig, paths: ArtifactPaths, plan: Plan, repo: Path | None, ranker: Ranker | None,
                  predictor: Predictor | None, prediction: PredictionConfig, seed: int,
                  live: LiveEvaluation | None = None, symbols: SymbolEvaluation | None = None,
                  situation: Situation | None = None) -> tuple[dict, dict]:
    """One pass over the history scoring every predictor on every target (the model: on the chosen ones), and
    `live`'s figures. Returns ({predictor: {commit: row}}, the generation's figures)."""
    rows: dict[str, dict[str, dict]] = {}
    prompts = plan.prompts() if predictor is not None else {}
    generated = {plan.examples.commits[i] for i in plan.chosen} if predictor is not None else set()
    generation = {"malformed_candidates": 0, "candidates": 0, "samples": []}
    pool = CandidatePool()
    baselines = cfg.baselines()
    if ranker is not None and ranker.settings.get("baselines") != section_dict(baselines):
        log.warning("the ranker was trained with other baseline settings (%s): its features are computed with the "
                    "evaluation's here", ranker.settings.get("baselines"))
    saved = saved_rows(cfg, paths, plan, repo, ranker, predictor, prediction)
    indexes = SymbolIndexes()
    history, wanted = hashlib.blake2b(digest_size=16), set(plan.order)

    def on_commit(commit, chunks):
        history.update(commit["hash"].encode())
        history.update(chunks_digest(chunks))
        if commit["hash"] in wanted:
            plan.history[commit["hash"]] = history.hexdigest()
        pool.add_chunks(chunks)
        if live is not None:
            live.on_commit(commit, chunks)
        if symbols is not None:
            symbols.on_commit(commit, chunks)

    order = plan.scored_order()
    walk = walk_targets(paths.commits, paths.chunks, {h: plan.split for h in order}, baselines, repo,
                        plan.mined_until, on_commit=on_commit)
    for state in progress(walk, total=len(order), desc="evaluating", unit="targets"):
        target = state.target
        truth = Truth.of(target.commit, target.chunks)
        predictions = baseline_predictions(state.past, state.rankings, max(KS))
        if ranker is not None:
            lm = model_scorer(predictor, prediction, prompts.get(target.commit), state.past.file_module)
            predictions.update(ranker_predictions(ranker, state, lm if ranker.booster_lm is not None else None,
                                                  saved.get(target.commit), cfg.symbols_per_file, indexes))
        created = [f for f in truth.files if state.in_tree(f) == 0.0] if state.code is not None else None
        for name, predicted in predictions.items():
            row = rows.setdefault(name, {})[target.commit] = score(predicted, truth)
            if created is not None and name.startswith("ranker"):
                row.update(new_file_figures(predicted.new_files, created))
        if live is not None:
            live.add(state, [p for p, _ in predictions.get("ranker", predictions["fusion"]).files])
        if symbols is not None and ranker is not None:
            symbols.add(state, saved.get(target.commit))
        if situation is not None:
            situation.add(state, saved.get(target.commit))
        if target.commit in generated:
            output = predictor.predict_ids(prompts[target.commit], seed=seed,
                                           candidates=pool.top(prediction.rank_candidates))
            rows.setdefault("model", {})[target.commit] = score(prediction_from_output(output), truth)
            record_generation(generation, output, truth)
    return rows, generation


def saved_rows(cfg: EvaluationConfig, paths: ArtifactPaths, plan: Plan, repo: Path | None, ranker: Ranker | None,
               predictor: Predictor | None, prediction: PredictionConfig) -> dict[str, CandidateRows]:
    """The test targets' rows train_ranker saved, when it built them as this evaluation would ({} otherwise)."""
    if ranker is None:
        return {}
    identity = None
    if predictor is not None and ranker.booster_lm is not None:
        model_dir = prediction.model_dir or paths.model_dir
        identity = language_model_identity(model_dir, cfg.device, section_dict(prediction))
    settings = rows_settings(cfg.baselines(), repo, plan.mined_until, paths.commits, paths.chunks, identity)
    rows = reusable_test_rows(ranker, settings)
    if rows:
        log.info("the ranker's rows of %d test targets reused (saved by train_ranker)",
                 len(set(rows) & set(plan.order)))
    return rows


def model_scorer(predictor: Predictor | None, prediction: PredictionConfig, prompt: list[int] | None,
                 modules: dict[str, str]) -> LMScorer | None:
    """The language model's log-probabilities of candidate files after the target's prompt (None without them)."""
    if predictor is None or prompt is None:
        return None
    return lm_scorer(lambda files: predictor.score_files(prompt, files, prediction), modules)


def record_generation(generation: dict, output: ModelPrediction, truth: Truth) -> None:
    """Count the generation's malformed candidates, and keep the first three as samples."""
    generation["malformed_candidates"] += output.malformed_candidates
    generation["candidates"] += len(output.candidates)
    if len(generation["samples"]) < 3:
        generation["samples"].append({
            "commit": truth.commit, "actual_files": truth.files,
            "predicted_files": [f.path for f in output.files[:10]],
            "raw_text": output.candidates[0].text[:2000] if output.candidates else ""})


# ---------------------------------------------------------------- the language model


def evenly_spaced(n: int, limit: int) -> list[int]:
    """`limit` indices spread evenly over range(n) (all of them when limit is 0 or >= n)."""
    if limit == 0 or limit >= n:
        return list(range(n))
    if limit == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def target_loss(lm: LanguageModelBackend, examples: ExampleSet, indices: list[int] | None = None) -> dict:
    """Mean cross-entropy (nats/token) and perplexity over the target tokens of every example (or of `indices`),
    from the prediction's backend (torch, or llama.cpp's GGUF)."""
    total, count = 0.0, 0
    for i in progress(range(len(examples)) if indices is None else indices, desc="target loss", unit="examples"):
        loss, n = lm.target_loss(examples.ids(i).long(), examples.labels(i))
        total += loss
        count += n
    mean = total / count if count else None
    return {"loss": mean, "perplexity": math.exp(mean) if mean is not None else None, "target_tokens": count}


def prediction_from_output(output: ModelPrediction) -> Prediction:
    """The model's prediction -> the Prediction the metrics score."""
    files = [(f.path, float(f.score)) for f in output.files]
    change_types = {f.path: f.change_types[0].type for f in output.files if f.change_types}
    return Prediction(files=files, change_types=change_types, modules=list(output.modules),
                      symbols=list(output.symbols))


# ---------------------------------------------------------------- stage protocol


def report_path(paths: ArtifactPaths) -> Path:
    return paths.evaluation.with_suffix(".md")


def chart_path(paths: ArtifactPaths) -> Path:
    return paths.evaluation.with_suffix(".png")


def stage_inputs(cfg: EvaluationConfig, paths: ArtifactPaths) -> list[Path]:
    inputs = [paths.commits, paths.chunks]
    if paths.ranker_dir.is_dir():
        inputs.append(paths.ranker_dir)
    if cfg.test_from is None:
        inputs += [paths.train_data, paths.split_data(cfg.split)]
        if not cfg.baselines_only:
            inputs.append(paths.model_dir)
    return inputs


def stage_outputs(cfg: EvaluationConfig, paths: ArtifactPaths) -> list[Path]:
    return [paths.evaluation, report_path(paths), chart_path(paths)]


# ---------------------------------------------------------------- CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--model", type=Path, help="the trained model folder (default: <output_dir>/model)")
    parser.add_argument("--ranker", type=Path, help="the ranker folder (default: <output_dir>/ranker)")
    parser.add_argument("--commits", type=Path, help="commits.json (default: <output_dir>/commits.json)")
    parser.add_argument("--chunks", type=Path, help="chunks.jsonl (default: <output_dir>/chunks.jsonl)")
    parser.add_argument("--output", type=Path, help="evaluation.json (the .md and .png go beside it)")
    parser.add_argument("--split", choices=["test", "val"], help="override evaluate.split")
    parser.add_argument("--max-examples", type=int, help="override evaluate.max_examples (0 = all)")
    parser.add_argument("--baselines-only", action="store_true", help="no language model (baselines and ranker)")
    parser.add_argument("--test-from", type=int, help="targets from this commit position on (no language model)")
    parser.add_argument("--device", help="override evaluate.device")
    parser.add_argument("--max-new-tokens", type=int, help="override predict.max_new_tokens")
    parser.add_argument("--seed", type=int, help="override pipeline.seed")
    args = parser.parse_args(argv)
    cfg, pipeline_cfg, paths = load_stage(args, SECTION, Config)
    overrides = {name: getattr(args, name) for name in ("split", "max_examples", "test_from", "device")}
    if args.baselines_only or args.test_from is not None:
        overrides["baselines_only"] = True
    cfg = apply_overrides(cfg, SECTION, overrides)
    for name, attr in (("model", "model_dir"), ("ranker", "ranker_dir"), ("commits", "commits"), ("chunks", "chunks"),
                       ("output", "evaluation")):
        if getattr(args, name) is not None:
            paths = dataclasses.replace(paths, **{attr: getattr(args, name).resolve()})
    prediction = load_prediction_config(args.config)
    prediction = apply_overrides(prediction, "predict", {"max_new_tokens": args.max_new_tokens})
    if args.model is not None:
        prediction = dataclasses.replace(prediction, model_dir=args.model.resolve())
    run(cfg, paths, seed=args.seed if args.seed is not None else pipeline_cfg.seed, prediction=prediction)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
