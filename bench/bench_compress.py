"""Benchmark: zstd-compressed intermediates (`pipeline.compress: true`) against plain ones, same run.

    python bench/bench_compress.py                                   # ../shared/data/repos/axum.bundle
    python bench/bench_compress.py path/to/axum --rounds 2           # a repository folder as it is

For each round and each setting (plain, then compressed, alternating which goes
first), stages 1-2 (git_scraper, semantic_chunker) run as their own
`python <stage>.py --config ...` processes into their own output folder, then
one in-process pass reads both artifacts back the way the later stages do
(`iter_commit_dicts` over commits, `iter_jsonl` over chunks). A bundle is cloned
into a temporary folder first (its other branches are origin/*).

Prints the artifact sizes, wall and CPU seconds per step, and the ratios
compressed / plain (CPU seconds say more than wall seconds on a busy machine),
and checks that the compressed files decompress to the plain files' bytes.
"""

from __future__ import annotations

import argparse
import filecmp
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]

from repo2model.core.artifacts import iter_commit_dicts, iter_jsonl  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402

DEFAULT_HISTORY = ROOT.parent / "shared" / "data" / "repos" / "axum.bundle"
STAGES = ("git_scraper", "semantic_chunker")
SETTINGS = {"plain": False, "zstd": True}


def timed(action) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its finished children) of `action()`."""
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    return wall, cpu


def run_stage(stage: str, config: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / f"{stage}.py"), "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{stage} failed:\n{proc.stderr[-2000:]}")


def read_back(paths: ArtifactPaths) -> None:
    commits = sum(1 for _ in iter_commit_dicts(paths.commits))
    chunks = sum(1 for _ in iter_jsonl(paths.chunks))
    assert commits and chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("history", nargs="?", type=Path, default=DEFAULT_HISTORY, help="a bundle or a repository folder")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as scratch:
        work = Path(scratch)
        repo = args.history
        if not repo.is_dir():
            repo = work / "repo"
            subprocess.run(["git", "clone", "-q", str(args.history), str(repo)], check=True)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            order = list(SETTINGS) if round_ % 2 == 0 else list(reversed(SETTINGS))
            for setting in order:
                out = work / setting
                config = work / f"{setting}.yaml"
                config.write_text(f"pipeline:\n  output_dir: {out}\n  compress: {str(SETTINGS[setting]).lower()}\n"
                                  f"git_scraper:\n  repo: {repo}\n  include_remotes: true\n", encoding="utf-8")
                for stage in STAGES:
                    times.setdefault((setting, stage), []).append(timed(lambda: run_stage(stage, config)))
                paths = ArtifactPaths.under(out, compress=SETTINGS[setting])
                times.setdefault((setting, "read back"), []).append(timed(lambda: read_back(paths)))
        plain, packed = ArtifactPaths.under(work / "plain", compress=False), ArtifactPaths.under(work / "zstd", compress=True)
        print(f"history: {args.history} ({args.rounds} round(s); best of rounds)")
        print(f"{'artifact':14} {'plain MB':>10} {'zstd MB':>10} {'ratio':>7}  identical after decompression")
        for name in ("commits", "chunks"):
            a, b = getattr(plain, name), getattr(packed, name)
            restored = work / f"{name}.restored"
            with open(b, "rb") as src, open(restored, "wb") as dst:
                zstandard.ZstdDecompressor().copy_stream(src, dst)
            same = filecmp.cmp(a, restored, shallow=False)
            print(f"{name:14} {a.stat().st_size / 1e6:10.1f} {b.stat().st_size / 1e6:10.1f} "
                  f"{b.stat().st_size / a.stat().st_size:7.3f}  {same}")
        print(f"{'step':18} {'plain wall':>10} {'zstd wall':>10} {'ratio':>7} {'plain cpu':>10} {'zstd cpu':>10} {'ratio':>7}")
        for step in (*STAGES, "read back"):
            (pw, pc), (zw, zc) = (min(times[("plain", step)]), min(times[("zstd", step)]))
            print(f"{step:18} {pw:10.1f} {zw:10.1f} {zw / pw:7.2f} {pc:10.1f} {zc:10.1f} {zc / pc:7.2f}")


if __name__ == "__main__":
    main()
