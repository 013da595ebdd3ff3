"""The main job as a user runs it: the shipped config.yaml on this repository's own history."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from repo2model.stages.pipeline import RUN_BY_DEFAULT


@pytest.mark.slow
def test_default_pipeline_on_own_history(tmp_path):
    """`python pipeline.py --config config.yaml`, on a clone, outputs redirected to tmp_path.

    Every stage runs, the model's validation loss ends clearly below where it
    started, the model reloads offline and predicts, and a second run skips
    every stage as up to date.
    """
    # A frozen copy of this repository's history, so commits made meanwhile change nothing.
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--no-local", str(ROOT), str(repo)], check=True)
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    text, n_out = re.subn(r"(?m)^  output_dir: outputs\b", f"  output_dir: {tmp_path / 'out'}", text)
    text, n_repo = re.subn(r"(?m)^  repo: \.(\s)", rf"  repo: {repo}\1", text)
    assert n_out == 1 and n_repo == 1, "config.yaml no longer has the default output_dir / repo lines"
    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")

    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipeline.py"), "--config", str(config)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    stages = json.loads((out / "pipeline_results.json").read_text())["stages"]
    assert list(stages) == list(RUN_BY_DEFAULT), stages
    assert [s["status"] for s in stages.values()] == ["ok"] * len(RUN_BY_DEFAULT), stages
    print(f"default pipeline: {seconds:.0f}s; " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in stages.items()))

    final = json.loads((out / "training_logs" / "final_eval.json").read_text())
    assert final["best_val_loss"] is not None
    assert final["best_val_loss"] < 0.8 * final["initial_val_loss"], final
    assert final["test_loss"] < final["initial_val_loss"], final

    chunking = json.loads((out / "chunking_stats.json").read_text())
    assert chunking["uncovered_lines"] == 0

    # The model reloads offline and answers a task in the commit language.
    predicted = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), "--config", str(config), "--repo", str(repo),
         "--task", "Add a test for the tokenizer", "--max-new-tokens", "48"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    answer = json.loads(predicted.stdout)
    touched = {f["path"] for c in json.loads((out / "commits.json").read_text())["commits"] for f in c["files"]}
    files = [f["path"] for f in answer["files"]]
    assert answer["candidates"] and files, answer
    assert len(files) == len(set(files))
    # The ranker trained above ranks the files: its top ones are files this history changed, best first.
    ranked = [f for f in answer["files"] if f.get("ranked_by") in ("ranker", "ranker_lm")]
    assert ranked and ranked[0]["path"] == files[0] and all(f["path"] in touched for f in ranked), answer["files"][:5]
    assert [f["score"] for f in ranked] == sorted((f["score"] for f in ranked), reverse=True)

    again = subprocess.run(
        [sys.executable, str(ROOT / "pipeline.py"), "--config", str(config)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    stages = json.loads((out / "pipeline_results.json").read_text())["stages"]
    assert [s["status"] for s in stages.values()] == ["skipped"] * len(RUN_BY_DEFAULT), stages
