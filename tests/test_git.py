"""repo2model.git against real repositories: the one way to run git."""

from __future__ import annotations

import os
import zlib

import pytest

from repo2model.errors import UserError
from repo2model.git import CatFile, GitError, git, git_bytes, git_environment, git_popen, ls_tree, open_repository


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
