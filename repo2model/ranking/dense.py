"""The dense feature's similarity: the task's embedding against each file's as it is at the target's parent
(all-MiniLM-L6-v2 as the `index` section sets it), and the settings saved with the ranker to compute it again.

    info = dense_settings(index_config)             # saved in the ranker's settings.json ("dense")
    scorer = scorer_of(file_embeddings(info))       # a features.DenseScorer
"""

from __future__ import annotations

from repo2model.ranking.features import DenseScorer
from repo2model.retrieval.bm25 import FileSearch
from repo2model.retrieval.embedding import Embedder, FileEmbeddings
from repo2model.retrieval.index_config import IndexConfig

DENSE_SETTINGS = ("model_dir", "max_tokens", "max_file_bytes", "whole_file_lines", "text_files")


def dense_settings(index: IndexConfig) -> dict:
    """What the dense feature's vectors depend on (the `index` section's model and file texts), for settings.json."""
    return {name: (str(getattr(index, name)) if name == "model_dir" and index.model_dir is not None
                   else getattr(index, name)) for name in DENSE_SETTINGS}


def file_embeddings(settings: dict) -> FileEmbeddings:
    """A FileEmbeddings as `dense_settings` describes it (defaults: the packaged all-MiniLM-L6-v2)."""
    index = IndexConfig(**{k: v for k, v in settings.items() if k in DENSE_SETTINGS})
    return FileEmbeddings(Embedder(index.model_dir, index.max_tokens, index.batch_size, index.num_threads), index)


def scorer_of(embeddings: FileEmbeddings) -> DenseScorer:
    """features.DenseScorer over a FileEmbeddings: the files as they are in the FileSearch's tree."""

    def dense(task: str, code: FileSearch, paths: list[str]) -> dict[str, float]:
        return embeddings.similarities(task, code.blobs, code.read, paths)

    return dense
