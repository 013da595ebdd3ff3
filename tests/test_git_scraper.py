"""git_scraper against real repositories built with git: every field checked against git itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from repo2model.stages import git_scraper
from repo2model.stages.git_scraper import Config
from repo2model.git.log import LogReader
from repo2model.git import scraping
from repo2model.git.totals import Totals
from repo2model.core.artifacts import iter_commits, read_commits_metadata
from repo2model.core.paths import ArtifactPaths
from tests.conftest import ROOT, GitRepo

BOB = ("Bob Builder", "bob@example.com")
OLD_ALICE = ("alice (old laptop)", "alice@old.example.org")

# Planted secrets: none of these may appear anywhere in the output.
AWS_KEY = "AKIAQ3EGRSTUV7WXYZ24"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Rk3Lm2N"
GITHUB_TOKEN = "ghp_" + "Zx8Qp2LmN4vR7tYu1aB3cD5eF7gH9iJ0kL2m"
URL_PASSWORD = "Sup3rS3cretPw"
PASSWORD = "Tr0ub4dor&3xq"
SLACK_TOKEN = "xoxb-123456789012-aBcDeFgHiJkLmNoP"
PEM_BODY = [
    "MIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
]
PEM = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(PEM_BODY) + "\n-----END RSA PRIVATE KEY-----\n"
HEX_SECRET = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"
SECRETS = [AWS_KEY, AWS_SECRET, GITHUB_TOKEN, URL_PASSWORD, PASSWORD, SLACK_TOKEN, HEX_SECRET, *PEM_BODY]

LIB = "".join(f"pub fn f{i}(a: i32) -> i32 {{\n    a + {i}\n}}\n" for i in range(4))
SMALL = dict(max_file_size=20_000, max_patch_bytes=3_000)


def build_history(repo: GitRepo) -> dict:
    """A history with every case the scraper must handle; returns the interesting hashes."""
    h = {}
    h["secrets"] = repo.commit(
        f"initial import\n\nslack bot token {SLACK_TOKEN} for the deploy bot",
        {
            "src/lib.rs": LIB,
            "README.md": "# demo\n",
            "config/.env": f"AWS_ACCESS_KEY_ID={AWS_KEY}\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n",
            "deploy/key.pem": PEM,
            "deploy/clone.sh": f"git clone https://deploy:{URL_PASSWORD}@git.example.com/demo.git\n",
            "src/api.rs": (
                f'const GITHUB: &str = "{GITHUB_TOKEN}";\n'
                f'pub fn login() {{ let password = "{PASSWORD}"; }}\n'
                f'const SIGNING_KEY: &str = "{HEX_SECRET}";\n'
            ),
            ".mailmap": f"Alice Example <alice@example.com> {OLD_ALICE[0]} <{OLD_ALICE[1]}>\n",
        },
    )
    h["binary_latin1"] = repo.commit(
        "add logo and latin-1 notes",
        {"assets/logo.bin": bytes(range(256)) * 4, "docs/notes.txt": b"caf\xe9 cr\xe8me br\xfbl\xe9e\n",
         "target/debug/out.txt": "build output\n", "Cargo.lock": "# lock\n"},
        author=BOB,
    )
    repo.move("src/lib.rs", "src/core.rs")
    h["rename"] = repo.commit(
        "rename lib to core, with an edit",
        {"src/core.rs": LIB + "\npub fn sub(a: i32, b: i32) -> i32 {\n    a - b\n}\n"},
        author=OLD_ALICE,
    )
    repo.checkout("feature", create=True)
    h["feature1"] = repo.commit("feature: multiply", {"src/mul.rs": "pub fn mul(a: i32, b: i32) -> i32 { a * b }\n"}, author=BOB)
    h["feature2"] = repo.commit("feature: docs", {"README.md": "# demo\n\nNow with mul.\n"}, author=BOB)
    repo.checkout("main")
    h["main_edit"] = repo.commit("edit api", {"src/api.rs": 'pub fn login() {}\n'})
    h["merge"] = repo.merge("feature", "Merge branch 'feature'")
    h["delete"] = repo.commit("drop the deploy key", {"deploy/key.pem": None})
    h["empty"] = repo.commit("an empty commit", allow_empty=True)
    # a symlink that becomes a file (type change), a mode change, a path with a space and non-ASCII
    (repo.path / "link").symlink_to("README.md")
    repo.commit("add link", {"docs/naïve notes.md": "# naïve\n", "run.sh": "echo hi\n"})
    (repo.path / "link").unlink()
    (repo.path / "run.sh").chmod(0o755)
    h["typechange"] = repo.commit("link becomes a file; run.sh executable", {"link": "now a file\n"})
    # a raw Latin-1 message without an encoding header (git commit would re-encode it): write the object
    tree, parent = repo.git("rev-parse", "HEAD^{tree}", "HEAD").split()
    raw = (f"tree {tree}\nparent {parent}\nauthor Bob Builder <bob@example.com> 1709251200 +0100\n"
           f"committer Bob Builder <bob@example.com> 1709251200 +0100\n\n").encode() + b"latin-1 message: caf\xe9\n"
    (repo.path.parent / "commit.raw").write_bytes(raw)
    sha = repo.git("hash-object", "-t", "commit", "-w", str(repo.path.parent / "commit.raw")).strip()
    repo.git("update-ref", "refs/heads/main", sha)
    h["latin1_message"] = sha
    big = "".join(f"line {i} of a large generated table\n" for i in range(1200))  # > 20 kB: too_large
    long = "".join(f"fn f{i}() {{}}\n" for i in range(400))  # patch > 3 kB: truncated
    h["large"] = repo.commit("large files", {"data/table.txt": big, "src/long.rs": long})
    repo.git("tag", "-a", "v1", "-m", "release 1")
    repo.checkout("topic", create=True)
    h["topic"] = repo.commit("topic work", {"src/topic.rs": "fn topic() {}\n"})
    repo.checkout("main")
    # a commit reachable only from a tag
    repo.git("checkout", "-q", "--detach")
    h["tag_only"] = repo.commit("tagged experiment", {"exp.txt": "x\n"})
    repo.git("tag", "experiment")
    repo.checkout("main")
    return h


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    repo = GitRepo(tmp_path_factory.mktemp("hist") / "repo")
    hashes = build_history(repo)
    out = tmp_path_factory.mktemp("out")
    paths = ArtifactPaths.under(out)
    summary = git_scraper.run(Config(repo=repo.path, **SMALL), paths)
    return repo, hashes, paths, summary


def by_hash(paths: ArtifactPaths) -> dict:
    return {c["hash"]: c for c in json.loads(paths.commits.read_text())["commits"]}


def hunks_only(diff: str) -> str:
    """The contract's patch: each `diff --git` section of git's output from its first `@@ ` line."""
    sections = diff.split("\ndiff --git ")
    return "".join(sec[sec.index("\n@@ ") + 1:].rstrip("\n") + "\n" for sec in sections if "\n@@ " in sec)


def git_lines(repo: GitRepo, *args: str) -> list[str]:
    return [line for line in repo.git(*args).splitlines() if line]


# ---------------------------------------------------------------- commits


def test_every_branch_commit_exactly_once_parents_first(history):
    repo, hashes, paths, summary = history
    data = json.loads(paths.commits.read_text())
    order = [c["hash"] for c in data["commits"]]
    assert len(order) == len(set(order))
    assert set(order) == set(git_lines(repo, "rev-list", "--branches", "--tags"))  # every commit git can reach
    assert hashes["tag_only"] in order
    position = {sha: i for i, sha in enumerate(order)}
    for commit in data["commits"]:
        assert all(position[p] < position[commit["hash"]] for p in commit["parents"])
    assert order == git_lines(repo, "rev-list", "--date-order", "--reverse", "--branches", "--tags")
    meta = data["metadata"]
    assert meta["total_commits"] == len(order) == summary["commits"]
    assert sorted(meta["branches"]) == ["feature", "main", "topic"]
    assert meta["date_range"]["first"] == data["commits"][0]["authored_at"]


def test_commit_fields_match_git(history):
    repo, hashes, paths, _ = history
    for sha, commit in by_hash(paths).items():
        fmt = "%P%x00%aN%x00%aE%x00%aI%x00%cN%x00%cE%x00%cI"
        parents, an, ae, ad, cn, ce, cd = repo.git("log", "-1", f"--format={fmt}", sha).rstrip("\n").split("\0")
        assert commit["parents"] == parents.split()
        assert commit["author"] == {"name": an, "email": ae}
        assert commit["committer"] == {"name": cn, "email": ce}
        assert (commit["authored_at"], commit["committed_at"]) == (ad, cd)
        assert commit["is_merge"] == (len(parents.split()) > 1)
        if sha != hashes["secrets"]:
            assert commit["message"] == repo.git("log", "-1", "--format=%B", sha).rstrip("\n")
        branches = [b.strip("* ").strip() for b in git_lines(repo, "branch", "--contains", sha)]
        assert commit["branches"] == sorted(branches)
    first_parent = set(git_lines(repo, "rev-list", "--first-parent", "main"))
    for sha, commit in by_hash(paths).items():
        assert commit["on_default_first_parent"] == (sha in first_parent)
    assert by_hash(paths)[hashes["topic"]]["branches"] == ["topic"]
    assert by_hash(paths)[hashes["feature1"]]["on_default_first_parent"] is False


def test_file_fields_match_git(history):
    """status, paths, blobs from `git diff-tree --raw`; +/- counts from `--numstat`; patches from `git diff`."""
    repo, hashes, paths, _ = history
    checked_patches = 0
    for sha, commit in by_hash(paths).items():
        base = commit["parents"][0] if commit["parents"] else "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        raw = repo.git("diff-tree", "-r", "-M", "--raw", "--no-abbrev", "-z", base, sha).split("\0")
        numstat = repo.git("diff-tree", "-r", "-M", "--numstat", "-z", base, sha).split("\0")
        expected = []
        i = 0
        while i < len(raw) - 1:
            old_mode, new_mode, old, new, status = raw[i][1:].split(" ")
            score = int(status[1:]) if len(status) > 1 else None
            if status[0] in "RC":
                expected.append((status[0], raw[i + 2], raw[i + 1], old, new, score))
                i += 3
            else:
                expected.append((status[0], raw[i + 1], None, old, new, score))
                i += 2
        zero = "0" * 40
        got = [(f["status"], f["path"], f["old_path"], f["old_blob"] or zero, f["new_blob"] or zero, f["similarity"])
               for f in commit["files"]]
        assert got == expected, sha
        counts = {}
        j = 0
        while j < len(numstat) - 1:
            added, deleted, path = numstat[j].split("\t")
            if path == "":  # rename: old and new path follow
                path = numstat[j + 2]
                j += 3
            else:
                j += 1
            counts[path] = (added, deleted)
        for f in commit["files"]:
            added, deleted = counts[f["path"]]
            if f["binary"] or f["patch_skipped"] == "too_large":
                assert (added, deleted) == ("-", "-") or f["patch_skipped"] == "too_large"
                continue
            assert (f["additions"], f["deletions"]) == (int(added), int(deleted)), (sha, f["path"])
            if f["patch"] is not None and not f["truncated"] and "REDACTED" not in f["patch"] and not f["non_utf8"]:
                diff = repo.git("diff", "-M", "--full-index", base, sha, "--", *filter(None, [f["old_path"], f["path"]]))
                assert f["patch"] == hunks_only(diff), (sha, f["path"])
                checked_patches += 1
    assert checked_patches >= 8


def test_special_cases(history):
    repo, hashes, paths, _ = history
    commits = by_hash(paths)

    files = {f["path"]: f for f in commits[hashes["binary_latin1"]]["files"]}
    logo = files["assets/logo.bin"]
    assert (logo["binary"], logo["patch"], logo["patch_skipped"]) == (True, None, "binary")
    notes = files["docs/notes.txt"]
    assert notes["non_utf8"] and "caf\ufffd cr\ufffdme" in notes["patch"]
    assert files["target/debug/out.txt"]["patch_skipped"] == "filtered" and files["target/debug/out.txt"]["patch"] is None
    assert files["Cargo.lock"]["patch_skipped"] == "filtered"
    assert files["target/debug/out.txt"]["additions"] == 1  # counted even though not kept

    (renamed,) = commits[hashes["rename"]]["files"]
    assert (renamed["status"], renamed["old_path"], renamed["path"]) == ("R", "src/lib.rs", "src/core.rs")
    assert renamed["similarity"] is not None and 50 <= renamed["similarity"] < 100
    assert renamed["additions"] == 4 and renamed["deletions"] == 0

    (deleted,) = commits[hashes["delete"]]["files"]
    assert (deleted["status"], deleted["new_blob"], deleted["path"]) == ("D", None, "deploy/key.pem")

    assert commits[hashes["empty"]]["files"] == []

    merge = commits[hashes["merge"]]
    assert merge["is_merge"] and sorted(f["path"] for f in merge["files"]) == ["README.md", "src/mul.rs"]

    changed = {f["path"]: f for f in commits[hashes["typechange"]]["files"]}
    assert changed["link"]["status"] == "T" and changed["link"]["patch"] == (
        "@@ -1 +0,0 @@\n-README.md\n\\ No newline at end of file\n@@ -0,0 +1 @@\n+now a file\n")
    assert (changed["link"]["additions"], changed["link"]["deletions"]) == (1, 1)
    assert changed["run.sh"]["status"] == "M" and changed["run.sh"]["patch"] == ""
    added = {f["path"] for c in commits.values() for f in c["files"]}
    assert "docs/naïve notes.md" in added

    latin1 = commits[hashes["latin1_message"]]
    assert latin1["message_non_utf8"] and latin1["message"] == "latin-1 message: caf\ufffd"

    large = {f["path"]: f for f in commits[hashes["large"]]["files"]}
    assert large["data/table.txt"]["patch_skipped"] == "too_large" and large["data/table.txt"]["patch"] is None
    long = large["src/long.rs"]
    assert long["truncated"] and len(long["patch"].encode()) <= SMALL["max_patch_bytes"]
    assert long["patch"].endswith("\n") and long["additions"] == 400  # counted before the cut


def test_mailmap_and_authors(history):
    repo, hashes, paths, _ = history
    commits = by_hash(paths)
    assert commits[hashes["rename"]]["author"] == {"name": "Alice Example", "email": "alice@example.com"}
    assert read_commits_metadata(paths.commits)["total_authors"] == 2  # Alice (both identities) and Bob


def test_no_planted_secret_anywhere_in_the_output(history):
    repo, hashes, paths, _ = history
    data = paths.commits.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in data, secret
    meta = read_commits_metadata(paths.commits)
    for kind in ("aws_access_key", "aws_secret_key", "github_token", "url_password", "password",
                 "slack_token", "private_key", "generic_secret"):
        assert meta["redactions"].get(kind, 0) >= 1, (kind, meta["redactions"])
    first = by_hash(paths)[hashes["secrets"]]
    assert "<REDACTED:slack_token>" in first["message"]
    pem = next(f for f in first["files"] if f["path"] == "deploy/key.pem")
    assert pem["patch"].count("\n") == pem["additions"] + 1  # redaction kept the patch's lines
    assert sum(first["redactions"].values()) >= 8


def test_tags_remotes_and_rev_range(history, tmp_path):
    repo, hashes, _, _ = history
    paths = ArtifactPaths.under(tmp_path)
    tagged = by_hash(history[2])  # the default: commits only a tag reaches are in, on no branch
    assert hashes["tag_only"] in tagged and tagged[hashes["tag_only"]]["branches"] == []
    assert read_commits_metadata(history[2].commits)["refs"][-1] == "refs/tags/v1"
    git_scraper.run(Config(repo=repo.path, include_tags=False, **SMALL), paths)
    assert set(by_hash(paths)) == set(git_lines(repo, "rev-list", "--branches"))

    git_scraper.run(Config(repo=repo.path, branches=["feature"], **SMALL), paths)
    assert set(by_hash(paths)) == set(git_lines(repo, "rev-list", "feature"))

    git_scraper.run(Config(repo=repo.path, rev_range=f"{hashes['merge']}..main"), paths)
    assert list(by_hash(paths)) == git_lines(repo, "rev-list", "--reverse", f"{hashes['merge']}..main")

    git_scraper.run(Config(repo=repo.path, skip_merges=True, file_filters=[".rs"]), paths)
    commits = by_hash(paths)
    assert hashes["merge"] not in commits and hashes["feature1"] in commits
    for commit in commits.values():
        for f in commit["files"]:
            assert (f["patch"] is not None) == f["path"].endswith(".rs") or f["binary"], f


def test_a_plain_clone_scrapes_every_branch_by_default(history, tmp_path):
    repo, hashes, _, _ = history
    subprocess.run(["git", "clone", "-q", str(repo.path), str(tmp_path / "clone")], check=True)
    clone = GitRepo.__new__(GitRepo)  # the GitRepo helpers over the clone (GitRepo() would `git init`)
    clone.path, clone._tick = tmp_path / "clone", 100
    clone.git("tag", "tree-tag", "main^{tree}")  # not a commit
    paths = ArtifactPaths.under(tmp_path / "out")
    git_scraper.run(Config(repo=clone.path, include_tags=True), paths)  # the defaults, plus tags
    commits = by_hash(paths)
    assert set(commits) == set(git_lines(repo, "rev-list", "--branches", "--tags"))
    # a branch and its origin/ twin are one branch; origin/HEAD is none
    assert read_commits_metadata(paths.commits)["branches"] == ["feature", "main", "topic"]
    assert commits[hashes["topic"]]["branches"] == ["topic"]
    assert commits[hashes["secrets"]]["branches"] == ["feature", "main", "topic"]
    assert commits[hashes["feature1"]]["on_default_first_parent"] is False
    assert commits[hashes["merge"]]["on_default_first_parent"] is True

    # narrowing: one branch (local or only remote), or local branches only
    git_scraper.run(Config(repo=clone.path, branches=["feature"]), paths)
    assert set(by_hash(paths)) == set(git_lines(repo, "rev-list", "feature"))
    git_scraper.run(Config(repo=clone.path, branches=["origin/topic"]), paths)
    assert set(by_hash(paths)) == set(git_lines(repo, "rev-list", "topic"))
    git_scraper.run(Config(repo=clone.path, include_remotes=False, include_tags=False), paths)
    assert set(by_hash(paths)) == set(git_lines(repo, "rev-list", "main"))
    assert read_commits_metadata(paths.commits)["branches"] == ["main"]

    # a local branch ahead of its twin, and a second remote (named with its prefix)
    ahead = clone.commit("local work", {"local.txt": "x\n"})
    clone.git("remote", "add", "upstream", str(repo.path))
    clone.git("fetch", "-q", "upstream", "feature")
    git_scraper.run(Config(repo=clone.path), paths)
    commits = by_hash(paths)
    assert read_commits_metadata(paths.commits)["branches"] == ["feature", "main", "topic", "upstream/feature"]
    assert commits[ahead]["branches"] == ["main"]
    assert commits[hashes["feature2"]]["branches"] == ["feature", "main", "topic", "upstream/feature"]


def test_deterministic_and_scrape_recent(history, tmp_path, monkeypatch):
    repo, hashes, paths, _ = history
    again = ArtifactPaths.under(tmp_path)
    monkeypatch.setattr(scraping, "LOG_BATCH", 4)  # several git log processes: same bytes
    git_scraper.run(Config(repo=repo.path, **SMALL), again)
    assert again.commits.read_bytes() == paths.commits.read_bytes()
    for chunk in (1, 7):  # the stream read a few bytes at a time: every boundary falls mid-token somewhere
        monkeypatch.setattr(LogReader, "CHUNK", chunk)
        git_scraper.run(Config(repo=repo.path, **SMALL), again)
        assert again.commits.read_bytes() == paths.commits.read_bytes()
    monkeypatch.undo()

    recent = scraping.scrape_recent(repo.path, 3, Config(repo=repo.path, **SMALL), ref="main")
    expected = git_lines(repo, "rev-list", "--date-order", "-n", "3", "main")[::-1]
    assert [c.hash for c in recent] == expected
    full = by_hash(paths)
    for commit in recent:
        assert commit.to_dict() == full[commit.hash]
    assert [c.hash for c in iter_commits(paths.commits)] == list(full)


def test_incremental_equals_full(make_repo, tmp_path):
    repo = make_repo("inc")
    repo.commit("one", {"a.rs": "fn a() {}\n"})
    repo.commit("two", {"b.rs": "fn b() {}\n"})
    repo.checkout("side", create=True)
    repo.commit("side", {"c.rs": "fn c() {}\n"})
    repo.checkout("main")
    inc = ArtifactPaths.under(tmp_path / "inc")
    git_scraper.run(Config(repo=repo.path), inc)
    # the repository moves on: new commits, a merge, a new branch on an old commit
    repo.commit("three", {"a.rs": "fn a() { 1 }\n", "key.txt": f"token = \"{HEX_SECRET}\"\n"})
    repo.merge("side")
    repo.git("branch", "old-point", "HEAD~2")
    summary = git_scraper.run(Config(repo=repo.path, incremental=True), inc)
    full = ArtifactPaths.under(tmp_path / "full")
    git_scraper.run(Config(repo=repo.path), full)
    assert inc.commits.read_bytes() == full.commits.read_bytes()
    assert summary["reused_commits"] == 3 and summary["commits"] == 5
    # other settings: everything is scraped again, and the result still equals a full scrape
    summary = git_scraper.run(Config(repo=repo.path, incremental=True, max_patch_bytes=10), inc)
    git_scraper.run(Config(repo=repo.path, max_patch_bytes=10), full)
    assert summary["reused_commits"] == 0 and inc.commits.read_bytes() == full.commits.read_bytes()


def test_incremental_update_reports_new_and_rewritten_history(make_repo, tmp_path):
    repo = make_repo("update")
    for i in range(4):
        repo.commit(f"c{i}", {f"f{i}.rs": f"fn f{i}() {{}}\n"})
    paths = ArtifactPaths.under(tmp_path)
    first = git_scraper.run(Config(repo=repo.path, incremental=True), paths)
    assert (first["new_commits"], first["removed_commits"], first["full_rescrape"]) == (4, 0, "no commits.json yet")
    before = paths.commits.read_bytes()
    again = git_scraper.run(Config(repo=repo.path, incremental=True), paths)  # nothing new: a no-op
    assert paths.commits.read_bytes() == before
    assert (again["new_commits"], again["removed_commits"], again["reused_commits"], again["full_rescrape"]) == (0, 0, 4, None)

    # a force-push: the last two commits replaced by another one
    gone = git_lines(repo, "rev-list", "-n", "2", "HEAD")
    repo.git("reset", "-q", "--hard", "HEAD~2")
    replacement = repo.commit("rewritten", {"f2.rs": "fn f2() { 2 }\n"})
    rewritten = git_scraper.run(Config(repo=repo.path, incremental=True), paths)
    assert (rewritten["new_commits"], rewritten["removed_commits"], rewritten["reused_commits"]) == (1, 2, 2)
    assert sorted(rewritten["removed_sample"]) == sorted(gone) and rewritten["full_rescrape"] is None
    assert [c["hash"] for c in iter_commits_dicts(paths)] == git_lines(repo, "rev-list", "--reverse", "HEAD")
    assert replacement in by_hash(paths)
    full = ArtifactPaths.under(tmp_path / "full")
    git_scraper.run(Config(repo=repo.path), full)
    assert full.commits.read_bytes() == paths.commits.read_bytes()


def iter_commits_dicts(paths: ArtifactPaths) -> list[dict]:
    return json.loads(paths.commits.read_text())["commits"]


def test_incremental_with_a_cut_off_or_wrong_shaped_commits_json(make_repo, tmp_path):
    repo = make_repo("broken")
    for i in range(3):
        repo.commit(f"c{i}", {f"f{i}.rs": f"fn f{i}() {{}}\n"})
    paths = ArtifactPaths.under(tmp_path)
    git_scraper.run(Config(repo=repo.path), paths)
    whole = paths.commits.read_bytes()
    # cut off (a copy that stopped half-way): everything is scraped again, with a warning
    paths.commits.write_bytes(whole[: len(whole) * 2 // 3])
    proc = run_cli("--repo", str(repo.path), "--output", str(paths.commits), "--incremental", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cut off or corrupt" in proc.stderr and "scraping everything" in proc.stderr and "Traceback" not in proc.stderr
    assert paths.commits.read_bytes() == whole
    # valid JSON of the wrong shape: one line naming the file, the line and the field; nothing overwritten
    lines = whole.decode().split("\n")
    for bad, field in [('"additions": 1', '"additions": "one"'), ('"files": [', '"files": "oops", "x": [')]:
        broken = "\n".join(lines[:3] + [lines[3].replace(bad, field, 1)] + lines[4:])
        paths.commits.write_text(broken)
        proc = run_cli("--repo", str(repo.path), "--output", str(paths.commits), "--incremental", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        (message,) = proc.stderr.strip().splitlines()
        expected = "files[0].additions: expected int, got str" if "one" in field else "files: expected a list, got str"
        assert message.startswith(f"error: {paths.commits}: line 4: {expected}"), message
        assert paths.commits.read_text() == broken


def test_input_state_follows_refs_and_mailmap(make_repo, tmp_path):
    repo = make_repo("state")
    repo.commit("one", {"a.rs": "fn a() {}\n"})
    cfg, paths = Config(repo=repo.path), ArtifactPaths.under(tmp_path)
    states = [git_scraper.input_state(cfg, paths)]
    repo.commit("two", {"a.rs": "fn a() { 2 }\n"})
    states.append(git_scraper.input_state(cfg, paths))
    repo.git("branch", "other")
    states.append(git_scraper.input_state(cfg, paths))
    (repo.path / ".mailmap").write_text("A <a@example.com> Alice Example <alice@example.com>\n")
    states.append(git_scraper.input_state(cfg, paths))
    assert len(set(states)) == 4
    assert git_scraper.input_state(cfg, paths) == states[-1]


# ---------------------------------------------------------------- failures


def test_missing_blob_is_recorded_unavailable(make_repo, tmp_path, caplog):
    repo = make_repo("partial")
    repo.commit("one", {"keep.rs": "fn keep() {}\n"})
    lost = repo.commit("two", {"lost.rs": "fn lost() {}\n", "fine.rs": "fn fine() {}\n"})
    repo.commit("three", {"lost.rs": "fn lost() { 3 }\n", "after.rs": "fn after() {}\n"})
    blob = repo.git("rev-parse", f"{lost}:lost.rs").strip()
    (repo.path / ".git" / "objects" / blob[:2] / blob[2:]).unlink()  # as a partial clone would lack it
    paths = ArtifactPaths.under(tmp_path)
    code = subprocess.run(
        [sys.executable, str(ROOT / "git_scraper.py"), "--repo", str(repo.path), "--output", str(paths.commits)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert code.returncode == 0, code.stderr
    assert "warning" in code.stderr and "Traceback" not in code.stderr
    commits = list(json.loads(paths.commits.read_text())["commits"])
    assert [c["message"] for c in commits] == ["one", "two", "three"]
    two = {f["path"]: f for f in commits[1]["files"]}
    assert two["lost.rs"]["patch"] is None and two["lost.rs"]["patch_skipped"] == "unavailable"
    assert two["lost.rs"]["new_blob"] == blob
    assert two["fine.rs"]["patch"] == "@@ -0,0 +1 @@\n+fn fine() {}\n" and two["fine.rs"]["additions"] == 1
    three = {f["path"]: f for f in commits[2]["files"]}
    assert three["lost.rs"]["patch_skipped"] == "unavailable" and three["after.rs"]["patch"] is not None
    meta = read_commits_metadata(paths.commits)
    assert meta["unavailable_files"] == 2 and meta["patches_skipped"]["unavailable"] == 2


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "git_scraper.py"), *args], capture_output=True, text=True, cwd=cwd)


def test_bad_input_is_one_line_and_exit_2(make_repo, tmp_path):
    good = make_repo("good")
    good.commit("one", {"a.rs": "fn a() {}\n"})
    empty = make_repo("empty")
    (tmp_path / "plain").mkdir()
    (tmp_path / "afile").write_text("x")
    out = str(tmp_path / "out" / "commits.json")
    cases = [
        (["--repo", str(tmp_path / "plain"), "--output", out], "not a git repository"),
        (["--repo", str(tmp_path / "nowhere"), "--output", out], "no such folder"),
        (["--repo", str(empty.path), "--output", out], "no commits"),
        (["--repo", str(good.path), "--branches", "nope", "--output", out], "unknown branch 'nope'"),
        (["--repo", str(good.path), "--rev-range", "nope..main", "--output", out], "nope"),
        (["--repo", str(good.path), "--default-branch", "trunk", "--output", out], "unknown default branch 'trunk'"),
        (["--repo", str(good.path), "--output", str(tmp_path / "afile" / "commits.json")], "output folder"),
        (["--repo", str(good.path), "--max-patch-bytes", "0", "--output", out], "max_patch_bytes"),
    ]
    for args, message in cases:
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, proc.stderr)
    # no git on the PATH at all
    proc = subprocess.run([sys.executable, str(ROOT / "git_scraper.py"), "--repo", str(good.path), "--output", out],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PATH": str(tmp_path / "plain")})
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot run git"), proc.stderr
    assert not (tmp_path / "out" / "commits.json").exists()


def test_inherited_git_variables_do_not_redirect_the_scrape(make_repo, tmp_path):
    mine, other = make_repo("mine"), make_repo("other")
    mine.commit("mine", {"a.rs": "fn a() {}\n"})
    other.commit("other", {"b.rs": "fn b() {}\n"})
    env = {**os.environ, "GIT_DIR": str(other.path / ".git"), "GIT_WORK_TREE": str(other.path),
           "GIT_INDEX_FILE": str(other.path / ".git" / "index")}  # as inside a hook of the other repository
    out = tmp_path / "commits.json"
    proc = subprocess.run([sys.executable, str(ROOT / "git_scraper.py"), "--repo", str(mine.path), "--output", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [c["message"] for c in json.loads(out.read_text())["commits"]] == ["mine"]


def test_unwritable_output_folder(make_repo, tmp_path):
    good = make_repo("good")
    good.commit("one", {"a.rs": "fn a() {}\n"})
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes anywhere but here
        locked = Path("/proc/1")
        if os.access(locked, os.W_OK):
            pytest.skip("no folder that root cannot write")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
    proc = run_cli("--repo", str(good.path), "--output", str(locked / "commits.json"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {locked}: output folder is not writable"


def test_killed_write_leaves_old_file_intact(make_repo, tmp_path, monkeypatch):
    repo = make_repo("kill")
    for i in range(6):
        repo.commit(f"c{i}", {f"f{i}.rs": f"fn f{i}() {{}}\n"})
    paths = ArtifactPaths.under(tmp_path / "out")
    git_scraper.run(Config(repo=repo.path), paths)
    repo.commit("more", {"g.rs": "fn g() {}\n"})
    before = paths.commits.read_bytes()
    # a real SIGKILL in the middle of the scrape, after some commits were written to the spool
    script = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]); import git_scraper; from repo2model.git.totals import Totals\n"
        "add = Totals.add\n"
        "def dying(self, record):\n"
        "    add(self, record)\n"
        "    if self.commits == 4: os.kill(os.getpid(), signal.SIGKILL)\n"
        "Totals.add = dying\n"
        "git_scraper.main(['--repo', sys.argv[2], '--output', sys.argv[3]])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT), str(repo.path), str(paths.commits)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert paths.commits.read_bytes() == before
    # Ctrl-C half-way also leaves it, and no temporary file behind
    add = Totals.add

    def interrupted(self, record):
        add(self, record)
        if self.commits == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Totals, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        git_scraper.run(Config(repo=repo.path), paths)
    assert paths.commits.read_bytes() == before
    assert [p.name for p in paths.commits.parent.iterdir()] == ["commits.json"]


def test_extra_patterns_and_allowlist_reach_patches_messages_and_metadata(make_repo, tmp_path):
    repo = make_repo("extra")
    repo.commit("deploy with itk_0123456789abcdef (internal token)",
                {"deploy.sh": "export TOKEN=itk_fedcba9876543210\nexport KEY=AKIAIOSFODNN7EXAMPLE\n"})
    paths = ArtifactPaths.under(tmp_path)
    cfg = Config(repo=repo.path, redact_patterns={"internal_token": r"itk_[0-9a-f]{16}"},
                 redact_allowlist=[r"AKIA\w*EXAMPLE"])
    git_scraper.run(cfg, paths)
    data = paths.commits.read_text()
    assert "itk_0123456789abcdef" not in data and "itk_fedcba9876543210" not in data
    assert "AKIAIOSFODNN7EXAMPLE" in data  # allowed
    meta = read_commits_metadata(paths.commits)
    assert meta["redactions"] == {"internal_token": 2}
    assert meta["settings"]["redact_patterns"] == {"internal_token": r"itk_[0-9a-f]{16}"}
    assert meta["settings"]["redact_allowlist"] == [r"AKIA\w*EXAMPLE"]
    (commit,) = by_hash(paths).values()
    assert commit["message"] == "deploy with <REDACTED:internal_token> (internal token)"


def test_secrets_in_file_paths_and_env_values_are_redacted_everywhere(make_repo, tmp_path):
    repo = make_repo("paths")
    key_path = f"keys/{AWS_KEY}.txt"
    repo.commit("add a key file", {key_path: "key material\n", "deploy/.env": "SESSION_SALT=Hq7Zp2Lm9Xv4Rt6K\nPORT=80\n"})
    repo.move(key_path, "keys/renamed.txt")
    repo.commit("rename it")
    repo.move("keys/renamed.txt", key_path)
    repo.commit(f"and back to {key_path}")
    paths = ArtifactPaths.under(tmp_path)
    git_scraper.run(Config(repo=repo.path), paths)
    data = paths.commits.read_text()
    assert AWS_KEY not in data and "Hq7Zp2Lm9Xv4Rt6K" not in data
    placeholder = "keys/<REDACTED:aws_access_key>.txt"
    first, renamed, back = iter_commits_dicts(paths)
    assert {f["path"] for f in first["files"]} == {placeholder, "deploy/.env"}
    assert (renamed["files"][0]["old_path"], renamed["files"][0]["path"]) == (placeholder, "keys/renamed.txt")
    assert (back["files"][0]["old_path"], back["files"][0]["path"]) == ("keys/renamed.txt", placeholder)
    assert back["message"] == f"and back to {placeholder}"
    env = next(f for f in first["files"] if f["path"] == "deploy/.env")
    assert env["patch"] == "@@ -0,0 +1,2 @@\n+SESSION_SALT=<REDACTED:env_secret>\n+PORT=80\n"
    assert first["redactions"] == {"aws_access_key": 1, "env_secret": 1}
    assert read_commits_metadata(paths.commits)["redactions"] == {"aws_access_key": 4, "env_secret": 1}


def test_config_errors_name_the_key(make_repo, tmp_path):
    repo = make_repo("cfg")
    repo.commit("one", {"a.rs": "fn a() {}\n"})
    for section, message in [
        ("  redact_patterns: {broken: '('}\n", "git_scraper.redact_patterns.broken: not a valid regular expression"),
        ("  max_file_size: 0\n", "git_scraper.max_file_size: must be at least 1"),
        ("  branchs: [main]\n", "unknown key 'branchs' in section 'git_scraper'"),
        ("  skip_merges: sometimes\n", "git_scraper.skip_merges: expected bool"),
    ]:
        config = tmp_path / "config.yaml"
        config.write_text(f"git_scraper:\n  repo: {repo.path}\n{section}")
        proc = run_cli("--config", str(config), cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
