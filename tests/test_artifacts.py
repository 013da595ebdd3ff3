"""Atomic writes and the streaming commits.json / jsonl formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from repo2model.artifacts import (
    CommitsWriter,
    atomic_open,
    iter_commit_dicts,
    iter_jsonl,
    load_pt,
    read_commits_metadata,
    save_pt,
    write_jsonl,
)
from repo2model.errors import UserError

from conftest import ROOT


def commit_record(i: int) -> dict:
    return {"hash": f"{i:040x}", "message": f"line one\nline {i} \u00e9\n", "files": []}


def test_commits_json_is_plain_json_and_streams(tmp_path):
    path = tmp_path / "commits.json"
    with CommitsWriter(path) as writer:
        for i in range(3):
            writer.add(commit_record(i))
        writer.metadata = {"total_commits": 3}
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["metadata"] == {"total_commits": 3}
    assert data["commits"] == [commit_record(i) for i in range(3)]
    assert list(iter_commit_dicts(path)) == data["commits"]
    assert read_commits_metadata(path) == {"total_commits": 3}


def test_empty_commits_json(tmp_path):
    path = tmp_path / "commits.json"
    with CommitsWriter(path) as writer:
        writer.metadata = {"total_commits": 0}
    assert json.loads(path.read_text())["commits"] == []
    assert list(iter_commit_dicts(path)) == []


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "commits.json"
    with CommitsWriter(path) as writer:
        writer.add(commit_record(1))
        writer.metadata = {"total_commits": 1}
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with CommitsWriter(path) as writer:
            writer.add(commit_record(2))
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["commits.json"]


def test_killed_writer_leaves_previous_file(tmp_path):
    """A process killed with SIGKILL mid-write leaves the old artifact whole."""
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"n": 0}])
    script = textwrap.dedent(
        f"""
        import os, sys, signal
        sys.path.insert(0, {str(ROOT)!r})
        from repo2model.artifacts import atomic_open
        with atomic_open({str(path)!r}) as fh:
            fh.write("partial")
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    assert list(iter_jsonl(path)) == [{"n": 0}]


def test_truncated_artifacts_are_user_errors(tmp_path):
    path = tmp_path / "commits.json"
    with CommitsWriter(path) as writer:
        for i in range(3):
            writer.add(commit_record(i))
        writer.metadata = {"total_commits": 3}
    text = path.read_text()
    path.write_text(text[: len(text) // 2 + 10])
    with pytest.raises(UserError, match="truncated or corrupt"):
        list(iter_commit_dicts(path))
    jsonl = tmp_path / "chunks.jsonl"
    jsonl.write_text('{"a": 1}\n{"a": ')
    with pytest.raises(UserError, match="truncated at line 2"):
        list(iter_jsonl(jsonl))
    with pytest.raises(UserError, match="run the git_scraper stage first"):
        list(iter_commit_dicts(tmp_path / "missing" / "commits.json"))


def test_pt_round_trip_and_corrupt(tmp_path):
    import torch

    path = save_pt({"ids": torch.arange(5), "names": ["a"]}, tmp_path / "x.pt")
    loaded = load_pt(path)
    assert loaded["ids"].tolist() == [0, 1, 2, 3, 4] and loaded["names"] == ["a"]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError, match="corrupt or unsafe"):
        load_pt(path)


def test_unwritable_folder_is_user_error(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "sub" / "out.json"  # a file where a folder should be
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out.json"
    with pytest.raises(UserError, match="output folder"):
        with atomic_open(target) as fh:
            fh.write("x")
