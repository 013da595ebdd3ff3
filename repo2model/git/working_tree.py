"""The work in progress: a repository's uncommitted changes, read as one partial commit on top of HEAD.

    tree = read_working_tree(repo, scraper_cfg)     # WorkingTree: .commit (a Commit record), .head, .key
    with WorkingTreeObjects(tree) as objects:       # CatFile's interface: HEAD's blobs and the files on disk
        chunks = Chunker(objects, chunker_cfg, redactor).chunk_commit(tree.commit, stats)

What counts: every change between HEAD and the files on disk, staged or not (`git diff HEAD`, renames paired
when git can see them), and the untracked files git does not ignore (`git ls-files --others
--exclude-standard`: .gitignore, .git/info/exclude and the global excludes respected) as new files. The
scraper's settings apply as to a commit: `file_filters` / `exclude_globs` (target/, lock files, ...) give
`patch_skipped: filtered`, files over `max_file_size` `too_large`, patches over `max_patch_bytes` are cut, and
secrets in patches and paths are redacted with the scraper's Redactor. At most `max_untracked` untracked files
are taken (a build folder nobody ignored must not flood a prediction); the rest are counted in `left_out`.

The partial commit's hash is WORKING_TREE: the chunker asks for `WORKING_TREE:<folder>/Cargo.toml` to find a
file's crate, and WorkingTreeObjects answers it from the disk, as it answers the new side of each changed file
(by a blob id computed from the bytes on disk, as `git hash-object` would without filters). Its author is the
repository's configured user, its time the moment it was read.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from repo2model.core.errors import UserError
from repo2model.core.records import (
    PATCH_BINARY, PATCH_FILTERED, PATCH_TOO_LARGE, ChangeStatus, Commit, FileChange, Person,
)
from repo2model.git.commands import git, git_bytes, open_repository
from repo2model.git.log import SUBMODULE_MODE, RawFile, parse_raw, split_header, split_sections
from repo2model.git.objects import CatFile
from repo2model.git.redact import Redactor
from repo2model.git.scraping import PathFilter, ScraperConfig, decode

log = logging.getLogger("predict")

WORKING_TREE = "WORKTREE"  # the partial commit's hash, and the revision of the files on disk in object names
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # what a repository without commits is diffed against
BINARY_PROBE = 8000  # bytes git looks at for a NUL to call a file binary
SYMLINK_MODE = "120000"


@dataclass
class WorkingTree:
    """A repository's uncommitted changes as one commit on top of HEAD (see the module docstring)."""

    repo: Path  # the repository's top folder
    head: str | None  # HEAD's commit (None: no commit yet)
    commit: Commit  # the partial commit: hash WORKING_TREE, parents [head]
    contents: dict[str, bytes] = field(default_factory=dict)  # new blob id -> the file's bytes on disk
    untracked: int = 0  # untracked files taken as new files
    left_out: dict[str, int] = field(default_factory=dict)  # untracked files not taken, by reason

    @property
    def paths(self) -> list[str]:
        """The changed files, in the partial commit's order."""
        return [change.path for change in self.commit.files]

    @property
    def key(self) -> tuple:
        """What a watcher compares: HEAD and the set of changed files (not their content)."""
        return self.head, frozenset((change.path, str(change.status)) for change in self.commit.files)


def read_working_tree(repo: Path | str, cfg: ScraperConfig | None = None, max_untracked: int = 200) -> WorkingTree:
    """The uncommitted changes of `repo` (UserError when it is not a repository with a working tree)."""
    cfg = cfg or ScraperConfig()
    top = open_repository(repo)
    if git(top, "rev-parse", "--is-inside-work-tree", check=False).strip() != "true":
        raise UserError(f"{top}: a bare repository has no working tree to read")
    head = git(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False).strip() or None
    reader = _Reader(top, cfg)
    files = reader.tracked_changes(head or EMPTY_TREE)
    taken = {change.path for change in files}
    untracked, left_out = reader.untracked_files(taken, max_untracked)
    files += untracked
    name = git(top, "config", "user.name", check=False).strip()
    email = git(top, "config", "user.email", check=False).strip()
    now = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    person = Person(name, email)
    commit = Commit(hash=WORKING_TREE, parents=[head] if head else [], author=person, committer=person,
                    authored_at=now, committed_at=now, message="", files=files,
                    redactions=dict(sorted(reader.redactions.items())))
    return WorkingTree(top, head, commit, reader.contents, len(untracked), left_out)


class _Reader:
    """Builds the partial commit's FileChanges as the scraper builds a commit's: filters, limits, redaction."""

    def __init__(self, top: Path, cfg: ScraperConfig):
        self.top, self.cfg = top, cfg
        self.redactor: Redactor | None = cfg.redactor()
        self.filters = PathFilter(cfg.file_filters, cfg.exclude_globs)
        self.contents: dict[str, bytes] = {}
        self.redactions: Counter = Counter()

    def diff_arguments(self, base: str) -> list[str]:
        """`git diff <base>` (the files on disk against HEAD) asked like the scraper asks `git log`."""
        settings = {"core.quotePath": "false", "diff.noprefix": "false", "diff.mnemonicPrefix": "false",
                    "diff.orderFile": "/dev/null", "diff.relative": "false", "color.ui": "never",
                    "diff.suppressBlankEmpty": "false", "core.bigFileThreshold": str(self.cfg.max_file_size)}
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        return [*options, "diff", base, "--raw", "-p", "-z", "--no-abbrev", "--full-index", "-U3", "--no-color",
                "--no-ext-diff", "--no-textconv", "--diff-algorithm=myers", "--src-prefix=a/", "--dst-prefix=b/",
                "-M" if self.cfg.detect_renames else "--no-renames", "--"]

    def tracked_changes(self, base: str) -> list[FileChange]:
        entries, patch = parse_raw(git_bytes(self.top, *self.diff_arguments(base)))
        sections = iter(split_sections(patch))
        files = []
        for entry in entries:
            taken = [next(sections, b"")]
            if entry.status == ChangeStatus.TYPE_CHANGED and entry.old_oid:
                taken.append(next(sections, b""))  # a type change is a deletion and an addition
            files.append(self.file_change(entry, taken))
        return files

    def file_change(self, entry: RawFile, sections: list[bytes]) -> FileChange:
        change = FileChange(path=entry.path, old_path=entry.old_path, status=entry.status, additions=0,
                            deletions=0, binary=False, old_blob=entry.old_oid, new_blob=None, patch=None,
                            similarity=entry.similarity)
        if entry.status != ChangeStatus.DELETED and entry.new_mode not in (SUBMODULE_MODE, SYMLINK_MODE):
            change.new_blob = self.read_new_side(entry.path)
        body = b""
        for section in sections:
            header, hunks = split_header(section)
            change.binary = change.binary or b"\nBinary files " in header or header.startswith(b"Binary files ")
            body += hunks
        self.set_patch(change, body)
        return change

    def read_new_side(self, path: str) -> str | None:
        """The blob id of the file on disk (its bytes kept for the chunker); None when it cannot be read."""
        try:
            data = (self.top / path).read_bytes()
        except OSError:
            return None
        if len(data) > self.cfg.max_file_size:
            return None
        blob = blob_id(data)
        self.contents[blob] = data
        return blob

    def set_patch(self, change: FileChange, body: bytes) -> None:
        """The patch (or why there is none), counted, cut and redacted as the scraper does; the path redacted."""
        change.additions = body.count(b"\n+") + body.startswith(b"+")
        change.deletions = body.count(b"\n-") + body.startswith(b"-")
        if self.filters.excluded(change.path):
            change.patch_skipped = PATCH_FILTERED
        elif change.binary:
            too_large = self.size_on_disk(change.path) > self.cfg.max_file_size
            change.patch_skipped = PATCH_TOO_LARGE if too_large else PATCH_BINARY
            change.binary = not too_large
        else:
            if len(body) > self.cfg.max_patch_bytes:
                cut = body.rfind(b"\n", 0, self.cfg.max_patch_bytes) + 1 or self.cfg.max_patch_bytes
                body = body[:cut] if body[cut - 1:cut] == b"\n" else body[:cut] + b"\n"
                change.truncated = True
            text, change.non_utf8 = decode(body)
            change.patch = self.redact(text, change.path)
        if self.redactor is not None:
            for attr in ("path", "old_path"):
                value = getattr(change, attr)
                if value:
                    redacted, counts = self.redactor.redact_path(value)
                    setattr(change, attr, redacted)
                    self.redactions.update(counts)

    def redact(self, text: str, path: str) -> str:
        if self.redactor is None:
            return text
        text, counts = self.redactor.redact(text, path=path)
        self.redactions.update(counts)
        return text

    def size_on_disk(self, path: str) -> int:
        try:
            return (self.top / path).stat().st_size
        except OSError:
            return 0

    def untracked_files(self, taken: set[str], limit: int) -> tuple[list[FileChange], dict[str, int]]:
        """Untracked files git does not ignore, as added files (at most `limit`; the rest counted by reason)."""
        listed = git_bytes(self.top, "-c", "core.quotePath=false", "ls-files", "--others", "--exclude-standard",
                           "-z").split(b"\0")
        left_out: Counter = Counter()
        files = []
        for raw in sorted(p for p in listed if p):
            path = raw.decode("utf-8", "replace")
            if path in taken or (self.top / path).is_symlink() or not (self.top / path).is_file():
                continue
            if len(files) >= limit:
                left_out["over_max_untracked"] += 1
                continue
            files.append(self.new_file(path))
        return files, dict(left_out)

    def new_file(self, path: str) -> FileChange:
        change = FileChange(path=path, old_path=None, status=ChangeStatus.ADDED, additions=0, deletions=0,
                            binary=False, old_blob=None, new_blob=None, patch=None)
        if self.filters.excluded(path):
            change.patch_skipped = PATCH_FILTERED
        elif self.size_on_disk(path) > self.cfg.max_file_size:
            change.patch_skipped = PATCH_TOO_LARGE
        else:
            change.new_blob = self.read_new_side(path)
            data = self.contents.get(change.new_blob, b"") if change.new_blob else b""
            change.binary = b"\0" in data[:BINARY_PROBE]
            self.set_patch(change, b"" if change.binary else added_patch(data))
        if change.patch_skipped and self.redactor is not None:
            change.path = self.redactor.redact_path(path)[0]
        return change


def added_patch(data: bytes) -> bytes:
    """The hunk git writes for a new file (`@@ -0,0 +1,N @@` and every line with `+`)."""
    if not data:
        return b""
    lines = data.split(b"\n")
    ends_with_newline = data.endswith(b"\n")
    if ends_with_newline:
        lines = lines[:-1]
    body = b"".join(b"+" + line + b"\n" for line in lines)
    if not ends_with_newline:
        body += b"\\ No newline at end of file\n"
    count = f"+1,{len(lines)}" if len(lines) != 1 else "+1"
    return f"@@ -0,0 {count} @@\n".encode() + body


def blob_id(data: bytes) -> str:
    """The id git gives these bytes as a blob (`git hash-object`, without clean filters)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class WorkingTreeObjects:
    """CatFile's reading interface over a WorkingTree: the new sides of its files and `WORKING_TREE:<path>`
    names from the disk, everything else (HEAD's blobs, `<commit>:<path>`) from the repository."""

    def __init__(self, tree: WorkingTree):
        self.tree = tree
        self.objects = CatFile(tree.repo)

    def __enter__(self) -> "WorkingTreeObjects":
        self.objects.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.objects.close()

    @property
    def unreadable(self) -> int:
        return self.objects.unreadable

    def read(self, name: str) -> bytes | None:
        return self.read_many([name])[0]

    def read_many(self, names: list[str]) -> list[bytes | None]:
        results: list[bytes | None] = [None] * len(names)
        asked = []
        for i, name in enumerate(names):
            if name in self.tree.contents:
                results[i] = self.tree.contents[name]
            elif name.startswith(WORKING_TREE + ":"):
                results[i] = self.from_disk(name[len(WORKING_TREE) + 1:])
            else:
                asked.append(i)
        for i, data in zip(asked, self.objects.read_many([names[i] for i in asked])):
            results[i] = data
        return results

    def from_disk(self, path: str) -> bytes | None:
        target = (self.tree.repo / path).resolve()
        if self.tree.repo.resolve() not in target.parents:  # a name never leads out of the repository
            return None
        try:
            return target.read_bytes() if target.is_file() else None
        except OSError:
            return None
