"""Stage 3: the tokenizer of the commit language, and every commit's token ids.

Reads `commits.json` (git_scraper) and `chunks.jsonl` (semantic_chunker), renders
each commit in the commit language (`repo2model/language/commit_language.py`) and writes:

    <output_dir>/tokenizer/          Hugging Face tokenizer folder (tokenizer.json,
                                     tokenizer_config.json) that
                                     `AutoTokenizer.from_pretrained(folder)` loads
                                     offline, plus vocab.json and commit_language.json
                                     (the author/module token families, the mode and,
                                     in extend mode, how many tokens were added)
    <output_dir>/vocab.json          a copy of the vocabulary {token: id}
    <output_dir>/tokens.pt           the encoded history (`repo2model/language/encoded_commits.py`):
                                     per commit, the ids of its compact rendering, its
                                     task, and its full rendering (header, one segment
                                     per chunk, <COMMIT_END>), flat with offsets, plus
                                     what the dataset builder needs to order commits
    <output_dir>/tokenizer_stats.json

Every commit is rendered and encoded here, once: the dataset builder assembles
its examples from tokens.pt without encoding again. A commit's change segments are
encoded only as far as an example can use them: `target_window + 1` ids of the
dataset_builder section (the rest of a long commit is never trained on; tokens.pt
marks such a commit `segments_cut`, and the builder refuses a larger target_window).

Steps: check the outputs can be written; count authors and modules (and check
every record's shape); train BPE on the full renderings, `bpe_sample_chars` of
them at most (or extend a base tokenizer); save and reload the folder; encode
every commit's pieces in batches, the segments up to the budget; check
decode(ids) == the text encoded for the first `roundtrip_sample` commits.
The first pass keeps the records it read in a temporary spool, so the history's
JSON is parsed once. The steps' library lives in `repo2model/language/`
(tokenizer_training.py, history_encoding.py, history_reader.py, tokenizer_folder.py).

Frozen (`frozen: true`, for updates): the tokenizer folder is kept as it is, so
token ids stay what the model learnt; nothing is trained. An author or module
without a token is spelled out, never given a new one; the summary counts them
(`spelled_out`). A commit whose rendering is unchanged since the tokens.pt being
replaced (same tokenizer) has its ids copied; only the others are encoded.

Config section `tokenizer`:
    mode            "train": byte-level BPE trained on the rendered history (for a model
                    trained from scratch); "extend": a base model's tokenizer plus the
                    special tokens (for fine-tuning; training must resize embeddings)
    vocab_size      train: the BPE vocabulary size asked for (the reached size can be
                    smaller on a small history: reported); extend: ignored
    min_frequency   train: a merge needs at least this many occurrences
    base_tokenizer  extend: a local tokenizer/model folder or a hub id
    top_authors     K: the most frequent authors that get an <AUTHOR:name> token
    top_modules     K: the most frequent crates/top-level modules with a <MODULE:x> token
    compact_max_files    history (compact) renderings list at most this many files (0 = all)
    compact_max_changes  ... and at most this many change lines (0 = all); saved in
                    commit_language.json so prediction renders history the same way
    bpe_sample_chars  train: BPE learns from at most this many characters of full renderings
                    (beyond, each commit's rendering is cut to the same length: the longest are cut)
    batch_size      texts per encode_batch call (bounds memory)
    roundtrip_sample commits checked for decode(encode(render)) == render
    frozen          keep the existing tokenizer folder (ids stable) and only encode the
                    commits; mode, vocab_size, top_* and compact_* then come from the folder

CLI (the seed's flags work): python tokenizer.py --chunks outputs/chunks.jsonl
    --vocab-size 50257 --output-vocab outputs/vocab.json --output-tokens outputs/tokens.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from repo2model.core.artifacts import ensure_folder, read_commits_metadata, require, write_json
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.config import load_config
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths, tokenizer_dir_for_vocab
from repo2model.core.progress import progress
from repo2model.core.records import Chunk, Commit
from repo2model.language.commit_language import CommitLanguage
from repo2model.language.dataset_config import DatasetConfig, segment_budget
from repo2model.language.encoded_commits import EncodedCommits
from repo2model.language.history_encoding import EncodingNotes, check_roundtrip, encode_history, encoding_stats
from repo2model.language.history_reader import HistorySpool, count_families, iter_commit_records
from repo2model.language.tokenizer_folder import load_commit_tokenizer, save_commit_tokenizer, tokenizer_digest
from repo2model.language.tokenizer_training import BYTE_ALPHABET, FIXED_SPECIALS, bpe_sample, extend_tokenizer, train_tokenizer

SECTION = "tokenizer"
CODE = ("core", "language")  # the packages it runs (its fingerprint covers them)
USES_SECTIONS = {"dataset": "dataset_builder"}  # its target_window bounds what is encoded
log = logging.getLogger("tokenizer")


@dataclasses.dataclass
class Config:
    mode: Literal["train", "extend"] = "train"
    vocab_size: int = 8000
    min_frequency: int = 2
    base_tokenizer: str | None = None
    top_authors: int = 32
    top_modules: int = 64
    compact_max_files: int = 32
    compact_max_changes: int = 16
    bpe_sample_chars: int = 32_000_000
    batch_size: int = 1024
    roundtrip_sample: int = 200
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.top_authors < 0 or self.top_modules < 0:
            raise ValueError("top_authors/top_modules: must be >= 0")
        smallest = BYTE_ALPHABET + FIXED_SPECIALS + self.top_authors + self.top_modules
        if self.mode == "train" and self.vocab_size < smallest:
            raise ValueError(
                f"vocab_size: must be at least {smallest} (256 bytes + {smallest - BYTE_ALPHABET} special tokens), got {self.vocab_size}"
            )
        if self.compact_max_files < 0 or self.compact_max_changes < 0:
            raise ValueError("compact_max_files/compact_max_changes: must be >= 0 (0 = no limit)")
        if self.min_frequency < 1:
            raise ValueError("min_frequency: must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if self.bpe_sample_chars < 1000:
            raise ValueError("bpe_sample_chars: must be >= 1000")
        if self.roundtrip_sample < 0:
            raise ValueError("roundtrip_sample: must be >= 0")
        if self.mode == "extend" and not self.base_tokenizer:
            raise ValueError("base_tokenizer: required in extend mode (a local folder or hub id)")


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    inputs = [paths.commits, paths.chunks]
    if cfg.frozen:
        inputs.append(paths.tokenizer_dir)
    elif cfg.mode == "extend" and cfg.base_tokenizer and Path(cfg.base_tokenizer).expanduser().exists():
        inputs.append(Path(cfg.base_tokenizer).expanduser())
    return inputs


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    if cfg.frozen:  # the tokenizer folder is kept as it is
        return [paths.tokens, paths.tokenizer_stats]
    return [paths.tokenizer_dir, paths.vocab, paths.tokens, paths.tokenizer_stats]


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42, dataset: DatasetConfig | None = None) -> dict:
    """Choose the token families, build the tokenizer (or keep it: frozen), encode every commit (its segments up
    to what `dataset`'s examples can use), save stats."""
    budget = segment_budget(dataset or DatasetConfig())
    require(paths.commits, "git_scraper")
    require(paths.chunks, "semantic_chunker")
    check_writable(stage_outputs(cfg, paths))  # before minutes of BPE training
    total_commits = read_commits_metadata(paths.commits).get("total_commits")
    if cfg.frozen:
        lang, tokenizer = frozen_tokenizer(paths)
        previous = previous_encoding(paths, lang, tokenizer, budget)
        history = _progress(iter_commit_records(paths.commits, paths.chunks), total_commits, "encoding commits")
        encoded, notes = encode_commits(cfg, lang, tokenizer, paths, history, budget, previous)
    else:
        with HistorySpool(paths.tokens.parent) as spool:
            lang = choose_language(cfg, paths, spool, total_commits)
            if cfg.mode == "train":
                sample, count = bpe_sample(full_renderings(lang, spool), cfg.bpe_sample_chars, paths.tokens.parent)
                tokenizer = train_tokenizer(lang, sample, count, cfg.vocab_size, cfg.min_frequency)
            else:
                tokenizer = extend_tokenizer(lang, cfg.base_tokenizer)
            lang.check_tokenizer(tokenizer, "the new tokenizer")
            save_commit_tokenizer(tokenizer, lang, paths.tokenizer_dir, paths.vocab)
            lang, tokenizer = load_commit_tokenizer(paths.tokenizer_dir)  # encode with what later stages will load
            encoded, notes = encode_commits(cfg, lang, tokenizer, paths, _progress(spool, spool.count, "encoding commits"), budget)
    encoded.save(paths.tokens)
    roundtrip = check_roundtrip(lang, tokenizer, encoded, notes)
    stats = {
        **encoding_stats(encoded, lang, tokenizer, notes),
        "mode": lang.tokenizer_info.get("mode", cfg.mode),
        "frozen": cfg.frozen,
        "vocab_size_requested": lang.tokenizer_info.get("vocab_size_requested"),
        "vocab_size": len(tokenizer),
        "special_tokens": len(lang.special_tokens()),
        "added_tokens": lang.tokenizer_info.get("added_tokens"),
        "authors_with_tokens": len(lang.authors),
        "modules_with_tokens": len(lang.modules),
        "roundtrip": roundtrip,
        "tokenizer_dir": str(paths.tokenizer_dir),
    }
    write_json(paths.tokenizer_stats, stats)
    log.info(
        "tokenizer: %s vocab %d (%s), %d commits (%d encoded, %d unchanged reused; %d cut at %d segment ids), %d chunks -> %d tokens, "
        "%.2f bytes/token, %.1f%% special; %d authors and %d modules without a token spelled out; round trip %d/%d exact",
        stats["mode"],
        len(tokenizer),
        "frozen" if cfg.frozen else f"asked {cfg.vocab_size}" if cfg.mode == "train" else f"+{stats['added_tokens']} added",
        stats["commits"],
        stats["encoded_commits"],
        stats["reused_commits"],
        stats["cut_commits"],
        budget,
        stats["chunks"],
        stats["tokens"],
        stats["bytes_per_token"],
        100 * stats["special_token_share"],
        stats["spelled_out"]["authors"],
        stats["spelled_out"]["modules"],
        roundtrip["exact"],
        roundtrip["checked"],
    )
    return stats


# ------------------------------------------------------------------ steps


def check_writable(outputs: Iterable[Path]) -> None:
    """UserError now, not after the expensive work, when an output's folder cannot be made or written."""
    for folder in sorted({Path(output).parent for output in outputs}):
        if not os.access(ensure_folder(folder), os.W_OK | os.X_OK):
            raise UserError(f"{folder}: output folder is not writable")


def choose_language(cfg: Config, paths: ArtifactPaths, spool: HistorySpool, total_commits: int | None) -> CommitLanguage:
    """The K most frequent authors and modules of the whole history (the pass that reads the
    artifacts, checks every record's shape and fills the spool)."""
    history = _progress(iter_commit_records(paths.commits, paths.chunks), total_commits, "reading the history")
    authors, modules = count_families(spool.filled_from(history))
    if not authors:
        raise UserError(f"{paths.commits}: no commits: nothing to learn a tokenizer from (check the git_scraper settings)")
    lang = CommitLanguage.from_counts(
        authors, modules, cfg.top_authors, cfg.top_modules,
        compact_max_files=cfg.compact_max_files, compact_max_changes=cfg.compact_max_changes,
    )
    log.debug("tokenizer: %d authors, %d modules; tokens for %d and %d", len(authors), len(modules), len(lang.authors), len(lang.modules))
    return lang


def full_renderings(lang: CommitLanguage, spool: HistorySpool) -> Iterator[str]:
    """Every commit's full rendering, read back from the spool (BPE trains on a sample of them: bpe_sample)."""
    return (lang.render_commit(commit, chunks, "full") for commit, chunks in _progress(spool, spool.count, "rendering for BPE"))


def frozen_tokenizer(paths: ArtifactPaths) -> tuple[CommitLanguage, Any]:
    """tokenizer.frozen: the folder as the last full run left it (same ids; new names are spelled out)."""
    if not paths.tokenizer_dir.exists():
        raise UserError(f"{paths.tokenizer_dir}: not found, so there is no tokenizer to keep (tokenizer.frozen: true): "
                        "run the tokenizer stage once with frozen: false")
    return load_commit_tokenizer(paths.tokenizer_dir)


def previous_encoding(paths: ArtifactPaths, lang: CommitLanguage, tokenizer: Any, budget: int) -> EncodedCommits | None:
    """The tokens.pt this run replaces, when made with this very tokenizer and segment budget: its unchanged
    commits are copied."""
    if not paths.tokens.exists():
        return None
    try:
        previous = EncodedCommits.load(paths.tokens)
    except UserError as exc:
        log.info("tokenizer: %s: every commit is encoded again (%s)", paths.tokens, exc)
        return None
    if not previous.made_with(lang, tokenizer):
        log.info("tokenizer: %s was made with another tokenizer: every commit is encoded again", paths.tokens)
        return None
    if previous.segment_budget != budget:
        log.info("tokenizer: %s kept %s ids of each commit's segments, now %d: every commit is encoded again",
                 paths.tokens, previous.segment_budget, budget)
        return None
    return previous


def encode_commits(cfg: Config, lang: CommitLanguage, tokenizer: Any, paths: ArtifactPaths,
                   history: Iterable[tuple[Commit, list[Chunk]]], budget: int,
                   previous: EncodedCommits | None = None) -> tuple[EncodedCommits, EncodingNotes]:
    """tokens.pt's content: every commit encoded (or copied from `previous`), and what it was made from."""
    builder, notes = encode_history(lang, tokenizer, history, cfg.batch_size, cfg.roundtrip_sample, previous, budget)
    meta = {
        "tokenizer_dir": str(paths.tokenizer_dir),
        "tokenizer_digest": tokenizer_digest(tokenizer),
        "rendering": lang.rendering(),
        "vocab_size": len(tokenizer),
        "pieces": "compact, task, header, one segment per chunk, end",
        "segment_budget": budget,
        # what it was encoded from (the dataset builder checks the seed's --commits/--chunks against it)
        "sources": {name: {"path": str(path), "bytes": path.stat().st_size} for name, path in
                    (("commits", paths.commits), ("chunks", paths.chunks))},
    }
    return builder.build(meta), notes


def _progress(iterable, total: int | None, desc: str):
    return progress(iterable, total=total, desc=desc, unit="commits")


# ------------------------------------------------------------------ CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--chunks", type=Path, help="chunks.jsonl (default: <output_dir>/chunks.jsonl)")
    parser.add_argument("--commits", type=Path, help="commits.json (default: beside --chunks, else <output_dir>/commits.json)")
    parser.add_argument("--mode", choices=["train", "extend"], help="override tokenizer.mode")
    parser.add_argument("--vocab-size", type=int, help="override tokenizer.vocab_size (train mode)")
    parser.add_argument("--base-tokenizer", help="override tokenizer.base_tokenizer (extend mode; sets --mode extend)")
    parser.add_argument("--output-vocab", type=Path, help="vocab.json to write (default: <output_dir>/vocab.json); the tokenizer folder goes beside it in tokenizer/")
    parser.add_argument("--output-tokens", type=Path, help="tokens.pt to write (default: <output_dir>/tokens.pt)")
    parser.add_argument("--tokenizer-dir", type=Path, help="tokenizer folder to write (default: <output_dir>/tokenizer)")
    args = parser.parse_args(argv)
    cfg, pipeline, paths = load_stage(args, SECTION, Config)

    overrides: dict[str, Any] = {}
    if args.mode:
        overrides["mode"] = args.mode
    if args.vocab_size is not None:
        overrides["vocab_size"] = args.vocab_size
    if args.base_tokenizer:
        overrides.update(base_tokenizer=args.base_tokenizer, mode="extend")
    cfg = apply_overrides(cfg, SECTION, overrides)

    changes: dict[str, Path] = {}
    if args.chunks:
        changes["chunks"] = args.chunks.resolve()
        changes["commits"] = ArtifactPaths.under(args.chunks.resolve().parent).commits  # commits.json(.zst) beside it
    if args.commits:
        changes["commits"] = args.commits.resolve()
    if args.output_vocab:
        vocab = args.output_vocab.resolve()
        changes.update(vocab=vocab, tokenizer_dir=tokenizer_dir_for_vocab(vocab), tokenizer_stats=vocab.parent / "tokenizer_stats.json")
    if args.output_tokens:
        changes["tokens"] = args.output_tokens.resolve()
    if args.tokenizer_dir:
        changes["tokenizer_dir"] = args.tokenizer_dir.resolve()
    paths = dataclasses.replace(paths, **changes)
    dataset = DatasetConfig()
    if args.config is not None:
        dataset = load_config(args.config, {"dataset_builder": DatasetConfig}, strict_sections=False)["dataset_builder"]
    summary = run(cfg, paths, seed=pipeline.seed, dataset=dataset)
    print(json.dumps({k: summary[k] for k in ("vocab_size", "chunks", "tokens", "bytes_per_token")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
