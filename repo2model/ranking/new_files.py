"""Where a commit will create files: a new file is in no tree and no history, so no ranker can rank it, but the
folder it appears in can be named, and sometimes its name.

    guesses = new_file_guesses(task, ranked, past, tree)      # [NewFolder(folder, score, paths), ...] best first
    row.update(new_file_figures(guesses, new_paths))            # evaluate.py: a test target's figures
    summary = new_file_summary(rows)                            # over the targets (evaluation.md "New files")

A folder's score: the reciprocal ranks of the ranked files (the ranker's best `depth`) that lie in it, times one
plus the files first seen in it over the last GROWTH_WINDOW commits (a folder that grows gets the next file). Its
`paths` are the task's identifiers (`Content-Disposition`, `PathRouter`, `with_executor`) as file names in that
folder, with its most common extension, where no such file exists yet.

Measured on the test splits (latest 10%; docs/benchmarks.md, "New files"): created files are 0.9-4.6% of the
changed files of fd, axum, click and axum-agentic (5-12% of fd and click squashed by 8); the five folders hold
0-60% of them (axum-agentic 10 of 20, click-squash8 20 of 36), the names 1 of 20 on axum-agentic.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from repo2model.ranking.history import PastCommits

DEPTH = 20  # the ranked files whose folders are scored
FOLDERS = 5  # folders named
GROWTH_WINDOW = 50  # commits over which a folder's new files count
MAX_NAMES = 3  # named guesses per folder

# Identifiers a person writes in a task: `backticked`, CamelCase, snake_case, kebab-case of capitalised words.
_BACKTICKED = re.compile(r"`([^`]{2,60})`")
_CAMEL = re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]+)+\b")
_SNAKE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
_KEBAB = re.compile(r"\b[A-Z][a-z0-9]+(?:-[A-Z][a-z0-9]+)+\b")
_PARTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


@dataclass
class NewFolder:
    folder: str  # "" = the repository's root
    score: float
    paths: list[str] = field(default_factory=list)  # named guesses, best first

    def to_json(self) -> dict:
        return {"folder": self.folder, "score": round(self.score, 6), "paths": list(self.paths)}


def task_stems(task: str) -> list[str]:
    """The task's identifiers as snake_case file stems, in order of appearance, each once."""
    found: list[tuple[int, str]] = []
    for match in _BACKTICKED.finditer(task):
        for name in re.split(r"::|\.|\s+", match.group(1)):
            found.append((match.start(), name))
    for pattern in (_CAMEL, _SNAKE, _KEBAB):
        found += [(m.start(), m.group(0)) for m in pattern.finditer(task)]
    stems = []
    for _, name in sorted(found, key=lambda pair: pair[0]):
        parts = _PARTS.findall(name.replace("-", "_"))
        stem = "_".join(p.lower() for p in parts if p)
        if len(stem) >= 3 and stem not in stems:
            stems.append(stem)
    return stems


def new_file_guesses(task: str, ranked: list[tuple[str, float]], past: PastCommits, tree: Collection[str] | None,
                     depth: int = DEPTH, folders: int = FOLDERS) -> list[NewFolder]:
    """The `folders` likeliest folders for the commit's new files, best first (module docstring); `tree`: the
    parent's paths (None: unknown, and no named guesses)."""
    scores: Counter[str] = Counter()
    for rank, (path, _) in enumerate(ranked[:depth], start=1):
        scores[posixpath.dirname(path)] += 1.0 / rank
    if not scores:
        return []
    since = past.position - GROWTH_WINDOW
    grown = Counter(posixpath.dirname(p) for p, first in past.first_seen.items() if first > 0 and first >= since)
    for folder in scores:
        scores[folder] *= 1 + grown.get(folder, 0)
    best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:folders]
    stems = task_stems(task) if tree is not None else []
    extensions = folder_extensions({folder for folder, _ in best}, tree) if stems else {}
    out = []
    for folder, score in best:
        paths = []
        extension = extensions.get(folder)
        if extension is not None:
            for stem in stems:
                path = posixpath.join(folder, stem + extension)
                if path not in tree:
                    paths.append(path)
                if len(paths) >= MAX_NAMES:
                    break
        out.append(NewFolder(folder, score, paths))
    return out


def folder_extensions(folders: set[str], tree: Collection[str]) -> dict[str, str]:
    """The most common extension of the files directly in each of `folders` (one pass over the tree; a folder
    whose files have none is left out)."""
    counts: dict[str, Counter[str]] = {}
    for path in tree:
        folder, extension = posixpath.dirname(path), posixpath.splitext(path)[1]
        if extension and folder in folders:
            counts.setdefault(folder, Counter())[extension] += 1
    return {folder: min(c, key=lambda ext: (-c[ext], ext)) for folder, c in counts.items()}


def new_file_figures(guesses: list[NewFolder], new_paths: list[str]) -> dict:
    """Of a target's created files: how many, how many lie in a guessed folder, how many were named exactly."""
    folders = {g.folder for g in guesses}
    named = {p for g in guesses for p in g.paths}
    return {"new_files": len(new_paths), "new_folder_found": sum(posixpath.dirname(p) in folders for p in new_paths),
            "new_named": sum(p in named for p in new_paths)}


def new_file_summary(rows: list[dict]) -> dict | None:
    """The per-commit figures of new_file_figures (in evaluate.py's rows) over the targets: None when no row has
    them (no repository to tell a new file from an old one)."""
    rows = [r for r in rows if "new_files" in r]
    if not rows:
        return None
    new = sum(r["new_files"] for r in rows)
    files = sum(r.get("files") or 0 for r in rows)
    folder, named = sum(r["new_folder_found"] for r in rows), sum(r["new_named"] for r in rows)
    return {"targets": len(rows), "commits_with_new": sum(1 for r in rows if r["new_files"]), "new_files": new,
            "changed_files": files, "share": round(new / files, 4) if files else None,
            "folder_found": folder, "folder_share": round(folder / new, 4) if new else None,
            "named": named, "named_share": round(named / new, 4) if new else None}
