"""Tests for the semantic chunker: real repositories built with git, real tree-sitter parses.

The expected chunk lists were worked out by hand from the file contents below
(line numbers count from 1 in the version shown).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from repo2model.stages import git_scraper
from repo2model.stages import semantic_chunker as sc
from helpers_chunker import commit_record, coverage_problems, history, summary
from repo2model.code import chunking, execution
from repo2model.code.patches import parse_patch
from repo2model.code import units as code_units
from repo2model.core.artifacts import CommitsWriter, iter_commits, iter_jsonl, open_text
from repo2model.core.config import load_config
from repo2model.core.errors import UserError
from repo2model.git.objects import CatFile
from repo2model.core.paths import ArtifactPaths
from repo2model.core.records import KINDS, Chunk

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- the Rust workspace fixture

MARKET_TOML = '[package]\nname = "energy-market"\nversion = "0.1.0"\nedition = "2021"\n'
LEDGER_TOML = '[package]\nname = "ledger"\nversion = "0.1.0"\nedition = "2021"\n'
LEDGER_TOML_2 = '[package]\nname = "ledger"\nversion = "0.2.0"\nedition = "2021"\n'

MARKET_LIB = """\
pub mod dispute;

pub fn fee(amount: u64) -> u64 {
    amount / 100
}

pub fn helper(x: u64) -> u64 {
    x * 2
}
"""

DISPUTE = """\
use crate::fee;

pub struct Market {
    pub volume: u64,
}

impl Market {
    pub fn settle(&self) -> u64 {
        fee(self.volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles() {
        assert_eq!(Market { volume: 100 }.settle(), 1);
    }
}
"""

LEDGER = """\
pub struct Account {
    pub balance: i64,
}

pub struct Obsolete;

pub fn transfer(from: &mut Account, to: &mut Account, amount: i64) {
    from.balance -= amount;
    to.balance += amount;
}
"""

BALANCE = """
pub fn balance(account: &Account) -> i64 {
    account.balance
}
"""

NEW_TEST = """
    #[test]
    fn settles_zero() {
        assert_eq!(Market { volume: 0 }.settle(), 0);
    }
}
"""

HELPER = """
pub fn helper(x: u64) -> u64 {
    x * 2
}
"""

MACRO = """\
macro_rules! ensure {
    ($cond:expr) => {
        assert!($cond)
    };
}

"""

DISPLAY = """
impl std::fmt::Display for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}", self.volume)
    }
}
"""

RATES = """
pub mod rates {
    pub fn base() -> u64 {
        5
    }
}
"""


def build_rust_workspace(make_repo):
    """(repo, [(sha, expected summary)]): a Rust workspace of two crates whose history holds every change type."""
    repo = make_repo("workspace")
    steps = []
    market_lib, dispute, ledger = MARKET_LIB, DISPUTE, LEDGER
    M, D, L = "crates/energy-market/src/lib.rs", "crates/energy-market/src/dispute.rs", "crates/ledger/src/lib.rs"

    sha = repo.commit("workspace with two crates", {
        "Cargo.toml": '[workspace]\nmembers = ["crates/*"]\n',
        "README.md": "# Exchange\n",
        "crates/energy-market/Cargo.toml": MARKET_TOML,
        M: market_lib, D: dispute,
        "crates/ledger/Cargo.toml": LEDGER_TOML,
        L: ledger,
    })
    steps.append((sha, [
        ("Cargo.toml", "hunk", None, "NEW_HUNK", None, None, (1, 2)),
        ("README.md", "hunk", None, "NEW_HUNK", None, None, (1, 1)),
        ("crates/energy-market/Cargo.toml", "hunk", None, "NEW_HUNK", "energy_market", None, (1, 4)),
        (D, "import", "crate::fee", "NEW_IMPORT", "energy_market::dispute", None, (1, 1)),
        (D, "struct", "Market", "NEW_STRUCT", "energy_market::dispute", None, (3, 5)),
        (D, "impl", "Market", "NEW_IMPL", "energy_market::dispute", None, (7, 11)),
        (D, "method", "Market::settle", "NEW_METHOD", "energy_market::dispute", None, (8, 10)),
        (D, "test", "tests", "NEW_TEST", "energy_market::dispute", None, (13, 21)),
        (D, "test", "super::*", "NEW_TEST", "energy_market::dispute::tests", None, (15, 15)),
        (D, "test", "settles", "NEW_TEST", "energy_market::dispute::tests", None, (17, 20)),
        (M, "module", "dispute", "NEW_MODULE", "energy_market", None, (1, 1)),
        (M, "function", "fee", "NEW_FUNCTION", "energy_market", None, (3, 5)),
        (M, "function", "helper", "NEW_FUNCTION", "energy_market", None, (7, 9)),
        ("crates/ledger/Cargo.toml", "hunk", None, "NEW_HUNK", "ledger", None, (1, 4)),
        (L, "struct", "Account", "NEW_STRUCT", "ledger", None, (1, 3)),
        (L, "struct", "Obsolete", "NEW_STRUCT", "ledger", None, (5, 5)),
        (L, "function", "transfer", "NEW_FUNCTION", "ledger", None, (7, 10)),
    ]))

    ledger += BALANCE
    steps.append((repo.commit("add balance", {L: ledger}), [
        (L, "function", "balance", "NEW_FUNCTION", "ledger", None, (12, 14)),
    ]))

    dispute = dispute.replace("fee(self.volume)\n", "fee(self.volume) + 1\n")
    steps.append((repo.commit("settle adds one", {D: dispute}), [
        (D, "method", "Market::settle", "MODIFIED_METHOD", "energy_market::dispute", (8, 10), (8, 10)),
    ]))

    dispute = dispute[: dispute.rindex("}\n")] + NEW_TEST
    steps.append((repo.commit("test settling zero", {D: dispute}), [
        (D, "test", "settles_zero", "NEW_TEST", "energy_market::dispute::tests", None, (22, 25)),
    ]))

    ledger = ledger.replace("pub struct Obsolete;\n\n", "")
    steps.append((repo.commit("drop Obsolete", {L: ledger}), [
        (L, "struct", "Obsolete", "DELETED_STRUCT", "ledger", (5, 5), None),
    ]))

    ledger = ledger.replace("pub fn transfer(", "pub fn move_funds(")
    steps.append((repo.commit("rename transfer", {L: ledger}), [
        (L, "function", "move_funds", "RENAMED_FUNCTION", "ledger", (5, 8), (5, 8)),
    ]))

    market_lib = market_lib.replace(HELPER, "")
    dispute += HELPER
    steps.append((repo.commit("move helper into dispute", {M: market_lib, D: dispute}), [
        (D, "function", "helper", "MOVED_FUNCTION", "energy_market::dispute", (7, 9), (28, 30)),
    ]))

    ledger = MACRO + ledger
    dispute += DISPLAY
    market_lib += RATES
    steps.append((repo.commit("macro, Display, rates", {L: ledger, D: dispute, M: market_lib}), [
        (D, "impl", "<Market as std::fmt::Display>", "NEW_IMPL", "energy_market::dispute", None, (32, 36)),
        (D, "method", "<Market as std::fmt::Display>::fmt", "NEW_METHOD", "energy_market::dispute", None, (33, 35)),
        (M, "module", "rates", "NEW_MODULE", "energy_market", None, (7, 11)),
        (M, "function", "base", "NEW_FUNCTION", "energy_market::rates", None, (8, 10)),
        (L, "macro", "ensure", "NEW_MACRO", "ledger", None, (1, 5)),
    ]))

    ledger = ledger.replace("    account.balance\n", "    account.balance +\n")
    steps.append((repo.commit("broken balance", {L: ledger}), [
        (L, "hunk", None, "MODIFIED_HUNK", "ledger", (17, 17), (17, 17)),
    ]))

    steps.append((repo.commit("ledger 0.2 and docs", {
        "crates/ledger/Cargo.toml": LEDGER_TOML_2,
        "README.md": "# Exchange\n\nTwo crates: energy-market and ledger.\n",
    }), [
        ("README.md", "hunk", None, "NEW_HUNK", None, None, (2, 3)),
        ("crates/ledger/Cargo.toml", "hunk", None, "MODIFIED_HUNK", "ledger", (3, 3), (3, 3)),
    ]))
    return repo, steps


# ---------------------------------------------------------------- the Python fixture

CART = """\
import os


class Cart:
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)


def total(cart):
    return len(cart.items)
"""

TEST_CART = """\
from shop.cart import Cart


def test_add():
    cart = Cart()
    cart.add(1)
    assert cart.items == [1]
"""


def build_python_history(make_repo):
    repo = make_repo("python")
    C, T = "src/shop/cart.py", "tests/test_cart.py"
    cart, tests = CART, TEST_CART
    steps = []
    sha = repo.commit("cart", {C: cart, T: tests, "src/shop/__init__.py": ""})
    steps.append((sha, [
        (C, "import", "os", "NEW_IMPORT", "shop.cart", None, (1, 1)),
        (C, "class", "Cart", "NEW_CLASS", "shop.cart", None, (4, 9)),
        (C, "method", "Cart.__init__", "NEW_METHOD", "shop.cart", None, (5, 6)),
        (C, "method", "Cart.add", "NEW_METHOD", "shop.cart", None, (8, 9)),
        (C, "function", "total", "NEW_FUNCTION", "shop.cart", None, (12, 13)),
        (T, "import", "shop.cart", "NEW_IMPORT", "tests.test_cart", None, (1, 1)),
        (T, "test", "test_add", "NEW_TEST", "tests.test_cart", None, (4, 7)),
    ]))

    cart = cart.replace(
        "        self.items.append(item)\n",
        "        self.items.append(item)\n        return self\n\n    def clear(self):\n        self.items = []\n",
    )
    steps.append((repo.commit("add returns self; clear", {C: cart}), [
        (C, "method", "Cart.add", "MODIFIED_METHOD", "shop.cart", (8, 9), (8, 10)),
        (C, "method", "Cart.clear", "NEW_METHOD", "shop.cart", None, (12, 13)),
    ]))

    tests += "\n\nclass TestCart:\n    def test_empty(self):\n        assert Cart().items == []\n"
    steps.append((repo.commit("test class", {T: tests}), [
        (T, "test", "TestCart", "NEW_TEST", "tests.test_cart", None, (10, 12)),
        (T, "test", "TestCart.test_empty", "NEW_TEST", "tests.test_cart", None, (11, 12)),
    ]))

    cart = cart.replace("\n\ndef total(cart):\n    return len(cart.items)\n", "")
    steps.append((repo.commit("drop total", {C: cart}), [
        (C, "function", "total", "DELETED_FUNCTION", "shop.cart", (16, 17), None),
    ]))

    tests = tests.replace("def test_add():", "def test_add_one():")
    steps.append((repo.commit("rename test", {T: tests}), [
        (T, "test", "test_add_one", "RENAMED_TEST", "tests.test_cart", (4, 7), (4, 7)),
    ]))

    cart = cart.replace("        self.items = []\n", "        self.items = [\n", 1)
    steps.append((repo.commit("broken", {C: cart}), [
        (C, "hunk", None, "MODIFIED_HUNK", "shop.cart", (6, 6), (6, 6)),
    ]))
    return repo, steps


def read_chunks(path: Path) -> list[Chunk]:
    return [Chunk.from_dict(record) for record in iter_jsonl(path)]


def chunks_of(repo, sha, cfg=None) -> tuple:
    commit = commit_record(repo.path, sha)
    with CatFile(repo.path) as objects:
        chunks = chunking.chunk_commit(commit, objects, cfg)
    return commit, chunks


# ---------------------------------------------------------------- unit extraction


def test_rust_units_cover_every_kind():
    source = (MACRO + DISPUTE + DISPLAY + RATES + "type Price = u64;\nconst MAX: u64 = 9;\nstatic NAME: &str = \"x\";\n"
              "pub enum Side { Buy, Sell }\npub trait Quote { fn quote(&self) -> u64; }\nmod decl;\n"
              "extern crate core;\n#[tokio::test]\nasync fn runs() {}\n").encode()
    units = code_units.extract_units("rust", source)
    assert not units.parse_error
    got = {(u.kind, u.symbol) for u in units.units}
    assert got >= {
        ("macro", "ensure"), ("import", "crate::fee"), ("struct", "Market"), ("impl", "Market"),
        ("method", "Market::settle"), ("test", "tests"), ("test", "super::*"), ("test", "settles"),
        ("impl", "<Market as std::fmt::Display>"), ("method", "<Market as std::fmt::Display>::fmt"),
        ("module", "rates"), ("function", "base"), ("type", "Price"), ("const", "MAX"), ("const", "NAME"),
        ("enum", "Side"), ("trait", "Quote"), ("method", "Quote::quote"), ("module", "decl"),
        ("import", "core"), ("test", "runs"),
    }
    assert all(u.kind in KINDS for u in units.units)
    base = next(u for u in units.units if u.symbol == "base")
    assert base.modpath == ("rates",)


def test_rust_unit_spans_include_attributes_and_doc_comments():
    source = b"/// Docs.\n#[inline]\npub fn a() {}\n\n// loose comment\n\nfn b() {}\n"
    units = code_units.extract_units("rust", source).units
    assert [(u.symbol, u.start, u.end) for u in units] == [("a", 1, 3), ("b", 7, 7)]


def test_rust_test_files_hold_tests(make_repo):
    repo = make_repo()
    sha = repo.commit("tests", {
        "crates/m/Cargo.toml": MARKET_TOML,
        "crates/m/src/tests.rs": "use super::*;\n\nfn setup() -> u64 {\n    1\n}\n",
        "crates/m/tests/it.rs": "#[test]\nfn works() {}\n",
        "crates/m/src/lib.rs": "#[cfg(test)]\nmod tests;\n",
    })
    _, chunks = chunks_of(repo, sha)
    assert summary(chunks)[1:] == [
        ("crates/m/src/lib.rs", "test", "tests", "NEW_TEST", "energy_market", None, (1, 2)),
        ("crates/m/src/tests.rs", "test", "super::*", "NEW_TEST", "energy_market::tests", None, (1, 1)),
        ("crates/m/src/tests.rs", "test", "setup", "NEW_TEST", "energy_market::tests", None, (3, 5)),
        ("crates/m/tests/it.rs", "test", "works", "NEW_TEST", "energy_market::tests::it", None, (1, 2)),
    ]
    assert code_units.is_test_file("rust", "src/a/tests.rs") and not code_units.is_test_file("python", "tests/t.py")


def test_python_units():
    source = (CART + "\n\n@decorator\nclass TestThing:\n    def helper(self):\n        pass\n\n\nMAX_ITEMS = 3\n").encode()
    units = code_units.extract_units("python", source).units
    assert [(u.kind, u.symbol, u.start, u.end) for u in units] == [
        ("import", "os", 1, 1), ("class", "Cart", 4, 9), ("method", "Cart.__init__", 5, 6),
        ("method", "Cart.add", 8, 9), ("function", "total", 12, 13), ("test", "TestThing", 16, 19),
        ("test", "TestThing.helper", 18, 19), ("const", "MAX_ITEMS", 22, 22),
    ]


def test_import_blocks_are_one_unit(make_repo):
    repo = make_repo()
    repo.commit("a", {"tool.py": "import os\nimport sys\n\n\ndef main():\n    pass\n",
                      "src/lib.rs": "use std::fmt;\nuse std::io;\n\nfn a() {}\n"})
    sha = repo.commit("more imports", {
        "tool.py": "import os\nimport re\nimport sys\n\n\ndef main():\n    pass\n",
        "src/lib.rs": "use std::fmt;\n// io too\nuse std::io;\nuse std::mem;\n\nfn a() {}\n",
    })
    commit, chunks = chunks_of(repo, sha)
    assert summary(chunks) == [
        ("src/lib.rs", "import", "std::fmt, std::io, std::mem", "MODIFIED_IMPORT", None, (1, 2), (1, 4)),
        ("tool.py", "import", "os, re, sys", "MODIFIED_IMPORT", "tool", (1, 2), (1, 3)),
    ]
    units = code_units.extract_units("python", "".join(f"import m{i}\n" for i in range(7)).encode()).units
    assert [(u.symbol, u.start, u.end) for u in units] == [("m0, m1, m2, m3, +3 more", 1, 7)]


def test_cat_file_read_many(make_repo):
    repo = make_repo()
    sha = repo.commit("a", {"a.txt": "alpha\n", "b.txt": "beta\n"})
    with CatFile(repo.path) as objects:
        names = [f"{sha}:a.txt", "f" * 40, f"{sha}:b.txt", f"{sha}:nope"] * 100
        assert objects.read_many(names) == [objects.read(n) for n in names]
        assert objects.read_many(names)[:4] == [b"alpha\n", None, b"beta\n", None]


def test_incremental_reparse_gives_the_full_parse():
    """parse(new, previous=(old tree, old)) reuses the old tree and gives exactly the tree of a full parse."""
    rust = (MARKET_LIB + DISPUTE).encode()
    python = (CART + "\n\nPRICE = 'ünïcödé'\n").encode()
    cases = [
        ("rust", rust, rust.replace(b"amount / 100", b"amount / 1000")),  # one line in the middle
        ("rust", rust, b"// header\n" + rust + b"\nfn tail() {}\n"),  # both ends: one region from start to end
        ("rust", rust, rust.replace(b"pub fn helper", b"fn helper").replace(b"#[test]", b"#[test]\n    #[ignore]")),
        ("rust", rust, b""), ("rust", b"", rust), ("rust", rust, rust.replace(b"\n", b"\r\n")),
        ("rust", rust, rust.replace(b"x * 2\n}", b"x * 2\n")),  # becomes a parse error
        ("python", python, python.replace("ünïcödé".encode(), "ß".encode()).replace(b"return len", b"return 2 * len")),
        ("python", python, python.replace(b"class Cart:", b'class Cart(Base):\n    """Docs."""')),
    ]
    for language, old, new in cases:
        previous = (code_units.parse(language, old), old)
        assert tree_shape(code_units.parse(language, new, previous)) == tree_shape(code_units.parse(language, new))
        assert tree_shape(previous[0]) == tree_shape(code_units.parse(language, old))  # the old tree is untouched


def tree_shape(tree) -> list[tuple]:
    """Every node with its type and position (bytes and row/column points), in document order."""
    shape, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        shape.append((node.type, node.start_byte, node.end_byte, node.start_point, node.end_point, node.has_error))
        stack.extend(reversed(node.children))
    return shape


def test_parse_errors_are_flagged():
    assert code_units.extract_units("rust", b"fn a( {\n").parse_error
    assert code_units.extract_units("python", b"def f(:\n").parse_error


def test_parse_patch_line_numbers():
    patch = "@@ -2,3 +2,4 @@ fn a\n x\n-y\n+y2\n+y3\n z\n\\ No newline at end of file\n"
    lines = parse_patch(patch)
    assert [(l.tag, l.old, l.new) for l in lines] == [(" ", 2, 2), ("-", 3, 3), ("+", 4, 3), ("+", 4, 4), (" ", 4, 5)]
    assert lines[-1].tail == "\\ No newline at end of file"


def test_module_names():
    assert code_units.python_module("src/shop/cart.py") == "shop.cart"
    assert code_units.python_module("pkg/__init__.py") == "pkg"
    assert code_units.rust_module_path("crates/m/src/a/b.rs", "crates/m") == ["a", "b"]
    assert code_units.rust_module_path("crates/m/src/a/mod.rs", "crates/m") == ["a"]
    assert code_units.rust_module_path("crates/m/tests/it.rs", "crates/m") == ["tests", "it"]
    assert code_units.crate_from_manifest(b'[package]\nname = "energy-market"\n') == "energy_market"
    assert code_units.crate_from_manifest(b'[package]\nname = "a"\n[lib]\nname = "b_lib"\n') == "b_lib"
    assert code_units.crate_from_manifest(b"[workspace]\n") is None
    assert code_units.crate_from_manifest(b"not toml [") is None


def test_located_units_for_a_code_index(make_repo):
    """The library entry point of the code index: units of a file at a revision, with modules."""
    repo, _ = build_rust_workspace(make_repo)
    path = "crates/energy-market/src/dispute.rs"
    with CatFile(repo.path) as objects:
        modules = code_units.ModuleLookup(objects.read)
        units = code_units.located_units(path, objects.read(f"HEAD:{path}"), modules, rev="HEAD")
        first = history(repo.path)[0]
        assert modules.crate_of(first, "crates/ledger/src/lib.rs") == ("ledger", "crates/ledger")
        assert modules.file_module("HEAD", "README.md") is None
    got = {(u.kind, u.symbol, u.module) for u in units}
    assert ("method", "Market::settle", "energy_market::dispute") in got
    assert ("test", "settles_zero", "energy_market::dispute::tests") in got
    settle = next(u for u in units if u.symbol == "Market::settle")
    lines = repo.git("show", f"HEAD:{path}").split("\n")
    assert lines[settle.start - 1].strip().startswith("pub fn settle") and lines[settle.end - 1].strip() == "}"
    # without a lookup: the module path from the file path alone (no crate), and no units for text files
    assert [u.module for u in code_units.located_units("src/dispute.rs", b"fn a() {}\n")] == ["dispute"]
    assert code_units.located_units("README.md", b"# x\n") == []


# ---------------------------------------------------------------- exact chunk lists


def test_rust_workspace_chunks(make_repo):
    repo, steps = build_rust_workspace(make_repo)
    for sha, expected in steps:
        commit, chunks = chunks_of(repo, sha)
        assert summary(chunks) == expected, commit.message
        assert coverage_problems(commit, chunks) == [], commit.message
        for chunk in chunks:
            assert chunk.commit == commit.hash and chunk.author == "Alice Example"
            assert chunk.timestamp == commit.authored_at
            assert chunk.language in ("rust", "toml", "markdown")


def test_rust_chunk_texts(make_repo):
    repo, steps = build_rust_workspace(make_repo)
    # the modified method: before/after are the whole method, the diff its own lines
    _, (settle,) = chunks_of(repo, steps[2][0])
    assert settle.before == "    pub fn settle(&self) -> u64 {\n        fee(self.volume)\n    }"
    assert settle.after == "    pub fn settle(&self) -> u64 {\n        fee(self.volume) + 1\n    }"
    assert settle.diff == (
        "     pub fn settle(&self) -> u64 {\n-        fee(self.volume)\n+        fee(self.volume) + 1\n     }"
    )
    # the moved function records where it came from
    _, (moved,) = chunks_of(repo, steps[6][0])
    assert moved.old_file == "crates/energy-market/src/lib.rs"
    assert moved.before == moved.after == HELPER.strip("\n")
    # the renamed function records its old name
    _, (renamed,) = chunks_of(repo, steps[5][0])
    assert renamed.old_symbol == "transfer"
    # the syntax error degrades the file to hunks, flagged
    _, (broken,) = chunks_of(repo, steps[8][0])
    assert broken.parse_error and broken.diff == "-    account.balance\n+    account.balance +"


def test_python_chunks(make_repo):
    repo, steps = build_python_history(make_repo)
    for sha, expected in steps:
        commit, chunks = chunks_of(repo, sha)
        assert summary(chunks) == expected, commit.message
        assert coverage_problems(commit, chunks) == [], commit.message


def test_deleted_and_renamed_files(make_repo):
    repo = make_repo()
    source = "def f():\n    return 1\n\n\ndef g():\n    return 1\n"
    repo.commit("a", {"src/a.py": source, "notes.md": "x\n"})
    repo.move("src/a.py", "src/b.py")
    repo.write("src/b.py", source[: -len("1\n")] + "2\n")
    sha = repo.commit("rename file and change g")
    commit, chunks = chunks_of(repo, sha)
    assert summary(chunks) == [("src/b.py", "function", "g", "MODIFIED_FUNCTION", "b", (5, 6), (5, 6))]
    assert chunks[0].old_file == "src/a.py"
    sha = repo.commit("delete", {"src/b.py": None, "notes.md": None})
    commit, chunks = chunks_of(repo, sha)
    assert summary(chunks) == [
        ("notes.md", "hunk", None, "DELETED_HUNK", None, (1, 1), None),
        ("src/b.py", "function", "f", "DELETED_FUNCTION", "b", (1, 2), None),
        ("src/b.py", "function", "g", "DELETED_FUNCTION", "b", (5, 6), None),
    ]
    assert coverage_problems(commit, chunks) == []


def test_crate_name_is_read_at_each_commit(make_repo):
    repo = make_repo()
    first = repo.commit("ledger", {"ledger/Cargo.toml": LEDGER_TOML, "ledger/src/lib.rs": "pub fn a() {}\n"})
    second = repo.commit("renamed crate", {
        "ledger/Cargo.toml": LEDGER_TOML.replace('"ledger"', '"bank-core"'),
        "ledger/src/lib.rs": "pub fn a() {}\n\npub fn b() {}\n",
    })
    third = repo.commit("drop a", {"ledger/src/lib.rs": "pub fn b() {}\n"})
    assert [c.module for c in chunks_of(repo, first)[1]] == ["ledger", "ledger"]
    assert summary(chunks_of(repo, second)[1]) == [
        ("ledger/Cargo.toml", "hunk", None, "MODIFIED_HUNK", "bank_core", (2, 2), (2, 2)),
        ("ledger/src/lib.rs", "function", "b", "NEW_FUNCTION", "bank_core", None, (3, 3)),
    ]
    assert summary(chunks_of(repo, third)[1]) == [
        ("ledger/src/lib.rs", "function", "a", "DELETED_FUNCTION", "bank_core", (1, 1), None),
    ]


def test_no_newline_at_end_truncated_patch_and_crlf(make_repo):
    repo = make_repo()
    repo.commit("a", {"a.py": "def f():\n    return 1", "b.rs": "fn a() {\r\n    1\r\n}\r\n"})
    sha = repo.commit("b", {"a.py": "def f():\n    return 2", "b.rs": "fn a() {\r\n    2\r\n}\r\n"})
    commit, chunks = chunks_of(repo, sha)
    assert summary(chunks) == [
        ("a.py", "function", "f", "MODIFIED_FUNCTION", "a", (1, 2), (1, 2)),
        ("b.rs", "function", "a", "MODIFIED_FUNCTION", "b", (1, 3), (1, 3)),
    ]
    assert chunks[0].diff.endswith("+    return 2\n\\ No newline at end of file")
    assert chunks[1].after == "fn a() {\r\n    2\r\n}\r"
    assert coverage_problems(commit, chunks) == []
    # a patch the scraper cut at max_patch_bytes: what is there is placed, nothing invented
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    repo.commit("c", {"c.py": f"def g():\n{body}"})
    sha = repo.commit("d", {"c.py": f"def g():\n{body.replace('= ', '== ')}"})
    commit = commit_record(repo.path, sha)
    change = commit.files[0]
    change.patch = "\n".join(change.patch.split("\n")[:40]) + "\n"
    change.truncated = True
    with CatFile(repo.path) as objects:
        (chunk,) = chunking.chunk_commit(commit, objects)
    assert (chunk.symbol, chunk.change_type) == ("g", "MODIFIED_FUNCTION")
    assert coverage_problems(commit, [chunk]) == []


# ---------------------------------------------------------------- splitting and merging


def test_large_unit_is_split_at_statements(make_repo):
    repo = make_repo()
    body = "".join(f"    let v{i} = {i};\n" for i in range(40))
    repo.commit("big", {"src/lib.rs": f"pub fn big() {{\n{body}}}\n"})
    changed = body.replace("let v1 = 1;", "let v1 = 100;").replace("let v35 = 35;", "let v35 = 350;")
    sha = repo.commit("change two far lines", {"src/lib.rs": f"pub fn big() {{\n{changed}}}\n"})
    commit, chunks = chunks_of(repo, sha, sc.Config(max_chunk_size=10))
    assert [(c.symbol, c.change_type, c.part) for c in chunks] == [
        ("big", "MODIFIED_FUNCTION", 0), ("big", "MODIFIED_FUNCTION", 1),
    ]
    for chunk in chunks:
        assert len(chunk.before.split("\n")) <= 10 and len(chunk.after.split("\n")) <= 10
    assert "let v1 = 100;" in chunks[0].after and "let v35 = 350;" in chunks[1].after
    assert coverage_problems(commit, chunks) == []
    # the same change under the default limit is one chunk with the whole function
    _, (whole,) = chunks_of(repo, sha)
    assert whole.part is None and whole.after.count("\n") == 41


def test_new_large_text_file_splits_at_blank_lines(make_repo):
    repo = make_repo()
    text = "".join(f"para {i} line 1\npara {i} line 2\npara {i} line 3\n\n" for i in range(10))
    sha = repo.commit("docs", {"docs/guide.md": text})
    commit, chunks = chunks_of(repo, sha, sc.Config(max_chunk_size=10))
    # 40 lines, at most 10 a part, cut after a blank line: five parts of two paragraphs
    assert [c.part for c in chunks] == [0, 1, 2, 3, 4]
    assert [c.new_span for c in chunks] == [[1, 8], [9, 16], [17, 24], [25, 32], [33, 40]]
    assert all(c.after.endswith("line 3\n") for c in chunks)
    assert coverage_problems(commit, chunks) == []


def test_tiny_neighbouring_hunks_merge(make_repo):
    repo = make_repo()
    lines = [f"line {i}\n" for i in range(40)]
    repo.commit("notes", {"notes.md": "".join(lines)})
    for i in (5, 15, 25):
        lines[i] = f"changed {i}\n"
    sha = repo.commit("three tiny edits", {"notes.md": "".join(lines)})
    commit, merged = chunks_of(repo, sha, sc.Config(min_chunk_size=3))
    commit, separate = chunks_of(repo, sha, sc.Config(min_chunk_size=1))
    assert [(c.old_span, c.new_span) for c in separate] == [([6, 6], [6, 6]), ([16, 16], [16, 16]), ([26, 26], [26, 26])]
    assert len(merged) == 1
    assert sum(line.startswith("+changed") for line in merged[0].diff.split("\n")) == 3
    assert coverage_problems(commit, merged) == []


# ---------------------------------------------------------------- the stage


def write_commits_json(path: Path, repo_path: Path, commits) -> None:
    with CommitsWriter(path) as writer:
        for commit in commits:
            writer.add(commit)
        writer.metadata = {"repository": str(repo_path), "total_commits": len(commits)}


def test_stage_matches_chunk_commit_and_is_deterministic(make_repo, tmp_path):
    repo, steps = build_rust_workspace(make_repo)
    commits = [commit_record(repo.path, sha) for sha in history(repo.path)]
    out = tmp_path / "out"
    paths = ArtifactPaths.under(out)
    write_commits_json(paths.commits, repo.path, commits)
    summary_ = sc.run(sc.Config(workers=2, batch_size=2), paths)
    first = paths.chunks.read_bytes()
    sc.run(sc.Config(workers=1), paths)
    assert paths.chunks.read_bytes() == first
    with CatFile(repo.path) as objects:
        expected = [c for commit in commits for c in chunking.chunk_commit(commit, objects)]
    assert list(read_chunks(paths.chunks)) == expected
    stats = json.loads(paths.chunking_stats.read_text())
    assert stats["uncovered_lines"] == 0 and stats["duplicated_lines"] == 0
    assert stats["commits"] == len(commits) == summary_["commits"]
    assert stats["chunks"] == len(expected)
    assert stats["parse_error_files"] == 1 and stats["parsed_files"] == 14
    assert stats["chunks_by_kind"]["hunk"] == 7
    assert stats["chunks_by_change_type"]["MOVED_FUNCTION"] == 1


def test_missing_objects_and_moved_repository_degrade(make_repo, tmp_path):
    repo, steps = build_rust_workspace(make_repo)
    commits = [commit_record(repo.path, sha) for sha in history(repo.path)]
    commits[1].files[0].new_blob = "f" * 40  # an object the repository does not have
    paths = ArtifactPaths.under(tmp_path / "out")
    write_commits_json(paths.commits, repo.path, commits)
    sc.run(sc.Config(workers=1), paths)
    stats = json.loads(paths.chunking_stats.read_text())
    assert stats["degraded_files"]["missing_object"] == 1 and stats["uncovered_lines"] == 0
    moved = tmp_path / "moved-away"
    shutil.move(str(repo.path), moved)
    sc.run(sc.Config(workers=1), paths)
    stats = json.loads(paths.chunking_stats.read_text())
    assert stats["degraded_files"]["no_repository"] == 14 and stats["uncovered_lines"] == 0
    assert {c.kind for c in read_chunks(paths.chunks)} == {"hunk"}
    assert sc.main(["--commits", str(paths.commits), "--output", str(tmp_path / "c2.jsonl"), "--repo", str(moved)]) == 0
    assert json.loads((tmp_path / "chunking_stats.json").read_text())["degraded_files"] == {
        "missing_object": 1, "parse_error": 1,
    }


def test_skipped_files_are_counted(make_repo, tmp_path):
    repo = make_repo()
    sha = repo.commit("binary", {"logo.png": b"\x89PNG\x00\x01", "a.rs": "fn a() {}\n"})
    commit = commit_record(repo.path, sha)
    paths = ArtifactPaths.under(tmp_path / "out")
    write_commits_json(paths.commits, repo.path, [commit])
    sc.run(sc.Config(workers=1), paths)
    stats = json.loads(paths.chunking_stats.read_text())
    assert stats["skipped_files"] == {"binary": 1}
    assert [c.symbol for c in read_chunks(paths.chunks)] == ["a"]


def loose_object(repo_path: Path, oid: str) -> Path:
    return repo_path / ".git" / "objects" / oid[:2] / oid[2:]


def build_hostile_history(make_repo):
    """A repository with what real histories hold that once stopped the chunker: a crate in a folder
    with a space, paths with a newline, quotes, a leading dash and non-ASCII, a symlink, a submodule
    (gitlink) named like a source file, items nested deeper than Python's stack; then one blob
    deleted from .git/objects and one overwritten with garbage."""
    repo = make_repo("hostile")
    crate = "docs/metal backend"
    deep = "mod m {\n" * 1000 + "fn f() {}\n" + "}\n" * 1000  # fine for tree-sitter, too deep for a recursive walk
    repo.commit("odd paths", {
        f"{crate}/Cargo.toml": '[package]\nname = "metal-backend"\n',
        f"{crate}/src/lib.rs": "pub fn gpu() -> u32 {\n    1\n}\n",
        "we\nird/x.rs": "fn newline_folder() {}\n",
        'q"uote/-dash.rs': "fn quoted() {}\n",
        "ünïcode/straße.py": "def strasse():\n    return 1\n",
        "gone.rs": "fn gone() {}\n",
        "corrupt.rs": "fn corrupt() {}\n",
        "deep.rs": deep,
    })
    (repo.path / "link.rs").symlink_to("gone.rs")
    repo.commit("symlink")
    repo.commit("edit them all", {
        f"{crate}/src/lib.rs": "pub fn gpu() -> u32 {\n    2\n}\n",
        "we\nird/x.rs": "fn newline_folder() {\n    1;\n}\n",
        'q"uote/-dash.rs': "fn quoted() {\n    2;\n}\n",
        "ünïcode/straße.py": "def strasse():\n    return 2\n",
        "gone.rs": "fn gone() {\n    3;\n}\n",
        "corrupt.rs": "fn corrupt() {\n    4;\n}\n",
        "deep.rs": deep.replace("fn f() {}", "fn f() {\n    1;\n}"),
    })
    gitlink = "1" * 40  # a commit of another repository: no such object here
    repo.git("update-index", "--add", "--cacheinfo", f"160000,{gitlink},vendor/dep.py")
    repo.git("commit", "-q", "-m", "submodule")
    commits = [commit_record(repo.path, sha) for sha in history(repo.path)]
    by_path = {change.path: change for change in commits[2].files}
    loose_object(repo.path, by_path["gone.rs"].new_blob).unlink()
    corrupt = loose_object(repo.path, by_path["corrupt.rs"].new_blob)
    corrupt.chmod(0o644)
    corrupt.write_bytes(b"not a zlib stream")
    return repo, commits


def test_odd_paths_and_objects_degrade_and_are_counted(make_repo, tmp_path):
    repo, commits = build_hostile_history(make_repo)
    paths = ArtifactPaths.under(tmp_path / "out")
    write_commits_json(paths.commits, repo.path, commits)
    for workers in (1, 2):
        sc.run(sc.Config(workers=workers, batch_size=1), paths)
        chunks = list(read_chunks(paths.chunks))
        stats = json.loads(paths.chunking_stats.read_text())
        assert stats["commits"] == 4 and stats["uncovered_lines"] == 0 and stats["duplicated_lines"] == 0
        # the deleted blob, the corrupt one and the gitlink's commit id: each file degraded, counted
        assert stats["degraded_files"]["missing_object"] == 3
        # deep.rs added and edited; link.rs, a symlink whose blob is its target path "gone.rs"
        assert stats["degraded_files"]["parse_error"] == 3
        by_file = {}
        for chunk in chunks:
            by_file.setdefault((chunk.commit, chunk.file), []).append(chunk)
        last = commits[2].hash
        (gpu,) = by_file[(last, "docs/metal backend/src/lib.rs")]
        assert (gpu.symbol, gpu.change_type, gpu.module) == ("gpu", "MODIFIED_FUNCTION", "metal_backend")
        assert [c.symbol for c in by_file[(last, "we\nird/x.rs")]] == ["newline_folder"]
        assert [c.symbol for c in by_file[(last, 'q"uote/-dash.rs')]] == ["quoted"]
        assert [(c.symbol, c.module) for c in by_file[(last, "ünïcode/straße.py")]] == [("strasse", "ünïcode.straße")]
        for degraded in ("gone.rs", "corrupt.rs", "deep.rs"):
            assert {c.kind for c in by_file[(last, degraded)]} == {"hunk"}
    for commit in commits:
        assert coverage_problems(commit, [c for c in chunks if c.commit == commit.hash]) == []


def test_bad_input_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope" / "commits.json"
    assert sc.main(["--commits", str(missing), "--output", str(tmp_path / "c.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "git_scraper" in err
    truncated = tmp_path / "commits.json"
    truncated.write_text('{"metadata": {"repository": "."},\n"commits": [\n{"hash": "ab', encoding="utf-8")
    output = tmp_path / "c.jsonl"
    output.write_text("previous\n")
    assert sc.main(["--commits", str(truncated), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated" in err and "git_scraper" in err
    assert output.read_text() == "previous\n"  # nothing already written is lost
    with pytest.raises(ValueError, match="max_chunk_size"):
        sc.Config(max_chunk_size=1)
    # a --repo that is not a repository is the user's mistake: one line, nothing written
    commits = tmp_path / "ok" / "commits.json"
    write_commits_json(commits, tmp_path, [])
    with pytest.raises(UserError, match="no such folder"):
        sc.run(sc.Config(workers=1), ArtifactPaths.under(commits.parent), repo=tmp_path / "gone")
    assert not (commits.parent / "chunks.jsonl").exists()
    assert sc.main(["--commits", str(commits), "--repo", str(tmp_path / "gone")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


WRONG_SHAPES = [
    (lambda r: {"hash": 5}, "hash: expected str, got int"),
    (lambda r: {**r, "files": "oops"}, "files: expected a list, got str"),
    (lambda r: {**r, "files": [{k: v for k, v in r["files"][0].items() if k != "status"}]}, "files[0].status: missing"),
    (lambda r: {**r, "author": {"name": "A"}}, "author.email: missing"),
    (lambda r: {**r, "files": [{**r["files"][0], "additions": "3"}]}, "files[0].additions: expected int, got str"),
    (lambda r: [r], "record: expected an object, got list"),
]


def wrong_shaped_commits_json(path: Path, repo, break_record) -> None:
    """A commits.json whose second commit is valid JSON of the wrong shape."""
    good = [commit_record(repo.path, sha).to_dict() for sha in history(repo.path)]
    with CommitsWriter(path) as writer:
        writer.add(good[0])
        writer.add(break_record(good[1]))
        writer.metadata = {"repository": str(repo.path), "total_commits": 2}


@pytest.mark.parametrize("break_record, message", WRONG_SHAPES)
def test_wrong_shaped_records_are_one_line(make_repo, tmp_path, capsys, break_record, message):
    repo = make_repo()
    repo.commit("a", {"a.py": "def f():\n    return 1\n"})
    repo.commit("b", {"a.py": "def f():\n    return 2\n"})
    commits = tmp_path / "commits.json"
    wrong_shaped_commits_json(commits, repo, break_record)
    output = tmp_path / "chunks.jsonl"
    output.write_text("previous\n")
    assert sc.main(["--commits", str(commits), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    # the file, the line (commits.json: metadata, opening line, then one commit per line) and the field
    assert err.count("\n") == 1 and f"{commits}: line 4: {message}" in err and "git_scraper" in err, err
    assert output.read_text() == "previous\n"


@pytest.mark.slow  # pipeline.py imports every stage (torch, transformers): about 20 s
def test_wrong_shaped_records_through_the_pipeline(make_repo, tmp_path):
    repo = make_repo()
    repo.commit("a", {"a.py": "def f():\n    return 1\n"})
    repo.commit("b", {"a.py": "def f():\n    return 2\n"})
    config = tmp_path / "config.yaml"
    config.write_text(f"pipeline:\n  output_dir: out\ngit_scraper:\n  repo: {repo.path}\n", encoding="utf-8")
    wrong_shaped_commits_json(tmp_path / "out" / "commits.json", repo, WRONG_SHAPES[1][0])
    proc = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "--config", str(config), "--stage",
                           "semantic_chunker"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    results = json.loads((tmp_path / "out" / "pipeline_results.json").read_text())["stages"]
    assert results["semantic_chunker"]["status"] == "failed"
    assert "commits.json: line 4: files: expected a list, got str" in results["semantic_chunker"]["error"]
    assert "line 4: files: expected a list" in proc.stderr


def big_commits_json(make_repo, path: Path, copies: int) -> None:
    """A commits.json that takes the stage many seconds: one commit of 40 Python files, repeated
    under made-up hashes (Python files need no revision lookups, so the copies chunk like the original)."""
    repo = make_repo("big")
    functions = "".join(f"def f{i}(x):\n    y = x * {i}\n    return y + {i}\n\n\n" for i in range(12))
    sha = repo.commit("many files", {f"pkg/m{i}.py": functions for i in range(40)})
    record = commit_record(repo.path, sha).to_dict()
    with CommitsWriter(path) as writer:
        for i in range(copies):
            writer.add({**record, "hash": f"{i:040x}"})
        writer.metadata = {"repository": str(repo.path), "total_commits": copies}


def start_stage(commits: Path) -> subprocess.Popen:
    """The stage as its own process group, as a terminal runs it (Ctrl-C reaches every process in it)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "semantic_chunker.py"), "--commits", str(commits),
         "--output", str(commits.parent / "chunks.jsonl"), "--workers", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # A test run started in the background (`cmd &` in a script) inherits SIGINT ignored, and so would the
        # stage: give it the disposition a terminal gives.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_temporary(folder: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not list(folder.glob(".chunks.jsonl.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    time.sleep(0.5)  # workers mid-batch, git cat-file processes running


def test_a_ctrl_c_while_workers_start_is_handled_after_it_not_lost():
    """Pool workers start inside `_interrupts_deferred`. A process started there inherits Ctrl-C held back,
    and this one handles a Ctrl-C that came meanwhile as soon as the block ends (ignoring SIGINT there, as
    before, lost it: the stage then ran to its end and exited 0)."""
    child = [sys.executable, "-c",
             "import signal; print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))"]
    steps = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal gives (not a background job)
    try:
        with pytest.raises(KeyboardInterrupt):
            with execution._interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # a handler would have run by now
                steps.append(subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip())
            steps.append("after the block")
        assert steps == ["True"]  # the child held it back too; the interrupt came at the block's end
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        with execution._interrupts_deferred():  # nothing to replay when no Ctrl-C came
            steps.append("quiet")
        assert steps == ["True", "quiet"]
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_interrupt_is_quiet_and_a_killed_run_is_cleaned_up(make_repo, tmp_path):
    out = tmp_path / "out"
    big_commits_json(make_repo, out / "commits.json", copies=1500)  # 10 s or more of work
    (out / "chunks.jsonl").write_text("previous\n")
    # Ctrl-C: one line, exit 130, no worker traceback, no temporary left, the previous output kept
    proc = start_stage(out / "commits.json")
    wait_for_temporary(out, proc)
    assert proc.poll() is None, "the stage finished before it could be interrupted: make the input bigger"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert "Traceback" not in err and "Error" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["chunks.jsonl", "commits.json"]
    assert (out / "chunks.jsonl").read_text() == "previous\n"
    # kill -9 leaves the temporary; the next run removes it (only names of its own outputs)
    proc = start_stage(out / "commits.json")
    wait_for_temporary(out, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    left = list(out.glob(".chunks.jsonl.*.tmp"))
    assert sorted(path.is_dir() for path in left) == [False, True]  # the output being written, the workers' spool
    foreign = [out / ".notes.txt.abcdefgh.tmp", out / ".chunks.jsonl.keep", out / "chunks.jsonl.tmp"]
    for path in foreign:
        path.write_text("not ours\n")
    small = tmp_path / "small.json"
    write_commits_json(small, tmp_path, [])
    sc.run(sc.Config(workers=1), dataclasses.replace(ArtifactPaths.under(out), commits=small))
    assert not any(path.exists() for path in left) and all(path.exists() for path in foreign)
    assert not list(out.glob(".chunk*.tmp"))


def test_config_yaml_section_loads_as_written():
    """config.yaml lists every key of the section, and each loads as the value written there."""
    written = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))["semantic_chunker"]
    loaded = load_config(ROOT / "config.yaml", {"semantic_chunker": sc.Config}, strict_sections=False)["semantic_chunker"]
    assert set(written) == {f.name for f in dataclasses.fields(sc.Config)}
    assert {key: getattr(loaded, key) for key in written} == written


# ---------------------------------------------------------------- incremental runs


def chunk_incrementally(repo_path: Path, out: Path, cfg=None) -> tuple[dict, bytes]:
    """Scrape `repo_path` into `out`, chunk incrementally there, and check the result is byte-identical
    to a full chunking of the same commits.json in a fresh folder. Returns (summary, chunks bytes)."""
    paths = ArtifactPaths.under(out)
    git_scraper.run(git_scraper.Config(repo=repo_path), paths)
    cfg = cfg or sc.Config(workers=2, batch_size=2)
    summary = sc.run(cfg, paths, incremental=True)
    full = ArtifactPaths.under(out.parent / (out.name + "-full"))
    full.output_dir.mkdir(exist_ok=True)
    shutil.copy(paths.commits, full.commits)
    sc.run(dataclasses.replace(cfg, workers=1), full)
    assert paths.chunks.read_bytes() == full.chunks.read_bytes()
    return summary, paths.chunks.read_bytes()


def test_incremental_run_reuses_appends_and_drops(make_repo, tmp_path):
    repo, steps = build_rust_workspace(make_repo)
    out = tmp_path / "out"
    first, _ = chunk_incrementally(repo.path, out)  # nothing to reuse yet: everything chunked
    assert (first["reused_commits"], first["chunked_commits"], first["dropped_commits"]) == (0, len(steps), 0)

    repo.commit("quote", {"crates/ledger/src/quote.rs": "pub fn quote() -> u64 {\n    3\n}\n"})
    repo.commit("readme", {"README.md": "# Exchange\n\nMore.\n"})
    second, _ = chunk_incrementally(repo.path, out)
    assert (second["reused_commits"], second["chunked_commits"], second["dropped_commits"]) == (len(steps), 2, 0)
    assert second["commits"] == len(steps) + 2 and second["chunks"] == first["chunks"] + 2

    third, same = chunk_incrementally(repo.path, out)  # a rerun: nothing new, nothing duplicated
    assert (third["reused_commits"], third["chunked_commits"], third["dropped_commits"]) == (len(steps) + 2, 0, 0)
    assert third["chunks"] == second["chunks"]

    # a force-push: the last two commits replaced by another one
    repo.git("reset", "-q", "--hard", "HEAD~2")
    repo.commit("rates", {"crates/energy-market/src/lib.rs": MARKET_LIB + "\npub fn rate() -> u64 {\n    7\n}\n"})
    fourth, _ = chunk_incrementally(repo.path, out)
    assert (fourth["reused_commits"], fourth["chunked_commits"], fourth["dropped_commits"]) == (len(steps), 1, 2)
    stats = json.loads((out / "chunking_stats.json").read_text())
    assert stats["incremental"]["dropped_chunks"] == 2 and stats["total_commits"] == len(steps) + 1

    # other settings: nothing is reused (and the result is still that of a full run)
    fifth, _ = chunk_incrementally(repo.path, out, sc.Config(workers=2, batch_size=3, max_chunk_size=50))
    assert (fifth["reused_commits"], fifth["chunked_commits"]) == (0, len(steps) + 1)


def test_compressed_artifacts_chunk_and_reuse_like_plain_ones(make_repo, tmp_path):
    """commits.json.zst read by the pool's workers, chunks.jsonl.zst written and reused incrementally."""
    repo, steps = build_rust_workspace(make_repo)
    packed, plain = ArtifactPaths.under(tmp_path / "z", compress=True), ArtifactPaths.under(tmp_path / "p", compress=False)
    for paths in (packed, plain):
        git_scraper.run(git_scraper.Config(repo=repo.path), paths)
    sc.run(sc.Config(workers=1), plain)
    cfg = sc.Config(workers=2, batch_size=2)
    assert sc.run(cfg, packed, incremental=True)["chunked_commits"] == len(steps)
    assert sc.run(cfg, packed, incremental=True)["reused_commits"] == len(steps)
    with open_text(packed.chunks) as fh:
        assert fh.read().encode() == plain.chunks.read_bytes()
    assert sorted(p.name for p in packed.output_dir.iterdir()) == ["chunking_stats.json", "chunks.jsonl.zst",
                                                                   "commits.json.zst"]


def test_incremental_run_with_a_damaged_previous_file_chunks_everything(make_repo, tmp_path):
    repo, steps = build_rust_workspace(make_repo)
    out = tmp_path / "out"
    chunk_incrementally(repo.path, out)
    chunks = out / "chunks.jsonl"
    lines = chunks.read_text().splitlines(keepends=True)
    for damaged in ("".join(lines)[:-1], "".join(lines[:3]) + '{"x": 1}\n', "".join(lines[3:] + lines[:3])):
        chunks.write_text(damaged)  # cut off; a line that is not a chunk; one commit's chunks apart
        summary, _ = chunk_incrementally(repo.path, out)
        assert summary["reused_commits"] == 0 and summary["chunked_commits"] == len(steps)
    (out / "chunking_stats.json").unlink()  # no record of how the chunks were made
    summary, _ = chunk_incrementally(repo.path, out)
    assert summary["reused_commits"] == 0


# ---------------------------------------------------------------- coverage on real histories


def test_coverage_on_this_repository():
    """Every +/- line of every commit of this project's own history lands in exactly one chunk."""
    repo = ROOT
    shas = history(repo)
    with CatFile(repo) as objects:
        for sha in shas:
            commit = commit_record(repo, sha)
            chunks = chunking.chunk_commit(commit, objects)
            assert coverage_problems(commit, chunks) == [], sha
            small = chunking.chunk_commit(commit, objects, sc.Config(max_chunk_size=10, min_chunk_size=4))
            assert coverage_problems(commit, small) == [], sha
            assert all(isinstance(c, Chunk) and c.kind in KINDS for c in chunks)


def test_file_versions_are_redacted(make_repo):
    repo = make_repo()
    sha = repo.commit("config", {"settings.py": 'def connect():\n    password = "hunter2hunter2"\n    return password\n'})
    _, (chunk,) = chunks_of(repo, sha)
    assert "hunter2" not in chunk.after and "<REDACTED:password>" in chunk.after
    commit = commit_record(repo.path, sha)
    with CatFile(repo.path) as objects:
        (plain,) = chunking.chunk_commit(commit, objects, sc.Config(redact_secrets=False))
    assert "hunter2hunter2" in plain.after


# ---------------------------------------------------------------- with the real scraper


def test_secrets_in_paths_crate_names_and_symbols_never_reach_chunks(make_repo, tmp_path):
    key = "AKIAZ7Q3X5W2V4T6R8P0"
    repo = make_repo()
    repo.commit("a", {f"keys/{key}.py": "def load():\n    return 1\n", "vault/Cargo.toml": f'[package]\nname = "{key}"\n',
                      "vault/src/lib.rs": f"pub fn {key}() {{}}\n"})
    commits, by_commit, _ = scrape_and_chunk(repo.path, tmp_path / "out", workers=1)
    text = (tmp_path / "out" / "chunks.jsonl").read_text()
    assert key not in text and "<REDACTED:aws_access_key>" in text
    got = {(c.file, c.symbol, c.module) for c in by_commit[commits[0].hash]}
    placeholder = "<REDACTED:aws_access_key>"
    assert (f"keys/{placeholder}.py", "load", f"keys.{placeholder}") in got  # the scraper's path, the same way
    assert ("vault/src/lib.rs", placeholder, placeholder) in got  # symbol and crate read from the files




def scrape_and_chunk(repo_path: Path, out: Path, workers: int = 2):
    paths = ArtifactPaths.under(out)
    git_scraper.run(git_scraper.Config(repo=repo_path), paths)
    sc.run(sc.Config(workers=workers), paths)
    by_commit: dict[str, list[Chunk]] = {}
    for chunk in read_chunks(paths.chunks):
        by_commit.setdefault(chunk.commit, []).append(chunk)
    commits = list(iter_commits(paths.commits))
    order = [c.commit for c in read_chunks(paths.chunks)]
    assert order == sorted(order, key=[c.hash for c in commits].index)  # grouped, in the commits' order
    return commits, by_commit, json.loads(paths.chunking_stats.read_text())


@pytest.mark.slow
def test_scraped_rust_workspace_with_a_merge(make_repo, tmp_path):
    repo, steps = build_rust_workspace(make_repo)
    repo.checkout("feature", create=True)
    quote = "pub fn quote() -> u64 {\n    3\n}\n"
    feature = repo.commit("quote", {"crates/ledger/src/quote.rs": quote})
    repo.checkout("main")
    repo.commit("docs", {"README.md": "# Exchange\n\nTwo crates: energy-market and ledger.\nMore.\n"})
    merge = repo.merge("feature")
    commits, by_commit, stats = scrape_and_chunk(repo.path, tmp_path / "out")
    for sha, expected in steps:
        assert summary(by_commit[sha]) == expected
    new_quote = [("crates/ledger/src/quote.rs", "function", "quote", "NEW_FUNCTION", "ledger::quote", None, (1, 3))]
    assert summary(by_commit[feature]) == new_quote
    assert summary(by_commit[merge]) == new_quote  # merges are diffed against the first parent
    for commit in commits:
        assert coverage_problems(commit, by_commit.get(commit.hash, [])) == [], commit.message
    assert stats["uncovered_lines"] == 0 and stats["commits"] == len(steps) + 3


@pytest.mark.slow
def test_scraped_python_history(make_repo, tmp_path):
    repo, steps = build_python_history(make_repo)
    commits, by_commit, stats = scrape_and_chunk(repo.path, tmp_path / "out", workers=1)
    for sha, expected in steps:
        assert summary(by_commit[sha]) == expected
    assert stats["parse_error_files"] == 1 and stats["uncovered_lines"] == 0


@pytest.mark.slow
def test_scraped_own_history_coverage(tmp_path):
    commits, by_commit, stats = scrape_and_chunk(ROOT, tmp_path / "out")
    assert stats["uncovered_lines"] == 0 and stats["duplicated_lines"] == 0
    for commit in commits:
        assert coverage_problems(commit, by_commit.get(commit.hash, [])) == [], commit.hash
