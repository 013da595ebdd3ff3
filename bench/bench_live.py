"""Predictions as you code, on real histories: the work in progress as evidence, who, and when.

    python bench/bench_live.py                          # fd, axum, click from ../shared/data/repos/
    python bench/bench_live.py --repos fd --work /tmp/bench-live

For each git bundle (`../shared/data/repos/<name>.bundle`): clone it into the work folder, run stages 1-4
through pipeline.py (up-to-date stages are skipped: a second run reuses them), then train_ranker (which fits the
live ranker and the author model beside the ranker) and evaluate (baselines and rankers; no language model).
The test split is the dataset builder's: the latest 10% of the commits.

Printed, per history, from evaluation.json (evaluate.py's figures, the same test targets as every predictor):
    the work in progress  each test commit's first k changed files revealed (k = 1, 2, half), recall@5 / @10 of
                          the remaining files: the live ranker (in-progress features), the ranker without them
                          (its own candidates, the revealed files dropped), co-change from the revealed files
                          alone; the targets: with one file revealed, live recall@5 >= ranker + 0.10 and
                          >= co-change + 0.05
    who                   top-1 / top-3 of the likely authors against the last commit's author (target: +0.05
                          where the history has more than one frequent author: >= 10% of the test targets)
    when                  median error factor, share within x2 and interval coverage of the expected wait to the
                          next commit touching the top 3 files, against the median gap between commits
    cost                  train_ranker's CPU seconds, and the part the live step took (measured in the same run)
Every figure is printed, where it loses too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")

import yaml  # noqa: E402

from repo2model.core.artifacts import read_json  # noqa: E402
from repo2model.core.config import PipelineConfig, load_config  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402
from repo2model.ranking.config import EvaluationConfig, RankerConfig  # noqa: E402
from repo2model.retrieval.index_config import IndexConfig  # noqa: E402
from repo2model.serving.settings import PredictionConfig  # noqa: E402
from repo2model.stages import evaluate, pipeline, train_ranker  # noqa: E402

STAGES = ("git_scraper", "semantic_chunker", "tokenizer", "dataset_builder")
LABELS = ("1", "2", "half")
METHODS = ("live", "ranker", "cochange")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", nargs="+", default=["fd", "axum", "click"])
    parser.add_argument("--bundles", type=Path, default=ROOT / ".." / "shared" / "data" / "repos",
                        help="folder of <name>.bundle files (default: ../shared/data/repos)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-live"), help="clones and artifacts")
    args = parser.parse_args()
    results = {}
    for name in args.repos:
        print(f"== {name}", flush=True)
        results[name] = bench_repo(name, args)
    print_tables(results)


def bench_repo(name: str, args: argparse.Namespace) -> dict:
    bundle = (args.bundles / f"{name}.bundle").resolve()
    if not bundle.is_file():
        raise SystemExit(f"{bundle}: not found (give --bundles)")
    work = args.work.resolve() / name
    repo = work / "repo"
    if not repo.exists():
        subprocess.run(["git", "clone", "-q", str(bundle), str(repo)], check=True)
    config = write_config(work, repo)
    for stage in STAGES:
        if pipeline.run_pipeline(config, only=stage) != 0:
            raise SystemExit(f"{name}: stage {stage} failed (see {work / 'out' / 'pipeline.log'})")
    loaded = load_config(config, {"pipeline": PipelineConfig, "train_ranker": RankerConfig,
                                  "evaluate": EvaluationConfig, "predict": PredictionConfig, "index": IndexConfig},
                         strict_sections=False)
    paths = ArtifactPaths.under(loaded["pipeline"].output_dir)
    cpu = time.process_time()
    summary = train_ranker.run(loaded["train_ranker"], paths, evaluation=loaded["evaluate"],
                               prediction=loaded["predict"], index=loaded["index"])
    train_cpu = time.process_time() - cpu
    evaluate.run(loaded["evaluate"], paths, prediction=loaded["predict"])
    return {"evaluation": read_json(paths.evaluation), "train_cpu": train_cpu,
            "live_cpu": summary["work_in_progress"]["cpu_seconds"]}


def write_config(work: Path, repo: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "pipeline": {"output_dir": str(work / "out")},
        "git_scraper": {"repo": str(repo), "include_remotes": True},
        "evaluate": {"baselines_only": True},
        "train_ranker": {"language_model": "off"},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def fmt(value) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def print_tables(results: dict) -> None:
    print("\n## The work in progress: recall@5 / recall@10 of the remaining files (test commits)\n")
    print("| history | revealed | live | ranker | cochange | live - ranker @5 | live - cochange @5 | "
          "candidate recall |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        by = ((result["evaluation"].get("work_in_progress") or {}).get("by_revealed")) or {}
        for label in LABELS:
            per = by.get(label)
            if not per:
                continue
            cells = [f"{fmt(per[m]['recall@5'])} / {fmt(per[m]['recall@10'])} ({per[m]['commits']})" if m in per
                     else "n/a" for m in METHODS]
            live5 = per.get("live", {}).get("recall@5")
            margins = [fmt(live5 - per[m]["recall@5"]) if live5 is not None else "n/a" for m in ("ranker", "cochange")]
            print(f"| {name} | {label} | " + " | ".join(cells) + " | " + " | ".join(margins)
                  + f" | {fmt(per.get('candidate_recall'))} |")
    print("\nTargets (one revealed file): live - ranker >= +0.10 and live - cochange >= +0.05 at recall@5.")
    for name, result in results.items():
        per = ((result["evaluation"].get("work_in_progress") or {}).get("by_revealed") or {}).get("1") or {}
        if "live" in per:
            a = per["live"]["recall@5"] - per["ranker"]["recall@5"]
            b = per["live"]["recall@5"] - per["cochange"]["recall@5"]
            print(f"  {name}: {'met' if a >= 0.10 and b >= 0.05 else 'NOT met'} (+{a:.3f} over the ranker, "
                  f"+{b:.3f} over co-change)")
    print("\n## Who: top-1 / top-3 accuracy of the likely authors (test commits)\n")
    print("| history | targets | likely authors top-1 | top-3 | last commit's author top-1 | margin | "
          "frequent authors (share of targets) | target |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        who = result["evaluation"].get("who") or {}
        if not who.get("targets"):
            continue
        frequent = ", ".join(f"{a} {s:.2f}" for a, s in (who.get("frequent_authors") or {}).items())
        met = who.get("target_met")
        print(f"| {name} | {who['targets']} | {fmt(who['model_top1'])} | {fmt(who['model_top3'])} | "
              f"{fmt(who['most_recent_top1'])} | {fmt(who['model_top1'] - who['most_recent_top1'])} | {frequent} | "
              f"{'one frequent author: n/a' if met is None else ('met' if met else 'NOT met')} |")
    print("\nWith the first file revealed (commits of two files or more), likely authors top-1 / top-3:")
    for name, result in results.items():
        first = (result["evaluation"].get("who") or {}).get("with_first_file") or {}
        if first:
            print(f"  {name}: {fmt(first['model_top1'])} / {fmt(first['model_top3'])} ({first['targets']} targets; "
                  f"the last commit's author {fmt(first['most_recent_top1'])})")
    print("\n## When: the wait to the next commit touching the top 3 files (test commits)\n")
    print("| history | estimate | targets | median error factor | within x2 | interval coverage |")
    print("|---|---|---|---|---|---|")
    for name, result in results.items():
        when = result["evaluation"].get("when") or {}
        for key, label in (("model", "the files' own gaps"), ("baseline", "median gap between commits")):
            figures = when.get(key) or {}
            print(f"| {name} | {label} | {figures.get('targets')} | {fmt(figures.get('median_error_factor'))} | "
                  f"{fmt(figures.get('within_factor_2'))} | {fmt(figures.get('interval_coverage'))} |")
    print("\n## Cost: train_ranker's CPU seconds, and the live step's part (the same run)\n")
    for name, result in results.items():
        share = result["live_cpu"] / result["train_cpu"] if result["train_cpu"] else 0.0
        print(f"  {name}: train_ranker {result['train_cpu']:.1f}s CPU, of which the live ranker, authors and "
              f"activity {result['live_cpu']:.1f}s ({share:.0%})")


if __name__ == "__main__":
    main()
