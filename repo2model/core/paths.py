"""Where each artifact lives, derived from the pipeline's output folder.

Stage CLIs override single paths (`--output`, `--commits`, ...) with
`dataclasses.replace(paths, commits=...)`. Stage code takes every artifact
path from here (never `out / "commits.json"`): with `pipeline.compress` the
JSON-lines artifacts are `commits.json.zst` and `chunks.jsonl.zst`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

INFO_FILE = "training_info.json"  # in a model folder: written last, so its presence marks a complete model


@dataclasses.dataclass(frozen=True)
class ArtifactPaths:
    output_dir: Path
    commits: Path
    chunks: Path
    chunking_stats: Path
    tokenizer_dir: Path
    vocab: Path
    tokens: Path
    tokenizer_stats: Path
    train_data: Path
    val_data: Path
    test_data: Path
    dataset_stats: Path
    model_dir: Path
    checkpoints_dir: Path
    training_logs: Path
    ranker_dir: Path
    index_dir: Path
    evaluation: Path
    pipeline_log: Path
    pipeline_results: Path
    state: Path

    @classmethod
    def under(cls, output_dir: Path | str, log_file: Path | None = None, compress: bool | None = None) -> "ArtifactPaths":
        """The artifacts under `output_dir`. `compress`: zstd names for commits and chunks (True),
        plain names (False), or None: whichever of the two is there (plain when neither is),
        for reading a folder without knowing the config that wrote it."""
        out = Path(output_dir)
        return cls(
            output_dir=out,
            commits=_jsonl_name(out / "commits.json", compress),
            chunks=_jsonl_name(out / "chunks.jsonl", compress),
            chunking_stats=out / "chunking_stats.json",
            tokenizer_dir=out / "tokenizer",
            vocab=out / "vocab.json",
            tokens=out / "tokens.pt",
            tokenizer_stats=out / "tokenizer_stats.json",
            train_data=out / "training_data_train.pt",
            val_data=out / "training_data_val.pt",
            test_data=out / "training_data_test.pt",
            dataset_stats=out / "dataset_stats.json",
            model_dir=out / "model",
            checkpoints_dir=out / "checkpoints",
            training_logs=out / "training_logs",
            ranker_dir=out / "ranker",
            index_dir=out / "index",
            evaluation=out / "evaluation.json",
            pipeline_log=log_file or out / "pipeline.log",
            pipeline_results=out / "pipeline_results.json",
            state=out / ".pipeline_state.json",
        )

    def split_data(self, split: str) -> Path:
        return {"train": self.train_data, "val": self.val_data, "test": self.test_data}[split]


def _jsonl_name(plain: Path, compress: bool | None) -> Path:
    packed = plain.with_name(plain.name + ".zst")
    if compress is None:
        return packed if packed.exists() and not plain.exists() else plain
    return packed if compress else plain


def tokenizer_dir_for_vocab(vocab: Path) -> Path:
    """The tokenizer folder that goes with a `vocab.json` given on a command line.

    The tokenizer stage writes `<out>/vocab.json` and `<out>/tokenizer/`; a
    vocab inside a tokenizer folder (beside `tokenizer.json`) names its folder.
    """
    vocab = Path(vocab)
    if (vocab.parent / "tokenizer.json").is_file():
        return vocab.parent
    return vocab.parent / "tokenizer"
