"""repo2model.git.commands and repo2model.git.objects against real repositories: the one way to run git."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest

from conftest import ROOT
from repo2model.core.errors import UserError
from repo2model.git.commands import GitError, git, git_bytes, git_environment, git_popen, open_repository
from repo2model.git.objects import CatFile, is_partial_clone, ls_tree


@pytest.fixture
def two_repos(make_repo):
    mine = make_repo("mine")
    mine.commit("mine: first", {"a.txt": "mine\n"})
    other = make_repo("other")
    other.commit("other: first", {"b.txt": "other\n"})
    return mine, other


def test_inherited_git_variables_never_redirect_a_command(two_repos, monkeypatch):
    mine, other = two_repos
    # as inside a git hook or CI step of the other repository
    monkeypatch.setenv("GIT_DIR", str(other.path / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other.path))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other.path / ".git" / "index"))
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(other.path / ".git" / "objects"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    assert git(mine.path, "log", "--format=%s").strip() == "mine: first"
    assert git_bytes(mine.path, "show", "HEAD:a.txt") == b"mine\n"
    proc = git_popen(mine.path, ["log", "--format=%s"])
    assert proc.communicate()[0] == b"mine: first\n"
    with CatFile(mine.path) as objects:
        assert objects.read("HEAD:a.txt") == b"mine\n" and objects.read("HEAD:b.txt") is None
    assert open_repository(mine.path) == mine.path.resolve()
    assert [e.path for e in ls_tree(mine.path, "HEAD")] == ["a.txt"]
    env = git_environment()
    assert "GIT_DIR" not in env and "GIT_INDEX_FILE" not in env and env["GIT_CONFIG_GLOBAL"] == os.devnull


def test_cat_file_names_with_spaces_and_missing_objects(make_repo):
    repo = make_repo()
    head = repo.commit("add", {"docs/metal backend/Cargo.toml": "[package]\n", "trail ": "t\n", "bin": b"\x00\x01\n"})
    names = [f"{head}:docs/metal backend/Cargo.toml", f"{head}:docs/metal backend/missing.toml",
             f"{head}:trail ", "0" * 40, f"{head}:bad\nname", f"{head}:bin", "HEAD:no such file at all"]
    expected = [b"[package]\n", None, b"t\n", None, None, b"\x00\x01\n", None]
    with CatFile(repo.path) as objects:
        assert [objects.read(n) for n in names] == expected
        assert objects.read_many(names) == expected
        assert objects.read_many(names * 700) == expected * 700  # several groups of requests
        assert [objects.size(n) for n in names] == [10, None, 2, None, None, 3, None]
        blob = git(repo.path, "rev-parse", f"{head}:trail ").strip()
        assert objects.size(blob) == 2 and objects.read(blob) == b"t\n"


def test_cat_file_survives_deleted_and_corrupt_objects(make_repo):
    repo = make_repo()
    head = repo.commit("add", {"gone.txt": "gone\n", "corrupt.txt": "corrupt\n", "fine.txt": "fine\n"})
    gone, corrupt = (git(repo.path, "rev-parse", f"{head}:{n}").strip() for n in ("gone.txt", "corrupt.txt"))
    objects_dir = repo.path / ".git" / "objects"
    (objects_dir / gone[:2] / gone[2:]).unlink()
    bad = objects_dir / corrupt[:2] / corrupt[2:]
    bad.chmod(0o644)
    bad.write_bytes(zlib.compress(b"blob 8\0cor")[:-3])  # truncated: git dies reading it
    with CatFile(repo.path) as objects:
        names = ["HEAD:gone.txt", "HEAD:corrupt.txt", "HEAD:fine.txt", "HEAD:corrupt.txt", "HEAD:fine.txt"]
        assert objects.read_many(names) == [None, None, b"fine\n", None, b"fine\n"]
        assert objects.unreadable >= 1
        assert objects.read("HEAD:fine.txt") == b"fine\n"
        assert objects.size(gone) is None and objects.size("HEAD:fine.txt") == 5


def test_ls_tree_lists_blobs_with_sizes(make_repo):
    repo = make_repo()
    repo.commit("sub", {"lib/a b.rs": "fn a() {}\n", "naïve.txt": "x\n"})
    (repo.path / "link").symlink_to("naïve.txt")
    sub = git(repo.path, "rev-parse", "HEAD").strip()
    git(repo.path, "update-index", "--add", "--cacheinfo", f"160000,{sub},vendor/dep")
    repo.commit("link and submodule")
    entries = {e.path: e for e in ls_tree(repo.path, "HEAD")}
    assert set(entries) == {"lib/a b.rs", "naïve.txt", "link"}  # the submodule is no file of this tree
    assert entries["lib/a b.rs"].size == 10 and entries["link"].mode == "120000"
    assert entries["naïve.txt"].oid == git(repo.path, "rev-parse", "HEAD:naïve.txt").strip()


def test_errors_are_one_line(make_repo, tmp_path):
    repo = make_repo()
    repo.commit("one", {"a.txt": "a\n"})
    (tmp_path / "plain").mkdir()
    (tmp_path / "file").write_text("x")
    for path, message in [(tmp_path / "plain", "not a git repository"), (tmp_path / "nope", "no such folder"),
                          (tmp_path / "file", "not a folder"), (tmp_path / ("x" * 300), "not a usable path")]:
        with pytest.raises(UserError, match=message):
            open_repository(path)
    (repo.path / "sub").mkdir()
    assert open_repository(repo.path / "sub") == repo.path.resolve()
    with pytest.raises(GitError) as info:
        git(repo.path, "rev-parse", "--verify", "nope^{commit}")
    assert "\n" not in str(info.value) and str(repo.path) in str(info.value)
    assert git(repo.path, "rev-parse", "--verify", "-q", "nope", check=False) == ""


def test_ls_tree_marks_a_blob_the_object_store_lacks(make_repo):
    repo = make_repo()
    repo.commit("two files", {"kept.txt": "kept\n", "lost.txt": "lost\n"})
    lost = git(repo.path, "rev-parse", "HEAD:lost.txt").strip()
    (repo.path / ".git" / "objects" / lost[:2] / lost[2:]).unlink()
    assert "BAD" in git(repo.path, "ls-tree", "-l", "HEAD", "lost.txt")  # what int() once choked on
    entries = {e.path: e for e in ls_tree(repo.path, "HEAD")}
    assert (entries["lost.txt"].missing, entries["lost.txt"].size) == (True, None)
    assert (entries["kept.txt"].missing, entries["kept.txt"].size) == (False, 5)
    assert not is_partial_clone(repo.path)


def blobless_clone(make_repo, tmp_path):
    """A `--filter=blob:none` clone over file:// whose origin is still there: the old version of a.txt is only on
    the origin (a fetch would succeed), the checked-out ones are here."""
    source = make_repo("source")
    source.commit("one", {"a.txt": "a one\n", "b.txt": "b\n"})
    source.commit("two", {"a.txt": "a two\n"})
    source.git("config", "uploadpack.allowFilter", "true")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--filter=blob:none", f"file://{source.path}", str(clone)], check=True,
                   capture_output=True)
    old = git(clone, "rev-parse", "HEAD~1:a.txt").strip()
    return clone, old


def still_missing(repo, oid: str) -> bool:
    out = git(repo, "rev-list", "--objects", "--missing=print", "--all")  # lists without fetching
    return f"?{oid}" in out.split()


def test_a_partial_clone_is_read_as_it_is_never_fetched_from(make_repo, tmp_path):
    clone, old = blobless_clone(make_repo, tmp_path)
    assert is_partial_clone(clone) and still_missing(clone, old)
    with CatFile(clone) as objects:
        names = [old, "HEAD:a.txt", "HEAD~1:a.txt", "HEAD~1:b.txt", "HEAD~1:no such file"]
        assert objects.read_many(names) == [None, b"a two\n", None, b"b\n", None]
        assert [objects.size(n) for n in names] == [None, 6, None, 2, None]
        assert objects.read_many(names * 300) == [None, b"a two\n", None, b"b\n", None] * 300
        assert objects.unreadable == 0  # missing, not corrupt
    # the tree of the first commit: `ls-tree --long` dies on the missing blob, the listing does not
    entries = {e.path: e for e in ls_tree(clone, "HEAD~1")}
    assert (entries["a.txt"].oid, entries["a.txt"].missing, entries["a.txt"].size) == (old, True, None)
    assert (entries["b.txt"].missing, entries["b.txt"].size) == (False, 2)
    assert still_missing(clone, old)  # the origin answers, and was not asked


READ_MISSING = """
import sys, time
sys.path.insert(0, sys.argv[1])
from repo2model.git.objects import CatFile, ls_tree
started = time.monotonic()
with CatFile(sys.argv[2]) as objects:
    assert objects.read(sys.argv[3]) is None and objects.unreadable == 0
assert [e.missing for e in ls_tree(sys.argv[2], "HEAD~1") if e.path == "a.txt"] == [True]
print(round(time.monotonic() - started, 3))
"""


def test_a_promisor_remote_that_would_hang_is_never_waited_on(make_repo, tmp_path):
    """An origin whose transport takes a minute (as an unreachable host or a password prompt would): plain git
    waits on it for each missing object; the project's git is refused the fetch at once."""
    clone, old = blobless_clone(make_repo, tmp_path)
    git(clone, "config", "remote.origin.url", "ssh://git.invalid/repo.git")
    git(clone, "config", "core.sshCommand", "sleep 60; false")
    proc = subprocess.run([sys.executable, "-c", READ_MISSING, str(ROOT), str(clone), old], capture_output=True,
                          text=True, timeout=30)  # the guard: a fetch attempt would sleep past it
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout) < 10
    assert still_missing(clone, old)
