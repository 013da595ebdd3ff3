"""repo2model/ranking/symbol_*: the symbols' history answers as of a position, the features are built by name
from real units, and the symbol ranker (fitted by train_ranker on a real history) finds the symbols that only
co-change names, saves with the ranker, loads with FileRanking and scores each predicted file's symbols."""

from __future__ import annotations

import json
import random
import textwrap

import numpy as np
import pytest
from conftest import GitRepo
from helpers_ranking import NOISE, artifacts

from repo2model.ranking.config import RankerConfig
from repo2model.ranking.file_ranking import FileRanking
from repo2model.ranking.symbol_features import SYMBOL_FEATURES, SymbolContext, reasons, symbol_rows
from repo2model.ranking.symbol_history import SymbolHistory
from repo2model.ranking.symbol_ranker import HISTORY_FILE, MODEL_FILE, SymbolRanker, calibrated, fit_calibration
from repo2model.ranking.symbol_training import changed_at_parent, recall_row
from repo2model.retrieval.bm25 import code_words
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.units import units_of_file
from repo2model.serving.history import history_from_artifacts
from repo2model.stages import train_ranker

FAST = {"num_trees": 200, "early_stopping_rounds": 20}

LIB_RS = textwrap.dedent("""\
    pub struct Market {
        total: u64,
    }

    impl Market {
        /// Settle every open order at the closing price.
        pub fn settle(&mut self, price: u64) -> u64 {
            self.total * price
        }

        pub fn open(&mut self) {
            self.total = 0;
        }
    }

    pub fn retry_with_backoff(attempts: u32) -> u32 {
        2u32.pow(attempts)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn settles_at_the_price() {
            let mut market = Market { total: 2 };
            assert_eq!(market.settle(3), 6);
        }
    }
""")


def chunk(path: str, symbol: str, change_type: str = "MODIFIED_FUNCTION", kind: str = "function") -> dict:
    return {"file": path, "symbol": symbol, "kind": kind, "change_type": change_type}


def test_the_symbol_history_answers_as_of_a_position_and_round_trips():
    history = SymbolHistory()
    commits = [[chunk("a.rs", "f"), chunk("a.rs", "g")], [chunk("a.rs", "f")], [],
               [chunk("a.rs", "g"), chunk("b.rs", "h"), chunk("b.rs", "", "MODIFIED_HUNK", "hunk")],
               [chunk("a.rs", "f")]]
    for chunks in commits:
        history.observe(chunks)
    assert history.position == 5 and history.commit_symbols[3] == [("a.rs", "g"), ("b.rs", "h")]
    # f changed at 0, 1 and 4: as of position 4 it has two changes, the last at 1; nothing after 4 counts.
    assert history.changes_before(("a.rs", "f"), 4) == 2 and history.last_change(("a.rs", "f"), 4) == 1
    assert history.changes_before(("a.rs", "f"), 5) == 3 and history.changes_before(("a.rs", "f"), 5, window=2) == 1
    assert history.first_change(("b.rs", "h"), 3) is None and history.first_change(("b.rs", "h"), 4) == 3
    assert history.file_changes_before("a.rs", 4) == 4  # f at 0 and 1, g at 0 and 3
    # As of 4, the last commit (3) changed g and h: the antecedents. g changed at 0 and 3, h at 3.
    rules = history.cochange([("a.rs", "f"), ("b.rs", "h"), ("a.rs", "g")], 4, recent=1)
    assert rules[("a.rs", "f")] == (0.5, 1)  # g -> f: 1 of g's 2 commits
    assert rules[("b.rs", "h")] == (0.5, 1) and rules[("a.rs", "g")] == (1.0, 1)  # g -> h; h -> g
    evidence = history.similar_evidence([(3, 2.0), (0, 1.0), (4, 9.0)], 4)  # position 4 is not before 4
    assert evidence[("b.rs", "h")].score == 1.0 and evidence[("a.rs", "g")].hits == 2
    assert evidence[("a.rs", "f")].best_rank == 2 and ("a.rs", "f") in evidence
    again = SymbolHistory.from_state(json.loads(json.dumps(history.to_state())))
    assert again.changes == history.changes and again.position == 5
    assert {k: sorted(v) for k, v in again.commit_symbols.items()} == {k: sorted(v) for k, v in
                                                                       history.commit_symbols.items()}
    with pytest.raises(ValueError, match="format"):
        SymbolHistory.from_state({"format": 99})


def test_features_are_built_by_name_from_real_units():
    units = [u for u in units_of_file("src/lib.rs", LIB_RS.encode(), "blob", IndexConfig()) if u.kind != "file"]
    by_symbol = {u.symbol: i for i, u in enumerate(units)}
    assert {"Market::settle", "Market::open", "retry_with_backoff", "settles_at_the_price"} <= set(by_symbol)
    history = SymbolHistory()
    for chunks in ([chunk("src/lib.rs", "Market::settle", "MODIFIED_METHOD", "method")], [], [],
                   [chunk("src/lib.rs", "retry_with_backoff")]):
        history.observe(chunks)
    context = SymbolContext(code_words("Settle the market at the price"), 4, history, [(0, 3.0)],
                            {"src/lib.rs": (1, 2.5), "src/other.rs": (2, 1.0)})
    rows = symbol_rows(context, units, truth={("src/lib.rs", "Market::settle")})
    assert rows.names == list(SYMBOL_FEATURES) and rows.features.shape == (len(units), len(SYMBOL_FEATURES))

    def value(symbol: str, name: str) -> float:
        return float(rows.columns([name])[by_symbol[symbol], 0])

    settle, backoff, test = "Market::settle", "retry_with_backoff", "settles_at_the_price"
    assert value(settle, "name_overlap") == 2 and value(settle, "name_in_task") == 1.0  # market, settle
    assert value(settle, "doc_bm25") > 0 and value(backoff, "doc_bm25") == 0
    assert value(settle, "unit_bm25_rank") == 2 and np.isnan(value(backoff, "unit_bm25_rank"))  # the test first
    assert value(settle, "sym_since") == 4 and value(backoff, "sym_since") == 1 and np.isnan(value(test, "sym_since"))
    assert value(settle, "sym_share") == 0.5 and value(settle, "similar_hits") == 1
    assert value(backoff, "cochange_conf") == 0  # retry_with_backoff never changed with anything
    assert value(settle, "kind_method") == 1 and value(test, "kind_test") == 1 and value(backoff, "kind_function") == 1
    assert value(settle, "file_rank") == 1 and value(settle, "file_gap") == 0
    assert value(settle, "tested_by") == 1 and value(test, "test_names_task") == 1.0  # the test calls settle
    assert value(backoff, "tested_by") == 0 and value(settle, "candidates") == len(units)
    assert rows.labels.tolist() == [int(u.symbol == settle) for u in units]
    why = reasons(rows, by_symbol[settle])
    assert why[0] == "its name is in the task" and "in predicted file #1" in reasons(rows, by_symbol[settle], 9)
    dense = symbol_rows(context, units, dense=True)  # no vectors here: the dense columns are missing values
    assert dense.names[-3:] == ["dense_score", "dense_rank", "dense_gap"] and np.isnan(dense.features[:, -3:]).all()


def test_calibration_and_recall_at_k():
    rng = np.random.default_rng(0)
    scores = [rng.normal(size=30) for _ in range(40)]
    labels = [(s + rng.normal(scale=0.5, size=30) > 1.0).astype(np.int8) for s in scores]
    weights = fit_calibration(scores, labels)
    p = calibrated(np.array([2.5, 0.0, -2.0]), weights)
    assert p[0] > 0.8 and p[2] < 0.05 and np.all(np.diff(p) < 0)
    expected = np.mean(np.concatenate(labels))  # calibrated: the mean probability is the positives' share
    assert np.mean(np.concatenate([calibrated(s, weights) for s in scores])) == pytest.approx(expected, abs=0.01)
    assert calibrated(np.zeros(0), weights).size == 0
    truth = {("a", "x"), ("a", "y"), ("b", "z")}
    row = recall_row([("a", "q"), ("a", "x"), ("a", "x"), ("b", "z")], truth, 2)
    assert row["recall@5"] == 2 / 3 and row["mrr"] == 0.5 and row["files"] == 2
    chunks = [{"file": "new.rs", "old_file": "old.rs", "symbol": "g", "old_symbol": "f", "kind": "function",
               "change_type": "MOVED_FUNCTION"},
              {"file": "a.rs", "symbol": "h", "kind": "function", "change_type": "NEW_FUNCTION"},
              {"file": "a.rs", "symbol": "k", "kind": "test", "change_type": "MODIFIED_TEST"},
              {"file": "a.rs", "symbol": "", "kind": "hunk", "change_type": "MODIFIED_HUNK"}]
    assert changed_at_parent(chunks) == {("old.rs", "f"), ("a.rs", "k")}


# ---------------------------------------------------------------- a history where only co-change names the symbols


def engine_source(names: list[str], versions: dict[str, int]) -> str:
    return "".join(f"def {name}(value):\n    return value + {versions[name]}\n\n\n" for name in names)


def paired_history(repo: GitRepo, blocks: int = 90, pairs: int = 10, seed: int = 0) -> None:
    """One file of functions start_<topic> and finish_<topic>. Each block: a commit whose message names a topic
    changes its start function; then a commit with a noise message changes it again with its finish function.
    The finish function of the second commit is found only by symbol co-change (the last commit changed its
    start function, which always changes with it); the file ranker has one file to find."""
    rng = random.Random(seed)
    topics = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"][:pairs]
    names = [f"{step}_{t}" for t in topics for step in ("start", "finish")]
    versions = dict.fromkeys(names, 0)
    repo.commit("Start", {"pkg/engine.py": engine_source(names, versions)})
    for _ in range(blocks):
        topic = rng.choice(topics)
        versions[f"start_{topic}"] += 1
        repo.commit(f"Make the {topic} start faster", {"pkg/engine.py": engine_source(names, versions)})
        versions[f"start_{topic}"] += 1
        versions[f"finish_{topic}"] += 1
        repo.commit(f"{rng.choice(NOISE)} {rng.choice(NOISE)}", {"pkg/engine.py": engine_source(names, versions)})


@pytest.fixture(scope="module")
def paired_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    repo = GitRepo(root / "repo")
    paired_history(repo)
    paths = artifacts(repo.path, root / "out")
    train_ranker.run(RankerConfig(**FAST, language_model="off"), paths)
    return paths


def test_the_symbol_ranker_learns_what_only_symbol_co_change_finds(paired_world):
    folder = paired_world.ranker_dir
    assert (folder / MODEL_FILE).is_file() and (folder / HISTORY_FILE).is_file()
    figures = json.loads((folder / "metrics.json").read_text())["symbols"]
    test = figures["test"]["overall"]
    assert figures["targets"]["test"] >= 30 and figures["test"]["candidate_recall"] == 1.0
    # The untrained fusion finds the start function (task words, recency) but rarely the finish function.
    assert test["symbol_ranker"]["recall@5"] >= 0.9
    assert test["symbol_ranker"]["recall@5"] >= test["fusion"]["recall@5"] + 0.15
    assert test["symbol_ranker"]["recall@5"] > max(test[s]["recall@5"] for s in ("bm25", "recency", "frequency"))
    symbols = SymbolRanker.load(folder)
    assert symbols.features == list(SYMBOL_FEATURES) and symbols.history.position == 181
    assert "cochange_conf" in list(figures["feature_importance"])[:5]


def test_file_ranking_names_each_files_symbols_with_their_probabilities(paired_world):
    ranking = FileRanking.load(paired_world.ranker_dir)
    assert ranking.symbol_ranker is not None
    history = history_from_artifacts(paired_world.commits, paired_world.chunks, 5)
    ranked = ranking.rank(history, "Make the golf start faster")
    (engine,) = [f for f in ranked["files"] if f["path"] == "pkg/engine.py"]
    scores = [s["score"] for s in engine["symbol_scores"]]
    assert engine["symbols"] == [s["symbol"] for s in engine["symbol_scores"]] and len(scores) == 5
    assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
    assert engine["symbols"][0] == "start_golf"
    without = FileRanking.load(paired_world.ranker_dir)
    without.symbol_ranker = None  # an older folder: the untrained fusion names the symbols, with no scores
    plain = next(f for f in without.rank(history, "Make the golf start faster")["files"] if f["path"] == "pkg/engine.py")
    assert plain["symbol_scores"] == [] and plain["symbols"]
