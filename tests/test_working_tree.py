"""The work in progress: a real repository's uncommitted changes read as one partial commit and chunked."""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest

from repo2model.core.errors import UserError
from repo2model.git.scraping import ScraperConfig
from repo2model.git.working_tree import WORKING_TREE, blob_id, read_working_tree
from repo2model.serving.history import history_from_repo
from repo2model.serving.work_in_progress import read_work_in_progress

LIB = "def parse(text):\n    return text\n\n\ndef keep(value):\n    return value\n"
TEST = "def test_parse():\n    assert parse('x') == 'x'\n"
SECRET = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture
def repo(make_repo):
    repo = make_repo("work")
    repo.write(".gitignore", "build/\n*.log\n")
    repo.commit("start", {"pkg/parse.py": LIB, "pkg/old.py": "def gone():\n    return 0\n",
                          "tests/test_parse.py": TEST, "README.md": "# work\n"})
    return repo


def git_lines(repo, *args) -> list[str]:
    return [line for line in repo.git(*args).splitlines() if line]


def test_staged_unstaged_and_untracked_changes_are_one_partial_commit(repo):
    repo.write("pkg/parse.py", LIB.replace("return text", "return text.strip()"))  # unstaged
    repo.write("pkg/new.py", "def fresh():\n    return 1\n")
    repo.git("add", "pkg/new.py")  # staged
    repo.git("rm", "-q", "pkg/old.py")  # a staged deletion
    repo.write("notes/todo.py", "def later():\n    return 2\n")  # untracked
    repo.write("build/out.py", "x = 1\n")  # ignored by .gitignore
    repo.write("run.log", "noise\n")  # ignored by .gitignore
    tree = read_working_tree(repo.path)
    assert tree.head == repo.head() and tree.commit.hash == WORKING_TREE and tree.commit.parents == [repo.head()]
    status = {c.path: str(c.status) for c in tree.commit.files}
    assert status == {"pkg/parse.py": "M", "pkg/new.py": "A", "pkg/old.py": "D", "notes/todo.py": "A"}
    # git's own view of the same changes: the tracked ones against HEAD, the untracked ones it does not ignore
    tracked = {line.split("\t")[1] for line in git_lines(repo, "diff", "HEAD", "--name-status")}
    untracked = set(git_lines(repo, "ls-files", "--others", "--exclude-standard"))
    assert set(status) == tracked | untracked and tree.untracked == 1
    changed = next(c for c in tree.commit.files if c.path == "pkg/parse.py")
    assert changed.old_blob == repo.git("rev-parse", "HEAD:pkg/parse.py").strip()
    assert changed.new_blob == repo.git("hash-object", "pkg/parse.py").strip() == blob_id(
        (repo.path / "pkg/parse.py").read_bytes())
    assert "-    return text\n+    return text.strip()\n" in changed.patch
    assert (changed.additions, changed.deletions) == (1, 1)


def test_chunks_give_each_changed_file_its_change_types(repo):
    repo.write("pkg/parse.py", LIB.replace("return text", "return text.strip()") + "\n\ndef extra():\n    return 3\n")
    repo.write("tests/test_strip.py", "def test_strip():\n    assert parse(' x') == 'x'\n")
    repo.git("rm", "-q", "pkg/old.py")
    work = read_work_in_progress(repo.path)
    files = {f.path: f for f in work.in_progress()}
    assert {t.type for t in files["pkg/parse.py"].change_types} == {"MODIFIED_FUNCTION", "NEW_FUNCTION"}
    assert files["pkg/parse.py"].symbols == ["parse", "extra"] and files["pkg/parse.py"].module == "pkg.parse"
    assert files["pkg/old.py"].status == "D"
    assert work.files == ["pkg/old.py", "pkg/parse.py", "tests/test_strip.py"]
    # Committed, the same changes chunk (scraper and chunker of the pipeline) into the same chunks.
    repo.commit("the same change", {})
    ((commit, chunks),) = history_from_repo(repo.path, 1)
    assert [(c.file, c.change_type, c.symbol, c.module, c.diff) for c in chunks] == [
        (c.file, c.change_type, c.symbol, c.module, c.diff) for c in work.chunks]
    assert {f.path: [(t.type, t.chunks) for t in f.change_types] for f in work.in_progress()} == {
        path: sorted(Counter(c.change_type for c in chunks if c.file == path).items(), key=lambda kv: (-kv[1], kv[0]))
        for path in {c.file for c in chunks}}


def test_secrets_are_redacted_in_patches_paths_and_chunks(repo):
    repo.write("pkg/settings.py", f'API_KEY = "{SECRET}"\n')
    repo.write(f"keys/{SECRET}.txt", "key\n")
    work = read_work_in_progress(repo.path)
    text = repr(work.tree.commit.to_dict()) + repr([c.to_dict() for c in work.chunks])
    assert SECRET not in text and "<REDACTED:aws_access_key>" in text
    assert work.tree.commit.redactions.get("aws_access_key", 0) >= 2
    assert any(f.path == "keys/<REDACTED:aws_access_key>.txt" for f in work.in_progress())


def test_binary_filtered_and_over_the_limits(repo):
    repo.write("assets/logo.png", b"\x89PNG\x00\x01\x02")
    repo.write("Cargo.lock", "# lock\n")
    repo.write("notes/big.py", "x = 1\n" * 400)
    tree = read_working_tree(repo.path, ScraperConfig(max_file_size=1000), max_untracked=2)
    skipped = {c.path: c.patch_skipped for c in tree.commit.files}
    assert skipped == {"Cargo.lock": "filtered", "assets/logo.png": "binary"}  # sorted: the first two taken
    assert tree.left_out == {"over_max_untracked": 1}
    tree = read_working_tree(repo.path, ScraperConfig(max_file_size=1000))
    assert {c.path: c.patch_skipped for c in tree.commit.files}["notes/big.py"] == "too_large"


def test_a_clean_tree_a_repository_without_commits_and_not_a_repository(repo, make_repo, tmp_path):
    tree = read_working_tree(repo.path)
    assert tree.commit.files == [] and tree.key == (repo.head(), frozenset())
    empty = make_repo("empty")
    empty.write("a.py", "def a():\n    return 1\n")
    tree = read_working_tree(empty.path)
    assert tree.head is None and [(c.path, str(c.status)) for c in tree.commit.files] == [("a.py", "A")]
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UserError, match="not a git repository"):
        read_working_tree(plain)
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    with pytest.raises(UserError, match="bare repository"):
        read_working_tree(bare)


def test_the_key_follows_the_set_of_changed_files_not_their_content(repo):
    repo.write("pkg/parse.py", LIB + "\n# one\n")
    first = read_working_tree(repo.path).key
    repo.write("pkg/parse.py", LIB + "\n# two\n")
    assert read_working_tree(repo.path).key == first
    repo.write("pkg/other.py", "y = 2\n")
    assert read_working_tree(repo.path).key != first
    repo.commit("save", {})
    assert read_working_tree(repo.path).key == (repo.head(), frozenset())
