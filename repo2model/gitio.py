"""Reading git objects and running git, shared by the stages that need the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

from repo2model.errors import UserError


def git(repo: Path | str, *args: str, check: bool = True) -> str:
    """Run one git command in `repo` and return its stdout (text, replacement-decoded)."""
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True)
    if check and proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UserError(f"git {' '.join(args[:3])} failed in {repo}: {message[-1] if message else proc.returncode}")
    return proc.stdout.decode("utf-8", "replace")


def open_repository(path: Path | str) -> Path:
    """The top folder of the git repository at `path`, or a one-line UserError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such folder")
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True)
    if proc.returncode != 0:
        proc_bare = subprocess.run(["git", "-C", str(path), "rev-parse", "--is-bare-repository"], capture_output=True)
        if proc_bare.returncode == 0 and proc_bare.stdout.strip() == b"true":
            return path.resolve()
        raise UserError(f"{path}: not a git repository")
    return Path(proc.stdout.decode().strip())


class CatFile:
    """One long-lived `git cat-file --batch` process: read many blobs cheaply.

        with CatFile(repo) as objects:
            data = objects.read(blob_id)  # bytes, or None when the object is missing
    """

    def __init__(self, repo: Path | str):
        self.repo = str(repo)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "CatFile":
        self._start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            ["git", "-C", self.repo, "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def read(self, oid: str) -> bytes | None:
        """The object's content, or None if the repository does not have it."""
        if self._proc is None:
            self._start()
        proc = self._proc
        proc.stdin.write(oid.encode() + b"\n")
        proc.stdin.flush()
        header = proc.stdout.readline()
        if not header:
            raise UserError(f"git cat-file stopped unexpectedly in {self.repo}")
        parts = header.split()
        if len(parts) < 3 or parts[1] == b"missing":
            return None
        size = int(parts[2])
        data = proc.stdout.read(size)
        proc.stdout.read(1)  # the newline after the content
        return data

    def read_many(self, oids: list[str]) -> list[bytes | None]:
        """`read` for many objects with one round trip per 256: requests written ahead, then answers read.

        Saves a process switch per object when the machine is busy. Requests are
        sent in groups small enough to fit the pipe buffer, so git never blocks on
        its input while we wait for its output.
        """
        if self._proc is None:
            self._start()
        proc = self._proc
        results: list[bytes | None] = []
        for start in range(0, len(oids), 256):
            group = oids[start : start + 256]
            proc.stdin.write(b"".join(oid.encode() + b"\n" for oid in group))
            proc.stdin.flush()
            for _ in group:
                header = proc.stdout.readline()
                if not header:
                    raise UserError(f"git cat-file stopped unexpectedly in {self.repo}")
                parts = header.split()
                if len(parts) < 3 or parts[1] == b"missing":
                    results.append(None)
                    continue
                size = int(parts[2])
                results.append(proc.stdout.read(size))
                proc.stdout.read(1)
        return results

    def close(self) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
            self._proc = None
