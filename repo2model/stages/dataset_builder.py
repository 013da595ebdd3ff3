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
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from repo2model.core.artifacts import ensure_folder, read_json, require, write_json
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths, tokenizer_dir_for_vocab
from repo2model.core.stats import length_percentiles
from repo2model.language.commit_language import CommitLanguage
from repo2model.language.dataset_config import DatasetConfig, segment_budget
from repo2model.language.encoded_commits import EncodedCommits
from repo2model.language.encoding import special_id
from repo2model.language.examples import Built, ExampleSet, TargetTokens, build_examples, save_split
from repo2model.language.splits import (
    SPLITS,
    Order,
    SplitPlan,
    chronological_order,
    padding_estimate,
    seconds,
    split_plan,
    split_stats,
    update_plan,
)
from repo2model.language.tokenizer_folder import load_commit_tokenizer

SECTION = "dataset_builder"
CODE = ("core", "language")  # the packages it runs (its fingerprint covers them)
log = logging.getLogger("dataset_builder")


Config = DatasetConfig


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
    check_segment_budget(cfg, encoded, paths.tokens)
    order = chronological_order(encoded, cfg.first_parent_only)
    built = examples_in_order(cfg, encoded, order, tokenizer)
    plan = plan_splits(cfg, built, order, trained, seed)
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


def check_segment_budget(cfg: Config, encoded: EncodedCommits, tokens_path: Path) -> None:
    """UserError when tokens.pt holds fewer ids of a long commit's segments than a target may take."""
    budget = encoded.segment_budget
    if budget is not None and segment_budget(cfg) > budget:
        raise UserError(f"{tokens_path} holds up to {budget - 1} target tokens per commit, dataset_builder.target_window "
                        f"is {cfg.target_window}: rerun the tokenizer stage with this config (python pipeline.py)")


def examples_in_order(cfg: Config, encoded: EncodedCommits, order: Order, tokenizer: Any) -> Built:
    """One example per target commit, in chronological order (merges are targets per `merge_targets`)."""
    include_merges = cfg.merge_targets == "include" or (cfg.merge_targets == "auto" and cfg.first_parent_only)
    return build_examples(encoded, order, TargetTokens.of(tokenizer), history_commits=cfg.history_commits,
                          target_window=cfg.target_window, context_window=cfg.context_window,
                          include_merges=include_merges)


def plan_splits(cfg: Config, built: Built, order: Order, trained: set[str] | None, seed: int) -> SplitPlan | None:
    """A fresh chronological split, or (update) the previous one moved forward: None when nothing is new."""
    if trained is None:
        return split_plan(built, order, cfg.val_ratio, cfg.test_ratio)
    return update_plan(built, order, trained, seed, cfg.val_ratio, cfg.test_ratio, cfg.replay_share)


def commits_trained_before(paths: ArtifactPaths) -> set[str]:
    """Every commit the current model has trained on: the previous train split (and, after an
    update, what the updates before it trained on)."""
    if not paths.train_data.exists():
        raise UserError(f"{paths.train_data}: not found: dataset_builder.update moves the previous split forward, "
                        "so build the full dataset once first (python pipeline.py without --update)")
    previous = ExampleSet.load(paths.train_data)
    return set(previous.meta.get("trained_commits") or previous.commits)


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
    by_split = {}
    padding = {}
    previous_authored_max = None
    for split in SPLITS:
        examples = [built.examples[i] for i in plan.split(split)]
        meta = {**meta_common, "split": split}
        if plan.update and split == "train":
            meta["trained_commits"] = plan.update["trained_commits"]  # what the next update must not evaluate on
        save_split(paths.split_data(split), examples, order, meta)
        lengths = np.asarray([len(e.ids) for e in examples], dtype=np.int64)
        by_split[split] = split_stats(examples, order, lengths, previous_authored_max)
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
        "splits": by_split,
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
