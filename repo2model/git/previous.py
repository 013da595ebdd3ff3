"""An incremental scrape's previous commits.json: which commits it holds, and their records read back
one at a time (by offset), when they were scraped with the same settings, .mailmap and git."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO

from repo2model.core.artifacts import is_compressed, open_text, read_commits_metadata
from repo2model.core.errors import UserError, first_line
from repo2model.core.records import PATCH_UNAVAILABLE, Commit, shape_error


class WrongShape(UserError):
    """A commits.json line that is valid JSON but not a commit record (someone edited the file)."""


class PreviousScrape:
    """The commits of an existing commits.json (an incremental run): which it holds, and their
    records by hash, read back one at a time.

    `reusable` is False (with `reason`) when the records cannot be reused: no file, a
    cut-off or corrupt one, or one made with other settings, .mailmap or git. `known`
    (the hashes it holds) is read whenever the file is readable, reusable or not, so
    that the run can say which commits are new and which are gone (rewritten history).
    """

    def __init__(self, path: Path):
        self.path = path
        self.known: set[str] = set()
        self.offsets: dict[str, tuple[int, int]] = {}  # hash -> (byte offset, line number)
        self.reusable = False
        self.reason: str | None = None
        self._fh: IO[bytes] | None = None

    @classmethod
    def open(cls, path: Path, digest: str) -> "PreviousScrape":
        previous = cls(path)
        if not path.is_file():
            previous.reason = f"no {path.name} yet"
            return previous
        try:
            metadata = read_commits_metadata(path)
            previous._index()
        except WrongShape:
            previous.close()
            raise
        except (UserError, UnicodeDecodeError, ValueError) as exc:
            previous.close()
            previous.known.clear()
            previous.offsets.clear()
            previous.reason = f"{path.name} is cut off or corrupt ({first_line(exc, 120)})"
            return previous
        if metadata.get("scrape_digest") != digest:
            previous.close()
            previous.reason = f"settings, .mailmap, git or the scraper's format changed since {path.name} was written"
            return previous
        previous.reusable = True
        return previous

    def _index(self) -> None:
        """One pass over the file: each commit line's hash, offset and line number, each record's
        shape checked (before any work is done), and the end of the file checked."""
        self._fh = _readable_copy(self.path)
        fh = self._fh
        fh.readline()
        if fh.readline() != b'"commits": [\n':
            raise ValueError("no commit list on line 2")
        offset, lineno, complete = fh.tell(), 2, False
        for line in fh:
            lineno += 1
            if line == b"]}\n":
                complete = True
                break
            if not line.endswith(b"\n"):
                break
            record = json.loads(line[:-2] if line.endswith(b",\n") else line)
            problem = shape_error(Commit, record) or _time_problem(record)
            if problem:
                raise WrongShape(f"{self.path}: line {lineno}: {problem}: not a commit record git_scraper "
                                 "wrote (rerun without --incremental to scrape everything again)")
            self.known.add(record["hash"])
            # a file git could not read last time is tried again
            if not any(f["patch_skipped"] == PATCH_UNAVAILABLE for f in record["files"] if "patch_skipped" in f):
                self.offsets[record["hash"]] = (offset, lineno)
            offset += len(line)
        if not complete:
            raise ValueError(f"ends at line {lineno} without the closing ]}}")

    def __contains__(self, sha: str) -> bool:
        return self.reusable and sha in self.offsets

    def read(self, sha: str) -> dict:
        """The record of `sha` (checked when the file was opened)."""
        offset, _ = self.offsets[sha]
        self._fh.seek(offset)
        line = self._fh.readline()
        return json.loads(line[:-2] if line.endswith(b",\n") else line)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _time_problem(record: dict) -> str | None:
    for key in ("authored_at", "committed_at"):
        try:
            datetime.fromisoformat(record[key])
        except ValueError:
            return f"{key}: expected an ISO 8601 time, got {record[key][:40]!r}"
    return None


def _readable_copy(path: Path) -> IO[bytes]:
    """The file itself, or for a `.zst` one a decompressed temporary copy (records are read by offset)."""
    if not is_compressed(path):
        return open(path, "rb")
    spool = tempfile.TemporaryFile(dir=path.parent)
    with open_text(path) as fh:
        for line in fh:
            spool.write(line.encode("utf-8"))
    spool.seek(0)
    return spool
