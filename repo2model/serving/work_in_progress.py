"""The work in progress of a repository, chunked as the pipeline chunks a commit: the evidence of a prediction made
while the developer is in the middle of a change.

    work = read_work_in_progress(repo, scraper_cfg, chunker_cfg)    # WorkInProgress: .tree, .chunks, .files
    work.in_progress()                                               # [InProgressFile]: path, status, change types

The uncommitted changes (staged and unstaged against HEAD, untracked files not ignored: repo2model.git.working_tree)
become a partial commit; the semantic chunker's own code and config turn it into chunks (secrets in the file
text redacted with the scraper's redaction, as in chunks.jsonl). Its files with chunks are the ones the ranker
takes as revealed (`files`); every changed file is reported as in progress, with its change types (the chunks'
change types, most frequent first), changed symbols and module.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from repo2model.code.chunking import Chunker, ChunkerConfig, ChunkingStats, default_redactor
from repo2model.core.records import Chunk
from repo2model.git.scraping import ScraperConfig
from repo2model.git.working_tree import WorkingTree, WorkingTreeObjects, read_working_tree
from repo2model.serving.prediction import ChangeTypeCount, InProgressFile


@dataclass
class WorkInProgress:
    tree: WorkingTree
    chunks: list[Chunk]

    @property
    def files(self) -> list[str]:
        """The changed files with chunks (what the commit language renders), in the partial commit's order."""
        return list(dict.fromkeys(chunk.file for chunk in self.chunks))

    @property
    def key(self) -> tuple:
        return self.tree.key

    def in_progress(self) -> list[InProgressFile]:
        """Every changed file: its status against HEAD, module, change types (most chunks first) and symbols."""
        by_file: dict[str, list[Chunk]] = {}
        for chunk in self.chunks:
            by_file.setdefault(chunk.file, []).append(chunk)
        out = []
        for change in self.tree.commit.files:
            path = change.old_path if str(change.status) == "D" and change.old_path else change.path
            chunks = by_file.get(path, [])
            types = Counter(c.change_type for c in chunks)
            out.append(InProgressFile(
                path=path, status=str(change.status),
                module=next((c.module for c in chunks if c.module), None),
                change_types=[ChangeTypeCount(t, n) for t, n in sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))],
                symbols=list(dict.fromkeys(c.symbol for c in chunks if c.symbol)),
                patch_skipped=change.patch_skipped))
        return out


def read_work_in_progress(repo: Path | str, scraper_cfg: ScraperConfig | None = None,
                          chunker_cfg: ChunkerConfig | None = None) -> WorkInProgress:
    """The repository's uncommitted changes and their chunks (UserError when it is not a repository with a working
    tree)."""
    chunker_cfg = chunker_cfg or ChunkerConfig()
    tree = read_working_tree(repo, scraper_cfg)
    with WorkingTreeObjects(tree) as objects:
        redactor = None
        if chunker_cfg.redact_secrets:  # the scraper's patterns when given (the file text is redacted like patches)
            redactor = scraper_cfg.redactor() if scraper_cfg is not None else default_redactor()
        chunker = Chunker(objects, chunker_cfg, redactor)
        chunks = chunker.chunk_commit(tree.commit, ChunkingStats())
    return WorkInProgress(tree, chunks)
