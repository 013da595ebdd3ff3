"""Stage 1: a repository's whole history -> `commits.json`, from one streaming `git log`.

Reads a git repository and writes `<output_dir>/commits.json` (metadata on the
first line, then one commit per line, so `json.load` reads it whole and
`repo2model.core.artifacts.iter_commits` reads it commit by commit). The scraping
itself lives in `repo2model/git/` (refs.py: what to scrape; scraping.py: the records;
previous.py: an incremental run's reuse; totals.py: the metadata).

    python git_scraper.py --repo ~/projects/the-block --output outputs/commits.json
    python git_scraper.py --config config.yaml --incremental

Per commit: hash, parents, author/committer (after .mailmap), authored_at,
committed_at (ISO 8601 with offset), message (without trailing newlines;
redacted), branches (the branches that contain it), on_default_first_parent,
is_merge, files, message_non_utf8, redactions (per type). Per file: path,
old_path (both redacted like any text: a secret in a file name becomes
`<REDACTED:type>`, the same way everywhere), status (A/M/D/R/C/T), additions,
deletions, binary, old_blob, new_blob (full ids), patch (from the first `@@`
hunk header, -U3, redacted; null with patch_skipped = binary | too_large |
filtered | unavailable), truncated, non_utf8, similarity. Missing objects
(partial clone, pruned mirror) do not stop the scrape: those files get
`patch_skipped: "unavailable"` and a warning.

Branches: by default every branch, local and remote-tracking, so that a plain
`git clone` (whose other branches are only `origin/*`) loses none. A branch and
its twin on `origin` (or on the only remote) are one branch, named without the
remote (`main` for `main` and `origin/main`; a branch only on origin is named
`feature`); branches of other remotes keep their prefix (`upstream/main`);
`origin/HEAD` is no branch. Commits only tags reach are scraped too (with
`branches: []`). Narrow it with `branches: [main]`, `include_remotes: false`,
`include_tags: false` or `rev_range`.

Incremental (`--incremental`, `incremental: true`): the commits already in
commits.json are reused, the new ones scraped; commits that are no longer in
the history (a force-push, a rebase, deleted branches) are dropped with a
warning. The summary says how many commits are `new_commits` and
`removed_commits`, and `full_rescrape` says why everything was scraped again
when it was (no commits.json yet, a cut-off one, other settings or git).
A commits.json line of the wrong shape stops the run with one line naming the
file, the line and the field (exit 2): delete the file or rerun without
--incremental.

Config keys (section `git_scraper`):
  repo              the repository's top folder (default: .)
  branches          branches to scrape; [] = every branch. `main` = main and its origin/main twin,
                    `origin/main` or `refs/remotes/origin/main` = the remote one, `refs/heads/main` = the local one
  include_tags      with branches: [], also scrape commits only tags reach (default true: every commit git can reach)
  include_remotes   remote-tracking branches count as branches (default true); false = local branches only
  rev_range         a git revision range (e.g. "v1.0..main"); replaces branches/tags for choosing commits
  default_branch    the branch for on_default_first_parent; null = HEAD's branch (else main/master)
  skip_merges       leave merge commits out entirely (default false: diff them against the first parent)
  detect_renames    rename detection (-M) (default true)
  file_filters      keep patches only for files whose name ends with one of these (e.g. [.rs]); [] = all
  exclude_globs     patches of matching paths are dropped (patch_skipped: filtered); `dir/` matches a
                    folder anywhere, a pattern without `/` matches the file name, else the whole path
  max_file_size     files (blobs) larger than this many bytes get no patch (too_large) (default 1000000)
  max_patch_bytes   a file's patch is cut (at a line end) after this many bytes, truncated=true (default 100000)
  redact_secrets    replace secrets in patches, messages and file paths by <REDACTED:type>; in env files
                    (.env, *.env, .envrc, compose environment:) every random-looking value (default true)
  redact_patterns   extra {type: regex} to redact (a group named `secret` limits what is replaced)
  redact_allowlist  regexes: a found value that one of them matches in full is kept
  incremental       reuse the commits of an existing commits.json scraped with the same settings (default false)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path


from repo2model.core.artifacts import CommitsWriter, ensure_folder
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.core.records import PATCH_UNAVAILABLE
from repo2model.git.previous import PreviousScrape
from repo2model.git.refs import BranchGraph, Refs, Repository, list_commits, select_refs
from repo2model.git.scraping import Scraper, ScraperConfig, record_of
from repo2model.git.totals import Totals
from repo2model.core.progress import progress

SECTION = "git_scraper"
CODE = ("core", "git")  # the packages it runs (its fingerprint covers them)
Config = ScraperConfig
log = logging.getLogger("git_scraper")


# ====================================================================== stage protocol


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42) -> dict:
    """Scrape the repository into `paths.commits`; returns the summary."""
    started = time.perf_counter()
    check_output_folder(paths.commits)
    repo = Repository.open(cfg.repo)
    refs = select_refs(repo, cfg)
    hashes = list_commits(repo, refs.scrape, cfg)
    graph = BranchGraph.build(repo, refs)
    scraper = Scraper(repo, cfg)
    previous = open_previous(paths.commits, scraper, hashes) if cfg.incremental else None
    new_hashes = [h for h in hashes if previous is None or h not in previous]
    log.info("git_scraper: %s: %d commits from %s (%d to scrape, %d reused)", repo.top, len(hashes),
             ", ".join(refs.scraped_refs[:5]) + (f" and {len(refs.scraped_refs) - 5} more" if len(refs.scraped_refs) > 5 else ""),
             len(new_hashes), len(hashes) - len(new_hashes))

    totals = write_commits(paths.commits, hashes, scraper, refs, graph, previous)
    seconds = time.perf_counter() - started
    summary = totals.summary(seconds, reused=len(hashes) - len(new_hashes), missing=scraper.missing_objects)
    summary.update(history_change(hashes, previous))
    if scraper.missing_objects:
        log.warning(
            "git_scraper: warning: %d objects missing from the repository (partial clone or pruned mirror): "
            "%d files recorded without a patch (patch_skipped: unavailable)",
            len(scraper.missing_objects), totals.skipped[PATCH_UNAVAILABLE],
        )
    log.info(
        "git_scraper: %d commits (%d reused, %d new, %d removed), %d authors, %d file changes, %d redactions, "
        "%d skipped objects in %.1fs -> %s",
        summary["commits"], summary["reused_commits"], summary["new_commits"], summary["removed_commits"],
        summary["authors"], summary["file_changes"], summary["redactions"], summary["missing_objects"], seconds,
        paths.commits,
    )
    return summary


def open_previous(commits_path: Path, scraper: Scraper, hashes: list[str]) -> PreviousScrape:
    """An incremental run's previous commits.json; says why everything is scraped again when it is."""
    previous = PreviousScrape.open(commits_path, scraper.digest)
    if not previous.reusable:
        level = logging.INFO if not commits_path.exists() else logging.WARNING
        log.log(level, "git_scraper: incremental: %s: scraping everything", previous.reason)
    gone = len(previous.known - set(hashes))
    if gone:
        log.warning("git_scraper: incremental: %d commits of %s are no longer in the history (rewritten: a "
                    "force-push or rebase, or deleted branches): dropped", gone, commits_path.name)
    return previous


def write_commits(commits_path: Path, hashes: list[str], scraper: Scraper, refs: Refs, graph: BranchGraph,
                  previous: PreviousScrape | None) -> Totals:
    """Every commit in order, reused or scraped, with its branches, into commits.json (atomically)."""
    totals = Totals()
    with contextlib.ExitStack() as stack:
        if previous is not None:
            stack.callback(previous.close)
        new_commits = stack.enter_context(contextlib.closing(
            scraper.commits([h for h in hashes if previous is None or h not in previous])))
        writer = stack.enter_context(CommitsWriter(commits_path))
        bar = stack.enter_context(
            progress(total=len(hashes), unit="commits", desc="git_scraper"))
        for sha in hashes:
            record = previous.read(sha) if previous is not None and sha in previous else record_of(next(new_commits))
            assert record["hash"] == sha, (record["hash"], sha)
            record["branches"] = graph.branches_of(sha)
            record["on_default_first_parent"] = sha in graph.first_parent
            writer.add(record)
            totals.add(record)
            bar.update()
        writer.metadata = totals.metadata(scraper.repo, refs, scraper.cfg, scraper)
    return totals


def history_change(hashes: list[str], previous: PreviousScrape | None) -> dict:
    """For an update: how many commits are new since the previous scrape, how many are gone
    (rewritten history), and why everything was scraped again (None when it was not)."""
    if previous is None:
        return {"new_commits": len(hashes), "removed_commits": 0, "full_rescrape": "not incremental"}
    current = set(hashes)
    removed = sorted(previous.known - current)
    return {
        "new_commits": len(current - previous.known),
        "removed_commits": len(removed),
        "removed_sample": removed[:10],
        "full_rescrape": previous.reason,
    }


def check_output_folder(target: Path) -> None:
    """Refuse an output folder that cannot be written before any work is done."""
    folder = ensure_folder(Path(target).parent)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{folder}: output folder is not writable")


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return []  # the repository is not a file: input_state() fingerprints it


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.commits]


def input_state(cfg: Config, paths: ArtifactPaths) -> str:
    """Changes whenever the scrape would: refs, HEAD, .mailmap, git version."""
    try:
        repo = Repository.open(cfg.repo)
    except UserError as exc:
        return f"unavailable: {exc}"
    parts = [
        repo.git("for-each-ref", "--format=%(refname) %(objectname)", check=False),
        repo.git("rev-parse", "HEAD", check=False),
        repo.git("symbolic-ref", "-q", "HEAD", check=False),
        repo.mailmap_digest(),
        repo.version,
    ]
    return "\n".join(parts)


# ====================================================================== CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--repo", type=Path, help="the repository to scrape (overrides git_scraper.repo)")
    parser.add_argument("--output", type=Path, help="commits.json to write (default: <output_dir>/commits.json)")
    parser.add_argument("--branches", nargs="+", metavar="BRANCH", help="branches to scrape (default: every branch)")
    parser.add_argument("--include-tags", action=argparse.BooleanOptionalAction, default=None,
                        help="also scrape commits only tags reach (default); --no-include-tags: branches only")
    parser.add_argument("--include-remotes", action=argparse.BooleanOptionalAction, default=None,
                        help="remote-tracking branches count as branches (default); --no-include-remotes: local only")
    parser.add_argument("--rev-range", help='a revision range instead of branches, e.g. "v1.0..main"')
    parser.add_argument("--default-branch", help="branch for on_default_first_parent (default: HEAD's)")
    parser.add_argument("--skip-merges", action="store_true", default=None, help="leave merge commits out")
    parser.add_argument("--file-filters", nargs="+", metavar="SUFFIX", help="keep patches only for these endings (.rs ...)")
    parser.add_argument("--max-file-size", type=int, help="bytes; larger files get no patch")
    parser.add_argument("--max-patch-bytes", type=int, help="bytes; longer patches are cut")
    parser.add_argument("--no-redact", action="store_true", help="do not redact secrets (not recommended)")
    parser.add_argument("--incremental", action="store_true", default=None,
                        help="add only the commits missing from an existing commits.json")
    args = parser.parse_args(argv)
    cfg, pipeline, paths = load_stage(args, SECTION, Config)
    overrides = {
        "repo": args.repo.expanduser().resolve() if args.repo else None,
        "branches": args.branches, "include_tags": args.include_tags, "include_remotes": args.include_remotes,
        "rev_range": args.rev_range, "default_branch": args.default_branch, "skip_merges": args.skip_merges,
        "file_filters": args.file_filters, "max_file_size": args.max_file_size,
        "max_patch_bytes": args.max_patch_bytes, "incremental": args.incremental,
        "redact_secrets": False if args.no_redact else None,
    }
    cfg = apply_overrides(cfg, SECTION, overrides)
    if args.output:
        paths = dataclasses.replace(paths, commits=args.output.expanduser().resolve())
    run(cfg, paths, seed=pipeline.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

