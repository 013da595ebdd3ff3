"""Where a commit creates files (repo2model/ranking/new_files.py): the folders and names guessed, what evaluate.py
reports of them and what a prediction says, on a real history built with git and run through the real stages."""

from __future__ import annotations

import json
import random

import pytest

from conftest import GitRepo
from helpers_ranking import artifacts, python_body
from repo2model.ranking.features import candidate_rows
from repo2model.ranking.file_ranking import FileRanking
from repo2model.ranking.history import BaselineConfig
from repo2model.ranking.new_files import FOLDERS, new_file_figures, new_file_guesses, new_file_summary, task_stems
from repo2model.ranking.ranker import Ranker
from repo2model.ranking.targets import repository_of, walk_targets
from repo2model.stages import evaluate, train_ranker

FAST = dict(num_trees=100, early_stopping_rounds=10)
TOPICS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
          "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
          "whiskey", "xray", "yankee", "zulu"]


def camel(topic: str) -> str:
    return topic.capitalize() + "Handler"


def growing_history(repo: GitRepo, seed: int = 0) -> None:
    """A web app whose handlers folder grows: every third commit adds src/handlers/<topic>_handler.py and registers
    it in src/routes.py, saying so with the handler's type name; the others edit an existing handler or the docs."""
    rng = random.Random(seed)
    added: list[str] = []
    repo.commit("Start", {"src/routes.py": python_body("routes", ["route"], 0), "src/app.py": python_body("app", ["app"], 0),
                          "docs/guide.md": "# Guide\n", "README.md": "# App\n"})
    for i in range(len(TOPICS) * 3):
        if i % 3 == 0:
            topic = TOPICS[i // 3]
            added.append(topic)
            repo.commit(f"Add the {topic} endpoint ({camel(topic)})",
                        {f"src/handlers/{topic}_handler.py": python_body(topic, [topic, "handler"], 0),
                         "src/routes.py": python_body("routes", ["route"] + added, len(added))})
        elif i % 3 == 1:
            topic = rng.choice(added)
            repo.commit(f"Fix the {topic} endpoint", {f"src/handlers/{topic}_handler.py":
                                                      python_body(topic, [topic, "handler"], i)})
        else:
            repo.commit("Explain the endpoints", {"docs/guide.md": f"# Guide\n\n{i} endpoints\n"})


@pytest.fixture(scope="module")
def growing(tmp_path_factory):
    root = tmp_path_factory.mktemp("growing")
    repo = GitRepo(root / "repo")
    growing_history(repo)
    paths = artifacts(repo.path, root / "out")
    train_ranker.run(train_ranker.Config(**FAST), paths)
    return paths


def test_task_identifiers_become_file_stems():
    assert task_stems("fix(axum-extra): escape filename in Content-Disposition header") == ["content_disposition"]
    assert task_stems("Add `Serve::with_executor` and the Executor trait") == ["serve", "with_executor"]
    assert task_stems("axum: use Vec for PathRouter, parse_args too") == ["path_router", "parse_args"]
    assert task_stems("Fix the parser on empty input") == []  # plain words name no file


def test_the_growing_folder_and_the_named_file_are_guessed(growing):
    """At the last target that adds a handler, the trained ranker's files put the handlers folder first (it
    holds most of them and grew over the last commits), with the new file named from the task's type name; a
    file that exists is never guessed as new, and without the tree no name is guessed."""
    ranker = Ranker.load(growing.ranker_dir)
    test = train_ranker.load_splits(growing)["test"].commits
    states = walk_targets(growing.commits, growing.chunks, {c: "test" for c in test}, BaselineConfig(),
                          repository_of(growing.commits))
    seen = []
    for state in states:  # a state is valid only inside the walk
        if state.target.task.startswith("Add the"):
            task, blobs = state.target.task, state.code.blobs
            ranked = ranker.rank(candidate_rows(state, ranker.candidates()))
            seen.append((task, "src/handlers/zulu_handler.py" in blobs,
                         new_file_guesses(task, ranked, state.past, blobs),
                         new_file_guesses("Fix AlphaHandler", ranked, state.past, blobs),
                         new_file_guesses(task, ranked, state.past, None)))
    task, exists, guesses, existing, without_tree = seen[-1]
    assert task == "Add the zulu endpoint (ZuluHandler)" and not exists
    assert len(guesses) <= FOLDERS and guesses[0].folder == "src/handlers"
    assert guesses[0].paths == ["src/handlers/zulu_handler.py"]
    assert existing[0].paths == []  # alpha_handler.py exists: not a new file
    assert [g.paths for g in without_tree] == [[]] * len(guesses)
    assert new_file_figures(guesses, ["src/handlers/zulu_handler.py", "lib/other.py"]) == {
        "new_files": 2, "new_folder_found": 1, "new_named": 1}


def test_the_evaluation_and_the_prediction_say_where_new_files_go(growing):
    """evaluation.json counts the test targets' created files and how many the guesses found (each handler
    commit creates exactly one); a prediction carries the guesses as `new_files`."""
    evaluate.run(evaluate.Config(baselines_only=True), growing)
    result = json.loads(growing.evaluation.read_text())
    test = train_ranker.load_splits(growing)["test"].commits
    messages = {c["hash"]: c["message"] for c in json.loads(growing.commits.read_text())["commits"]}
    created = sum(messages[c].startswith("Add the") for c in test)
    new = result["new_files"]
    assert created >= 3 and new["new_files"] == new["commits_with_new"] == created and new["targets"] == len(test)
    assert new["folder_found"] == created and new["named"] == created  # the folder grows, the task names the type
    assert new == new_file_summary([row["ranker"] for row in result["per_commit"]])
    assert f"{created} of the {new['changed_files']} changed files" in growing.evaluation.with_suffix(".md").read_text()
    answer = FileRanking.load(growing.ranker_dir).rank([], "Add the omega endpoint (OmegaHandler)")
    assert answer["new_files"][0] == {"folder": "src/handlers", "score": answer["new_files"][0]["score"],
                                      "paths": ["src/handlers/omega_handler.py"]}
