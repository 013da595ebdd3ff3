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

How an example is assembled from tokens.pt's ids (`build_examples`): the context is
<BOS> + the compact renderings of the previous commits that fit + <TASK> message
(`assemble_prompt`, the function prediction uses); the target is the commit's full
rendering, cut at a chunk boundary and marked <TRUNCATED> when it is longer than the
target window (`fit_target`), then <COMMIT_END> and <EOS>.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from repo2model.core.artifacts import load_pt, save_pt
from repo2model.core.errors import UserError
from repo2model.core.progress import progress
from repo2model.language.commit_language import assemble_prompt
from repo2model.language.encoded_commits import EncodedCommits
from repo2model.language.encoding import decode_ids, encode_texts, special_id
from repo2model.language.tokens import COMMIT_END, TRUNCATED

if TYPE_CHECKING:
    from repo2model.language.splits import Order

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


# ------------------------------------------------------------------ assembling examples


@dataclasses.dataclass
class TargetTokens:
    """The ids every example shares, and the tokenizer (to cut an over-long first chunk at a line)."""

    tokenizer: Any
    bos: int
    eos: int
    end: list[int]  # <COMMIT_END>\n
    marker: list[int]  # <TRUNCATED>\n

    @classmethod
    def of(cls, tokenizer: Any) -> "TargetTokens":
        end, marker = encode_texts(tokenizer, [COMMIT_END + "\n", TRUNCATED + "\n"])
        return cls(tokenizer, special_id(tokenizer, "bos"), special_id(tokenizer, "eos"), end, marker)


@dataclasses.dataclass
class Example:
    rank: int  # the target commit's place in the order
    ids: np.ndarray  # int32: context + target
    prompt_length: int
    truncated: bool
    history_dropped: int  # history commits that did not fit the context
    cut_inside_chunk: bool

    @property
    def target_length(self) -> int:
        return len(self.ids) - self.prompt_length


@dataclasses.dataclass
class Built:
    """Examples in chronological order (not yet split)."""

    examples: list[Example] = dataclasses.field(default_factory=list)
    skipped_no_chunks: int = 0
    skipped_merges: int = 0


def build_examples(encoded: EncodedCommits, order: Order, tokens: TargetTokens, *, history_commits: int,
                   target_window: int, context_window: int, include_merges: bool) -> Built:
    """One example per target commit (a commit with chunks; a merge only with `include_merges`), in
    chronological order, from the stored ids: the previous `history_commits` commits as context."""
    built = Built()
    compact: dict[int, list[int]] = {}  # rank -> ids of its compact rendering, for the next examples' contexts
    for rank, index in enumerate(progress(order.indices, desc="building examples", unit="commits")):
        compact[rank] = encoded.compact(index).tolist()
        compact.pop(rank - history_commits - 1, None)  # no later example reaches back that far
        if encoded.chunk_count(index) == 0:
            built.skipped_no_chunks += 1
            continue
        if order.is_merge[rank] and not include_merges:
            built.skipped_merges += 1
            continue
        history = [compact[r] for r in range(max(0, rank - history_commits), rank)]
        example = make_example(rank, history, encoded.task(index).tolist(), encoded.segments(index), tokens,
                               target_window, context_window)
        if example is not None:
            built.examples.append(example)
    return built


def make_example(rank: int, history: list[list[int]], task: list[int], segments: list[np.ndarray],
                 tokens: TargetTokens, target_window: int, context_window: int) -> Example | None:
    """<BOS> + the history that fits + the task, then the target (None: not even one line of it fits)."""
    target, truncated, cut_inside = fit_target(segments, tokens.end + [tokens.eos], tokens.marker, target_window, tokens.tokenizer)
    if target is None:
        return None
    prompt, dropped = assemble_prompt(history, task, tokens.bos, context_window - len(target))
    return Example(rank, np.asarray(prompt + target, dtype=np.int32), len(prompt), truncated, dropped, cut_inside)


def fit_target(segments: list[np.ndarray], tail: list[int], marker: list[int], window: int, tokenizer: Any):
    """(ids, truncated, cut inside a chunk): whole chunks while they fit, then <TRUNCATED>, then the tail."""
    if sum(len(s) for s in segments) + len(tail) <= window:
        return np.concatenate(segments).tolist() + tail, False, False
    room = window - len(tail) - len(marker)
    used = whole = 0
    for segment in segments:
        if used + len(segment) > room:
            break
        used += len(segment)
        whole += 1
    if whole:
        return np.concatenate(segments[:whole]).tolist() + marker + tail, True, False
    kept = cut_at_line(segments[0][:room].tolist(), room, tokenizer)
    return (kept + marker + tail if kept else None), True, True


def cut_at_line(ids: list[int], room: int, tokenizer: Any) -> list[int]:
    """The longest run of whole lines at the start of `ids` that encodes within `room` tokens.

    The only encoding this stage does: a line cut changes the tokens at the cut, so the kept
    text (at most `room` tokens of it) is encoded again.
    """
    text = decode_ids(tokenizer, ids[:room])
    while True:
        end = text.rfind("\n")
        if end < 0:
            return []
        text = text[: end + 1]
        cut = encode_texts(tokenizer, [text])[0]
        if len(cut) <= room:
            return cut
        text = text[:end]


def save_split(path: Path, examples: list[Example], order: Order, meta: dict) -> None:
    lengths = np.asarray([len(e.ids) for e in examples], dtype=np.int64)
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ExampleSet(
        input_ids=torch.from_numpy(np.concatenate([e.ids for e in examples]) if examples else np.zeros(0, dtype=np.int32)),
        offsets=torch.from_numpy(offsets),
        target_starts=torch.tensor([e.prompt_length for e in examples], dtype=torch.int64),
        commits=[order.hashes[e.rank] for e in examples],
        timestamps=[order.authored[e.rank] for e in examples],
        meta=meta,
    ).save(path)
