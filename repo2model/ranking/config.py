"""The config sections of the ranking stages: `evaluate` (EvaluationConfig) and `train_ranker` (RankerConfig), and the
LightGBM settings both of the ranker's models are fitted with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from repo2model.ranking.features import FeatureConfig
from repo2model.ranking.history import BaselineConfig


@dataclass
class EvaluationConfig(BaselineConfig):
    """The `evaluate` section (evaluate.py; its baseline keys also set the ranker's features)."""

    split: Literal["test", "val"] = "test"
    max_examples: int = 40
    mine_from: Literal["train", "before_target"] = "before_target"
    baselines_only: bool = False
    test_from: int | None = None
    device: str = "cpu"
    update: bool = False  # pipeline.py --update sets it: score the new targets, carry the rest (evaluate.py)

    def __post_init__(self):
        super().__post_init__()
        if self.max_examples < 0:
            raise ValueError("max_examples: must be >= 0 (0 = all)")
        if self.test_from is not None and self.test_from < 1:
            raise ValueError("test_from: must be >= 1 (some history must come before the targets)")

    def baselines(self) -> BaselineConfig:
        return BaselineConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BaselineConfig)})


@dataclass
class FitSettings:
    """LightGBM settings."""

    num_trees: int = 1000
    early_stopping_rounds: int = 50
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.8
    num_threads: int = 1

    def __post_init__(self):
        if self.num_trees < 1 or self.early_stopping_rounds < 1:
            raise ValueError("num_trees, early_stopping_rounds: must be >= 1")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError("learning_rate: must be in (0, 1]")
        if self.num_leaves < 2 or self.min_data_in_leaf < 1:
            raise ValueError("num_leaves: must be >= 2, min_data_in_leaf >= 1")
        if not 0.0 < self.feature_fraction <= 1.0:
            raise ValueError("feature_fraction: must be in (0, 1]")
        if self.num_threads < 1:
            raise ValueError("num_threads: must be >= 1")

    def lightgbm_params(self, seed: int, **extra) -> dict:
        """LightGBM's parameters, such that the same rows give the same model bytes."""
        return {
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "seed": seed,
            "verbosity": -1,
            **extra,
        }


@dataclass
class RankerConfig(FitSettings, FeatureConfig):
    """The `train_ranker` section (train_ranker.py): candidates, LightGBM, the classifier, the language model."""

    max_train_targets: int = 0
    change_types: bool = True
    language_model: Literal["auto", "off"] = "auto"
    device: str = "cpu"
    # auto: the shipped prior (repo2model.ranking.prior) | off | a folder holding one. YAML reads an unquoted off
    # (and no, false) as false, and on as true: those mean off and auto.
    prior: str | bool = "auto"
    update: bool = False  # pipeline.py --update sets it (repo2model.stages.train_ranker: what an update refits)
    update_refit_share: float = 0.25

    def __post_init__(self):
        FitSettings.__post_init__(self)
        FeatureConfig.__post_init__(self)
        if self.max_train_targets < 0:
            raise ValueError("max_train_targets: must be >= 0 (0 = all)")
        if not 0.0 <= self.update_refit_share:
            raise ValueError("update_refit_share: must be >= 0")
        if self.language_model not in ("auto", "off"):
            raise ValueError("language_model: must be auto or off")
        if isinstance(self.prior, bool):
            self.prior = "auto" if self.prior else "off"
        if not isinstance(self.prior, str) or not self.prior:
            raise ValueError("prior: must be auto, off or the folder of a prior (prior.txt + prior.json)")

    def fit(self) -> FitSettings:
        return FitSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FitSettings)})

    def candidates(self) -> FeatureConfig:
        return FeatureConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FeatureConfig)})
