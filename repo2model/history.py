"""Recent history: the last N commits with their chunks, oldest first, as the prompt of a prediction needs them.

Three sources, one shape (`list[tuple[Commit, list[Chunk]]]`):
    history_from_repo       a repository: its last N commits scraped and chunked on the fly, with the scraper's
                            and the chunker's own code and config sections (load_history_sections), so that a
                            prediction sees the history exactly as the pipeline rendered it for training
    history_from_artifacts  commits.json + chunks.jsonl: the last N commits and their chunks (streaming, bounded)
    history_from_records    commit records a caller sends (commits.json's form, each optionally with "chunks")
Reads the repository (git), or the two artifacts; writes nothing.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from repo2model.artifacts import iter_commits, iter_jsonl
from repo2model.chunking import ChunkerConfig, chunk_commit
from repo2model.config import load_config
from repo2model.errors import UserError
from repo2model.git import CatFile, open_repository
from repo2model.records import Chunk, Commit
from repo2model.scraping import ScraperConfig, scrape_recent

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
    with CatFile(top) as objects:
        return [(commit, chunk_commit(commit, objects, chunker_cfg)) for commit in commits]


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
