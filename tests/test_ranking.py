"""train_ranker.py and repo2model/ranking/ (ranker, file_ranking, symbols, metrics): the ranker learns whichever
signal a history rewards, is deterministic, loads offline, takes its features by name and its history's statistics
from its folder; the change-type classifier and symbol ranking; metrics."""

from __future__ import annotations

import dataclasses
import http.client
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from repo2model.stages import evaluate
import helpers_predict as H
from repo2model.stages import predict
from repo2model.stages import serve
from repo2model.serving.service import Service, make_server
from repo2model.stages import train_ranker
from conftest import GitRepo
from helpers_ranking import artifacts, cochange_history, semantic_history, text_history
from repo2model.ranking.history import BaselineConfig, PastCommits
from repo2model.language.commit_language import CommitLanguage
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.ranking import features, file_ranking
from repo2model.ranking.config import RankerConfig
from repo2model.ranking.dense import file_embeddings
from repo2model.ranking.features import DENSE_FEATURES, FEATURES, candidate_rows
from repo2model.ranking.file_ranking import FileRanking
from repo2model.ranking.metrics import Prediction, Truth, aggregate, by_size, score
from repo2model.ranking.symbols import SymbolCandidate, rank_symbols, units_at_parent
from repo2model.ranking.targets import repository_of, walk_targets
from repo2model.serving.history import history_from_artifacts
from repo2model.serving.predictor import Predictor
from repo2model.serving.settings import PredictionConfig
from repo2model.ranking.ranker import Ranker
from repo2model.retrieval.bm25 import FileSearch

FAST = dict(num_trees=200, early_stopping_rounds=20)


@pytest.fixture(scope="module")
def text_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    repo = GitRepo(root / "repo")
    text_history(repo)
    paths = artifacts(repo.path, root / "out")
    train_ranker.run(RankerConfig(**FAST), paths)
    return paths


@pytest.fixture(scope="module")
def cochange_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cochange")
    repo = GitRepo(root / "repo")
    cochange_history(repo)
    paths = artifacts(repo.path, root / "out")
    train_ranker.run(RankerConfig(**FAST), paths)
    return paths


@pytest.fixture(scope="module")
def semantic_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic")
    repo = GitRepo(root / "repo")
    files = semantic_history(repo)
    paths = artifacts(repo.path, root / "out")
    train_ranker.run(RankerConfig(**FAST, dense=True), paths)
    return paths, repo, files


def test_the_ranker_learns_a_history_where_only_the_task_text_finds_the_files(text_world):
    test = json.loads((text_world.ranker_dir / "metrics.json").read_text())["test"]
    text_best = max(test["similar_commits"]["recall@1"], test["code_search"]["recall@1"])
    assert text_best >= 0.8 and test["recent"]["recall@1"] < 0.3 and test["cochange"]["recall@5"] < 0.4
    assert test["ranker"]["recall@1"] >= text_best - 0.05 and test["ranker"]["recall@1"] >= 0.8
    assert test["ranker"]["recall@5"] >= 0.9


def test_the_ranker_learns_a_history_where_only_co_change_finds_the_files(cochange_world):
    metrics = json.loads((cochange_world.ranker_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert test["similar_commits"]["recall@5"] < 0.5 and test["code_search"]["recall@5"] < 0.5
    # Half the targets change a_i alone, which nothing can foresee; the other half change a_i and b_i.
    pairs = metrics["by_size"]["ranker"]["2-3"]
    assert pairs["recall@5"] >= 0.9 and pairs["recall@1"] >= 0.9
    assert pairs["recall@5"] >= metrics["by_size"]["cochange"]["2-3"]["recall@5"] - 0.05
    assert pairs["recall@5"] > metrics["by_size"]["recent"]["2-3"]["recall@5"] + 0.2
    importance = metrics["feature_importance"]
    assert sum(v for k, v in importance.items() if k.startswith("cochange")) > 0.1


def test_the_ranker_is_deterministic_and_loads_offline(text_world, tmp_path):
    first = (text_world.ranker_dir / "ranker.txt").read_bytes()
    again = tmp_path / "again"
    train_ranker.run(RankerConfig(**FAST), dataclasses.replace(text_world, ranker_dir=again))
    for name in ("ranker.txt", "change_types.txt", "settings.json", "history.json", "test_rows.npy", "test_rows.json"):
        assert (again / name).read_bytes() == (text_world.ranker_dir / name).read_bytes(), name
    # The second fit computed no row: every target's rows came from the first one's cache (the live ranker folder),
    # and gave the same bytes above.
    metrics = json.loads((again / "metrics.json").read_text())
    assert metrics["rows"] == {"reused": sum(metrics["targets"].values()), "computed": 0, "lm_columns_computed": 0,
                               "lm_columns_kept_from_an_earlier_model": 0}
    assert first.startswith(b"tree\n") and b"objective=lambdarank" in first
    ranker = Ranker.load(again)
    assert ranker.features == json.loads((again / "settings.json").read_text())["features"]
    # The loaded ranker orders the candidates of a test target as the metrics said.
    test_commits = set(train_ranker.load_splits(text_world)["test"].commits)
    for state in walk_targets(text_world.commits, text_world.chunks, {c: "test" for c in test_commits},
                              BaselineConfig(), repository_of(text_world.commits)):
        rows = candidate_rows(state, train_ranker.Config().candidates())
        ranked = ranker.rank(rows)
        assert [p for p, _ in ranked] == sorted(rows.paths, key=lambda p: (-dict(ranked)[p], p))
        assert np.allclose([s for _, s in ranked], sorted(ranker.scores(rows), reverse=True))
        break


def first_test_state(paths: ArtifactPaths):
    """The walk's state at the first test target (valid while the returned generator is not advanced)."""
    test_commits = set(train_ranker.load_splits(paths)["test"].commits)
    walk = walk_targets(paths.commits, paths.chunks, {c: "test" for c in test_commits}, BaselineConfig(),
                        repository_of(paths.commits))
    return walk, next(walk)


def test_rows_are_taken_by_name_never_by_position(text_world, monkeypatch):
    ranker = Ranker.load(text_world.ranker_dir)
    walk, state = first_test_state(text_world)
    rows = candidate_rows(state, ranker.candidates())
    # The same features computed in another column order: each name keeps its values, the ranker its scores.
    monkeypatch.setattr(features, "FEATURES", tuple(reversed(FEATURES)))
    permuted = candidate_rows(state, ranker.candidates())
    assert permuted.names == list(reversed(FEATURES)) and permuted.paths == rows.paths
    for name in FEATURES:
        np.testing.assert_array_equal(permuted.columns([name]), rows.columns([name]))
    np.testing.assert_array_equal(ranker.scores(permuted), ranker.scores(rows))
    # What taking columns by position would have fed the ranker: other values (the checks above can fail).
    by_position = dataclasses.replace(permuted, names=rows.names)
    assert not np.array_equal(by_position.columns(ranker.features), rows.columns(ranker.features), equal_nan=True)
    # A feature the ranker needs and the rows lack is a one-line error, not a shifted matrix.
    with pytest.raises(UserError, match="count_50"):
        ranker.scores(rows.select([n for n in rows.names if n != "count_50"]))
    # A feature name no family computes (or a family computing an unnamed one) is caught as the rows are built.
    monkeypatch.setattr(features, "FEATURES", FEATURES + ("made_up",))
    with pytest.raises(ValueError, match="made_up"):
        candidate_rows(state, ranker.candidates())
    monkeypatch.setattr(features, "FEATURES", FEATURES[:-1])
    with pytest.raises(ValueError, match=FEATURES[-1]):
        candidate_rows(state, ranker.candidates())
    walk.close()


def test_the_ranker_predicts_without_commits_and_chunks(text_world, tmp_path, caplog):
    """train_ranker saves the history's statistics with the ranker: prediction needs neither commits.json nor
    chunks.jsonl (pipeline.keep_intermediates: false), and answers as when it replayed them."""
    out = tmp_path / "out"
    shutil.copytree(text_world.output_dir, out)
    paths = ArtifactPaths.under(out)
    ranker = Ranker.load(paths.ranker_dir)
    replayed, commits, repo = FileRanking.replayed_history(ranker, paths.commits, paths.chunks)
    saved, saved_commits, saved_repo = FileRanking.saved_history(paths.ranker_dir)
    assert saved.to_state() == replayed.to_state() and saved_commits == commits and saved_repo == repo
    assert saved.position == len(commits) > 100 and saved.messages.keys() == replayed.messages.keys()
    task = "Improve the kilo engine for kilo users"
    old = tmp_path / "old" / "ranker"  # a folder written before the statistics were saved: replays the files
    shutil.copytree(paths.ranker_dir, old)
    (old / "history.json").unlink()
    before = FileRanking.load(old, paths.commits, paths.chunks).rank([], task)
    paths.commits.unlink()
    paths.chunks.unlink()
    ranking = FileRanking.find(out / "model", paths)
    assert ranking is not None and ranking.last_commit == commits[-1] and ranking.repo == repo
    after = ranking.rank([], task)
    assert after == before and {f["path"] for f in after["files"][:2]} == {"src/kilo.py", "tests/test_kilo.py"}
    # Without the statistics and without the files to replay, the language model ranks alone (a warning).
    (paths.ranker_dir / "history.json").unlink()
    assert FileRanking.find(out / "model", paths) is None and "rerun train_ranker" in caplog.text


def test_evaluate_reuses_the_test_rows_train_ranker_saved(text_world, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(text_world.output_dir, out)
    paths = ArtifactPaths.under(out)
    built = []
    def counted(state, *args, **kwargs):
        built.append(state.target.commit)
        return candidate_rows(state, *args, **kwargs)

    monkeypatch.setattr(file_ranking, "candidate_rows", counted)
    test_commits = train_ranker.load_splits(paths)["test"].commits
    evaluate.run(evaluate.Config(baselines_only=True), paths)
    reused = json.loads(paths.evaluation.read_text())
    assert built == []  # every test target's rows came from the ranker folder
    # Other baseline settings shape other rows: computed again, and so they are without the saved ones.
    evaluate.run(evaluate.Config(baselines_only=True, similar_commits=5), paths)
    assert sorted(built) == sorted(test_commits)
    for name in ("test_rows.npy", "test_rows.json"):
        (paths.ranker_dir / name).unlink()
    built.clear()
    evaluate.run(evaluate.Config(baselines_only=True), paths)
    assert sorted(built) == sorted(test_commits)
    assert json.loads(paths.evaluation.read_text())["per_commit"] == reused["per_commit"]


def test_a_ranker_folder_that_is_not_one_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="run the train_ranker stage"):
        Ranker.load(tmp_path)
    (tmp_path / "ranker.txt").write_text("not a model")
    (tmp_path / "settings.json").write_text("{}")
    with pytest.raises(UserError, match="not a ranker folder"):
        Ranker.load(tmp_path)


def test_train_ranker_without_a_dataset_is_a_one_line_error(tmp_path, capsys):
    assert train_ranker.main(["--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset_builder" in err[0]


def test_change_types_beat_or_match_the_most_frequent_type(text_world):
    figures = json.loads((text_world.ranker_dir / "metrics.json").read_text())["change_types"]
    assert figures["files"] > 0 and figures["classifier"] >= figures["most_frequent"]


def test_the_change_type_classifier_learns_what_the_most_frequent_type_misses():
    """Files mostly modified so far; a task that says "add" adds a function. The most frequent type is right
    for half the test files; the classifier, which reads the task's words, for all of them."""
    from repo2model.ranking.change_types import TypeExample, change_type_figures, fit_classifier
    from repo2model.ranking.config import FitSettings

    def examples(split: str, n: int) -> list[TypeExample]:
        made = []
        for i in range(n):
            adds = i % 2 == 1
            main = "NEW_FUNCTION" if adds else "MODIFIED_FUNCTION"
            history = {"MODIFIED_FUNCTION": 5 + i % 3, "NEW_FUNCTION": 2}
            made.append(TypeExample(f"{split}/m{i}.py", history, "MODIFIED_FUNCTION", 7,
                                    frozenset({"add" if adds else "fix", "parser"}), 1.0, frozenset({main}), main))
        return made

    test = examples("test", 40)
    classes, model = fit_classifier({"train": examples("train", 200), "val": examples("val", 60)},
                                    FitSettings(num_trees=100, early_stopping_rounds=10), seed=1)
    assert set(classes) == {"MODIFIED_FUNCTION", "NEW_FUNCTION"} and model is not None
    figures = change_type_figures(model, classes, test)
    assert figures == {"files": 40, "classifier": 1.0, "most_frequent": 0.5}
    # One file changed by every test target, added to half the time: each target's prediction is scored.
    same_file = [dataclasses.replace(e, path="src/parser.py") for e in test]
    assert change_type_figures(model, classes, same_file) == figures


def test_symbols_ranked_by_the_task_recency_and_frequency():
    past = PastCommits()
    for i, symbol in enumerate(["parse", "parse", "render", "lex"]):
        past.observe({"hash": str(i), "message": "x", "files": []},
                     [{"file": "m.py", "change_type": "MODIFIED_FUNCTION", "symbol": symbol}])
    source = b"def parse(text):\n    return text\n\n\ndef render(tree):\n    return tree\n\n\ndef skip_comments(line):\n    return line\n"
    units = units_at_parent("m.py", source)
    assert [u.symbol for u in units] == ["parse", "render", "skip_comments"]
    assert units[0].text.startswith("def parse(text):")
    # The task names skip_comments; parse is the most frequent; lex the most recent (no longer in the file).
    ranked = rank_symbols(past, "m.py", units, ["skip", "comment", "skipcomments"], limit=4)
    assert ranked[0] == "skip_comments" and set(ranked) == {"parse", "render", "skip_comments", "lex"}
    assert rank_symbols(past, "m.py", [SymbolCandidate("a", "")], [], limit=0) == []
    assert units_at_parent("notes.txt", b"text") == [] and units_at_parent("m.py", None) == []


def test_score_mrr_and_size_buckets():
    truth = Truth("c", ["a", "b", "c"], {"a": {"NEW_FUNCTION"}}, {"m"}, {"s", "t"})
    row = score(Prediction(files=[("x", 1.0), ("b", 0.9), ("a", 0.2)], change_types={"a": "NEW_FUNCTION"},
                           modules=["m"], symbols=["t"]), truth)
    assert row["recall@1"] == 0.0 and row["recall@5"] == pytest.approx(2 / 3) and row["mrr"] == 0.5
    assert row["files"] == 3 and row["change_type_correct"] == 1 and row["symbol_recall"] == 0.5
    single = score(Prediction(files=[("a", 1.0)]), Truth("d", ["a"], {}, set(), set()))
    assert single["mrr"] == 1.0 and single["recall@10"] == 1.0
    buckets = by_size([row, single])
    assert list(buckets) == ["1", "2-3"] and buckets["2-3"]["mrr"] == 0.5 and buckets["1"]["commits"] == 1
    assert aggregate([row, single])["mrr"] == 0.75


# ---------------------------------------------------------------- predict.py and serve.py with and without a ranker


@pytest.fixture(scope="module")
def model_beside_ranker(text_world):
    """An untrained tiny model in <output_dir>/model, beside the text world's ranker."""
    lang = CommitLanguage(authors=["Alice Example"], modules=[])
    history = history_from_artifacts(text_world.commits, text_world.chunks, 8)
    folder = text_world.model_dir
    texts = [lang.render_commit(c, chunks, "full") for c, chunks in history]
    tokenizer = H.build_tokenizer(folder, lang, texts * 3)
    H.tiny_llama(tokenizer).save_pretrained(str(folder))
    return folder


def post(server, body: dict) -> dict:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.request("POST", "/predict", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read().decode())
    conn.close()
    assert response.status == 200, payload
    return payload


def test_predict_and_serve_rank_with_the_ranker_and_say_so(text_world, model_beside_ranker, tmp_path, capsys):
    task = "Improve the kilo engine for kilo users"
    repo = text_world.output_dir.parent / "repo"
    out = tmp_path / "prediction.json"
    argv = ["--model", str(model_beside_ranker), "--repo", str(repo), "--task", task, "--file-ranking", "likelihood",
            "--output", str(out)]
    assert predict.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["ranking"] == "ranker" and result["ranker_candidates"] > 0
    assert {f["path"] for f in result["files"][:2]} == {"src/kilo.py", "tests/test_kilo.py"}
    assert all(f["ranked_by"] == "ranker" and f["change_types"] for f in result["files"])
    assert result["files"][0]["symbols"] and all(s.startswith(("kilo_", "test_kilo_")) for s in result["files"][0]["symbols"])
    # The same model folder elsewhere, without a ranker beside it: the model ranks, and says so.
    alone = tmp_path / "alone" / "model"
    shutil.copytree(model_beside_ranker, alone)
    assert predict.main(["--model", str(alone), *argv[2:]]) == 0
    assert json.loads(out.read_text())["ranking"] == "likelihood"
    for folder, expected in ((model_beside_ranker, "ranker"), (alone, "likelihood")):
        service = Service(Predictor.load(folder, PredictionConfig(file_ranking="likelihood")), serve.Config(port=0))
        server = make_server(service)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            body = post(server, {"task": task, "repo": str(repo)})
            assert body["ranking"] == expected and body["files"]
            conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
            conn.request("GET", "/health")
            ranker = json.loads(conn.getresponse().read().decode())["model"]["ranker"]
            conn.close()
            assert (ranker is not None) == (expected == "ranker")
            if ranker is not None:
                assert Path(ranker["folder"]).name == "ranker" and ranker["last_commit"]
            records = [{**c.to_dict(), "chunks": [ch.to_dict() for ch in chunks]}
                       for c, chunks in history_from_artifacts(text_world.commits, text_world.chunks, 3)]
            assert post(server, {"task": task, "commits": records})["ranking"] == expected
        finally:
            server.shutdown()
            server.server_close()


# ---------------------------------------------------------------- the dense task-file similarity


def test_the_dense_features_find_files_only_meaning_links_to_the_task(semantic_world):
    paths, repo, files = semantic_world
    metrics = json.loads((paths.ranker_dir / "metrics.json").read_text())
    test = metrics["test"]
    # No word is shared: code search and similar commits are no better than chance (1 in 6 files).
    assert test["code_search"]["recall@1"] < 0.4 and test["similar_commits"]["recall@1"] < 0.4
    # 6 of 9 first (chance: 1 of 6; without the dense features: none), every file in the top 5
    assert test["ranker"]["recall@1"] >= 0.6 and test["ranker"]["recall@5"] >= 0.85, test["ranker"]
    assert test["ranker"]["recall@1"] >= test["ranker_without_dense"]["recall@1"] + 0.3  # the ablation, same rows
    assert sum(v for k, v in metrics["feature_importance"].items() if k.startswith("dense")) > 0.3
    settings = json.loads((paths.ranker_dir / "settings.json").read_text())
    assert settings["features"] == list(FEATURES) + list(DENSE_FEATURES) and settings["candidates"]["dense"]
    # Prediction time: the same features (the vectors saved with the ranker), new synonyms found.
    ranking = FileRanking.load(paths.ranker_dir, paths.commits, paths.chunks)
    assert ranking.dense is not None and ranking.ranker.file_embeddings._vectors
    for task, expected in (("Handle the monsoon", files[0]), ("Support the saxophone", files[2])):
        answer = ranking.rank([], task)
        assert answer["method"] == "ranker" and answer["files"][0]["path"] == expected, (task, answer["files"][:3])
    # A vector from the saved cache is the same bytes as one embedded afresh.
    fresh = file_embeddings(settings["dense"])
    with FileSearch(repo.path) as code:
        code.move_to(repo.head())
        assert (fresh.similarities("Handle the monsoon", code.blobs, code.read, files)
                == ranking.ranker.file_embeddings.similarities("Handle the monsoon", code.blobs, code.read, files))
    assert fresh.embedded == len(files) and ranking.ranker.file_embeddings.embedded <= 1  # the last commit's file
    # evaluate.py computes the features the ranker was fitted on: the same figures on the same test targets.
    evaluate.run(evaluate.Config(baselines_only=True), paths)
    evaluated = json.loads(paths.evaluation.read_text())["metrics"]["ranker"]
    assert {k: evaluated[k] for k in ("recall@1", "recall@5", "mrr")} == {k: test["ranker"][k] for k in
                                                                         ("recall@1", "recall@5", "mrr")}
    # A refit reuses the saved vectors (nothing embedded again) and gives the same model bytes.
    first = (paths.ranker_dir / "ranker.txt").read_bytes()
    train_ranker.run(RankerConfig(**FAST, dense=True), paths)
    assert json.loads((paths.ranker_dir / "metrics.json").read_text())["dense_files_embedded"] == 0
    assert (paths.ranker_dir / "ranker.txt").read_bytes() == first


def test_an_older_ranker_folder_without_the_dense_features_still_ranks(text_world, tmp_path):
    old = tmp_path / "ranker"
    shutil.copytree(text_world.ranker_dir, old)
    settings = json.loads((old / "settings.json").read_text())
    for key in ("dense", "dense_candidates"):  # what a folder written before them lacks
        settings["candidates"].pop(key)
    settings.pop("dense")
    (old / "settings.json").write_text(json.dumps(settings))
    ranking = FileRanking.load(old, text_world.commits, text_world.chunks)
    assert ranking.dense is None and not ranking.candidates.dense
    answer = ranking.rank([], "Improve the kilo engine for kilo users")
    assert answer["method"] == "ranker"
    assert {f["path"] for f in answer["files"][:2]} == {"src/kilo.py", "tests/test_kilo.py"}
