"""The orchestrator: stage order, up-to-date skipping, results file, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pipeline
from conftest import ROOT


def run_pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "pipeline.py"), *args], capture_output=True, text=True, cwd=ROOT
    )


def write_config(tmp_path: Path, repo: Path, extra: str = "") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"pipeline:\n  output_dir: out\ngit_scraper:\n  repo: {repo}\n{extra}", encoding="utf-8"
    )
    return config


def results(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "pipeline_results.json").read_text())["stages"]


def test_list_stages_in_order():
    proc = run_pipeline("--list-stages")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == ["git_scraper", "semantic_chunker", "tokenizer", "dataset_builder", "train_model", "evaluate"]
    assert "not implemented" not in proc.stdout


def test_stage_is_skipped_when_up_to_date_and_rerun_when_not(tmp_path, make_repo):
    repo = make_repo()
    repo.commit("first", {"src/lib.rs": "fn a() {}\n"})
    config = write_config(tmp_path, repo.path)

    first = run_pipeline("--config", str(config), "--stage", "git_scraper")
    assert first.returncode == 0, first.stderr
    stage = results(tmp_path)["git_scraper"]
    assert stage["status"] == "ok"
    commits_path = tmp_path / "out" / "commits.json"
    assert stage["outputs"][str(commits_path)] == commits_path.stat().st_size
    assert set(results(tmp_path)) == {"git_scraper"}
    log = (tmp_path / "out" / "pipeline.log").read_text()
    assert "git_scraper: done" in log

    second = run_pipeline("--config", str(config), "--stage", "git_scraper")
    assert second.returncode == 0
    assert results(tmp_path)["git_scraper"]["status"] == "skipped"
    assert "up to date" in second.stderr

    # The repository moved on: the scraper's input changed.
    repo.commit("second", {"src/lib.rs": "fn a() {}\nfn b() {}\n"})
    third = run_pipeline("--config", str(config), "--stage", "git_scraper")
    assert results(tmp_path)["git_scraper"]["status"] == "ok", third.stderr
    assert json.loads(commits_path.read_text())["metadata"]["total_commits"] == 2

    # The stage's config section changed.
    config = write_config(tmp_path, repo.path, "  max_patch_bytes: 5000\n")
    run_pipeline("--config", str(config), "--stage", "git_scraper")
    assert results(tmp_path)["git_scraper"]["status"] == "ok"

    # --force reruns an up-to-date stage.
    run_pipeline("--config", str(config), "--stage", "git_scraper")
    assert results(tmp_path)["git_scraper"]["status"] == "skipped"
    run_pipeline("--config", str(config), "--stage", "git_scraper", "--force")
    assert results(tmp_path)["git_scraper"]["status"] == "ok"

    # A deleted output is not up to date.
    commits_path.unlink()
    run_pipeline("--config", str(config), "--stage", "git_scraper")
    assert results(tmp_path)["git_scraper"]["status"] == "ok"
    assert commits_path.exists()


def test_failed_stage_stops_the_run_unless_asked_to_continue(tmp_path):
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    config = write_config(tmp_path, not_a_repo)

    proc = run_pipeline("--config", str(config))
    assert proc.returncode == 1
    stages = results(tmp_path)
    assert stages["git_scraper"]["status"] == "failed"
    assert "not a git repository" in stages["git_scraper"]["error"]
    assert all(stages[name]["status"] == "not_run" for name in pipeline.STAGE_NAMES[1:])
    assert "Traceback" not in proc.stderr

    proc = run_pipeline("--config", str(config), "--continue-on-error")
    assert proc.returncode == 1
    stages = results(tmp_path)
    assert stages["semantic_chunker"]["status"] == "failed"
    assert "run the git_scraper stage first" in stages["semantic_chunker"]["error"]


def test_bad_config_is_one_line_and_exit_2(tmp_path, make_repo):
    repo = make_repo()
    repo.commit("first", {"a.py": "x = 1\n"})
    config = write_config(tmp_path, repo.path, "  max_patch_byte: 5\n")
    proc = run_pipeline("--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'max_patch_byte' in section 'git_scraper'" in proc.stderr
    assert not (tmp_path / "out").exists()

    missing = run_pipeline("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_default_config_is_valid():
    """config.yaml as shipped loads against every stage's and tool's Config."""
    from repo2model.config import PipelineConfig, load_config

    sections = {"pipeline": PipelineConfig}
    for name, module_name in pipeline.STAGES:
        stage = pipeline.load_stage(name, module_name)
        sections[stage.section] = stage.module.Config
    for tool in pipeline.TOOLS:
        module = pipeline.load_stage(tool, tool, needs=("SECTION", "Config")).module
        sections[module.SECTION] = module.Config
    loaded = load_config(ROOT / "config.yaml", sections, strict_sections=True)
    assert loaded["git_scraper"].repo == ROOT
    assert loaded["model_training"].mode == "scratch"
