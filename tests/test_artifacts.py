"""Atomic writes and the streaming commits.json / jsonl formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import pytest
import zstandard

from repo2model.core.artifacts import (
    CommitsWriter,
    atomic_open,
    iter_commit_dicts,
    iter_jsonl,
    load_pt,
    read_commits_metadata,
    read_json,
    remove_stale_temporaries,
    save_pt,
    write_json,
    write_jsonl,
)
from repo2model.core.errors import UserError

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
        from repo2model.core.artifacts import atomic_open
        with atomic_open({str(path)!r}) as fh:
            fh.write("partial")
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    assert list(iter_jsonl(path)) == [{"n": 0}]
    # The killed writer's temporary is what the next run cleans up, and nothing else.
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "out.jsonl")
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.jsonl.") and leftovers[0].endswith(".tmp")
    assert remove_stale_temporaries(tmp_path) == [tmp_path / leftovers[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


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


def test_stale_temporaries_only_our_own_names(tmp_path):
    ours = [".commits.json.k3x_9q2a.tmp", ".model.abcdefgh.tmp", ".adapter.a1b2c3d4.tmp.safetensors", ".tokenizer.old-4242"]
    theirs = [".pipeline_state.json", ".notes.tmp", ".x.short.tmp", "commits.json", "data.tmp", ".gitignore"]
    for name in ours[:3] + theirs:
        (tmp_path / name).write_text("x")
    (tmp_path / ours[3]).mkdir()
    (tmp_path / ours[3] / "vocab.json").write_text("{}")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / ours[0]).write_text("x")  # only the folder named, not below it
    assert sorted(p.name for p in remove_stale_temporaries(tmp_path)) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs + ["sub"])
    assert (sub / ours[0]).exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ---------------------------------------------------------------- zstd


def write_commits(path, count: int) -> None:
    with CommitsWriter(path) as writer:
        for i in range(count):
            writer.add(commit_record(i))
        writer.metadata = {"total_commits": count}


def test_zst_artifacts_round_trip_like_plain_ones(tmp_path):
    plain, packed = tmp_path / "commits.json", tmp_path / "commits.json.zst"
    write_commits(plain, 5)
    write_commits(packed, 5)
    assert zstandard.ZstdDecompressor().stream_reader(packed.open("rb")).read() == plain.read_bytes()
    assert packed.stat().st_size < plain.stat().st_size
    assert list(iter_commit_dicts(packed)) == list(iter_commit_dicts(plain)) == [commit_record(i) for i in range(5)]
    assert read_commits_metadata(packed) == {"total_commits": 5}

    records = [{"commit": f"{i:040x}", "text": "\u00e9" * i} for i in range(50)]
    assert write_jsonl(tmp_path / "chunks.jsonl.zst", records) == 50
    assert list(iter_jsonl(tmp_path / "chunks.jsonl.zst")) == records
    write_json(tmp_path / "stats.json.zst", {"a": [1, 2]})
    assert read_json(tmp_path / "stats.json.zst") == {"a": [1, 2]}
    with atomic_open(tmp_path / "blob.bin.zst", "wb") as fh:
        fh.write(b"\x00\xff" * 1000)
    assert zstandard.ZstdDecompressor().stream_reader((tmp_path / "blob.bin.zst").open("rb")).read() == b"\x00\xff" * 1000


def test_zst_output_is_deterministic(tmp_path):
    write_commits(tmp_path / "a.json.zst", 200)
    write_commits(tmp_path / "b.json.zst", 200)
    assert (tmp_path / "a.json.zst").read_bytes() == (tmp_path / "b.json.zst").read_bytes()


def test_cut_off_or_corrupt_zst_is_a_user_error(tmp_path):
    path = tmp_path / "chunks.jsonl.zst"
    records = [{"n": i, "pad": f"{i * 7919 % 104729:x}" * 40} for i in range(20000)]
    write_jsonl(path, records)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # zstandard.open would read this as a shorter file
    with pytest.raises(UserError, match=r"chunks.jsonl.zst: corrupt or cut-off zstd data .*rerun the semantic_chunker stage"):
        list(iter_jsonl(path))
    path.write_bytes(b"not zstd at all\n")
    with pytest.raises(UserError, match="corrupt or cut-off zstd data"):
        list(iter_jsonl(path))
    commits = tmp_path / "commits.json.zst"
    write_commits(commits, 3)
    commits.write_bytes(commits.read_bytes()[:-6])  # the checksum is cut
    with pytest.raises(UserError, match="rerun the git_scraper stage"):
        list(iter_commit_dicts(commits))


def test_failed_zst_write_keeps_previous_file(tmp_path):
    path = tmp_path / "chunks.jsonl.zst"
    write_jsonl(path, [{"n": 1}])
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_open(path) as fh:
            fh.write("{}\n" * 1000)
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.jsonl.zst"]


def test_zst_reading_streams_in_constant_memory(tmp_path):
    """Reading a compressed file holds a block at a time, not the whole file."""
    path = tmp_path / "chunks.jsonl.zst"
    line = {"commit": "0" * 40, "text": "x" * 2000}
    with atomic_open(path) as fh:
        for _ in range(20000):  # 40 MB of text
            fh.write(json.dumps(line) + "\n")
    tracemalloc.start()
    count = sum(1 for _ in iter_jsonl(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 20000
    assert peak < 4_000_000, peak


def test_missing_artifact_names_its_other_format(tmp_path):
    write_commits(tmp_path / "commits.json.zst", 1)
    with pytest.raises(UserError, match=r"commits.json: not found \(commits.json.zst is there: pipeline.compress"):
        read_commits_metadata(tmp_path / "commits.json")
