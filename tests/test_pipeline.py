"""The orchestrator: stage order, up-to-date skipping, results file, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from repo2model.stages import pipeline
from conftest import ROOT


def run_pipeline(*args: str) -> subprocess.CompletedProcess:
    """pipeline.py as a user runs it (a fresh process: imports every stage, so seconds each)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "pipeline.py"), *args], capture_output=True, text=True, cwd=ROOT
    )


def run_main(capsys, *args: str) -> tuple[int, str]:
    """pipeline.main in this process (the stages imported once): exit code and what went to stderr."""
    capsys.readouterr()
    code = pipeline.main(list(args))
    return code, capsys.readouterr().err


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
    assert names == list(pipeline.STAGE_NAMES)
    core = ["git_scraper", "semantic_chunker", "tokenizer", "dataset_builder", "train_model", "evaluate"]
    assert [name for name in names if name in core] == core and names[-1] == "evaluate"
    assert all(len(line.split(None, 1)) == 2 for line in proc.stdout.splitlines())  # each with its docstring
    off = [line.split()[0] for line in proc.stdout.splitlines() if "(off by default" in line]
    assert off == list(pipeline.OPTIONAL_STAGES) == ["export"]
    assert names.index("train_model") < names.index("export") < names.index("train_ranker")


def test_stage_is_skipped_when_up_to_date_and_rerun_when_not(tmp_path, make_repo, capsys):
    repo = make_repo()
    repo.commit("first", {"src/lib.rs": "fn a() {}\n"})
    config = write_config(tmp_path, repo.path)

    code, err = run_main(capsys, "--config", str(config), "--stage", "git_scraper")
    assert code == 0, err
    stage = results(tmp_path)["git_scraper"]
    assert stage["status"] == "ok"
    commits_path = tmp_path / "out" / "commits.json"
    assert stage["outputs"][str(commits_path)] == commits_path.stat().st_size
    assert set(results(tmp_path)) == {"git_scraper"}
    log = (tmp_path / "out" / "pipeline.log").read_text()
    assert "git_scraper: done" in log

    code, err = run_main(capsys, "--config", str(config), "--stage", "git_scraper")
    assert code == 0
    assert results(tmp_path)["git_scraper"]["status"] == "skipped"
    assert "up to date" in err

    # The repository moved on: the scraper's input changed.
    repo.commit("second", {"src/lib.rs": "fn a() {}\nfn b() {}\n"})
    code, err = run_main(capsys, "--config", str(config), "--stage", "git_scraper")
    assert results(tmp_path)["git_scraper"]["status"] == "ok", err
    assert json.loads(commits_path.read_text())["metadata"]["total_commits"] == 2

    # The stage's config section changed.
    config = write_config(tmp_path, repo.path, "  max_patch_bytes: 5000\n")
    run_main(capsys, "--config", str(config), "--stage", "git_scraper")
    assert results(tmp_path)["git_scraper"]["status"] == "ok"

    # --force reruns an up-to-date stage.
    run_main(capsys, "--config", str(config), "--stage", "git_scraper")
    assert results(tmp_path)["git_scraper"]["status"] == "skipped"
    run_main(capsys, "--config", str(config), "--stage", "git_scraper", "--force")
    assert results(tmp_path)["git_scraper"]["status"] == "ok"

    # A deleted output is not up to date.
    commits_path.unlink()
    run_main(capsys, "--config", str(config), "--stage", "git_scraper")
    assert results(tmp_path)["git_scraper"]["status"] == "ok"
    assert commits_path.exists()


def test_failed_stage_stops_the_run_unless_asked_to_continue(tmp_path, capsys):
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    config = write_config(tmp_path, not_a_repo)

    code, err = run_main(capsys, "--config", str(config))
    assert code == 1
    stages = results(tmp_path)
    assert stages["git_scraper"]["status"] == "failed"
    assert "not a git repository" in stages["git_scraper"]["error"]
    assert all(stages[name]["status"] == "not_run" for name in pipeline.RUN_BY_DEFAULT[1:])
    assert "Traceback" not in err

    code, err = run_main(capsys, "--config", str(config), "--continue-on-error")
    assert code == 1
    stages = results(tmp_path)
    assert stages["semantic_chunker"]["status"] == "failed"
    assert "run the git_scraper stage first" in stages["semantic_chunker"]["error"]


def test_bad_config_is_one_line_and_exit_2(tmp_path, make_repo, capsys):
    repo = make_repo()
    repo.commit("first", {"a.py": "x = 1\n"})
    config = write_config(tmp_path, repo.path, "  max_patch_byte: 5\n")
    proc = run_pipeline("--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'max_patch_byte' in section 'git_scraper'" in proc.stderr
    assert not (tmp_path / "out").exists()

    code, err = run_main(capsys, "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "config file not found" in err


def test_default_config_is_valid():
    """config.yaml as shipped loads against every stage's and tool's Config."""
    from repo2model.core.config import load_config

    stages = [pipeline.Stage(name, pipeline.import_stage(module)) for name, module in pipeline.STAGES]
    loaded = load_config(ROOT / "config.yaml", pipeline.section_classes(stages), strict_sections=True)
    assert loaded["git_scraper"].repo == ROOT
    assert loaded["train_model"].mode == "scratch"


def test_export_runs_only_when_enabled_or_asked_and_its_section_loads_for_every_stage(tmp_path, make_repo):
    """A config with an `export:` section loads for every stage and tool run alone (each reads only its own
    sections, as its main does); a whole run leaves the export out unless export.enabled is true, and
    `--stage export` runs it regardless."""
    import argparse

    from repo2model.core.cli import load_stage
    from repo2model.core.config import load_config

    repo = make_repo()
    repo.commit("first", {"a.py": "x = 1\n"})
    config = write_config(tmp_path, repo.path, "export:\n  types: [f16]\n  modelfile: f16\n")
    modules = [pipeline.import_stage(module) for _, module in pipeline.STAGES]
    modules += [pipeline.import_stage(tool, pipeline.TOOL_PROTOCOL) for tool in pipeline.TOOLS]
    for module in modules:
        cfg, _, _ = load_stage(argparse.Namespace(config=config), module.SECTION, module.Config)
        assert isinstance(cfg, module.Config), module.__name__
    stages = [pipeline.Stage(name, module) for (name, _), module in zip(pipeline.STAGES, modules)]
    loaded = load_config(config, pipeline.section_classes(stages), strict_sections=True)
    assert loaded["export"].types == ["f16"] and loaded["export"].enabled is False

    def chosen(only=None):
        return [stage.name for stage in pipeline.stages_of_run(stages, loaded, only)]

    assert chosen() == list(pipeline.RUN_BY_DEFAULT) and "export" not in chosen()
    assert "export" in chosen("export")
    write_config(tmp_path, repo.path, "export:\n  enabled: true\n")
    loaded = load_config(config, pipeline.section_classes(stages), strict_sections=True)
    assert chosen() == list(pipeline.STAGE_NAMES)


def test_output_dir_that_cannot_be_created_is_one_line(tmp_path, make_repo, capsys):
    repo = make_repo()
    repo.commit("first", {"a.py": "x = 1\n"})
    (tmp_path / "blocker").write_text("a regular file\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"pipeline:\n  output_dir: blocker/out\ngit_scraper:\n  repo: {repo.path}\n")
    code, err = run_main(capsys, "--config", str(config))
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "blocker/out: cannot create output folder" in err
    assert (tmp_path / "blocker").read_text() == "a regular file\n"


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path, make_repo, capsys):
    repo = make_repo()
    repo.commit("first", {"a.py": "x = 1\n"})
    config = write_config(tmp_path, repo.path)
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / ".chunks.jsonl.x1y2z3w4.tmp", out / "checkpoints" / ".step-10.abcdefgh.tmp", out / ".tokenizer.old-77"]
    for path in stale[:2]:
        path.write_text("partial")
    stale[2].mkdir()
    keep = [out / "notes.tmp", out / ".mine.tmp"]
    for path in keep:
        path.write_text("user's")
    code, err = run_main(capsys, "--config", str(config), "--stage", "git_scraper")
    assert code == 0, err
    assert not any(path.exists() for path in stale)
    assert all(path.read_text() == "user's" for path in keep)
    assert "removed 2 temporaries left by an interrupted run" in err


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path, make_repo, capsys):
    import fcntl

    repo = make_repo()
    repo.commit("first", {"a.py": "x = 1\n"})
    config = write_config(tmp_path, repo.path)
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / pipeline.LOCK_NAME, "a+") as held:  # what a running pipeline holds
        fcntl.flock(held, fcntl.LOCK_EX)
        code, err = run_main(capsys, "--config", str(config), "--stage", "git_scraper")
    assert code == 2
    assert "another pipeline run is using this output folder" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "commits.json").exists()
    assert run_main(capsys, "--config", str(config), "--stage", "git_scraper")[0] == 0


def small_history(make_repo):
    repo = make_repo()
    repo.commit("add lib", {"src/lib.rs": "pub fn a() -> u32 {\n    1\n}\n", "README.md": "# demo\n"})
    repo.commit("add b", {"src/lib.rs": "pub fn a() -> u32 {\n    1\n}\n\npub fn b() -> u32 {\n    2\n}\n"})
    repo.commit("py", {"tool/run.py": "def main():\n    return 3\n"})
    return repo


def test_compressed_artifacts_hold_the_same_bytes(tmp_path, make_repo, monkeypatch):
    import zstandard

    repo = small_history(make_repo)
    monkeypatch.setattr(pipeline, "STAGES", pipeline.STAGES[:2])  # in-process, the first two stages
    plain_dir, packed_dir = tmp_path / "plain", tmp_path / "packed"
    plain_dir.mkdir()
    packed_dir.mkdir()
    plain = write_config(plain_dir, repo.path)
    packed = write_config(packed_dir, repo.path, "pipeline_extra")
    packed.write_text(packed.read_text().replace("pipeline:\n", "pipeline:\n  compress: true\n").replace("pipeline_extra", ""))
    for config in (plain, packed):
        assert pipeline.run_pipeline(config) == 0
    unpack = zstandard.ZstdDecompressor()
    for name in ("commits.json", "chunks.jsonl"):
        assert not (packed_dir / "out" / name).exists()
        with open(packed_dir / "out" / f"{name}.zst", "rb") as fh:
            assert unpack.stream_reader(fh).read() == (plain_dir / "out" / name).read_bytes()
    assert (packed_dir / "out" / "chunking_stats.json").exists()

    # Switching compress off writes plain files and removes the stale compressed ones.
    packed.write_text(packed.read_text().replace("compress: true", "compress: false"))
    assert pipeline.run_pipeline(packed) == 0
    names = ("commits.json", "commits.json.zst", "chunks.jsonl", "chunks.jsonl.zst")
    assert sorted(name for name in names if (packed_dir / "out" / name).exists()) == ["chunks.jsonl", "commits.json"]


def test_removed_intermediates_keep_stages_up_to_date_and_come_back_when_needed(tmp_path, make_repo, monkeypatch):
    """keep_intermediates: false on the first two stages: commits.json (read by the chunker) and
    chunks.jsonl (read by none of them) go at the end; nothing reruns until something changes."""
    repo = small_history(make_repo)
    monkeypatch.setattr(pipeline, "STAGES", pipeline.STAGES[:2])
    config = write_config(tmp_path, repo.path)
    config.write_text(config.read_text().replace("pipeline:\n", "pipeline:\n  keep_intermediates: false\n"))
    out = tmp_path / "out"

    assert pipeline.run_pipeline(config) == 0
    assert not (out / "commits.json").exists() and not (out / "chunks.jsonl").exists()
    assert (out / "chunking_stats.json").exists()
    stats = (out / "chunking_stats.json").read_bytes()

    assert pipeline.run_pipeline(config) == 0
    assert {s["status"] for s in results(tmp_path).values()} == {"skipped"}

    # The chunker's config changes: it needs commits.json back, so the scraper reruns first.
    config.write_text(config.read_text() + "semantic_chunker:\n  max_chunk_size: 150\n")
    assert pipeline.run_pipeline(config) == 0
    stages = results(tmp_path)
    assert stages["git_scraper"]["status"] == "ok" and "regenerated commits.json" in stages["git_scraper"]["reason"]
    assert stages["semantic_chunker"]["status"] == "ok"
    assert not (out / "commits.json").exists()
    assert pipeline.run_pipeline(config) == 0
    assert {s["status"] for s in results(tmp_path).values()} == {"skipped"}

    # The repository moves on: both rerun, and the chunker sees the new commit.
    repo.commit("more", {"tool/run.py": "def main():\n    return 4\n"})
    assert pipeline.run_pipeline(config) == 0
    assert {s["status"] for s in results(tmp_path).values()} == {"ok"}
    assert json.loads((out / "chunking_stats.json").read_text())["commits"] == 4
    assert (out / "chunking_stats.json").read_bytes() != stats

    # With --stage, the stages that read an intermediate did not all run: it is kept.
    monkeypatch.setattr(pipeline, "STAGES", pipeline.STAGES[:2])
    assert pipeline.run_pipeline(config, only="git_scraper", force=True) == 0
    assert (out / "commits.json").exists()


def test_log_file_that_cannot_be_written_is_one_line(tmp_path, make_repo, capsys):
    repo = make_repo()
    repo.commit("first", {"a.py": "x = 1\n"})
    (tmp_path / "blocker").write_text("x")
    config = write_config(tmp_path, repo.path)
    config.write_text(config.read_text().replace("pipeline:\n", "pipeline:\n  log_file: blocker/run.log\n"))
    assert pipeline.main(["--config", str(config), "--stage", "git_scraper"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "blocker: cannot create output folder" in err[0], err


def test_set_reaches_the_stages_changes_their_fingerprint_and_is_recorded(tmp_path, make_repo, capsys):
    repo = make_repo()
    repo.commit("first", {"src/lib.rs": "fn a() {}\n", "notes.txt": "hello\n"})
    config = write_config(tmp_path, repo.path)
    code, err = run_main(capsys, "--config", str(config), "--stage", "git_scraper")
    assert code == 0, err
    only_rust = ("--stage", "git_scraper", "--set", "git_scraper.file_filters=[.rs]")
    code, err = run_main(capsys, "--config", str(config), *only_rust)
    assert code == 0, err
    stage = results(tmp_path)["git_scraper"]
    assert stage["status"] == "ok"  # a setting changed: not up to date
    commits = json.loads((tmp_path / "out" / "commits.json").read_text())
    assert {f["path"]: f["patch"] is None for c in commits["commits"] for f in c["files"]} == {
        "src/lib.rs": False, "notes.txt": True}
    recorded = json.loads((tmp_path / "out" / "pipeline_results.json").read_text())
    assert recorded["set"] == ["git_scraper.file_filters=[.rs]"] and recorded["config"] == str(config)
    code, err = run_main(capsys, "--config", str(config), *only_rust)
    assert results(tmp_path)["git_scraper"]["status"] == "skipped"


def test_a_bad_set_on_the_pipeline_is_one_line_and_exit_2(tmp_path, make_repo, capsys):
    repo = make_repo()
    repo.commit("first", {"a.py": "x = 1\n"})
    config = write_config(tmp_path, repo.path)
    for setting, expected in (
        ("predict.max_new_tokenz=3", "error: --set predict.max_new_tokenz=3: unknown key 'max_new_tokenz' in section "
                                     "'predict' (allowed: "),
        ("serve.port=http", "error: --set: serve.port: expected int, got str ('http')"),
        ("train_model.max_steps", "error: --set train_model.max_steps: expected section.key=value"),
    ):
        code, err = run_main(capsys, "--config", str(config), "--set", setting)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(expected), (setting, lines)
    assert not (tmp_path / "out").exists()  # refused before any stage ran
