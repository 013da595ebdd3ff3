"""The one way to run git: the repository named explicitly, nothing inherited from the caller's git.

Every command runs as `git -C <repo> ...` in an environment without the caller's
`GIT_*` variables: inside a git hook or a CI step, `GIT_DIR`, `GIT_WORK_TREE`,
`GIT_INDEX_FILE`, `GIT_OBJECT_DIRECTORY`, ... point at *another* repository, and
a plain `git log` would read that one. Only the variables that choose the user's
own configuration files are kept (`GIT_CONFIG_GLOBAL`, `GIT_CONFIG_SYSTEM`,
`GIT_CONFIG_NOSYSTEM`).

Missing objects (a partial clone, a pruned mirror) are reported, never fetched: the
project only reads the repository as it is. In a partial clone git fetches a missing
object from its promisor remote on first use. `GIT_NO_LAZY_FETCH=1` stops that (the
security releases from 2.39.4 on carry it: this machine's 2.39.5 honours it), and an
empty `GIT_ALLOW_PROTOCOL` (no transport allowed) stops it on any older git: the fetch
is refused before any connection or prompt. (Measured on 2.39.5: a promisor remote
whose ssh command sleeps 15 s held a plain `git cat-file` 30 s; with either variable
it failed in 10 ms.) Either way git then dies on that object ("could not fetch ...
from promisor remote", exit 128) instead of answering "missing", and `ls-tree -l`
dies instead of printing `BAD`: `CatFile` and `ls_tree` (`repo2model.git.objects`)
turn that into None / `missing`.

    from repo2model.git.commands import git, open_repository

    top = open_repository("~/projects/the-block")     # UserError (one line) if it is not one
    head = git(top, "rev-parse", "HEAD").strip()

A failed command raises `GitError` (a UserError: one line, exit 2) whose message
ends with git's own last line of stderr (`git_error_line`, the one place that
reads git's stderr).
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Iterable

from repo2model.core.errors import UserError

# The user's choice of configuration files: kept (they never select a repository).
KEPT_GIT_VARIABLES = frozenset({"GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM"})


class GitError(UserError):
    """A git command failed; the message names the command, the repository and git's reason."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def git_environment() -> dict[str, str]:
    """The caller's environment without inherited GIT_* variables (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in KEPT_GIT_VARIABLES}
    env["GIT_NO_LAZY_FETCH"] = "1"  # a partial clone's missing object is not fetched (see the module docstring)
    env["GIT_ALLOW_PROTOCOL"] = ""  # nor on a git without that variable: an empty list allows no transport
    env["GIT_TERMINAL_PROMPT"] = "0"  # never wait for a password on the terminal
    return env


def git_error_line(stderr: bytes | str, returncode: int | None = None) -> str:
    """git's reason for a failure: the last non-empty line of its stderr (or the exit code)."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {returncode}"


def _command(repo: Path | str, args: Iterable[str]) -> list[str]:
    return ["git", "-C", str(repo), *args]


def _run(repo: Path | str, args: tuple[str, ...], check: bool, input: bytes | None) -> bytes:
    try:
        proc = subprocess.run(_command(repo, args), input=input, capture_output=True, env=git_environment(),
                              stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise UserError("cannot run git: no `git` executable on the PATH: install git") from None
    if check and proc.returncode != 0:
        reason = git_error_line(proc.stderr, proc.returncode)
        raise GitError(f"git {' '.join(args[:3])} failed in {repo}: {reason}", proc.returncode,
                       proc.stderr.decode("utf-8", "replace"))
    return proc.stdout


def git(repo: Path | str, *args: str, check: bool = True, input: bytes | None = None) -> str:
    """Run one git command in `repo`; its stdout (UTF-8, undecodable bytes replaced).

    check=False returns whatever git printed (often nothing) instead of raising GitError.
    """
    return _run(repo, args, check, input).decode("utf-8", "replace")


def git_bytes(repo: Path | str, *args: str, check: bool = True, input: bytes | None = None) -> bytes:
    """`git` returning stdout as bytes (file contents, -z output with non-UTF-8 names)."""
    return _run(repo, args, check, input)


def git_popen(repo: Path | str, args: list[str], **popen_kwargs) -> subprocess.Popen:
    """A streaming git process in `repo` (same environment cleaning as `git`).

    Defaults: stdin from /dev/null, stdout a pipe, stderr discarded; pass any of
    them (or other Popen arguments) to change that.
    """
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.DEVNULL)
    popen_kwargs.setdefault("env", git_environment())
    try:
        return subprocess.Popen(_command(repo, args), **popen_kwargs)
    except FileNotFoundError:
        raise UserError("cannot run git: no `git` executable on the PATH: install git") from None


@functools.cache
def git_version() -> str:
    """`git version` as git prints it (e.g. "git version 2.39.5")."""
    return git(".", "version").strip()


def open_repository(path: Path | str) -> Path:
    """The top folder of the repository at `path` (or the bare repository's folder); else a one-line UserError."""
    path = Path(path).expanduser()
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise UserError(f"{str(path)[:200]}: not a usable path ({exc.strerror or type(exc).__name__})") from None
    if not exists:
        raise UserError(f"{path}: no such folder")
    if not is_dir:
        raise UserError(f"{path}: not a folder (give the repository's folder)")
    top = git(path, "rev-parse", "--show-toplevel", check=False).strip()
    if top:
        return Path(top)
    if git(path, "rev-parse", "--is-bare-repository", check=False).strip() == "true":
        return Path(git(path, "rev-parse", "--absolute-git-dir").strip())
    try:
        git(path, "rev-parse", "--git-dir")
    except GitError as exc:
        reason = git_error_line(exc.stderr)
        if "not a git repository" in reason.lower():
            raise UserError(f"{path}: not a git repository") from None
        raise UserError(f"{path}: cannot open the git repository: {reason}") from None
    raise UserError(f"{path}: not a git repository's working tree (a .git folder?): give the repository's top folder")
