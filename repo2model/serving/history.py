"""Recent history: the last N commits with their chunks, oldest first, as the prompt of a prediction needs them.

Three sources, one shape (`list[tuple[Commit, list[Chunk]]]`):
    history_from_repo       a repository: its last N commits scraped and chunked on the fly, with the scraper's
                            and the chunker's own code and config sections (load_history_sections), so that a
                            prediction sees the history exactly as the pipeline rendered it for training
    history_from_artifacts  commits.json + chunks.jsonl: the last N commits and their chunks (streaming, bounded)
    history_from_records    commit records a caller sends (commits.json's form, each optionally with "chunks")
Reads the repository (git), or the two artifacts; writes nothing. Objects the repository lacks (a partial clone, a
pruned mirror) degrade as in the stages: the file change has no patch (`patch_skipped: unavailable`), or its chunks
come from the patch alone; history_from_repo logs how many.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from repo2model.core.artifacts import iter_commits, iter_jsonl
from repo2model.code.chunking import DEGRADED_MISSING_OBJECT, Chunker, ChunkerConfig, ChunkingStats, default_redactor
from repo2model.core.config import load_config
from repo2model.core.errors import UserError
from repo2model.git.commands import open_repository
from repo2model.git.objects import CatFile
from repo2model.core.records import PATCH_UNAVAILABLE, Chunk, Commit
from repo2model.git.scraping import ScraperConfig, scrape_recent

log = logging.getLogger("predict")

History = list[tuple[Commit, list[Chunk]]]


def history_from_repo(repo: Path, count: int, scraper_cfg: ScraperConfig | None = None,
                      chunker_cfg: ChunkerConfig | None = None) -> History:
    """The last `count` commits of `repo` (oldest first) with their chunks, as the stages would make them."""
    try:
        top = open_repository(repo)
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise UserError(f"{str(repo)[:200]}: not a usable path ({exc.strerror or exc})") from None
    if count == 0:
        return []
    commits = scrape_recent(top, count, scraper_cfg)
    chunker_cfg = chunker_cfg or ChunkerConfig()
    stats = ChunkingStats()
    with CatFile(top) as objects:  # as chunking.chunk_commit, one Chunker and its stats for all the commits
        chunker = Chunker(objects, chunker_cfg, default_redactor() if chunker_cfg.redact_secrets else None)
        history = [(commit, chunker.chunk_commit(commit, stats)) for commit in commits]
    unavailable = unavailable_files(history)
    degraded = stats.degraded_files[DEGRADED_MISSING_OBJECT]
    if unavailable or degraded:
        log.warning("history: objects missing from %s (partial clone or pruned mirror): %d file changes of the last "
                    "%d commits without a patch, %d chunked from the patch alone", top, unavailable, len(commits),
                    degraded)
    return history


def unavailable_files(history: History) -> int:
    """File changes of the history recorded without a patch because their objects are missing."""
    return sum(change.patch_skipped == PATCH_UNAVAILABLE for commit, _ in history for change in commit.files)


def history_from_artifacts(commits_path: Path, chunks_path: Path, count: int) -> History:
    """The last `count` commits of a commits.json with their chunks from chunks.jsonl (streaming, bounded)."""
    if count == 0:
        return []
    last = deque(iter_commits(commits_path), maxlen=count)
    wanted: dict[str, list[Chunk]] = {c.hash: [] for c in last}
    if Path(chunks_path).exists():
        for record in iter_jsonl(chunks_path, "semantic_chunker"):
            if record["commit"] in wanted:
                wanted[record["commit"]].append(Chunk.from_dict(record))
    else:
        log.warning("%s not found: the history is rendered without chunks", chunks_path)
    return [(c, wanted[c.hash]) for c in last]


def history_from_records(records: list) -> History:
    """Commit records (commits.json's form, each optionally with a "chunks" list) -> history; ValueError if bad."""
    history = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"commits[{i}]: must be an object")
        try:
            commit = Commit.from_dict(record)
            chunks = [Chunk.from_dict(c) for c in record.get("chunks") or []]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"commits[{i}]: not a commit record ({type(exc).__name__}: {exc})") from None
        history.append((commit, chunks))
    return history


def load_history_sections(config_path: Path | None) -> tuple[ScraperConfig | None, ChunkerConfig | None]:
    """The git_scraper and semantic_chunker sections (None: their defaults) so that on-the-fly scraping
    filters and chunks exactly like the pipeline did."""
    if config_path is None:
        return None, None
    loaded = load_config(config_path, {"git_scraper": ScraperConfig, "semantic_chunker": ChunkerConfig},
                         strict_sections=False)
    return loaded["git_scraper"], loaded["semantic_chunker"]
