"""Stages 1-4 through pipeline.py on a hostile history (tests/hostile_repo.py): exit 0, every odd
case counted, nothing lost that git itself can read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from repo2model.artifacts import iter_jsonl
from tests.conftest import ROOT
from tests.hostile_repo import CRATE_LIB, LATIN1_NAME, ODD_PATHS, Hostile, build_hostile, git

STAGES = ("git_scraper", "semantic_chunker", "tokenizer", "dataset_builder")
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Hostile:
    return build_hostile(tmp_path_factory.mktemp("hostile"))


# pipeline.py's main() for each (config, stage) in one process: importing every stage (torch,
# transformers) once instead of once per stage keeps this test short.
DRIVER = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import pipeline
runs = []
for config, stage in json.loads(sys.argv[2]):
    code = pipeline.main(["--config", config, "--stage", stage])
    results = json.loads((Path(config).parent / "out" / "pipeline_results.json").read_text())["stages"]
    runs.append({"config": config, "stage": stage, "code": code, "status": results.get(stage, {}).get("status"),
                 "summary": results.get(stage, {}).get("summary")})
print(json.dumps(runs))
"""


def write_config(repo: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(f"pipeline:\n  output_dir: out\ngit_scraper:\n  repo: {repo}\ntokenizer:\n  vocab_size: 600\n",
                      encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def runs(hostile, tmp_path_factory):
    """Stages 1-4 on the hostile repository, and stages 1-2 on its shallow clone."""
    folder = tmp_path_factory.mktemp("runs")
    full, shallow = write_config(hostile.repo, folder / "full"), write_config(hostile.shallow, folder / "shallow")
    plan = [(str(full), stage) for stage in STAGES] + [(str(shallow), stage) for stage in STAGES[:2]]
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT), json.dumps(plan)],
                          capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return {"full": full.parent / "out", "shallow": shallow.parent / "out",
            "runs": json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="module")
def scraped(runs):
    return runs["full"], runs["runs"]


def commits_of(out: Path) -> dict[str, dict]:
    return {c["hash"]: c for c in json.loads((out / "commits.json").read_text(encoding="utf-8"))["commits"]}


def test_stages_1_to_4_exit_0(runs):
    assert [(r["stage"], r["code"], r["status"]) for r in runs["runs"]] == (
        [(stage, 0, "ok") for stage in STAGES] + [(stage, 0, "ok") for stage in STAGES[:2]])


def test_nothing_git_can_read_is_lost(hostile, scraped):
    out, _ = scraped
    commits = commits_of(out)
    # every commit of every branch, remote-only branch, orphan branch and tag
    assert set(commits) == set(git(hostile.repo, "rev-list", "--all").split())
    facts = hostile.facts
    assert commits[facts["remote_only"]]["branches"] == ["remote-only"]
    assert commits[facts["orphan"]]["branches"] == ["pages"] and commits[facts["orphan"]]["parents"] == []
    assert commits[facts["tag_only"]]["branches"] == [] == commits[facts["annotated_only"]]["branches"]
    assert len(commits[facts["octopus"]]["parents"]) == 4  # main and three branches
    # every file change git reports (first-parent diffs), with git's own paths, status and blobs
    for sha, commit in commits.items():
        base = commit["parents"][0] if commit["parents"] else EMPTY_TREE
        raw = subprocess.run(["git", "-C", str(hostile.repo), "diff-tree", "-r", "-M", "--raw", "-z", "--no-abbrev",
                              base, sha], capture_output=True, check=True).stdout.split(b"\0")
        expected, i = [], 0
        while i < len(raw) - 1:
            _, _, old, new, status = raw[i][1:].decode().split(" ")
            paths = 2 if status[0] in "RC" else 1
            path = raw[i + paths].decode("utf-8", "replace")
            expected.append((status[0], path, None if set(old) == {"0"} else old, None if set(new) == {"0"} else new))
            i += 1 + paths
        got = [(f["status"], f["path"], f["old_blob"], f["new_blob"]) for f in commit["files"]]
        assert got == expected, sha
    files = {f["path"]: f for c in commits.values() for f in c["files"]}
    assert set(ODD_PATHS) <= set(files) and LATIN1_NAME.decode("utf-8", "replace") in files
    assert files["line\nbreak.txt"]["patch"] == "@@ -0,0 +1 @@\n+content of 'line\\nbreak.txt'\n"
    assert "\r\n" in files["win.txt"]["patch"]  # CRLF kept as git shows it
    assert files["deps/sub"]["patch"].startswith("@@ -0,0 +1 @@\n+Subproject commit ")
    assert files["link-to-lib"]["patch"].startswith("@@ -0,0 +1 @@\n+src/lib.rs")
    # only what the deleted blob hides is unavailable: both sides of src/lib.rs that need it
    unavailable = [(c["message"], f["path"]) for c in commits.values() for f in c["files"]
                   if f["patch_skipped"] == "unavailable"]
    assert sorted(unavailable) == [("lib: four", "src/lib.rs"), ("lib: three", "src/lib.rs")]
    lib_four = {f["path"]: f for f in commits[facts["lib_v4"]]["files"]}
    assert lib_four[CRATE_LIB]["patch"] is not None  # the other file of that commit is diffed
    # chunks: every changed line of every text patch lands in a chunk, for every file with a patch
    chunks = list(iter_jsonl(out / "chunks.jsonl"))
    chunked = {(c["commit"], c["file"]) for c in chunks}
    for sha, commit in commits.items():
        for f in commit["files"]:
            if f["patch"]:
                assert (sha, f["path"]) in chunked, (commit["message"], f["path"])
    stats = json.loads((out / "chunking_stats.json").read_text())
    assert stats["uncovered_lines"] == 0
    crate_chunks = [c for c in chunks if c["file"] == CRATE_LIB]
    assert crate_chunks and all(c["module"] and c["module"].startswith("metal_backend") for c in crate_chunks)


def test_every_odd_case_is_counted(scraped):
    out, runs = scraped
    meta = json.loads((out / "commits.json").read_text(encoding="utf-8"))["metadata"]
    assert meta["branches"] == ["main", "oct-a", "oct-b", "oct-c", "pages", "remote-only"]  # origin/ twins once
    assert (meta["non_utf8_messages"], meta["non_utf8_paths"], meta["empty_commits"], meta["octopus_merges"]) == (1, 1, 1, 1)
    assert meta["patches_skipped"] == {"binary": 1, "too_large": 1, "filtered": 0, "unavailable": 2}
    assert meta["unavailable_files"] == 2 and meta["total_merges"] == 1 and meta["shallow_boundary"] == []
    assert runs[0]["summary"]["missing_objects"] == 1
    stats = json.loads((out / "chunking_stats.json").read_text())
    assert stats["skipped_files"] == {"binary": 1, "too_large": 1, "unavailable": 2}
    dataset = json.loads((out / "dataset_stats.json").read_text())
    assert dataset, "dataset_stats.json is empty"


def test_tokenizer_round_trip(scraped):
    out, _ = scraped
    roundtrip = json.loads((out / "tokenizer_stats.json").read_text())["roundtrip"]
    assert roundtrip["exact"] == roundtrip["checked"] == roundtrip["parsed"]


def test_a_shallow_clone(hostile, runs):
    out = runs["shallow"]
    commits = commits_of(out)
    assert set(commits) == set(git(hostile.shallow, "rev-list", "--all").split())
    meta = json.loads((out / "commits.json").read_text(encoding="utf-8"))["metadata"]
    boundary = (hostile.shallow / ".git" / "shallow").read_text().split()
    assert meta["shallow_boundary"] == sorted(boundary) and all(commits[b]["parents"] == [] for b in boundary)
    assert json.loads((out / "chunking_stats.json").read_text())["uncovered_lines"] == 0
