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
its examples from tokens.pt without encoding again.

Steps: check the outputs can be written; count authors and modules (and check
every record's shape); train BPE on the full renderings (or extend a base
tokenizer); save and reload the folder; encode every commit's pieces in
batches; check decode(ids) == text for the first `roundtrip_sample` commits.
The first pass keeps the records it read in a temporary spool, so the history's
JSON is parsed once.

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
    batch_size      texts per encode_batch call (bounds memory)
    roundtrip_sample commits checked for decode(encode(render)) == render
    frozen          keep the existing tokenizer folder (ids stable) and only encode the
                    commits; mode, vocab_size, top_* and compact_* then come from the folder

CLI (the seed's flags work): python tokenizer.py --chunks outputs/chunks.jsonl
    --vocab-size 50257 --output-vocab outputs/vocab.json --output-tokens outputs/tokens.pt
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from repo2model.core.artifacts import atomic_path, ensure_folder, read_commits_metadata, require, write_json
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.language.commit_language import (
    BOS,
    CHANGE_TOKENS,
    EOS,
    PAD,
    STRUCTURE_TOKENS,
    CommitLanguage,
    backend,
    count_families,
    decode_ids,
    encode_texts,
    iter_commit_records,
    module_top,
)
from repo2model.language.encoded_commits import CommitInfo, EncodedCommits, EncodedCommitsBuilder, render_digest, render_pieces
from repo2model.core.errors import UserError, first_line
from repo2model.core.paths import ArtifactPaths, tokenizer_dir_for_vocab
from repo2model.core.records import Chunk, Commit
from repo2model.core.stats import length_percentiles
from repo2model.language.tokenizer_folder import load_commit_tokenizer, tokenizer_digest
from repo2model.core.progress import progress

SECTION = "tokenizer"
CODE = ("core", "language")  # the packages it runs (its fingerprint covers them)
log = logging.getLogger("tokenizer")

BYTE_ALPHABET = 256
FIXED_SPECIALS = 3 + len(STRUCTURE_TOKENS) + len(CHANGE_TOKENS)


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


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42) -> dict:
    """Choose the token families, build the tokenizer (or keep it: frozen), encode every commit, save stats."""
    require(paths.commits, "git_scraper")
    require(paths.chunks, "semantic_chunker")
    check_writable(stage_outputs(cfg, paths))  # before minutes of BPE training
    total_commits = read_commits_metadata(paths.commits).get("total_commits")
    if cfg.frozen:
        lang, tokenizer = frozen_tokenizer(paths)
        previous = previous_encoding(paths, lang, tokenizer)
        history = _progress(iter_commit_records(paths.commits, paths.chunks), total_commits, "encoding commits")
        encoded, notes = encode_history(cfg, lang, tokenizer, paths, history, previous)
    else:
        with HistorySpool(paths.tokens.parent) as spool:
            lang = choose_language(cfg, paths, spool, total_commits)
            if cfg.mode == "train":
                tokenizer = train_tokenizer(cfg, lang, spool)
            else:
                tokenizer = extend_tokenizer(cfg, lang)
            lang.check_tokenizer(tokenizer, "the new tokenizer")
            save_tokenizer(tokenizer, lang, paths)
            lang, tokenizer = load_commit_tokenizer(paths.tokenizer_dir)  # encode with what later stages will load
            encoded, notes = encode_history(cfg, lang, tokenizer, paths, _progress(spool, spool.count, "encoding commits"))
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
        "tokenizer: %s vocab %d (%s), %d commits (%d encoded, %d unchanged reused), %d chunks -> %d tokens, "
        "%.2f bytes/token, %.1f%% special; %d authors and %d modules without a token spelled out; round trip %d/%d exact",
        stats["mode"],
        len(tokenizer),
        "frozen" if cfg.frozen else f"asked {cfg.vocab_size}" if cfg.mode == "train" else f"+{stats['added_tokens']} added",
        stats["commits"],
        stats["encoded_commits"],
        stats["reused_commits"],
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


class HistorySpool:
    """The history's records, pickled to a temporary file by the first pass so that the later
    passes (BPE training, encoding) read them back without parsing JSON and checking shapes again.

    Only what rendering reads is kept: a commit's `files` (with their patches) and a chunk's
    `before` are left out. The file has no name on disk and disappears when closed.
    """

    def __init__(self, folder: Path):
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".tokenizer-spool-")
        self.count = 0

    def add(self, commit: Commit, chunks: list[Chunk]) -> None:
        record = (dataclasses.replace(commit, files=[]), [dataclasses.replace(c, before=None) for c in chunks])
        pickle.dump(record, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1

    def filled_from(self, history: Iterable[tuple[Commit, list[Chunk]]]) -> Iterator[tuple[Commit, list[Chunk]]]:
        """`history`, passed through, each record added on its way."""
        for commit, chunks in history:
            self.add(commit, chunks)
            yield commit, chunks

    def __iter__(self) -> Iterator[tuple[Commit, list[Chunk]]]:
        self._file.seek(0)
        for _ in range(self.count):
            yield pickle.load(self._file)

    def __enter__(self) -> "HistorySpool":
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


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


def train_tokenizer(cfg: Config, lang: CommitLanguage, spool: HistorySpool) -> Any:
    """Byte-level BPE on the full renderings: every byte is in the alphabet, so nothing is unknown."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=lang.special_tokens(),  # whole tokens, never split, ids 0..n-1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    full_texts = (lang.render_commit(commit, chunks, "full") for commit, chunks in _progress(spool, spool.count, "training BPE"))
    raw.train_from_iterator(full_texts, trainer=trainer, length=spool.count)
    reached = raw.get_vocab_size(with_added_tokens=True)
    if reached < cfg.vocab_size:
        log.warning("tokenizer: BPE stopped at %d tokens of the %d asked (history too small for more merges)", reached, cfg.vocab_size)
    lang.tokenizer_info = {"mode": "train", "vocab_size_requested": cfg.vocab_size, "vocab_size": reached, "added_tokens": 0}
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def extend_tokenizer(cfg: Config, lang: CommitLanguage) -> Any:
    """The base model's tokenizer plus our special tokens (appended; bos/eos/pad kept when it has them)."""
    base = cfg.base_tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(base).expanduser()) if Path(base).expanduser().exists() else base)
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer.base_tokenizer: cannot load {base!r} ({first_line(exc)}): give a local tokenizer folder") from None
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise UserError(f"tokenizer.base_tokenizer: {base!r} has no fast (tokenizers) version: convert it first")
    base_size = len(tokenizer)
    vocab = tokenizer.get_vocab()
    new = [t for t in lang.special_tokens() if t not in (PAD, BOS, EOS) and t not in vocab]
    # add_tokens appends; add_special_tokens({"additional_special_tokens"}) would replace the base's extras (measured with transformers 5)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    for name, ours in (("pad", PAD), ("bos", BOS), ("eos", EOS)):
        if getattr(tokenizer, f"{name}_token", None) is None:
            tokenizer.add_tokens([AddedToken(ours, special=True, normalized=False)], special_tokens=True)
            setattr(tokenizer, f"{name}_token", ours)
    added = len(tokenizer) - base_size
    fixed = exact_after_tokens(tokenizer)
    lang.tokenizer_info = {
        "mode": "extend",
        "base_tokenizer": str(base),
        "base_vocab_size": base_size,
        "vocab_size": len(tokenizer),
        "added_tokens": added,  # training resizes the embeddings by this many rows
        "prefix_space_removed": fixed,
    }
    log.info("tokenizer: extended %s (%d tokens) with %d special tokens", base, base_size, added)
    return tokenizer


PROBE = "<FILE>src/a.rs<MODULE>a\n<CHANGE:new_function>f\n<DIFF> fn f() {\n+    x();\n }\n<COMMIT_END>\n"


def exact_after_tokens(tokenizer: Any) -> bool:
    """Make text after a special token round-trip exactly; True if the base tokenizer had to change.

    SentencePiece-style tokenizers (LLaMA-2 "legacy") put a word-start marker before every text
    segment, so after each of our tokens a space would appear on decoding (`<FILE> src/a.rs`) and
    parsed paths would be wrong. Text in the commit language always follows a special token, so
    the marker is only prepended at the very start of a text ("first"), as transformers does for
    non-legacy LLaMA tokenizers.
    """
    if decode_ids(tokenizer, encode_texts(tokenizer, [PROBE])[0]) == PROBE:
        return False
    spec = json.loads(backend(tokenizer).to_str())

    def edit(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "Sequence":
                key = "normalizers" if "normalizers" in node else "pretokenizers" if "pretokenizers" in node else None
                if key:
                    node[key] = [edit(n) for n in node[key] if not (isinstance(n, dict) and n.get("type") == "Prepend")]
                    return node
            if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "always":
                node["prepend_scheme"] = "first"
        return node

    for key in ("normalizer", "pre_tokenizer"):
        if isinstance(spec.get(key), dict) and spec[key].get("type") == "Prepend":
            spec[key] = None
        else:
            spec[key] = edit(spec.get(key))
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))
    if "legacy" in tokenizer.init_kwargs or hasattr(tokenizer, "legacy"):
        tokenizer.init_kwargs["legacy"] = False  # a LLaMA tokenizer class rebuilds its pre-tokenizer from this
        tokenizer.legacy = False
    if decode_ids(tokenizer, encode_texts(tokenizer, [PROBE])[0]) != PROBE:
        log.warning("tokenizer: the base tokenizer changes text around special tokens; decoded text will differ")
    return True


def save_tokenizer(tokenizer: Any, lang: CommitLanguage, paths: ArtifactPaths) -> None:
    """The tokenizer folder (replaced whole, atomically) and the vocab.json copy beside it."""
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
    with atomic_path(paths.tokenizer_dir) as tmp:
        tmp.mkdir(parents=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "vocab.json", vocab, indent=None)
        lang.save(tmp)
    if paths.vocab.resolve() != (paths.tokenizer_dir / "vocab.json").resolve():
        with atomic_path(paths.vocab) as tmp:
            shutil.copyfile(paths.tokenizer_dir / "vocab.json", tmp)


def frozen_tokenizer(paths: ArtifactPaths) -> tuple[CommitLanguage, Any]:
    """tokenizer.frozen: the folder as the last full run left it (same ids; new names are spelled out)."""
    if not paths.tokenizer_dir.exists():
        raise UserError(f"{paths.tokenizer_dir}: not found, so there is no tokenizer to keep (tokenizer.frozen: true): "
                        "run the tokenizer stage once with frozen: false")
    return load_commit_tokenizer(paths.tokenizer_dir)


def previous_encoding(paths: ArtifactPaths, lang: CommitLanguage, tokenizer: Any) -> EncodedCommits | None:
    """The tokens.pt this run replaces, when made with this very tokenizer: its unchanged commits are copied."""
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
    return previous


@dataclasses.dataclass
class EncodingNotes:
    """What the encoding pass saw, for the stats: the first commits' texts (to check the round trip
    against the stored ids), sizes, reuse, and the names that fell back to spelling."""

    sample_size: int
    sample_texts: list[str] = dataclasses.field(default_factory=list)
    sample_structures: list[list[tuple]] = dataclasses.field(default_factory=list)
    text_bytes: int = 0  # UTF-8 bytes of every full rendering (for bytes/token)
    encoded_commits: int = 0
    reused_commits: int = 0  # copied from the previous tokens.pt (frozen tokenizer, same rendering)
    spelled_authors: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # name -> encoded commits
    spelled_modules: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # top segment -> chunks

    def saw(self, lang: CommitLanguage, commit: Commit, chunks: list[Chunk], pieces: list[str], reused: bool) -> None:
        full = "".join(pieces[2:])
        self.text_bytes += len(full.encode("utf-8"))
        if len(self.sample_texts) < self.sample_size:
            self.sample_texts.append(full)
            self.sample_structures.append([(c.file, c.change_type, c.symbol) for c in chunks])
        if reused:
            self.reused_commits += 1
            return
        self.encoded_commits += 1
        if not lang.has_author_token(commit.author.name):
            self.spelled_authors[commit.author.name] += 1
        for chunk in chunks:
            if chunk.module and not lang.has_module_token(chunk.module):
                self.spelled_modules[module_top(chunk.module)[0]] += 1


def encode_history(cfg: Config, lang: CommitLanguage, tokenizer: Any, paths: ArtifactPaths,
                   history: Iterable[tuple[Commit, list[Chunk]]],
                   previous: EncodedCommits | None = None) -> tuple[EncodedCommits, EncodingNotes]:
    """Every commit's pieces (compact, task, header, segments, end), encoded `batch_size` texts at a time;
    a commit whose rendering is unchanged since `previous` (same tokenizer) is copied from it instead.

    The tokenizers library encodes without holding Python's lock, so one batch is encoded in a
    worker thread while the next one is rendered: the pass costs about what encoding alone does.
    """
    builder = EncodedCommitsBuilder()
    notes = EncodingNotes(cfg.roundtrip_sample)
    known = {(info.hash, digest): i for i, (info, digest) in enumerate(zip(previous.infos, previous.digests))} if previous else {}
    with ThreadPoolExecutor(max_workers=1) as worker:
        in_flight: collections.deque = collections.deque()  # (future ids, the batch's commits); at most 2
        for batch in rendered_batches(lang, history, cfg.batch_size, notes, known):
            in_flight.append((worker.submit(encode_texts, tokenizer, batch.texts), batch))
            if len(in_flight) > 1:
                ids, done = in_flight.popleft()
                add_batch(builder, done, ids.result(), previous)
        for ids, done in in_flight:
            add_batch(builder, done, ids.result(), previous)
    meta = {
        "tokenizer_dir": str(paths.tokenizer_dir),
        "tokenizer_digest": tokenizer_digest(tokenizer),
        "rendering": lang.rendering(),
        "vocab_size": len(tokenizer),
        "pieces": "compact, task, header, one segment per chunk, end",
        # what it was encoded from (the dataset builder checks the seed's --commits/--chunks against it)
        "sources": {name: {"path": str(path), "bytes": path.stat().st_size} for name, path in
                    (("commits", paths.commits), ("chunks", paths.chunks))},
    }
    return builder.build(meta), notes


@dataclasses.dataclass
class PendingCommit:
    """A rendered commit waiting for its ids: its pieces are in the batch's texts, or it is copied."""

    info: CommitInfo
    digest: str  # render_digest of its pieces
    pieces: int  # how many of the batch's texts are its pieces (0 when copied)
    previous: int | None  # its index in the previous tokens.pt when its ids are copied from there


@dataclasses.dataclass
class RenderedBatch:
    """About `batch_size` texts to encode, and the commits they belong to, in order."""

    texts: list[str] = dataclasses.field(default_factory=list)
    commits: list[PendingCommit] = dataclasses.field(default_factory=list)


def rendered_batches(lang: CommitLanguage, history: Iterable[tuple[Commit, list[Chunk]]], batch_size: int,
                     notes: EncodingNotes, known: dict[tuple[str, str], int]) -> Iterator[RenderedBatch]:
    """The history rendered into batches of about `batch_size` texts; a commit found in `known`
    ((hash, render digest) -> index in the previous tokens.pt) adds no text: its ids are copied."""
    batch = RenderedBatch()
    for commit, chunks in history:
        pieces = render_pieces(lang, commit, chunks)
        digest = render_digest(pieces)
        reuse = known.get((commit.hash, digest))
        notes.saw(lang, commit, chunks, pieces, reused=reuse is not None)
        if reuse is None:
            batch.texts.extend(pieces)
        batch.commits.append(PendingCommit(CommitInfo.of(commit), digest, 0 if reuse is not None else len(pieces), reuse))
        if len(batch.texts) >= batch_size:
            yield batch
            batch = RenderedBatch()
    if batch.commits:
        yield batch


def add_batch(builder: EncodedCommitsBuilder, batch: RenderedBatch, ids: list[list[int]], previous: EncodedCommits | None) -> None:
    """The batch's commits, in order, with the ids of their encoded texts or copied from `previous`."""
    start = 0
    for pending in batch.commits:
        if pending.previous is not None:
            builder.add(pending.info, pending.digest, *previous.commit_ids(pending.previous))
        else:
            builder.add_encoded(pending.info, pending.digest, ids[start : start + pending.pieces])
            start += pending.pieces


def check_roundtrip(lang: CommitLanguage, tokenizer: Any, encoded: EncodedCommits, notes: EncodingNotes) -> dict:
    """decode(ids) == render(c) for the stored full ids, and parse(render(c)) == c's structure, on the first commits."""
    exact = 0
    first_bad = None
    for i, text in enumerate(notes.sample_texts):
        if decode_ids(tokenizer, encoded.full(i).tolist()) == text:
            exact += 1
        elif first_bad is None:
            first_bad = text[:80]
    parsed_ok = 0
    for text, structure in zip(notes.sample_texts, notes.sample_structures):
        parsed = lang.parse_commit(text)
        parsed_ok += parsed.changes == structure and parsed.well_formed
    if exact < len(notes.sample_texts):
        log.warning(
            "tokenizer: decode(encode(text)) differs from the text for %d of %d commits (first: %r)%s",
            len(notes.sample_texts) - exact,
            len(notes.sample_texts),
            first_bad,
            ": the base tokenizer normalises text" if lang.tokenizer_info.get("mode") == "extend" else "",
        )
    return {"checked": len(notes.sample_texts), "exact": exact, "parsed": parsed_ok}


def encoding_stats(encoded: EncodedCommits, lang: CommitLanguage, tokenizer: Any, notes: EncodingNotes) -> dict:
    """Sizes of the full renderings (what a model reads and writes): tokens, bytes per token, special share."""
    lengths = encoded.piece_lengths()
    pieces = np.arange(len(lengths))
    owner = np.repeat(np.arange(len(encoded)), np.diff(encoded.commit_pieces))
    within = pieces - encoded.commit_pieces[owner]  # 0 compact, 1 task, 2 header, 3.. segments, last: end
    in_full = within >= 2
    is_segment = (within >= 3) & (pieces < encoded.commit_pieces[owner + 1] - 1)
    full_tokens = np.repeat(in_full, lengths)
    vocab = tokenizer.get_vocab()
    special_ids = np.array(sorted({vocab[t] for t in lang.special_tokens() if t in vocab}), dtype=np.int32)
    total = int(lengths[in_full].sum())
    special = int(np.isin(encoded.input_ids[full_tokens], special_ids).sum()) if total else 0
    chunk_counts = np.array([encoded.chunk_count(i) for i in range(len(encoded))], dtype=np.int64)
    per_commit = np.bincount(owner[in_full], weights=lengths[in_full], minlength=len(encoded)).astype(np.int64)
    return {
        "commits": len(encoded),
        "commits_with_chunks": int((chunk_counts > 0).sum()),
        "chunks": int(chunk_counts.sum()),
        "tokens": total,
        "compact_tokens": int(lengths[within == 0].sum()),
        "text_bytes": notes.text_bytes,
        "bytes_per_token": round(notes.text_bytes / total, 3) if total else 0.0,
        "special_token_share": round(special / total, 4) if total else 0.0,
        "tokens_per_commit": length_percentiles(per_commit),
        "tokens_per_chunk": length_percentiles(lengths[is_segment]),
        "encoded_commits": notes.encoded_commits,
        "reused_commits": notes.reused_commits,
        # names without a token in the commits encoded this run (a frozen tokenizer's new authors and modules)
        "spelled_out": {
            "authors": len(notes.spelled_authors),
            "author_commits": sum(notes.spelled_authors.values()),
            "modules": len(notes.spelled_modules),
            "module_chunks": sum(notes.spelled_modules.values()),
        },
    }


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
    summary = run(cfg, paths, seed=pipeline.seed)
    print(json.dumps({k: summary[k] for k in ("vocab_size", "chunks", "tokens", "bytes_per_token")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
