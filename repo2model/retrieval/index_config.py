"""The `index` section of the config: how the index stage builds the unit index and how prediction reads it.

    cfg = load_index_config(config_path)     # IndexConfig(); its defaults without a config file

Each key is documented in config.yaml. The index stage (repo2model.stages.index) uses it as its Config; the
Retriever, the ranker's file embeddings and the benches read the same section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from repo2model.core.config import load_config

SECTION = "index"


@dataclass
class IndexConfig:
    """The `index` section (each key is documented in config.yaml)."""

    rev: str = "HEAD"
    url: str | None = None
    api_key_env: str = "QDRANT_API_KEY"
    collection: str = "repo2model_units"
    embedded: Literal["edge", "local"] = "edge"
    model_dir: Path | None = None
    backend: Literal["auto", "onnx-int8", "onnx", "torch"] = "auto"
    max_tokens: int = 128
    batch_size: int = 32
    num_threads: int | None = None
    max_file_bytes: int = 300_000
    whole_file_lines: int = 150
    text_files: bool = True
    search_limit: int = 100
    rrf_k: int = 2
    guided_weight: float = 4.0
    context_files: int = 5
    predicted_share: float = 0.5
    pack: Literal["ordered", "fused", "chosen"] = "fused"
    fuse_weight: float = 1.0
    lock_wait_s: float = 30.0
    keep_open_s: float = 5.0
    timeout_s: float = 30.0

    def __post_init__(self):
        if self.embedded not in ("edge", "local"):
            raise ValueError("embedded: must be edge or local")
        if self.backend not in ("auto", "onnx-int8", "onnx", "torch"):
            raise ValueError("backend: must be auto, onnx-int8, onnx or torch")
        if not 8 <= self.max_tokens <= 512:
            raise ValueError("max_tokens: must be between 8 and 512 (the model's positions)")
        for name in ("batch_size", "max_file_bytes", "whole_file_lines", "search_limit", "rrf_k", "context_files"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads: must be >= 1 (or null)")
        if self.guided_weight <= 0:
            raise ValueError("guided_weight: must be > 0")
        if self.pack not in ("ordered", "fused", "chosen"):
            raise ValueError("pack: must be ordered, fused or chosen")
        if self.fuse_weight <= 0:
            raise ValueError("fuse_weight: must be > 0")
        if not 0.0 <= self.predicted_share <= 1.0:
            raise ValueError("predicted_share: must be between 0 and 1")
        if self.lock_wait_s < 0 or self.keep_open_s < 0 or self.timeout_s <= 0:
            raise ValueError("lock_wait_s, keep_open_s: must be >= 0; timeout_s: > 0")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError(f"url: must start with http:// or https:// (got {self.url!r})")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", self.collection):
            raise ValueError("collection: letters, digits, '_', '-', '.' only")


def load_index_config(config_path: Path | None) -> IndexConfig:
    """The `index` section of a config file (its defaults without one)."""
    if config_path is None:
        return IndexConfig()
    return load_config(config_path, {SECTION: IndexConfig}, strict_sections=False)[SECTION]
