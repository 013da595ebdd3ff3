"""Stage 4: chronological training examples — given the recent history and a task, produce the change.

Reads `tokens.pt` (every commit's ids, encoded once by the tokenizer stage:
`repo2model/language/encoded_commits.py`) and the tokenizer folder (with its
`commit_language.json`); writes `training_data_{train,val,test}.pt`
(`repo2model.language.examples.ExampleSet`) and `dataset_stats.json`. Nothing is rendered
or encoded again here: examples are assembled from the stored ids.

One example per target commit (a commit with at least one chunk):

    context = <BOS> + compact renderings of the previous `history_commits` commits
              (oldest first; when the room is short the most recent are kept) +
              <TASK> the target commit's message
    target  = the full rendering of the commit's changes (files, change types,
              symbols, code) + <COMMIT_END> + <EOS>

The context is assembled by `assemble_prompt`, the function prediction's
`build_prompt` uses, from the same renderings. `labels` are -100 over the context:
the loss falls on the target only. A target longer than `target_window` is cut
at a chunk boundary and marked `<TRUNCATED>` (when even the first chunk is too
long, it is cut at a line boundary inside it); the context gets the remaining
`context_window - len(target)` tokens.

Chronology. Commits are ordered parents first by their *effective time*: the
commit time, raised to the latest effective time of its parents (a commit
cannot land before what it builds on, whatever its clock said), ties by
position in `commits.json` (tokens.pt keeps that order). This order is topological and its times never
decrease, so cutting it by position gives splits where every val commit is
later than (or, for ties that cannot be separated, as late as) every train
commit, and every test commit later than every val commit, by effective time
and by ancestry. Raw author/commit dates, which rebases and wrong clocks skew,
are reported beside it, with the count of commits whose raw dates run
backwards across a split boundary. Ratios count the target commits.

Update (`update: true`, for `pipeline.py --update`): the split moves forward.
The commits the current model trained on are read from the previous
training_data_train.pt (its commits, or after an update its `trained_commits`);
val and test become the latest commits never trained on (as many as a full
split has), train the rest of those plus a replay sample of earlier training
examples (`replay_share` of the train split, drawn with the seed) so that the
model does not forget. Nothing trained on is ever in val or test. The train
file's meta lists every commit trained on so far for the next update;
dataset_stats.json gets an `update` section with the counts. When no commit is
left to train on once val and test are filled (nothing new since the last
update), nothing is written: the splits stay, so later stages stay up to date.

Config section `dataset_builder`:
    context_window      tokens per example, context + target (the model's sequence length)
    target_window       most tokens of one target (the rest of the window is context)
    history_commits     N: previous commits rendered in the context
    val_ratio           share of target commits in the validation split (the later ones)
    test_ratio          share in the test split (the latest)
    first_parent_only   only commits on the default branch's first-parent line
    merge_targets       "auto" (merges are targets only with first_parent_only, where
                        their diff carries the branch's work), "include", "exclude"
    batch_size          batch size for the padding-waste figures (match train_model)
    update              move the previous split forward instead of splitting afresh (see above)
    replay_share        update: share of the train split replayed from earlier training, in [0, 1)

CLI (the seed's flags work): python dataset_builder.py --vocab outputs/vocab.json
    --chunks outputs/chunks.jsonl --commits outputs/commits.json
(tokens.pt is read from --tokens, else beside --vocab, else <output_dir>; --chunks and
--commits are accepted for the seed's command line: tokens.pt already holds them)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import torch

from repo2model.core.artifacts import ensure_folder, read_json, require, write_json
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.language.commit_language import COMMIT_END, TRUNCATED, CommitLanguage, assemble_prompt, decode_ids, encode_texts, special_id
from repo2model.language.encoded_commits import EncodedCommits
from repo2model.core.errors import UserError
from repo2model.language.examples import ExampleSet
from repo2model.core.paths import ArtifactPaths, tokenizer_dir_for_vocab
from repo2model.core.stats import length_percentiles, pad_fraction
from repo2model.language.tokenizer_folder import load_commit_tokenizer
from repo2model.core.progress import progress

SECTION = "dataset_builder"
CODE = ("core", "language")  # the packages it runs (its fingerprint covers them)
SPLITS = ("train", "val", "test")
log = logging.getLogger("dataset_builder")


@dataclasses.dataclass
class Config:
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


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    if cfg.update:  # the previous splits say what the model has already learnt
        return [paths.tokens, paths.tokenizer_dir, paths.train_data]
    return [paths.tokens, paths.tokenizer_dir]


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.train_data, paths.val_data, paths.test_data, paths.dataset_stats]


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42) -> dict:
    """Order the history, assemble one example per target commit, split by time, save."""
    require(paths.tokens, "tokenizer")
    check_writable(stage_outputs(cfg, paths))
    trained = commits_trained_before(paths) if cfg.update else None  # read before the splits are replaced
    lang, tokenizer = load_commit_tokenizer(paths.tokenizer_dir)
    encoded = load_encoded(paths, lang, tokenizer)
    order = chronological_order(encoded, cfg.first_parent_only)
    built = build_examples(cfg, encoded, order, TargetTokens.of(tokenizer))
    plan = split_plan(cfg, built, order) if trained is None else update_plan(cfg, built, order, trained, seed)
    if plan is None:  # an update with nothing new: the splits stay as they are, so later stages stay up to date
        log.info("dataset_builder: update: no commit to learn beyond what val and test need: the splits are kept as they are")
        kept = read_json(paths.dataset_stats) if paths.dataset_stats.exists() else {}
        return {**kept, "update": {"nothing_new": True, "trained_before": len(trained)}}
    stats = save_splits(cfg, paths, tokenizer, built, plan, order)
    counts = stats["examples"]
    latest = next((stats["splits"][s]["effective_time"]["first"] for s in ("test", "val", "train") if counts[s]), None)
    if plan.update:
        log.info("dataset_builder: update: %d new training examples + %d replayed of %d trained before; "
                 "val and test are the %d and %d latest commits not trained on",
                 plan.update["new_train"], plan.update["replayed"], plan.update["trained_before"], counts["val"], counts["test"])
    log.info(
        "dataset_builder: %d/%d/%d train/val/test examples from %d commits; %.1f%% targets truncated; "
        "padding waste %.0f%% (%.0f%% packed); latest split from %s",
        counts["train"],
        counts["val"],
        counts["test"],
        stats["commits"]["in_order"],
        100 * stats["truncation"]["target_rate"],
        100 * stats["padding_waste"]["train"]["unpacked"],
        100 * stats["padding_waste"]["train"]["packed"],
        latest,
    )
    return stats


# ------------------------------------------------------------------ inputs


def check_writable(outputs: Iterable[Path]) -> None:
    """UserError now, not after the expensive work, when an output's folder cannot be made or written."""
    for folder in sorted({Path(output).parent for output in outputs}):
        if not os.access(ensure_folder(folder), os.W_OK | os.X_OK):
            raise UserError(f"{folder}: output folder is not writable")


def check_encoded_from(tokens_path: Path, name: str, source: Path) -> None:
    """UserError unless tokens.pt was encoded from `source` (the seed's --commits/--chunks, compared by size)."""
    recorded = EncodedCommits.load(require(tokens_path, "tokenizer")).meta.get("sources", {}).get(name, {})
    if recorded.get("bytes") != source.stat().st_size:
        raise UserError(
            f"{tokens_path} was not encoded from {source} (it was from {recorded.get('path', 'another file')}): "
            f"rerun the tokenizer stage on it (python tokenizer.py --chunks ... --output-tokens {tokens_path})"
        )


def load_encoded(paths: ArtifactPaths, lang: CommitLanguage, tokenizer: Any) -> EncodedCommits:
    """tokens.pt, refused when it was encoded with another tokenizer than the one in tokenizer_dir."""
    encoded = EncodedCommits.load(paths.tokens)
    if not encoded.made_with(lang, tokenizer):
        raise UserError(
            f"{paths.tokens} was encoded with another tokenizer than {paths.tokenizer_dir}: "
            "rerun the tokenizer stage (python pipeline.py --stage tokenizer --force)"
        )
    return encoded


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


# ------------------------------------------------------------------ examples


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


def build_examples(cfg: Config, encoded: EncodedCommits, order: Order, tokens: TargetTokens) -> Built:
    """One example per target commit, in chronological order, from the stored ids."""
    include_merges = cfg.merge_targets == "include" or (cfg.merge_targets == "auto" and cfg.first_parent_only)
    built = Built()
    compact: dict[int, list[int]] = {}  # rank -> ids of its compact rendering, for the next examples' contexts
    for rank, index in enumerate(progress(order.indices, desc="building examples", unit="commits")):
        compact[rank] = encoded.compact(index).tolist()
        compact.pop(rank - cfg.history_commits - 1, None)  # no later example reaches back that far
        if encoded.chunk_count(index) == 0:
            built.skipped_no_chunks += 1
            continue
        if order.is_merge[rank] and not include_merges:
            built.skipped_merges += 1
            continue
        history = [compact[r] for r in range(max(0, rank - cfg.history_commits), rank)]
        example = make_example(cfg, rank, history, encoded.task(index).tolist(), encoded.segments(index), tokens)
        if example is not None:
            built.examples.append(example)
    return built


def make_example(cfg: Config, rank: int, history: list[list[int]], task: list[int], segments: list[np.ndarray],
                 tokens: TargetTokens) -> Example | None:
    """<BOS> + the history that fits + the task, then the target (None: not even one line of it fits)."""
    target, truncated, cut_inside = fit_target(segments, tokens.end + [tokens.eos], tokens.marker, cfg.target_window, tokens.tokenizer)
    if target is None:
        return None
    prompt, dropped = assemble_prompt(history, task, tokens.bos, cfg.context_window - len(target))
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


# ------------------------------------------------------------------ split


@dataclasses.dataclass
class SplitPlan:
    """Which examples (indices into the chronological `built.examples`) go to each split, in order."""

    train: list[int]
    val: list[int]
    test: list[int]
    update: dict | None = None  # update mode: counts, and every commit trained on so far

    def split(self, name: str) -> list[int]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def split_plan(cfg: Config, built: Built, order: Order) -> SplitPlan:
    """The chronological split: the earliest examples train, the later val, the latest test."""
    n = len(built.examples)
    val_start, test_start = split_bounds(cfg, n, [order.effective[e.rank] for e in built.examples],
                                         f"{n} commits with changes to learn from ({len(order.hashes)} commits in order, "
                                         f"{built.skipped_no_chunks} without chunks, {built.skipped_merges} merges skipped)")
    return SplitPlan(list(range(val_start)), list(range(val_start, test_start)), list(range(test_start, n)))


def split_bounds(cfg: Config, n: int, times: list[float], what: str) -> tuple[int, int]:
    """(first val index, first test index) into `n` chronological examples with these effective times."""
    n_test = round(n * cfg.test_ratio)
    n_val = round(n * cfg.val_ratio)
    n_train = n - n_val - n_test
    needed = 1 + (cfg.val_ratio > 0) + (cfg.test_ratio > 0)
    if n_train < 1 or (cfg.val_ratio > 0 and n_val < 1) or (cfg.test_ratio > 0 and n_test < 1):
        raise UserError(
            f"history too short to split: {what} give "
            f"{n_train}/{n_val}/{n_test} train/val/test examples at val_ratio {cfg.val_ratio}, test_ratio {cfg.test_ratio}; "
            f"need every split non-empty (at least {needed} examples, more with small ratios): use a longer history or change the ratios"
        )
    val_start = _untie(n_train, 1, n_train + n_val, times)
    test_start = _untie(n_train + n_val, val_start + (n_val > 0), n, times)
    return val_start, test_start


def commits_trained_before(paths: ArtifactPaths) -> set[str]:
    """Every commit the current model has trained on: the previous train split (and, after an
    update, what the updates before it trained on)."""
    if not paths.train_data.exists():
        raise UserError(f"{paths.train_data}: not found: dataset_builder.update moves the previous split forward, "
                        "so build the full dataset once first (python pipeline.py without --update)")
    previous = ExampleSet.load(paths.train_data)
    return set(previous.meta.get("trained_commits") or previous.commits)


def update_plan(cfg: Config, built: Built, order: Order, trained: set[str], seed: int) -> SplitPlan | None:
    """The split moved forward: val and test are the latest examples the model has never trained on
    (as many as a full split would have); train is the rest of those, plus a replay sample of what
    it trained on before (`replay_share` of the train split), so that it does not forget.
    None when no commit is left to train on once val and test are filled."""
    fresh = [i for i, e in enumerate(built.examples) if order.hashes[e.rank] not in trained]
    seen = [i for i, e in enumerate(built.examples) if order.hashes[e.rank] in trained]
    n_test, n_val = round(len(built.examples) * cfg.test_ratio), round(len(built.examples) * cfg.val_ratio)
    if len(fresh) <= n_val + n_test:
        return None
    new_train = len(fresh) - n_val - n_test
    times = [order.effective[built.examples[i].rank] for i in fresh]
    val_start = _untie(new_train, 1, new_train + n_val, times)
    test_start = _untie(new_train + n_val, val_start + (n_val > 0), len(fresh), times)
    replayed = min(len(seen), round(val_start * cfg.replay_share / (1 - cfg.replay_share)))
    replay = random.Random(seed).sample(seen, replayed)
    train = sorted(fresh[:val_start] + replay)
    update = {
        "trained_before": len(seen),
        "new_train": val_start,
        "replayed": replayed,
        "replay_share": cfg.replay_share,
        "trained_commits": sorted(trained | {order.hashes[built.examples[i].rank] for i in train}),
    }
    return SplitPlan(train, fresh[val_start:test_start], fresh[test_start:], update)


def _untie(boundary: int, lo: int, hi: int, times: list[float]) -> int:
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


# ------------------------------------------------------------------ output


def save_splits(cfg: Config, paths: ArtifactPaths, tokenizer: Any, built: Built, plan: SplitPlan, order: Order) -> dict:
    n = len(built.examples)
    meta_common = {
        "tokenizer_dir": str(paths.tokenizer_dir),
        "pad_token_id": special_id(tokenizer, "pad"),
        "bos_token_id": special_id(tokenizer, "bos"),
        "eos_token_id": special_id(tokenizer, "eos"),
        "context_window": cfg.context_window,
        "target_window": cfg.target_window,
        "history_commits": cfg.history_commits,
        "first_parent_only": cfg.first_parent_only,
        "vocab_size": len(tokenizer),
    }
    split_stats = {}
    padding = {}
    previous_authored_max = None
    for split in SPLITS:
        examples = [built.examples[i] for i in plan.split(split)]
        meta = {**meta_common, "split": split}
        if plan.update and split == "train":
            meta["trained_commits"] = plan.update["trained_commits"]  # what the next update must not evaluate on
        save_split(paths.split_data(split), examples, order, meta)
        lengths = np.asarray([len(e.ids) for e in examples], dtype=np.int64)
        split_stats[split] = _split_stats(examples, order, lengths, previous_authored_max)
        if examples:
            authored_max = max(seconds(order.authored[e.rank]) for e in examples)
            previous_authored_max = max(previous_authored_max or authored_max, authored_max)
        padding[split] = padding_estimate(lengths, cfg.batch_size, cfg.context_window)

    truncated = sum(e.truncated for e in built.examples)
    stats = {
        "examples": {s: len(plan.split(s)) for s in SPLITS},
        "commits": {
            "in_file": order.total_in_file,
            "in_order": len(order.hashes),
            "targets": n,
            "skipped_no_chunks": built.skipped_no_chunks,
            "skipped_merges": built.skipped_merges,
            "effective_time_raised": order.effective_raised,
        },
        "order": "parents first by effective time (commit time raised to the parents'), ties by commits.json position",
        "splits": split_stats,
        "lengths": {
            "total": length_percentiles([len(e.ids) for e in built.examples]),
            "context": length_percentiles([e.prompt_length for e in built.examples]),
            "target": length_percentiles([e.target_length for e in built.examples]),
        },
        "truncation": {
            "targets_truncated": int(truncated),
            "target_rate": round(truncated / n, 4) if n else 0.0,
            "cut_inside_first_chunk": sum(e.cut_inside_chunk for e in built.examples),
            "contexts_short_of_history": sum(e.history_dropped > 0 for e in built.examples),
            "history_commits_dropped": sum(e.history_dropped for e in built.examples),
        },
        "padding_waste": padding,
        "config": {**meta_common, "val_ratio": cfg.val_ratio, "test_ratio": cfg.test_ratio, "batch_size": cfg.batch_size},
    }
    if plan.update:
        stats["update"] = {k: v for k, v in plan.update.items() if k != "trained_commits"}
    write_json(paths.dataset_stats, stats)
    return stats


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


def _split_stats(examples: list[Example], order: Order, lengths: np.ndarray, previous_authored_max: float | None) -> dict:
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


# ------------------------------------------------------------------ CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--vocab", type=Path, help="vocab.json of the tokenizer stage; its tokenizer folder is used (default: <output_dir>/tokenizer)")
    parser.add_argument("--tokenizer-dir", type=Path, help="tokenizer folder (default: from --vocab, else <output_dir>/tokenizer)")
    parser.add_argument("--tokens", type=Path, help="tokens.pt of the tokenizer stage (default: beside --vocab, else <output_dir>/tokens.pt)")
    parser.add_argument("--chunks", type=Path, help="the seed's flag: chunks.jsonl that tokens.pt was encoded from (checked, not read)")
    parser.add_argument("--commits", type=Path, help="the seed's flag: commits.json that tokens.pt was encoded from (checked, not read)")
    parser.add_argument("--context-window", type=int, help="override dataset_builder.context_window")
    parser.add_argument("--target-window", type=int, help="override dataset_builder.target_window")
    parser.add_argument("--history-commits", type=int, help="override dataset_builder.history_commits")
    parser.add_argument("--first-parent-only", action=argparse.BooleanOptionalAction, default=None, help="override dataset_builder.first_parent_only")
    args = parser.parse_args(argv)
    cfg, pipeline, paths = load_stage(args, SECTION, Config)

    overrides = {
        key: value
        for key, value in (
            ("context_window", args.context_window),
            ("target_window", args.target_window),
            ("history_commits", args.history_commits),
            ("first_parent_only", args.first_parent_only),
        )
        if value is not None
    }
    cfg = apply_overrides(cfg, SECTION, overrides)
    changes: dict[str, Path] = {}
    if args.vocab:
        vocab = require(args.vocab.resolve(), "tokenizer")
        changes.update(tokenizer_dir=tokenizer_dir_for_vocab(vocab), tokens=vocab.parent / "tokens.pt")
    if args.tokenizer_dir:
        changes["tokenizer_dir"] = args.tokenizer_dir.resolve()
    if args.tokens:
        changes["tokens"] = args.tokens.resolve()
    paths = dataclasses.replace(paths, **changes)
    for flag, given in (("commits", args.commits), ("chunks", args.chunks)):
        if given:
            check_encoded_from(paths.tokens, flag, require(given.resolve()))
    stats = run(cfg, paths, seed=pipeline.seed)
    print(json.dumps({"examples": stats.get("examples"), "target_truncation_rate": stats.get("truncation", {}).get("target_rate")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
