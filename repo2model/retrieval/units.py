"""The index's units: what one file version of the tree splits into, each unit one point of the index.

    units = units_of_file("src/lib.rs", data, blob_id, cfg, modules, rev, redactor)   # [IndexUnit, ...]

Units: every unit the chunker knows (repo2model.code.units.located_units: functions, methods, tests, structs,
enums, traits, impls, modules, consts, macros, imports, classes), one `file` unit per file (its whole text up to
`whole_file_lines`, else an outline: the lines outside units and one signature line per top-level unit), `doc`
units for Markdown sections (one per heading), and `file` units for other text files (windows of
`whole_file_lines` lines). A unit that holds other units (impl, trait, class, mod) is stored as an outline: its
own lines, and each inner unit's signature line followed by ` ...`; the inner units are points of their own.

Payload: path, symbol, kind, module (and `modules`: every prefix of it, for filters), language, start/end lines
(1-based, inclusive), blob (the file's blob id), commit (the last commit that changed the unit: the file's last
commit at a first build, the commit that changed the unit's text at an update), digest (of the embedded text),
full (false for outlines), text (the unit's code, secrets redacted as the scraper does).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, fields

from repo2model.code.units import PARSED_LANGUAGES, ModuleLookup, language_of, located_units
from repo2model.git.redact import Redactor
from repo2model.retrieval.index_config import IndexConfig

INDEX_FORMAT = 1  # bump when units, texts or vectors change meaning: an index of another format is rebuilt
SKIPPED_LANGUAGES = ("lockfile",)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_NOT_SIGNATURE = ("#[", "#!", "//", "/*", "*", "@", "#", '"""', "'''")


@dataclass
class IndexUnit:
    """One point of the index: a unit of one file at the indexed tree."""

    path: str
    kind: str
    symbol: str
    module: str | None
    language: str
    start: int  # 1-based first line
    end: int  # last line, inclusive
    text: str  # the code (an outline when `full` is false), secrets redacted
    blob: str  # the file's blob id
    full: bool = True  # the text is the unit's whole code (false: inner units elided, or a cut)
    ordinal: int = 0  # among units of the same path, kind and symbol
    commit: str | None = None  # the last commit that changed it

    @property
    def id(self) -> int:
        key = f"{self.path}\0{self.kind}\0{self.symbol}\0{self.ordinal}".encode("utf-8", "surrogatepass")
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # 63 bits

    def embedding_text(self) -> str:
        return f"{self.path}\n{self.kind} {self.symbol}\n{self.text}"

    def digest(self, model: str) -> str:
        data = f"{INDEX_FORMAT}\0{model}\0{self.embedding_text()}".encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, digest_size=16).hexdigest()

    def payload(self, model: str) -> dict:
        out = {name: getattr(self, name) for name in PAYLOAD_FIELDS}  # dataclasses.asdict, without its deep copies
        out["modules"] = module_prefixes(self.module)
        out["digest"] = self.digest(model)
        return out

    @classmethod
    def from_payload(cls, payload: dict) -> IndexUnit:
        names = {f for f in cls.__dataclass_fields__ if f != "ordinal"}
        return cls(**{k: v for k, v in payload.items() if k in names})


PAYLOAD_FIELDS = tuple(f.name for f in fields(IndexUnit) if f.name != "ordinal")


def module_prefixes(module: str | None) -> list[str]:
    """`a::b::c` -> [a, a::b, a::b::c] (Python: dots), for "in this module or below" filters."""
    if not module:
        return []
    separator = "::" if "::" in module else "."
    parts = module.split(separator)
    return [separator.join(parts[: i + 1]) for i in range(len(parts))]


def indexable(path: str, size: int | None, cfg: IndexConfig) -> bool:
    """Whether a file of the tree is read for the index (by name and size; binaries are dropped once read)."""
    language = language_of(path)
    if language in SKIPPED_LANGUAGES or (size is not None and size > cfg.max_file_bytes):
        return False
    return language in PARSED_LANGUAGES or language == "markdown" or cfg.text_files


def units_of_file(path: str, data: bytes, blob: str, cfg: IndexConfig, modules: ModuleLookup | None = None,
                  rev: str | None = None, redactor: Redactor | None = None) -> list[IndexUnit]:
    """The index units of one file version (see the module docstring); [] for binary or oversized files."""
    if b"\0" in data[:8192] or len(data) > cfg.max_file_bytes:
        return []
    language = language_of(path)
    text = data.decode("utf-8", "replace")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return []
    file_module = (modules or ModuleLookup(lambda name: None)).file_module(rev, path, language)
    units: list[IndexUnit] = []
    if language in PARSED_LANGUAGES:
        located = located_units(path, data, modules, rev=rev)
        for i, unit in enumerate(located):
            children = [u for u in located[i + 1:] if u.depth == unit.depth + 1 and unit.start <= u.start
                        and u.end <= unit.end]
            body = outline(lines, unit.start, unit.end, children) if children else _slice(lines, unit.start, unit.end)
            units.append(IndexUnit(path, unit.kind, unit.symbol, unit.module, language, unit.start,
                                   min(unit.end, len(lines)), body, blob, full=not children))
        top = [u for u in located if u.depth == 0]
        units += _file_units(path, lines, language, file_module, blob, cfg, top)
    elif language == "markdown":
        units += _doc_units(path, lines, file_module, blob)
    elif cfg.text_files:
        units += _file_units(path, lines, language, file_module, blob, cfg, None)
    seen: Counter = Counter()
    for unit in units:
        key = (unit.kind, unit.symbol)
        unit.ordinal = seen[key]
        seen[key] += 1
        if redactor is not None:
            unit.text = redactor.redact(unit.text, path=path)[0]
    return units


def _slice(lines: list[str], start: int, end: int) -> str:
    return "\n".join(lines[start - 1: end])


def signature_line(lines: list[str], unit) -> int:
    """The line of a unit that names it (past its attributes, decorators and doc comments)."""
    for number in range(unit.start, min(unit.end, len(lines)) + 1):
        stripped = lines[number - 1].strip()
        if stripped and not stripped.startswith(_NOT_SIGNATURE) and (not unit.name or unit.name in stripped):
            return number
    return unit.start


def outline(lines: list[str], start: int, end: int, children: list, max_lines: int | None = None) -> str:
    """Lines start..end with each child unit reduced to its signature line + " ..." (one- and two-line children
    and imports are kept whole); cut after `max_lines` lines with a note."""
    out: list[str] = []
    line = start
    for child in sorted(children, key=lambda u: u.start):
        out.extend(lines[line - 1: child.start - 1])
        if child.end - child.start < 2 or child.kind == "import":
            out.extend(lines[child.start - 1: child.end])
        else:
            out.append(lines[signature_line(lines, child) - 1].rstrip() + " ...")
        line = child.end + 1
    out.extend(lines[line - 1: end])
    if max_lines is not None and len(out) > max_lines:
        out = out[:max_lines] + [f"... ({len(out) - max_lines} more outline lines)"]
    return "\n".join(out)


def _file_units(path: str, lines: list[str], language: str, module: str | None, blob: str, cfg: IndexConfig,
                top_units: list | None) -> list[IndexUnit]:
    """The `file` unit(s) of a file: its whole text when short; else the outline of its top-level units (a parsed
    file) or windows of `whole_file_lines` lines (any other text file)."""
    size = cfg.whole_file_lines
    if len(lines) <= size:
        return [IndexUnit(path, "file", path, module, language, 1, len(lines), "\n".join(lines), blob)]
    if top_units is not None:
        text = outline(lines, 1, len(lines), top_units, max_lines=size)
        return [IndexUnit(path, "file", path, module, language, 1, len(lines), text, blob, full=False)]
    return [IndexUnit(path, "file", path, module, language, start, min(start + size - 1, len(lines)),
                      _slice(lines, start, start + size - 1), blob)
            for start in range(1, len(lines) + 1, size)]


def _doc_units(path: str, lines: list[str], module: str | None, blob: str) -> list[IndexUnit]:
    """One `doc` unit per Markdown section (heading to the next heading; fenced code is not a heading);
    symbol: the heading chain, "Install > From source"; the text before the first heading: the file name."""
    starts: list[tuple[int, str]] = []
    chain: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(lines, start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            level = len(match.group(1))
            chain = [(lvl, title) for lvl, title in chain if lvl < level] + [(level, match.group(2))]
            starts.append((number, " > ".join(title for _, title in chain)))
    if not starts or starts[0][0] > 1:
        starts.insert(0, (1, posixpath.basename(path)))
    units = []
    for (start, symbol), following in zip(starts, starts[1:] + [(len(lines) + 1, "")]):
        end = following[0] - 1
        text = _slice(lines, start, end)
        if text.strip():
            units.append(IndexUnit(path, "doc", symbol, module, "markdown", start, end, text, blob))
    return units
