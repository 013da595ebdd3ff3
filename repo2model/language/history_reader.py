"""A history as the commit language reads it: each commit of commits.json with its chunks from
chunks.jsonl, as checked records, streaming (`iter_commit_records`); the author and module counts
that choose the token families (`count_families`); and a spool that keeps the records for the
passes after the first (`HistorySpool`)."""

from __future__ import annotations

import collections
import dataclasses
import pickle
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from repo2model.core.artifacts import iter_commit_dicts, iter_commits_with_chunks, iter_jsonl
from repo2model.core.errors import UserError
from repo2model.core.records import Chunk, Commit, shape_error
from repo2model.language.tokens import module_top


def iter_commit_records(commits_path: Path, chunks_path: Path) -> Iterator[tuple[Commit, list[Chunk]]]:
    """Each commit of `commits.json` with its chunks from `chunks.jsonl`, as checked records, streaming.

    A record of the wrong shape (valid JSON, but `{"hash": 5}`, `files: "oops"`, a chunk line
    `{"x": 1}`) is a UserError naming the file, the line and the field.
    """
    position = 0
    chunk_line = 0
    joined = iter_commits_with_chunks(commits_path, chunks_path)
    while True:
        try:
            pair = next(joined, None)
        except (KeyError, TypeError, AttributeError):  # the join met a record that is not a commit or chunk
            raise _first_malformed(commits_path, chunks_path) from None
        if pair is None:
            return
        commit_dict, chunk_dicts = pair
        commit = commit_record(commit_dict, commits_path, position + COMMITS_FIRST_LINE)
        chunks = [chunk_record(c, chunks_path, chunk_line + k + 1) for k, c in enumerate(chunk_dicts)]
        position += 1
        chunk_line += len(chunk_dicts)
        yield commit, chunks


COMMITS_FIRST_LINE = 3  # commits.json: the metadata on line 1, `"commits": [` on line 2, then one commit per line

_TEXT, _OPTIONAL_TEXT = (str,), (str, type(None))
# The fields rendering and ordering read, with their types: checked on every record (a fast check;
# records.shape_error, which checks every field, names the problem when one fails).
_COMMIT_READS = {"hash": _TEXT, "parents": (list,), "author": (dict,), "authored_at": _TEXT, "committed_at": _TEXT,
                 "message": _TEXT, "files": (list,), "is_merge": (bool,), "on_default_first_parent": (bool,)}
_CHUNK_READS = {"commit": _TEXT, "file": _TEXT, "module": _OPTIONAL_TEXT, "symbol": _OPTIONAL_TEXT, "change_type": _TEXT,
                "after": _OPTIONAL_TEXT, "diff": _TEXT, "old_file": _OPTIONAL_TEXT, "old_symbol": _OPTIONAL_TEXT}


def _reads_fit(data: Any, fields: dict[str, tuple]) -> bool:
    return type(data) is dict and all(isinstance(data.get(name), types) for name, types in fields.items() if name in data)


def commit_record(data: Any, path: Path, line: int) -> Commit:
    """A commit record from its commits.json dict; UserError naming the file, line and field when it is malformed."""
    commit = _commit_if_readable(data)
    if commit is None:
        problem = shape_error(Commit, data) or "not a commit record"
        raise UserError(f"{path}: line {line}: {problem}: rerun the git_scraper stage")
    for name in ("authored_at", "committed_at"):
        try:
            datetime.fromisoformat(getattr(commit, name))
        except ValueError:
            value = getattr(commit, name)[:40]
            raise UserError(f"{path}: line {line}: {name}: expected an ISO 8601 time, got {value!r}: rerun the git_scraper stage") from None
    return commit


def _commit_if_readable(data: Any) -> Commit | None:
    if not (_reads_fit(data, _COMMIT_READS) and _reads_fit(data.get("author"), {"name": _TEXT})
            and all(isinstance(p, str) for p in data.get("parents", ()))):
        return None
    try:
        return Commit.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError):  # a field missing, or a malformed entry of `files`
        return None


def chunk_record(data: Any, path: Path, line: int) -> Chunk:
    """A chunk record from its chunks.jsonl dict; UserError naming the file, line and field when it is malformed."""
    if _reads_fit(data, _CHUNK_READS):
        try:
            return Chunk.from_dict(data)
        except TypeError:  # a required field is missing
            pass
    problem = shape_error(Chunk, data) or "not a chunk record"
    raise UserError(f"{path}: line {line}: {problem}: rerun the semantic_chunker stage")


def _first_malformed(commits_path: Path, chunks_path: Path) -> UserError:
    """The first malformed record of either file (the join stopped on one it could not read)."""
    for position, data in enumerate(iter_commit_dicts(commits_path)):
        commit_record(data, commits_path, position + COMMITS_FIRST_LINE)  # raises on the bad one
    for position, data in enumerate(iter_jsonl(chunks_path, "semantic_chunker")):
        chunk_record(data, chunks_path, position + 1)
    return UserError(f"{commits_path}, {chunks_path}: a record could not be read: rerun the git_scraper and semantic_chunker stages")


def count_families(history: Iterable[tuple[Commit, Sequence[Chunk]]]) -> tuple[dict[str, int], dict[str, int]]:
    """Commits per author name, chunks per module top segment."""
    authors: collections.Counter = collections.Counter()
    modules: collections.Counter = collections.Counter()
    for commit, chunks in history:
        authors[commit.author.name] += 1
        for chunk in chunks:
            if chunk.module:
                modules[module_top(chunk.module)[0]] += 1
    return dict(authors), dict(modules)


class HistorySpool:
    """The history's records, pickled to a temporary file by the first pass so that the later
    passes (BPE training, encoding) read them back without parsing JSON and checking shapes again.

    Only what rendering reads is kept: a commit's `files` (with their patches) and a chunk's
    `before` are left out. The file has no name on disk and disappears when closed.
    """

    def __init__(self, folder: Path):
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".tokenizer-spool-")
        self.count = 0

    def add(self, commit: Commit, chunks: list[Chunk]) -> None:
        record = (dataclasses.replace(commit, files=[]), [dataclasses.replace(c, before=None) for c in chunks])
        pickle.dump(record, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1

    def filled_from(self, history: Iterable[tuple[Commit, list[Chunk]]]) -> Iterator[tuple[Commit, list[Chunk]]]:
        """`history`, passed through, each record added on its way."""
        for commit, chunks in history:
            self.add(commit, chunks)
            yield commit, chunks

    def __iter__(self) -> Iterator[tuple[Commit, list[Chunk]]]:
        self._file.seek(0)
        for _ in range(self.count):
            yield pickle.load(self._file)

    def __enter__(self) -> "HistorySpool":
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
