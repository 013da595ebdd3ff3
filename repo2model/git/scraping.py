"""Scraping a repository's history into `Commit` records: the library behind the git_scraper stage.

    from repo2model.git.scraping import ScraperConfig, scrape_recent
    commits = scrape_recent(Path("~/projects/the-block").expanduser(), 20)   # the last 20 of HEAD

How: `git rev-list --date-order --reverse` fixes the commits and their order
(topological, parents first, ties by commit time: `repo2model.git.refs`); one `git log --no-walk
--stdin --raw -p -z --diff-merges=first-parent -M` per 1,000 commits streams
headers, tree diffs (full blob ids) and patches (git keeps what it parsed until
it exits: batches keep its memory flat); `LogReader` (`repo2model.git.log`) reads the
stream one file section at a time (a commit that adds 100 MB of vendored code never sits in
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
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterator

from repo2model.core.errors import UserError
from repo2model.core.records import (
    PATCH_BINARY,
    PATCH_FILTERED,
    PATCH_TOO_LARGE,
    PATCH_UNAVAILABLE,
    ChangeStatus,
    Commit,
    FileChange,
    Person,
)
from repo2model.git.commands import git_error_line
from repo2model.git.log import (
    LOG_FORMAT,
    SUBMODULE_MODE,
    LogReader,
    RawCommit,
    RawFile,
    StreamCut,
    index_oids,
    parse_raw,
    split_header,
    split_sections,
)
from repo2model.git.objects import CatFile
from repo2model.git.redact import Redactor
from repo2model.git.refs import BranchGraph, Repository, select_refs

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

# Commits per `git log` process: git keeps every object it parsed until it exits (169 MB at
# 10,000 commits in one process, 57 MB per 1,000-commit batch), so batches keep git's memory flat too.
LOG_BATCH = 1000


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
        index_line = index_oids(first)
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
            header, hunks = split_header(section)
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
