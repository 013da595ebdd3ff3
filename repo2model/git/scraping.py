"""Scraping a repository's history into `Commit` records: the library behind the git_scraper stage.

    from repo2model.git.scraping import ScraperConfig, scrape_recent
    commits = scrape_recent(Path("~/projects/the-block").expanduser(), 20)   # the last 20 of HEAD

How: `git rev-list --date-order --reverse` fixes the commits and their order
(topological, parents first, ties by commit time); one `git log --no-walk
--stdin --raw -p -z --diff-merges=first-parent -M` per 1,000 commits streams
headers, tree diffs (full blob ids) and patches (git keeps what it parsed until
it exits: batches keep its memory flat); `LogReader` reads the stream one file
section at a time (a commit that adds 100 MB of vendored code never sits in
memory whole), and `Scraper` counts `+`/`-` lines from the patch (no --numstat:
that would diff everything twice), filters, truncates and redacts as it goes.
Branch membership comes from one `git rev-list --topo-order --parents` pass with
a bitset per commit (`BranchGraph`). Missing objects (partial clone, pruned
mirror) make `git log -p` die part-way: the scraper notices the exit code, finds
the commits whose blobs are missing (`git log --raw --no-renames` + `git cat-file
--batch-check`), diffs the files it can per commit, and records the others with
`patch: null, patch_skipped: "unavailable"`.

Every git command goes through `repo2model.git.commands` (repository explicit, the
caller's GIT_* variables ignored).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Iterator

from repo2model.core.artifacts import is_compressed, open_text, read_commits_metadata
from repo2model.core.errors import UserError, first_line
from repo2model.git.commands import CatFile, GitError, git, git_error_line, git_popen, git_version, open_repository
from repo2model.core.records import (
    PATCH_BINARY,
    PATCH_FILTERED,
    PATCH_TOO_LARGE,
    PATCH_UNAVAILABLE,
    ChangeStatus,
    Commit,
    FileChange,
    Person,
    shape_error,
)
from repo2model.git.redact import Redactor

log = logging.getLogger("git_scraper")

FORMAT_VERSION = 2  # bump when the records' content changes: incremental runs then rescrape
# 2: secrets in file paths and env-file values redacted

DEFAULT_EXCLUDE_GLOBS = [
    # build output and vendored code
    "target/", "vendor/", "node_modules/", "__pycache__/", "dist/", ".venv/",
    # lock files
    "*.lock", "package-lock.json", "npm-shrinkwrap.json", "pnpm-lock.yaml", "go.sum",
    # minified and generated files
    "*.min.js", "*.min.css", "*.js.map", "*.css.map", "*.pyc",
    "*.pb.go", "*_pb2.py", "*_pb2_grpc.py", "*.generated.*", "*_generated.*",
]


@dataclass
class ScraperConfig:
    """The `git_scraper` config section (each key is documented in config.yaml and git_scraper.py)."""

    repo: Path = Path(".")
    branches: list[str] = field(default_factory=list)
    include_tags: bool = True
    include_remotes: bool = True
    rev_range: str | None = None
    default_branch: str | None = None
    skip_merges: bool = False
    detect_renames: bool = True
    file_filters: list[str] = field(default_factory=list)
    exclude_globs: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE_GLOBS))
    max_file_size: int = 1_000_000
    max_patch_bytes: int = 100_000
    redact_secrets: bool = True
    redact_patterns: dict[str, str] = field(default_factory=dict)
    redact_allowlist: list[str] = field(default_factory=list)
    incremental: bool = False

    def __post_init__(self):
        if self.max_file_size < 1:
            raise ValueError("max_file_size: must be at least 1 (bytes)")
        if self.max_patch_bytes < 1:
            raise ValueError("max_patch_bytes: must be at least 1 (bytes)")
        self.redactor()  # validates the patterns

    def redactor(self) -> Redactor | None:
        if not self.redact_secrets:
            return None
        return Redactor(self.redact_patterns, self.redact_allowlist)


def scrape_recent(repo: Path, count: int, cfg: ScraperConfig | None = None, ref: str = "HEAD") -> list[Commit]:
    """The last `count` commits of `ref`, oldest first, processed exactly like a full scrape."""
    cfg = cfg or ScraperConfig(repo=Path(repo))
    repository = Repository.open(repo)
    args = ["--date-order", f"--max-count={count}"] + (["--no-merges"] if cfg.skip_merges else [])
    hashes = repository.rev_list(*args, ref, what=f"ref '{ref}'")[::-1]
    refs = select_refs(repository, dataclasses.replace(cfg, rev_range=None, branches=[]))
    graph = BranchGraph.build(repository, refs)
    commits = list(Scraper(repository, cfg).commits(hashes))
    for commit in commits:
        commit.branches = list(graph.branches_of(commit.hash))
        commit.on_default_first_parent = commit.hash in graph.first_parent
    return commits


# ====================================================================== the repository


class Repository:
    """The repository being scraped: its top folder, and the git commands the scraper runs in it."""

    def __init__(self, top: Path):
        self.top = top
        self.version = git_version()

    @classmethod
    def open(cls, path: Path | str) -> "Repository":
        path = Path(path).expanduser()
        if not path.exists():
            raise UserError(f"{path}: no such folder (git_scraper.repo / --repo must name a git repository)")
        top = open_repository(path).resolve()
        if top != path.resolve() and not git(top, "rev-parse", "--is-bare-repository").strip() == "true":
            # a subfolder would silently scrape the whole repository: say which one to give
            raise UserError(f"{path}: not a git repository: it is inside the repository {top}, give that folder")
        return cls(top)

    def head_branch(self) -> str | None:
        """The branch HEAD points to, None when detached."""
        ref = self.git("symbolic-ref", "-q", "HEAD", check=False)
        return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None

    def git(self, *args: str, check: bool = True) -> str:
        """One small git command; its output without the final newline ("" on failure with check=False)."""
        try:
            return git(self.top, *args).removesuffix("\n")
        except GitError:
            if not check:
                return ""
            raise

    def rev_list(self, *args: str, what: str) -> list[str]:
        try:
            return git(self.top, "rev-list", *args, "--").split()
        except GitError as exc:
            raise UserError(f"{self.top}: cannot list the commits of {what}: {git_error_line(exc.stderr)}") from None

    def popen(self, args: list[str], stdin: IO | int | None = None, stderr: IO | int | None = None) -> subprocess.Popen:
        """A streaming git process (its stderr to a file or discarded: a pipe nobody reads could fill up)."""
        return git_popen(self.top, args, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                         stderr=stderr if stderr is not None else subprocess.DEVNULL)

    def shallow_boundary(self) -> list[str]:
        """The commits a shallow clone cut the history at (their parents are missing); [] when not shallow."""
        shallow = Path(self.git("rev-parse", "--absolute-git-dir")) / "shallow"
        return sorted(shallow.read_text().split()) if shallow.is_file() else []

    def mailmap_digest(self) -> str:
        digest = hashlib.blake2b(digest_size=12)
        mailmap = self.top / ".mailmap"
        if mailmap.is_file():
            digest.update(mailmap.read_bytes())
        else:
            digest.update(self.git("cat-file", "blob", "HEAD:.mailmap", check=False).encode())
        settings = self.git("config", "--get-regexp", r"^mailmap\.", check=False)
        digest.update(settings.encode())
        for line in settings.splitlines():
            key, _, value = line.partition(" ")
            if key == "mailmap.file" and Path(value).expanduser().is_file():
                digest.update(Path(value).expanduser().read_bytes())
        return digest.hexdigest()


# ====================================================================== refs and commits


@dataclass
class Refs:
    scrape: list[str]  # what rev-list walks (refs' object ids, or the rev range's words)
    branches: dict[str, list[str]]  # branch name -> its tips (a local branch and its remote twin: two)
    default_branch: str | None
    default_tip: str | None  # where the default branch's first-parent line starts
    scraped_refs: list[str]  # for the metadata
    tips: dict[str, str]  # every scraped ref -> object id, for the metadata


@dataclass
class RefListing:
    """The repository's branches and tags, and how a remote-tracking branch is named."""

    local: dict[str, str]  # main -> oid
    remote: dict[str, str]  # origin/main -> oid (origin/HEAD left out)
    tags: dict[str, str]  # refs/tags/v1 -> the commit it points to
    primary_remote: str | None  # origin (or the only remote): its branches are named like local ones

    @classmethod
    def read(cls, repo: Repository) -> "RefListing":
        listing = repo.git(
            "for-each-ref", "--format=%(refname)%00%(objectname)%00%(*objectname)%00%(symref)%00%(objecttype)%00%(*objecttype)",
            "refs/heads", "refs/remotes", "refs/tags",
        )
        local: dict[str, str] = {}
        remote: dict[str, str] = {}
        tags: dict[str, str] = {}
        for line in listing.splitlines():
            refname, oid, peeled, symref, kind, peeled_kind = line.split("\0")
            if symref or (peeled_kind or kind) != "commit":
                continue  # origin/HEAD; tags of trees or blobs
            if refname.startswith("refs/heads/"):
                local[refname[len("refs/heads/"):]] = oid
            elif refname.startswith("refs/remotes/"):
                if not refname.endswith("/HEAD"):
                    remote[refname[len("refs/remotes/"):]] = oid
            else:
                tags[refname] = peeled or oid
        remotes = repo.git("remote", check=False).split()
        primary = "origin" if "origin" in remotes else (remotes[0] if len(remotes) == 1 else None)
        return cls(local, remote, tags, primary)

    def name_of(self, remote_branch: str) -> str:
        """`origin/main` -> `main` (the twin of the local `main`); other remotes keep their prefix."""
        prefix = f"{self.primary_remote}/" if self.primary_remote else None
        return remote_branch[len(prefix):] if prefix and remote_branch.startswith(prefix) else remote_branch

    def known(self) -> str:
        names = sorted(set(self.local) | {self.name_of(r) for r in self.remote} | set(self.remote))
        return ", ".join(names) or "none"


def select_refs(repo: Repository, cfg: ScraperConfig) -> Refs:
    """The refs to scrape, the branches for membership, the default branch: all checked.

    By default every branch: local ones and remote-tracking ones (a fresh clone has
    its other branches only as origin/*). A branch and its twin on the primary
    remote (`main`, `origin/main`) are one branch, named `main`.
    """
    refs = RefListing.read(repo)
    with_remotes = cfg.include_remotes
    chosen: dict[str, str] = {}  # full ref name -> oid
    if cfg.branches:
        for name in cfg.branches:
            matched = _refs_named(refs, name, with_remotes)
            if not matched:
                raise UserError(f"{repo.top}: unknown branch '{name}' (git_scraper.branches; branches: {refs.known()})")
            chosen.update(matched)
    else:
        chosen = {f"refs/heads/{n}": oid for n, oid in refs.local.items()}
        if with_remotes:
            chosen.update({f"refs/remotes/{n}": oid for n, oid in refs.remote.items()})
    if cfg.include_tags and not cfg.branches:  # naming branches narrows the scrape to them
        chosen.update(refs.tags)

    if not chosen:  # a detached HEAD and no branches (e.g. a CI checkout), or no commits at all
        head_commit = repo.git("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
        if not head_commit:
            raise UserError(f"{repo.top}: the repository has no commits yet: nothing to scrape")
        chosen = {"HEAD": head_commit}

    membership: dict[str, set[str]] = {name: {oid} for name, oid in refs.local.items()}
    if with_remotes or any(r.startswith("refs/remotes/") for r in chosen):
        for remote_branch, oid in refs.remote.items():
            membership.setdefault(refs.name_of(remote_branch), set()).add(oid)

    default, default_tip = _default_branch(repo, refs, cfg, membership)
    if cfg.rev_range:
        scrape = cfg.rev_range.split()
        scraped_refs = [cfg.rev_range]
        tips = {}
    else:
        scrape = sorted(set(chosen.values()))
        scraped_refs = sorted(chosen)
        tips = dict(sorted(chosen.items()))
    branches = {name: sorted(oids) for name, oids in sorted(membership.items())}
    return Refs(scrape, branches, default, default_tip, scraped_refs, tips)


def _refs_named(refs: RefListing, name: str, with_remotes: bool) -> dict[str, str]:
    """The refs a `branches:` entry names: `main` (and, with remotes, its origin/ twin),
    `origin/main` or `refs/remotes/origin/main` (the remote one), `refs/heads/main` (the local one)."""
    if name.startswith("refs/heads/"):
        short = name[len("refs/heads/"):]
        return {name: refs.local[short]} if short in refs.local else {}
    if name.startswith("refs/remotes/"):
        short = name[len("refs/remotes/"):]
        return {name: refs.remote[short]} if short in refs.remote else {}
    matched = {}
    if name in refs.local:
        matched[f"refs/heads/{name}"] = refs.local[name]
    elif name in refs.remote:
        return {f"refs/remotes/{name}": refs.remote[name]}
    twins = {r: oid for r, oid in refs.remote.items() if refs.name_of(r) == name and r != name}
    if twins and (with_remotes or not matched):
        matched.update({f"refs/remotes/{r}": oid for r, oid in twins.items()})
    return matched


def _default_branch(repo: Repository, refs: RefListing, cfg: ScraperConfig,
                    membership: dict[str, set[str]]) -> tuple[str | None, str | None]:
    """The default branch's name and the tip its first-parent line starts from (the local one first)."""
    def tip_of(name: str) -> str | None:
        if name in refs.local:
            return refs.local[name]
        twins = sorted(r for r in refs.remote if refs.name_of(r) == name)
        return refs.remote[twins[0]] if twins else refs.remote.get(name)

    if cfg.default_branch is not None:
        name = cfg.default_branch
        tip = tip_of(name)
        if tip is None:
            raise UserError(f"{repo.top}: unknown default branch '{name}' (git_scraper.default_branch; "
                            f"branches: {refs.known()})")
        if name in refs.remote and name not in membership:
            membership.setdefault(name, set()).add(tip)
        elif name not in membership:
            membership[name] = {tip}
        return name, tip
    head = repo.head_branch()
    candidates = [b for b in (head, "main", "master") if b]
    name = next((b for b in candidates if b in refs.local), None)
    if name is None:
        name = next((b for b in candidates if b in membership), None) or (min(refs.local) if refs.local else None)
    return name, (tip_of(name) if name else None)


def list_commits(repo: Repository, scrape: list[str], cfg: ScraperConfig) -> list[str]:
    """Every commit to scrape, once each, parents first, ties by commit time."""
    args = ["--date-order", "--reverse"] + (["--no-merges"] if cfg.skip_merges else [])
    what = f"rev_range '{cfg.rev_range}'" if cfg.rev_range else "the selected refs"
    hashes = repo.rev_list(*args, *scrape, what=what)
    if not hashes:
        raise UserError(f"{repo.top}: {what} select no commits: nothing to scrape")
    return hashes


@dataclass
class BranchGraph:
    """Which branches contain each commit (a bitset per commit), and the default first-parent line."""

    names: list[str]
    bits: dict[str, int]
    first_parent: set[str]
    _names_by_mask: dict[int, list[str]] = field(default_factory=dict)  # few distinct masks, many commits

    @classmethod
    def build(cls, repo: Repository, refs: Refs) -> "BranchGraph":
        names = list(refs.branches)
        bits: dict[str, int] = {}
        for i, name in enumerate(names):
            for tip in refs.branches[name]:
                bits[tip] = bits.get(tip, 0) | (1 << i)
        if names:
            # children before parents: each commit's bits are final when it is reached
            all_tips = sorted({tip for tips in refs.branches.values() for tip in tips})
            out = repo.git("rev-list", "--topo-order", "--parents", *all_tips, "--")
            for line in out.splitlines():
                sha, *parents = line.split()
                mine = bits.get(sha, 0)
                for parent in parents:
                    bits[parent] = bits.get(parent, 0) | mine
        first_parent: set[str] = set()
        if refs.default_tip:
            first_parent = set(repo.rev_list("--first-parent", refs.default_tip, what=f"branch '{refs.default_branch}'"))
        return cls(names, bits, first_parent)

    def branches_of(self, sha: str) -> list[str]:
        """The branch names (sorted) that contain `sha`; the list is shared: do not modify it."""
        mask = self.bits.get(sha, 0)
        names = self._names_by_mask.get(mask)
        if names is None:
            names = self._names_by_mask[mask] = [name for i, name in enumerate(self.names) if mask >> i & 1]
        return names


# ====================================================================== the stream


MARKER = b"\x00\x00\x1eR2M\x1e"  # starts every commit in the stream; cannot occur in git's -z output
LOG_FORMAT = "%x00%x00%x1eR2M%x1e%H%x00%P%x00%aN%x00%aE%x00%aI%x00%cN%x00%cE%x00%cI%x00%B%x00"
HEADER_FIELDS = 9
# Commits per `git log` process: git keeps every object it parsed until it exits (169 MB at
# 10,000 commits in one process, 57 MB per 1,000-commit batch), so batches keep git's memory flat too.
LOG_BATCH = 1000
ZERO_OIDS = {"0" * 40, "0" * 64}
SUBMODULE_MODE = "160000"


@dataclass
class RawFile:
    """One line of `git log --raw -z`: the tree-level facts of a file change."""

    old_mode: str
    new_mode: str
    old_oid: str | None
    new_oid: str | None
    status: ChangeStatus
    similarity: int | None
    path: str
    old_path: str | None


@dataclass
class RawCommit:
    hash: str
    parents: list[str]
    fields: list[bytes]  # aN, aE, aI, cN, cE, cI, B
    files: list[RawFile]
    sections: Iterator[bytes]  # the `diff --git` sections, in the files' order (read lazily)


def parse_raw(data: bytes) -> tuple[list[RawFile], bytes]:
    """`:mode mode oid oid status\\0path\\0[path2\\0]` entries; returns them and what follows."""
    files = []
    pos = 0
    while data.startswith(b":", pos):
        end = data.index(b"\0", pos)
        old_mode, new_mode, old_oid, new_oid, status = data[pos + 1:end].decode().split(" ")
        pos = end + 1
        end = data.index(b"\0", pos)
        first = data[pos:end].decode("utf-8", "replace")
        pos = end + 1
        old_path = None
        if status[0] in "RC":
            end = data.index(b"\0", pos)
            old_path, first = first, data[pos:end].decode("utf-8", "replace")
            pos = end + 1
        files.append(RawFile(
            old_mode, new_mode,
            None if old_oid in ZERO_OIDS else old_oid,
            None if new_oid in ZERO_OIDS else new_oid,
            ChangeStatus(status[0]), int(status[1:]) if len(status) > 1 else None, first, old_path,
        ))
    return files, data[pos:].lstrip(b"\0\n")


def split_sections(patch: bytes) -> list[bytes]:
    """The patch text cut at each `diff --git` line (hunk lines never start with `d`)."""
    if not patch:
        return []
    sections = patch.split(b"\ndiff --git ")
    sections[0] = sections[0].removeprefix(b"diff --git ")
    return sections


class StreamCut(Exception):
    """git stopped before the end of a commit (a missing object: exit 128)."""


class LogReader:
    """Reads the `git log -z --raw [-p]` stream one piece at a time: a commit's header and
    tree diff, then its patch sections one by one. Memory holds one section (at most about
    twice max_file_size), never a whole commit or the whole history."""

    SECTION = b"diff --git "
    NEXT_SECTION = b"\n" + SECTION
    CHUNK = 1 << 20  # bytes per read

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._read = proc.stdout.read1 if hasattr(proc.stdout, "read1") else proc.stdout.read
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    # -- buffer

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self._read(self.CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _compact(self) -> None:
        """Drop what was parsed (only where no buffer index is held)."""
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0

    def _available(self, n: int) -> bool:
        while len(self.buf) - self.pos < n:
            if not self._fill():
                return False
        return True

    def _at(self, prefix: bytes) -> bool:
        self._available(len(prefix))
        return self.buf.startswith(prefix, self.pos)

    def _find(self, needle: bytes, start: int) -> int:
        while (i := self.buf.find(needle, start)) < 0:
            start = max(start, len(self.buf) - len(needle) + 1)
            if not self._fill():
                return -1
        return i

    def _section_end(self, start: int) -> int:
        """Where the section starting before `start` ends: the next section or commit; -1 at EOF."""
        while True:
            ends = [i for i in (self.buf.find(self.NEXT_SECTION, start), self.buf.find(MARKER, start)) if i >= 0]
            if ends:
                return min(ends)
            start = max(start, len(self.buf) - len(self.NEXT_SECTION) + 1)
            if not self._fill():
                return -1

    def _skip_separators(self) -> None:
        while self._available(1) and self.buf[self.pos] in (0, 10) and not self._at(MARKER):
            self.pos += 1

    def _finished_well(self) -> None:
        """At the end of the stream: a commit that ends here is complete only if git succeeded."""
        if self.proc.wait() != 0:
            raise StreamCut

    # -- records

    def commits(self) -> Iterator[RawCommit]:
        while self._at(MARKER):
            self.pos += len(MARKER)
            self._compact()
            end = self.pos
            for _ in range(HEADER_FIELDS):
                end = self._find(b"\0", end)
                if end < 0:
                    raise StreamCut
                end += 1
            parts = bytes(self.buf[self.pos:end]).split(b"\0")
            self.pos = end
            self._skip_separators()
            files = self._raw_entries()
            self._skip_separators()
            raw = RawCommit(parts[0].decode(), parts[1].decode().split(), parts[2:HEADER_FIELDS], files,
                            self._sections())
            yield raw
            for _ in raw.sections:  # what the reader of `raw` left
                pass
        if self._available(1):
            raise RuntimeError(f"unexpected git log output: {bytes(self.buf[self.pos:self.pos + 80])!r}")
        self._finished_well()

    def _raw_entries(self) -> list[RawFile]:
        files = []
        while self._at(b":"):
            ends = []
            end = self.pos
            for _ in range(2):
                end = self._find(b"\0", end)
                if end < 0:
                    raise StreamCut
                ends.append(end)
                end += 1
            if chr(self.buf[ends[0] - 1]) in "0123456789":  # R075 / C100: a second path follows
                status = bytes(self.buf[self.pos:ends[0]]).split(b" ")[-1]
                if status[:1] in (b"R", b"C"):
                    end = self._find(b"\0", end)
                    if end < 0:
                        raise StreamCut
                    ends.append(end)
            entry, _ = parse_raw(bytes(self.buf[self.pos:ends[-1] + 1]))
            files += entry
            self.pos = ends[-1] + 1
        return files

    def _sections(self) -> Iterator[bytes]:
        while True:
            if not self._at(self.SECTION):
                if not self._available(1):
                    self._finished_well()
                return
            self._compact()
            end = self._section_end(len(self.SECTION))
            if end < 0:  # the last section of the stream
                self._finished_well()
                section = bytes(self.buf[len(self.SECTION):])
                self.pos = len(self.buf)
                yield section
                return
            section = bytes(self.buf[len(self.SECTION):end])
            self.pos = end + 1 if self.buf.startswith(self.NEXT_SECTION, end) else end
            yield section


# ====================================================================== commits


class Scraper:
    """Turns commit hashes into `Commit` records, streaming, in the given order."""

    def __init__(self, repo: Repository, cfg: ScraperConfig):
        self.repo = repo
        self.cfg = cfg
        self.redactor = cfg.redactor()
        self.filters = PathFilter(cfg.file_filters, cfg.exclude_globs)
        self.missing_objects: set[str] = set()
        self._objects: CatFile | None = None  # object sizes (`--batch-check`), started when first needed
        self.digest = self._digest()

    def _digest(self) -> str:
        """Everything besides the commit itself that a record's content depends on."""
        keys = ("detect_renames", "file_filters", "exclude_globs", "max_file_size", "max_patch_bytes",
                "redact_secrets", "redact_patterns", "redact_allowlist")
        settings = {k: getattr(self.cfg, k) for k in keys}
        blob = json.dumps({"v": FORMAT_VERSION, "cfg": settings, "mailmap": self.repo.mailmap_digest(),
                           "git": self.repo.version}, sort_keys=True)
        return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()

    # ---------------------------------------------------------------- git options

    def diff_options(self) -> list[str]:
        return [
            "--raw", "-p", "-z", "--no-abbrev", "--full-index", "-U3", "--no-color", "--no-ext-diff",
            "--no-textconv", "--diff-algorithm=myers", "--src-prefix=a/", "--dst-prefix=b/",
            "-M" if self.cfg.detect_renames else "--no-renames",
        ]

    def config_options(self) -> list[str]:
        settings = {
            "core.quotePath": "false", "diff.noprefix": "false", "diff.mnemonicPrefix": "false",
            "diff.orderFile": "/dev/null", "diff.relative": "false", "log.showSignature": "false",
            "log.showRoot": "true", "color.ui": "never", "diff.suppressBlankEmpty": "false",
            # larger files are diffed as binary (git skips reading them into a diff): patch_skipped too_large
            "core.bigFileThreshold": str(self.cfg.max_file_size),
        }
        return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]

    # ---------------------------------------------------------------- the loop

    def commits(self, hashes: list[str]) -> Iterator[Commit]:
        """The commits in `hashes`' order. Streams runs of commits through one `git log`;
        commits whose objects are missing are built file by file instead."""
        pos = 0
        suspects: set[str] | None = None  # commits with missing blobs, known after the first failure
        try:
            while pos < len(hashes):
                if suspects and hashes[pos] in suspects:
                    yield self._commit_without_log(hashes[pos])
                    pos += 1
                    continue
                end = pos
                while end < min(len(hashes), pos + LOG_BATCH) and not (suspects and hashes[end] in suspects):
                    end += 1
                stream = self._log(hashes[pos:end])
                try:
                    for raw in stream:
                        if raw.hash != hashes[pos]:
                            raise RuntimeError(f"git log returned {raw.hash}, expected {hashes[pos]}")
                        commit = self._build(raw)
                        pos += 1
                        yield commit
                    continue
                except StreamCut:
                    pass
                finally:
                    stream.close()
                # git log -p died part-way (exit 128): at hashes[pos], or before it produced anything
                if suspects is None:
                    log.warning("git_scraper: git log stopped at commit %s (missing objects?): "
                                "finding the commits whose objects are missing", hashes[pos][:12])
                    suspects = self._commits_with_missing_blobs(hashes[pos:])
                if hashes[pos] not in suspects:
                    suspects.add(hashes[pos])  # failed though its blobs exist: built on its own
        finally:
            if self._objects is not None:
                self._objects.close()
                self._objects = None

    def _log(self, hashes: list[str], diff: bool = True) -> Iterator[RawCommit]:
        """One `git log` over exactly `hashes`, in order. StreamCut (raised here or while a
        commit's sections are read) when git stopped part-way."""
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stderr:
            stdin.write("\n".join(hashes).encode() + b"\n")
            stdin.seek(0)
            options = self.diff_options() if diff else [
                "--raw", "-z", "--no-abbrev", "--no-renames", "--no-color"]
            args = [*self.config_options(), "log", "--no-walk=unsorted", "--stdin", "--encoding=UTF-8",
                    f"--format={LOG_FORMAT}", *options]
            if not self.cfg.skip_merges:
                args.append("--diff-merges=first-parent")
            proc = self.repo.popen(args, stdin=stdin, stderr=stderr)
            try:
                yield from LogReader(proc).commits()
            except StreamCut:
                stderr.seek(0)
                reason = git_error_line(stderr.read(), proc.returncode)
                log.debug("git log exited %d: %s", proc.returncode, reason)
                if not diff:
                    raise UserError(f"git log failed in {self.repo.top}: {reason}") from None
                raise
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                proc.stdout.close()

    # ---------------------------------------------------------------- building records

    def _build(self, raw: RawCommit, patches: dict[int, list[bytes]] | None = None,
               unavailable: set[int] = frozenset()) -> Commit:
        """A Commit from its stream parts. `patches` overrides the sections (per file index)."""
        a_name, a_email, a_date, c_name, c_email, c_date, body = raw.fields
        message, message_non_utf8 = decode(body)
        message = message.rstrip("\n")
        redactions: Counter = Counter()
        if self.redactor is not None:
            message, counts = self.redactor.redact(message)
            if counts:
                redactions.update(counts)
        sections = iter(raw.sections)
        files = []
        for index, entry in enumerate(raw.files):
            if index in unavailable:
                change = self._unavailable(entry)
            else:
                own = patches.get(index, []) if patches is not None else self._take_sections(raw, entry, sections)
                change = self._file(entry, own, redactions)
            self._redact_paths(change, redactions)
            files.append(change)
        if patches is None and next(sections, None) is not None:
            raise RuntimeError(f"commit {raw.hash}: more patch sections than changed files")
        return Commit(
            hash=raw.hash,
            parents=raw.parents,
            author=Person(decode(a_name)[0], decode(a_email)[0]),
            committer=Person(decode(c_name)[0], decode(c_email)[0]),
            authored_at=a_date.decode(),
            committed_at=c_date.decode(),
            message=message,
            is_merge=len(raw.parents) > 1,
            files=files,
            message_non_utf8=message_non_utf8,
            redactions=dict(sorted(redactions.items())),
        )

    @staticmethod
    def _take_sections(raw: RawCommit, entry: RawFile, sections: Iterator[bytes]) -> list[bytes]:
        """The patch sections of one raw entry: one, or two for a type change (delete + add)."""
        first = next(sections, None)
        if first is None:
            raise RuntimeError(f"commit {raw.hash}: no patch section for {entry.path}")
        taken = [first]
        if entry.status == ChangeStatus.TYPE_CHANGED and entry.old_oid and entry.new_oid:
            second = next(sections, None)
            if second is None:
                raise RuntimeError(f"commit {raw.hash}: type change of {entry.path} without its second section")
            taken.append(second)
        index_line = _index_oids(first)
        if index_line and index_line[0] != (entry.old_oid or index_line[0]) and entry.status != ChangeStatus.TYPE_CHANGED:
            raise RuntimeError(f"commit {raw.hash}: patch section of {index_line} does not match {entry.path}")
        return taken

    def _file(self, entry: RawFile, sections: list[bytes], redactions: Counter) -> FileChange:
        change = FileChange(
            path=entry.path, old_path=entry.old_path, status=entry.status, additions=0, deletions=0,
            binary=False, old_blob=entry.old_oid, new_blob=entry.new_oid, patch=None,
            similarity=entry.similarity,
        )
        body = b""
        for section in sections:
            header, hunks = _split_header(section)
            if b"\nBinary files " in header or header.startswith(b"Binary files "):
                change.binary = True
            body += hunks
        change.additions = body.count(b"\n+") + body.startswith(b"+")
        change.deletions = body.count(b"\n-") + body.startswith(b"-")
        if self.filters.excluded(entry.path):
            change.patch_skipped = PATCH_FILTERED
        elif change.binary:
            too_large = any(
                self._size(oid) > self.cfg.max_file_size
                for oid, mode in ((entry.old_oid, entry.old_mode), (entry.new_oid, entry.new_mode))
                if oid and mode != SUBMODULE_MODE
            )
            change.patch_skipped = PATCH_TOO_LARGE if too_large else PATCH_BINARY
            change.binary = not too_large  # git did not look inside: we cannot tell
        else:
            if len(body) > self.cfg.max_patch_bytes:
                cut = body.rfind(b"\n", 0, self.cfg.max_patch_bytes) + 1 or self.cfg.max_patch_bytes
                body = body[:cut] if body[cut - 1:cut] == b"\n" else body[:cut] + b"\n"
                change.truncated = True
            text, change.non_utf8 = decode(body)
            if self.redactor is not None:
                text, counts = self.redactor.redact(text, path=entry.path)
                if counts:
                    redactions.update(counts)
            change.patch = text
        return change

    def _redact_paths(self, change: FileChange, redactions: Counter) -> None:
        """A secret in a file name (keys/AKIA....txt) is redacted like any text, the same way everywhere."""
        if self.redactor is None:
            return
        for attr in ("path", "old_path"):
            value = getattr(change, attr)
            if value:
                redacted, counts = self.redactor.redact_path(value)
                if counts:
                    setattr(change, attr, redacted)
                    redactions.update(counts)

    def _unavailable(self, entry: RawFile) -> FileChange:
        return FileChange(
            path=entry.path, old_path=entry.old_path, status=entry.status, additions=0, deletions=0,
            binary=False, old_blob=entry.old_oid, new_blob=entry.new_oid, patch=None,
            patch_skipped=PATCH_FILTERED if self.filters.excluded(entry.path) else PATCH_UNAVAILABLE,
            similarity=entry.similarity,
        )

    def _object_size(self, oid: str) -> int | None:
        if self._objects is None:
            self._objects = CatFile(self.repo.top)
        return self._objects.size(oid)

    def _size(self, oid: str) -> int:
        size = self._object_size(oid)
        if size is None:
            self.missing_objects.add(oid)
            return 0
        return size

    # ---------------------------------------------------------------- missing objects

    def _commits_with_missing_blobs(self, hashes: list[str]) -> set[str]:
        """Tree diffs only (no blob is read), then every blob looked up: commits with a missing one."""
        suspects = set()
        for raw in self._log(hashes, diff=False):
            for entry in raw.files:
                if self._missing_blobs(entry):
                    suspects.add(raw.hash)
        log.info("git_scraper: %d commits have missing objects; their other files are diffed one by one",
                 len(suspects))
        return suspects

    def _missing_blobs(self, entry: RawFile) -> list[str]:
        missing = []
        for oid, mode in ((entry.old_oid, entry.old_mode), (entry.new_oid, entry.new_mode)):
            if oid and mode != SUBMODULE_MODE:
                if self._object_size(oid) is None:
                    missing.append(oid)
        return missing

    def _commit_without_log(self, sha: str) -> Commit:
        """A commit whose `git log -p` fails: header and tree diff without blobs, then the
        files whose blobs exist diffed by one `git diff-tree`, the rest recorded unavailable."""
        (raw,) = list(self._log([sha], diff=False))
        unavailable = set()
        for index, entry in enumerate(raw.files):
            missing = self._missing_blobs(entry)
            if missing:
                unavailable.add(index)
                self.missing_objects.update(missing)
        if not unavailable:  # it only ended where git stopped: a log of its own gives the full record
            stream = self._log([sha])
            try:
                for alone in stream:
                    return self._build(alone)
            except StreamCut:
                pass
            finally:
                stream.close()
        available = [i for i in range(len(raw.files)) if i not in unavailable]
        patches: dict[int, list[bytes]] = {}
        if available:
            base = raw.parents[0] if raw.parents else self.repo.git("hash-object", "-t", "tree", "/dev/null")
            paths = []
            for i in available:
                paths += [p for p in (raw.files[i].old_path, raw.files[i].path) if p]
            args = [*self.config_options(), "--literal-pathspecs", "diff-tree", "-r", "--no-commit-id",
                    *[o for o in self.diff_options() if o not in ("-M",)], "--no-renames", base, sha, "--", *paths]
            proc = self.repo.popen(args, stderr=subprocess.PIPE)
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise UserError(f"git diff-tree failed for commit {sha} in {self.repo.top}: "
                                f"{git_error_line(err, proc.returncode)}")
            entries, patch = parse_raw(out)
            sections = iter(split_sections(patch))
            fake = RawCommit(sha, raw.parents, raw.fields, entries, [])
            by_path = {e.path: self._take_sections(fake, e, sections) for e in entries}
            for i in available:
                patches[i] = by_path.get(raw.files[i].path, [])
        return self._build(raw, patches, unavailable)


def record_of(commit: Commit) -> dict:
    """`commit.to_dict()`, without dataclasses.asdict's deep copies (a third of the run time)."""
    record = dict(commit.__dict__)
    record["author"] = dict(commit.author.__dict__)
    record["committer"] = dict(commit.committer.__dict__)
    record["files"] = [dict(change.__dict__) for change in commit.files]
    return record


def _split_header(section: bytes) -> tuple[bytes, bytes]:
    """A `diff --git` section into its header and its hunks (from the first `@@ `)."""
    i = section.find(b"\n@@ ")
    if i < 0:
        return section, b""
    hunks = section[i + 1:]
    if not hunks.endswith(b"\n"):
        hunks += b"\n"
    return section[:i], hunks


def _index_oids(section: bytes) -> tuple[str, str] | None:
    i = section.find(b"\nindex ")
    if i < 0:
        return None
    line = section[i + 7:section.find(b"\n", i + 1) if section.find(b"\n", i + 1) > 0 else None]
    old, _, new = line.split(b" ")[0].partition(b"..")
    old_s, new_s = old.decode(), new.decode()
    return (None if old_s in ZERO_OIDS else old_s), (None if new_s in ZERO_OIDS else new_s)


def decode(data: bytes) -> tuple[str, bool]:
    """UTF-8 text, or replacement-decoded text flagged as not UTF-8."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), True



class PathFilter:
    """file_filters (name endings) and exclude_globs."""

    def __init__(self, endings: list[str], globs: list[str]):
        self.endings = tuple(endings)
        self.folders = tuple(g.rstrip("/") for g in globs if g.endswith("/"))
        self.names = tuple(g for g in globs if "/" not in g)
        self.paths = tuple(g for g in globs if "/" in g.rstrip("/") and not g.endswith("/"))

        self._cache: dict[str, bool] = {}

    def excluded(self, path: str) -> bool:
        known = self._cache.get(path)
        if known is None:
            known = self._cache[path] = self._excluded(path)
        return known

    def _excluded(self, path: str) -> bool:
        if self.endings and not path.endswith(self.endings):
            return True
        parts = path.split("/")
        name = parts[-1]
        if any(fnmatchcase(part, folder) for part in parts[:-1] for folder in self.folders):
            return True
        if any(fnmatchcase(name, pattern) for pattern in self.names):
            return True
        return any(fnmatchcase(path, pattern) for pattern in self.paths)


# ====================================================================== incremental


class WrongShape(UserError):
    """A commits.json line that is valid JSON but not a commit record (someone edited the file)."""


class PreviousScrape:
    """The commits of an existing commits.json (an incremental run): which it holds, and their
    records by hash, read back one at a time.

    `reusable` is False (with `reason`) when the records cannot be reused: no file, a
    cut-off or corrupt one, or one made with other settings, .mailmap or git. `known`
    (the hashes it holds) is read whenever the file is readable, reusable or not, so
    that the run can say which commits are new and which are gone (rewritten history).
    """

    def __init__(self, path: Path):
        self.path = path
        self.known: set[str] = set()
        self.offsets: dict[str, tuple[int, int]] = {}  # hash -> (byte offset, line number)
        self.reusable = False
        self.reason: str | None = None
        self._fh: IO[bytes] | None = None

    @classmethod
    def open(cls, path: Path, digest: str) -> "PreviousScrape":
        previous = cls(path)
        if not path.is_file():
            previous.reason = f"no {path.name} yet"
            return previous
        try:
            metadata = read_commits_metadata(path)
            previous._index()
        except WrongShape:
            previous.close()
            raise
        except (UserError, UnicodeDecodeError, ValueError) as exc:
            previous.close()
            previous.known.clear()
            previous.offsets.clear()
            previous.reason = f"{path.name} is cut off or corrupt ({first_line(exc, 120)})"
            return previous
        if metadata.get("scrape_digest") != digest:
            previous.close()
            previous.reason = f"settings, .mailmap, git or the scraper's format changed since {path.name} was written"
            return previous
        previous.reusable = True
        return previous

    def _index(self) -> None:
        """One pass over the file: each commit line's hash, offset and line number, each record's
        shape checked (before any work is done), and the end of the file checked."""
        self._fh = _readable_copy(self.path)
        fh = self._fh
        fh.readline()
        if fh.readline() != b'"commits": [\n':
            raise ValueError("no commit list on line 2")
        offset, lineno, complete = fh.tell(), 2, False
        for line in fh:
            lineno += 1
            if line == b"]}\n":
                complete = True
                break
            if not line.endswith(b"\n"):
                break
            record = json.loads(line[:-2] if line.endswith(b",\n") else line)
            problem = shape_error(Commit, record) or _time_problem(record)
            if problem:
                raise WrongShape(f"{self.path}: line {lineno}: {problem}: not a commit record git_scraper "
                                 "wrote (rerun without --incremental to scrape everything again)")
            self.known.add(record["hash"])
            # a file git could not read last time is tried again
            if not any(f["patch_skipped"] == PATCH_UNAVAILABLE for f in record["files"] if "patch_skipped" in f):
                self.offsets[record["hash"]] = (offset, lineno)
            offset += len(line)
        if not complete:
            raise ValueError(f"ends at line {lineno} without the closing ]}}")

    def __contains__(self, sha: str) -> bool:
        return self.reusable and sha in self.offsets

    def read(self, sha: str) -> dict:
        """The record of `sha` (checked when the file was opened)."""
        offset, _ = self.offsets[sha]
        self._fh.seek(offset)
        line = self._fh.readline()
        return json.loads(line[:-2] if line.endswith(b",\n") else line)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _time_problem(record: dict) -> str | None:
    for key in ("authored_at", "committed_at"):
        try:
            datetime.fromisoformat(record[key])
        except ValueError:
            return f"{key}: expected an ISO 8601 time, got {record[key][:40]!r}"
    return None


def _readable_copy(path: Path) -> IO[bytes]:
    """The file itself, or for a `.zst` one a decompressed temporary copy (records are read by offset)."""
    if not is_compressed(path):
        return open(path, "rb")
    spool = tempfile.TemporaryFile(dir=path.parent)
    with open_text(path) as fh:
        for line in fh:
            spool.write(line.encode("utf-8"))
    spool.seek(0)
    return spool


# ====================================================================== totals


class Totals:
    """What the metadata counts, accumulated one commit at a time."""

    def __init__(self):
        self.commits = 0
        self.merges = 0
        self.authors: set[str] = set()
        self.file_changes = 0
        self.additions = 0
        self.deletions = 0
        self.redactions: Counter = Counter()
        self.skipped: Counter = Counter()
        self.truncated = 0
        self.non_utf8 = 0
        self.non_utf8_messages = 0
        self.non_utf8_paths = 0  # git's bytes were not UTF-8: the path holds U+FFFD in their place
        self.empty_commits = 0
        self.octopus_merges = 0
        self.first: tuple[datetime, str] | None = None
        self.last: tuple[datetime, str] | None = None

    def add(self, record: dict) -> None:
        self.commits += 1
        self.merges += record["is_merge"]
        self.octopus_merges += len(record["parents"]) > 2
        self.empty_commits += not record["files"] and not record["is_merge"]
        self.non_utf8_messages += bool(record.get("message_non_utf8"))
        author = record["author"]
        self.authors.add((author["email"] or author["name"]).lower())
        moment = (datetime.fromisoformat(record["authored_at"]), record["authored_at"])
        if self.first is None or moment[0] < self.first[0]:
            self.first = moment
        if self.last is None or moment[0] > self.last[0]:
            self.last = moment
        if record.get("redactions"):
            self.redactions.update(record["redactions"])
        for change in record["files"]:
            self.file_changes += 1
            self.additions += change["additions"]
            self.deletions += change["deletions"]
            if change["patch_skipped"]:
                self.skipped[change["patch_skipped"]] += 1
            self.truncated += change["truncated"]
            self.non_utf8 += change["non_utf8"]
            self.non_utf8_paths += "\ufffd" in change["path"]

    def metadata(self, repo: Repository, refs: Refs, cfg: ScraperConfig, scraper: Scraper) -> dict:
        return {
            "repository": str(repo.top),
            "refs": refs.scraped_refs,
            "ref_tips": refs.tips,
            "branches": list(refs.branches),
            "default_branch": refs.default_branch,
            "total_commits": self.commits,
            "total_merges": self.merges,
            "total_authors": len(self.authors),
            "total_file_changes": self.file_changes,
            "total_additions": self.additions,
            "total_deletions": self.deletions,
            "date_range": {"first": self.first[1] if self.first else None, "last": self.last[1] if self.last else None},
            "redactions": dict(sorted(self.redactions.items())),
            "patches_skipped": {k: self.skipped.get(k, 0) for k in (PATCH_BINARY, PATCH_TOO_LARGE, PATCH_FILTERED, PATCH_UNAVAILABLE)},
            "unavailable_files": self.skipped.get(PATCH_UNAVAILABLE, 0),
            "truncated_patches": self.truncated,
            "non_utf8_patches": self.non_utf8,
            "non_utf8_messages": self.non_utf8_messages,
            "non_utf8_paths": self.non_utf8_paths,
            "empty_commits": self.empty_commits,
            "octopus_merges": self.octopus_merges,
            # a shallow clone: these commits' parents are not in the repository (their diffs add every file)
            "shallow_boundary": repo.shallow_boundary(),
            "settings": {
                "skip_merges": cfg.skip_merges, "detect_renames": cfg.detect_renames,
                "file_filters": cfg.file_filters, "exclude_globs": cfg.exclude_globs,
                "max_file_size": cfg.max_file_size, "max_patch_bytes": cfg.max_patch_bytes,
                "redact_secrets": cfg.redact_secrets,
                # the semantic chunker redacts the file versions it reads with the same rules
                "redact_patterns": cfg.redact_patterns, "redact_allowlist": cfg.redact_allowlist,
            },
            "git_version": repo.version,
            "format_version": FORMAT_VERSION,
            "scrape_digest": scraper.digest,
        }

    def summary(self, seconds: float, reused: int, missing: set[str]) -> dict:
        return {
            "commits": self.commits,
            "reused_commits": reused,
            "authors": len(self.authors),
            "file_changes": self.file_changes,
            "redactions": sum(self.redactions.values()),
            "redactions_by_type": dict(sorted(self.redactions.items())),
            "unavailable_files": self.skipped.get(PATCH_UNAVAILABLE, 0),
            "missing_objects": len(missing),
            "seconds": round(seconds, 3),
        }

