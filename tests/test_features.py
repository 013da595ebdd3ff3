"""repo2model/ranking/features.py and targets.py: a target's features come only from the commits before it;
candidates."""

from __future__ import annotations

import numpy as np
import pytest

from helpers_data import scrape_and_chunk
from repo2model.ranking.history import BaselineConfig
from repo2model.ranking.dense import scorer_of
from repo2model.ranking.features import DENSE_FEATURES, FEATURES, FeatureConfig, candidate_rows
from repo2model.ranking.targets import repository_of, walk_targets
from repo2model.retrieval.embedding import Embedder, FileEmbeddings
from repo2model.retrieval.index_config import IndexConfig

TARGET = "Teach the parser to skip comments"
HISTORY = [
    ("Add the parser", {"src/parser.py": "def parse(text):\n    return text.split()\n",
                        "src/lexer.py": "def lex(text):\n    return list(text)\n"}),
    ("Add the renderer", {"src/render.py": "def render(tree):\n    return str(tree)\n"}),
    ("Parser handles empty input", {"src/parser.py": "def parse(text):\n    return (text or '').split()\n",
                                    "tests/test_parser.py": "def test_parse():\n    assert parse('') == []\n"}),
    ("Document the renderer", {"README.md": "Render trees.\n"}),
    ("Lexer keeps spaces", {"src/lexer.py": "def lex(text):\n    return [c for c in text]\n"}),
    ("Remove the old helper", {"src/helper.py": "X = 1\n"}),
    ("Drop the helper", {"src/helper.py": None}),
    (TARGET, {"src/parser.py": "def parse(text):\n    return [w for w in (text or '').split() if w[0] != '#']\n",
              "tests/test_parser.py": "def test_comment():\n    assert parse('# x') == []\n"}),
]
# What a leak would most likely carry: later commits touching the target's files with the target's words.
LATER = [
    (TARGET + " again", {"src/parser.py": "def parse(text):\n    return []\n", "src/comments.py": "C = '#'\n"}),
    ("Parser and renderer, after the target", {"src/render.py": "def render(tree):\n    return repr(tree)\n"}),
]


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def features_of_target(make_repo, name: str, history: list, embedder: Embedder | None = None) -> tuple:
    """The target's rows; with `embedder`, the dense features too (a fresh FileEmbeddings: nothing cached)."""
    repo = make_repo(name)
    for message, files in history:
        repo.commit(message, files)
    paths = scrape_and_chunk(repo.path, repo.path.parent / f"{name}-out")
    target = next(line.split(" ", 1)[0] for line in repo.git("log", "--format=%H %s").splitlines()
                  if line.split(" ", 1)[1] == TARGET)
    cfg = FeatureConfig(candidates_per_baseline=10, dense=embedder is not None)
    dense = scorer_of(FileEmbeddings(embedder, IndexConfig())) if embedder is not None else None
    found = []
    for state in walk_targets(paths.commits, paths.chunks, {target: "test"}, BaselineConfig(),
                              repository_of(paths.commits)):  # a state is only valid inside the loop
        found.append((candidate_rows(state, cfg, dense=dense), dict(state.rankings), state.target))
    assert len(found) == 1
    return found[0]


def test_no_feature_of_a_target_changes_when_commits_come_after_it(make_repo, embedder):
    """Every feature, the dense ones included (each run embeds afresh: they are deterministic too)."""
    rows, rankings, target = features_of_target(make_repo, "plain", HISTORY, embedder)
    later_rows, later_rankings, later_target = features_of_target(make_repo, "planted", HISTORY + LATER, embedder)
    assert later_target.commit == target.commit  # the same commits up to the target: the same hashes
    assert target.files == ["src/parser.py", "tests/test_parser.py"]
    assert later_rows.paths == rows.paths
    assert rows.names == list(FEATURES) + list(DENSE_FEATURES) and rows.features.shape[1] == len(rows.names)
    np.testing.assert_array_equal(later_rows.features, rows.features)
    np.testing.assert_array_equal(later_rows.labels, rows.labels)
    assert later_rankings == rankings
    dense = {name: rows.names.index(name) for name in DENSE_FEATURES}
    parser = rows.paths.index("src/parser.py")
    assert 0.0 < rows.features[parser, dense["dense_score"]] <= 1.0 and rows.features[parser, dense["dense_rank"]] >= 1
    # The test can fail: the same commit planted *before* the target changes its features (parser.py's
    # content at the parent, so its dense similarity, among them).
    before_rows, before_rankings, _ = features_of_target(make_repo, "before", HISTORY[:-1] + LATER[:1] + HISTORY[-1:],
                                                         embedder)
    assert "src/comments.py" in before_rows.paths and "src/comments.py" not in rows.paths
    assert before_rankings["similar_commits"] != rankings["similar_commits"]
    assert (before_rows.features[before_rows.paths.index("src/parser.py"), dense["dense_score"]]
            != rows.features[parser, dense["dense_score"]])


def test_candidates_and_their_features(make_repo):
    rows, rankings, target = features_of_target(make_repo, "plain", HISTORY)
    assert rows.features.shape == (len(rows.paths), len(FEATURES)) and rows.features.dtype == np.float32
    # Every file of the parent's tree that some signal ranks is a candidate; the deleted helper is not.
    assert {"src/parser.py", "src/lexer.py", "tests/test_parser.py", "README.md"} <= set(rows.paths)
    assert "src/helper.py" not in rows.paths
    assert rows.labels.tolist() == [int(p in target.files) for p in rows.paths]
    row = dict(zip(rows.names, rows.features[rows.paths.index("src/parser.py")]))
    assert row["count_all"] == 2 and row["commits_since"] == 5 and row["exists"] == 1.0
    assert row["path_overlap"] == 1 and row["name_in_task"] == 1.0  # "parser" is in the task
    assert row["similar_score"] > 0 and row["code_score"] > 0 and row["is_test"] == 0.0
    test_row = dict(zip(rows.names, rows.features[rows.paths.index("tests/test_parser.py")]))
    assert test_row["is_test"] == 1.0 and test_row["cochange_conf"] == 0.0  # nothing of it changed lately
    # code_search ranks by content at the parent; similar_commits by the earlier messages ("Parser handles ...").
    assert rankings["code_search"][0][0] == "src/parser.py"
    assert rankings["similar_commits"][0][0] in ("src/parser.py", "tests/test_parser.py")


def test_the_language_model_scores_the_best_candidates_by_the_fusion(make_repo):
    """lm_candidates: the model is asked about the best N candidates by the fusion's rank only (its scoring is
    the costly part of the features); the others' LM columns are missing; 0 asks about every candidate."""
    repo = make_repo("lm")
    for message, files in HISTORY:
        repo.commit(message, files)
    paths = scrape_and_chunk(repo.path, repo.path.parent / "lm-out")
    target = repo.git("rev-parse", "HEAD").strip()
    asked: list[list[str]] = []

    def lm(files: list[str]) -> dict[str, float]:  # a scorer as train_ranker builds one (features.lm_scorer)
        asked.append(list(files))
        return {path: -float(len(path)) for path in files}

    rows = []
    for state in walk_targets(paths.commits, paths.chunks, {target: "test"}, BaselineConfig(),
                              repository_of(paths.commits)):
        rows = [candidate_rows(state, FeatureConfig(candidates_per_baseline=10, lm_candidates=n), lm=lm)
                for n in (2, 0)]
    few, every = rows
    assert len(few.paths) > 2 and asked[1] == every.paths
    fusion = dict(zip(few.paths, few.columns(["fusion_rank"])[:, 0]))
    assert sorted(asked[0], key=fusion.get) == sorted(few.paths, key=lambda p: (fusion[p], few.paths.index(p)))[:2]
    scored = ~np.isnan(few.columns(["lm_logprob"])[:, 0])
    assert [p for p, s in zip(few.paths, scored) if s] == asked[0]
    assert sorted(few.columns(["lm_rank"])[scored, 0].tolist()) == [1.0, 2.0]  # ranked among those scored
    assert not np.isnan(every.columns(["lm_logprob"])[:, 0]).any()
    with pytest.raises(ValueError, match="lm_candidates"):
        FeatureConfig(lm_candidates=-1)
