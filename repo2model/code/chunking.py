"""Chunking one commit: every changed line of its patches mapped to the syntax unit it touches.

    chunks = chunk_commit(commit, objects, cfg)      # objects: CatFile(repo), or None (patches only)

    chunker = Chunker(objects, cfg, redactor)        # many commits: one parse cache, stats tallied
    per_commit = chunker.chunk_commits(commits, stats)

For the old and new version of every changed file in `cfg.parse_languages`, the
file's content is read from the repository (by blob id; parses cached by blob id)
and split into units (`repo2model/code/units.py`). Each changed line of a patch
goes to the innermost unit that holds it on its side (old side for `-` lines, new
side for `+` lines); one chunk per (commit, file, unit) touched. Every other text
file, a file that does not parse cleanly (tree-sitter ERROR nodes) and a file whose
objects are missing give `hunk` chunks from the patch alone (counted in the stats as
degraded). Changed lines outside every unit (a module docstring, an item-level macro
call) become `hunk` chunks too (a blank line between units joins its neighbour), so
that every `+`/`-` line of every patch lands in exactly one chunk (checked and
counted in the stats).

change_type: unit only in the new version -> NEW_<KIND>; only in the old ->
DELETED_<KIND>; in both -> MODIFIED_<KIND>; deleted in one place and added with
the same body elsewhere in the commit (another file, or reordered) ->
MOVED_<KIND>; with the same body under a new name -> RENAMED_<KIND>.
`module`: see `code_units.ModuleLookup` (crates read at the commit's revision).

`before`/`after` (file text read from the repository) are redacted with the same
`Redactor` the scraper used on the patches, so a secret never reaches a chunk.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import time
from dataclasses import dataclass, field
from typing import Iterable

from repo2model.code import units as code_units
from repo2model.git.commands import CatFile
from repo2model.core.records import Chunk, Commit, FileChange, change_type
from repo2model.git.redact import Redactor

# Version of what chunks the same commit gives: bump it when a change to this module (or to
# code_units) changes chunks.jsonl, so that an incremental run does not reuse older chunks.
CHUNKS_FORMAT = 1

# Degradations: the file's changed lines still land in `hunk` chunks.
DEGRADED_PARSE_ERROR = "parse_error"
DEGRADED_MISSING_OBJECT = "missing_object"
DEGRADED_NO_REPOSITORY = "no_repository"


@dataclass
class ChunkerConfig:
    """The `semantic_chunker` section of config.yaml (each key documented there and in semantic_chunker.py)."""

    workers: int = 0  # 0: one per CPU core
    max_chunk_size: int = 200  # lines
    min_chunk_size: int = 3  # changed lines
    parse_languages: list[str] = field(default_factory=lambda: list(code_units.PARSED_LANGUAGES))
    detect_moves: bool = True
    parse_cache_size: int = 1024
    batch_size: int = 64
    redact_secrets: bool = True
    incremental: bool = False

    def __post_init__(self):
        if self.workers < 0:
            raise ValueError("workers: must be >= 0 (0 = one per CPU core)")
        if self.max_chunk_size < 10:
            raise ValueError("max_chunk_size: must be >= 10 lines")
        if not 1 <= self.min_chunk_size <= self.max_chunk_size:
            raise ValueError("min_chunk_size: must be between 1 and max_chunk_size")
        unknown = sorted(set(self.parse_languages) - set(code_units.PARSED_LANGUAGES))
        if unknown:
            raise ValueError(f"parse_languages: unknown {unknown} (allowed: {', '.join(code_units.PARSED_LANGUAGES)})")
        if self.parse_cache_size < 1:
            raise ValueError("parse_cache_size: must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")


# ---------------------------------------------------------------- statistics


@dataclass
class ChunkingStats:
    commits: int = 0
    chunk_count: int = 0
    files_by_language: collections.Counter = field(default_factory=collections.Counter)
    chunks_by_language: collections.Counter = field(default_factory=collections.Counter)
    chunks_by_kind: collections.Counter = field(default_factory=collections.Counter)
    chunks_by_change_type: collections.Counter = field(default_factory=collections.Counter)
    skipped_files: collections.Counter = field(default_factory=collections.Counter)
    degraded_files: collections.Counter = field(default_factory=collections.Counter)
    parsed_files: int = 0  # file changes whose versions were parsed
    parse_error_files: int = 0
    parsed_versions: int = 0  # tree-sitter parses run (parse cache misses, summed over workers)
    parse_seconds: float = 0.0  # time in tree-sitter parses and unit extraction, summed over workers
    split_units: int = 0
    changed_lines: int = 0
    uncovered_lines: int = 0  # changed lines of a patch that no chunk's diff carries
    duplicated_lines: int = 0  # changed lines carried by more than one chunk
    unreadable_objects: int = 0  # objects git could not read (corrupt): their files degraded as missing
    seconds: float = 0.0

    def merge(self, other: "ChunkingStats") -> None:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, collections.Counter):
                mine.update(theirs)
            elif f.name != "seconds":
                setattr(self, f.name, mine + theirs)

    def to_dict(self) -> dict:
        return {
            "commits": self.commits,
            "chunks": self.chunk_count,
            "files": sum(self.files_by_language.values()),
            "files_by_language": dict(sorted(self.files_by_language.items())),
            "chunks_by_language": dict(sorted(self.chunks_by_language.items())),
            "chunks_by_kind": dict(sorted(self.chunks_by_kind.items())),
            "chunks_by_change_type": dict(sorted(self.chunks_by_change_type.items())),
            "parsed_files": self.parsed_files,
            "parse_error_files": self.parse_error_files,
            "parsed_versions": self.parsed_versions,
            "parse_seconds": round(self.parse_seconds, 3),
            "parse_error_rate": round(self.parse_error_files / self.parsed_files, 4) if self.parsed_files else 0.0,
            "degraded_files": dict(sorted(self.degraded_files.items())),
            "skipped_files": dict(sorted(self.skipped_files.items())),
            "split_units": self.split_units,
            "changed_lines": self.changed_lines,
            "uncovered_lines": self.uncovered_lines,
            "duplicated_lines": self.duplicated_lines,
            "unreadable_objects": self.unreadable_objects,
            "seconds": self.seconds,
        }


# ---------------------------------------------------------------- chunking commits


@functools.lru_cache(maxsize=1)
def default_redactor() -> Redactor:
    """The scraper's default redaction (built once: compiling its patterns is not free)."""
    return Redactor()


def chunk_commit(commit: Commit, objects: CatFile | None, cfg: ChunkerConfig | None = None, *,
                 redactor: Redactor | None = None) -> list[Chunk]:
    """The chunks of one commit, exactly as the stage writes them (crates read at that commit).

    `objects` reads the file versions (`CatFile(repo)`); None chunks from the patches alone.
    `redactor`: the one the scraper used (default: `Redactor()` unless `cfg.redact_secrets` is off).
    """
    cfg = cfg or ChunkerConfig()
    if redactor is None and cfg.redact_secrets:
        redactor = default_redactor()
    return Chunker(objects, cfg, redactor).chunk_commit(commit, ChunkingStats())


class Chunker:
    """Chunks commits with one object reader and the process's parse cache; tallies into `stats`.

    `redactor` None: file text is not redacted. Without `objects` every parsed language
    degrades to hunks (counted as `no_repository`).
    """

    def __init__(self, objects: CatFile | None, cfg: ChunkerConfig, redactor: Redactor | None):
        self.objects = objects
        self.cfg = cfg
        self.redactor = redactor
        self.degraded = DEGRADED_NO_REPOSITORY if objects is None else None
        self._names: dict[str, str] = {}

    def redact_name(self, name: str | None) -> str | None:
        """A symbol or module as it goes into a chunk: read from file text and Cargo.toml (the path
        parts come from commits.json, already redacted), so redacted like them."""
        if name is None or self.redactor is None:
            return name
        redacted = self._names.get(name)
        if redacted is None:
            redacted = self.redactor.redact(name)[0]
            if len(self._names) < 100_000:
                self._names[name] = redacted
        return redacted

    def chunk_commits(self, commits: list[Commit], stats: ChunkingStats) -> list[list[Chunk]]:
        """The chunks of each commit, objects for all of them read in one pipelined round trip."""
        unreadable = self.objects.unreadable if self.objects is not None else 0
        prefetched = self.prefetch(commits) if self.objects is not None else {}
        result = [self.chunk_commit(commit, stats, prefetched) for commit in commits]
        if self.objects is not None:
            stats.unreadable_objects += self.objects.unreadable - unreadable
        return result

    def chunk_commit(self, commit: Commit, stats: ChunkingStats, prefetched: dict | None = None) -> list[Chunk]:
        if prefetched is None and self.objects is not None:
            prefetched = self.prefetch([commit])
        context = _CommitContext(commit, self, stats, prefetched or {})
        chunks: list[Chunk] = []
        for change in commit.files:
            chunks.extend(context.chunk_file(change))
        if self.cfg.detect_moves:
            chunks = _pair_moves(chunks)
        _count_chunks(commit, chunks, stats)
        return chunks

    def prefetch(self, commits: list[Commit]) -> dict[str, bytes | None]:
        """Read the objects some commits need in one pipelined round trip: the file versions to parse
        (unless cached) and the Cargo.toml candidates above each changed file."""
        cfg = self.cfg
        wanted: dict[str, None] = {}
        for commit in commits:
            parent = commit.parents[0] if commit.parents else None
            for change in commit.files:
                if change.patch is None:
                    continue
                language = code_units.language_of(change.path)
                sides = []
                if change.old_blob:
                    sides.append((change.old_blob, parent, change.old_path or change.path))
                if change.new_blob:
                    sides.append((change.new_blob, commit.hash, change.path))
                for blob, rev, path in sides:
                    test_file = code_units.is_test_file(language, path)
                    if language in cfg.parse_languages and not _PARSE_CACHE.has(blob, language, cfg, test_file):
                        wanted[blob] = None
                    if language == "python" or rev is None:
                        continue
                    wanted.update(dict.fromkeys(code_units.manifest_names(rev, path)))
        names = list(wanted)
        return dict(zip(names, self.objects.read_many(names)))


def _count_chunks(commit: Commit, chunks: list[Chunk], stats: ChunkingStats) -> None:
    """Tally the chunks and check coverage: the +/- lines of the patches against those of the chunks."""
    stats.commits += 1
    stats.chunk_count += len(chunks)
    expected = collections.Counter()
    for change in commit.files:
        if change.patch is not None:
            expected.update(line for line in change.patch.split("\n") if line[:1] in ("+", "-"))
    carried = collections.Counter()
    for chunk in chunks:
        stats.chunks_by_language[chunk.language] += 1
        stats.chunks_by_kind[chunk.kind] += 1
        stats.chunks_by_change_type[chunk.change_type] += 1
        carried.update(line for line in chunk.diff.split("\n") if line[:1] in ("+", "-"))
    stats.changed_lines += sum(expected.values())
    stats.uncovered_lines += sum((expected - carried).values())
    stats.duplicated_lines += sum((carried - expected).values())


# ---------------------------------------------------------------- the parse cache (per process)


class _ParseCache:
    """Parsed file versions by blob id, least recently used dropped first.

    The trees of the latest parses are kept too, so that the new version of a modified file
    is reparsed incrementally from its old one (on click's history: 15% less chunker CPU).
    """

    TREE_SOURCE_BYTES = 4 << 20  # trees of this much source at most (a tree takes ~16 bytes per source byte)

    def __init__(self):
        self.entries: collections.OrderedDict = collections.OrderedDict()
        self.trees: collections.OrderedDict = collections.OrderedDict()  # (blob, language) -> (tree, source)
        self.tree_bytes = 0

    def has(self, blob: str, language: str, cfg: ChunkerConfig, test_file: bool) -> bool:
        return (blob, language, cfg.max_chunk_size, test_file) in self.entries

    def get(self, read, blob: str, language: str, cfg: ChunkerConfig, test_file: bool, previous: str | None = None):
        """(FileUnits, lines, owner of each line, unit keys) for a blob, or None when the object is missing.

        `previous`: the blob of the file's version before this one (reparsed from, if its tree is at hand).
        """
        key = (blob, language, cfg.max_chunk_size, test_file)
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            return entry
        data = read(blob)
        if data is None:
            return None
        tree = code_units.parse(language, data, self.trees.get((previous, language)))
        self._keep_tree((blob, language), tree, data)
        units = code_units.extract_units(language, data, split_threshold=cfg.max_chunk_size, test_file=test_file,
                                         tree=tree)
        entry = (units, data.decode("utf-8", "replace").split("\n"), units.owner_of_line(), _unit_keys(units))
        self.entries[key] = entry
        while len(self.entries) > cfg.parse_cache_size:
            self.entries.popitem(last=False)
        return entry

    def _keep_tree(self, key: tuple, tree, source: bytes) -> None:
        if key in self.trees:
            self.tree_bytes -= len(self.trees.pop(key)[1])
        self.trees[key] = (tree, source)
        self.tree_bytes += len(source)
        while self.tree_bytes > self.TREE_SOURCE_BYTES and len(self.trees) > 1:
            self.tree_bytes -= len(self.trees.popitem(last=False)[1][1])


_PARSE_CACHE = _ParseCache()


# ---------------------------------------------------------------- patches

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


@dataclass
class PatchLine:
    tag: str  # "+", "-" or " "
    text: str  # the line as the patch shows it, tag included
    old: int  # old line number ("-", " "), or the old line a "+" line is inserted before
    new: int  # new line number ("+", " "), or the new line a "-" line was removed before
    hunk: int  # index of its @@ hunk
    tail: str | None = None  # a "\ No newline at end of file" line that follows it


def parse_patch(patch: str) -> list[PatchLine]:
    """The lines of a unified diff (as FileChange.patch holds it) with their line numbers."""
    lines: list[PatchLine] = []
    old = new = 0
    hunk = -1
    for raw in patch.split("\n"):
        if raw.startswith("@@ "):
            match = _HUNK_HEADER.match(raw)
            if match:
                old, new = int(match.group(1)), int(match.group(2))
                old, new = max(old, 1), max(new, 1)  # "-0,0": a file that was empty
                hunk += 1
                continue
        if hunk < 0:
            continue
        tag = raw[:1]
        if tag == "\\":
            if lines:
                lines[-1].tail = raw
            continue
        if tag == "+":
            lines.append(PatchLine("+", raw, old, new, hunk))
            new += 1
        elif tag == "-":
            lines.append(PatchLine("-", raw, old, new, hunk))
            old += 1
        elif tag == " " or raw == "":
            lines.append(PatchLine(" ", raw or " ", old, new, hunk))
            old += 1
            new += 1
    if lines and lines[-1].tag == " " and lines[-1].text == " " and patch.endswith("\n"):
        lines.pop()  # the split after the final newline, not a context line
    return lines


# ---------------------------------------------------------------- one file


@dataclass
class _Side:
    """One version of a file: its units, lines and module."""

    path: str
    units: code_units.FileUnits
    lines: list[str]
    owner: list[int]
    keys: list[tuple]
    module: str | None  # the file's module (units add their nested mods)


@dataclass
class _Piece:
    """The changed lines of one chunk-to-be, before it becomes a Chunk."""

    kind: str
    symbol: str | None
    old_unit: int | None = None  # index into the old side's units
    new_unit: int | None = None
    members: list[int] = field(default_factory=list)  # indices of its changed PatchLines
    module: str | None = None


class _CommitContext:
    """Chunking the files of one commit: its object reads, module lookups and stats."""

    def __init__(self, commit: Commit, chunker: Chunker, stats: ChunkingStats, prefetched: dict):
        self.commit = commit
        self.chunker = chunker
        self.objects = chunker.objects
        self.cfg = chunker.cfg
        self.redactor = chunker.redactor
        self.degraded = chunker.degraded
        self.stats = stats
        self.parent = commit.parents[0] if commit.parents else None
        self._prefetched = prefetched
        self.modules = code_units.ModuleLookup(self._read)

    def _read(self, name: str) -> bytes | None:
        if name in self._prefetched:
            return self._prefetched[name]
        return self.objects.read(name) if self.objects is not None else None

    # -- chunks of one file

    def chunk_file(self, change: FileChange) -> list[Chunk]:
        language = code_units.language_of(change.path)
        if change.patch is None:
            self.stats.skipped_files[change.patch_skipped or "no_patch"] += 1
            return []
        self.stats.files_by_language[language] += 1
        patch = parse_patch(change.patch)
        if not any(line.tag != " " for line in patch):
            return []  # a pure rename or mode change: no changed line to place
        old_path = change.old_path or change.path
        old = new = None
        parse_error = False
        if language in self.cfg.parse_languages:
            if self.degraded:
                self.stats.degraded_files[self.degraded] += 1
            else:
                old, new, missing = self._read_sides(change, language, old_path)
                if missing:
                    self.stats.degraded_files[DEGRADED_MISSING_OBJECT] += 1
                    old = new = None
                else:
                    self.stats.parsed_files += 1
                    parse_error = any(side is not None and side.units.parse_error for side in (old, new))
                    if parse_error:
                        self.stats.parse_error_files += 1
                        self.stats.degraded_files[DEGRADED_PARSE_ERROR] += 1
                        old = new = None
        if old is None and new is None:
            rev, path = (self.parent, old_path) if change.status == "D" else (self.commit.hash, change.path)
            module = self.modules.file_module(rev, path, language)
            pieces = _hunk_pieces(patch, range(len(patch)), module)
        else:
            pieces = _unit_pieces(patch, old, new)
        pieces = _merge_small_hunks(pieces, patch, self.cfg)
        chunks = []
        for piece in pieces:
            chunks.extend(self._to_chunks(piece, patch, old, new, change, language, parse_error))
        return chunks

    def _read_sides(self, change: FileChange, language: str, old_path: str):
        """(old side, new side, any object missing)."""
        sides = []
        versions = ((change.old_blob, self.parent, old_path, None),
                    (change.new_blob, self.commit.hash, change.path, change.old_blob))  # new: reparsed from old
        for blob, rev, path, previous in versions:
            if not blob or set(blob) == {"0"}:
                sides.append(None)
                continue
            test_file = code_units.is_test_file(language, path)
            self.stats.parsed_versions += not _PARSE_CACHE.has(blob, language, self.cfg, test_file)
            started = time.perf_counter()
            entry = _PARSE_CACHE.get(self._read, blob, language, self.cfg, test_file, previous)
            self.stats.parse_seconds += time.perf_counter() - started
            if entry is None:
                return None, None, True
            units, lines, owner, keys = entry
            sides.append(_Side(path, units, lines, owner, keys, self.modules.file_module(rev, path, language)))
        return sides[0], sides[1], False

    def _text(self, side: _Side | None, span: tuple[int, int] | None) -> str | None:
        """Lines `span` of a file version, secrets redacted (patches come redacted from the scraper)."""
        if side is None or span is None:
            return None
        text = _slice(side.lines, span)
        return self.redactor.redact(text, path=side.path)[0] if self.redactor is not None else text

    def _to_chunks(self, piece: _Piece, patch: list[PatchLine], old: _Side | None, new: _Side | None,
                   change: FileChange, language: str, parse_error: bool) -> list[Chunk]:
        members = piece.members
        has_old = any(patch[i].tag == "-" for i in members)
        has_new = any(patch[i].tag == "+" for i in members)
        old_unit = old.units.units[piece.old_unit] if piece.old_unit is not None else None
        new_unit = new.units.units[piece.new_unit] if piece.new_unit is not None else None
        if piece.kind == "hunk":
            prefix = "MODIFIED" if has_old and has_new else ("NEW" if has_new else "DELETED")
        else:
            prefix = "MODIFIED" if old_unit and new_unit else ("NEW" if new_unit else "DELETED")
        deleted_file = change.status == "D"
        file = change.old_path if deleted_file and change.old_path else change.path
        old_file = change.old_path if change.old_path and change.old_path != file else None
        base = dict(
            commit=self.commit.hash, timestamp=self.commit.authored_at, author=self.commit.author.name,
            file=file, language=language, module=self.chunker.redact_name(piece.module), kind=piece.kind,
            symbol=self.chunker.redact_name(piece.symbol),
            old_file=old_file, parse_error=parse_error,
        )
        if piece.kind == "hunk":
            parts = _split_hunk(members, patch, self.cfg.max_chunk_size)
            chunks = []
            for index, part in enumerate(parts):
                before, old_span = _patch_side(patch, part, "-") if has_old else (None, None)
                after, new_span = _patch_side(patch, part, "+") if has_new else (None, None)
                chunks.append(Chunk(
                    **base, change_type=change_type(prefix, "hunk"), before=before, after=after,
                    diff=_diff_text(patch, part, set(part), all_context=True), old_span=old_span, new_span=new_span,
                    part=index if len(parts) > 1 else None,
                ))
            if len(parts) > 1:
                self.stats.split_units += 1
            return chunks
        old_range = (old_unit.start, old_unit.end) if old_unit else None
        new_range = (new_unit.start, new_unit.end) if new_unit else None
        size = max((r[1] - r[0] + 1) for r in (old_range, new_range) if r)
        if size <= self.cfg.max_chunk_size:
            before = self._text(old, old_range)
            after = self._text(new, new_range)
            if prefix == "MODIFIED" and before == after and old_range != new_range:
                prefix = "MOVED"  # the same text, elsewhere in the file
            return [Chunk(
                **base, change_type=change_type(prefix, piece.kind), before=before, after=after,
                diff=_diff_text(patch, members, set(members), old_range, new_range),
                old_span=list(old_range) if old_range else None, new_span=list(new_range) if new_range else None,
            )]
        self.stats.split_units += 1
        chunks = []
        parts = _split_unit(members, patch, old_unit, new_unit, self.cfg.max_chunk_size)
        for index, (part, old_window, new_window) in enumerate(parts):
            chunks.append(Chunk(
                **base, change_type=change_type(prefix, piece.kind),
                before=self._text(old, old_window),
                after=self._text(new, new_window),
                diff=_diff_text(patch, part, set(part), old_window, new_window),
                old_span=list(old_window) if old_window else None, new_span=list(new_window) if new_window else None,
                part=index,
            ))
        return chunks


def _unit_keys(units: code_units.FileUnits) -> list[tuple]:
    """Identity of each unit across versions: (family, mods, symbol, occurrence)."""
    seen = collections.Counter()
    keys = []
    for unit in units.units:
        family = "fn" if unit.base_kind in ("function", "method") else unit.base_kind
        # an import block's symbol lists its imports, which the commit may change: pair blocks by position
        key = (family, unit.modpath, "" if family == "import" else unit.symbol)
        keys.append((*key, seen[key]))
        seen[key] += 1
    return keys


def _is_blank(line: PatchLine) -> bool:
    return not line.text[1:].strip()


def _unit_pieces(patch: list[PatchLine], old: _Side | None, new: _Side | None) -> list[_Piece]:
    """Group the changed lines by innermost unit; lines outside every unit become hunk pieces."""
    owners: list[tuple[str, int] | None] = []  # per patch line: ("-", old unit) / ("+", new unit) / None
    for line in patch:
        if line.tag == " ":
            owners.append(None)
            continue
        side = old if line.tag == "-" else new
        number = line.old if line.tag == "-" else line.new
        unit = side.owner[number] if side is not None and 0 < number < len(side.owner) else -1
        owners.append((line.tag, unit))
    _attach_blank_lines(patch, owners, old, new)

    pieces: dict[tuple, _Piece] = {}
    order: list[tuple] = []  # piece keys by first changed line
    gap_members: list[int] = []
    for index, (line, owner) in enumerate(zip(patch, owners)):
        if owner is None:
            continue
        tag, unit = owner
        if unit < 0:
            gap_members.append(index)
            continue
        side = old if tag == "-" else new
        key = side.keys[unit]
        piece = pieces.get(key)
        if piece is None:
            other = new if tag == "-" else old
            other_unit = _find_key(other, key)
            old_unit, new_unit = (unit, other_unit) if tag == "-" else (other_unit, unit)
            shown = new.units.units[new_unit] if new_unit is not None else old.units.units[old_unit]
            module_side = new if new_unit is not None else old
            piece = _Piece(shown.kind, shown.symbol, old_unit, new_unit,
                           module=code_units.join_module(module_side.module, shown.modpath, module_side.path))
            pieces[key] = piece
            order.append(key)
        piece.members.append(index)
    result = [pieces[key] for key in order]
    module = (new or old).module
    result.extend(_gap_pieces(patch, owners, gap_members, module))
    result.sort(key=lambda p: p.members[0])
    return result


def _find_key(side: _Side | None, key: tuple) -> int | None:
    if side is None:
        return None
    try:
        return side.keys.index(key)
    except ValueError:
        return None


def _attach_blank_lines(patch: list[PatchLine], owners: list, old: _Side | None, new: _Side | None) -> None:
    """A blank changed line between units joins the unit next to it in the same run of changes.

    So that adding `\\nfn b() {}` gives one NEW_FUNCTION chunk, not a function plus a
    one-line hunk. A blank line inside a unit's body stays where it is unless the
    neighbour is nested in that unit (a blank between two methods joins the method).
    """
    run: list[int] = []
    for index in range(len(patch) + 1):
        if index < len(patch) and owners[index] is not None:
            run.append(index)
            continue
        if len(run) > 1:
            _attach_in_run(patch, owners, run, old, new)
        run = []


def _attach_in_run(patch, owners, run, old, new) -> None:
    for position, index in enumerate(run):
        if not _is_blank(patch[index]):
            continue
        tag, unit = owners[index]
        side = old if tag == "-" else new
        following = [run[p] for p in range(position + 1, len(run))]
        preceding = [run[p] for p in range(position - 1, -1, -1)]
        for candidates in (following, preceding):
            target = next((i for i in candidates if patch[i].tag == tag and not _is_blank(patch[i])), None)
            if target is None:
                continue
            target_unit = owners[target][1]
            if target_unit >= 0 and (unit < 0 or _nested(side.units.units[target_unit], side.units.units[unit])):
                owners[index] = (tag, target_unit)
                break


def _nested(inner: code_units.Unit, outer: code_units.Unit) -> bool:
    return inner is not outer and inner.depth > outer.depth and outer.start <= inner.start and inner.end <= outer.end


def _gap_pieces(patch: list[PatchLine], owners: list, gap_members: list[int], module: str | None) -> list[_Piece]:
    """Changed lines outside every unit: one hunk piece per run not interrupted by unit lines."""
    pieces: list[_Piece] = []
    previous = None
    for index in gap_members:
        interrupted = previous is None or patch[previous].hunk != patch[index].hunk or any(
            owners[i] is not None and owners[i][1] >= 0 for i in range(previous + 1, index)
        )
        if interrupted:
            pieces.append(_Piece("hunk", None, module=module))
        pieces[-1].members.append(index)
        previous = index
    return pieces


def _hunk_pieces(patch: list[PatchLine], indices: Iterable[int], module: str | None) -> list[_Piece]:
    """One hunk piece per @@ hunk of the patch (files without units)."""
    pieces: dict[int, _Piece] = {}
    for index in indices:
        line = patch[index]
        if line.tag == " ":
            continue
        piece = pieces.get(line.hunk)
        if piece is None:
            piece = pieces[line.hunk] = _Piece("hunk", None, module=module)
        piece.members.append(index)
    return list(pieces.values())


def _merge_small_hunks(pieces: list[_Piece], patch: list[PatchLine], cfg: ChunkerConfig) -> list[_Piece]:
    """Neighbouring hunk pieces with fewer than min_chunk_size changed lines merge (within max size)."""
    unit_lines = {i for piece in pieces if piece.kind != "hunk" for i in piece.members}
    merged: list[_Piece] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if (
            last is not None and last.kind == "hunk" and piece.kind == "hunk"
            and (len(last.members) < cfg.min_chunk_size or len(piece.members) < cfg.min_chunk_size)
            and piece.members[-1] - last.members[0] < cfg.max_chunk_size
            and not any(i in unit_lines for i in range(last.members[-1] + 1, piece.members[0]))
        ):
            last.members.extend(piece.members)
            continue
        merged.append(piece)
    return merged


# ---------------------------------------------------------------- chunk text


def _slice(lines: list[str], span: tuple[int, int]) -> str:
    return "\n".join(lines[span[0] - 1 : span[1]])


def _patch_side(patch: list[PatchLine], members: list[int], tag: str) -> tuple[str | None, list[int] | None]:
    """The text of one side of a hunk piece, from its first to its last changed line, and its span."""
    lines = []
    numbers = []
    member_set = set(members)
    for index in range(members[0], members[-1] + 1):
        line = patch[index]
        if line.tag == " " or (line.tag == tag and index in member_set):
            lines.append(line.text[1:])
            numbers.append(line.old if tag == "-" else line.new)
    if not lines:
        return None, None
    return "\n".join(lines), [min(numbers), max(numbers)]


def _diff_text(patch: list[PatchLine], members: list[int], member_set: set[int],
               old_range: tuple[int, int] | None = None, new_range: tuple[int, int] | None = None,
               all_context: bool = False) -> str:
    """The piece's changed lines, with the patch's context lines that fall inside its spans
    (hunk pieces: every context line between its first and last changed line)."""
    out = []
    first, last = members[0], members[-1]
    if not all_context:  # context lines inside the unit may precede or follow its changed lines
        while first > 0 and patch[first - 1].tag == " " and patch[first - 1].hunk == patch[first].hunk:
            first -= 1
        while last + 1 < len(patch) and patch[last + 1].tag == " " and patch[last + 1].hunk == patch[last].hunk:
            last += 1
    for index in range(first, last + 1):
        line = patch[index]
        if index in member_set:
            keep = True
        elif line.tag == " " and all_context:
            keep = True
        elif line.tag == " ":
            keep = (old_range is None or old_range[0] <= line.old <= old_range[1]) and (
                new_range is None or new_range[0] <= line.new <= new_range[1]
            ) and (old_range is not None or new_range is not None)
        else:
            keep = False
        if keep:
            out.append(line.text)
            if line.tail:
                out.append(line.tail)
    return "\n".join(out)


# ---------------------------------------------------------------- splitting large units


def _split_hunk(members: list[int], patch: list[PatchLine], max_size: int) -> list[list[int]]:
    """Cut a hunk piece so that each part spans at most max_size patch lines, preferring blank lines."""
    if members[-1] - members[0] + 1 <= max_size:
        return [members]
    parts: list[list[int]] = [[]]
    for index in members:
        part = parts[-1]
        if part and index - part[0] + 1 > max_size:
            cut = max((p for p, i in enumerate(part) if _is_blank(patch[i]) and p > 0), default=None)
            if cut is not None and cut + 1 < len(part):
                parts[-1], rest = part[: cut + 1], part[cut + 1 :]
                parts.append(rest)
                if index - rest[0] + 1 > max_size:
                    parts.append([])
            else:
                parts.append([])
        parts[-1].append(index)
    return [p for p in parts if p]


def _split_unit(members, patch, old_unit, new_unit, max_size):
    """Parts of a large unit's changed lines, each with the windows of the unit shown on each side.

    A part's changed lines are contiguous in the patch and span at most max_size lines
    on each side; cuts fall before a line that starts one of the unit's children
    (statements, items) where possible. Windows widen to the enclosing children.
    """
    parts: list[list[int]] = [[]]
    for index in members:
        part = parts[-1]
        if part:
            olds = [patch[i].old for i in part] + [patch[index].old]
            news = [patch[i].new for i in part] + [patch[index].new]
            if max(olds) - min(olds) + 1 > max_size or max(news) - min(news) + 1 > max_size:
                cut = None
                if not _starts_child(patch[index], old_unit, new_unit) and patch[index].hunk == patch[part[-1]].hunk:
                    cut = max((p for p, i in enumerate(part) if p > 0 and _starts_child(patch[i], old_unit, new_unit)
                               and not (patch[part[p - 1]].tag == "-" and patch[i].tag == "+")), default=None)
                if cut is not None:
                    parts[-1], rest = part[:cut], part[cut:]
                    parts.append(rest)
                    olds = [patch[i].old for i in rest] + [patch[index].old]
                    news = [patch[i].new for i in rest] + [patch[index].new]
                    if max(olds) - min(olds) + 1 > max_size or max(news) - min(news) + 1 > max_size:
                        parts.append([])
                else:
                    parts.append([])
        parts[-1].append(index)
    result = []
    for part in parts:
        if not part:
            continue
        old_window = _window([patch[i].old for i in part], old_unit, max_size)
        new_window = _window([patch[i].new for i in part], new_unit, max_size)
        result.append((part, old_window, new_window))
    return result


def _starts_child(line: PatchLine, old_unit, new_unit) -> bool:
    if line.tag == "-":
        return old_unit is not None and line.old in old_unit.inner
    return new_unit is not None and line.new in new_unit.inner


def _window(numbers: list[int], unit, max_size: int) -> tuple[int, int] | None:
    """Lines of `unit` to show around `numbers`: widened to its children's boundaries within max_size."""
    if unit is None:
        return None
    low = max(unit.start, min(numbers))
    high = min(unit.end, max(max(numbers), low))
    if high < low:
        high = low
    starts = [s for s in unit.inner if s <= low]
    wide_low = starts[-1] if starts else unit.start
    after = [s for s in unit.inner if s > high]
    wide_high = (after[0] - 1) if after else unit.end
    if wide_high - wide_low + 1 <= max_size:
        return wide_low, wide_high
    return max(unit.start, low - 3), min(unit.end, high + 3, max(unit.start, low - 3) + max_size - 1)


# ---------------------------------------------------------------- moves and renames


def _normalize(text: str | None) -> str:
    return " ".join((text or "").split())


def _pair_moves(chunks: list[Chunk]) -> list[Chunk]:
    """DELETED_X + NEW_X with the same body in one commit -> one MOVED_X (or RENAMED_X) chunk."""
    deleted = [i for i, c in enumerate(chunks) if c.change_type.startswith("DELETED_") and c.kind != "hunk" and c.part is None]
    added = [i for i, c in enumerate(chunks) if c.change_type.startswith("NEW_") and c.kind != "hunk" and c.part is None]
    if not deleted or not added:
        return chunks
    by_body: dict[tuple, list[int]] = collections.defaultdict(list)
    by_shape: dict[tuple, list[int]] = collections.defaultdict(list)
    for i in deleted:
        chunk = chunks[i]
        by_body[(_family(chunk.kind), _normalize(chunk.before))].append(i)
        name = _bare_name(chunk.symbol)
        if name:
            by_shape[(_family(chunk.kind), _normalize(_replace_name(chunk.before, name)))].append(i)
    used: set[int] = set()
    replaced: dict[int, Chunk] = {}
    for i in added:
        chunk = chunks[i]
        prefix = "MOVED"
        candidates = [j for j in by_body.get((_family(chunk.kind), _normalize(chunk.after)), []) if j not in used]
        if not candidates:
            name = _bare_name(chunk.symbol)
            if not name:
                continue
            shape = (_family(chunk.kind), _normalize(_replace_name(chunk.after, name)))
            candidates = [j for j in by_shape.get(shape, []) if j not in used and _bare_name(chunks[j].symbol) != name]
            prefix = "RENAMED"
        if not candidates:
            continue
        j = candidates[0]
        used.add(j)
        source = chunks[j]
        replaced[i] = dataclasses.replace(
            chunk,
            change_type=change_type(prefix, chunk.kind),
            before=source.before,
            old_span=source.old_span,
            old_file=source.file if source.file != chunk.file else source.old_file,
            old_symbol=source.symbol if prefix == "RENAMED" else None,
            diff="\n".join(part for part in (source.diff, chunk.diff) if part),
        )
    return [replaced.get(i, c) for i, c in enumerate(chunks) if i not in used]


def _family(kind: str) -> str:
    return "fn" if kind in ("function", "method", "test") else kind


def _bare_name(symbol: str | None) -> str:
    if not symbol:
        return ""
    return re.split(r"::|\.", symbol)[-1]


def _replace_name(text: str | None, name: str) -> str:
    return re.sub(rf"\b{re.escape(name)}\b", "\x00", text or "", count=1)

