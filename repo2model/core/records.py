"""The records passed between stages: one definition each, shared by writer and readers.

Field names are the artifact contract (commits.json, chunks.jsonl); stages may
add fields, readers ignore fields they do not know.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field

# Why a file's patch is null.
PATCH_BINARY = "binary"
PATCH_TOO_LARGE = "too_large"  # the file (blob) is over git_scraper.max_file_size
PATCH_FILTERED = "filtered"  # excluded by extension / glob filters
PATCH_UNAVAILABLE = "unavailable"  # the object is missing (partial clone, pruned mirror)
PATCH_SKIP_REASONS = (PATCH_BINARY, PATCH_TOO_LARGE, PATCH_FILTERED, PATCH_UNAVAILABLE)

# Semantic unit kinds (chunk.kind) and the change-type prefixes built on them.
KINDS = (
    "function", "method", "test", "struct", "enum", "trait", "impl", "module",
    "macro", "const", "type", "import", "class", "hunk",
)
CHANGE_PREFIXES = ("NEW", "MODIFIED", "DELETED", "MOVED", "RENAMED")


def change_type(prefix: str, kind: str) -> str:
    """`change_type("NEW", "function") == "NEW_FUNCTION"`."""
    assert prefix in CHANGE_PREFIXES and kind in KINDS, (prefix, kind)
    return f"{prefix}_{kind.upper()}"


ALL_CHANGE_TYPES = tuple(change_type(p, k) for p in CHANGE_PREFIXES for k in KINDS)


class ChangeStatus(enum.StrEnum):
    """How a commit changed a file, as git's letter (what commits.json stores: `"status": "R"`)."""

    ADDED = "A"
    MODIFIED = "M"
    DELETED = "D"
    RENAMED = "R"
    COPIED = "C"
    TYPE_CHANGED = "T"  # e.g. a symlink that became a file


@dataclass
class Person:
    name: str
    email: str


@dataclass
class FileChange:
    """One file touched by one commit (diffed against the first parent)."""

    path: str
    old_path: str | None  # the path before a rename or copy, else None
    status: ChangeStatus  # serialised as git's letter: A, M, D, R, C or T
    additions: int
    deletions: int
    binary: bool
    old_blob: str | None  # object id on the parent's side, None for added files
    new_blob: str | None  # object id on the commit's side, None for deleted files
    patch: str | None  # unified diff of this file, None with `patch_skipped` saying why
    patch_skipped: str | None = None  # one of PATCH_SKIP_REASONS
    truncated: bool = False  # patch cut at git_scraper.max_patch_bytes
    non_utf8: bool = False  # patch text decoded with replacement characters
    similarity: int | None = None  # rename/copy score

    @classmethod
    def from_dict(cls, d: dict) -> "FileChange":
        values = {k: v for k, v in d.items() if k in _FILE_FIELDS}
        values["status"] = ChangeStatus(d["status"])
        return cls(**values)


@dataclass
class Commit:
    hash: str
    parents: list[str]
    author: Person
    committer: Person
    authored_at: str  # ISO 8601 with offset
    committed_at: str
    message: str
    branches: list[str] = field(default_factory=list)  # branches that contain it
    on_default_first_parent: bool = False  # on the default branch's first-parent line
    is_merge: bool = False
    files: list[FileChange] = field(default_factory=list)
    message_non_utf8: bool = False
    redactions: dict[str, int] = field(default_factory=dict)  # secrets replaced in this commit, per type

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Commit":
        values = {k: v for k, v in d.items() if k in _COMMIT_FIELDS}
        values["author"] = Person(**d["author"])
        values["committer"] = Person(**d["committer"])
        values["files"] = [FileChange.from_dict(f) for f in d.get("files", [])]
        return cls(**values)


@dataclass
class Chunk:
    """One semantic unit touched by one commit (a line of `chunks.jsonl`)."""

    commit: str
    timestamp: str  # the commit's authored_at
    author: str  # the author's name (after .mailmap)
    file: str  # path on the commit's side (the old path for deletions)
    language: str  # rust, python, markdown, toml, ... or text
    module: str | None  # rust: crate::mod::path; python: dotted module
    kind: str  # one of KINDS
    symbol: str | None  # qualified name, e.g. Market::settle; None for hunks
    change_type: str  # e.g. NEW_FUNCTION, MODIFIED_METHOD, NEW_HUNK
    before: str | None  # the unit's code before the commit, None where absent
    after: str | None  # the unit's code after the commit, None where absent
    diff: str  # the unit's own changed lines, unified-diff style (+/-/space)
    old_span: list[int] | None = None  # [first, last] 1-based lines in the old file
    new_span: list[int] | None = None  # [first, last] 1-based lines in the new file
    old_file: str | None = None  # for MOVED units and renamed files: where it was
    parse_error: bool = False  # the file had tree-sitter ERROR nodes: chunk degraded to hunk
    part: int | None = None  # index when a large unit was split at inner boundaries
    old_symbol: str | None = None  # for RENAMED units: the name before

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Chunk":
        return cls(**{k: v for k, v in d.items() if k in _CHUNK_FIELDS})


_FILE_FIELDS = {f.name for f in dataclasses.fields(FileChange)}
_COMMIT_FIELDS = {f.name for f in dataclasses.fields(Commit)}
_CHUNK_FIELDS = {f.name for f in dataclasses.fields(Chunk)}


# ---------------------------------------------------------------- checking records read back


def shape_error(cls: type, record: object) -> str | None:
    """What is wrong with `record` (a dict read from JSON) as a `cls` (Commit, FileChange, Chunk, Person):
    `"files[2].additions: expected int, got str"`, or None when it fits.

    Checks every field a reader relies on: the required ones are present, and each
    field present has the declared type (extra fields are allowed).
    """
    return _shape_error(cls, record, "")


def _shape_error(expected: object, value: object, where: str) -> str | None:
    name = where or "record"
    if dataclasses.is_dataclass(expected):
        if not isinstance(value, dict):
            return f"{name}: expected an object, got {_json_type(value)}"
        for f in dataclasses.fields(expected):
            inner = f"{where}.{f.name}" if where else f.name
            if f.name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    return f"{inner}: missing"
                continue
            problem = _shape_error(_hints(expected)[f.name], value[f.name], inner)
            if problem:
                return problem
        return None
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = [_shape_error(a, value, where) for a in options]
        return None if None in problems else problems[0]
    if origin is list:
        if not isinstance(value, list):
            return f"{name}: expected a list, got {_json_type(value)}"
        for i, item in enumerate(value):
            problem = _shape_error(args[0], item, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return f"{name}: expected an object, got {_json_type(value)}"
        for key, item in value.items():
            problem = _shape_error(args[1], item, f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        if value not in {m.value for m in expected}:
            allowed = ", ".join(m.value for m in expected)
            return f"{name}: expected one of {allowed}, got {json_repr(value)}"
        return None
    if expected is int and (not isinstance(value, int) or isinstance(value, bool)):
        return f"{name}: expected int, got {_json_type(value)}"
    if expected in (str, bool) and not isinstance(value, expected):
        return f"{name}: expected {expected.__name__}, got {_json_type(value)}"
    return None


def _json_type(value: object) -> str:
    return {dict: "object", list: "list", str: "str", bool: "bool", int: "int", float: "float",
            type(None): "null"}.get(type(value), type(value).__name__)


def json_repr(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_HINTS: dict[type, dict] = {}


def _hints(cls: type) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]
