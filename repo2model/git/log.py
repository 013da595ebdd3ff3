"""Reading `git log -z --raw [-p]` output: commit headers, tree diffs (`RawFile`) and patch sections.

The scraper asks git for exactly this stream (`LOG_FORMAT`: a marker git never
prints, then the header fields, NUL-separated); `LogReader` reads it one piece at
a time, so a commit that adds 100 MB of vendored code never sits in memory whole.
git dying part-way (a missing object: exit 128) surfaces as `StreamCut`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Iterator

from repo2model.core.records import ChangeStatus


MARKER = b"\x00\x00\x1eR2M\x1e"  # starts every commit in the stream; cannot occur in git's -z output
LOG_FORMAT = "%x00%x00%x1eR2M%x1e%H%x00%P%x00%aN%x00%aE%x00%aI%x00%cN%x00%cE%x00%cI%x00%B%x00"
HEADER_FIELDS = 9
ZERO_OIDS = {"0" * 40, "0" * 64}
SUBMODULE_MODE = "160000"


@dataclass
class RawFile:
    """One line of `git log --raw -z`: the tree-level facts of a file change."""

    old_mode: str
    new_mode: str
    old_oid: str | None
    new_oid: str | None
    status: ChangeStatus
    similarity: int | None
    path: str
    old_path: str | None


@dataclass
class RawCommit:
    hash: str
    parents: list[str]
    fields: list[bytes]  # aN, aE, aI, cN, cE, cI, B
    files: list[RawFile]
    sections: Iterator[bytes]  # the `diff --git` sections, in the files' order (read lazily)


def parse_raw(data: bytes) -> tuple[list[RawFile], bytes]:
    """`:mode mode oid oid status\\0path\\0[path2\\0]` entries; returns them and what follows."""
    files = []
    pos = 0
    while data.startswith(b":", pos):
        end = data.index(b"\0", pos)
        old_mode, new_mode, old_oid, new_oid, status = data[pos + 1:end].decode().split(" ")
        pos = end + 1
        end = data.index(b"\0", pos)
        first = data[pos:end].decode("utf-8", "replace")
        pos = end + 1
        old_path = None
        if status[0] in "RC":
            end = data.index(b"\0", pos)
            old_path, first = first, data[pos:end].decode("utf-8", "replace")
            pos = end + 1
        files.append(RawFile(
            old_mode, new_mode,
            None if old_oid in ZERO_OIDS else old_oid,
            None if new_oid in ZERO_OIDS else new_oid,
            ChangeStatus(status[0]), int(status[1:]) if len(status) > 1 else None, first, old_path,
        ))
    return files, data[pos:].lstrip(b"\0\n")


def split_sections(patch: bytes) -> list[bytes]:
    """The patch text cut at each `diff --git` line (hunk lines never start with `d`)."""
    if not patch:
        return []
    sections = patch.split(b"\ndiff --git ")
    sections[0] = sections[0].removeprefix(b"diff --git ")
    return sections


class StreamCut(Exception):
    """git stopped before the end of a commit (a missing object: exit 128)."""


class LogReader:
    """Reads the `git log -z --raw [-p]` stream one piece at a time: a commit's header and
    tree diff, then its patch sections one by one. Memory holds one section (at most about
    twice max_file_size), never a whole commit or the whole history."""

    SECTION = b"diff --git "
    NEXT_SECTION = b"\n" + SECTION
    CHUNK = 1 << 20  # bytes per read

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._read = proc.stdout.read1 if hasattr(proc.stdout, "read1") else proc.stdout.read
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    # -- buffer

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self._read(self.CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _compact(self) -> None:
        """Drop what was parsed (only where no buffer index is held)."""
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0

    def _available(self, n: int) -> bool:
        while len(self.buf) - self.pos < n:
            if not self._fill():
                return False
        return True

    def _at(self, prefix: bytes) -> bool:
        self._available(len(prefix))
        return self.buf.startswith(prefix, self.pos)

    def _find(self, needle: bytes, start: int) -> int:
        while (i := self.buf.find(needle, start)) < 0:
            start = max(start, len(self.buf) - len(needle) + 1)
            if not self._fill():
                return -1
        return i

    def _section_end(self, start: int) -> int:
        """Where the section starting before `start` ends: the next section or commit; -1 at EOF."""
        while True:
            ends = [i for i in (self.buf.find(self.NEXT_SECTION, start), self.buf.find(MARKER, start)) if i >= 0]
            if ends:
                return min(ends)
            start = max(start, len(self.buf) - len(self.NEXT_SECTION) + 1)
            if not self._fill():
                return -1

    def _skip_separators(self) -> None:
        while self._available(1) and self.buf[self.pos] in (0, 10) and not self._at(MARKER):
            self.pos += 1

    def _finished_well(self) -> None:
        """At the end of the stream: a commit that ends here is complete only if git succeeded."""
        if self.proc.wait() != 0:
            raise StreamCut

    # -- records

    def commits(self) -> Iterator[RawCommit]:
        while self._at(MARKER):
            self.pos += len(MARKER)
            self._compact()
            end = self.pos
            for _ in range(HEADER_FIELDS):
                end = self._find(b"\0", end)
                if end < 0:
                    raise StreamCut
                end += 1
            parts = bytes(self.buf[self.pos:end]).split(b"\0")
            self.pos = end
            self._skip_separators()
            files = self._raw_entries()
            self._skip_separators()
            raw = RawCommit(parts[0].decode(), parts[1].decode().split(), parts[2:HEADER_FIELDS], files,
                            self._sections())
            yield raw
            for _ in raw.sections:  # what the reader of `raw` left
                pass
        if self._available(1):
            raise RuntimeError(f"unexpected git log output: {bytes(self.buf[self.pos:self.pos + 80])!r}")
        self._finished_well()

    def _raw_entries(self) -> list[RawFile]:
        files = []
        while self._at(b":"):
            ends = []
            end = self.pos
            for _ in range(2):
                end = self._find(b"\0", end)
                if end < 0:
                    raise StreamCut
                ends.append(end)
                end += 1
            if chr(self.buf[ends[0] - 1]) in "0123456789":  # R075 / C100: a second path follows
                status = bytes(self.buf[self.pos:ends[0]]).split(b" ")[-1]
                if status[:1] in (b"R", b"C"):
                    end = self._find(b"\0", end)
                    if end < 0:
                        raise StreamCut
                    ends.append(end)
            entry, _ = parse_raw(bytes(self.buf[self.pos:ends[-1] + 1]))
            files += entry
            self.pos = ends[-1] + 1
        return files

    def _sections(self) -> Iterator[bytes]:
        while True:
            if not self._at(self.SECTION):
                if not self._available(1):
                    self._finished_well()
                return
            self._compact()
            end = self._section_end(len(self.SECTION))
            if end < 0:  # the last section of the stream
                self._finished_well()
                section = bytes(self.buf[len(self.SECTION):])
                self.pos = len(self.buf)
                yield section
                return
            section = bytes(self.buf[len(self.SECTION):end])
            self.pos = end + 1 if self.buf.startswith(self.NEXT_SECTION, end) else end
            yield section


def split_header(section: bytes) -> tuple[bytes, bytes]:
    """A `diff --git` section into its header and its hunks (from the first `@@ `)."""
    i = section.find(b"\n@@ ")
    if i < 0:
        return section, b""
    hunks = section[i + 1:]
    if not hunks.endswith(b"\n"):
        hunks += b"\n"
    return section[:i], hunks


def index_oids(section: bytes) -> tuple[str, str] | None:
    """The (old, new) blob ids of a section's `index` line (None for an all-zero id); None without one."""
    i = section.find(b"\nindex ")
    if i < 0:
        return None
    line = section[i + 7:section.find(b"\n", i + 1) if section.find(b"\n", i + 1) > 0 else None]
    old, _, new = line.split(b" ")[0].partition(b"..")
    old_s, new_s = old.decode(), new.decode()
    return (None if old_s in ZERO_OIDS else old_s), (None if new_s in ZERO_OIDS else new_s)
