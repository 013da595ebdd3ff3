"""Stage 4: chronological training examples — given the recent history and a task, produce the change.

Reads `commits.json`, `chunks.jsonl` and the tokenizer folder (with its
`commit_language.json`); writes `training_data_{train,val,test}.pt`
(`repo2model.examples.ExampleSet`) and `dataset_stats.json`.

One example per target commit (a commit with at least one chunk):

    context = <BOS> + compact renderings of the previous `history_commits` commits
              (oldest first; when the room is short the most recent are kept) +
              <TASK> the target commit's message
    target  = the full rendering of the commit's changes (files, change types,
              symbols, code) + <COMMIT_END> + <EOS>

The context is built by `CommitLanguage`'s own prompt functions (the code path
prediction uses through `build_prompt`). `labels` are -100 over the context:
the loss falls on the target only. A target longer than `target_window` is cut
at a chunk boundary and marked `<TRUNCATED>` (when even the first chunk is too
long, it is cut at a line boundary inside it); the context gets the remaining
`context_window - len(target)` tokens.

Chronology. Commits are ordered parents first by their *effective time*: the
commit time, raised to the latest effective time of its parents (a commit
cannot land before what it builds on, whatever its clock said), ties by
position in `commits.json`. This order is topological and its times never
decrease, so cutting it by position gives splits where every val commit is
later than (or, for ties that cannot be separated, as late as) every train
commit, and every test commit later than every val commit, by effective time
and by ancestry. Raw author/commit dates, which rebases and wrong clocks skew,
are reported beside it, with the count of commits whose raw dates run
backwards across a split boundary. Ratios count the target commits.

Config section `dataset_builder`:
    context_window      tokens per example, context + target (the model's sequence length)
    target_window       most tokens of one target (the rest of the window is context)
    history_commits     N: previous commits rendered in the context
    val_ratio           share of target commits in the validation split (the later ones)
    test_ratio          share in the test split (the latest)
    first_parent_only   only commits on the default branch's first-parent line
    merge_targets       "auto" (merges are targets only with first_parent_only, where
                        their diff carries the branch's work), "include", "exclude"
    batch_size          batch size for the padding-waste figures (match model_training)
    encode_batch        commits rendered and encoded per encode_batch call

CLI (the seed's flags work): python dataset_builder.py --vocab outputs/vocab.json
    --chunks outputs/chunks.jsonl --commits outputs/commits.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from repo2model.artifacts import iter_commit_dicts, require, write_json
from repo2model.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.commit_language import (
    COMMIT_END,
    TRUNCATED,
    CommitLanguage,
    assemble_prompt,
    decode_ids,
    encode_texts,
    iter_history,
    special_id,
)
from repo2model.errors import UserError, first_line
from repo2model.examples import ExampleSet
from repo2model.paths import ArtifactPaths, tokenizer_dir_for_vocab

SECTION = "dataset_builder"
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
    encode_batch: int = 256

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
        if self.batch_size < 1 or self.encode_batch < 1:
            raise ValueError("batch_size: batch_size and encode_batch must be >= 1")


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.commits, paths.chunks, paths.tokenizer_dir]


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.train_data, paths.val_data, paths.test_data, paths.dataset_stats]


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42) -> dict:
    """Order the history, build one example per target commit, split by time, save."""
    require(paths.commits, "git_scraper")
    require(paths.chunks, "semantic_chunker")
    lang, tokenizer = load_tokenizer(paths.tokenizer_dir)
    order = chronological_order(paths.commits, cfg.first_parent_only)
    built = build_examples(cfg, lang, tokenizer, paths, order)
    bounds = split_bounds(cfg, built, order)
    stats = save_splits(cfg, paths, tokenizer, built, bounds, order)
    counts = stats["examples"]
    latest = next((stats["splits"][s]["effective_time"]["first"] for s in ("test", "val", "train") if counts[s]), None)
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


def load_tokenizer(tokenizer_dir: Path) -> tuple[CommitLanguage, Any]:
    """The commit language and tokenizer saved by the tokenizer stage; they must agree."""
    from transformers import AutoTokenizer

    require(tokenizer_dir, "tokenizer")
    lang = CommitLanguage.load(tokenizer_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        raise UserError(f"{tokenizer_dir}: cannot load the tokenizer ({first_line(exc)}): rerun the tokenizer stage") from None
    lang.check_tokenizer(tokenizer, f"the tokenizer in {tokenizer_dir}")
    return lang, tokenizer


@dataclasses.dataclass
class Order:
    """The commits in chronological order (see the module docstring)."""

    hashes: list[str]
    effective: list[float]  # effective time, seconds since the epoch (UTC), non-decreasing
    authored: list[str]  # raw authored_at
    committed: list[str]  # raw committed_at
    is_merge: list[bool]
    total_in_file: int
    effective_raised: int  # commits whose effective time was raised above their own commit time

    def __post_init__(self) -> None:
        self.rank = {h: i for i, h in enumerate(self.hashes)}


def _seconds(value: str, commit: str, path: Path) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise UserError(f"{path}: commit {commit[:12]} has a bad date {value!r}: rerun the git_scraper stage") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def chronological_order(commits_path: Path, first_parent_only: bool) -> "Order":
    """Parents first by effective time (commit time raised to the parents'), ties by file position."""
    rows = []  # (effective, position, hash, authored, committed, is_merge)
    effective: dict[str, float] = {}
    total = 0
    raised = 0
    any_first_parent = False
    for position, data in enumerate(iter_commit_dicts(commits_path)):
        total += 1
        on_line = bool(data.get("on_default_first_parent"))
        any_first_parent |= on_line
        if first_parent_only and not on_line:
            continue
        sha = data["hash"]
        if sha in effective:
            raise UserError(f"{commits_path}: commit {sha[:12]} appears twice: rerun the git_scraper stage")
        own = _seconds(data["committed_at"], sha, commits_path)
        moment = max([own, *(effective[p] for p in data.get("parents", []) if p in effective)])
        raised += moment > own
        effective[sha] = moment
        rows.append((moment, position, sha, data["authored_at"], data["committed_at"], bool(data.get("is_merge"))))
    if first_parent_only and total and not any_first_parent:
        raise UserError(
            f"{commits_path}: no commit is marked on_default_first_parent, so first_parent_only keeps nothing: "
            "rerun the git_scraper stage (or set dataset_builder.first_parent_only: false)"
        )
    rows.sort(key=lambda r: (r[0], r[1]))
    return Order(
        hashes=[r[2] for r in rows],
        effective=[r[0] for r in rows],
        authored=[r[3] for r in rows],
        committed=[r[4] for r in rows],
        is_merge=[r[5] for r in rows],
        total_in_file=total,
        effective_raised=raised,
    )


# ------------------------------------------------------------------ examples


@dataclasses.dataclass
class Built:
    """Examples in chronological order (not yet split)."""

    ids: list[np.ndarray] = dataclasses.field(default_factory=list)
    target_starts: list[int] = dataclasses.field(default_factory=list)
    ranks: list[int] = dataclasses.field(default_factory=list)  # rank of each target in the order
    prompt_lengths: list[int] = dataclasses.field(default_factory=list)
    target_lengths: list[int] = dataclasses.field(default_factory=list)
    truncated: list[bool] = dataclasses.field(default_factory=list)
    history_dropped: list[int] = dataclasses.field(default_factory=list)
    cut_inside_chunk: int = 0
    skipped_no_chunks: int = 0
    skipped_merges: int = 0


def build_examples(cfg: Config, lang: CommitLanguage, tokenizer: Any, paths: ArtifactPaths, order: Order) -> Built:
    """Stream the history in file order; emit examples in chronological order (a reorder buffer
    holds the commits read ahead of their turn: none when the file is already in that order)."""
    from tqdm import tqdm

    include_merges = cfg.merge_targets == "include" or (cfg.merge_targets == "auto" and cfg.first_parent_only)
    bos = special_id(tokenizer, "bos")
    eos = special_id(tokenizer, "eos")
    end_ids = encode_texts(tokenizer, [COMMIT_END + "\n"])[0]
    marker_ids = encode_texts(tokenizer, [TRUNCATED + "\n"])[0]
    built = Built()
    # Text longer than window * (most bytes one token spells) cannot fit in `window` tokens: such
    # text is not encoded at all (a huge initial or vendoring commit would cost minutes and GBs).
    longest = max_token_bytes(tokenizer)
    context_chars, target_chars = cfg.context_window * longest, cfg.target_window * longest
    compact: dict[int, list[int] | None] = {}  # rank -> ids of its compact rendering (None: too long to fit)
    targets: dict[int, tuple | None] = {}  # rank -> (segment ids, task ids, all segments kept, first one partial)
    next_rank = 0
    history = iter_history(paths.commits, paths.chunks)
    progress = tqdm(total=len(order.hashes), desc="building examples", unit=" commits", disable=None, leave=False)
    while block := list(itertools.islice(history, cfg.encode_batch)):
        texts: list[str] = []
        plan = []  # (rank, compact encoded?, target plan or None)
        for commit, chunks in block:
            rank = order.rank.get(commit.hash)
            if rank is None:
                continue  # not on the first-parent line
            text = lang.render_commit(commit, chunks, "compact")
            fits = len(text) <= context_chars
            if fits:
                texts.append(text)
            if not chunks:
                built.skipped_no_chunks += 1
                plan.append((rank, fits, None))
            elif commit.is_merge and not include_merges:
                built.skipped_merges += 1
                plan.append((rank, fits, None))
            else:
                segments, complete, partial = within_chars(lang.render_segments(chunks, "full"), target_chars)
                texts.extend(segments)
                texts.append(lang.render_task(commit.message))
                plan.append((rank, fits, (len(segments), complete, partial)))
        encoded = iter(encode_texts(tokenizer, texts))
        for rank, fits, target_plan in plan:
            compact[rank] = next(encoded) if fits else None
            if target_plan is None:
                targets[rank] = None
            else:
                n_segments, complete, partial = target_plan
                segments = [next(encoded) for _ in range(n_segments)]
                targets[rank] = (segments, next(encoded), complete, partial)
        while next_rank in targets:
            target = targets.pop(next_rank)
            if target is not None:
                history_ids = [compact[r] for r in range(max(0, next_rank - cfg.history_commits), next_rank)]
                add_example(built, cfg, tokenizer, next_rank, history_ids, target, bos, eos, end_ids, marker_ids)
            compact.pop(next_rank - cfg.history_commits, None)  # no later example reaches back that far
            next_rank += 1
            progress.update(1)
    progress.close()
    if next_rank != len(order.hashes):
        missing = order.hashes[next_rank]
        raise UserError(f"{paths.commits}: commit {missing[:12]} could not be placed in order (a parent listed after it?): rerun the git_scraper stage")
    return built


def within_chars(segments: list[str], limit: int) -> tuple[list[str], bool, bool]:
    """(the segments worth encoding, all of them?, first one cut short?): those within `limit` characters."""
    kept, used = [], 0
    for segment in segments:
        if used + len(segment) > limit:
            break
        kept.append(segment)
        used += len(segment)
    if kept:
        return kept, len(kept) == len(segments), False
    head = segments[0][:limit]
    return [head[: head.rfind("\n") + 1] or head], False, True


def max_token_bytes(tokenizer: Any) -> int:
    """The most UTF-8 bytes any single token decodes to (at least 1)."""
    from repo2model.commit_language import backend

    raw = backend(tokenizer)
    texts = raw.decode_batch([[i] for i in range(raw.get_vocab_size(with_added_tokens=True))], skip_special_tokens=False)
    # +1: a decoder may strip a token's leading space when it stands alone (SentencePiece)
    return max([1, *(len(t.encode("utf-8")) for t in texts)]) + 1


def add_example(built: Built, cfg: Config, tokenizer: Any, rank: int, history_ids, target, bos, eos, end_ids, marker_ids) -> None:
    segments, task_ids, complete, partial = target
    target_ids, truncated, cut_inside = fit_target(
        segments, end_ids + [eos], marker_ids, cfg.target_window, tokenizer, complete=complete, first_partial=partial
    )
    if target_ids is None:
        return
    prompt, dropped = assemble_prompt(history_ids, task_ids, bos, cfg.context_window - len(target_ids))
    built.ids.append(np.asarray(prompt + target_ids, dtype=np.int32))
    built.target_starts.append(len(prompt))
    built.ranks.append(rank)
    built.prompt_lengths.append(len(prompt))
    built.target_lengths.append(len(target_ids))
    built.truncated.append(truncated)
    built.history_dropped.append(dropped)
    built.cut_inside_chunk += cut_inside


def fit_target(segments: list[list[int]], tail: list[int], marker: list[int], window: int, tokenizer: Any,
               complete: bool = True, first_partial: bool = False):
    """(ids, truncated, cut inside a chunk): whole chunks while they fit, then <TRUNCATED>, then the tail.

    `complete` False: segments after these were left unencoded (they could not fit);
    `first_partial`: the only segment is the head of a longer one (usable only cut at a line).
    """
    total = sum(len(s) for s in segments)
    if complete and total + len(tail) <= window:
        return [i for s in segments for i in s] + tail, False, False
    room = window - len(tail) - len(marker)
    kept: list[int] = []
    for segment in [] if first_partial else segments:
        if len(kept) + len(segment) > room:
            break
        kept.extend(segment)
    cut_inside = False
    if not kept:
        kept = cut_at_line(segments[0], room, tokenizer)
        cut_inside = True
        if not kept:
            return None, True, True
    return kept + marker + tail, True, cut_inside


def cut_at_line(ids: list[int], room: int, tokenizer: Any) -> list[int]:
    """The longest run of whole lines at the start of `ids` that re-encodes within `room` tokens."""
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


def split_bounds(cfg: Config, built: Built, order: Order) -> tuple[int, int]:
    """(first val index, first test index) into the chronological examples."""
    n = len(built.ids)
    n_test = round(n * cfg.test_ratio)
    n_val = round(n * cfg.val_ratio)
    n_train = n - n_val - n_test
    needed = 1 + (cfg.val_ratio > 0) + (cfg.test_ratio > 0)
    if n_train < 1 or (cfg.val_ratio > 0 and n_val < 1) or (cfg.test_ratio > 0 and n_test < 1):
        raise UserError(
            f"history too short to split: {n} commits with changes to learn from ({len(order.hashes)} commits in order, "
            f"{built.skipped_no_chunks} without chunks, {built.skipped_merges} merges skipped) give "
            f"{n_train}/{n_val}/{n_test} train/val/test examples at val_ratio {cfg.val_ratio}, test_ratio {cfg.test_ratio}; "
            f"need every split non-empty (at least {needed} examples, more with small ratios): use a longer history or change the ratios"
        )
    times = [order.effective[r] for r in built.ranks]
    val_start = _untie(n_train, 1, n_train + n_val, times)
    test_start = _untie(n_train + n_val, val_start + (n_val > 0), n, times)
    return val_start, test_start


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


def save_splits(cfg: Config, paths: ArtifactPaths, tokenizer: Any, built: Built, bounds: tuple[int, int], order: Order) -> dict:
    import torch

    ranges = {"train": (0, bounds[0]), "val": (bounds[0], bounds[1]), "test": (bounds[1], len(built.ids))}
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
    for split, (lo, hi) in ranges.items():
        ids = built.ids[lo:hi]
        lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ranks = built.ranks[lo:hi]
        examples = ExampleSet(
            input_ids=torch.from_numpy(np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)),
            offsets=torch.from_numpy(offsets),
            target_starts=torch.tensor(built.target_starts[lo:hi], dtype=torch.int64),
            commits=[order.hashes[r] for r in ranks],
            timestamps=[order.authored[r] for r in ranks],
            meta={**meta_common, "split": split},
        )
        examples.save(paths.split_data(split))
        split_stats[split] = _split_stats(built, lo, hi, order, lengths, previous_authored_max)
        if ranks:
            authored_max = max(_seconds(order.authored[r], order.hashes[r], paths.commits) for r in ranks)
            previous_authored_max = max(previous_authored_max or authored_max, authored_max)
        padding[split] = padding_waste(lengths, cfg.batch_size, cfg.context_window)

    n = len(built.ids)
    stats = {
        "examples": {s: ranges[s][1] - ranges[s][0] for s in SPLITS},
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
            "total": _percentiles([len(x) for x in built.ids]),
            "context": _percentiles(built.prompt_lengths),
            "target": _percentiles(built.target_lengths),
        },
        "truncation": {
            "targets_truncated": int(sum(built.truncated)),
            "target_rate": round(sum(built.truncated) / n, 4) if n else 0.0,
            "cut_inside_first_chunk": built.cut_inside_chunk,
            "contexts_short_of_history": int(sum(d > 0 for d in built.history_dropped)),
            "history_commits_dropped": int(sum(built.history_dropped)),
        },
        "padding_waste": padding,
        "config": {**meta_common, "val_ratio": cfg.val_ratio, "test_ratio": cfg.test_ratio, "batch_size": cfg.batch_size},
    }
    write_json(paths.dataset_stats, stats)
    return stats


def _split_stats(built: Built, lo: int, hi: int, order: Order, lengths: np.ndarray, previous_authored_max: float | None) -> dict:
    ranks = built.ranks[lo:hi]
    if not ranks:
        return {"examples": 0}

    def iso(seconds: float) -> str:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()

    authored = [(_seconds(order.authored[r], order.hashes[r], Path("commits.json")), order.authored[r]) for r in ranks]
    committed = [(_seconds(order.committed[r], order.hashes[r], Path("commits.json")), order.committed[r]) for r in ranks]
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
        "truncated": int(sum(built.truncated[lo:hi])),
    }


def padding_waste(lengths: np.ndarray, batch_size: int, context_window: int) -> dict:
    """Share of pad tokens: batches of consecutive examples padded to their longest, and
    examples packed (in order, whole) into rows of `context_window`."""
    if lengths.size == 0:
        return {"unpacked": 0.0, "packed": 0.0, "packed_rows": 0}
    padded = 0
    for start in range(0, lengths.size, batch_size):
        batch = lengths[start : start + batch_size]
        padded += int(batch.max()) * batch.size
    rows, used = 0, context_window
    for length in lengths.tolist():
        if used + length > context_window:
            rows += 1
            used = 0
        used += length
    tokens = int(lengths.sum())
    return {
        "unpacked": round(1 - tokens / padded, 4),
        "packed": round(1 - tokens / (rows * context_window), 4),
        "packed_rows": rows,
    }


def _percentiles(values) -> dict:
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return {"mean": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": round(float(values.mean()), 2), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": int(values.max())}


# ------------------------------------------------------------------ CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--vocab", type=Path, help="vocab.json of the tokenizer stage; its tokenizer folder is used (default: <output_dir>/tokenizer)")
    parser.add_argument("--tokenizer-dir", type=Path, help="tokenizer folder (default: from --vocab, else <output_dir>/tokenizer)")
    parser.add_argument("--chunks", type=Path, help="chunks.jsonl (default: <output_dir>/chunks.jsonl)")
    parser.add_argument("--commits", type=Path, help="commits.json (default: <output_dir>/commits.json)")
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
        require(args.vocab.resolve(), "tokenizer")
        changes["tokenizer_dir"] = tokenizer_dir_for_vocab(args.vocab.resolve())
    if args.tokenizer_dir:
        changes["tokenizer_dir"] = args.tokenizer_dir.resolve()
    if args.chunks:
        changes["chunks"] = args.chunks.resolve()
    if args.commits:
        changes["commits"] = args.commits.resolve()
    paths = dataclasses.replace(paths, **changes)
    stats = run(cfg, paths, seed=pipeline.seed)
    print(json.dumps({"examples": stats["examples"], "target_truncation_rate": stats["truncation"]["target_rate"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
