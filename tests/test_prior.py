"""The prior ranker (repo2model/ranking/prior.py and the shipped prior/), candidates for large commits (pool.py),
uninformative messages (messages.py): on real histories built with git, scraped and chunked by the real stages."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import tomllib
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from conftest import GitRepo
from helpers_data import scrape_and_chunk
from helpers_ranking import artifacts, python_body
from repo2model.core.artifacts import iter_commits_with_chunks
from repo2model.core.config import load_config
from repo2model.core.errors import UserError
from repo2model.ranking import prior as prior_module
from repo2model.ranking import report
from repo2model.ranking.features import (
    FEATURES, PRIOR_FEATURES, SCALE_DEPENDENT, TASK_FEATURES, FeatureConfig, candidate_rows, candidates,
)
from repo2model.ranking.file_ranking import FileRanking
from repo2model.ranking.history import BaselineConfig, PastCommits, rendered_files
from repo2model.ranking.messages import MessageCounts
from repo2model.ranking.metrics import candidate_recall
from repo2model.ranking.pool import relation_counts
from repo2model.ranking.prior import Prior, fit_prior, load_prior, prior_rows, save_prior
from repo2model.ranking.live import LIVE_FEATURES, LiveRanker
from repo2model.ranking.ranker import BASE_SCORE, Ranker
from repo2model.ranking.targets import repository_of, walk_targets
from repo2model.stages import evaluate, train_ranker

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(num_trees=200, early_stopping_rounds=20)
MODULES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
PARTS = ["parser", "lexer", "render", "config", "store", "cache", "index", "query"]
BOILERPLATE = ("codex cli local changes", "claude cli local changes")


def agent_history(repo: GitRepo, commits: int = 60, real: int = 11, seed: int = 0) -> None:
    """Commits like a coding agent's: each rewrites every file of one module (8 files) and the shared manifest;
    every message is boilerplate but the last `real`, which name the module (the tasks a person hands over)."""
    rng = random.Random(seed)
    versions = {m: 0 for m in MODULES}
    repo.commit("Start", {f"crates/{m}/{p}.py": python_body(f"{m}_{p}", [m, p], 0) for m in MODULES for p in PARTS}
                | {"manifest.toml": "v = 0\n"})
    for i in range(commits):
        module = rng.choice(MODULES)
        versions[module] += 1
        message = (f"Rework the {module} module: {rng.choice(PARTS)} first" if i >= commits - real
                   else BOILERPLATE[i % 2])
        repo.commit(message, {f"crates/{module}/{p}.py": python_body(f"{module}_{p}", [module, p], versions[module])
                              for p in PARTS} | {"manifest.toml": f"v = {i + 1}\n"})


@pytest.fixture(scope="module")
def agent_world(tmp_path_factory):
    """The agent history's artifacts: 60 targets, the latest 12 test (the first of them boilerplate)."""
    root = tmp_path_factory.mktemp("agent")
    repo = GitRepo(root / "repo")
    agent_history(repo)
    return artifacts(repo.path, root / "out")


# ---------------------------------------------------------------- the shipped prior


def test_the_shipped_prior_matches_the_features_and_is_package_data():
    """A prior fitted before a feature was added, removed or renamed fails here: regenerate it with
    bench/train_prior.py."""
    prior = Prior.load()
    assert prior.features == list(FEATURES), "stale prior: run bench/train_prior.py"
    assert prior.info["learns_from"] == list(PRIOR_FEATURES)
    assert hashlib.sha256((prior.folder / "prior.txt").read_bytes()).hexdigest() == prior.digest
    # Its trees split on the portable features only (the others are missing in every row it learned from).
    used = {name for name, n in zip(prior.booster.feature_name(), prior.booster.feature_importance("split")) if n}
    assert used and used <= set(PRIOR_FEATURES) and not used & SCALE_DEPENDENT
    assert set(prior.info["histories"]) == {"fd", "axum", "click", "fd-squash8", "fd-squash4", "click-squash8",
                                            "click-squash4"}
    # An installed copy has it: pyproject.toml names both files as package data.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    shipped = {f"prior/{name}" for name in ("prior.txt", "prior.json")}
    assert shipped <= set(setuptools["package-data"]["repo2model.ranking"])
    assert prior.folder == ROOT / "repo2model" / "ranking" / "prior"


def tiny_prior(folder: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, len(names)))
    booster = lgb.train({"objective": "lambdarank", "verbosity": -1, "min_data_in_leaf": 5},
                        lgb.Dataset(x, (x[:, 0] > 1).astype(int), group=[20] * 10, feature_name=names),
                        num_boost_round=3)
    return save_prior(booster, folder, {"random": {"train": 10, "val": 0}})


def test_a_stale_or_altered_prior_is_refused(tmp_path, monkeypatch, caplog):
    names = train_ranker.Config().candidates().names()
    stale = tiny_prior(tmp_path / "stale", ["count_all", "recent_rank"])
    with pytest.raises(UserError, match="other features"):
        load_prior(str(stale), names)
    monkeypatch.setattr(prior_module, "PRIOR_DIR", stale)  # as if the shipped one were stale
    assert load_prior("auto", names) is None and "stale" in caplog.text
    altered = tiny_prior(tmp_path / "altered", list(FEATURES))
    assert load_prior(str(altered), names).fits(names)
    with open(altered / "prior.txt", "a", encoding="utf-8") as fh:
        fh.write("\n")
    with pytest.raises(UserError, match="sha256"):
        load_prior(str(altered), names)
    assert load_prior("off", names) is None
    with pytest.raises(UserError, match="no prior") as missing:  # a folder without one: one line saying so
        load_prior(str(tmp_path / "nowhere"), names)
    assert "\n" not in str(missing.value) and "bench/train_prior.py" in str(missing.value)


def test_fitting_a_prior_gives_the_same_bytes_and_learns_from_portable_features(agent_world):
    rows, past = [], PastCommits()
    targets = {c: "train" for c in train_ranker.load_splits(agent_world)["train"].commits}
    for state in walk_targets(agent_world.commits, agent_world.chunks, targets, BaselineConfig(),
                              repository_of(agent_world.commits), past=past):
        rows.append(candidate_rows(state, FeatureConfig()))
    uninformative = {r.commit for r in rows if past.message_counts.uninformative(BOILERPLATE[0])}  # all of them
    twice = prior_rows(rows, uninformative)
    task = [name for name in FEATURES if name in TASK_FEATURES]
    assert len(twice) == 2 * len(rows) and np.isnan(twice[-1].columns(task)).all()
    first = fit_prior(twice[: len(twice) // 2 + 10], twice[len(twice) // 2 + 10:])
    again = fit_prior(twice[: len(twice) // 2 + 10], twice[len(twice) // 2 + 10:])
    assert first.model_to_string() == again.model_to_string()
    assert first.feature_name() == list(FEATURES)
    used = {n for n, k in zip(first.feature_name(), first.feature_importance("split")) if k}
    assert used and used <= set(PRIOR_FEATURES)


# ---------------------------------------------------------------- the ranker starts from it


@pytest.fixture(scope="module")
def agent_rankers(agent_world, tmp_path_factory):
    """The agent world's ranker from the shipped prior (the default) and from nothing (prior: off)."""
    off = dataclasses.replace(agent_world, ranker_dir=tmp_path_factory.mktemp("off") / "ranker")
    train_ranker.run(train_ranker.Config(**FAST, prior="off"), off)
    train_ranker.run(train_ranker.Config(**FAST), agent_world)
    return agent_world, off


def test_the_ranker_holds_the_prior_trees_then_its_own(agent_rankers):
    paths, _ = agent_rankers
    prior, ranker = Prior.load(), Ranker.load(paths.ranker_dir)
    metrics = json.loads((paths.ranker_dir / "metrics.json").read_text())
    assert ranker.settings["prior"]["sha256"] == prior.digest == metrics["prior"]["sha256"]
    assert ranker.booster.num_trees() == prior.booster.num_trees() + metrics["own_trees"] > prior.booster.num_trees()
    saved = ranker.saved_test_rows()[1]
    rows = next(iter(saved.values()))
    x = rows.columns(ranker.features)
    np.testing.assert_allclose(ranker.booster.predict(x, num_iteration=prior.booster.num_trees()),
                               prior.booster.predict(x), rtol=1e-9, atol=1e-9)


def test_the_report_says_what_the_prior_did_against_the_ranker_fitted_from_nothing(agent_rankers):
    """train_ranker's ablation is the ranker fitted from nothing on the same rows: the figures of `prior: off`'s
    own ranker; evaluation.md's line gives both, and the gain between them."""
    on, off = (json.loads((paths.ranker_dir / "metrics.json").read_text()) for paths in agent_rankers)
    ablation = on["prior_ablation"]
    assert off["prior_ablation"] is None and ablation["targets"] == on["targets"]["test"] == 12
    for key in ("recall@1", "recall@5", "recall@10", "mrr"):
        assert ablation["ranker_without_prior"][key] == round(off["test"]["ranker"][key], 4)
        assert ablation["ranker"][key] == round(on["test"]["ranker"][key], 4)
    [line] = [x for x in report.prior_lines({"prior": on["prior"], "prior_ablation": ablation}) if x]
    gain = ablation["ranker"]["recall@5"] - ablation["ranker_without_prior"]["recall@5"]
    assert f"{'gained' if gain >= 0 else 'lost'} {abs(gain):.3f} recall@5 on train_ranker's 12 test targets" in line
    assert f"{ablation['ranker_without_prior']['recall@5']:.3f} / {ablation['ranker_without_prior']['mrr']:.3f} " \
           "fitted from nothing" in line
    assert report.prior_lines({"prior": None, "prior_ablation": None}) == []


def test_the_live_ranker_on_a_boilerplate_history_ranks_at_least_as_the_ranker(agent_rankers):
    """The live ranker's training targets get their ranker's scores (BASE_SCORE) from rankers fitted as the ranker
    was (on the prior, boilerplate tasks hidden), and it is fitted from the ranker's score and from nothing, the
    better on val kept. Before, fitted from nothing on scores of another scale than val's, it stopped at one tree
    and ranked the rest of a change far below the ranker (here 0.33 against 0.43 recall@5, one file revealed)."""
    paths, _ = agent_rankers
    live, ranker = LiveRanker.load(paths.ranker_dir), Ranker.load(paths.ranker_dir)
    assert live is not None and live.features[-1] == BASE_SCORE
    choice = live.info["choice"]
    assert set(choice) == {"from the ranker's score", "from nothing"} and live.info["chosen"] in choice
    best = max(choice.values(), key=lambda f: (f["recall@5"], f["mrr"]))
    kept = choice[live.info["chosen"]]
    assert (kept["recall@5"], kept["mrr"]) == (best["recall@5"], best["mrr"])
    assert live.info["starts_from"] == (BASE_SCORE if live.info["chosen"] == "from the ranker's score" else None)
    for label in ("1", "2", "half"):
        by = live.info["test"][label]
        assert by["live"]["commits"] == by["ranker"]["commits"] > 0
        assert by["live"]["recall@5"] >= by["ranker"]["recall@5"], (label, by)
    # Boosted from the ranker's score, its score is that score plus its trees' (either way, once saved and loaded).
    rows = next(iter(ranker.saved_test_rows()[1].values()))
    rows = rows.with_columns({name: np.zeros(len(rows.paths)) for name in LIVE_FEATURES})
    base = ranker.booster.predict(rows.columns(ranker.features))
    for start in (BASE_SCORE, None):
        variant = LiveRanker(live.booster, live.features, {**live.info, "starts_from": start})
        trees = live.booster.predict(rows.with_columns({BASE_SCORE: base}).columns(live.features))
        np.testing.assert_allclose(variant.scores(rows, ranker), trees + (base if start else 0.0),
                                   rtol=1e-6, atol=1e-6)  # float32 rows


def test_boilerplate_targets_teach_nothing_about_the_task(agent_rankers):
    """Every train and val message is boilerplate: the ranker's own trees never split on a task feature."""
    paths, off = agent_rankers
    for folder in (paths.ranker_dir, off.ranker_dir):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["messages"]["train"] == {"targets": metrics["targets"]["train"],
                                                "uninformative": metrics["targets"]["train"], "share": 1.0}
        assert metrics["messages"]["test"]["uninformative"] == 1 and metrics["messages"]["test"]["targets"] == 12
    ranker = Ranker.load(off.ranker_dir)
    assert ranker.settings["prior"] is None
    splits = dict(zip(ranker.booster.feature_name(), ranker.booster.feature_importance("split")))
    assert sum(splits.values()) > 0 and sum(splits[name] for name in TASK_FEATURES if name in splits) == 0


def test_the_task_counts_from_the_prior_where_the_history_taught_to_ignore_it(agent_rankers, tmp_path):
    """Every training message is boilerplate: the history's own ranker (prior: off) ranks the recent hub and
    ignores the user's task; boosted on from the prior, the same history's ranker follows the task."""
    on, off = agent_rankers
    # `prior: off` as a user writes it in YAML (which reads it as false) is off
    config = tmp_path / "config.yaml"
    config.write_text("train_ranker:\n  prior: off\n", encoding="utf-8")
    loaded = load_config(config, {"train_ranker": train_ranker.Config}, strict_sections=False)
    assert loaded["train_ranker"].prior == "off"
    tasks = {"charlie": "Rework the charlie module: lexer first", "delta": "Rework the delta module: store first"}
    answers = {(name, module): FileRanking.load(paths.ranker_dir).rank([], task)
               for name, paths in (("on", on), ("off", off)) for module, task in tasks.items()}
    for answer in answers.values():
        assert answer["method"] == "ranker" and len(answer["files"]) == 20

    def top(name, module, n=8) -> list[str]:
        return [f["path"] for f in answers[name, module]["files"][:n]]

    # From nothing, the history taught it that a task says nothing: both tasks get the same files.
    assert top("off", "charlie", 20) == top("off", "delta", 20)
    # From the prior, each task's module and file come first, and its module's files outnumber another's.
    assert top("on", "charlie")[0] == "crates/charlie/lexer.py" and top("on", "delta")[0] == "crates/delta/store.py"
    for module, other in (("charlie", "delta"), ("delta", "charlie")):
        mine = sum(path.startswith(f"crates/{module}/") for path in top("on", module))
        assert mine >= 2 and mine > sum(path.startswith(f"crates/{other}/") for path in top("on", module))


def test_the_evaluation_says_which_situation_it_measures(agent_rankers):
    paths, _ = agent_rankers
    evaluate.run(evaluate.Config(baselines_only=True), paths)
    result = json.loads(paths.evaluation.read_text())
    info = result["messages"]
    assert (info["targets"], info["uninformative"], info["share"]) == (12, 1, round(1 / 12, 4))
    assert info["informative_metrics"]["ranker"]["commits"] == 11
    # The informative targets' recall is the mean over the 11 per-commit rows, not the 12.
    per = {row["commit"]: row["ranker"]["recall@5"] for row in result["per_commit"]}
    test = train_ranker.load_splits(paths)["test"].commits
    informative = [per[c] for c in test[1:]]  # the first test commit is the boilerplate one
    assert info["informative_metrics"]["ranker"]["recall@5"] == pytest.approx(sum(informative) / 11)
    assert info["candidate_recall_by_size"]["4-10"]["commits"] == 12
    report = paths.evaluation.with_suffix(".md").read_text()
    assert "## The situation measured" in report and "1 of 12 target messages are uninformative" in report
    train = json.loads((paths.ranker_dir / "metrics.json").read_text())["targets"]["train"]
    assert f"fitted on {train} training targets, {train} of them with an uninformative message" in report


# ---------------------------------------------------------------- candidates for large commits


def test_large_commits_widen_the_candidates(agent_world):
    narrow = FeatureConfig(candidates_per_baseline=2, sibling_sources=0, pool_per_commit_size=0)
    wide = dataclasses.replace(narrow, pool_per_commit_size=3)
    test = set(train_ranker.load_splits(agent_world)["test"].commits)
    sizes = [len(rendered_files(chunks)) for _, chunks in iter_commits_with_chunks(agent_world.commits,
                                                                                  agent_world.chunks)]
    recalls = {"narrow": [], "wide": []}
    for state in walk_targets(agent_world.commits, agent_world.chunks, {c: "test" for c in test}, BaselineConfig(),
                              repository_of(agent_world.commits)):
        position = state.target.position
        assert state.past.typical_size() == pytest.approx(sum(sizes[max(0, position - 50): position])
                                                          / min(50, position))
        base, more = candidates(state, narrow), candidates(state, wide)
        wanted = int(3 * state.past.typical_size())
        assert more[: len(base)] == base and len(set(more)) == len(more)
        assert wanted <= len(more) <= wanted + len(base) and set(more) <= set(state.code.blobs)
        recalls["narrow"].append(candidate_recall(base, state.target.files))
        recalls["wide"].append(candidate_recall(more, state.target.files))
    assert len(recalls["wide"]) == 12
    # A pool of 3 commits' worth (27 of 49 files) holds most of a module the task names; the narrow one a third.
    assert sum(recalls["wide"]) / 12 >= 0.75 > 0.5 > sum(recalls["narrow"]) / 12


def test_small_commits_keep_their_candidates(make_repo):
    repo = make_repo("small")
    files = [f"src/m{i}.py" for i in range(20)]
    repo.commit("Start", {f: python_body(f"m{i}", ["start"], 0) for i, f in enumerate(files)})
    rng = random.Random(1)
    for v in range(1, 60):  # past the 50 commits that typical_size looks at: the first commit's 20 files drop out
        i = rng.randrange(20)
        repo.commit(f"Improve module {i} for users", {files[i]: python_body(f"m{i}", ["work"], v)})
    paths = scrape_and_chunk(repo.path, repo.path.parent / "small-out")
    last = [c["hash"] for c, _ in iter_commits_with_chunks(paths.commits, paths.chunks)][-5:]
    for state in walk_targets(paths.commits, paths.chunks, {c: "test" for c in last}, BaselineConfig(),
                              repository_of(paths.commits)):
        assert state.past.typical_size() == 1.0
        assert candidates(state, FeatureConfig(pool_per_commit_size=15)) == candidates(
            state, FeatureConfig(pool_per_commit_size=0))
        assert candidates(state, FeatureConfig(candidates_per_baseline=1, sibling_sources=0,
                                               pool_per_commit_size=15))  # 15 x 1: some files join


def test_relations_by_name_and_folder():
    seeds = ["crates/a/src/lib.rs", "crates/b/src/lib.rs", "crates/a/src/util.rs", "crates/a/Cargo.toml",
             "README.md"]
    paths = ["crates/c/src/lib.rs", "crates/a/src/lib.rs", "crates/a/src/new.rs", "crates/a/tests/lib.rs",
             "crates/a/README.md", "docs/lib.rs", "crates/a/src/deep/x.rs", "CHANGELOG.md"]
    same_name, same_folder, near = relation_counts(paths, seeds)
    # crates/c/src/lib.rs: a's and b's lib.rs differ from it in one folder; tests/lib.rs: a/src/lib.rs only
    # (b/src differs in two); the seed itself does not count.
    assert same_name == [2, 1, 0, 1, 0, 0, 0, 0]
    assert same_folder == [0, 1, 2, 0, 1, 0, 0, 1]
    # Parent folder or direct subfolders: crates/a/src's parent crates/a holds Cargo.toml; crates/a has src/ below
    # (2 seeds); the root has no parent, and no seed lies one level down from it.
    assert near == [0, 1, 1, 1, 2, 1, 2, 0]


# ---------------------------------------------------------------- uninformative messages


MESSAGES = ["codex cli local changes", "Fix the parser on empty input", "wip", "codex cli local changes",
            "Bump serde from 1.0.1 to 1.0.2 (#12)", "Add the renderer", "codex cli local changes",
            "Bump serde from 1.0.2 to 1.0.3 (#15)", "Release 1.2.3", "claude cli local changes",
            "Bump serde from 1.0.3 to 1.0.4 (#19)", "Fix the parser on empty input", "codex cli local changes"]


def test_the_uninformative_rule_on_a_real_history(make_repo):
    repo = make_repo("messages")
    for i, message in enumerate(MESSAGES):
        repo.commit(message, {f"f{i % 3}.py": f"X = {i}\n"})
    paths = scrape_and_chunk(repo.path, repo.path.parent / "messages-out")
    past = PastCommits()
    for commit, chunks in iter_commits_with_chunks(paths.commits, paths.chunks):
        past.observe(commit, chunks)
    counts = past.message_counts
    assert counts.total == len(MESSAGES) == len(repo.git("log", "--format=%H").split())
    judged = {m: counts.uninformative(m) for m in MESSAGES}
    # Repeated 3+ times (the Bump lines are one line once numbers are "#"), or fewer than two words.
    said_nothing = {"codex cli local changes", "wip", "Release 1.2.3"} | {m for m in MESSAGES if m.startswith("Bump")}
    assert {m for m, bad in judged.items() if bad} == said_nothing
    assert counts.informative_share() == pytest.approx(4 / 13)  # claude once, Fix twice, Add once
    # The statistics saved with the ranker keep the counts; a format-1 state (before them) starts empty.
    restored = PastCommits.from_state(json.loads(json.dumps(past.to_state())))
    assert restored.message_counts.informative_share() == counts.informative_share()
    old = {**past.to_state(), "format": 1}
    old.pop("message_counts")
    assert np.isnan(PastCommits.from_state(old).message_counts.informative_share())


def test_a_line_must_repeat_more_in_a_long_history():
    counts = MessageCounts()
    for i in range(200):
        counts.add(f"Change number {i} of the widget framework in module {chr(97 + i % 26)}{chr(97 + i // 26)}")
    for _ in range(3):
        counts.add("sync the local changes")
    assert counts.threshold() == pytest.approx(0.02 * 203) and not counts.uninformative("sync the local changes")
    counts.add("sync the local changes")
    counts.add("sync the local changes")
    assert counts.uninformative("Sync the local changes\n\nbody") and counts.informative_share() == pytest.approx(
        200 / 205)
