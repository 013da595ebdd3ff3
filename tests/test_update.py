"""pipeline.py --update and --rollback on a real tiny repository and a tiny model (every stage runs for real).

The first --update of an empty output folder runs the full pipeline (and says why); a copy of that
folder and its repository is then the starting point of each test. Most runs are in-process (the
stages' imports are paid once); the kill test runs the pipeline as a subprocess and kills it -9.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repo2model.stages import pipeline
from conftest import ROOT
from helpers_update import ALICE, CAROL, CONFIG, Project, add_commits, build_base
from repo2model.core.artifacts import iter_commit_dicts
from repo2model.training.models import load_trained_model
from repo2model.core.paths import ArtifactPaths
from repo2model.stages.generations import Generations, Journal, exchange, identity


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """40 commits learnt by the full pipeline, reached by an --update that had no model to continue."""
    folder = tmp_path_factory.mktemp("update-base")
    project = build_base(folder)
    results = project.results()
    assert results["update"] == {"full_run": f"no trained model to continue in {project.out / 'model'}"}
    assert all(stage["status"] == "ok" for stage in results["stages"].values())
    assert not (project.out / "next").exists() and not (project.out / "previous").exists()
    return folder


@pytest.fixture
def project(base, tmp_path) -> Project:
    shutil.copytree(base, tmp_path / "project", symlinks=True)
    return Project(tmp_path / "project")


def test_update_learns_new_commits_switches_the_model_then_is_a_no_op_and_rolls_back(project, capsys):
    old_marker = project.marker()
    old_train = project.split("train")
    old_ranker = {p.name: p.read_bytes() for p in (project.out / "ranker").iterdir() if p.is_file()}
    assert project.update("--rollback") == 2  # nothing to roll back to yet: one line
    assert "no previous model to restore" in capsys.readouterr().err

    new = add_commits(project.repo, 8, 40, authors=(CAROL, ALICE), modules=("core", "cli"))
    assert project.update("--update") == 0
    report = project.results()["update"]
    assert report["new_commits"] == 8 and report["removed_commits"] == 0
    assert report["spelled_out_authors"] == 1 and report["spelled_out_modules"] >= 1  # Carol, the cli module
    assert report["steps"] == 4 and report["val_loss_after"] <= report["val_loss_before"]
    assert report["switched"][-2:] == ["ranker", "model"]  # the model folder last

    # The new model continues the old one; the old one is kept whole in previous/.
    marker = project.marker()
    assert marker["warm_start"] == {"folder": str(project.out / "model"), "trained_at": old_marker["trained_at"],
                                    "last_commit": old_marker["last_commit"]}
    assert project.marker("previous/model") == old_marker
    load_trained_model(project.out / "model")
    assert not (project.out / "next").exists()

    # The split moved forward: the newest commits are the test set, nothing trained on is evaluated on.
    train, val, test = (project.split(name) for name in ("train", "val", "test"))
    trained = set(train.meta["trained_commits"])
    assert trained >= set(old_train.commits) | set(train.commits)
    assert not trained & (set(val.commits) | set(test.commits))
    assert new[-1] in test.commits and set(test.commits) <= set(new)
    assert set(project.split("train", project.out / "previous").commits) == set(old_train.commits)
    ranker = json.loads((project.out / "ranker" / "metrics.json").read_text())
    assert ranker["targets"]["train"] > len(train.commits)  # refitted on every commit trained on, not the replay sample
    assert json.loads((project.out / "evaluation.json").read_text()) != json.loads(
        (project.out / "previous" / "evaluation.json").read_text())

    # Nothing new: the second update in a row does nothing, and says so.
    updated = (project.out / "model" / "training_info.json").read_bytes()
    assert project.update("--update") == 0
    results = project.results()
    assert results["update"]["nothing_new"] is True
    assert [s["status"] for name, s in results["stages"].items() if name != "git_scraper"] == ["skipped"] * 7
    assert "update: nothing new" in (project.out / "pipeline.log").read_text()
    assert (project.out / "model" / "training_info.json").read_bytes() == updated

    # --rollback puts the old generation back (model, ranker, splits), keeping the new one in previous/.
    assert project.update("--rollback") == 0
    assert project.marker() == old_marker and project.marker("previous/model")["warm_start"] is not None
    assert {p.name: p.read_bytes() for p in (project.out / "ranker").iterdir() if p.is_file()} == old_ranker
    assert project.split("train").commits == old_train.commits
    assert "rollback: restored the model trained at " + old_marker["trained_at"] in (project.out / "pipeline.log").read_text()
    assert project.update("--rollback") == 0  # and back again
    assert (project.out / "model" / "training_info.json").read_bytes() == updated

    # A full run trains another model: the one in previous/ is older than it, so there is nothing to roll back to.
    capsys.readouterr()
    assert project.update("--stage", "train_model", "--force") == 0
    assert project.marker()["warm_start"] is None  # trained from scratch, not the update's model any more
    assert project.update("--rollback") == 2
    assert "is not the model the last update switched in" in capsys.readouterr().err
    assert project.marker("previous/model") == old_marker  # kept, not removed


def test_an_update_refits_and_evaluates_what_is_new_and_carries_the_rest(project):
    """A few new commits: the test split keeps some of the live evaluation's targets. Their figures are carried
    (the history before them is the same), only the new targets are walked and scored; the ranker keeps the saved
    LM columns of the model the update continued and the symbol ranker it fitted."""
    live_eval = json.loads((project.out / "evaluation.json").read_text())
    live_symbols = json.loads((project.out / "ranker" / "symbol_ranker.json").read_text())
    live_ranker = json.loads((project.out / "ranker" / "live.json").read_text())
    new = add_commits(project.repo, 3, 40)
    assert project.update("--update") == 0
    evaluation = json.loads((project.out / "evaluation.json").read_text())
    test = project.split("test").commits
    update = evaluation["update"]
    assert update["scored"] + update["carried"] == evaluation["targets"] == len(test)
    assert update["carried"] >= 1 and update["scored"] >= 1
    before = {row["commit"]: row for row in live_eval["per_commit"]}
    scored = []
    for row in evaluation["per_commit"]:
        if row["commit"] in before and row["history"] == before[row["commit"]]["history"]:
            assert row == before[row["commit"]]  # carried whole: every predictor's figures
        else:
            scored.append(row["commit"])
    assert len(scored) == update["scored"] and set(scored) <= set(new)
    assert update["metrics_scored"]["fusion"]["commits"] == update["scored"]
    assert evaluation["metrics"]["fusion"]["commits"] == len(test)
    assert "carries every other target" in update["note"]

    ranker = json.loads((project.out / "ranker" / "metrics.json").read_text())
    assert ranker["rows"]["computed"] == 3 and ranker["rows"]["lm_columns_computed"] == 0
    assert ranker["rows"]["lm_columns_kept_from_an_earlier_model"] >= 1
    symbols = json.loads((project.out / "ranker" / "symbol_ranker.json").read_text())
    assert symbols["metrics"]["carried_over"]["fitted_at_targets"] == live_symbols["metrics"]["fitted_at_targets"]
    history = json.loads((project.out / "ranker" / "symbol_history.json").read_text())
    assert history != json.loads((project.out / "previous" / "ranker" / "symbol_history.json").read_text())
    log = (project.out / "pipeline.log").read_text()
    assert "the symbol ranker fitted at" in log and "is kept" in log
    # the live ranker is refitted as the last full fit chose (from the ranker's score or from nothing), not chosen again
    refitted = json.loads((project.out / "ranker" / "live.json").read_text())
    assert refitted["chosen"] == live_ranker["chosen"] and refitted["starts_from"] == live_ranker["starts_from"]
    assert refitted["choice"] == {**live_ranker["choice"], "kept_from": "the last full fit"}


def test_force_push_is_detected_and_the_update_goes_on(project):
    before = project.commits()
    gone = before[-3:]
    project.repo.git("reset", "-q", "--hard", before[-4])
    add_commits(project.repo, 5, 60, modules=("store", "net"))
    assert project.update("--update") == 0
    report = project.results()["update"]
    assert report["removed_commits"] == 3 and sorted(report["removed_sample"]) == sorted(gone)
    assert report["new_commits"] == 5
    log = (project.out / "pipeline.log").read_text()
    assert "update: the history was rewritten" in log and "3 commits the last run had are gone" in log
    commits = [record["hash"] for record in iter_commit_dicts(project.out / "commits.json")]
    assert not set(gone) & set(commits) and len(commits) == len(before) - 3 + 5
    assert not set(gone) & {json.loads(line)["commit"] for line in (project.out / "chunks.jsonl").open()}
    examples = set().union(*(project.split(name).commits for name in ("train", "val", "test")))
    assert not set(gone) & examples  # dropped from every split (the model keeps what it learnt from them)
    assert project.marker()["warm_start"]["trained_at"] == project.marker("previous/model")["trained_at"]


def test_an_update_runs_the_full_pipeline_when_the_model_cannot_be_continued(project):
    """A setting the live model cannot continue with (here its depth): the full pipeline, saying why."""
    old_marker = project.marker()
    project.config.write_text(project.config.read_text().replace("num_layers: 1", "num_layers: 2"), encoding="utf-8")
    add_commits(project.repo, 3, 40)
    assert project.update("--update") == 0
    why = project.results()["update"]["full_run"]
    assert why.startswith("the live model cannot be continued with these settings (train_model.num_layers: 2, "
                          "but the warm-start model ")
    marker = project.marker()
    assert marker["warm_start"] is None and marker["trained_at"] != old_marker["trained_at"]
    assert not (project.out / "next").exists()


def test_update_and_rollback_flags_that_do_not_go_together(capsys):
    for args in (["--update", "--stage", "tokenizer"], ["--rollback", "--update"], ["--rollback", "--force"]):
        with pytest.raises(SystemExit) as stopped:
            pipeline.main(args)
        assert stopped.value.code == 2
        assert "leave out" in capsys.readouterr().err


def test_a_switch_killed_at_any_step_is_finished_by_the_next_run(tmp_path):
    """Each state a kill can leave inside the switch (built on disk step by step) ends in the same place."""
    out = tmp_path / "out"
    for step in range(4):
        shutil.rmtree(out, ignore_errors=True)
        for generation, folder in (("old", out), ("new", out / "next")):
            (folder / "model").mkdir(parents=True)
            (folder / "model" / "training_info.json").write_text(json.dumps({"trained_at": generation}))
            (folder / "training_data_train.pt").write_text(generation)
        generations = Generations(ArtifactPaths.under(out))
        journal = generations.begin(base={"trained_at": "old"})
        journal.state = "switching"
        journal.switch = {name: list(identity(out / "next" / name)) for name in generations.items()}
        journal.save(out / "next")
        (out / "previous").mkdir()
        # The kill came: 0 before any move, 1 after the split's exchange, 2 after the model's exchange
        # (its old version still in next/), 3 with the model moved the slow way halfway (no live model).
        if step >= 1:
            assert exchange(out / "next" / "training_data_train.pt", out / "training_data_train.pt")
            os.rename(out / "next" / "training_data_train.pt", out / "previous" / "training_data_train.pt")
        if step == 2:
            assert exchange(out / "next" / "model", out / "model")
        if step == 3:
            os.rename(out / "model", out / "previous" / "model")
        assert generations.pending().state == "switching"
        assert pipeline.main(["--config", str(write_config(tmp_path)), "--rollback"]) == 0  # any run finishes it
        # ... and then the rollback it was asked for: the generations trade places once more
        assert json.loads((out / "model" / "training_info.json").read_text()) == {"trained_at": "old"}
        assert json.loads((out / "previous" / "model" / "training_info.json").read_text()) == {"trained_at": "new"}
        assert (out / "training_data_train.pt").read_text() == "old"
        assert (out / "previous" / "training_data_train.pt").read_text() == "new"
        assert not (out / "next").exists()


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "switch.yaml"
    config.write_text("pipeline:\n  output_dir: out\n", encoding="utf-8")
    return config


# ------------------------------------------------------------------ kill -9


def start_update(project: Project, config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "pipeline.py"), "--config", str(config), "--update"],
                            cwd=project.folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_when(process: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    """kill -9 the pipeline (and its workers) as soon as `ready()`; fails if it ended before."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the update ended before {what}: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def training_step(project: Project) -> int:
    try:
        lines = (project.out / "next" / "training_logs" / "steps.jsonl").read_text().splitlines()
        return max((json.loads(line).get("step", 0) for line in lines if line.endswith("}")), default=0)
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_a_killed_update_leaves_the_live_model_and_a_rerun_completes_it(project):
    config = project.folder / "long-update.yaml"  # long enough a training to be killed in the middle of it
    # 150 steps whatever the examples number (update_epochs would stop it after a few passes over them)
    config.write_text(CONFIG.format(update_steps=150).replace("  update_max_steps:", "  update_epochs: null\n"
                                                              "  update_max_steps:"), encoding="utf-8")
    live = (project.out / "model" / "training_info.json").read_bytes()
    add_commits(project.repo, 8, 40)

    def live_model_is_the_old_one():
        assert (project.out / "model" / "training_info.json").read_bytes() == live
        load_trained_model(project.out / "model")

    process = start_update(project, config)
    kill_when(process, lambda: "git_scraper" in (Journal.read(project.out / "next") or Journal()).completed,
              "the scrape")
    live_model_is_the_old_one()
    assert "git_scraper" in Journal.read(project.out / "next").completed

    process = start_update(project, config)
    kill_when(process, lambda: training_step(project) >= 10, "10 training steps")
    live_model_is_the_old_one()
    journal = Journal.read(project.out / "next")
    assert journal.state == "running" and "dataset_builder" in journal.completed
    assert list((project.out / "next" / "checkpoints").glob("step-*"))

    finished = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "--config", str(config), "--update"],
                              cwd=project.folder, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "update: continuing the update started at " + journal.started_at in finished.stderr
    assert "train_model: resuming from" in finished.stderr
    report = project.results()["update"]
    assert report["new_commits"] == 8 and report["steps"] == 150
    assert not (project.out / "next").exists()
    assert (project.out / "previous" / "model" / "training_info.json").read_bytes() == live
    assert project.marker()["warm_start"]["trained_at"] == json.loads(live)["trained_at"]
    load_trained_model(project.out / "model")
