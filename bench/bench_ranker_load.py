"""How long the ranker takes to load at serve.py's start (and at each reload): reading the history's statistics
train_ranker saved with it (history.json), against replaying the whole history (commits.json + chunks.jsonl) as
a ranker folder without them does, on a real history.

    python bench/bench_ranker_load.py ../shared/data/repos/axum.bundle --work /tmp/bench-ranker-load

Clones the bundle into the work folder and runs stages 1-4 and train_ranker with the default config through
pipeline.py (up-to-date stages are skipped, so a second run reuses them); then, `--rounds` times each, loads
FileRanking from the ranker folder (history.json) and from a copy of it without history.json (the replay),
checks that both rank the same files with the same scores for a task, and prints the median wall and CPU
seconds of each, their ratio, and the sizes read. The machine may be shared: compare the CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")

import yaml  # noqa: E402
from repo2model.core.artifacts import iter_commit_dicts  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402
from repo2model.ranking.file_ranking import FileRanking  # noqa: E402
from repo2model.ranking.ranker import HISTORY_FILE  # noqa: E402
from repo2model.stages import pipeline  # noqa: E402

STAGES = ("git_scraper", "semantic_chunker", "tokenizer", "dataset_builder", "train_ranker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="a git bundle (e.g. ../shared/data/repos/axum.bundle)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-ranker-load"), help="clone and artifacts")
    parser.add_argument("--rounds", type=int, default=3, help="loads of each kind (the median is printed)")
    args = parser.parse_args()
    work = args.work.resolve()
    paths = prepare(args.bundle.resolve(), work)
    replay = work / "replay" / "ranker"  # the same folder as one written before history.json existed
    if replay.exists():
        shutil.rmtree(replay.parent)
    shutil.copytree(paths.ranker_dir, replay)
    (replay / HISTORY_FILE).unlink()
    task = next(iter(reversed(list(iter_commit_dicts(paths.commits)))))["message"] or "Fix the tests"
    saved = timed(lambda: FileRanking.load(paths.ranker_dir), args.rounds)
    replayed = timed(lambda: FileRanking.load(replay, paths.commits, paths.chunks), args.rounds)
    same = saved["ranking"].rank([], task) == replayed["ranking"].rank([], task)
    for ranking in (saved["ranking"], replayed["ranking"]):
        if ranking.code is not None:
            ranking.code.close()
    sizes = {name: path.stat().st_size for name, path in (("history.json", paths.ranker_dir / HISTORY_FILE),
                                                           ("commits + chunks", paths.commits))}
    sizes["commits + chunks"] += paths.chunks.stat().st_size
    print(f"\n{args.bundle.stem}: {saved['ranking'].past.position} commits; FileRanking.load, median of {args.rounds}:")
    for name, figures in (("history.json (saved)", saved), ("replay of commits + chunks", replayed)):
        print(f"    {name:28s} {figures['wall']:.2f}s wall, {figures['cpu']:.2f}s CPU")
    print(f"    saved / replay: {saved['cpu'] / replayed['cpu']:.3f} of the CPU time, "
          f"{saved['wall'] / replayed['wall']:.3f} of the wall time; same ranking for a task: {same}")
    print(f"    read: history.json {sizes['history.json'] / 1e6:.1f} MB, commits + chunks "
          f"{sizes['commits + chunks'] / 1e6:.1f} MB; load average {os.getloadavg()[0]:.1f}")


def prepare(bundle: Path, work: Path) -> ArtifactPaths:
    """The bundle cloned, stages 1-4 and train_ranker run with the default config (up-to-date ones skipped)."""
    repo = work / "repo"
    if not repo.exists():
        subprocess.run(["git", "clone", "-q", str(bundle), str(repo)], check=True)
    config = work / "config.yaml"
    settings = {"pipeline": {"output_dir": str(work / "out")}, "git_scraper": {"repo": str(repo)}}
    config.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    for stage in STAGES:
        if pipeline.run_pipeline(config, only=stage) != 0:
            raise SystemExit(f"stage {stage} failed (see {work / 'out' / 'pipeline.log'})")
    return ArtifactPaths.under(work / "out")


def timed(load, rounds: int) -> dict:
    walls, cpus, ranking = [], [], None
    for _ in range(rounds):
        wall, cpu = time.monotonic(), time.process_time()
        ranking = load()
        walls.append(time.monotonic() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "ranking": ranking}


if __name__ == "__main__":
    main()
