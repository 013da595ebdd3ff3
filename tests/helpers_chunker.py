"""Helpers for the chunker tests: commit records read from a real repository with `git`.

`commit_record` builds a `Commit` the way the scraper's contract describes it
(first-parent diff, `-U3`, patch from the first `@@`, blob ids), straight from
git plumbing, so that the chunker's unit tests do not depend on the scraper.
The integration tests use the real scraper.
"""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path

from repo2model.core.records import Chunk, Commit, FileChange, Person


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout.decode("utf-8", "replace")


def _raw_changes(repo: Path, base: str, full: str) -> list[tuple[str, str, str, str | None, str]]:
    """(status letter, old blob, new blob, old path, path) per changed file, NUL-separated (any path)."""
    fields = _git(repo, "diff-tree", "-z", "-r", "-M", "--no-abbrev", "--raw", base, full).split("\0")
    changes = []
    index = 0
    while index < len(fields) and fields[index]:
        _, _, old_blob, new_blob, status = fields[index].lstrip(":").split()
        if status[0] in "RC":
            old_path, path = fields[index + 1], fields[index + 2]
            index += 3
        else:
            old_path, path = None, fields[index + 1]
            index += 2
        changes.append((status[0], old_blob, new_blob, old_path, path))
    return changes


def commit_record(repo: Path, sha: str) -> Commit:
    fields = _git(repo, "show", "-s", "--format=%H%x00%P%x00%an%x00%ae%x00%aI%x00%cI%x00%B", sha).split("\x00")
    full, parents = fields[0], fields[1].split()
    base = parents[0] if parents else _git(repo, "hash-object", "-t", "tree", "/dev/null").strip()
    files = []
    for status_letter, old_blob, new_blob, old_path, path in _raw_changes(repo, base, full):
        diff_paths = [old_path, path] if old_path else [path]
        patch = _git(repo, "--literal-pathspecs", "diff", "-U3", "-M", "--no-color", base, full, "--", *diff_paths)
        binary = "Binary files" in patch and "@@" not in patch
        at = patch.find("\n@@ ")
        text = patch[at + 1 :] if at >= 0 else ""
        additions = sum(1 for l in text.split("\n") if l.startswith("+"))
        deletions = sum(1 for l in text.split("\n") if l.startswith("-"))
        files.append(FileChange(
            path=path, old_path=old_path, status=status_letter, additions=additions, deletions=deletions,
            binary=binary, old_blob=None if set(old_blob) == {"0"} else old_blob,
            new_blob=None if set(new_blob) == {"0"} else new_blob,
            patch=None if binary else text, patch_skipped="binary" if binary else None,
        ))
    return Commit(
        hash=full, parents=parents, author=Person(fields[2], fields[3]), committer=Person(fields[2], fields[3]),
        authored_at=fields[4], committed_at=fields[5], message=fields[6].strip(), files=files,
        is_merge=len(parents) > 1,
    )


def history(repo: Path) -> list[str]:
    return _git(repo, "rev-list", "--topo-order", "--reverse", "HEAD").split()


def summary(chunks: list[Chunk]) -> list[tuple]:
    """(file, kind, symbol, change_type, module, old_span, new_span) per chunk: what the tests compare."""
    return [
        (c.file, c.kind, c.symbol, c.change_type, c.module,
         tuple(c.old_span) if c.old_span else None, tuple(c.new_span) if c.new_span else None)
        for c in chunks
    ]


def coverage_problems(commit: Commit, chunks: list[Chunk]) -> list[str]:
    """Changed lines of the commit's patches that no chunk carries, or that several carry."""
    expected = collections.Counter()
    for change in commit.files:
        if change.patch is not None:
            for line in change.patch.split("\n"):
                if line[:1] in "+-" and line:
                    expected[(line)] += 1
    carried = collections.Counter()
    for chunk in chunks:
        for line in chunk.diff.split("\n"):
            if line[:1] in "+-" and line:
                carried[line] += 1
    problems = [f"uncovered: {l!r} x{n}" for l, n in (expected - carried).items()]
    problems += [f"duplicated: {l!r} x{n}" for l, n in (carried - expected).items()]
    return problems
