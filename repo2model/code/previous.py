"""An incremental run's previous chunks.jsonl: the chunk lines of each commit, copied out as they were
when the chunks were made with the same settings (chunking_stats.json's `reuse` record says how)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO

from repo2model.core.artifacts import open_text, read_json
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths

log = logging.getLogger("semantic_chunker")


class PreviousChunks:
    """The previous chunks.jsonl, by commit, spooled to a plain file so that any commit's lines
    can be copied out in any order (also from a compressed chunks.jsonl.zst)."""

    def __init__(self, spool: Path, groups: dict[str, tuple[int, int, int]]):
        self.groups = groups  # commit -> (offset, bytes, chunks) in the spool file
        self.used: set[str] = set()
        self._file = open(spool, "rb")

    @classmethod
    def load(cls, paths: ArtifactPaths, reuse: dict, folder: Path) -> PreviousChunks | None:
        """The chunks of the last run when they can be reused (logged why not, if not)."""
        reason = cls._why_not(paths, reuse)
        if reason is None:
            spool = folder / "previous.jsonl"
            groups = _spool_chunks(paths.chunks, spool)
            if isinstance(groups, str):
                reason = groups
            else:
                return cls(spool, groups)
        log.info("semantic_chunker: incremental: chunking every commit (%s)", reason)
        return None

    @staticmethod
    def _why_not(paths: ArtifactPaths, reuse: dict) -> str | None:
        if not paths.chunks.exists():
            return f"no previous {paths.chunks.name}"
        try:
            recorded = read_json(paths.chunking_stats).get("reuse")
        except (UserError, AttributeError):
            recorded = None
        if recorded is None:
            return f"{paths.chunking_stats.name} does not say how the previous chunks were made"
        changed = sorted(k for k in set(reuse) | set(recorded) if reuse.get(k) != recorded.get(k))
        if changed:
            return f"the previous chunks were made with other settings ({', '.join(changed)})"
        return None

    def has(self, commit: str) -> bool:
        return commit in self.groups

    def copy_to(self, out: IO[str], commit: str) -> int:
        """Write the commit's previous chunk lines to `out`; returns how many."""
        offset, size, count = self.groups[commit]
        self._file.seek(offset)
        out.write(self._file.read(size).decode("utf-8"))
        self.used.add(commit)
        return count

    def close(self) -> None:
        self._file.close()

    def unused(self) -> tuple[int, int]:
        """(commits, chunks) of the previous file that were not copied: dropped."""
        dropped = [count for commit, (_, _, count) in self.groups.items() if commit not in self.used]
        return len(dropped), sum(dropped)


_CHUNK_PREFIX = '{"commit": "'  # how the stage writes every line (Chunk's first field)


def _spool_chunks(chunks_path: Path, spool: Path) -> dict[str, tuple[int, int, int]] | str:
    """Copy chunks.jsonl into `spool` (plain), indexing each commit's run of lines; a reason string
    when the file is not one this stage wrote (then nothing is reused)."""
    groups: dict[str, tuple[int, int, int]] = {}
    current, start, count, offset = None, 0, 0, 0
    try:
        with open_text(chunks_path) as source, open(spool, "wb") as target:
            for lineno, line in enumerate(source, 1):
                if not line.endswith("\n"):
                    return f"{chunks_path.name} is cut off at line {lineno}"
                commit = _commit_of(line)
                if commit is None:
                    return f"{chunks_path.name} line {lineno} is not a chunk"
                if commit != current:
                    if current is not None:
                        groups[current] = (start, offset - start, count)
                    if commit in groups:
                        return f"{chunks_path.name}: the chunks of commit {commit[:12]} are not together"
                    current, start, count = commit, offset, 0
                data = line.encode("utf-8")
                target.write(data)
                offset += len(data)
                count += 1
    except UserError as exc:  # a corrupt compressed file
        return str(exc)
    except UnicodeDecodeError:
        return f"{chunks_path.name} is not UTF-8"
    if current is not None:
        groups[current] = (start, offset - start, count)
    return groups


def _commit_of(line: str) -> str | None:
    """The `commit` of one chunks.jsonl line (read from its start: the stage writes it first)."""
    if line.startswith(_CHUNK_PREFIX):
        end = line.find('"', len(_CHUNK_PREFIX))
        if end > 0:
            return line[len(_CHUNK_PREFIX):end]
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    commit = record.get("commit") if isinstance(record, dict) else None
    return commit if isinstance(commit, str) else None
