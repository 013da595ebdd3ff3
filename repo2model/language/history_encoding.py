"""Encoding a whole history into tokens.pt's ids: each commit rendered into its pieces, encoded in
batches (in a worker thread while the next batch is rendered), or copied from the previous tokens.pt
when its rendering is unchanged; then the round-trip check and the sizes the stats report."""

from __future__ import annotations

import collections
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import numpy as np

from repo2model.core.records import Chunk, Commit
from repo2model.core.stats import length_percentiles
from repo2model.language.commit_language import CommitLanguage
from repo2model.language.encoded_commits import CommitInfo, EncodedCommits, EncodedCommitsBuilder, render_digest, render_pieces
from repo2model.language.encoding import decode_ids, encode_texts
from repo2model.language.tokens import module_top

log = logging.getLogger("tokenizer")


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


def encode_history(lang: CommitLanguage, tokenizer: Any, history: Iterable[tuple[Commit, list[Chunk]]],
                   batch_size: int, sample_size: int,
                   previous: EncodedCommits | None = None) -> tuple[EncodedCommitsBuilder, EncodingNotes]:
    """Every commit's pieces (compact, task, header, segments, end), encoded `batch_size` texts at a time;
    a commit whose rendering is unchanged since `previous` (same tokenizer) is copied from it instead.
    The notes keep the first `sample_size` commits' texts for `check_roundtrip`.

    The tokenizers library encodes without holding Python's lock, so one batch is encoded in a
    worker thread while the next one is rendered: the pass costs about what encoding alone does.
    """
    builder = EncodedCommitsBuilder()
    notes = EncodingNotes(sample_size)
    known = {(info.hash, digest): i for i, (info, digest) in enumerate(zip(previous.infos, previous.digests))} if previous else {}
    with ThreadPoolExecutor(max_workers=1) as worker:
        in_flight: collections.deque = collections.deque()  # (future ids, the batch's commits); at most 2
        for batch in rendered_batches(lang, history, batch_size, notes, known):
            in_flight.append((worker.submit(encode_texts, tokenizer, batch.texts), batch))
            if len(in_flight) > 1:
                ids, done = in_flight.popleft()
                add_batch(builder, done, ids.result(), previous)
        for ids, done in in_flight:
            add_batch(builder, done, ids.result(), previous)
    return builder, notes


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
