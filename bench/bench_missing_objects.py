"""Reading an offline partial clone: what git does with a missing object, and what CatFile's guard saves.

    python bench/bench_missing_objects.py                               # ../shared/data/repos/click.bundle
    python bench/bench_missing_objects.py ../shared/data/repos/fd.bundle --naive 300

For each history (a bundle, cloned into a temporary folder):
1. a `git clone --filter=blob:none` of it over file:// (as `git clone --filter=blob:none <url>` leaves a
   repository: every commit and tree, only the checked-out blobs), its origin then removed: offline;
2. every blob the history names (`git rev-list --objects --missing=print --all`, which lists without
   fetching) read through CatFile: after git's first death on a missing object CatFile answers the clone's
   other missing objects from its local object list (repo2model.git.objects.LocalObjects); the reference is the
   same reader without that list, where git dies (and is restarted) once per missing object: measured on
   the first `--naive` names only (about 10 ms each), the ratio per object;
3. the git_scraper stage on the partial clone against the full clone: seconds, objects reported missing,
   file changes without a patch.

Reports the git version: with it, what a missing object does to `git cat-file --batch` (dies, exit 128, or
answers "missing") and how long it took.
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

from repo2model.git.commands import git, git_environment, git_version  # noqa: E402
from repo2model.git.objects import CatFile  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402
from repo2model.git.scraping import ScraperConfig  # noqa: E402

from repo2model.stages import git_scraper  # noqa: E402

DEFAULT_HISTORY = ROOT.parent / "shared" / "data" / "repos" / "click.bundle"


class NaiveCatFile(CatFile):
    """CatFile without the partial clone's local object list: git dies on every missing object."""

    def _lost(self, name: str) -> None:
        self.unreadable += 1


def partial_clone(history: Path, work: Path) -> tuple[Path, Path]:
    full = work / "full"
    subprocess.run(["git", "clone", "-q", str(history), str(full)], check=True)
    source = work / "source.git"  # every branch of the bundle a branch here: the partial clone has them all
    subprocess.run(["git", "clone", "-q", "--bare", str(history), str(source)], check=True)
    subprocess.run(["git", "-C", str(source), "config", "uploadpack.allowFilter", "true"], check=True)
    partial = work / "partial"
    subprocess.run(["git", "clone", "-q", "--filter=blob:none", f"file://{source}", str(partial)], check=True,
                   capture_output=True)
    shutil.rmtree(source)
    return full, partial


def blob_names(repo: Path) -> tuple[list[str], set[str]]:
    """Every blob id of the history (missing ones first listed as `?<id>`), and the missing ones."""
    out = git(repo, "rev-list", "--objects", "--missing=print", "--all")
    missing = {line[1:41] for line in out.splitlines() if line.startswith("?")}
    trees_and_commits = set(git(repo, "rev-list", "--all").split())
    names = [line.lstrip("?")[:40] for line in out.splitlines()]
    blobs = [n for n in names if n not in trees_and_commits]
    kinds = git(repo, "cat-file", "--batch-check=%(objectname) %(objecttype)", input=(
        "\n".join(n for n in blobs if n not in missing) + "\n").encode()).split("\n")
    present_blobs = {line.split()[0] for line in kinds if line.endswith(" blob")}
    return [n for n in blobs if n in missing or n in present_blobs], missing


def one_missing(repo: Path, oid: str) -> str:
    started = time.perf_counter()
    proc = subprocess.run(["git", "-C", str(repo), "cat-file", "--batch"], input=f"{oid}\n".encode(),
                          capture_output=True, env=git_environment())
    seconds = time.perf_counter() - started
    answer = proc.stdout.decode(errors="replace").strip() or proc.stderr.decode(errors="replace").strip().splitlines()[-1]
    return f"exit {proc.returncode} in {seconds * 1000:.0f} ms: {answer}"


def read_all(reader: type[CatFile], repo: Path, names: list[str]) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds of this process and its git children, None answers, unreadable)."""
    started, cpu = time.perf_counter(), cpu_seconds()
    with reader(repo) as objects:
        answers = objects.read_many(names)
        unreadable = objects.unreadable
    return time.perf_counter() - started, cpu_seconds() - cpu, sum(a is None for a in answers), unreadable


def cpu_seconds() -> float:
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def scrape(repo: Path, out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    summary = git_scraper.run(ScraperConfig(repo=repo), ArtifactPaths.under(out))
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("histories", nargs="*", type=Path, default=[DEFAULT_HISTORY])
    parser.add_argument("--naive", type=int, default=200, help="names read by the reference reader (default 200)")
    args = parser.parse_args()
    print(git_version())
    for history in args.histories:
        work = Path(tempfile.mkdtemp(prefix="bench-missing-"))
        try:
            full, partial = partial_clone(history, work)
            names, missing = blob_names(partial)
            print(f"{history.name}: a blob-less clone, offline: {len(names)} blobs named, {len(missing)} missing")
            print(f"  git cat-file --batch on a missing blob: {one_missing(partial, sorted(missing)[0])}")
            wall, cpu, none, unreadable = read_all(CatFile, partial, names)
            print(f"  CatFile, every blob: {wall:.2f}s wall, {cpu:.2f}s CPU, {none} None, {unreadable} unreadable")
            sample = names[: args.naive]
            sample_missing = sum(n in missing for n in sample)
            guarded = read_all(CatFile, partial, sample)
            naive = read_all(NaiveCatFile, partial, sample)
            print(f"  the first {len(sample)} names ({sample_missing} missing): with the local object list "
                  f"{guarded[0]:.3f}s wall / {guarded[1]:.3f}s CPU, without it (git dies on each) {naive[0]:.3f}s "
                  f"wall / {naive[1]:.3f}s CPU: {naive[0] / max(guarded[0], 1e-9):.0f}x wall, "
                  f"{naive[1] / max(guarded[1], 1e-9):.0f}x CPU; {naive[0] / max(sample_missing, 1) * 1000:.1f} ms "
                  "per missing object without it")
            full_s, full_summary = scrape(full, work / "out-full")
            partial_s, partial_summary = scrape(partial, work / "out-partial")
            print(f"  git_scraper: full clone {full_s:.1f}s ({full_summary['commits']} commits), partial clone "
                  f"{partial_s:.1f}s ({partial_summary['commits']} commits, {partial_summary['missing_objects']} "
                  f"objects missing, {partial_summary['unavailable_files']} file changes without a patch): "
                  f"{partial_s / full_s:.2f}x")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
