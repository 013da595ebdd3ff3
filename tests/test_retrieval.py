"""repo2model.retrieval (units, unit_index, stores, context, prompt, retriever): units of a tree, the index
(Qdrant Edge and qdrant-client's code path), incremental updates, hybrid search, the context pack and the prompt.
Real git repositories, real tree-sitter, the real all-MiniLM-L6-v2 and real Qdrant (in-process)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from repo2model.code.units import ModuleLookup
from repo2model.core.errors import UserError
from repo2model.git.redact import Redactor
from repo2model.retrieval.bm25 import BM25Index, code_words
from repo2model.retrieval.context import build_context, entry_header, symbol_matches
from repo2model.retrieval.embedding import Embedder
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.prompt import render_prompt
from repo2model.retrieval.retriever import Retriever
from repo2model.retrieval.sparse import sparse_query, unit_words
from repo2model.retrieval.stores import ClientStore
from repo2model.retrieval.unit_index import UnitIndex, last_commits
from repo2model.retrieval.units import IndexUnit, module_prefixes, units_of_file
from repo2model.serving.prediction import ChangeTypeWeight, PredictedFile, Prediction

LIB_RS = textwrap.dedent("""\
    //! The market.
    use std::collections::HashMap;

    /// A market of orders.
    pub struct Market {
        orders: HashMap<u64, u64>,
    }

    impl Market {
        pub fn new() -> Self {
            Market { orders: HashMap::new() }
        }

        /// Settle every open order.
        pub fn settle(&mut self, price: u64) -> u64 {
            let total = self.orders.values().sum::<u64>();
            total * price
        }
    }

    pub fn retry_with_backoff(attempts: u32) -> u32 {
        let mut delay = 1;
        for _ in 0..attempts {
            delay *= 2;
        }
        delay
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn settles_empty_market() {
            let mut market = Market::new();
            assert_eq!(market.settle(3), 0);
        }
    }
""")

CARGO = '[package]\nname = "energy-market"\nversion = "0.1.0"\n'

README = textwrap.dedent("""\
    Intro text.

    # Energy market
    Settles orders.

    ## Install
    ```bash
    # not a heading: inside a fence
    cargo build
    ```

    ## Usage
    Call settle.
""")

PARSER_PY = textwrap.dedent('''\
    """Parsing of requests."""
    import json


    class Parser:
        def parse(self, text):
            value = json.loads(text)
            return value

        def dump(self, value):
            return json.dumps(value)


    def http_timeout(seconds):
        return seconds * 1000
''')


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def make_project(make_repo):
    repo = make_repo("project")
    repo.commit("add the market", {"Cargo.toml": CARGO, "src/lib.rs": LIB_RS, "README.md": README,
                                   "tools/parser.py": PARSER_PY, "notes.txt": "free text about prices\n"})
    return repo


def by_symbol(units):
    return {(u.kind, u.symbol): u for u in units}


# ---------------------------------------------------------------- units


def test_rust_units_with_outlines_modules_and_a_whole_file_unit():
    modules = ModuleLookup(lambda name: CARGO.encode() if name == "HEAD:Cargo.toml" else None)
    units = units_of_file("src/lib.rs", LIB_RS.encode(), "b" * 40, IndexConfig(), modules, "HEAD")
    found = by_symbol(units)
    settle = found[("method", "Market::settle")]
    lines = LIB_RS.splitlines()
    assert settle.text == "\n".join(lines[settle.start - 1: settle.end]) and settle.full
    assert settle.text.startswith("    /// Settle every open order.") and settle.module == "energy_market"
    # The impl is an outline: its methods' signature lines, bodies elided (they are units of their own).
    impl = found[("impl", "Market")]
    assert not impl.full
    assert "pub fn new() -> Self { ..." in impl.text and "total * price" not in impl.text
    assert found[("test", "settles_empty_market")].module == "energy_market::tests"
    assert found[("test", "tests")].text.startswith("#[cfg(test)]\nmod tests {\n    use super::*;\n")
    # A short file is also one `file` unit with its whole text.
    whole = found[("file", "src/lib.rs")]
    assert whole.full and whole.text == LIB_RS.rstrip("\n") and (whole.start, whole.end) == (1, len(lines))
    # Outline of a longer file: top-level signatures only.
    short = dataclasses.replace(IndexConfig(), whole_file_lines=12)
    outline = by_symbol(units_of_file("src/lib.rs", LIB_RS.encode(), "b" * 40, short))[("file", "src/lib.rs")]
    assert not outline.full and "pub fn retry_with_backoff(attempts: u32) -> u32 { ..." in outline.text
    assert "delay *= 2" not in outline.text
    # Every unit gets a distinct point id.
    assert len({u.id for u in units}) == len(units)


def test_markdown_sections_python_units_text_windows_binary_and_redaction():
    cfg = IndexConfig()
    docs = units_of_file("README.md", README.encode(), "c" * 40, cfg)
    assert [(u.kind, u.symbol, u.start) for u in docs] == [
        ("doc", "README.md", 1), ("doc", "Energy market", 3), ("doc", "Energy market > Install", 6),
        ("doc", "Energy market > Usage", 12)]
    assert "cargo build" in docs[2].text
    python = by_symbol(units_of_file("tools/parser.py", PARSER_PY.encode(), "d" * 40, cfg))
    assert python[("method", "Parser.parse")].module == "tools.parser"
    assert "def parse(self, text): ..." in python[("class", "Parser")].text  # a 3-line method: elided
    assert "    def dump(self, value):\n        return json.dumps(value)" in python[("class", "Parser")].text
    text = "\n".join(f"line {i}" for i in range(1, 8)) + "\n"
    windows = units_of_file("notes.txt", text.encode(), "e" * 40, dataclasses.replace(cfg, whole_file_lines=3))
    assert [(u.kind, u.start, u.end) for u in windows] == [("file", 1, 3), ("file", 4, 6), ("file", 7, 7)]
    assert len({u.id for u in windows}) == 3
    assert units_of_file("blob.bin", b"\x00\x01binary", "f" * 40, cfg) == []
    assert units_of_file("notes.txt", text.encode(), "e" * 40, dataclasses.replace(cfg, text_files=False)) == []
    secret = 'API_KEY = "AKIAIOSFODNN7EXAMPLE"\n\ndef f():\n    return API_KEY\n'
    (unit,) = [u for u in units_of_file("conf.py", secret.encode(), "a" * 40, cfg, redactor=Redactor())
               if u.kind == "const"]
    assert "AKIAIOSFODNN7EXAMPLE" not in unit.text and "REDACTED" in unit.text


def test_helpers():
    assert module_prefixes("a::b::c") == ["a", "a::b", "a::b::c"]
    assert module_prefixes("pkg.mod") == ["pkg", "pkg.mod"] and module_prefixes(None) == []
    assert symbol_matches("Router::route", "route") and symbol_matches("<Foo as Display>::fmt", "fmt")
    assert symbol_matches("A.m", "m") and not symbol_matches("Router::reroute", "route")


def test_last_commits_match_git(make_repo):
    repo = make_repo()
    first = repo.commit("one", {"a.py": "x = 1\n", "b.py": "y = 1\n"})
    second = repo.commit("two", {"a.py": "x = 2\n"})
    repo.commit("three", {"c.py": "z = 1\n"})
    head = repo.head()
    assert last_commits(repo.path, head, {"a.py", "b.py", "c.py"}, None) == {"a.py": second, "b.py": first,
                                                                              "c.py": head}
    assert last_commits(repo.path, head, {"a.py", "b.py"}, second) == {}  # nothing changed them after `second`
    assert first != second


# ---------------------------------------------------------------- the index


def test_build_search_and_bm25_scores_equal_repo2model_search(tmp_path, make_repo, embedder):
    repo = make_project(make_repo)
    index = UnitIndex(IndexConfig(guided_weight=10.0), tmp_path / "index", embedder)
    summary = index.update(repo.path)
    assert summary.rebuilt == "no index yet" and summary.embedded == summary.units > 10
    info = UnitIndex.read_info(tmp_path / "index")
    assert info["commit"] == repo.head() and info["units"] == summary.units and info["kinds"]["method"] == 4
    with index:
        points = index.store.payloads()
        # BM25 through Qdrant's IDF modifier = repo2model.retrieval.bm25's Lucene BM25 over the same words.
        reference = BM25Index()
        for point_id, payload in points.items():
            reference.add(point_id, unit_words(IndexUnit.from_payload(payload)))
        query = "retry with exponential backoff"
        expected = reference.scores(code_words(query))
        hits = index.search(query, mode="bm25", limit=len(points))
        assert {h.id for h in hits} == set(expected)
        for hit in hits:
            assert hit.score == pytest.approx(expected[hit.id], rel=1e-4)
        assert hits[0].payload["symbol"] == "retry_with_backoff"
        # Dense: the nearest unit to a paraphrase, cosine scores as numpy computes them.
        dense = index.search("wait longer after each failed attempt", mode="dense", limit=3)
        assert dense[0].payload["kind"] in ("function", "file")
        vector = embedder.embed(["wait longer after each failed attempt"])[0]
        stored = index.store.vectors([dense[0].id])[dense[0].id][0]
        assert dense[0].score == pytest.approx(float(np.dot(vector, stored)), abs=1e-4)
        # Guided: units of the predicted file come first (their lists weigh 10 here: ranks divided by 10).
        guided = index.search("settle the orders", mode="guided", files=["tools/parser.py"])
        hybrid = index.search("settle the orders", mode="hybrid")
        assert [h.payload["path"] for h in guided[:4]].count("tools/parser.py") >= 2
        assert "tools/parser.py" not in [h.payload["path"] for h in hybrid[:4]]
        assert [h.payload["path"] for h in index.search("json", mode="guided", modules=["tools"])][:2] == \
            ["tools/parser.py"] * 2


def test_incremental_update_embeds_only_changed_units(tmp_path, make_repo, embedder):
    repo = make_project(make_repo)
    index = UnitIndex(IndexConfig(), tmp_path / "index", embedder)
    first = index.update(repo.path)
    changed_body = LIB_RS.replace("delay *= 2;", "delay *= 3;")
    second_commit = repo.commit("slower backoff", {"src/lib.rs": "\n" + changed_body})
    second = index.update(repo.path)
    # The changed function and the file's whole-text unit are embedded again; everything else of lib.rs keeps
    # its vectors (only its lines move); the other files are not even read.
    assert second.rebuilt is None and second.files_changed == 1
    assert second.embedded == 2 and second.units == first.units and second.deleted == 0
    lib_units = units_of_file("src/lib.rs", ("\n" + changed_body).encode(), "0" * 40, IndexConfig())
    assert second.reused == len(lib_units) - 2
    with index:
        units = {(u.kind, u.symbol): u for u in index.units_of(["src/lib.rs"])}
    backoff, settle = units[("function", "retry_with_backoff")], units[("method", "Market::settle")]
    assert "delay *= 3" in backoff.text and backoff.commit == second_commit
    assert settle.start == LIB_RS.splitlines().index("    /// Settle every open order.") + 2  # one line down
    assert settle.commit != second_commit  # its text did not change: its last-changed commit stays
    # A deleted file's units go; an update with nothing changed reads nothing.
    repo.commit("drop the parser", {"tools/parser.py": None})
    third = index.update(repo.path)
    assert third.files_removed == 1 and third.deleted == 6 and third.embedded == 0
    fourth = index.update(repo.path)
    assert (fourth.files_changed, fourth.embedded, fourth.deleted, fourth.units) == (0, 0, 0, third.units)


def test_settings_that_change_vectors_rebuild_and_the_old_store_stays_until_done(tmp_path, make_repo, embedder):
    repo = make_project(make_repo)
    index = UnitIndex(IndexConfig(), tmp_path / "index", embedder)
    index.update(repo.path)
    other = Embedder(max_tokens=64)
    again = UnitIndex(IndexConfig(max_tokens=64), tmp_path / "index", other).update(repo.path)
    assert again.rebuilt == "max_tokens was 128, now 64" and again.embedded == again.units
    assert not list((tmp_path / "index").glob(".shard.*"))  # the temporary build folder was renamed into place


def test_qdrant_client_code_path_matches_the_edge_store(tmp_path, make_repo, embedder):
    """`embedded: local` runs every call a Qdrant server gets (qdrant-client), in-process: same index."""
    repo = make_project(make_repo)
    edge_index = UnitIndex(IndexConfig(), tmp_path / "edge", embedder)
    client_index = UnitIndex(IndexConfig(embedded="local"), tmp_path / "client", embedder)
    assert edge_index.update(repo.path).units == client_index.update(repo.path).units
    repo.commit("slower backoff", {"src/lib.rs": LIB_RS.replace("delay *= 2;", "delay *= 3;")})
    a, b = edge_index.update(repo.path), client_index.update(repo.path)
    assert (a.embedded, a.reused, a.deleted) == (b.embedded, b.reused, b.deleted) == (2, a.reused, 0)
    with edge_index, client_index:
        for mode in ("dense", "bm25", "hybrid", "guided"):
            x = edge_index.search("settle orders at a price", mode=mode, files=["src/lib.rs"], limit=8)
            y = client_index.search("settle orders at a price", mode=mode, files=["src/lib.rs"], limit=8)
            assert [h.id for h in x][:3] == [h.id for h in y][:3], mode
        assert edge_index.store.payloads() == client_index.store.payloads()


def test_a_server_that_cannot_be_reached_is_one_line(tmp_path):
    cfg = IndexConfig(url="http://127.0.0.1:9", timeout_s=2.0)  # port 9 (discard): nothing listens
    with pytest.raises(UserError) as caught:
        ClientStore.server(cfg, 384)
    assert "cannot reach Qdrant at http://127.0.0.1:9" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="url: must start with http"):
        IndexConfig(url="127.0.0.1:6333")


def test_an_index_held_by_another_process_waits_then_says_so(tmp_path, make_repo, embedder):
    repo = make_project(make_repo)
    index = UnitIndex(IndexConfig(lock_wait_s=0.5), tmp_path / "index", embedder)
    index.update(repo.path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, qdrant_edge as e; s = e.EdgeShard.load(sys.argv[1]); print('held', flush=True); "
        "sys.stdin.read()"), str(tmp_path / "index" / "shard")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="in use by another process"):
            with index:
                pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with index:  # free again
        assert index.store.count() > 0


# ---------------------------------------------------------------- context and prompt


def prediction_for(path, symbols, module=None):
    file = PredictedFile(path, 1.0, module, [ChangeTypeWeight("MODIFIED_METHOD", 1.0)], symbols)
    return Prediction(task="", files=[file], modules=[module] if module else [], symbols=symbols)


def test_context_pack_order_budget_and_reasons(tmp_path, make_repo, embedder):
    repo = make_project(make_repo)
    index = UnitIndex(IndexConfig(), tmp_path / "index", embedder)
    index.update(repo.path)
    prediction = prediction_for("src/lib.rs", ["settle"], "energy_market")
    with index:
        pack = build_context("Settle orders at the closing price", prediction, index.units_of, index.search,
                             budget=4000, count_tokens=embedder.count_tokens)
        small = build_context("Settle orders at the closing price", prediction, index.units_of, index.search,
                              budget=200, count_tokens=embedder.count_tokens)
    assert (pack[0].symbol, pack[0].why) == ("Market::settle", "predicted symbol settle of predicted file #1")
    assert (pack[1].kind, pack[1].why) == ("file", "predicted file #1")
    assert all(e.why.startswith("search") for e in pack[2:]) and len(pack) > 4
    assert len({(e.path, e.symbol, e.start) for e in pack}) == len(pack)
    assert sum(e.tokens for e in pack) <= 4000 and sum(e.tokens for e in small) <= 200
    assert small[0].symbol == "Market::settle"
    # A prediction takes at most predicted_share of the budget before the search; files_first gives it all.
    wrong = prediction_for("src/lib.rs", ["new", "settle", "retry_with_backoff"])
    with index:
        shared = build_context("parse json", wrong, index.units_of, index.search, budget=300,
                               count_tokens=embedder.count_tokens, predicted_share=0.5)
        first = build_context("parse json", wrong, index.units_of, index.search, budget=300,
                              count_tokens=embedder.count_tokens, files_first=True)
    predicted = [e for e in shared if e.why.startswith("predicted")]
    assert predicted and sum(e.tokens for e in predicted) <= 150
    assert any(e.path == "tools/parser.py" for e in shared)
    assert sum(e.tokens for e in first if e.why.startswith("predicted")) > 150
    for entry in pack:
        assert entry.tokens == embedder.count_tokens(
            f"### {entry.path}:{entry.start}-{entry.end} {entry.kind} {entry.symbol} ({entry.why})"
        ) + embedder.count_tokens(entry.text) + 4
    prompt = render_prompt("Settle orders at the closing price", prediction, pack[:2], "test_settle failed: 0 != 3",
                           str(repo.path), repo.head())
    assert "## Task\nSettle orders at the closing price" in prompt
    assert "1. src/lib.rs (module energy_market): MODIFIED_METHOD" in prompt and "symbols: settle" in prompt
    assert "```rust\n    /// Settle every open order." in prompt
    assert "## Recent test failures\ntest_settle failed: 0 != 3" in prompt and repo.head()[:12] in prompt
    assert "New files" not in prompt  # this prediction names no folder for them
    guessed = dataclasses.replace(prediction, new_files=[
        {"folder": "src/market", "score": 2.0, "paths": ["src/market/closing_price.rs"]},
        {"folder": "", "score": 1.0, "paths": []}, {"folder": "tests", "score": 0.5, "paths": []},
        {"folder": "docs", "score": 0.1, "paths": []}])
    assert ("New files, if the change needs any, most likely go in: src/market/ (e.g. src/market/closing_price.rs); "
            "./; tests/\n") in render_prompt("Settle orders at the closing price", guessed, pack[:2])


def test_fused_pack_ranks_predicted_symbols_and_search_hits_together(tmp_path, make_repo, embedder):
    repo = make_project(make_repo)
    index = UnitIndex(IndexConfig(), tmp_path / "index", embedder)
    index.update(repo.path)
    wrong = prediction_for("src/lib.rs", ["new", "retry_with_backoff"])
    right = prediction_for("src/lib.rs", ["settle"], "energy_market")

    def pack_of(task, prediction, weight, budget=4000):  # the unguided search: its hits ignore the prediction
        return build_context(task, prediction, index.units_of, index.search, budget=budget,
                             count_tokens=embedder.count_tokens, mode="hybrid", fuse_weight=weight)

    with index:
        first_hit = index.search("parse json", mode="hybrid")[0].payload
        even, search_first, predictions_first = (pack_of("parse json", wrong, w) for w in (1.0, 0.5, 2.0))
        agreed = pack_of("Settle orders at the closing price", right, 1.0)
        small = pack_of("parse json", wrong, 1.0, budget=300)
    hit = (first_hit["path"], first_hit["symbol"])
    assert hit[0] == "tools/parser.py"  # the search's best unit is not in the (wrong) predicted file
    # Equal weights: the first predicted symbol and the first hit tie (prediction first), then the second ones.
    assert [(e.path, e.symbol) for e in even[:2]] == [("src/lib.rs", "Market::new"), hit]
    assert even[0].why == "predicted symbol new of predicted file #1" and even[1].why == "search (hybrid)"
    # The weight moves the predictions behind the search's best hit, or every prediction before it.
    assert (search_first[0].path, search_first[0].symbol) == hit
    assert [e.symbol for e in predictions_first[:2]] == ["Market::new", "retry_with_backoff"]
    # A predicted symbol the search finds too comes first; the predicted files follow the ranking.
    assert agreed[0].symbol == "Market::settle" and agreed[0].why.startswith("predicted symbol settle")
    whole = [i for i, e in enumerate(agreed) if e.kind == "file" and e.why == "predicted file #1"]
    assert not whole or all(not e.why.startswith("predicted file") for e in agreed[:whole[0]] if e.kind != "file")
    for pack, budget in ((even, 4000), (agreed, 4000), (small, 300)):
        assert len({(e.path, e.symbol, e.start) for e in pack}) == len(pack)
        assert sum(e.tokens for e in pack) <= budget
    assert any(e.path == "tools/parser.py" for e in small)


class FixedScorer:
    """The symbol ranker's part of the chosen pack, with fixed probabilities by symbol (the ranker itself:
    tests/test_symbol_ranker.py), so that the knapsack's choices can be checked exactly."""

    def __init__(self, files: list[str], p: dict[str, float]):
        self.files, self.p = files, p
        self.seen: list[str] = []

    def __call__(self, units):
        self.seen = [u.symbol for u in units]
        return [(self.p.get(u.symbol, 0.001), "fixed") for u in units]


def long_module(lines: int) -> str:
    """A Python file past whole_file_lines: one very long function among small ones."""
    body = "".join(f"    total += {i} * value\n" for i in range(lines))
    return ("def small_one(value):\n    return value\n\n\n"
            f"def huge_settlement(value):\n    total = 0\n{body}    return total\n\n\n"
            "def small_two(value):\n    return value * 2\n")


def test_chosen_pack_weighs_probability_per_token_whole_files_and_outlines(tmp_path, make_repo, embedder):
    repo = make_project(make_repo)
    repo.commit("long module", {"tools/long.py": long_module(260)})
    index = UnitIndex(IndexConfig(), tmp_path / "index", embedder)
    index.update(repo.path, progress=False)
    prediction = prediction_for("src/lib.rs", ["settle"], "energy_market")
    task = "Settle orders at the closing price"

    def pack(scorer, budget, prediction=prediction, task=task):
        with index:
            return build_context(task, prediction, index.units_of, index.search, budget, embedder.count_tokens,
                                 scorer=scorer)

    # One likely unit: it comes first, says why and how likely, and the pack keeps to the budget.
    one = FixedScorer(["src/lib.rs"], {"Market::settle": 0.9})
    small = pack(one, 150)
    assert (small[0].symbol, small[0].score) == ("Market::settle", 0.9) and small[0].why == "p 0.90: fixed"
    assert sum(e.tokens for e in small) <= 150 and "Market::new" in one.seen and "Parser.parse" in one.seen
    for entry in small:
        assert entry.tokens == embedder.count_tokens(entry_header(entry)) + embedder.count_tokens(entry.text) + 4
    # Entries follow their probability; a search hit outside the predicted files says so.
    hits = pack(FixedScorer(["src/lib.rs"], {"Market::settle": 0.9, "Parser.parse": 0.5}), 150,
                task="Settle orders and parse json")
    assert [e.symbol for e in hits[:2]] == ["Market::settle", "Parser.parse"]
    assert hits[1].why.startswith("p 0.50: search hit #") and [e.score for e in hits] == sorted(
        [e.score for e in hits], reverse=True)
    # Many likely units of one short file: its whole text is worth more per token, and replaces them.
    likely = {s: 0.8 for s in ("Market::new", "Market::settle", "retry_with_backoff", "settles_empty_market",
                               "Market", "energy market")}
    whole = pack(FixedScorer(["src/lib.rs"], likely), 4000)
    files = [e for e in whole if e.kind == "file" and e.path == "src/lib.rs"]
    assert files and files[0].full and files[0].why.startswith("p ") and "whole" in files[0].why
    assert not [e for e in whole if e.path == "src/lib.rs" and e.kind != "file"]
    assert len({(e.path, e.symbol, e.start) for e in whole}) == len(whole) and sum(e.tokens for e in whole) <= 4000
    # A likely unit too big for the budget: the long file's outline shows where it is.
    long = prediction_for("tools/long.py", ["huge_settlement"])
    outlined = pack(FixedScorer(["tools/long.py"], {"huge_settlement": 0.9}), 600, long)
    assert all(e.symbol != "huge_settlement" for e in outlined)
    (outline,) = [e for e in outlined if e.kind == "file" and e.path == "tools/long.py"]
    assert not outline.full and "def huge_settlement(value): ..." in outline.text
    assert "outline: huge_settlement too big to show whole" in outline.why
    # With room for it, the unit itself is shown and the outline is worth nothing more.
    roomy = pack(FixedScorer(["tools/long.py"], {"huge_settlement": 0.9}), 8000, long)
    assert roomy[0].symbol == "huge_settlement" and not [e for e in roomy if e.kind == "file" and not e.full]


def test_the_service_packs_as_index_pack_says(tmp_path, make_repo, embedder):
    """`index.pack`: `fused` (the default) and `ordered` are build_context's fused and fixed orders, the symbol
    ranker's scorer unused; `chosen`: the scorer's knapsack."""
    repo = make_project(make_repo)
    UnitIndex(IndexConfig(), tmp_path / "index", embedder).update(repo.path, progress=False)
    prediction = prediction_for("tools/parser.py", ["parse"])
    scorer = FixedScorer(["tools/parser.py"], {"Parser.parse": 0.2, "Market::settle": 0.9})
    task = "Parse JSON requests"
    packs = {}
    for pack in ("fused", "ordered", "chosen", None):
        cfg = IndexConfig() if pack is None else IndexConfig(pack=pack)
        retriever = Retriever(cfg, tmp_path / "index", embedder)
        packs[pack] = retriever.answer(task, prediction, repo=repo.path, budget=400, scorer=scorer)["context"]
        retriever.close()
    index = UnitIndex(IndexConfig(), tmp_path / "index", embedder)
    with index:
        for pack, options in (("fused", {"fuse_weight": 1.0}), ("ordered", {"predicted_share": 0.5})):
            expected = build_context(task, prediction, index.units_of, index.search, 400, embedder.count_tokens,
                                     **options)
            assert packs[pack] == [e.to_dict() for e in expected], pack
    assert packs[None] == packs["fused"] and packs["fused"] != packs["ordered"]
    assert packs["ordered"][0]["why"] == "predicted symbol parse of predicted file #1"
    # The knapsack: every entry says its probability, the likeliest (settle, or the short file holding it) first.
    assert all(e["why"].startswith("p ") for e in packs["chosen"])
    assert packs["chosen"][0]["path"] == "src/lib.rs" and packs["chosen"][0]["score"] >= 0.9
    with pytest.raises(ValueError, match="pack: must be ordered, fused or chosen"):
        IndexConfig(pack="knapsack")
    # Ties in the fused search scores (here parse and json, 1.7 each) are broken by place in the tree, so the
    # same request gets the same pack every time (the store returned them in either order).
    orders = set()
    for _ in range(6):
        with UnitIndex(IndexConfig(), tmp_path / "index", embedder) as index:
            hits = index.search(task, mode="guided", files=["tools/parser.py"])
        orders.add(tuple((h.payload["path"], h.payload["start"], round(h.score, 6)) for h in hits))
    (order,) = orders
    assert [(-score, path, start) for path, start, score in order] == sorted(
        (-score, path, start) for path, start, score in order)


def test_retriever_uses_the_index_of_the_repo_and_else_reads_the_tree(tmp_path, make_repo, embedder):
    repo = make_project(make_repo)
    cfg = IndexConfig()
    index = UnitIndex(cfg, tmp_path / "index", embedder)
    index.update(repo.path)
    retriever = Retriever(cfg, tmp_path / "index", embedder)
    prediction = prediction_for("tools/parser.py", ["parse"])
    answer = retriever.answer("Parse JSON requests", prediction, repo=repo.path, budget=2000)
    assert answer["context_source"]["index"]["commit"] == repo.head()
    assert answer["context"][0]["symbol"] == "Parser.parse" and answer["context"][0]["lines"] == [6, 8]
    assert any(e["why"].startswith("search") for e in answer["context"])
    assert "def parse(self, text):" in answer["prompt"] and "None reported." in answer["prompt"]
    # Another repository: no index of it, the predicted file's code straight from its HEAD, no search.
    other = make_repo("other")
    other.commit("parser", {"tools/parser.py": PARSER_PY.replace("json.loads", "json.load")})
    elsewhere = retriever.answer("Parse JSON requests", prediction, repo=other.path, budget=2000)
    assert "not of" in elsewhere["context_source"]["reason"]
    assert [e["why"] for e in elsewhere["context"]][:2] == ["predicted symbol parse of predicted file #1",
                                                            "predicted file #1"]
    assert "json.load(text)" in elsewhere["context"][0]["code"]
    assert not any(e["why"].startswith("search") for e in elsewhere["context"])
    assert sparse_query("").indices == []


def test_predictions_carry_context_and_prompt(tmp_path, make_repo, embedder):
    """Predictor.predict with a retriever (as predict.py and serve.py load it): `context` and `prompt` for the
    repository, within the per-request `context_tokens`; serve's `test_failures` field goes into the prompt."""
    import helpers_predict as H

    from repo2model.serving.service import RequestError, check_test_failures
    from repo2model.serving.predictor import Predictor
    from repo2model.serving.settings import PredictionConfig

    repo = make_repo("project")
    repo.commit("add parser", {"pkg/parse.py": "def parse(s):\n    return s\n"})
    UnitIndex(IndexConfig(), tmp_path / "index", embedder).update(repo.path, progress=False)
    model, tokenizer, lang, _, _ = H.trained_predictor_parts(tmp_path / "model")
    predictor = Predictor(model, tokenizer, lang, PredictionConfig(max_new_tokens=120), model_dir=tmp_path)
    history = H.fixture_history()
    assert "context" not in predictor.predict(history, H.TASK).to_json()  # no retriever: the prediction alone
    predictor.retriever = Retriever(IndexConfig(), tmp_path / "index", embedder)
    result = predictor.predict(history, H.TASK, repo=repo.path, test_failures="FAILED test_parse").to_json()
    assert result["files"][0]["path"] == "pkg/parse.py"
    assert result["context"][0]["why"] == "predicted symbol parse of predicted file #1"
    assert result["context"][0]["code"] == "def parse(s):\n    return s"
    assert "FAILED test_parse" in result["prompt"] and H.TASK in result["prompt"]
    assert result["context_source"]["index"]["commit"] == repo.head()
    nothing = predictor.predict(history, H.TASK, options={"context_tokens": 0}, repo=repo.path).to_json()
    assert nothing["context"] == [] and "No code context available." in nothing["prompt"]
    assert check_test_failures(["a", "b"]) == "a\n\nb" and check_test_failures(None) is None
    with pytest.raises(RequestError, match="test_failures: must be a string"):
        check_test_failures({"x": 1})


def test_file_embeddings_for_a_ranker_follow_the_tree_and_cache_by_blob(tmp_path, make_repo, embedder):
    from repo2model.retrieval.bm25 import FileSearch
    from repo2model.retrieval.embedding import FileEmbeddings

    repo = make_project(make_repo)
    old = repo.head()
    repo.commit("json everywhere", {"src/lib.rs": "pub fn to_json(value: u64) -> String {\n    format!(\"{}\", value)\n}\n"})
    dense = FileEmbeddings(embedder, IndexConfig())
    with FileSearch(repo.path) as code:
        code.move_to(old)
        before = dense.similarities("parse json requests", code.blobs, code.read, ["src/lib.rs", "tools/parser.py"])
        assert before["tools/parser.py"] > before["src/lib.rs"]
        code.move_to(repo.head())
        after = dense.similarities("parse json requests", code.blobs, code.read, ["src/lib.rs", "notes.txt", "gone"])
    assert after["src/lib.rs"] > before["src/lib.rs"] and "gone" not in after
    assert len(dense._vectors) == 4  # lib.rs twice (two blobs), parser.py, notes.txt: each embedded once
    units = [u for u in units_of_file("tools/parser.py", PARSER_PY.encode(), "x", IndexConfig()) if u.kind == "file"]
    vector = embedder.embed([units[0].embedding_text()])[0]
    assert before["tools/parser.py"] == pytest.approx(float(np.dot(embedder.embed(["parse json requests"])[0],
                                                                   vector)), abs=1e-5)


def test_a_retriever_keeps_the_index_open_briefly_and_an_update_waits_for_it(tmp_path, make_repo, embedder):
    repo = make_project(make_repo)
    cfg = IndexConfig(keep_open_s=1.0, lock_wait_s=30.0)
    UnitIndex(cfg, tmp_path / "index", embedder).update(repo.path, progress=False)
    retriever = Retriever(cfg, tmp_path / "index", embedder)
    retriever.answer("settle", prediction_for("src/lib.rs", ["settle"]), budget=500)
    assert retriever._open is not None  # kept open for the next request
    repo.commit("slower backoff", {"src/lib.rs": LIB_RS.replace("delay *= 2;", "delay *= 3;")})
    summary = UnitIndex(cfg, tmp_path / "index", embedder).update(repo.path, progress=False)  # waits ~1 s
    assert summary.embedded == 2 and retriever._open is None
    answer = retriever.answer("backoff", prediction_for("src/lib.rs", ["retry_with_backoff"]), budget=500)
    assert "delay *= 3" in answer["context"][0]["code"]  # reopened: the updated index
    retriever.close()
