"""Fit the prior ranker (repo2model/ranking/prior/) on the feature rows of several real histories.

    python bench/train_prior.py                            # regenerate the shipped prior
    python bench/train_prior.py --check                    # and fit it twice: the same bytes?
    python bench/train_prior.py --leave-out fd --output /tmp/prior-without-fd    # for evaluating on fd

Histories (git bundles in ../shared/data/repos/, relative to the project root): fd, axum and click as they are,
and fd and click squashed the way axum-agentic was made from axum (its README): every 8 (and, apart, every 4)
consecutive commits of the first-parent line become one commit with the tree of the last, its author and dates;
messages are coding agents' boilerplate ("codex cli local changes", "claude cli local changes") but on the
latest 10%, which get the subject of the largest of their original commits. Each squashed target is asked with
that real subject (while the history it learns from keeps the boilerplate), so that the prior learns how much
a real task is worth after a history whose messages say nothing. axum is not squashed: axum-agentic is axum
squashed, and the prior it is evaluated with must not have seen it.

Per history: clone (in --work), squash, git_scraper and semantic_chunker (the pipeline's default settings, two
chunker workers), then one walk over the history: the candidate rows of each target (a commit with chunks, not a
merge; the first 80% of them train, the next 10% val: the dataset builder's ratios) as train_ranker computes them
(repo2model.ranking.features, default settings). The rows are cached in --work, keyed by the code and settings
that shape them. The prior (repo2model.ranking.prior.fit_prior) learns from the train rows of every history but
those left out, early-stopped on their val rows; prior.txt + prior.json go to --output.

--leave-out NAME (repeatable): leave out history NAME and those made from it (fd: fd, fd squashed by 8 and by 4);
bench/bench_prediction.py evaluates each history with a prior fitted without it (axum-agentic without axum).
--check fits the prior a second time from the same rows and compares the bytes.
Prints the seconds (wall and this process's CPU) of each step and the prior's trees and size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")

from repo2model.core.artifacts import iter_commits_with_chunks  # noqa: E402
from repo2model.core.config import section_dict  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402
from repo2model.ranking.features import CandidateRows, FeatureConfig, candidate_rows, load_rows, save_rows  # noqa: E402
from repo2model.ranking.history import BaselineConfig, rendered_files  # noqa: E402
from repo2model.ranking.prior import PRIOR_DIR, fit_prior, prior_rows, save_prior  # noqa: E402
from repo2model.ranking.targets import repository_of, walk_targets  # noqa: E402
from repo2model.stages import git_scraper, semantic_chunker  # noqa: E402

BASES = ("fd", "axum", "click")
SQUASHED = (("fd", 8), ("fd", 4), ("click", 8), ("click", 4))
BOILERPLATE = ("codex cli local changes", "claude cli local changes")
REAL_SHARE = 0.1  # the latest commits of a squashed history whose message is a real subject
SPLIT = (0.8, 0.1)  # train, val shares of a history's targets (the rest: test, unused)
# The code the rows are computed by (with the settings and the artifacts, their cache key).
SHAPING_MODULES = ("ranking/features.py", "ranking/pool.py", "ranking/targets.py", "ranking/history.py",
                   "ranking/baselines.py", "ranking/messages.py", "retrieval/bm25.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, default=ROOT / ".." / "shared" / "data" / "repos",
                        help="folder of <name>.bundle files (default: ../shared/data/repos)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/train-prior"), help="clones, artifacts, rows")
    parser.add_argument("--output", type=Path, help="the prior's folder (default: the shipped one, or "
                        "<work>/prior-without-<names> with --leave-out)")
    parser.add_argument("--leave-out", action="append", default=[], choices=BASES,
                        help="leave out this history and those made from it (repeatable)")
    parser.add_argument("--check", action="store_true", help="fit twice from the same rows: the same bytes?")
    args = parser.parse_args()
    output = args.output or (default_output(args.work, args.leave_out) if args.leave_out else PRIOR_DIR)
    started, cpu = time.monotonic(), time.process_time()
    rows = all_rows(args.leave_out, args.work, args.bundles)
    rows_seconds = (time.monotonic() - started, time.process_time() - cpu)
    booster, fit_seconds = fit(rows)
    save_prior(booster, output, described(rows))
    size = (output / "prior.txt").stat().st_size
    print(f"prior: {booster.num_trees()} trees, {size / 1024:.0f} KB -> {output}")
    print(f"histories and rows {rows_seconds[0]:.0f}s wall, {rows_seconds[1]:.0f}s CPU; fit {fit_seconds[0]:.0f}s "
          f"wall, {fit_seconds[1]:.0f}s CPU; total {time.monotonic() - started:.0f}s wall (load average "
          f"{os.getloadavg()[0]:.1f})")
    if args.check:
        again, _ = fit(rows)
        same = again.model_to_string() == booster.model_to_string()
        print(f"check: a second fit gives {'the same bytes' if same else 'OTHER BYTES'}")
        if not same:
            raise SystemExit(1)


def prior_without(leave_out: list[str], work: Path, bundles: Path) -> Path:
    """The folder of a prior fitted without the histories `leave_out` (and those made from them), fitted unless
    the one there learned from the same rows (bench/bench_prediction.py)."""
    output = default_output(work, leave_out)
    rows = all_rows(leave_out, work, bundles)
    info = output / "prior.json"
    if not (info.is_file() and json.loads(info.read_text(encoding="utf-8")).get("histories") == described(rows)):
        booster, _ = fit(rows)
        save_prior(booster, output, described(rows))
    return output


def default_output(work: Path, leave_out: list[str]) -> Path:
    return work.resolve() / f"prior-without-{'-'.join(sorted(set(leave_out))) or 'none'}"


def all_rows(leave_out: list[str], work: Path, bundles: Path) -> dict[str, dict]:
    return {name: history_rows(name, base, group, work, bundles) for name, base, group in histories()
            if base not in leave_out}


def described(rows: dict[str, dict]) -> dict:
    """What prior.json says of the histories it learned from."""
    return {name: {"train": len(r["train"]), "val": len(r["val"]), "rows": r["key"]} for name, r in rows.items()}


def histories() -> list[tuple[str, str, int]]:
    """(name, the bundle it comes from, squash group or 1) of every history the prior learns from."""
    return [(base, base, 1) for base in BASES] + [(f"{base}-squash{g}", base, g) for base, g in SQUASHED]


def fit(rows: dict[str, dict]):
    started, cpu = time.monotonic(), time.process_time()
    train = [r for name in rows for r in prior_rows(rows[name]["train"], rows[name]["uninformative"])]
    val = [r for name in rows for r in prior_rows(rows[name]["val"], rows[name]["uninformative"])]
    booster = fit_prior(train, val)
    return booster, (time.monotonic() - started, time.process_time() - cpu)


# ---------------------------------------------------------------- one history


def history_rows(name: str, base: str, group: int, work: Path, bundles: Path) -> dict:
    """{"train": [CandidateRows], "val": [...], "uninformative": {commit}, "key": ...} of one history (cached)."""
    started = time.monotonic()
    folder = work.resolve() / name
    source = clone(bundles / f"{base}.bundle", work.resolve() / base / "repo")
    repo, tasks = (source, {}) if group == 1 else squash(source, folder / "repo", group)
    paths = ArtifactPaths.under(folder / "out")
    if not paths.chunks.exists():
        git_scraper.run(git_scraper.Config(repo=repo), paths)
        semantic_chunker.run(semantic_chunker.Config(workers=2), paths, repo=repo)
    key = rows_key(paths, tasks)
    cached = {split: load_rows(folder, f"prior_rows_{split}") for split in ("train", "val")}
    if all(c is not None and c[0].get("key") == key for c in cached.values()):
        rows = {split: list(cached[split][1].values()) for split in cached}
        uninformative = set(cached["train"][0]["uninformative"])
    else:
        rows, uninformative = walk(paths, tasks)
        for split in rows:
            save_rows(folder, f"prior_rows_{split}", rows[split], {"key": key, "uninformative": sorted(uninformative)})
    print(f"{name}: {len(rows['train'])} train, {len(rows['val'])} val targets "
          f"({sum(r.commit in uninformative for r in rows['train'])} train messages uninformative), "
          f"{sum(len(r.paths) for r in rows['train'])} train rows, {time.monotonic() - started:.0f}s", flush=True)
    return {**rows, "uninformative": uninformative, "key": key}


def walk(paths: ArtifactPaths, tasks: dict[str, str]) -> tuple[dict[str, list[CandidateRows]], set[str]]:
    """The train and val targets' rows, and which of them have an uninformative task (judged against the
    whole history's messages, as train_ranker judges them)."""
    targets = [c["hash"] for c, chunks in iter_commits_with_chunks(paths.commits, paths.chunks)
               if rendered_files(chunks) and not c.get("is_merge")]
    n_train, n_val = int(len(targets) * SPLIT[0]), int(len(targets) * SPLIT[1])
    splits = {h: "train" for h in targets[:n_train]} | {h: "val" for h in targets[n_train: n_train + n_val]}
    rows: dict[str, list[CandidateRows]] = {"train": [], "val": []}
    asked, past = {}, None
    for state in walk_targets(paths.commits, paths.chunks, splits, BaselineConfig(), repository_of(paths.commits),
                              tasks=tasks):
        rows[state.target.split].append(candidate_rows(state, FeatureConfig()))
        asked[state.target.commit] = state.target.task
        past = state.past  # after the walk: the whole history
    uninformative = {c for c, task in asked.items() if past.message_counts.uninformative(task)}
    return rows, uninformative


def rows_key(paths: ArtifactPaths, tasks: dict[str, str]) -> str:
    """What shapes a history's rows: its artifacts, the tasks, the settings and the code that computes them."""
    digest = hashlib.blake2b(digest_size=16)
    for path in (paths.commits, paths.chunks):
        with open(path, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "blake2b").digest())
    digest.update(json.dumps([tasks, section_dict(FeatureConfig()), section_dict(BaselineConfig()), SPLIT],
                             sort_keys=True).encode())
    for module in SHAPING_MODULES:
        digest.update(module.encode() + (ROOT / "repo2model" / module).read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- cloning and squashing


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def clone(bundle: Path, dest: Path) -> Path:
    if not bundle.is_file():
        raise SystemExit(f"{bundle}: not found (give --bundles)")
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", str(bundle), str(dest)], check=True)
    return dest


def squash(source: Path, dest: Path, group: int) -> tuple[Path, dict[str, str]]:
    """A repository at `dest` whose history is `source`'s first-parent line squashed by `group` (the module
    docstring), and each squashed commit's real task (commit -> the subject of its largest original commit)."""
    line = git("rev-list", "--first-parent", "--reverse", "HEAD", cwd=source).split()
    n = len(line) // group
    line = line[len(line) - n * group:]  # the oldest remainder is left out
    sizes, subjects = commit_sizes(source)
    groups = [line[i * group: (i + 1) * group] for i in range(n)]
    tasks = [subjects[max(members, key=lambda c: (sizes.get(c, 0), c))] for members in groups]
    if not dest.exists():
        build_squashed(source, dest, groups, tasks)
    squashed = git("rev-list", "--first-parent", "--reverse", "HEAD", cwd=dest).split()
    if len(squashed) != len(groups):
        raise SystemExit(f"{dest}: not {source}'s history squashed by {group}: delete it")
    return dest, dict(zip(squashed, tasks))


def build_squashed(source: Path, dest: Path, groups: list[list[str]], tasks: list[str]) -> None:
    """The squashed commits, made in a new repository that borrows `source`'s objects while it is built."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", str(tmp), cwd=tmp.parent)
    alternates = tmp / ".git" / "objects" / "info" / "alternates"
    alternates.write_text(str(source / ".git" / "objects") + "\n", encoding="utf-8")
    real_from = len(groups) - round(REAL_SHARE * len(groups))
    parent = None
    for i, (members, task) in enumerate(zip(groups, tasks)):
        message = task if i >= real_from else BOILERPLATE[i % 2]
        fields = git("show", "-s", "--format=%T%x00%an%x00%ae%x00%aD%x00%cn%x00%ce%x00%cD", members[-1],
                     cwd=source).rstrip("\n").split("\x00")
        env = dict(os.environ, GIT_AUTHOR_NAME=fields[1], GIT_AUTHOR_EMAIL=fields[2], GIT_AUTHOR_DATE=fields[3],
                   GIT_COMMITTER_NAME=fields[4], GIT_COMMITTER_EMAIL=fields[5], GIT_COMMITTER_DATE=fields[6])
        parent = git("commit-tree", fields[0], "-m", message, *(["-p", parent] if parent else []), cwd=tmp,
                     env=env).strip()
    git("update-ref", "refs/heads/main", parent, cwd=tmp)
    git("repack", "-a", "-d", "-q", cwd=tmp)
    alternates.unlink()
    git("reset", "-q", "--hard", "main", cwd=tmp)
    tmp.rename(dest)


def commit_sizes(repo: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Every first-parent commit's changed files (none for a merge, as `git diff-tree` counts them) and its
    subject, from one git log."""
    out = git("log", "--first-parent", "--diff-merges=off", "--no-renames", "--format=%x00%H%x00%s", "--name-only",
              "HEAD", cwd=repo)
    sizes, subjects = {}, {}
    parts = out.split("\x00")
    for i in range(1, len(parts) - 1, 2):
        commit = parts[i]
        subject, _, files = parts[i + 1].partition("\n")
        subjects[commit] = subject
        sizes[commit] = len([f for f in files.splitlines() if f.strip()])
    return sizes, subjects


if __name__ == "__main__":
    sys.exit(main())
