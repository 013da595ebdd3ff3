"""Benchmark: the whole default pipeline (the shipped config.yaml) on real histories, stage by stage.

    python bench/bench_pipeline.py                                   # fd, axum, click
    python bench/bench_pipeline.py ../shared/data/repos/axum-agentic.bundle --work /tmp/bench-pipeline

Each history (a bundle, cloned into --work, or a repository folder) gets `python pipeline.py --config
config.yaml` with only `git_scraper.repo` and `pipeline.output_dir` set (`--set`), in its own process, from an
empty output folder. Prints per history each stage's wall seconds and its share of the run, the process tree's
CPU seconds, and whether a stage other than training takes over 40% of the total (the target: none does).
Training is capped by `train_model.max_minutes` (5), so on a slow or busy machine it takes its cap and the
shares of the other stages fall; the CPU seconds of the whole run are the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HISTORIES = [ROOT.parent / "shared" / "data" / "repos" / f"{name}.bundle" for name in ("fd", "axum", "click")]
SHARE_TARGET = 0.40  # no stage but training over this share of the run
EXEMPT = ("train_model",)


def prepare(history: Path, work: Path) -> Path:
    if history.is_dir():
        return history.resolve()
    repo = work / history.stem
    if not repo.exists():
        subprocess.run(["git", "clone", "-q", str(history), str(repo)], check=True)
    return repo


def run(repo: Path, out: Path) -> dict:
    """The default pipeline on `repo` into `out`: wall and CPU seconds, the stages' seconds."""
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "--config", str(ROOT / "config.yaml"),
                           "--set", f"git_scraper.repo={repo}", "--set", f"pipeline.output_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"bench_pipeline: the pipeline failed on {repo} (exit {proc.returncode})")
    results = json.loads((out / "pipeline_results.json").read_text(encoding="utf-8"))
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "stages": {name: s.get("seconds", 0.0) for name, s in results["stages"].items()
                       if s.get("status") == "ok"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("histories", nargs="*", type=Path, default=DEFAULT_HISTORIES)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-pipeline")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for history in args.histories:
        repo = prepare(history, args.work)
        print(f"{repo.name}: the default pipeline ...", flush=True)
        result = run(repo, args.work / f"out-{repo.name}")
        total = sum(result["stages"].values()) or 1.0
        over = [name for name, s in result["stages"].items() if name not in EXEMPT and s / total > SHARE_TARGET]
        print(f"  {result['wall']:.1f} s wall, {result['cpu']:.1f} s CPU; "
              + ", ".join(f"{name} {s:.1f} s ({s / total:.0%})" for name, s in result["stages"].items())
              + (f"; over {SHARE_TARGET:.0%}: {', '.join(over)}" if over else f"; no stage but training over {SHARE_TARGET:.0%}"),
              flush=True)
        rows.append((repo.name, result, total, over))
    stages = list(dict.fromkeys(name for _, result, _, _ in rows for name in result["stages"]))
    print("\n| history | " + " | ".join(stages) + " | total wall (CPU) | target |")
    print("|---|" + "---|" * (len(stages) + 2))
    for name, result, total, over in rows:
        cells = [f"{result['stages'][s]:.1f} s ({result['stages'][s] / total:.0%})" if s in result["stages"] else "-"
                 for s in stages]
        verdict = "met" if not over else f"MISSED ({', '.join(over)})"
        print(f"| {name} | " + " | ".join(cells) + f" | {result['wall']:.0f} s ({result['cpu']:.0f} s) | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
