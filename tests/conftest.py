"""Shared fixtures: real git repositories built commit by commit in `tmp_path`."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_AUTHOR = ("Alice Example", "alice@example.com")


class GitRepo:
    """A real git repository driven through the `git` command.

        repo = GitRepo(tmp_path / "repo")
        sha = repo.commit("add lib", {"src/lib.rs": "fn a() {}\\n"}, date="2024-01-02T10:00:00+00:00")
        repo.git("checkout", "-b", "feature")
    """

    def __init__(self, path: Path, default_branch: str = "main"):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", default_branch)
        self.git("config", "user.name", DEFAULT_AUTHOR[0])
        self.git("config", "user.email", DEFAULT_AUTHOR[1])
        self.git("config", "commit.gpgsign", "false")
        self.git("config", "core.autocrlf", "false")
        self._tick = 0

    def git(self, *args: str, env: dict | None = None, check: bool = True) -> str:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(["git", *args], cwd=self.path, capture_output=True, env=full_env)
        if check and proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode('utf-8', 'replace')}")
        return proc.stdout.decode("utf-8", "replace")

    def write(self, relpath: str, content: str | bytes) -> Path:
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8", newline="\n")
        else:
            target.write_bytes(content)
        return target

    def remove(self, relpath: str) -> None:
        self.git("rm", "-q", "-r", relpath)

    def move(self, old: str, new: str) -> None:
        (self.path / new).parent.mkdir(parents=True, exist_ok=True)
        self.git("mv", old, new)

    def commit(
        self,
        message: str,
        files: dict[str, str | bytes | None] | None = None,
        author: tuple[str, str] = DEFAULT_AUTHOR,
        date: str | None = None,
        committer_date: str | None = None,
        allow_empty: bool = False,
    ) -> str:
        """Write `files` (None deletes), stage everything, commit; return the new hash.

        Without `date`, each commit gets a distinct increasing date so that the
        history's order is unambiguous.
        """
        for relpath, content in (files or {}).items():
            if content is None:
                self.remove(relpath)
            else:
                self.write(relpath, content)
        self.git("add", "-A")
        if date is None:
            self._tick += 1
            moment = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(hours=self._tick)
            date = moment.isoformat()
        env = {
            "GIT_AUTHOR_NAME": author[0],
            "GIT_AUTHOR_EMAIL": author[1],
            "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_NAME": author[0],
            "GIT_COMMITTER_EMAIL": author[1],
            "GIT_COMMITTER_DATE": committer_date or date,
        }
        args = ["commit", "-q", "-m", message]
        if allow_empty:
            args.append("--allow-empty")
        self.git(*args, env=env)
        return self.head()

    def merge(self, branch: str, message: str | None = None, date: str | None = None) -> str:
        env = {}
        if date:
            env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        self.git("merge", "-q", "--no-ff", "-m", message or f"Merge {branch}", branch, env=env)
        return self.head()

    def checkout(self, branch: str, create: bool = False) -> None:
        self.git("checkout", "-q", *(["-b"] if create else []), branch)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()


@pytest.fixture
def make_repo(tmp_path):
    """Factory: `make_repo("name")` -> a fresh GitRepo under tmp_path."""

    def factory(name: str = "repo", default_branch: str = "main") -> GitRepo:
        return GitRepo(tmp_path / name, default_branch)

    return factory
