"""The history in time order, and the chronological train / val / test splits.

Order (`chronological_order`): parents first by *effective time* (the commit time
raised to the latest effective time of its parents), ties by position in tokens.pt.
Its times never decrease, so cutting it by position (`split_plan`) gives splits where
every val commit is later than (or, for ties that cannot be separated, as late as)
every train commit, and every test commit later than every val commit (`untie` moves a
boundary off a run of equal times). An update moves the split forward (`update_plan`):
val and test are the latest commits never trained on, train the rest plus a replay
sample of earlier training. `split_stats` and `padding_estimate` describe a split.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from repo2model.core.errors import UserError
from repo2model.core.stats import pad_fraction
from repo2model.language.encoded_commits import EncodedCommits

if TYPE_CHECKING:
    from repo2model.language.examples import Built, Example

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Order:
    """The commits in chronological order (see the module docstring): rank -> commit index in tokens.pt."""

    indices: list[int]
    hashes: list[str]
    effective: list[float]  # effective time, seconds since the epoch (UTC), non-decreasing
    authored: list[str]  # raw authored_at
    committed: list[str]  # raw committed_at
    is_merge: list[bool]
    total_in_file: int
    effective_raised: int  # commits whose effective time was raised above their own commit time


def seconds(value: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (the tokenizer stage checked that it parses)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def chronological_order(encoded: EncodedCommits, first_parent_only: bool) -> Order:
    """Parents first by effective time (commit time raised to the parents'), ties by file position."""
    rows = []  # (effective, position)
    effective: dict[str, float] = {}
    raised = 0
    for position, info in enumerate(encoded.infos):
        if first_parent_only and not info.on_default_first_parent:
            continue
        if info.hash in effective:
            raise UserError(f"commit {info.hash[:12]} appears twice in the history: rerun the git_scraper stage")
        own = seconds(info.committed_at)
        moment = max([own, *(effective[p] for p in info.parents if p in effective)])
        raised += moment > own
        effective[info.hash] = moment
        rows.append((moment, position))
    if first_parent_only and encoded.infos and not any(i.on_default_first_parent for i in encoded.infos):
        raise UserError(
            "no commit is marked on_default_first_parent, so first_parent_only keeps nothing: "
            "rerun the git_scraper stage (or set dataset_builder.first_parent_only: false)"
        )
    rows.sort()
    infos = [encoded.infos[position] for _, position in rows]
    return Order(
        indices=[position for _, position in rows],
        hashes=[i.hash for i in infos],
        effective=[moment for moment, _ in rows],
        authored=[i.authored_at for i in infos],
        committed=[i.committed_at for i in infos],
        is_merge=[i.is_merge for i in infos],
        total_in_file=len(encoded),
        effective_raised=raised,
    )


@dataclasses.dataclass
class SplitPlan:
    """Which examples (indices into the chronological `built.examples`) go to each split, in order."""

    train: list[int]
    val: list[int]
    test: list[int]
    update: dict | None = None  # update mode: counts, and every commit trained on so far

    def split(self, name: str) -> list[int]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def split_plan(built: Built, order: Order, val_ratio: float, test_ratio: float) -> SplitPlan:
    """The chronological split: the earliest examples train, the later val, the latest test."""
    n = len(built.examples)
    val_start, test_start = split_bounds(n, [order.effective[e.rank] for e in built.examples], val_ratio, test_ratio,
                                         f"{n} commits with changes to learn from ({len(order.hashes)} commits in order, "
                                         f"{built.skipped_no_chunks} without chunks, {built.skipped_merges} merges skipped)")
    return SplitPlan(list(range(val_start)), list(range(val_start, test_start)), list(range(test_start, n)))


def split_bounds(n: int, times: list[float], val_ratio: float, test_ratio: float, what: str) -> tuple[int, int]:
    """(first val index, first test index) into `n` chronological examples with these effective times."""
    n_test = round(n * test_ratio)
    n_val = round(n * val_ratio)
    n_train = n - n_val - n_test
    needed = 1 + (val_ratio > 0) + (test_ratio > 0)
    if n_train < 1 or (val_ratio > 0 and n_val < 1) or (test_ratio > 0 and n_test < 1):
        raise UserError(
            f"history too short to split: {what} give "
            f"{n_train}/{n_val}/{n_test} train/val/test examples at val_ratio {val_ratio}, test_ratio {test_ratio}; "
            f"need every split non-empty (at least {needed} examples, more with small ratios): use a longer history or change the ratios"
        )
    val_start = untie(n_train, 1, n_train + n_val, times)
    test_start = untie(n_train + n_val, val_start + (n_val > 0), n, times)
    return val_start, test_start


def update_plan(built: Built, order: Order, trained: set[str], seed: int, val_ratio: float, test_ratio: float,
                replay_share: float) -> SplitPlan | None:
    """The split moved forward: val and test are the latest examples the model has never trained on
    (as many as a full split would have); train is the rest of those, plus a replay sample of what
    it trained on before (`replay_share` of the train split), so that it does not forget.
    None when no commit is left to train on once val and test are filled."""
    fresh = [i for i, e in enumerate(built.examples) if order.hashes[e.rank] not in trained]
    seen = [i for i, e in enumerate(built.examples) if order.hashes[e.rank] in trained]
    n_test, n_val = round(len(built.examples) * test_ratio), round(len(built.examples) * val_ratio)
    if len(fresh) <= n_val + n_test:
        return None
    new_train = len(fresh) - n_val - n_test
    times = [order.effective[built.examples[i].rank] for i in fresh]
    val_start = untie(new_train, 1, new_train + n_val, times)
    test_start = untie(new_train + n_val, val_start + (n_val > 0), len(fresh), times)
    replayed = min(len(seen), round(val_start * replay_share / (1 - replay_share)))
    replay = random.Random(seed).sample(seen, replayed)
    train = sorted(fresh[:val_start] + replay)
    update = {
        "trained_before": len(seen),
        "new_train": val_start,
        "replayed": replayed,
        "replay_share": replay_share,
        "trained_commits": sorted(trained | {order.hashes[built.examples[i].rank] for i in train}),
    }
    return SplitPlan(train, fresh[val_start:test_start], fresh[test_start:], update)


def untie(boundary: int, lo: int, hi: int, times: list[float]) -> int:
    """Move a split boundary off a run of equal effective times when the splits stay non-empty."""
    if boundary >= hi or boundary <= 0 or times[boundary] != times[boundary - 1]:
        return boundary  # no tie, or the later split is empty (ratio 0)
    forward = boundary
    while forward < hi - 1 and times[forward] == times[forward - 1]:
        forward += 1
    if times[forward] != times[forward - 1]:
        return forward
    backward = boundary
    while backward > lo and times[backward] == times[backward - 1]:
        backward -= 1
    return backward if times[backward] != times[backward - 1] else boundary


def split_stats(examples: list[Example], order: Order, lengths: np.ndarray, previous_authored_max: float | None) -> dict:
    if not examples:
        return {"examples": 0}
    ranks = [e.rank for e in examples]

    def iso(moment: float) -> str:
        return datetime.fromtimestamp(moment, tz=timezone.utc).isoformat()

    authored = [(seconds(order.authored[r]), order.authored[r]) for r in ranks]
    committed = [(seconds(order.committed[r]), order.committed[r]) for r in ranks]
    backwards = sum(s < previous_authored_max for s, _ in authored) if previous_authored_max is not None else 0
    return {
        "examples": len(ranks),
        "tokens": int(lengths.sum()),
        "effective_time": {"first": iso(order.effective[ranks[0]]), "last": iso(order.effective[ranks[-1]])},
        "authored_at": {"min": min(authored)[1], "max": max(authored)[1]},
        "committed_at": {"min": min(committed)[1], "max": max(committed)[1]},
        "first_commit": order.hashes[ranks[0]],
        "last_commit": order.hashes[ranks[-1]],
        # raw author dates earlier than the latest one of the earlier splits (rebases, wrong clocks)
        "authored_before_previous_split": int(backwards),
        "truncated": sum(e.truncated for e in examples),
    }


def padding_estimate(lengths: np.ndarray, batch_size: int, context_window: int) -> dict:
    """Share of pad tokens two ways: batches of consecutive examples padded to their longest
    ("unpacked"), and examples packed in order, whole, into rows of `context_window` ("packed")."""
    if lengths.size == 0:
        return {"unpacked": 0.0, "packed": 0.0, "packed_rows": 0}
    rows, used = 0, context_window
    for length in lengths.tolist():
        if used + length > context_window:
            rows += 1
            used = 0
        used += length
    tokens = int(lengths.sum())
    return {
        "unpacked": round(pad_fraction(lengths[start : start + batch_size] for start in range(0, lengths.size, batch_size)), 4),
        "packed": round(1 - tokens / (rows * context_window), 4),
        "packed_rows": rows,
    }
