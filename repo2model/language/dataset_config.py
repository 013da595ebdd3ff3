"""The `dataset_builder` section of the config: the example windows, the splits, the update's replay.

The dataset builder (repo2model.stages.dataset_builder) uses it as its Config; the tokenizer stage reads its
windows to encode each commit only as far as an example can use (`segment_budget`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class DatasetConfig:
    """The `dataset_builder` section (each key is documented in config.yaml and in the stage's docstring)."""

    context_window: int = 512
    target_window: int = 256
    history_commits: int = 8
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    first_parent_only: bool = False
    merge_targets: Literal["auto", "include", "exclude"] = "auto"
    batch_size: int = 8
    update: bool = False
    replay_share: float = 0.5

    def __post_init__(self) -> None:
        if self.target_window < 8:
            raise ValueError(f"target_window: must be at least 8, got {self.target_window}")
        if self.context_window < self.target_window + 8:
            raise ValueError(
                f"context_window: must leave at least 8 tokens of context beside target_window {self.target_window}, got {self.context_window}"
            )
        if self.history_commits < 0:
            raise ValueError("history_commits: must be >= 0")
        for name in ("val_ratio", "test_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError(f"val_ratio: val_ratio + test_ratio must be below 1, got {self.val_ratio + self.test_ratio}")
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if not 0 <= self.replay_share < 1:
            raise ValueError(f"replay_share: must be in [0, 1), got {self.replay_share}")


def segment_budget(cfg: DatasetConfig) -> int:
    """The most ids of a commit's change segments an example can use: its target is cut at `target_window`
    ids, and one id more tells the builder that the commit is longer than that."""
    return cfg.target_window + 1
