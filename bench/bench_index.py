"""Benchmark the index stage's build and update: the embedding backends against torch float32 at 256 tokens (the
index as it was), measured in the same run.

    python bench/bench_index.py                                         # axum
    python bench/bench_index.py ../shared/data/repos/fd.bundle --copies 5    # also a tree of 5 copies of fd's files
    python bench/bench_index.py --variants onnx-int8:128 torch:256 --work /tmp/bench-index

For each history (a bundle, cloned into --work, or a repository): the index built from scratch at HEAD~20 with
each variant (backend:max_tokens; the first is the reference), then updated to HEAD (the "re-index after 20
commits"). `--copies N` also builds a synthetic larger tree: the history's HEAD files copied N times under
copy-1/ .. copy-N/ into a new one-commit repository (as the held-out workspace, ~2,500 files for axum x5),
built with every variant but the reference (on a shared 2-core machine the reference takes an hour there; its
units per second on the history itself say what it would take).

Prints per history and variant: units, build wall and CPU seconds, units per wall second, the update's wall and
CPU seconds and units embedded, and the build's ratio to the reference variant (CPU seconds: the machine may
be shared). The one-time ONNX export (cached per model) is made before timing and printed on its own.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from repo2model.git.scraping import PathFilter, ScraperConfig  # noqa: E402
from repo2model.retrieval.embedding import Embedder  # noqa: E402
from repo2model.retrieval.index_config import IndexConfig  # noqa: E402
from repo2model.retrieval.unit_index import UnitIndex  # noqa: E402

DEFAULT = [ROOT.parent / "shared" / "data" / "repos" / "axum.bundle"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("histories", nargs="*", type=Path, default=DEFAULT)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-index")
    parser.add_argument("--variants", nargs="+", default=["torch:256", "onnx-int8:128"],
                        help="backend:max_tokens, the first is the reference (default: torch:256 onnx-int8:128)")
    parser.add_argument("--copies", type=int, default=0, help="also a tree of N copies of each history's files")
    parser.add_argument("--threads", type=int, default=None, help="index.num_threads")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    variants = [(v.split(":")[0], int(v.split(":")[1])) for v in args.variants]
    embedders = {}
    for backend, tokens in variants:
        started = time.perf_counter()
        embedder = Embedder.from_config(IndexConfig(backend=backend, max_tokens=tokens, num_threads=args.threads))
        embedder.embed(["warm up"])  # loads the model (and exports it to ONNX the first time: cached)
        embedders[(backend, tokens)] = embedder
        print(f"{backend}:{tokens}: {embedder.identity}, loaded in {time.perf_counter() - started:.1f}s", flush=True)
    repos = []
    for history in args.histories:
        repo = clone(history.resolve(), args.work)
        repos.append((repo.name, repo, "HEAD~20", "HEAD", variants))
        if args.copies:
            copied = copy_tree(repo, args.work / f"{repo.name}-x{args.copies}", args.copies)
            repos.append((copied.name, copied, "HEAD", None, variants[1:]))
    print("\n| history | variant | units | build wall / CPU (s) | units/s (wall) | update after 20 commits wall / CPU (s), "
          "embedded | build CPU vs reference |")
    print("|---|---|---|---|---|---|---|")
    for name, repo, start, end, chosen in repos:
        reference = None if chosen == variants else 0.0
        for backend, tokens in chosen:
            row = bench(repo, args.work / f"index-{name}-{backend}-{tokens}", start, end,
                        embedders[(backend, tokens)], IndexConfig(backend=backend, max_tokens=tokens))
            reference = row["build_cpu"] if reference is None else reference
            update = (f"{row['update_wall']:.1f} / {row['update_cpu']:.1f}, {row['update_embedded']}"
                      if end else "-")
            ratio = f"{reference / row['build_cpu']:.2f}x" if reference else "-"
            print(f"| {name} | {backend}:{tokens} | {row['units']} | {row['build_wall']:.1f} / {row['build_cpu']:.1f} "
                  f"| {row['units'] / row['build_wall']:.0f} | {update} | {ratio} |",
                  flush=True)
    return 0


def clone(source: Path, work: Path) -> Path:
    if source.is_dir():
        return source
    target = work / source.name.removesuffix(".bundle")
    if not (target / ".git").exists():
        subprocess.run(["git", "clone", "-q", str(source), str(target)], check=True)
    return target


def copy_tree(repo: Path, target: Path, copies: int) -> Path:
    """A one-commit repository holding `copies` copies of `repo`'s HEAD files under copy-1/ ... copy-N/."""
    if (target / ".git").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["git", "init", "-q", str(target)], check=True)
    for n in range(1, copies + 1):
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--prefix", f"copy-{n}/", "HEAD"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    subprocess.run(["git", "-C", str(target), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(target), "-c", "user.name=bench", "-c", "user.email=bench@example.com",
                    "commit", "-q", "-m", f"{copies} copies of {repo.name}"], check=True)
    return target


def bench(repo: Path, folder: Path, start: str, end: str | None, embedder: Embedder, cfg: IndexConfig) -> dict:
    scraper = ScraperConfig(repo=repo)
    excluded = PathFilter(scraper.file_filters, scraper.exclude_globs).excluded
    shutil.rmtree(folder, ignore_errors=True)
    index = UnitIndex(cfg, folder, embedder)
    cpu = time.process_time()
    built = index.update(repo, start, redactor=scraper.redactor(), excluded=excluded, progress=False)
    row = {"units": built.units, "build_wall": built.seconds, "build_cpu": time.process_time() - cpu}
    if end:
        cpu = time.process_time()
        updated = index.update(repo, end, redactor=scraper.redactor(), excluded=excluded, progress=False)
        row.update(update_wall=updated.seconds, update_cpu=time.process_time() - cpu, update_embedded=updated.embedded)
    shutil.rmtree(folder, ignore_errors=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
