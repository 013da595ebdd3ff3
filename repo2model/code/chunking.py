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

The parts: `patches.py` (a patch's lines, a chunk's diff text, splitting large
units), `pieces.py` (changed lines grouped by unit or hunk), `moves.py` (moves and
renames within a commit); this module reads the file versions, parses them (a
per-process cache) and turns pieces into `Chunk` records.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from dataclasses import dataclass, field

from repo2model.code import units as code_units
from repo2model.code.moves import pair_moves
from repo2model.code.patches import PatchLine, diff_text, parse_patch, patch_side, split_hunk, split_unit
from repo2model.code.pieces import Piece, Side, hunk_pieces, merge_small_hunks, unit_pieces
from repo2model.core.records import Chunk, Commit, FileChange, change_type
from repo2model.git.objects import CatFile
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
            chunks = pair_moves(chunks)
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


# ---------------------------------------------------------------- the files of one commit


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
            pieces = hunk_pieces(patch, range(len(patch)), module)
        else:
            pieces = unit_pieces(patch, old, new)
        pieces = merge_small_hunks(pieces, patch, self.cfg.min_chunk_size, self.cfg.max_chunk_size)
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
            sides.append(Side(path, units, lines, owner, keys, self.modules.file_module(rev, path, language)))
        return sides[0], sides[1], False

    def _text(self, side: Side | None, span: tuple[int, int] | None) -> str | None:
        """Lines `span` of a file version, secrets redacted (patches come redacted from the scraper)."""
        if side is None or span is None:
            return None
        text = _slice(side.lines, span)
        return self.redactor.redact(text, path=side.path)[0] if self.redactor is not None else text

    def _to_chunks(self, piece: Piece, patch: list[PatchLine], old: Side | None, new: Side | None,
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
            parts = split_hunk(members, patch, self.cfg.max_chunk_size)
            chunks = []
            for index, part in enumerate(parts):
                before, old_span = patch_side(patch, part, "-") if has_old else (None, None)
                after, new_span = patch_side(patch, part, "+") if has_new else (None, None)
                chunks.append(Chunk(
                    **base, change_type=change_type(prefix, "hunk"), before=before, after=after,
                    diff=diff_text(patch, part, set(part), all_context=True), old_span=old_span, new_span=new_span,
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
                diff=diff_text(patch, members, set(members), old_range, new_range),
                old_span=list(old_range) if old_range else None, new_span=list(new_range) if new_range else None,
            )]
        self.stats.split_units += 1
        chunks = []
        parts = split_unit(members, patch, old_unit, new_unit, self.cfg.max_chunk_size)
        for index, (part, old_window, new_window) in enumerate(parts):
            chunks.append(Chunk(
                **base, change_type=change_type(prefix, piece.kind),
                before=self._text(old, old_window),
                after=self._text(new, new_window),
                diff=diff_text(patch, part, set(part), old_window, new_window),
                old_span=list(old_window) if old_window else None, new_span=list(new_window) if new_window else None,
                part=index,
            ))
        return chunks


def _slice(lines: list[str], span: tuple[int, int]) -> str:
    return "\n".join(lines[span[0] - 1 : span[1]])


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

