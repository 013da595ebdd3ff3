"""The repository being scraped and what to scrape in it: its refs, the commits they reach, and which
branches hold each commit.

By default every branch is scraped: local ones and remote-tracking ones (a fresh
clone has its other branches only as origin/*). A branch and its twin on the primary
remote (`main`, `origin/main`) are one branch, named `main`; `origin/HEAD` is no
branch. `select_refs` checks the `branches`, `default_branch` and `rev_range`
settings against the repository; `list_commits` fixes the commits and their order;
`BranchGraph` says which branches contain each commit (one `git rev-list
--topo-order --parents` pass, a bitset per commit) and which commits are on the
default branch's first-parent line.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from repo2model.core.errors import UserError
from repo2model.git.commands import GitError, git, git_error_line, git_popen, git_version, open_repository

if TYPE_CHECKING:
    from repo2model.git.scraping import ScraperConfig


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
