"""The whole default pipeline on hostile histories (tests/hostile_repo.py): a repository with blobs deleted from
its object store (one of them in the current tree) and an offline sparse partial clone; then serve.py's /predict
with a `repo` body on each, then `pipeline.py --update` after two new commits. Every run exits 0, every odd case
is counted, what the missing objects take away is counted exactly (checked against git's own list of missing
objects), and nothing git itself can read is lost. Stages 1-2 also run on a shallow clone.

The runs are in this process (pipeline.main, serve's Service over real HTTP): the stages' imports are paid once.
A watchdog ends the process with a traceback if any of it hangs (e.g. git waiting on a network fetch).
"""

from __future__ import annotations

import faulthandler
import http.client
import json
import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from repo2model.stages import pipeline
from repo2model.stages import serve
from repo2model.serving.service import Service, make_server
from repo2model.stages import train_ranker
from repo2model.stages.evaluate import plan_targets
from helpers_update import CONFIG
from repo2model.core.artifacts import iter_jsonl
from repo2model.core.config import load_config
from repo2model.serving.history import load_history_sections
from repo2model.core.paths import ArtifactPaths
from repo2model.serving.predictor import Predictor
from repo2model.serving.settings import load_prediction_config
from repo2model.ranking.config import EvaluationConfig, RankerConfig
from repo2model.retrieval.index_config import IndexConfig, load_index_config
from repo2model.retrieval.retriever import Retriever
from repo2model.retrieval.unit_index import UnitIndex
from tests.hostile_repo import CRATE_LIB, LATIN1_NAME, LOST, ODD_PATHS, Hostile, build_hostile, git, local_work, \
    missing_blobs

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
WATCHDOG_S = 600  # far above the ~1 minute it takes: only a hang trips it


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Hostile:
    return build_hostile(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module", autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@dataclass
class Run:
    """One pipeline.py run: its config, exit code, results, and what each stage logged."""

    repo: Path
    config: Path
    head: str  # the repository's HEAD when it ran
    code: int = -1
    results: dict = field(default_factory=dict)
    logs: list[tuple[str, str]] = field(default_factory=list)  # (stage, message)

    @property
    def out(self) -> Path:
        return self.config.parent / "out"

    def stage(self, name: str) -> dict:
        return self.results["stages"][name]

    def logged(self, stage: str, pattern: str) -> list[re.Match]:
        return [m for s, message in self.logs if s == stage and (m := re.search(pattern, message))]


class Collect(logging.Handler):
    """Every record, attributed to the stage that was running (pipeline logs "<stage>: running" first)."""

    def __init__(self, run: Run):
        super().__init__(logging.INFO)
        self.run, self.current = run, ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        started = re.fullmatch(r"(\w+): running", message)
        if started:
            self.current = started.group(1)
        self.run.logs.append((self.current, message))


def run_pipeline(repo: Path, config: Path, *args: str) -> Run:
    run = Run(repo, config, git(repo, "rev-parse", "HEAD").strip())
    handler = Collect(run)
    logging.getLogger().addHandler(handler)
    try:
        run.code = pipeline.main(["--config", str(config), *args])
    finally:
        logging.getLogger().removeHandler(handler)
    run.results = json.loads((run.out / "pipeline_results.json").read_text())
    return run


def write_config(repo: Path, folder: Path) -> Path:
    """helpers_update's tiny model (seconds to train), on `repo`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(CONFIG.format(update_steps=4).replace("repo: repo", f"repo: {repo}"), encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def runs(hostile, tmp_path_factory) -> dict[str, Run]:
    """The default pipeline (all stages) on the repository and on the partial clone; stages 1-2 on the shallow
    clone."""
    folder = tmp_path_factory.mktemp("runs")
    out = {name: run_pipeline(repo, write_config(repo, folder / name))
           for name, repo in (("full", hostile.repo), ("partial", hostile.partial))}
    shallow = write_config(hostile.shallow, folder / "shallow")
    for stage in ("git_scraper", "semantic_chunker"):
        out[f"shallow {stage}"] = run_pipeline(hostile.shallow, shallow, "--stage", stage)
    return out


@pytest.fixture(scope="module")
def served(hostile, runs) -> dict[tuple[str, str], dict]:
    """serve.py's /predict, with a `repo` body: each trained model answers for both repositories
    (the index's own repository, then the other one, whose context is read from its tree)."""
    repos = {"full": hostile.repo, "partial": hostile.partial}
    replies = {}
    for name in repos:
        config = runs[name].config
        paths = ArtifactPaths.under(runs[name].out)
        retriever = Retriever(load_index_config(config), paths.index_dir)
        predictor = Predictor.load(paths.model_dir, load_prediction_config(config), paths=paths, retriever=retriever)
        service = Service(predictor, serve.Config(port=0), *load_history_sections(config))
        server = make_server(service)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            for other, repo in repos.items():
                replies[(name, other)] = post(server, {"task": "lib: five", "repo": str(repo)})
        finally:
            server.shutdown()
            server.server_close()
            retriever.close()
    return replies


def post(server, body: dict) -> dict:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.request("POST", "/predict", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    reply = json.loads(response.read().decode())
    conn.close()
    assert response.status == 200, reply
    return reply


@pytest.fixture(scope="module")
def updated(hostile, runs, served) -> dict[str, Run]:
    """Two new commits in each repository, then `pipeline.py --update` (after the requests above: it moves
    the repositories on)."""
    out = {}
    for name, repo, path in (("full", hostile.repo, "tool/run.py"), ("partial", hostile.partial, "app.py")):
        work = local_work(repo, 3000)
        for k in range(2):  # the partial clone is sparse: only top-level files can be written there
            work.write(path, f"def main():\n    return {k + 2}\n")
            # only this file staged: `git add -A` would hash src/lost.rs from the working tree, its blob back
            work.git("add", "--", path)
            moment = f"@{1704067200 + 3600 * (3000 + k)} +0000"
            work.git("commit", "-q", "-m", f"update: step {k}", env={"GIT_AUTHOR_DATE": moment,
                                                                    "GIT_COMMITTER_DATE": moment})
        out[name] = run_pipeline(repo, runs[name].config, "--update")
    return out


# ---------------------------------------------------------------- what git says is missing


def missing_in(run: Run) -> set[str]:
    """Every blob the repository's history names that its object store lacks."""
    return missing_blobs(run.repo, "--all")


def head_missing(run: Run) -> set[str]:
    """The blobs of the tree the run indexed that the object store lacks."""
    return missing_blobs(run.repo, "--no-walk", run.head)


def tree_paths(repo: Path, rev: str, blobs: set[str]) -> set[str]:
    """The files of the tree at `rev` whose blob is one of `blobs`."""
    out = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "-z", "--full-tree", rev], capture_output=True,
                         check=True).stdout
    files = set()
    for record in filter(None, out.split(b"\0")):
        meta, _, name = record.partition(b"\t")
        if meta.split()[2].decode() in blobs:
            files.add(name.decode("utf-8", "replace"))
    return files


def unavailable_changes(repo: Path, commit: str, parents: list[str], missing: set[str]) -> int:
    """File changes of a commit (first-parent tree diff, no rename detection) that need a missing blob."""
    base = parents[0] if parents else EMPTY_TREE
    raw = subprocess.run(["git", "-C", str(repo), "diff-tree", "-r", "--raw", "--no-abbrev", "--no-renames", base,
                          commit], capture_output=True, check=True, text=True, errors="replace").stdout
    count = 0
    for line in raw.splitlines():
        old_mode, new_mode, old, new = line[1:].split(" ")[:4]
        sides = [(old_mode, old), (new_mode, new)]
        count += any(oid in missing and mode != "160000" for mode, oid in sides)
    return count


def searched_missing(run: Run, targets: set[str]) -> int:
    """Missing blobs in the trees the code search held: the first parents of the targets."""
    commits = {c["hash"]: c for c in commits_of(run.out).values()}
    parents = {commits[t]["parents"][0] for t in targets if commits[t]["parents"]}
    return len(set().union(*(missing_blobs(run.repo, "--no-walk", p) for p in parents))) if parents else 0


def commits_of(out: Path) -> dict[str, dict]:
    return {c["hash"]: c for c in json.loads((out / "commits.json").read_text(encoding="utf-8"))["commits"]}


# ---------------------------------------------------------------- the runs


def test_the_whole_pipeline_exits_0(runs):
    for name in ("full", "partial"):
        assert runs[name].code == 0, runs[name].results
        assert {k: v["status"] for k, v in runs[name].results["stages"].items()} == dict.fromkeys(
            pipeline.RUN_BY_DEFAULT, "ok"), name
    for stage in ("git_scraper", "semantic_chunker"):
        assert (runs[f"shallow {stage}"].code, runs[f"shallow {stage}"].stage(stage)["status"]) == (0, "ok")


def test_the_fixture_lacks_exactly_the_blobs_it_removed(hostile, runs):
    facts = hostile.facts
    assert missing_in(runs["full"]) == {facts["deleted_blob"], facts["deleted_head_blob"]}
    assert head_missing(runs["full"]) == {facts["deleted_head_blob"]}
    assert git(hostile.repo, "ls-tree", "-l", "HEAD", LOST).split()[3] == "BAD"  # what crashed the index
    # the partial clone: every blob but those of its top-level files (sparse checkout) and its own commits
    assert len(head_missing(runs["partial"])) == 14 and len(missing_in(runs["partial"])) == 22


@pytest.mark.parametrize("name", ["full", "partial"])
def test_every_stage_counts_what_the_missing_objects_take_away(runs, name):
    run = runs[name]
    missing = missing_in(run)
    scraper = run.stage("git_scraper")["summary"]
    assert scraper["missing_objects"] == len(missing)
    commits = commits_of(run.out)
    unavailable = sum(unavailable_changes(run.repo, sha, c["parents"], missing) for sha, c in commits.items())
    meta = json.loads((run.out / "commits.json").read_text(encoding="utf-8"))["metadata"]
    assert meta["unavailable_files"] == meta["patches_skipped"]["unavailable"] == unavailable > 0
    stats = json.loads((run.out / "chunking_stats.json").read_text())
    assert stats["skipped_files"]["unavailable"] == unavailable and stats["unreadable_objects"] == 0
    # the index: the files of the tree whose blob is missing, none of them embedded, every other one there
    index = run.stage("index")["summary"]
    lost = tree_paths(run.repo, run.head, head_missing(run))
    assert index["missing_objects"] == len(lost) > 0 and set(index["missing_sample"]) <= lost
    assert run.logged("index", r"(\d+) files left out, their blobs missing")[0].group(1) == str(len(lost))
    info = json.loads((run.out / "index" / "index_info.json").read_text())
    assert info["missing_objects"] == len(lost)
    with UnitIndex(IndexConfig(), run.out / "index") as built:
        indexed = {p["path"] for p in built.store.payloads().values()}
    assert indexed and not indexed & lost
    # train_ranker and evaluate: the code search at each target's parent left out the missing blobs there
    paths = ArtifactPaths.under(run.out)
    sections = load_config(run.config, {"train_ranker": RankerConfig, "evaluate": EvaluationConfig},
                           strict_sections=False)
    trained = train_ranker.choose_targets(train_ranker.load_splits(paths), sections["train_ranker"].max_train_targets)
    evaluated = plan_targets(sections["evaluate"], paths).order
    for stage, targets in (("train_ranker", set(trained)), ("evaluate", set(evaluated))):
        expected = searched_missing(run, targets)
        found = run.logged(stage, r"code search: (\d+) file versions")
        assert [int(m.group(1)) for m in found] == ([expected] if expected else []), stage
    assert searched_missing(run, set(trained)) > 0


def test_predict_with_a_repo_body_counts_the_missing_objects(hostile, runs, served):
    for (model, repo_name), reply in served.items():
        run, other = runs[model], runs[repo_name]
        assert reply["files"] is not None and reply["prompt"]
        history = [h["hash"] for h in reply["history"]]
        assert history == git(other.repo, "rev-list", "--max-count", str(len(history)), "--date-order",
                              "HEAD").split()[::-1]
        commits = commits_of(other.out)
        missing = missing_in(other)
        expected_history = sum(unavailable_changes(other.repo, h, commits[h]["parents"], missing) for h in history)
        source = reply["context_source"]
        if model == repo_name:  # the index of this repository serves: its missing files were never indexed
            assert source["index"]["repository"] == str(other.repo) and "missing_objects" not in source
            context = 0
        else:  # another repository: the predicted files' code is read from its tree
            predicted = {f["path"] for f in reply["files"][:IndexConfig().context_files]}
            context = len(predicted & tree_paths(other.repo, "HEAD", head_missing(other)))
            assert source["index"] is None and source["missing_objects"] == context
        # the ranker's code search holds its own repository's tree: at the request's last commit when it knows it,
        # else at the last commit it was trained with
        known = list(commits_of(run.out))
        at = history[-1] if history[-1] in known else known[-1]
        assert reply["missing_objects"] == {
            "history_files": expected_history,
            "code_search_files": len(tree_paths(run.repo, at, missing_blobs(run.repo, "--no-walk", at))),
            "context_files": context,
        }, (model, repo_name)
    partial_history = served[("full", "partial")]["missing_objects"]["history_files"]
    assert served[("partial", "partial")]["missing_objects"]["history_files"] == partial_history
    # the partial clone's latest commits are local work (every blob here); the other's reach the lost blob
    assert served[("partial", "full")]["missing_objects"]["history_files"] > 0


# ---------------------------------------------------------------- nothing lost that git can read


def test_nothing_git_can_read_is_lost(hostile, runs):
    out = runs["full"].out
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
    # only what the deleted blobs hide is unavailable: both sides of src/lib.rs that need the old one, and the
    # file of the current tree whose blob is gone
    unavailable = [(c["message"], f["path"]) for c in commits.values() for f in c["files"]
                   if f["patch_skipped"] == "unavailable"]
    assert sorted(unavailable) == [("a file whose blob is lost", LOST), ("lib: four", "src/lib.rs"),
                                   ("lib: three", "src/lib.rs")]
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


def test_every_odd_case_is_counted(runs):
    out = runs["full"].out
    meta = json.loads((out / "commits.json").read_text(encoding="utf-8"))["metadata"]
    assert meta["branches"] == ["main", "oct-a", "oct-b", "oct-c", "pages", "remote-only"]  # origin/ twins once
    assert (meta["non_utf8_messages"], meta["non_utf8_paths"], meta["empty_commits"], meta["octopus_merges"]) == (1, 1, 1, 1)
    assert meta["patches_skipped"] == {"binary": 1, "too_large": 1, "filtered": 0, "unavailable": 3}
    assert meta["unavailable_files"] == 3 and meta["total_merges"] == 1 and meta["shallow_boundary"] == []
    assert runs["full"].stage("git_scraper")["summary"]["missing_objects"] == 2
    stats = json.loads((out / "chunking_stats.json").read_text())
    assert stats["skipped_files"] == {"binary": 1, "too_large": 1, "unavailable": 3}
    dataset = json.loads((out / "dataset_stats.json").read_text())
    assert dataset, "dataset_stats.json is empty"


def test_tokenizer_round_trip(runs):
    for name in ("full", "partial"):
        roundtrip = json.loads((runs[name].out / "tokenizer_stats.json").read_text())["roundtrip"]
        assert roundtrip["exact"] == roundtrip["checked"] == roundtrip["parsed"], name


def test_a_shallow_clone(hostile, runs):
    out = runs["shallow git_scraper"].out
    commits = commits_of(out)
    assert set(commits) == set(git(hostile.shallow, "rev-list", "--all").split())
    meta = json.loads((out / "commits.json").read_text(encoding="utf-8"))["metadata"]
    boundary = (hostile.shallow / ".git" / "shallow").read_text().split()
    assert meta["shallow_boundary"] == sorted(boundary) and all(commits[b]["parents"] == [] for b in boundary)
    assert json.loads((out / "chunking_stats.json").read_text())["uncovered_lines"] == 0


# ---------------------------------------------------------------- last: the update moves the repositories on


def test_update_after_two_commits(runs, updated):
    for name in ("full", "partial"):
        run = updated[name]
        assert run.code == 0, run.results
        stages = run.results["stages"]
        scraper = stages["git_scraper"]["summary"]
        # commits with a file git could not read are scraped again (their objects may have come back): counted again
        assert scraper["new_commits"] == 2 and scraper["missing_objects"] == len(missing_in(run))
        index = stages["index"]["summary"]
        lost = tree_paths(run.repo, "HEAD", missing_blobs(run.repo, "--no-walk", "HEAD"))
        assert index["rebuilt"] is None and index["missing_objects"] == len(lost) > 0  # read, and counted, again
        assert run.results["update"]["new_commits"] == 2
