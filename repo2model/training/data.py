"""The inputs of a run: the example splits the dataset builder wrote, the tokenizer they were encoded with, the
sequence length, and the latest commit the examples teach (recorded in the model folder)."""

from __future__ import annotations

import datetime
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from repo2model.core.artifacts import require
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.language.examples import ExampleSet
from repo2model.language.tokenizer_folder import load_commit_tokenizer

if TYPE_CHECKING:  # annotations only: Config belongs to the stage, which imports this package
    from repo2model.stages.train_model import Config

log = logging.getLogger("train_model")


def load_data(paths: ArtifactPaths) -> dict[str, ExampleSet]:
    data = {}
    for split in ("train", "val", "test"):
        path = paths.split_data(split)
        if split == "test" and not path.exists():
            log.warning("train_model: %s not found: the final evaluation uses the validation split", path)
            continue
        data[split] = ExampleSet.load(require(path, "dataset_builder"))
        if len(data[split]) == 0 and split != "test":
            raise UserError(f"{path}: no {split} examples: the history is too short for a {split} split "
                            "(lower dataset_builder's split fractions or use a longer history)")
    if "test" in data and len(data["test"]) == 0:
        del data["test"]
    return data


def find_tokenizer(train: ExampleSet, paths: ArtifactPaths, tokenizer_dir: Path | None):
    """(tokenizer, its folder): `tokenizer_dir`, else the folder the data was encoded with, else <output>/tokenizer.

    Loaded as every stage loads it (checked against its commit language, which the model folder gets a copy of).
    """
    candidates = [tokenizer_dir] if tokenizer_dir else []
    if train.meta.get("tokenizer_dir"):
        candidates.append(Path(train.meta["tokenizer_dir"]))
    candidates.append(paths.tokenizer_dir)
    for folder in candidates:
        if folder is not None and (Path(folder) / "tokenizer.json").is_file():
            _, tokenizer = load_commit_tokenizer(folder)
            return tokenizer, Path(folder)
    raise UserError(f"{candidates[0]}: no tokenizer folder (tokenizer.json) found: run the tokenizer stage first "
                    "(python pipeline.py --stage tokenizer)")


def check_vocab(data: dict[str, ExampleSet], tokenizer) -> None:
    for split, examples in data.items():
        if examples.input_ids.numel() and int(examples.input_ids.max()) >= len(tokenizer):
            raise UserError(f"training_data_{split}.pt holds token ids up to {int(examples.input_ids.max())} but the "
                            f"tokenizer has {len(tokenizer)}: rerun the dataset_builder stage with this tokenizer")


def choose_seq_len(cfg: Config, train: ExampleSet) -> int:
    """cfg.seq_len, else the dataset's example window (context_window: context + target), or the longest example."""
    if cfg.seq_len:
        return cfg.seq_len
    longest = int(train.lengths().max()) if len(train) else 64
    window = int(train.meta.get("context_window") or 0)
    return max(64, math.ceil(max(longest, window) / 64) * 64)


def latest_target(examples: ExampleSet) -> tuple[str | None, str | None]:
    """(hash, time) of the latest target commit among the examples (by time; the later example on a tie)."""
    latest = None
    for commit, stamp in zip(examples.commits, examples.timestamps):
        try:
            when = datetime.datetime.fromisoformat(stamp)
        except (TypeError, ValueError):
            continue
        when = when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)
        if latest is None or when >= latest[0]:
            latest = (when, commit, stamp)
    if latest is None:
        return (examples.commits[-1] if len(examples) else None), None
    return latest[1], latest[2]
