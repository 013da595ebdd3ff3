"""Stage 2, the semantic chunker: every changed line mapped to the syntax unit it touches.

Reads `commits.json` (from git_scraper) and, for the old and new version of
every changed Rust and Python file, the file's content from the repository
(one long-lived `git cat-file --batch` per worker, parses deduplicated by blob
id). How a commit becomes chunks is `repo2model/code/chunking.py` (units:
`repo2model/code/units.py`); this script runs it over the whole history in
parallel, in batches of commits (`repo2model/code/execution.py`), and writes:

    chunks.jsonl          one `repo2model.core.records.Chunk` per line, grouped by commit in the
                          commits' order, the chunks of one file in order of position
    chunking_stats.json   beside it: counts by language, kind and change type, parse-error
                          rate, uncovered-line count (always 0), skipped and degraded files
                          by reason, seconds

    python semantic_chunker.py --commits outputs/commits.json --output outputs/chunks.jsonl
    python semantic_chunker.py --config config.yaml [--repo PATH] [--workers N]

The repository is the one recorded in commits.json's metadata (`--repo` overrides
it). Without it (moved, deleted) the stage still runs: parsed languages degrade to
`hunk` chunks from the patches, counted as `no_repository`.

Config (`semantic_chunker:` section):
    workers            processes chunking commits in parallel; 0 = one per CPU core
    max_chunk_size     lines: a unit (or hunk) longer than this is split into parts at inner
                       boundaries (its statements/items; blank lines in hunks), never mid-line
    min_chunk_size     changed lines: neighbouring `hunk` chunks of one file smaller than this
                       are merged (while the merge stays within max_chunk_size)
    parse_languages    languages parsed with tree-sitter (rust, python); others give hunks
    detect_moves       pair deleted and added units of one commit into MOVED_/RENAMED_ chunks
    parse_cache_size   parsed file versions kept per worker (deduplicated by blob id)
    batch_size         commits sent to a worker at a time
    redact_secrets     redact secrets in the file versions shown in `before`/`after` and in the
                       symbols and crate names read from them (patches and paths are already
                       redacted by the scraper); follows the scraper: off when commits.json says it
                       scraped without redaction, its redact_patterns/allowlist when recorded
    incremental        reuse the chunks of the commits already in chunks.jsonl (made with the same
                       settings) and chunk only the others; chunks of commits no longer in
                       commits.json (rewritten history) are dropped. The file is written whole,
                       atomically, in commits.json's order: byte-identical to a full run.

Incremental runs (`--incremental`, `incremental: true`, or run(..., incremental=True)):
the previous chunks.jsonl is reused only when chunking_stats.json says it was made
with the same chunker settings, the same scraper settings and the same repository
availability (otherwise everything is chunked, and the log says why). Commits that
gave no chunks are not recorded, so they are chunked again (they are cheap: no
changed text line). The summary counts reused, chunked and dropped commits.

Robustness: a commit record of the wrong shape (valid JSON) stops the stage with one
line naming the file, the line and the field. An odd path or object never does: a
file whose objects are missing or unreadable, or that does not parse, degrades to
hunk chunks and is counted in `degraded_files`. Ctrl-C stops quietly (exit 130),
leaving the previous chunks.jsonl; temporaries left by a killed run
(`.chunks.jsonl.XXXXXXXX.tmp`) are removed by the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from repo2model.code.chunking import CHUNKS_FORMAT, ChunkerConfig, ChunkingStats, default_redactor
from repo2model.code.execution import execute_plan, make_plan
from repo2model.code.previous import PreviousChunks
from repo2model.core.artifacts import atomic_open, ensure_folder, iter_commit_dicts, read_commits_metadata, require, write_json
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.core.progress import progress
from repo2model.core.records import Commit, shape_error
from repo2model.git.commands import open_repository
from repo2model.git.redact import Redactor

SECTION = "semantic_chunker"
CODE = ("core", "git", "code")  # the packages it runs (its fingerprint covers them)
Config = ChunkerConfig
log = logging.getLogger("semantic_chunker")


# ---------------------------------------------------------------- stage protocol


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.commits]


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.chunks, paths.chunking_stats]


def input_state(cfg: Config, paths: ArtifactPaths) -> str:
    """Whether the repository is reachable: a run without it degrades to hunks, so a later run
    with it back is not 'up to date'."""
    try:
        metadata = read_commits_metadata(paths.commits)
        repo = metadata.get("repository")
        return f"{repo}: {'available' if repo and open_repository(repo) else 'unavailable'}"
    except UserError as exc:
        return f"unavailable: {exc}"


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42, repo: Path | None = None,
        incremental: bool | None = None) -> dict:
    """Chunk the commits of `paths.commits` into `paths.chunks`; stats into `paths.chunking_stats`.

    `repo` overrides the repository path recorded in the commits' metadata. A
    repository that cannot be opened is not fatal: parsed languages degrade to
    `hunk` chunks (counted), since the patches are in commits.json.
    `incremental` (default: cfg.incremental) reuses the chunks of commits already chunked.
    """
    started = time.perf_counter()
    incremental = cfg.incremental if incremental is None else incremental
    metadata = read_commits_metadata(paths.commits)
    repo_path = find_repository(repo, metadata, paths.commits)
    redactor = redactor_for(cfg, metadata)
    reuse = reuse_settings(cfg, metadata, repo_path)
    workers = worker_count(cfg, metadata)
    remove_own_temporaries(paths)
    stats, tally = write_chunks(cfg, paths, metadata, repo_path, redactor, reuse, workers, incremental)
    stats.seconds = round(time.perf_counter() - started, 3)
    summary = {
        **stats.to_dict(), "total_commits": stats.commits + tally.reused_commits,
        "total_chunks": stats.chunk_count + tally.reused_chunks, "workers": workers,
        "repository": str(repo_path) if repo_path is not None else None, "config": dataclasses.asdict(cfg),
        "incremental": dataclasses.asdict(tally) if incremental else None, "reuse": reuse,
    }
    write_json(paths.chunking_stats, summary)
    log.info(
        "semantic_chunker: %d commits, %d files -> %d chunks in %.1fs (%d workers); parse errors %d/%d files, "
        "%d files skipped, %d degraded, %d uncovered lines%s -> %s",
        stats.commits, summary["files"], stats.chunk_count, stats.seconds, workers, stats.parse_error_files,
        stats.parsed_files, sum(stats.skipped_files.values()), sum(stats.degraded_files.values()),
        stats.uncovered_lines, tally.describe() if incremental else "", paths.chunks,
    )
    result = {k: summary[k] for k in ("commits", "chunks", "files", "parse_error_rate", "uncovered_lines", "seconds")}
    if incremental:
        result.update(commits=summary["total_commits"], chunks=summary["total_chunks"], reused_commits=tally.reused_commits,
                      chunked_commits=stats.commits, dropped_commits=tally.dropped_commits)
    return result


def write_chunks(cfg: Config, paths: ArtifactPaths, metadata: dict, repo_path: Path | None,
                 redactor: Redactor | None, reuse: dict, workers: int, incremental: bool) -> tuple[ChunkingStats, Tally]:
    """chunks.jsonl, atomically, in commits.json's order: each commit chunked, or its previous chunks copied."""
    stats, tally = ChunkingStats(), Tally()
    with _spool_folder(paths.chunks) as spool, contextlib.ExitStack() as cleanup:
        previous = PreviousChunks.load(paths, reuse, spool) if incremental else None
        if previous is not None:
            cleanup.callback(previous.close)
        with atomic_open(paths.chunks) as out:
            plan = make_plan(checked_records(paths.commits), previous, cfg.batch_size)
            bar = progress(total=metadata.get("total_commits"), unit="commits", desc="chunking")
            for part in execute_plan(plan, paths.commits, cfg, repo_path, workers, redactor, spool):
                if part.reused is not None:
                    tally.reused_chunks += previous.copy_to(out, part.reused)
                    tally.reused_commits += 1
                else:
                    part.write_to(out)
                    stats.merge(part.stats)
                bar.update(part.commits)
            bar.close()
        if previous is not None:
            tally.dropped_commits, tally.dropped_chunks = previous.unused()
    return stats, tally


@dataclass
class Tally:
    """What an incremental run reused from the previous chunks.jsonl and what it dropped."""

    reused_commits: int = 0
    reused_chunks: int = 0
    dropped_commits: int = 0  # in the previous chunks.jsonl, no longer in commits.json (rewritten history)
    dropped_chunks: int = 0

    def describe(self) -> str:
        return (f"; incremental: {self.reused_commits} commits reused ({self.reused_chunks} chunks), "
                f"{self.dropped_commits} dropped ({self.dropped_chunks} chunks)")


def worker_count(cfg: Config, metadata: dict) -> int:
    """cfg.workers (0: the CPU cores this process may use), and no more than batches to give them."""
    workers = cfg.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    total = metadata.get("total_commits")
    if isinstance(total, int):
        workers = min(workers, -(-total // cfg.batch_size))
    return max(1, workers or 1)


def find_repository(override: Path | None, metadata: dict, commits_path: Path) -> Path | None:
    """The repository to read file versions from, or None (logged) when it cannot be opened."""
    candidate = override
    if candidate is None and isinstance(metadata.get("repository"), str):
        candidate = Path(metadata["repository"])
    if candidate is None:
        log.warning("%s: no repository path in its metadata (use --repo): chunking from patches only", commits_path)
        return None
    try:
        return open_repository(candidate)
    except UserError as exc:
        if override is not None:
            raise
        log.warning("repository unavailable (%s): chunking from patches only; use --repo to point at it", exc)
        return None


def redactor_for(cfg: Config, metadata: dict) -> Redactor | None:
    """The redaction the scraper applied to the patches, for the file versions the chunker reads."""
    settings = metadata.get("settings") or {}
    if not cfg.redact_secrets or settings.get("redact_secrets") is False:
        return None
    patterns, allowlist = settings.get("redact_patterns"), settings.get("redact_allowlist")
    if not patterns and not allowlist:
        return default_redactor()
    try:
        return Redactor(patterns, allowlist)
    except ValueError as exc:
        raise UserError(f"commits.json metadata: {exc}") from None


def reuse_settings(cfg: Config, metadata: dict, repo_path: Path | None) -> dict:
    """Everything besides a commit's own record that its chunks depend on: equal settings, equal chunks."""
    ignored = ("workers", "parse_cache_size", "batch_size", "incremental")  # speed only
    return {
        "format": CHUNKS_FORMAT,
        "chunker": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignored},
        "scraper": metadata.get("settings"),
        "repository_available": repo_path is not None,
    }


def checked_records(commits_path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each commit of commits.json, checked for the shape the chunker relies on."""
    for index, record in enumerate(iter_commit_dicts(commits_path)):
        line = index + 3  # one commit per line from line 3 (artifacts.CommitsWriter's layout)
        problem = shape_error(Commit, record)
        if problem:
            raise UserError(f"{commits_path}: line {line}: {problem}: rerun the git_scraper stage")
        yield line, record


def remove_own_temporaries(paths: ArtifactPaths) -> None:
    """Remove what an interrupted run of this stage left: `.chunks.jsonl.XXXXXXXX.tmp` and the like
    (atomic_path's and _spool_folder's names for our outputs; nothing else in the folder is touched)."""
    for target in stage_outputs(ChunkerConfig(), paths):
        pattern = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp(\.[\w.-]*)?")
        for entry in target.parent.glob(f".{glob.escape(target.name)}.*.tmp*"):
            if not pattern.fullmatch(entry.name) or entry.is_symlink():
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            log.info("removed %s (left by an interrupted run)", entry)


@contextlib.contextmanager
def _spool_folder(chunks_path: Path) -> Iterator[Path]:
    """A temporary folder beside chunks.jsonl for the workers' output and the previous chunks;
    removed at the end whatever happens (named like atomic_path's temporaries, so a killed
    run's is removed by the next one)."""
    parent = ensure_folder(chunks_path.parent)
    folder = Path(tempfile.mkdtemp(prefix=f".{chunks_path.name}.", suffix=".tmp", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--commits", type=Path, help="commits.json to read (default: <output_dir>/commits.json)")
    parser.add_argument("--output", type=Path, help="chunks.jsonl to write (default: <output_dir>/chunks.jsonl); "
                        "chunking_stats.json goes beside it")
    parser.add_argument("--repo", type=Path, help="repository to read file versions from "
                        "(default: the path recorded in commits.json)")
    parser.add_argument("--workers", type=int, help="override semantic_chunker.workers (0 = one per core)")
    parser.add_argument("--incremental", action="store_true", default=None,
                        help="chunk only the commits not yet in chunks.jsonl (semantic_chunker.incremental)")
    args = parser.parse_args(argv)
    cfg, pipeline, paths = load_stage(args, SECTION, Config)
    if args.commits:
        paths = dataclasses.replace(paths, commits=args.commits.expanduser().resolve())
    if args.output:
        output = args.output.expanduser().resolve()
        paths = dataclasses.replace(paths, chunks=output, chunking_stats=output.parent / "chunking_stats.json")
    cfg = apply_overrides(cfg, SECTION, {"workers": args.workers, "incremental": args.incremental})
    require(paths.commits, "git_scraper")
    run(cfg, paths, seed=pipeline.seed, repo=args.repo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
