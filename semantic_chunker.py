"""Stage 2, the semantic chunker: every changed line mapped to the syntax unit it touches.

Reads `commits.json` (from git_scraper) and, for the old and new version of
every changed Rust and Python file, the file's content from the repository
(one long-lived `git cat-file --batch` per worker, parses deduplicated by blob
id). How a commit becomes chunks is `repo2model/chunking.py` (units:
`repo2model/code_units.py`); this script runs it over the whole history in
parallel, in batches of commits, and writes:

    chunks.jsonl          one `repo2model.records.Chunk` per line, grouped by commit in the
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
    redact_secrets     redact secrets in the file versions shown in `before`/`after` (patches are
                       already redacted by the scraper); follows the scraper: off when commits.json
                       says it scraped without redaction, its redact_patterns/allowlist when recorded
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from repo2model.artifacts import atomic_open, iter_commit_dicts, read_commits_metadata, require, write_json
from repo2model.chunking import (  # noqa: F401  (chunk_commit: predict.py's on-the-fly path, until repo2model.history)
    Chunker,
    ChunkerConfig,
    ChunkingStats,
    chunk_commit,
    default_redactor,
)
from repo2model.cli import add_config_argument, load_stage, user_errors_to_exit
from repo2model.errors import UserError
from repo2model.git import CatFile, open_repository
from repo2model.paths import ArtifactPaths
from repo2model.records import Commit
from repo2model.redact import Redactor

SECTION = "semantic_chunker"
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


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42, repo: Path | None = None) -> dict:
    """Chunk every commit of `paths.commits` into `paths.chunks`; stats into `paths.chunking_stats`.

    `repo` overrides the repository path recorded in the commits' metadata. A
    repository that cannot be opened is not fatal: parsed languages degrade to
    `hunk` chunks (counted), since the patches are in commits.json.
    """
    started = time.perf_counter()
    metadata = read_commits_metadata(paths.commits)
    repo_path = find_repository(repo, metadata, paths.commits)
    redactor = redactor_for(cfg, metadata)
    total = metadata.get("total_commits")
    workers = cfg.workers or _cores()
    if isinstance(total, int):  # no more processes than batches to give them
        workers = max(1, min(workers, -(-total // cfg.batch_size)))
    stats = ChunkingStats()
    with atomic_open(paths.chunks) as out:
        batches = _batches(iter_commit_dicts(paths.commits), cfg.batch_size)
        progress = tqdm(total=total, unit="commit", desc="chunking", disable=None)
        for text, batch_stats, count in _map_batches(batches, cfg, repo_path, workers, redactor):
            out.write(text)
            stats.merge(batch_stats)
            progress.update(count)
        progress.close()
    stats.seconds = round(time.perf_counter() - started, 3)
    summary = {**stats.to_dict(), "workers": workers, "repository": str(repo_path) if repo_path is not None else None,
               "config": dataclasses.asdict(cfg)}
    write_json(paths.chunking_stats, summary)
    log.info(
        "semantic_chunker: %d commits, %d files -> %d chunks in %.1fs (%d workers); parse errors %d/%d files, "
        "%d files skipped, %d uncovered lines -> %s",
        stats.commits, sum(stats.files_by_language.values()), stats.chunk_count, stats.seconds, workers,
        stats.parse_error_files, stats.parsed_files, sum(stats.skipped_files.values()), stats.uncovered_lines,
        paths.chunks,
    )
    return {k: summary[k] for k in ("commits", "chunks", "files", "parse_error_rate", "uncovered_lines", "seconds")}


def _cores() -> int:
    """CPU cores this process may use (the affinity mask, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


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


# ---------------------------------------------------------------- parallel map, ordered and bounded


def _batches(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _map_batches(batches: Iterator[list[dict]], cfg: Config, repo: Path | None, workers: int,
                 redactor: Redactor | None):
    """Yield (jsonl text, stats, commit count) per batch, in input order, with few batches in flight."""
    if workers <= 1:
        _init_worker(repo, cfg, redactor)
        try:
            for batch in batches:
                yield _chunk_batch(batch)
        finally:
            _close_worker()
        return
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(repo, cfg, redactor))
    try:
        in_flight = collections.deque()
        limit = workers * 2  # bounded: the reader never runs far ahead of the writer
        for batch in batches:
            in_flight.append(pool.apply_async(_chunk_batch, (batch,)))
            if len(in_flight) >= limit:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


_chunker: Chunker | None = None  # one per worker process


def _init_worker(repo: Path | None, cfg: Config, redactor: Redactor | None) -> None:
    global _chunker
    _chunker = Chunker(CatFile(repo) if repo is not None else None, cfg, redactor)


def _close_worker() -> None:
    if _chunker is not None and _chunker.objects is not None:
        _chunker.objects.close()


def _chunk_batch(batch: list[dict]) -> tuple[str, ChunkingStats, int]:
    stats = ChunkingStats()
    commits = [Commit.from_dict(record) for record in batch]
    lines = [
        json.dumps(vars(chunk), ensure_ascii=False) + "\n"  # flat: no asdict copy
        for chunks in _chunker.chunk_commits(commits, stats) for chunk in chunks
    ]
    return "".join(lines), stats, len(batch)


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
    args = parser.parse_args(argv)
    cfg, pipeline, paths = load_stage(args, SECTION, Config)
    if args.commits:
        paths = dataclasses.replace(paths, commits=args.commits.expanduser().resolve())
    if args.output:
        output = args.output.expanduser().resolve()
        paths = dataclasses.replace(paths, chunks=output, chunking_stats=output.parent / "chunking_stats.json")
    if args.workers is not None:
        if args.workers < 0:
            raise UserError("--workers: must be >= 0 (0 = one per CPU core)")
        cfg = dataclasses.replace(cfg, workers=args.workers)
    require(paths.commits, "git_scraper")
    run(cfg, paths, seed=pipeline.seed, repo=args.repo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
