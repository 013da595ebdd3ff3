"""Reading the objects of a repository: the files of a tree (`ls_tree`) and blob contents and sizes
through long-lived `git cat-file` processes (`CatFile`).

    from repo2model.git.objects import CatFile, ls_tree

    with CatFile(top) as objects:
        text = objects.read(f"{head}:docs/metal backend/Cargo.toml")   # None when missing
        sizes = objects.size(blob_id)                                  # None when missing
    files = ls_tree(top, "HEAD")                       # [TreeEntry(path, mode, oid, size, missing)]

Missing objects degrade, never crash: in a partial clone git dies on an object it may not fetch
(see `repo2model.git.commands`), and both turn that death into None / `missing`.
"""

from __future__ import annotations

import bisect
import re
import subprocess
from array import array
from dataclasses import dataclass
from pathlib import Path

from repo2model.git.commands import GitError, git, git_bytes, git_popen


@dataclass(frozen=True)
class TreeEntry:
    path: str  # relative to the top folder, '/'-separated (undecodable bytes replaced)
    mode: str  # 100644, 100755, 120000 (symlink)
    oid: str
    size: int | None  # bytes; None when the blob is missing
    missing: bool = False  # the repository lacks the blob (partial clone, pruned mirror): its content is unknown


def ls_tree(repo: Path | str, rev: str) -> list[TreeEntry]:
    """Every file (blob, symlinks included; no submodules) of the tree at `rev`, recursively, in git's order.

    A blob the repository lacks is listed with `missing` set: git prints its size as `BAD`, or (a partial clone)
    `--long` dies on it, its fetch refused; the tree is then listed without sizes (no blob is read) and the
    sizes asked of `CatFile`, which reports such blobs missing.
    """
    try:
        out, sized = git_bytes(repo, "ls-tree", "-r", "-z", "--long", "--full-tree", rev, "--"), True
    except GitError:
        out, sized = git_bytes(repo, "ls-tree", "-r", "-z", "--full-tree", rev, "--"), False  # a bad rev fails here too
    entries = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, name = record.partition(b"\t")
        mode, kind, oid, *size = meta.decode().split()
        if kind != "blob":
            continue  # a submodule (commit) entry
        known = size[0].isdigit() if size else False
        entries.append(TreeEntry(name.decode("utf-8", "replace"), mode, oid, int(size[0]) if known else None,
                                 missing=sized and not known))
    if not sized:
        with CatFile(repo) as objects:
            sizes = [objects.size(e.oid) for e in entries]
        entries = [TreeEntry(e.path, e.mode, e.oid, size, size is None) for e, size in zip(entries, sizes)]
    return entries


# ---------------------------------------------------------------- objects

_BATCH_BYTES = 32 * 1024  # requests written ahead stay far below the pipe buffer: git never blocks on its input
_NO_OBJECT = (b" missing", b" ambiguous", b" dangling", b" loop", b" notdir")
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256


def _parse_header(header: bytes) -> tuple[bytes, int] | None:
    """(type, size) from a `--batch`/`--batch-check` answer, None when there is no such object.

    Parsed from the right: the name echoed at the left may itself hold spaces
    (`<rev>:docs/metal backend/Cargo.toml missing`).
    """
    line = header.rstrip(b"\n")
    if line.endswith(_NO_OBJECT):
        return None
    parts = line.rsplit(b" ", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise ValueError(f"unexpected git cat-file answer: {line[:200]!r}")
    return parts[1], int(parts[2])


def is_partial_clone(repo: Path | str) -> bool:
    """Whether the repository leaves objects on a promisor remote (`git clone --filter=...`)."""
    out = git(repo, "config", "--get-regexp", r"^(extensions\.partialclone|remote\..*\.promisor)$", check=False)
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "extensions.partialclone" or value.strip().lower() in ("", "true", "yes", "on", "1"):
            return True
    return False


class LocalObjects:
    """The ids of the objects a repository holds here: `cat-file --batch-all-objects` lists them without
    fetching. Kept as the sorted first 64 bits of each id (8 bytes an object); a missing object sharing those
    bits with a present one (odds about n^2 / 2^64) is only asked of git, which then dies on it as before."""

    def __init__(self, repo: Path | str):
        out = git_bytes(repo, "cat-file", "--batch-check=%(objectname)", "--batch-all-objects", "--unordered")
        ids = out.split()
        self.hash_bytes = len(ids[0]) // 2 if ids else 20
        self._keys = array("Q", sorted(int(oid[:16], 16) for oid in ids))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, oid: str) -> bool:
        key = int(oid[:16], 16)
        i = bisect.bisect_left(self._keys, key)
        return i < len(self._keys) and self._keys[i] == key


def tree_entry_id(tree: bytes, name: bytes, hash_bytes: int) -> str | None:
    """The id of entry `name` in a raw tree object (`<mode> <name>\0<id>` repeated), None when absent."""
    pos = 0
    while pos < len(tree):
        end = tree.index(b"\0", pos)
        if tree[pos:end].partition(b" ")[2] == name:
            return tree[end + 1: end + 1 + hash_bytes].hex()
        pos = end + 1 + hash_bytes
    return None


class _Batch:
    """One `git cat-file <mode>` process; restarted when git dies on a corrupt or unfetchable object."""

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

    In a partial clone git dies on a missing object too (its fetch is refused: see
    `repo2model.git.commands`). After the first such death the clone's own object ids
    are listed once (`LocalObjects`), and a name whose object is not among them (an id,
    or `<rev>:<path>` looked up in its folder's tree, which a blob-less clone keeps) is
    answered None without asking git: one death per CatFile, not one per missing blob.
    """

    def __init__(self, repo: Path | str):
        self.repo = str(repo)
        self._contents = _Batch(self.repo, "--batch")
        self._checks = _Batch(self.repo, "--batch-check")
        self._sizes: dict[str, int | None] = {}
        self.unreadable = 0
        self._partial: bool | None = None  # asked after the first death
        self._local: LocalObjects | None = None  # a partial clone's own objects, listed after the first death

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
        todo = [i for i, name in enumerate(names) if "\n" not in name and not self._absent(name)]
        while todo:
            group, size = [], 0
            for i in todo:
                size += len(names[i].encode()) + 1
                if group and size > _BATCH_BYTES:
                    break
                group.append(i)
            guarded = self._local is not None
            done = self._read_group(names, group, results)
            todo = todo[done:]
            if self._local is not None and not guarded:  # git just died on an object this partial clone lacks
                todo = [i for i in todo if not self._absent(names[i])]
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
                return self._died(names[i], answered)
            found = _parse_header(header)
            if found is None:
                continue
            data = proc.stdout.read(found[1] + 1)  # the content and its trailing newline
            if len(data) != found[1] + 1:
                return self._died(names[i], answered)
            results[i] = data[:-1]
        return len(group)

    def _died(self, name: str, answered: int) -> int:
        """git stopped at the (answered+1)-th request of a group, on `name`: missing (a partial clone's object
        that git could not fetch) or unreadable (corrupt)."""
        self._contents.close()
        self._lost(name)
        return answered + 1

    def _lost(self, name: str) -> None:
        if self._partial is None:
            self._partial = is_partial_clone(self.repo)
            if self._partial:
                self._local = LocalObjects(self.repo)
        if not self._absent(name):
            self.unreadable += 1

    def _absent(self, name: str) -> bool:
        """Known to be missing without asking git (only once git died in a partial clone; see the class)."""
        if self._local is None:
            return False
        if _OBJECT_ID.fullmatch(name):
            return name not in self._local
        rev, colon, path = name.partition(":")
        if not colon or not path:
            return False  # a commit or tree by name: a blob-less clone has them
        folder, _, base = path.rstrip("/").rpartition("/")
        tree = self._tree(f"{rev}:{folder}")
        oid = tree_entry_id(tree, base.encode(), self._local.hash_bytes) if tree is not None else None
        return oid is not None and oid not in self._local

    def _tree(self, name: str) -> bytes | None:
        """A tree's raw content, None when there is none (or git died on it: then git is asked for the name)."""
        proc = self._contents.start()
        try:
            proc.stdin.write(name.encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        header = proc.stdout.readline()
        found = _parse_header(header) if header else None
        data = proc.stdout.read(found[1] + 1) if found is not None else b""
        if not header or (found is not None and len(data) != found[1] + 1):
            self._contents.close()
            return None
        return data[:-1] if found is not None and found[0] == b"tree" else None

    def size(self, name: str) -> int | None:
        """The object's size in bytes (without reading it), or None if the repository does not have it."""
        if name in self._sizes:
            return self._sizes[name]
        size = None
        if "\n" not in name and not self._absent(name):
            proc = self._checks.start()
            try:
                proc.stdin.write(name.encode() + b"\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass
            header = proc.stdout.readline()
            if header:
                found = _parse_header(header)
                size = found[1] if found is not None else None
            else:
                self._checks.close()
                self._lost(name)
        if len(self._sizes) < 100_000:
            self._sizes[name] = size
        return size

    def close(self) -> None:
        self._contents.close()
        self._checks.close()
