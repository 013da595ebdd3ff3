"""Progress: plain lines at an interval where standard error is not a terminal, a bar where it is."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import time

from repo2model.core.progress import PlainProgress, progress
from tests.conftest import ROOT


def test_plain_lines_at_the_interval_and_a_last_line():
    out = io.StringIO()
    bar = PlainProgress(total=4, desc="chunking", unit="commits", stream=out, seconds=0.05)
    bar.update()
    assert out.getvalue() == ""  # nothing before the first interval has passed
    time.sleep(0.06)
    bar.update()
    bar.set_postfix(loss="1.23")
    time.sleep(0.06)
    bar.update(2)
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("chunking: 2/4 commits (50%), ") and "left" in lines[0]
    assert lines[1].startswith("chunking: 4/4 commits (100%), ") and lines[1].endswith("loss 1.23")
    assert lines[2].startswith("chunking: 4/4 commits (100%), done in ")
    assert len(lines) == 3


def test_a_short_step_writes_nothing_and_iteration_counts():
    out = io.StringIO()
    items = list(PlainProgress(range(5), desc="x", stream=out, seconds=60))
    assert items == [0, 1, 2, 3, 4] and out.getvalue() == ""


def test_a_terminal_gets_a_bar_and_disable_gets_nothing():
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            bar = progress(total=3, desc="train", stream=terminal)
            assert not isinstance(bar, PlainProgress)
            bar.close()
    finally:
        os.close(leader)
        os.close(follower)
    out = io.StringIO()
    quiet = progress(total=3, desc="train", stream=out, disable=True)
    quiet.update(3)
    quiet.close()
    assert isinstance(quiet, PlainProgress) and out.getvalue() == ""


def test_a_stage_writes_plain_lines_into_a_captured_log(tmp_path, make_repo):
    repo = make_repo()
    for i in range(30):
        repo.commit(f"add m{i}", {f"src/m{i}.py": f"def f{i}():\n    return {i}\n"})
    env = {**os.environ, "REPO2MODEL_PROGRESS_SECONDS": "0.001", "TQDM_DISABLE": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "git_scraper.py"), "--repo", str(repo.path), "--output",
                           str(tmp_path / "commits.json")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if re.match(r"git_scraper: \d+/30 commits", line)]
    assert len(lines) >= 2 and lines[-1].startswith("git_scraper: 30/30 commits (100%), done in ")
