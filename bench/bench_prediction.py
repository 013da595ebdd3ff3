"""Which files change next, on real histories: every baseline, the learned ranker (and the language model).

    python bench/bench_prediction.py                       # fd, axum, click from ../shared/data/repos/
    python bench/bench_prediction.py --repos fd axum click axum-agentic --reference-code /tmp/before
    python bench/bench_prediction.py --last-commits 300    # only each history's latest 300 commits
    python bench/bench_prediction.py --last-commits 300 --skip-commits 0 300 600 900   # four windows each
    python bench/bench_prediction.py --repos fd --with-model --work /tmp/bench-prediction
    python bench/bench_prediction.py --dense                # the ranker with the dense similarity, and without
    python bench/bench_prediction.py --repos fd --dense --dense-candidates 20 --work /tmp/bench-dense20
    python bench/bench_prediction.py --repos axum-agentic fd-squash8 click-squash8   # the agent-written ones

For each git bundle (`../shared/data/repos/<name>.bundle`, relative to the project root): clone it into the
work folder, run stages 1-4 through pipeline.py (git_scraper with remote branches, semantic_chunker,
tokenizer, dataset_builder; up-to-date stages are skipped, so a second run reuses them), with --with-model
train_model too, then train_ranker and evaluate (every test target; the model generates for
--max-examples of them). Prints one table: rows = predictors, columns = recall@1/5/10 and MRR per
repository; then candidate recall, the ranker's margin over the best baseline (target: +0.05 at recall@5 and
@10), features + fit time (wall and this process's CPU, beside one plain pass over commits.json +
chunks.jsonl measured in the same run: the floor of any feature pass), and the latency of one prediction
without generation through serve.py (file_ranking likelihood, a tiny untrained model when there is no trained
one: the ranker's work, not the model's quality).

--dense: the ranker is trained with `train_ranker.dense: true` (the task's all-MiniLM-L6-v2 similarity to each candidate
file at the target's parent); train_ranker also fits it without the dense features on the same candidate rows,
so the rows `ranker_dense` and `ranker` of the table (both from ranker/metrics.json, the same test targets) are
the ablation; the time lines add the dense features' CPU share and the files embedded. evaluate.py and serve.py
then use the dense ranker.

The prior (repo2model.ranking.prior) the ranker starts from: by default (--prior leave-out) one fitted without
the tested history, as a new repository's ranker starts from a prior that never saw it: fd without fd (and fd
squashed), axum-agentic without axum (it is axum squashed); a history the shipped prior never saw uses the
shipped one. The priors and the rows they learn from are built by bench/train_prior.py's code in <work>/prior
(cached). --prior shipped: the shipped prior; --prior off: none.

A name <base>-squash<N> (fd-squash8, click-squash8) is bundle <base> squashed as axum-agentic was made from
axum (bench/train_prior.py's squash: every N first-parent commits become one, boilerplate messages but on the
latest 10%, which carry the subject of their largest original commit), built in the work folder; its prior is
fitted without <base> and its squashed copies. With axum-agentic they are three agent-written histories, 60-odd
test targets together where one alone has about 20. --set SECTION.KEY=VALUE sets a config key for every
history (e.g. train_ranker.pool_per_commit_size=0).

--last-commits N: only each history's latest N commits are scraped (git_scraper.rev_range "--max-count=N
HEAD"), split by the dataset builder as usual (test = the latest 10%): a young repository, where the prior
matters most. --skip-commits S [S ...]: the N commits before the latest S instead (git's --skip), one window
per S, each a young repository of its own (its name gets -last<N>-skip<S>), so that windows of one history give
more test targets than its latest 15-30.
--reference-code DIR (a checkout of earlier code, e.g. `git worktree add /tmp/before <commit>`):
that code's train_ranker.py and evaluate.py also run on the same artifacts, as the table's row `reference`.

Besides the table: per history the share of train and test targets whose message is uninformative
(repo2model.ranking.messages), the ranker's recall on the informative test targets, candidate recall by commit
size, and the prior's trees.

The machine may be shared: the CPU seconds and the ratios are the figures to compare, not wall seconds alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")  # one table, not thousands of progress lines

from repo2model.stages import evaluate  # noqa: E402
from repo2model.stages import pipeline  # noqa: E402
from repo2model.stages import serve  # noqa: E402
from repo2model.serving.service import Service, make_server  # noqa: E402
from repo2model.stages import train_ranker  # noqa: E402
import yaml  # noqa: E402
import train_prior  # noqa: E402  (bench/, beside this script)
from repo2model.core.artifacts import iter_commits_with_chunks, read_json  # noqa: E402
from repo2model.ranking.baselines import BASELINES  # noqa: E402
from repo2model.core.config import PipelineConfig, load_config  # noqa: E402
from repo2model.serving.history import history_from_artifacts  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402
from repo2model.serving.predictor import Predictor  # noqa: E402
from repo2model.serving.settings import PredictionConfig  # noqa: E402
from repo2model.ranking.config import EvaluationConfig, RankerConfig  # noqa: E402
from repo2model.retrieval.index_config import IndexConfig  # noqa: E402

STAGES = ("git_scraper", "semantic_chunker", "tokenizer", "dataset_builder")
PREDICTORS = ("ranker_lm", "ranker_dense", "ranker", "reference", "model", *BASELINES)
COLUMNS = ("recall@1", "recall@5", "recall@10", "mrr")
# A quick prototype ranker measured before this one (no language model, no code search), test recall@5 / @10.
PROTOTYPE = {"fd": (0.822, 0.884), "axum": (0.664, 0.745), "click": (0.618, 0.714)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", nargs="+", default=["fd", "axum", "click"])
    parser.add_argument("--bundles", type=Path, default=ROOT / ".." / "shared" / "data" / "repos",
                        help="folder of <name>.bundle files (default: ../shared/data/repos)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-prediction"), help="clones and artifacts")
    parser.add_argument("--with-model", action="store_true", help="also train the language model (train_model)")
    parser.add_argument("--max-examples", type=int, default=10, help="targets the model generates for")
    parser.add_argument("--serve-requests", type=int, default=5, help="timed /predict requests per repository")
    parser.add_argument("--dense", action="store_true", help="the ranker with the dense features, and the ablation")
    parser.add_argument("--dense-candidates", type=int, default=0,
                        help="with --dense: train_ranker.dense_candidates (the tree's N files nearest the task join)")
    parser.add_argument("--prior", choices=("leave-out", "shipped", "off"), default="leave-out",
                        help="the prior the ranker starts from (default: one that never saw the tested history)")
    parser.add_argument("--last-commits", type=int, default=0, help="only each history's latest N commits (0: all)")
    parser.add_argument("--skip-commits", type=int, nargs="+", default=[0],
                        help="with --last-commits: one window per S, the N commits before the latest S (0: the latest)")
    parser.add_argument("--reference-code", type=Path, help="also this checkout's train_ranker and evaluate")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config key for every history (repeatable), e.g. train_ranker.pool_per_commit_size=0")
    args = parser.parse_args()

    results = {}
    for name in args.repos:
        for skip in args.skip_commits if args.last_commits else [0]:
            window = (f"-last{args.last_commits}" if args.last_commits else "") + (f"-skip{skip}" if skip else "")
            print(f"== {name}{window}", flush=True)
            results[name + window] = bench_repo(name, window, skip, args)
    print_table(results)
    print_prior(results)


def bench_repo(name: str, window: str, skip: int, args: argparse.Namespace) -> dict:
    """One history (`window`: its -last<N>[-skip<S>] suffix, the commits scraped: the N before the latest S)."""
    work = args.work.resolve() / (name + window)
    repo = work / "repo"
    base, group = squashed_name(name)
    if group:  # a history squashed as axum-agentic was (train_prior's squash), its real tasks on the latest 10%
        source = train_prior.clone((args.bundles / f"{base}.bundle").resolve(), args.work.resolve() / base / "repo")
        train_prior.squash(source, repo, group)
    else:
        bundle = (args.bundles / f"{name}.bundle").resolve()
        if not bundle.is_file():
            raise SystemExit(f"{bundle}: not found (give --bundles)")
        if not repo.exists():
            subprocess.run(["git", "clone", "-q", str(bundle), str(repo)], check=True)
    config = write_config(work, repo, args, prior_for(name, args), skip)
    for stage in STAGES + (("train_model",) if args.with_model else ()):
        if pipeline.run_pipeline(config, only=stage) != 0:
            raise SystemExit(f"{name}: stage {stage} failed (see {work / 'out' / 'pipeline.log'})")
    loaded = load_config(config, {"pipeline": PipelineConfig, "train_ranker": RankerConfig, "evaluate": EvaluationConfig,
                                  "predict": PredictionConfig, "index": IndexConfig}, strict_sections=False)
    paths = ArtifactPaths.under(loaded["pipeline"].output_dir)
    floor = plain_pass_seconds(paths)
    train_ranker.run(loaded["train_ranker"], paths, evaluation=loaded["evaluate"], prediction=loaded["predict"],
                     index=loaded["index"])
    ranker_metrics = read_json(paths.ranker_dir / "metrics.json")
    evaluate.run(loaded["evaluate"], paths, prediction=loaded["predict"])
    evaluation = read_json(paths.evaluation)
    metrics = evaluation["metrics"]
    if args.dense:  # the ablation: both rankers on the same candidate rows (train_ranker's test figures)
        metrics = {**metrics, "ranker_dense": ranker_metrics["test"]["ranker"],
                   "ranker": ranker_metrics["test"]["ranker_without_dense"]}
    if args.reference_code is not None:
        metrics = {**metrics, "reference": reference_run(args.reference_code, work, paths)}
    latency = serve_latency(work, paths, repo, args.serve_requests)
    return {"metrics": metrics, "targets": evaluation["targets"], "messages": evaluation.get("messages"),
            "candidate_recall": ranker_metrics["candidate_recall"], "ranker": ranker_metrics, "floor": floor,
            "serve": latency, "load": os.getloadavg()[0]}


def squashed_name(name: str) -> tuple[str, int]:
    """("fd", 8) for fd-squash8 (a history the bench squashes itself), (name, 0) for a bundle's."""
    base, sep, group = name.rpartition("-squash")
    return (base, int(group)) if sep and group.isdigit() and int(group) > 1 else (name, 0)


def prior_for(name: str, args: argparse.Namespace) -> str:
    """train_ranker.prior for history `name`: off, auto (the shipped prior), or a prior that never saw it."""
    if args.prior != "leave-out":
        return {"off": "off", "shipped": "auto"}[args.prior]
    base = "axum" if name == "axum-agentic" else squashed_name(name)[0]  # axum-agentic is axum squashed
    if base not in train_prior.BASES:
        return "auto"  # the shipped prior never saw it
    return str(train_prior.prior_without([base], args.work.resolve() / "prior", args.bundles))


def write_config(work: Path, repo: Path, args: argparse.Namespace, prior: str, skip: int = 0) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    scraper = {"repo": str(repo), "include_remotes": True}
    if args.last_commits:
        scraper["rev_range"] = f"--max-count={args.last_commits}{f' --skip={skip}' if skip else ''} HEAD"
    config = {
        "pipeline": {"output_dir": str(work / "out")},
        "git_scraper": scraper,
        "evaluate": {"max_examples": args.max_examples, "baselines_only": not args.with_model},
        "train_ranker": {"language_model": "auto" if args.with_model else "off", "dense": args.dense,
                         "dense_candidates": args.dense_candidates if args.dense else 0, "prior": prior},
    }
    for setting in args.set:  # SECTION.KEY=VALUE, the value read as YAML (as pipeline.py --set reads it)
        key, _, value = setting.partition("=")
        section, _, name = key.partition(".")
        config.setdefault(section, {})[name] = yaml.safe_load(value)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def reference_run(code: Path, work: Path, paths: ArtifactPaths) -> dict:
    """The test figures of `code`'s train_ranker.py + evaluate.py (without a language model) on these artifacts,
    each its own process run from that checkout (so that it imports its own library)."""
    config = work / "reference.yaml"
    config.write_text(yaml.safe_dump({"pipeline": {"output_dir": str(paths.output_dir)}}), encoding="utf-8")
    ranker, evaluation = work / "reference-ranker", work / "reference-evaluation.json"
    for command in (["train_ranker.py", "--config", str(config), "--output", str(ranker), "--no-language-model"],
                    ["evaluate.py", "--config", str(config), "--ranker", str(ranker), "--output", str(evaluation),
                     "--baselines-only"]):
        subprocess.run([sys.executable, *command], cwd=code, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(code)})
    return read_json(evaluation)["metrics"]["ranker"]


def plain_pass_seconds(paths: ArtifactPaths) -> dict:
    """One pass over commits.json + chunks.jsonl that only parses them: the floor of any feature pass."""
    wall, cpu = time.monotonic(), time.process_time()
    for _ in iter_commits_with_chunks(paths.commits, paths.chunks):
        pass
    return {"wall": time.monotonic() - wall, "cpu": time.process_time() - cpu}


def serve_latency(work: Path, paths: ArtifactPaths, repo: Path, requests: int) -> dict:
    """Seconds of POST /predict without generation (file_ranking likelihood) with the ranker, median of
    `requests`, for a `repo` body (the last commits scraped and chunked per request) and a `commits` body."""
    model_dir = paths.model_dir if paths.model_dir.is_dir() else tiny_model(work, paths)
    predictor = Predictor.load(model_dir, PredictionConfig(file_ranking="likelihood", history_commits=8),
                               paths=paths if model_dir == paths.model_dir else None)
    if predictor.ranker is None:
        raise SystemExit(f"{model_dir}: the ranker was not found beside it")
    server = make_server(Service(predictor, serve.Config(port=0)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    history = history_from_artifacts(paths.commits, paths.chunks, 8)
    records = [{**c.to_dict(), "chunks": [ch.to_dict() for ch in chunks]} for c, chunks in history]
    task = history[-1][0].message or "Fix the tests"
    out = {}
    limit = serve.Config().max_body_bytes
    try:
        for kind, body in (("repo", {"task": task, "repo": str(repo)}), ("commits", {"task": task, "commits": records})):
            size = len(json.dumps(body).encode("utf-8"))
            if size > limit:  # huge commits: a caller sends `repo`, or raises serve.max_body_bytes
                print(f"/predict with a {kind} body: {size} bytes, over serve.max_body_bytes ({limit}): not timed")
                out[kind] = None
                continue
            times = []
            for _ in range(requests + 1):  # the first warms up (the code index at the newest commit)
                started = time.monotonic()
                answer = post(server, body)
                times.append(time.monotonic() - started)
                assert answer["ranking"] in ("ranker", "ranker_lm"), answer.get("ranking")
            out[kind] = statistics.median(times[1:])
            out.setdefault("first", times[0])
    finally:
        server.shutdown()
        server.server_close()
    return out


def tiny_model(work: Path, paths: ArtifactPaths) -> Path:
    """An untrained 2-layer LLaMA over the pipeline's tokenizer, in <work>/tiny/model, with the ranker and its
    history linked beside it (the model's quality is not measured here, only the service's work)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = work / "tiny" / "model"
    if not folder.is_dir():
        shutil.copytree(paths.tokenizer_dir, folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        LlamaForCausalLM(config).save_pretrained(str(folder))
    for link, target in (("ranker", paths.ranker_dir), (paths.commits.name, paths.commits),
                         (paths.chunks.name, paths.chunks)):
        place = folder.parent / link
        if not place.exists():
            place.symlink_to(target)
    return folder


def post(server, body: dict) -> dict:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=600)
    conn.request("POST", "/predict", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read().decode())
    conn.close()
    if response.status != 200:
        raise SystemExit(f"/predict answered {response.status}: {answer}")
    return answer


def print_table(results: dict) -> None:
    names = list(results)
    print()
    print("| predictor | " + " | ".join(f"{n} R@1 | {n} R@5 | {n} R@10 | {n} MRR" for n in names) + " |")
    print("|---|" + "---|" * (4 * len(names)))
    for predictor in PREDICTORS:
        if not any(predictor in results[n]["metrics"] for n in names):
            continue
        cells = []
        for n in names:
            m = results[n]["metrics"].get(predictor)
            cells += [fmt(m.get(c)) if m else "" for c in COLUMNS]
        print(f"| {predictor} | " + " | ".join(cells) + " |")
    print()
    for n in names:
        r = results[n]
        metrics, ranker = r["metrics"], r["ranker"]
        best5 = max(BASELINES, key=lambda b: metrics.get(b, {}).get("recall@5") or 0)
        best10 = max(BASELINES, key=lambda b: metrics.get(b, {}).get("recall@10") or 0)
        mine = metrics["ranker"]
        d5 = mine["recall@5"] - metrics[best5]["recall@5"]
        d10 = mine["recall@10"] - metrics[best10]["recall@10"]
        proto = PROTOTYPE.get(n)
        features, fit = ranker["features_seconds"], ranker["fit_seconds"]
        features_cpu, fit_cpu = ranker["features_cpu_seconds"], ranker["fit_cpu_seconds"]
        print(f"{n}: {r['targets']} test targets; candidate recall {fmt(r['candidate_recall'])}; "
              f"ranker - best baseline: recall@5 {d5:+.3f} (vs {best5}), recall@10 {d10:+.3f} (vs {best10}) "
              f"[target +0.050: {'met' if d5 >= 0.05 and d10 >= 0.05 else 'NOT met'}]"
              + (f"; prototype recall@5/@10 {proto[0]:.3f}/{proto[1]:.3f}" if proto else ""))
        print(f"    features + fit: {features + fit:.1f}s wall ({features:.1f} + {fit:.1f}), "
              f"{features_cpu + fit_cpu:.1f}s CPU ({features_cpu:.1f} + {fit_cpu:.1f}) for "
              f"{sum(ranker['targets'].values())} targets; one plain pass over the artifacts: "
              f"{r['floor']['wall']:.1f}s wall, {r['floor']['cpu']:.1f}s CPU (features = "
              f"{features_cpu / max(r['floor']['cpu'], 1e-9):.1f}x that pass's CPU); load average {r['load']:.1f}")
        if "ranker_dense" in metrics:  # --dense (train_ranker records dense_cpu_seconds, 0.0, without it too)
            dense = metrics["ranker_dense"]
            print(f"    dense: {ranker['dense_cpu_seconds']:.1f}s CPU of the features' {features_cpu:.1f}s "
                  f"({ranker['dense_files_embedded']} file versions embedded; without dense: features + fit "
                  f"{features_cpu - ranker['dense_cpu_seconds'] + fit_cpu:.1f}s CPU); ranker_dense - ranker: "
                  f"recall@5 {dense['recall@5'] - mine['recall@5']:+.3f}, recall@10 "
                  f"{dense['recall@10'] - mine['recall@10']:+.3f}, MRR {dense['mrr'] - mine['mrr']:+.3f}")
        print_situation(r)
        commits = f"{r['serve']['commits']:.2f}s" if r["serve"]["commits"] is not None else "not timed (too large)"
        print(f"    /predict without generation, through serve.py: {r['serve']['repo']:.2f}s (repo body), "
              f"{commits} (commit records); the first request {r['serve']['first']:.2f}s")


def print_prior(results: dict) -> None:
    """The prior's gain over every history benched (train_ranker's ablation: the ranker fitted from nothing on the
    same rows), pooled over their test targets."""
    rows = [(n, r["ranker"]["prior_ablation"]) for n, r in results.items() if r["ranker"].get("prior_ablation")]
    if not rows:
        return
    total = sum(a["targets"] for _, a in rows)

    def pooled(name: str, key: str) -> float:
        return sum(a[name][key] * a["targets"] for _, a in rows) / total

    wins = sum(a["ranker"]["recall@5"] > a["ranker_without_prior"]["recall@5"] for _, a in rows)
    losses = sum(a["ranker"]["recall@5"] < a["ranker_without_prior"]["recall@5"] for _, a in rows)
    print(f"\nthe prior over {len(rows)} histories ({total} test targets): recall@5 / MRR "
          f"{pooled('ranker', 'recall@5'):.3f} / {pooled('ranker', 'mrr'):.3f} with it, "
          f"{pooled('ranker_without_prior', 'recall@5'):.3f} / {pooled('ranker_without_prior', 'mrr'):.3f} fitted from "
          f"nothing; recall@5 higher with it on {wins}, lower on {losses}")


def print_situation(r: dict) -> None:
    """The messages, the ranker on the informative test targets, candidate recall by size, the prior."""
    messages, ranker, metrics = r["ranker"].get("messages") or {}, r["ranker"], r["metrics"]
    shares = ", ".join(f"{split} {m['uninformative']}/{m['targets']}" for split, m in messages.items())
    informative = ((r.get("messages") or {}).get("informative_metrics") or {}).get("ranker")
    print(f"    uninformative messages: {shares}"
          + (f"; ranker on the {informative['commits']} informative test targets recall@1/5/10 "
             f"{fmt(informative['recall@1'])}/{fmt(informative['recall@5'])}/{fmt(informative['recall@10'])}"
             if informative else ""))
    sizes = ranker.get("candidate_recall_by_size") or {}
    print("    candidate recall by commit size: " + ", ".join(
        f"{b} files {s['candidate_recall']:.3f} ({s['commits']} commits, {s['candidates']:.0f} candidates)"
        for b, s in sizes.items()))
    prior = ranker.get("prior")
    ablation = ranker.get("prior_ablation")
    gain = (f"; test recall@5 / MRR {ablation['ranker']['recall@5']:.3f} / {ablation['ranker']['mrr']:.3f}, fitted "
            f"from nothing {ablation['ranker_without_prior']['recall@5']:.3f} / "
            f"{ablation['ranker_without_prior']['mrr']:.3f}" if ablation else "")
    print(f"    prior: {prior['trees']} trees ({', '.join(prior['histories'] or {})}); the ranker's own trees "
          f"{ranker['own_trees']}{gain}" if prior else "    prior: none")
    if "reference" in metrics:
        mine, ref = metrics["ranker"], metrics["reference"]
        print("    ranker - reference: " + ", ".join(f"{k} {mine[k] - ref[k]:+.3f}" for k in COLUMNS))


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
