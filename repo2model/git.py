"""The one way to run git: the repository named explicitly, nothing inherited from the caller's git.

Every command runs as `git -C <repo> ...` in an environment without the caller's
`GIT_*` variables: inside a git hook or a CI step, `GIT_DIR`, `GIT_WORK_TREE`,
`GIT_INDEX_FILE`, `GIT_OBJECT_DIRECTORY`, ... point at *another* repository, and
a plain `git log` would read that one. Only the variables that choose the user's
own configuration files are kept (`GIT_CONFIG_GLOBAL`, `GIT_CONFIG_SYSTEM`,
`GIT_CONFIG_NOSYSTEM`). `GIT_NO_LAZY_FETCH=1` is set: in a partial clone a missing
blob is then reported missing (and the file degraded) instead of being fetched
from the network one object at a time.

    from repo2model.git import git, open_repository, CatFile, ls_tree

    top = open_repository("~/projects/the-block")     # UserError (one line) if it is not one
    head = git(top, "rev-parse", "HEAD").strip()
    with CatFile(top) as objects:
        text = objects.read(f"{head}:docs/metal backend/Cargo.toml")   # None when missing
        sizes = objects.size(blob_id)                                  # None when missing
    files = ls_tree(top, "HEAD")                                       # [TreeEntry(path, mode, oid, size)]

A failed command raises `GitError` (a UserError: one line, exit 2) whose message
ends with git's own last line of stderr (`git_error_line`, the one place that
reads git's stderr).
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from repo2model.errors import UserError

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
    env["GIT_NO_LAZY_FETCH"] = "1"
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


# ---------------------------------------------------------------- trees


@dataclass(frozen=True)
class TreeEntry:
    path: str  # relative to the top folder, '/'-separated (undecodable bytes replaced)
    mode: str  # 100644, 100755, 120000 (symlink)
    oid: str
    size: int | None  # bytes


def ls_tree(repo: Path | str, rev: str) -> list[TreeEntry]:
    """Every file (blob, symlinks included; no submodules) of the tree at `rev`, recursively, in git's order."""
    out = git_bytes(repo, "ls-tree", "-r", "-z", "--long", "--full-tree", rev, "--")
    entries = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, name = record.partition(b"\t")
        mode, kind, oid, size = meta.decode().split()
        if kind != "blob":
            continue  # a submodule (commit) entry
        entries.append(TreeEntry(name.decode("utf-8", "replace"), mode, oid, None if size == "-" else int(size)))
    return entries


# ---------------------------------------------------------------- objects

_BATCH_BYTES = 32 * 1024  # requests written ahead stay far below the pipe buffer: git never blocks on its input
_NO_OBJECT = (b" missing", b" ambiguous", b" dangling", b" loop", b" notdir")


def _parse_header(header: bytes) -> int | None:
    """The object size from a `--batch`/`--batch-check` answer, None when there is no such object.

    Parsed from the right: the name echoed at the left may itself hold spaces
    (`<rev>:docs/metal backend/Cargo.toml missing`).
    """
    line = header.rstrip(b"\n")
    if line.endswith(_NO_OBJECT):
        return None
    parts = line.rsplit(b" ", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise ValueError(f"unexpected git cat-file answer: {line[:200]!r}")
    return int(parts[2])


class _Batch:
    """One `git cat-file <mode>` process; restarted when git dies on a corrupt object."""

    def __init__(self, repo: str, mode: str):
        self.repo = repo
        self.mode = mode
        self.proc: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        if self.proc is None:
            self.proc = git_popen(self.repo, ["cat-file", self.mode], stdin=subprocess.PIPE)
        return self.proc

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        proc.stdout.close()


class CatFile:
    """Long-lived `git cat-file --batch` (contents) and `--batch-check` (sizes) processes.

        with CatFile(repo) as objects:
            data = objects.read(blob_id)             # bytes, or None when the object is missing
            many = objects.read_many(names)          # the same, one round trip per group of names
            size = objects.size(blob_id)             # int, or None when the object is missing

    A name is an object id or `<rev>:<path>` (paths may hold spaces). A name git
    cannot be asked about (it holds a newline), an object the repository lacks, and
    an object git cannot read (a corrupt file: git dies, and is restarted) all give
    None; `unreadable` counts the last kind.
    """

    def __init__(self, repo: Path | str):
        self.repo = str(repo)
        self._contents = _Batch(self.repo, "--batch")
        self._checks = _Batch(self.repo, "--batch-check")
        self._sizes: dict[str, int | None] = {}
        self.unreadable = 0

    def __enter__(self) -> "CatFile":
        self._contents.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, name: str) -> bytes | None:
        """The object's content, or None if the repository does not have it."""
        return self.read_many([name])[0]

    def read_many(self, names: list[str]) -> list[bytes | None]:
        """`read` for many names, requests written ahead in groups small enough for the pipe buffer
        (saves a process switch per object when the machine is busy)."""
        results: list[bytes | None] = [None] * len(names)
        todo = [i for i, name in enumerate(names) if "\n" not in name]
        while todo:
            group, size = [], 0
            for i in todo:
                size += len(names[i].encode()) + 1
                if group and size > _BATCH_BYTES:
                    break
                group.append(i)
            done = self._read_group(names, group, results)
            todo = todo[done:]
        return results

    def _read_group(self, names: list[str], group: list[int], results: list) -> int:
        """Ask for `group`; returns how many of them are answered (all, unless git died on one)."""
        proc = self._contents.start()
        try:
            proc.stdin.write(b"".join(names[i].encode() + b"\n" for i in group))
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # git is gone: the first readline below says so
        for answered, i in enumerate(group):
            header = proc.stdout.readline()
            if not header:
                return self._died(answered)
            size = _parse_header(header)
            if size is None:
                continue
            data = proc.stdout.read(size + 1)  # the content and its trailing newline
            if len(data) != size + 1:
                return self._died(answered)
            results[i] = data[:-1]
        return len(group)

    def _died(self, answered: int) -> int:
        """git stopped at the (answered+1)-th request of a group: that object is unreadable."""
        self.unreadable += 1
        self._contents.close()
        return answered + 1

    def size(self, name: str) -> int | None:
        """The object's size in bytes (without reading it), or None if the repository does not have it."""
        if name in self._sizes:
            return self._sizes[name]
        size = None
        if "\n" not in name:
            proc = self._checks.start()
            try:
                proc.stdin.write(name.encode() + b"\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass
            header = proc.stdout.readline()
            if header:
                size = _parse_header(header)
            else:
                self.unreadable += 1
                self._checks.close()
        if len(self._sizes) < 100_000:
            self._sizes[name] = size
        return size

    def close(self) -> None:
        self._contents.close()
        self._checks.close()
