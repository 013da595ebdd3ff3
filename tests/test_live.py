"""Predictions as you code: the live ranker (the work in progress as evidence), who and when, trained by
train_ranker, reported by evaluate.py and answered by the predictor for a real working tree."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

import helpers_predict as H
from conftest import GitRepo
from helpers_ranking import NOISE, artifacts, python_body
from repo2model.ranking.config import RankerConfig
from repo2model.ranking.file_ranking import FileRanking
from repo2model.ranking.history import PastCommits
from repo2model.ranking.live import LIVE_FEATURES, LiveRanker, link_key, linked_by_test, live_columns, path_distance
from repo2model.ranking.people import Activity, commits_baseline, next_commit_time
from repo2model.serving.history import history_from_repo
from repo2model.serving.predictor import Predictor
from repo2model.serving.settings import PredictionConfig
from repo2model.serving.work_in_progress import read_work_in_progress
from repo2model.stages import evaluate, train_ranker

FAST = dict(num_trees=200, early_stopping_rounds=20, language_model="off")
PAIRS = 10
ALICE, BOB = ("Alice", "alice@example.com"), ("Bob", "bob@example.com")


def owner(pair: int) -> tuple[str, str]:
    return ALICE if pair < PAIRS // 2 else BOB


def pairs_history(repo: GitRepo, commits: int = 160, seed: int = 0) -> None:
    """Only the work in progress finds the rest of a change: each commit changes one random pair of files
    (pkg/a<i>.py and lib/b<i>.py, always together) under a noise message, so nothing before a commit says which
    pair comes, while its first file names the second. Pairs 0-4 are Alice's, 5-9 Bob's, and each writes her or
    his own noise words: the message says who, never which pair."""
    rng = random.Random(seed)
    versions = [0] * PAIRS
    repo.commit("Start", {f"pkg/a{i}.py": python_body(f"a{i}", ["left"], 0) for i in range(PAIRS)}
                | {f"lib/b{i}.py": python_body(f"b{i}", ["right"], 0) for i in range(PAIRS)})
    for _ in range(commits):
        i = rng.randrange(PAIRS)
        versions[i] += 1
        words = NOISE[:4] if owner(i) == ALICE else NOISE[4:]
        repo.commit(f"{rng.choice(words)} {rng.choice(words)}",
                    {f"lib/b{i}.py": python_body(f"b{i}", ["right"], versions[i]),
                     f"pkg/a{i}.py": python_body(f"a{i}", ["left"], versions[i])}, author=owner(i))


@pytest.fixture(scope="module")
def pairs_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    repo = GitRepo(root / "repo")
    pairs_history(repo)
    paths = artifacts(repo.path, root / "out")
    summary = train_ranker.run(RankerConfig(**FAST), paths)
    evaluate.run(evaluate.Config(baselines_only=True), paths)
    return {"repo": repo, "paths": paths, "summary": summary,
            "evaluation": json.loads(paths.evaluation.read_text(encoding="utf-8"))}


def test_the_live_ranker_finds_the_rest_of_a_change_from_its_first_file(pairs_world):
    figures = pairs_world["summary"]["work_in_progress"]["live"]["1"]  # one revealed file: lib/b<i>.py
    assert figures["live"]["commits"] == figures["ranker"]["commits"] > 10
    assert figures["live"]["recall@1"] >= 0.9 and figures["cochange"]["recall@1"] >= 0.9
    assert figures["ranker"]["recall@1"] <= 0.5  # without the revealed file, any pair may come
    live = LiveRanker.load(pairs_world["paths"].ranker_dir)
    assert live is not None and set(LIVE_FEATURES) <= set(live.features) and live.features[-1] == "base_score"
    assert live.info["test"] == pairs_world["summary"]["work_in_progress"]["live"]


def test_evaluate_reports_the_work_in_progress_who_and_when(pairs_world):
    result = pairs_world["evaluation"]
    by = result["work_in_progress"]["by_revealed"]
    assert by["1"]["live"]["recall@1"] >= 0.9 > 0.5 >= by["1"]["ranker"]["recall@1"]
    assert set(by) == {"1", "half"} and by["half"] == by["1"]  # two files per commit: half is one, and 2 leaves none
    who = result["who"]
    assert set(who["frequent_authors"]) == {ALICE[1], BOB[1]} and who["author_model"]
    # the message's words say who; who wrote the last commit says nothing (the pairs come at random)
    assert who["model_top1"] >= 0.9 and who["most_recent_top1"] <= 0.75 and who["target_met"]
    when = result["when"]
    assert when["targets"] == result["targets"] and when["model"]["targets"] + when["censored"] == when["targets"]
    for name in ("model", "baseline"):
        assert when[name]["median_error_factor"] >= 1.0 and 0.0 <= when[name]["interval_coverage"] <= 1.0
    report = pairs_world["paths"].evaluation.with_suffix(".md").read_text(encoding="utf-8")
    for heading in ("## The work in progress", "## Who makes the change", "## When the predicted files change next"):
        assert heading in report
    fit = result["work_in_progress"]["live_fit"]  # how train_ranker fitted the live ranker, and why
    assert fit["chosen"] in fit["choice"] and f"The live ranker was fitted {fit['chosen']}, the better" in report


def test_a_prediction_from_a_working_tree_ranks_the_remaining_files(pairs_world):
    repo = pairs_world["repo"]
    repo.write("lib/b3.py", python_body("b3", ["right"], 99))  # the developer has started on pair 3
    model, tokenizer, lang, _, _ = H.trained_predictor_parts(repo.path.parent / "model")
    predictor = Predictor(model, tokenizer, lang, PredictionConfig(file_ranking="likelihood", history_commits=4))
    predictor.ranker = FileRanking.load(pairs_world["paths"].ranker_dir)
    work = read_work_in_progress(repo.path)
    prediction = predictor.predict(history_from_repo(repo.path, 4), "", work=work)
    out = json.loads(json.dumps(prediction.to_json()))
    assert [(f["path"], f["status"], [t["type"] for t in f["change_types"]]) for f in out["in_progress"]] == [
        ("lib/b3.py", "M", ["NEW_FUNCTION"])]
    assert out["work_in_progress"]["ranking"] == out["ranking"] == "live"
    assert out["work_in_progress"]["head"] == repo.head() and out["work_in_progress"]["files"] == 1
    assert out["files"][0]["path"] == "pkg/a3.py" and out["files"][0]["ranked_by"] == "live"
    assert "lib/b3.py" not in [f["path"] for f in out["files"]]
    (first, *others) = out["authors"]
    assert first["author"] == ALICE[1] and first["name"] == ALICE[0] and first["probability"] > 0.5
    assert sum(a["probability"] for a in out["authors"]) <= 1.0 + 1e-6
    assert out["when"]["files"] == [f["path"] for f in out["files"][:3]] and out["when"]["expected_seconds"] > 0
    low, high = out["when"]["interval_seconds"]
    assert low <= out["when"]["expected_seconds"] <= high
    # Without the working tree the same predictor answers as before, with authors and when.
    plain = predictor.predict(history_from_repo(repo.path, 4), "noise tweak").to_json()
    assert "in_progress" not in plain and plain["ranking"] == "ranker" and plain["authors"]


def test_without_a_ranker_the_changed_files_still_leave_the_prediction(pairs_world, tmp_path):
    repo = GitRepo(tmp_path / "plain")
    repo.commit("add parser", {"pkg/parse.py": "def parse(s):\n    return s\n"})
    repo.write("pkg/parse.py", "def parse(s):\n    return s.strip()\n")
    model, tokenizer, lang, _, _ = H.trained_predictor_parts(tmp_path / "model")
    predictor = Predictor(model, tokenizer, lang, PredictionConfig(file_ranking="likelihood"))
    out = predictor.predict(history_from_repo(repo.path, 4), H.TASK, work=read_work_in_progress(repo.path)).to_json()
    assert [f["path"] for f in out["in_progress"]] == ["pkg/parse.py"]
    assert "pkg/parse.py" not in [f["path"] for f in out["files"]]
    assert out["work_in_progress"]["ranking"] == "generation" and "authors" not in out
    with pytest.raises(ValueError, match="task"):
        predictor.predict(history_from_repo(repo.path, 4), "")  # an empty task needs the working tree


def commit(n: int, author: str, files: list[str], hours: float) -> tuple[dict, list[dict]]:
    """A commit record and its chunks, as commits.json and chunks.jsonl hold them."""
    stamp = (datetime(2024, 3, 1, tzinfo=timezone.utc) + timedelta(hours=hours)).isoformat()
    record = {"hash": f"{n:040x}", "author": {"name": author, "email": f"{author}@x"}, "committed_at": stamp,
              "message": "change", "files": [{"path": p} for p in files]}
    chunks = [{"file": p, "change_type": "MODIFIED_FUNCTION", "symbol": None, "module": p.split("/")[0]}
              for p in files]
    return record, chunks


def test_in_progress_features_by_hand():
    past = PastCommits()
    history = [commit(0, "a", ["src/walk.rs", "tests/walk.rs"], 0), commit(1, "a", ["src/walk.rs", "docs/x.md"], 1),
               commit(2, "a", ["src/exec.rs"], 2)]
    for record, chunks in history:
        past.observe(record, chunks)
    columns = live_columns(past, ["src/walk.rs"], ["tests/walk.rs", "docs/x.md", "src/exec.rs"], lambda p: 1.0)
    assert columns["wip_conf"] == [0.5, 0.5, 0.0] and columns["wip_hits"] == [1, 1, 0]
    assert columns["wip_test_link"] == [1.0, 0.0, 0.0] and columns["wip_folder_share"] == [0.0, 0.0, 1.0]
    assert columns["wip_path_distance"] == [2, 2, 0] and columns["wip_files"] == [1, 1, 1]
    assert link_key("tests/test_walk.py") == ("walk", True) and link_key("src/walk/tests.rs") == ("walk", True)
    assert linked_by_test("src/click/core.py", "tests/test_core.py") and not linked_by_test("src/a.py", "src/a_b.py")
    assert path_distance("a/b/c.py", "a/d/e.py") == 2


def test_when_reads_the_files_own_gaps_else_every_commit():
    activity = Activity()
    for n in range(10):  # src/a.rs every 24 h, other files every hour between
        record, chunks = commit(n, "a", ["src/a.rs"] if n % 2 == 0 else ["src/b.rs"], 24.0 * (n // 2) + (n % 2))
        activity.observe(record, chunks)
    own = next_commit_time(activity, ["src/a.rs"])
    assert own.basis == "files" and own.seconds == 86400.0 and own.gaps == 4
    rare = next_commit_time(activity, ["src/never.rs"])
    assert rare.basis == "commits" and rare == commits_baseline(activity, ["src/never.rs"])
    assert rare.low <= rare.seconds <= rare.high and rare.gaps == 9
    restored = Activity.from_state(json.loads(json.dumps(activity.to_state())))
    assert next_commit_time(restored, ["src/a.rs"]) == own and restored.by_position == activity.by_position
