"""index.py, the stage: CLI and pipeline runs on real repositories, incremental reruns, filters, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

from repo2model.core.artifacts import CommitsWriter
from repo2model.core.paths import ArtifactPaths
from repo2model.git.scraping import ScraperConfig
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.onnx_model import MIN_COSINE, MIN_MEAN_COSINE
from repo2model.retrieval.unit_index import UnitIndex
from repo2model.stages import index, pipeline


def run_script(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "index.py"), *args], capture_output=True, text=True, cwd=cwd)


def small_repo(make_repo):
    repo = make_repo("project")
    repo.commit("add parser", {"pkg/parse.py": "def parse(s):\n    return s.split(',')\n",
                               "target/debug/gen.py": "def generated():\n    pass\n",
                               "deploy/.env": "DATABASE_PASSWORD=hunter2hunter2\n",
                               "README.md": "# Project\nParses things.\n"})
    return repo


def test_cli_builds_then_updates_incrementally_with_the_scrapers_filters(tmp_path, make_repo, capsys):
    repo = small_repo(make_repo)
    out = tmp_path / "out"
    first = run_script("--repo", str(repo.path), "--output-dir", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    info = json.loads((out / "index" / "index_info.json").read_text())
    assert info["commit"] == repo.head() and info["repository"] == str(repo.path) and info["store"] == "edge"
    assert "index: rebuilt (no index yet)" in first.stderr
    with UnitIndex(IndexConfig(), out / "index") as built:
        payloads = built.store.payloads().values()
    paths = {p["path"] for p in payloads}
    assert paths == {"pkg/parse.py", "deploy/.env", "README.md"}  # target/ is in git_scraper's exclude_globs
    (env,) = [p["text"] for p in payloads if p["path"] == "deploy/.env"]
    assert "hunter2hunter2" not in env  # redacted as the scraper redacts
    repo.commit("parse with a separator", {"pkg/parse.py": "def parse(s, sep=','):\n    return s.split(sep)\n"})
    assert index.main(["--repo", str(repo.path), "--output-dir", str(out)]) == 0  # in-process: faster
    second = capsys.readouterr().err
    assert "index: updated at" in second and "1 files read, 2 units embedded" in second


def test_pipeline_runs_the_stage_after_the_chunker_and_skips_it_while_the_tree_is_the_same(tmp_path, make_repo):
    repo = small_repo(make_repo)
    config = tmp_path / "config.yaml"
    config.write_text(f"pipeline:\n  output_dir: {tmp_path / 'out'}\ngit_scraper:\n  repo: {repo.path}\n")
    names = [name for name, _ in pipeline.STAGES]
    assert names.index("index") == names.index("semantic_chunker") + 1

    def run_stage():  # in-process: pipeline.py's own main (a subprocess would import every stage each time)
        assert pipeline.main(["--config", str(config), "--stage", "index"]) == 0
        return json.loads((tmp_path / "out" / "pipeline_results.json").read_text())["stages"]["index"]

    first = run_stage()
    assert first["status"] == "ok" and first["summary"]["embedded"] == first["summary"]["units"] > 0
    assert run_stage()["status"] == "skipped"
    repo.commit("more", {"pkg/extra.py": "def extra():\n    return 1\n"})
    third = run_stage()
    assert third["status"] == "ok" and third["summary"]["files_changed"] == 1 and third["summary"]["embedded"] == 2


def test_run_reads_the_repository_commits_json_records(tmp_path, make_repo):
    repo = small_repo(make_repo)
    paths = ArtifactPaths.under(tmp_path / "out")
    with CommitsWriter(paths.commits) as writer:
        writer.metadata = {"repository": str(repo.path)}
    summary = index.run(IndexConfig(), paths, scraper=ScraperConfig(repo=tmp_path / "elsewhere"))
    assert summary["repository"] == str(repo.path) and summary["units"] > 0
    assert index.recorded_repository(paths) == repo.path
    assert str(repo.path) in index.input_state(IndexConfig(), paths)


def test_bad_input_is_one_line(tmp_path, make_repo, capsys):
    def main(*args):
        code = index.main(list(args))
        lines = capsys.readouterr().err.strip().splitlines()
        assert not any(line.startswith(("Traceback", "  File")) for line in lines)
        return code, lines[-1]  # after the start line (index: <repo> at <rev> -> <folder>), if it got that far

    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    code, err = main("--repo", str(not_a_repo), "--output-dir", str(tmp_path / "out"))
    assert code == 2 and err.strip() == f"error: {not_a_repo}: not a git repository"
    repo = small_repo(make_repo)
    code, err = main("--repo", str(repo.path), "--output-dir", str(tmp_path / "out"), "--rev", "no-such-branch")
    assert code == 2 and err.strip() == f"error: {repo.path}: no commit 'no-such-branch' (set index.rev to a " \
                                        "branch, tag or commit)"
    config = tmp_path / "bad.yaml"
    config.write_text("index:\n  url: localhost:6333\n")
    code, err = main("--config", str(config), "--repo", str(repo.path))
    assert code == 2 and err.strip() == "error: bad.yaml: index.url: must start with http:// or https:// " \
                                        "(got 'localhost:6333')"
    code, err = main("--repo", str(repo.path), "--output-dir", str(tmp_path / "out"), "--url", "http://127.0.0.1:9")
    assert code == 2 and err.startswith("error: cannot reach Qdrant at http://127.0.0.1:9: ")
    assert not (tmp_path / "out" / "index" / "index_info.json").exists()


def test_a_file_whose_blob_is_missing_is_left_out_and_counted_at_every_update(tmp_path, make_repo):
    repo = small_repo(make_repo)
    repo.commit("add a file whose blob is then lost", {"pkg/lost.py": "def lost():\n    return 0\n"})
    blob = repo.git("rev-parse", "HEAD:pkg/lost.py").strip()
    (repo.path / ".git" / "objects" / blob[:2] / blob[2:]).unlink()  # as a pruned mirror lacks it
    paths = ArtifactPaths.under(tmp_path / "out")
    first = index.run(IndexConfig(), paths, scraper=ScraperConfig(repo=repo.path))
    assert (first["missing_objects"], first["missing_sample"]) == (1, ["pkg/lost.py"])
    assert json.loads((paths.index_dir / "index_info.json").read_text())["missing_objects"] == 1
    with UnitIndex(IndexConfig(), paths.index_dir) as built:
        indexed = {p["path"] for p in built.store.payloads().values()}
    assert indexed == {"pkg/parse.py", "deploy/.env", "README.md"}
    # in another folder (git builds no tree naming a missing blob), and not `add -A` (it would hash pkg/lost.py
    # from the working tree: its blob back)
    repo.write("lib/more.py", "def more():\n    return 1\n")
    repo.git("add", "lib/more.py")
    repo.git("commit", "-q", "-m", "more")
    second = index.run(IndexConfig(), paths, scraper=ScraperConfig(repo=repo.path))
    assert second["rebuilt"] is None and second["missing_objects"] == 1 and second["embedded"] == 2


# ---------------------------------------------------------------- the embedding backends

CODE_TEXTS = [
    ("src/routing/mod.rs\nfunction route\npub fn route(path: &str, method_router: MethodRouter<S>) -> Self {\n"
     "    self.inner.route(path, method_router).expect(\"invalid route\")\n}"),
    ("src/extract/query.rs\nstruct Query\n/// Extractor that deserializes query strings into some type.\n"
     "pub struct Query<T>(pub T);"),
    "README.md\ndoc Usage\nAdd `axum` to your Cargo.toml and write a handler: an async function of extractors.",
    ("click/core.py\nmethod Context.invoke\ndef invoke(self, callback, *args, **kwargs):\n"
     "    with augment_usage_errors(self):\n        return callback(*args, **kwargs)"),
    "Add a retry to the scraper when git is busy",
    "fix: handle a missing trailing slash in nested routers",
    "tests/test_cli.py\ntest test_version\ndef test_version(runner):\n    assert runner.invoke(cli, ['--version']).exit_code == 0",
    "x",
]


def test_onnx_vectors_match_torch_and_the_export_is_made_once(tmp_path, monkeypatch):
    import numpy as np

    from repo2model.retrieval.embedding import Embedder

    monkeypatch.setenv("REPO2MODEL_CACHE", str(tmp_path / "cache"))
    texts = CODE_TEXTS * 3 + [t * 20 for t in CODE_TEXTS[:3]]  # repeats, and texts past max_tokens
    reference = Embedder(backend="torch", max_tokens=128).embed(texts)
    plain = Embedder(backend="onnx", max_tokens=128).embed(texts)
    int8 = Embedder(backend="onnx-int8", max_tokens=128)
    quantized = int8.embed(texts)
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-4)
    assert (plain * reference).sum(axis=1).min() > 0.9999  # the float graph is torch's model
    cosines = (quantized * reference).sum(axis=1)
    assert cosines.min() >= MIN_COSINE and cosines.mean() >= MIN_MEAN_COSINE, cosines
    assert np.array_equal(quantized[0], quantized[len(CODE_TEXTS)])  # equal texts, equal vectors
    exports = sorted((tmp_path / "cache" / "embedders").glob("*/*.onnx"))
    assert [p.name for p in exports] == ["model-int8.onnx", "model.onnx"]
    record = json.loads(exports[0].with_suffix(".json").read_text())
    assert record["weights_digest"] == int8.digest and min(record["check_cosines"]) >= 0.97
    stamp = exports[0].stat().st_mtime_ns
    again = Embedder(backend="onnx-int8", max_tokens=128)
    assert np.array_equal(again.embed(texts[:4]), int8.embed(texts[:4]))
    assert exports[0].stat().st_mtime_ns == stamp  # read from the cache, not exported again
    assert int8.identity.split()[:2] == ["all-MiniLM-L6-v2", "onnx-int8"] and int8.identity != again.identity.replace(
        "onnx-int8", "onnx")


def test_the_index_records_its_embedder_rebuilds_for_another_and_refuses_its_queries(tmp_path, make_repo,
                                                                                      monkeypatch):
    import pytest

    from repo2model.core.errors import UserError
    from repo2model.retrieval.embedding import Embedder

    monkeypatch.setenv("REPO2MODEL_CACHE", str(tmp_path / "cache"))
    repo = small_repo(make_repo)
    cfg, folder = IndexConfig(backend="onnx-int8"), tmp_path / "index"
    first = UnitIndex(cfg, folder).update(repo.path)
    info = UnitIndex.read_info(folder)
    assert first.rebuilt == "no index yet" and info["embedder"] == Embedder.from_config(cfg).identity
    torch_cfg = IndexConfig(backend="torch")
    with pytest.raises(UserError, match="rerun the index stage"), UnitIndex(torch_cfg, folder) as index:
        index.search("parse")
    second = UnitIndex(torch_cfg, folder).update(repo.path)
    assert second.rebuilt.startswith("embedder was ") and second.embedded == second.units == first.units
    with UnitIndex(torch_cfg, folder) as index:
        assert index.search("split a string on commas", mode="dense")[0].payload["path"] == "pkg/parse.py"
