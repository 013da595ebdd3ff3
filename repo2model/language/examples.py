"""The training-example artifact `training_data_{train,val,test}.pt`.

One split is stored compactly (loadable with `torch.load(weights_only=True)`):

    input_ids      int32 [total_tokens]  every example's ids, concatenated
    offsets        int64 [n + 1]         example i is input_ids[offsets[i]:offsets[i+1]]
    target_starts  int64 [n]             position inside example i where its target begins;
                                         labels are -100 before it, the ids from it on
    commits        list[str]             the target commit of each example
    timestamps     list[str]             that commit's authored_at
    meta           dict                  split, tokenizer_dir, pad/bos/eos ids, windows, ...

Written by `dataset_builder.py`, read by `train_model.py` and `evaluate.py`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from repo2model.core.artifacts import load_pt, save_pt
from repo2model.core.errors import UserError

IGNORE_INDEX = -100


@dataclasses.dataclass
class ExampleSet:
    input_ids: Any  # torch.IntTensor
    offsets: Any  # torch.LongTensor
    target_starts: Any  # torch.LongTensor
    commits: list[str]
    timestamps: list[str]
    meta: dict

    def __len__(self) -> int:
        return len(self.commits)

    def ids(self, i: int):
        return self.input_ids[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def labels(self, i: int):
        """Labels of example i: -100 over the context, the ids over the target."""
        ids = self.ids(i).long()
        labels = ids.clone()
        labels[: int(self.target_starts[i])] = IGNORE_INDEX
        return labels

    def lengths(self):
        return self.offsets[1:] - self.offsets[:-1]

    def save(self, path: Path | str) -> Path:
        return save_pt(
            {
                "input_ids": self.input_ids,
                "offsets": self.offsets,
                "target_starts": self.target_starts,
                "commits": list(self.commits),
                "timestamps": list(self.timestamps),
                "meta": dict(self.meta),
            },
            path,
        )

    @classmethod
    def load(cls, path: Path | str) -> "ExampleSet":
        data = load_pt(path, "dataset_builder")
        keys = ("input_ids", "offsets", "target_starts", "commits", "timestamps", "meta")
        if not isinstance(data, dict) or any(k not in data for k in keys):
            raise UserError(f"{path}: not a training-data file written by dataset_builder: rerun that stage")
        n = len(data["commits"])
        if len(data["offsets"]) != n + 1 or len(data["target_starts"]) != n:
            raise UserError(f"{path}: inconsistent example counts: rerun the dataset_builder stage")
        return cls(**{k: data[k] for k in keys})
