"""Examples packed into rows of seq_len tokens, rows collated into batches, and the batches of each optimizer step.

Packing is best-fit decreasing over whole examples; in a batch, position ids restart at 0 for each example, so
transformers derives a block-diagonal causal mask and each example's loss is the same as unpacked.  Rows are
length-bucketed into micro-batches; the order is a pure function of (seed, step), so a resumed run replays it.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import TYPE_CHECKING

import torch

from repo2model.language.examples import IGNORE_INDEX, ExampleSet

if TYPE_CHECKING:  # annotations only: Config belongs to the stage, which imports this package
    from repo2model.stages.train_model import Config


@dataclasses.dataclass
class PackedSplit:
    """One split's examples packed into rows (lists of example indices) of at most seq_len tokens."""

    examples: ExampleSet
    rows: list[list[int]]
    seq_len: int

    def __post_init__(self):
        self.lengths = row_lengths(self.examples, self.rows, self.seq_len)  # real tokens per row

    @property
    def pad_id(self) -> int:
        return pad_id(self.examples)

    def collate(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        return collate(self.examples, rows, self.seq_len, self.pad_id)


@dataclasses.dataclass
class TrainingData:
    train: PackedSplit
    val: PackedSplit
    test: PackedSplit | None  # None: the final evaluation uses the validation split

    @property
    def final(self) -> tuple[str, PackedSplit]:
        return ("test", self.test) if self.test is not None else ("val", self.val)


def pack_data(cfg: Config, examples: dict[str, ExampleSet], seq_len: int) -> TrainingData:
    """Every split packed into rows; evaluation rows longest first (their order does not matter: least padding)."""
    packed = {}
    for split, split_examples in examples.items():
        rows = pack_rows(split_examples, seq_len, cfg.packing)
        if split != "train":
            lengths = row_lengths(split_examples, rows, seq_len)
            rows = [rows[i] for i in sorted(range(len(lengths)), key=lambda i: -lengths[i])]
        packed[split] = PackedSplit(split_examples, rows, seq_len)
    return TrainingData(packed["train"], packed["val"], packed.get("test"))


def pack_rows(examples: ExampleSet, seq_len: int, packing: bool) -> list[list[int]]:
    """Example indices per row. Packing: best-fit decreasing, whole examples (longer ones count as seq_len)."""
    lengths = [min(int(n), seq_len) for n in examples.lengths().tolist()]
    if not packing:
        return [[i] for i in range(len(lengths))]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), sorted
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at < len(free):
            space, row = free.pop(at)
            rows[row].append(i)
            space -= lengths[i]
        else:
            rows.append([i])
            row, space = len(rows) - 1, seq_len - lengths[i]
        if space > 0:
            bisect.insort(free, (space, row))
    return rows


def row_lengths(examples: ExampleSet, rows: list[list[int]], seq_len: int) -> list[int]:
    """Real (non-pad) tokens of each row."""
    lengths = [min(int(n), seq_len) for n in examples.lengths().tolist()]
    return [sum(lengths[i] for i in row) for row in rows]


def padding_share(row_len: list[int], micro: int, seed: int) -> float:
    """Share of pad positions in the first epoch's micro-batches (each padded to its longest row)."""
    if not row_len:
        return 0.0
    batches = epoch_batches(row_len, micro, seed, 0)
    padded = sum(max(row_len[r] for r in batch) * len(batch) for batch in batches)
    return 1 - sum(row_len) / padded


def collate(examples: ExampleSet, rows: list[list[int]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, labels and position_ids [B, T] for rows of packed examples (T = the longest row).

    Each example keeps its last seq_len tokens, positions restart at 0 for each one and its first
    label is ignored (nothing before it in the same example predicts it), so its loss equals the
    unpacked loss.  Pad positions form their own segment with ignored labels.
    """
    ids, labels, positions = [], [], []
    for row in rows:
        row_ids, row_labels, row_pos = [], [], []
        for i in row:
            x = examples.ids(i).long()
            y = examples.labels(i)
            if len(x) > seq_len:
                x, y = x[-seq_len:], y[-seq_len:]
            y = y.clone()
            y[0] = IGNORE_INDEX
            row_ids.append(x)
            row_labels.append(y)
            row_pos.append(torch.arange(len(x)))
        ids.append(torch.cat(row_ids))
        labels.append(torch.cat(row_labels))
        positions.append(torch.cat(row_pos))
    width = max(len(x) for x in ids)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for b, (x, y, p) in enumerate(zip(ids, labels, positions)):
        n = len(x)
        batch["input_ids"][b, :n] = x
        batch["labels"][b, :n] = y
        batch["position_ids"][b, :n] = p
        batch["position_ids"][b, n:] = torch.arange(width - n)
    return batch


def row_tokens(examples: ExampleSet, rows: list[list[int]], seq_len: int) -> int:
    """Real (non-pad) tokens in the rows."""
    return sum(min(int(examples.offsets[i + 1] - examples.offsets[i]), seq_len) for row in rows for i in row)


def pad_id(examples: ExampleSet) -> int:
    value = examples.meta.get("pad_token_id")
    return int(value) if value is not None else 0


MEGABATCH = 50  # micro-batches per length-sorted group, as in transformers' group_by_length

def epoch_batches(row_len: list[int], micro: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches (row indices) of one epoch: a seeded shuffle, then length bucketing.

    Inside each group of MEGABATCH micro-batches the rows are sorted by length and cut into
    micro-batches, so that a micro-batch holds rows of similar length (little padding); the
    micro-batches of a group are then shuffled again. Only the epoch's last micro-batch can be short.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(row_len), generator=generator).tolist()
    batches: list[list[int]] = []
    group = MEGABATCH * micro
    for start in range(0, len(perm), group):
        chunk = sorted(perm[start:start + group], key=lambda r: -row_len[r])
        cut = [chunk[i:i + micro] for i in range(0, len(chunk), micro)]
        full = [b for b in cut if len(b) == micro]
        batches.extend(full[i] for i in torch.randperm(len(full), generator=generator).tolist())
        batches.extend(b for b in cut if len(b) < micro)
    return batches


def step_batches(rows: list[list[int]], row_len: list[int], micro: int, step: int, per_step: int, seed: int,
                 cache: dict) -> list[list[list[int]]]:
    """The `per_step` micro-batches (lists of rows) of optimizer step `step` (0-based).

    A pure function of the step, so a resumed run replays the order; the epochs follow each other
    without a gap.
    """
    picked = []
    per_epoch = math.ceil(len(rows) / micro)
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = epoch_batches(row_len, micro, seed, epoch)
        picked.append([rows[r] for r in cache[epoch][offset]])
    return picked
