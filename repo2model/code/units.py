"""Semantic units of one file version, found with tree-sitter (Rust and Python).

    units = extract_units("rust", source_bytes)
    units.parse_error        # the tree has ERROR/MISSING nodes
    units.units[i]           # Unit(kind, symbol, name, start, end, depth, modpath, ...)
    units.owner_of_line()    # innermost unit index for every line (-1: no unit)

A unit spans whole lines (1-based, inclusive) and includes the attributes,
decorators and doc comments directly above it. Units nest (an `impl` holds its
methods, a `mod` its items); a changed line belongs to the innermost unit that
contains it. Unit kinds are `repo2model.core.records.KINDS`.

Rust: free functions, methods in `impl` blocks (`Type::method`, trait impls
`<Type as Trait>::method`), trait items (`Trait::method`), tests (`#[test]`,
`#[tokio::test]`, ... and everything inside a `#[cfg(test)]` module, in a
`tests.rs` file or under a `tests/` folder), structs
(and unions), enums, traits, impls (`Type`, `<Type as Trait>`), type aliases,
consts and statics, `macro_rules!`, `mod` blocks and declarations, `use` and
`extern crate` (a block of consecutive imports is one unit). `modpath` holds the nested `mod` names around a unit.

Python: functions, methods (`Class.method`), classes (nested: `Outer.Inner`),
`test_*` functions and `Test*` classes (and everything in them) as tests,
import blocks, module-level UPPER_CASE constants. Functions nested in functions stay
part of their outer function.

Modules (`ModuleLookup`): Rust: the crate (nearest `Cargo.toml` with a `[package]`,
`[lib] name` first, `-` -> `_`, read at the file's revision) plus the module path
from the file path and nested `mod`s (`energy_market::dispute::tests`); Python: the
dotted module path (`src/` dropped); other files inside a Rust crate: the crate;
otherwise None.

The whole description of one file version, for a code index of the current tree:

    with CatFile(repo) as objects:
        modules = ModuleLookup(objects.read)       # reads "<rev>:<folder>/Cargo.toml"
        for unit in located_units(path, objects.read(f"HEAD:{path}"), modules, rev="HEAD"):
            unit.kind, unit.symbol, unit.start, unit.end, unit.module
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Callable

import tree_sitter
import tree_sitter_python
import tree_sitter_rust

# Which languages have a parser here, by the `language` name the chunker uses.
PARSED_LANGUAGES = ("rust", "python")
_GRAMMARS = {"rust": tree_sitter_rust, "python": tree_sitter_python}

_TEST_ATTRIBUTE = re.compile(rb"#\[\s*(?:[A-Za-z_][\w]*\s*::\s*)*(?:test|rstest|test_case|quickcheck|proptest)\b")
_CFG_TEST = re.compile(rb"#\[\s*cfg\s*\(\s*test\s*\)\s*\]")
_GENERICS = re.compile(r"<[^<>]*>")
_SPACES = re.compile(r"\s+")
_CONST_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass
class Unit:
    kind: str  # one of records.KINDS (tests already classified as "test")
    base_kind: str  # the structural kind before test classification (function, class, ...)
    symbol: str  # qualified within its module: Market::settle, <Foo as Display>::fmt, A.m
    name: str  # the bare identifier that names it (for rename detection); "" if none
    start: int  # first line, 1-based, including leading attributes / doc comments
    end: int  # last line, inclusive
    depth: int  # nesting depth (0: top level)
    modpath: tuple[str, ...] = ()  # Rust: enclosing `mod` names
    inner: tuple[int, ...] = ()  # start lines of the unit's direct children (split points)


@dataclass
class FileUnits:
    units: list[Unit] = field(default_factory=list)
    parse_error: bool = False
    line_count: int = 0

    def owner_of_line(self) -> list[int]:
        """`owner[line]` = index of the innermost unit holding that 1-based line, or -1."""
        owner = [-1] * (self.line_count + 2)
        for index in sorted(range(len(self.units)), key=lambda i: self.units[i].depth):
            unit = self.units[index]
            owner[unit.start : unit.end + 1] = [index] * (unit.end - unit.start + 1)
        return owner


@lru_cache(maxsize=None)
def _parser(language: str) -> tree_sitter.Parser:
    if language not in _GRAMMARS:
        raise ValueError(f"no parser for {language}")
    return tree_sitter.Parser(tree_sitter.Language(_GRAMMARS[language].language()))


def parse(language: str, source: bytes, previous: tuple[tree_sitter.Tree, bytes] | None = None) -> tree_sitter.Tree:
    """The tree-sitter tree of `source` (the parse alone; what the benchmark calls the floor).

    `previous`: (tree, source) of another version of the same file. The region between
    their longest common prefix and suffix is marked as edited in a copy of that tree,
    and tree-sitter reparses only what the edit touches: the same tree as a full parse,
    in a fraction of the time when a commit changes a few lines of a large file.
    """
    parser = _parser(language)
    if previous is None:
        return parser.parse(source)
    old_tree, old_source = previous
    start = _common_prefix(old_source, source)
    same_end = _common_suffix(old_source, source, min(len(old_source), len(source)) - start)
    old_end, new_end = len(old_source) - same_end, len(source) - same_end
    tree = old_tree.copy()
    tree.edit(start_byte=start, old_end_byte=old_end, new_end_byte=new_end, start_point=_point(old_source, start),
              old_end_point=_point(old_source, old_end), new_end_point=_point(source, new_end))
    return parser.parse(source, tree)


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix (binary search on slice comparisons: memcmp, not a Python loop)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the longest common suffix, at most `limit`."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle:] == b[len(b) - middle:]:
            low = middle
        else:
            high = middle - 1
    return low


def _point(source: bytes, offset: int) -> tuple[int, int]:
    """(row, byte column) of a byte offset, as tree-sitter counts them."""
    return source.count(b"\n", 0, offset), offset - (source.rfind(b"\n", 0, offset) + 1)


def extract_units(language: str, source: bytes, split_threshold: int = 200, test_file: bool = False,
                  tree: tree_sitter.Tree | None = None) -> FileUnits:
    """Parse `source` (unless its `tree` is given) and list its units; `inner` split points only for units
    over `split_threshold` lines.

    `test_file`: the whole file is test code (Rust: the body of an out-of-line `mod tests;`,
    integration tests), so every unit in it is a test.
    """
    if tree is None:
        tree = parse(language, source)
    root = tree.root_node
    result = FileUnits(parse_error=root.has_error, line_count=source.count(b"\n") + (0 if source.endswith(b"\n") or not source else 1))
    walker = _RustWalker if language == "rust" else _PythonWalker
    try:
        walker(result.units, split_threshold).walk(root, test_file)
    except RecursionError:  # items nested deeper than Python's stack (generated code): treated as unparsable
        result.units.clear()
        result.parse_error = True
    return result


def is_test_file(language: str, path: str) -> bool:
    """Rust files that hold only test code: `tests.rs` (`#[cfg(test)] mod tests;`) and anything
    under a `tests/` folder. (Python test files keep their helpers as functions.)"""
    if language != "rust":
        return False
    parts = path.split("/")
    return parts[-1] == "tests.rs" or "tests" in parts[:-1]


def _text(node) -> str:
    return node.text.decode("utf-8", "replace") if node is not None else ""


def _last_row(node) -> int:
    """0-based last row that holds text of `node` (a node ending at column 0 ends on the row before)."""
    row, column = node.end_point
    if column == 0 and row > node.start_point[0]:
        return row - 1
    return row


def _has_attribute(leading, pattern: re.Pattern) -> bool:
    return any(node.type == "attribute_item" and pattern.search(node.text) for node in leading)


def _join_symbols(joined: str, symbol: str, limit: int = 4) -> str:
    """"a, b, c, d, +3 more": the first `limit` imports of a block by name, then a count."""
    names, _, more = joined.partition(" +")
    parts = [p for p in names.rstrip(",").split(", ") if p] if joined else []
    extra = int(more.split()[0]) if more else 0
    if len(parts) < limit:
        parts.append(symbol)
    else:
        extra += 1
    return ", ".join(parts) + (f", +{extra} more" if extra else "")


def _compact(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _strip_generics(text: str) -> str:
    previous = None
    while previous != text:
        previous, text = text, _GENERICS.sub("", text)
    return text


class _Walker:
    LEADING = ()  # node types that attach to the item below them (attributes, comments)

    def __init__(self, units: list[Unit], split_threshold: int):
        self.units = units
        self.split_threshold = split_threshold

    def items(self, container):
        """(item, first_row, leading) for the named children of `container`.

        `leading`: the attribute/comment nodes directly above the item (no blank line between),
        folded into it; `first_row` is where they start.
        """
        leading = []
        previous_end = None
        for child in container.named_children:
            if child.type in self.LEADING:
                if previous_end is not None and child.start_point[0] > previous_end + 1:
                    leading = []
                leading.append(child)
                previous_end = _last_row(child)
                continue
            first = child.start_point[0]
            if leading and first <= previous_end + 1:
                first = leading[0].start_point[0]
            else:
                leading = []
            yield child, first, leading
            leading = []
            previous_end = None

    def add(self, kind, base_kind, symbol, name, first_row, node, depth, modpath=(), body=None) -> Unit:
        unit = Unit(kind, base_kind, symbol, name, first_row + 1, _last_row(node) + 1, depth, modpath)
        if unit.end - unit.start + 1 > self.split_threshold:
            unit.inner = self.split_points(body if body is not None else node)
        self.units.append(unit)
        return unit

    def add_import(self, kind, symbol, first_row, node, depth, modpath, previous: Unit | None) -> Unit:
        """An import; consecutive imports of one block (nothing but comments and blank lines
        between) form one unit, symbol listing what they import."""
        if previous is not None:
            previous.end = _last_row(node) + 1
            previous.symbol = _join_symbols(previous.symbol, symbol)
            return previous
        return self.add(kind, "import", _join_symbols("", symbol), "", first_row, node, depth, modpath)

    def split_points(self, node) -> tuple[int, ...]:
        """Start lines of the statements/items directly inside the unit's body."""
        body = node
        for field_name in ("body", "value"):
            candidate = node.child_by_field_name(field_name)
            if candidate is not None:
                body = candidate
                break
        return tuple(sorted({child.start_point[0] + 1 for child in body.named_children}))


class _RustWalker(_Walker):
    LEADING = ("attribute_item", "line_comment", "block_comment")
    SIMPLE = {
        "struct_item": "struct",
        "union_item": "struct",
        "enum_item": "enum",
        "type_item": "type",
        "const_item": "const",
        "static_item": "const",
        "macro_definition": "macro",
        "associated_type": "type",
    }

    def walk(self, root, in_tests: bool = False) -> None:
        self.container(root, depth=0, modpath=(), owner=None, in_tests=in_tests, source=root)

    def container(self, node, depth, modpath, owner, in_tests, source) -> None:
        """Items of a source file, `mod` body, `impl` body or `trait` body.

        `owner` is the qualifier for associated items: "Foo", "<Foo as Trait>" or a trait name.
        """
        previous_import = None
        for item, first, leading in self.items(node):
            kind_type = item.type
            if kind_type not in ("use_declaration", "extern_crate_declaration"):
                previous_import = None
            if kind_type in ("function_item", "function_signature_item"):
                name = _text(item.child_by_field_name("name"))
                base = "method" if owner is not None else "function"
                symbol = f"{owner}::{name}" if owner is not None else name
                is_test = in_tests or _has_attribute(leading, _TEST_ATTRIBUTE)
                self.add("test" if is_test else base, base, symbol, name, first, item, depth, modpath)
            elif kind_type in self.SIMPLE:
                base = self.SIMPLE[kind_type]
                name = _text(item.child_by_field_name("name"))
                symbol = f"{owner}::{name}" if owner is not None else name
                self.add("test" if in_tests else base, base, symbol, name, first, item, depth, modpath)
            elif kind_type == "impl_item":
                self_type = _compact(_strip_generics(_text(item.child_by_field_name("type"))))
                trait = item.child_by_field_name("trait")
                symbol = f"<{self_type} as {_compact(_text(trait))}>" if trait is not None else self_type
                self.add("test" if in_tests else "impl", "impl", symbol, self_type, first, item, depth, modpath)
                body = item.child_by_field_name("body")
                if body is not None:
                    self.container(body, depth + 1, modpath, symbol, in_tests, source)
            elif kind_type == "trait_item":
                name = _text(item.child_by_field_name("name"))
                self.add("test" if in_tests else "trait", "trait", name, name, first, item, depth, modpath)
                body = item.child_by_field_name("body")
                if body is not None:
                    self.container(body, depth + 1, modpath, name, in_tests, source)
            elif kind_type == "mod_item":
                name = _text(item.child_by_field_name("name"))
                tests = in_tests or _has_attribute(leading, _CFG_TEST)
                self.add("test" if tests else "module", "module", name, name, first, item, depth, modpath)
                body = item.child_by_field_name("body")
                if body is not None:
                    self.container(body, depth + 1, (*modpath, name), None, tests, source)
            elif kind_type in ("use_declaration", "extern_crate_declaration"):
                if kind_type == "use_declaration":
                    symbol = _compact(_text(item.child_by_field_name("argument")))
                else:
                    symbol = _text(item.child_by_field_name("name"))
                previous_import = self.add_import("test" if in_tests else "import", symbol, first, item, depth,
                                                  modpath, previous_import)
            # anything else (item-level macro calls, stray tokens) stays outside units: hunk lines


class _PythonWalker(_Walker):
    LEADING = ("comment",)

    def walk(self, root, in_tests: bool = False) -> None:
        self.block(root, depth=0, owner=None, in_tests=in_tests)

    def block(self, node, depth, owner, in_tests) -> None:
        previous_import = None
        for item, first, _ in self.items(node):
            definition = item
            if item.type not in ("import_statement", "import_from_statement", "future_import_statement"):
                previous_import = None
            if item.type == "decorated_definition":
                definition = item.child_by_field_name("definition")
            if definition.type in ("function_definition", "class_definition"):
                name = _text(definition.child_by_field_name("name"))
                symbol = f"{owner}.{name}" if owner else name
                if definition.type == "class_definition":
                    tests = in_tests or name.startswith("Test")
                    self.add("test" if tests else "class", "class", symbol, name, first, item, depth,
                             body=definition)
                    body = definition.child_by_field_name("body")
                    if body is not None:
                        self.block(body, depth + 1, symbol, tests)
                else:
                    base = "method" if owner else "function"
                    is_test = in_tests or name.startswith("test")
                    self.add("test" if is_test else base, base, symbol, name, first, item, depth, body=definition)
            elif item.type in ("import_statement", "import_from_statement", "future_import_statement") and owner is None:
                if item.type == "import_statement":
                    symbol = ", ".join(_text(n) for n in item.children_by_field_name("name"))
                else:
                    symbol = _text(item.child_by_field_name("module_name")) or "__future__"
                previous_import = self.add_import("test" if in_tests else "import", symbol, first, item, depth, (),
                                                  previous_import)
            elif item.type == "expression_statement" and owner is None:
                target = item.named_children[0] if item.named_children else None
                if target is not None and target.type == "assignment":
                    left = _text(target.child_by_field_name("left"))
                    if _CONST_NAME.match(left):
                        self.add("test" if in_tests else "const", "const", left, left, first, item, depth)


# ---------------------------------------------------------------- languages and modules

LANGUAGE_BY_SUFFIX = {
    ".rs": "rust", ".py": "python", ".pyi": "python", ".md": "markdown", ".markdown": "markdown",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".js": "javascript",
    ".mjs": "javascript", ".ts": "typescript", ".tsx": "typescript", ".jsx": "javascript",
    ".go": "go", ".java": "java", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp",
    ".sh": "shell", ".bash": "shell", ".sql": "sql", ".proto": "protobuf", ".html": "html",
    ".css": "css", ".txt": "text", ".rst": "rst", ".cfg": "ini", ".ini": "ini", ".lock": "lockfile",
    ".sol": "solidity", ".nix": "nix", ".dockerfile": "dockerfile",
}
LANGUAGE_BY_NAME = {"Dockerfile": "dockerfile", "Makefile": "make", "Cargo.lock": "lockfile"}


def language_of(path: str) -> str:
    """The chunk `language` of a path: by file name, then by suffix; `text` otherwise."""
    name = posixpath.basename(path)
    if name in LANGUAGE_BY_NAME:
        return LANGUAGE_BY_NAME[name]
    return LANGUAGE_BY_SUFFIX.get(posixpath.splitext(name)[1].lower(), "text")


def python_module(path: str) -> str | None:
    """src/shop/cart.py -> shop.cart; pkg/__init__.py -> pkg."""
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if parts and parts[0] == "src" and len(parts) > 1:
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or None


def rust_module_path(path: str, crate_dir: str | None) -> list[str]:
    """Module path of a Rust file inside its crate: src/market/dispute.rs -> [market, dispute]."""
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if crate_dir:
        parts = parts[len(PurePosixPath(crate_dir).parts):]
    if parts and parts[0] == "src":
        parts = parts[1:]
    if parts and parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return parts


_CRATE_NAME_CACHE: dict[bytes, str | None] = {}


def crate_from_manifest(data: bytes) -> str | None:
    """The crate name a Cargo.toml declares (`[lib] name` or `[package] name`, `-` -> `_`), else None."""
    if data in _CRATE_NAME_CACHE:
        return _CRATE_NAME_CACHE[data]
    try:
        manifest = tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        manifest = {}
    name = None
    package = manifest.get("package")
    if isinstance(package, dict) and isinstance(package.get("name"), str):
        lib = manifest.get("lib")
        name = lib["name"] if isinstance(lib, dict) and isinstance(lib.get("name"), str) else package["name"]
        name = name.replace("-", "_")
    if len(_CRATE_NAME_CACHE) > 4096:
        _CRATE_NAME_CACHE.clear()
    _CRATE_NAME_CACHE[data] = name
    return name


def manifest_names(rev: str, path: str) -> list[str]:
    """The `<rev>:<folder>/Cargo.toml` object names above `path`, nearest first.

    A folder whose name holds a newline cannot be asked for through `git cat-file --batch`
    (one name per line): it is left out, as if it had no Cargo.toml.
    """
    names = []
    folder = posixpath.dirname(path)
    while True:
        if "\n" not in folder:
            names.append(f"{rev}:{folder}/Cargo.toml" if folder else f"{rev}:Cargo.toml")
        if not folder:
            return names
        folder = posixpath.dirname(folder)


def join_module(file_module: str | None, modpath: tuple[str, ...], path: str) -> str | None:
    """A unit's module: its file's module plus the `mod`s around it (Rust `::`, Python `.`)."""
    if not modpath:
        return file_module
    separator = "::" if path.endswith(".rs") else "."
    return separator.join(([file_module] if file_module else []) + list(modpath))


class ModuleLookup:
    """Modules of files at revisions, reading each Cargo.toml once per (revision, folder).

    `read(name)` returns the bytes of a `<rev>:<path>` object name, or None when there is
    none (a `CatFile.read`, or a function reading a working tree).
    """

    def __init__(self, read: Callable[[str], bytes | None]):
        self.read = read
        self._crates: dict[tuple[str, str], tuple[str, str] | None] = {}

    def crate_of(self, rev: str | None, path: str) -> tuple[str | None, str | None]:
        """(crate name, crate folder) of the nearest Cargo.toml with a [package] at `rev`."""
        if rev is None:
            return None, None
        folder = posixpath.dirname(path)
        chain = []
        while True:
            key = (rev, folder)
            if key in self._crates:
                found = self._crates[key]
                break
            chain.append(key)
            data = None if "\n" in folder else self.read(f"{rev}:{folder}/Cargo.toml" if folder else f"{rev}:Cargo.toml")
            name = crate_from_manifest(data) if data is not None else None
            if name is not None:
                found = (name, folder)
                break
            if not folder:
                found = None
                break
            folder = posixpath.dirname(folder)
        for key in chain:
            self._crates[key] = found
        return found if found is not None else (None, None)

    def file_module(self, rev: str | None, path: str, language: str | None = None) -> str | None:
        """The module of the file `path` at `rev` (see the module docstring)."""
        language = language or language_of(path)
        if language == "python":
            return python_module(path)
        crate, crate_dir = self.crate_of(rev, path)
        if language == "rust":
            parts = rust_module_path(path, crate_dir)
            return "::".join(([crate] if crate else []) + parts) or None
        return crate


@dataclass(frozen=True)
class LocatedUnit:
    """One unit of one file version, with the module it lives in."""

    kind: str
    symbol: str
    name: str
    start: int  # 1-based first line, attributes and doc comments included
    end: int  # last line, inclusive
    depth: int
    module: str | None


def located_units(path: str, source: bytes, modules: ModuleLookup | None = None, rev: str | None = "HEAD",
                  split_threshold: int = 200) -> list[LocatedUnit]:
    """The units of the file `path` with content `source` (at `rev`, for its crate), in file order.

    Files in languages without a parser give no units. Without `modules`, Rust modules
    lack the crate name (no Cargo.toml is read).
    """
    language = language_of(path)
    if language not in PARSED_LANGUAGES:
        return []
    units = extract_units(language, source, split_threshold=split_threshold, test_file=is_test_file(language, path))
    file_module = (modules or ModuleLookup(lambda name: None)).file_module(rev, path, language)
    return [
        LocatedUnit(u.kind, u.symbol, u.name, u.start, u.end, u.depth, join_module(file_module, u.modpath, path))
        for u in units.units
    ]
