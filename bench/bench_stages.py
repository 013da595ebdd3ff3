"""Benchmark: stages 1-4 (git_scraper, semantic_chunker, tokenizer, dataset_builder) and the index stage on
real histories, seconds and peak memory per stage, against the 45-second target for stages 1-4 together.

    python bench/bench_stages.py                                   # the three bundles below
    python bench/bench_stages.py ../shared/data/repos/axum.bundle  # one history (a bundle or a repository)
    python bench/bench_stages.py --keep /tmp/bench-stages ~/projects/the-block
    python bench/bench_stages.py --reference-code /tmp/before    # ratios against another checkout, same run

Each history (default: ../shared/data/repos/{fd,axum,click,axum-agentic}.bundle, relative to the
project root) is cloned into a temporary folder (a bundle; a repository folder is used
as it is), and each stage runs as its own `python <stage>.py --config ...` process with
the default settings, so that its peak memory is its own. Memory is sampled every 20 ms
over the stage's whole process tree (workers and git children included): the peak of
the tree's summed RSS. CPU seconds are the tree's user+system time (less sensitive to
a busy machine than wall time).

Prints one table: per history and stage the wall seconds, CPU seconds and peak MB,
the total of stages 1-4, and its ratio to the 45 s target (at most 1.0 passes); the index
stage (run where the pipeline runs it, after the chunker) is its own row, outside the total,
and a last table puts each history on one line, the index as its own column.

`--reference-code DIR` (a checkout of an earlier commit, e.g. `git worktree add
/tmp/before <commit>`) runs the same stages from DIR right after each of ours,
with the settings both understand (every branch and remote-tracking branch, no
tag-only commits: `include_remotes: true, include_tags: false`), and adds each
stage's time ratio ours / reference: on a loaded machine a ratio measured in the
same run says more than the seconds.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HISTORIES = [ROOT.parent / "shared" / "data" / "repos" / f"{name}.bundle"
                     for name in ("fd", "axum", "click", "axum-agentic")]
STAGES = ("git_scraper", "semantic_chunker", "index", "tokenizer", "dataset_builder")  # the pipeline's order
OUTSIDE_TOTAL = ("index",)  # stages 1-4 are the target's; the index is timed on its own
TARGET_SECONDS = 45.0


def prepare(history: Path, work: Path) -> Path:
    """A repository to scrape: a bundle cloned (its other branches are origin/*), or the folder itself."""
    if history.is_dir():
        return history
    repo = work / history.stem
    if not repo.exists():
        subprocess.run(["git", "clone", "-q", str(history), str(repo)], check=True)
    return repo


def run_stage(stage: str, config: Path, cwd: Path, code: Path = ROOT) -> dict:
    """One stage in a fresh process: wall seconds, CPU seconds of its tree, peak summed RSS of its tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(code / f"{stage}.py"), "--config", str(config)],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = 0
            for member in tree:
                try:
                    rss += member.memory_info().rss
                except psutil.Error:
                    pass  # ended between listing and reading
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    stderr = proc.stderr.read()
    proc.wait()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = [line for line in stderr.splitlines() if line.startswith(f"{stage}:")]
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak / 2**20, "summary": summary[-1] if summary else ""}


def write_config(work: Path, name: str, repo: Path, settings: str) -> Path:
    out = work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    config = work / f"{name}.yaml"
    config.write_text(f"pipeline:\n  output_dir: {out}\ngit_scraper:\n  repo: {repo}\n{settings}", encoding="utf-8")
    return config


def bench_history(history: Path, work: Path, reference: Path | None) -> dict[str, dict]:
    repo = prepare(history, work)
    settings = "  include_remotes: true\n  include_tags: false\n" if reference else ""
    config = write_config(work, history.stem, repo, settings)
    reference_config = write_config(work, f"{history.stem}-reference", repo, settings) if reference else None
    results = {}
    for stage in STAGES:
        if reference and stage in OUTSIDE_TOTAL and not (reference / f"{stage}.py").exists():
            continue
        results[stage] = run_stage(stage, config, work)
        print(f"  {history.stem:8} {stage:17} {results[stage]['seconds']:6.1f}s  {results[stage]['summary']}",
              file=sys.stderr, flush=True)
        if reference:
            results[stage]["reference"] = run_stage(stage, reference_config, work, reference)
            print(f"  {history.stem:8} {stage:17} {results[stage]['reference']['seconds']:6.1f}s  (reference) "
                  f"{results[stage]['reference']['summary']}", file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("histories", nargs="*", type=Path, default=DEFAULT_HISTORIES,
                        help="bundles or repository folders (default: ../shared/data/repos/{fd,axum,click,axum-agentic}.bundle)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (clones, outputs)")
    parser.add_argument("--reference-code", type=Path, help="also run the stages of this checkout, for ratios")
    args = parser.parse_args()
    missing = [str(h) for h in args.histories if not h.exists()]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)}")

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-stages-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        reference = args.reference_code.expanduser().resolve() if args.reference_code else None
        table = {history.stem: bench_history(history.expanduser().resolve(), work, reference)
                 for history in args.histories}
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"{'history':10} {'stage':17} {'wall s':>7} {'cpu s':>7} {'peak MB':>8}"
          + ("   ref wall s  ref cpu s  ref MB  wall ratio  cpu ratio" if args.reference_code else ""))
    for name, results in table.items():
        for stage, r in results.items():
            line = f"{name:10} {stage:17} {r['seconds']:7.1f} {r['cpu_seconds']:7.1f} {r['peak_mb']:8.0f}"
            if "reference" in r:
                ref = r["reference"]
                line += (f"   {ref['seconds']:10.1f} {ref['cpu_seconds']:10.1f} {ref['peak_mb']:7.0f}"
                         f"  {r['seconds'] / ref['seconds']:10.2f} {r['cpu_seconds'] / max(ref['cpu_seconds'], 1e-9):10.2f}")
            print(line)
        four = {stage: r for stage, r in results.items() if stage not in OUTSIDE_TOTAL}
        total = sum(r["seconds"] for r in four.values())
        cpu = sum(r["cpu_seconds"] for r in four.values())
        peak = max(r["peak_mb"] for r in four.values())
        print(f"{name:10} {'stages 1-4':17} {total:7.1f} {cpu:7.1f} {peak:8.0f}   "
              f"ratio to the {TARGET_SECONDS:.0f} s target: {total / TARGET_SECONDS:.2f}")
    print("\n| history | " + " | ".join(STAGES) + " | stages 1-4 | (wall s; CPU s in brackets)")
    print("|---|" + "---|" * (len(STAGES) + 1))
    for name, results in table.items():
        cells = [f"{results[s]['seconds']:.1f} ({results[s]['cpu_seconds']:.1f})" if s in results else "-" for s in STAGES]
        four = [r for stage, r in results.items() if stage not in OUTSIDE_TOTAL]
        total = f"{sum(r['seconds'] for r in four):.1f} ({sum(r['cpu_seconds'] for r in four):.1f})"
        print(f"| {name} | " + " | ".join(cells) + f" | {total} |")


if __name__ == "__main__":
    main()
