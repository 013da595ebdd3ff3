"""Encoding a whole history into tokens.pt's ids: each commit rendered into its pieces, encoded in
batches (in a worker thread while the next batch is rendered), or copied from the previous tokens.pt
when its rendering is unchanged; then the round-trip check and the sizes the stats report.

A commit's segments are encoded only up to `segment_budget` ids (what an example can use: see
encoded_commits): a batch holds the segments that fit in about CHARS_PER_ID characters per id of the
budget, and the segment where the budget is reached is encoded on its own, only its beginning
(`encoding.encode_prefix`)."""

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
from repo2model.language.encoded_commits import (
    PIECES_BEFORE_SEGMENTS,
    CommitInfo,
    EncodedCommits,
    EncodedCommitsBuilder,
    render_digest,
    render_pieces,
)
from repo2model.language.encoding import CHARS_PER_ID, decode_ids, encode_prefix, encode_texts
from repo2model.language.tokens import module_top

log = logging.getLogger("tokenizer")


@dataclasses.dataclass
class EncodingNotes:
    """What the encoding pass saw, for the stats: the first commits' texts (to check the round trip
    against the stored ids), sizes, reuse, and the names that fell back to spelling."""

    sample_size: int
    sample_texts: list[str] = dataclasses.field(default_factory=list)  # what the stored full ids decode to
    sample_structures: list[list[tuple]] = dataclasses.field(default_factory=list)
    sample_cut: list[bool] = dataclasses.field(default_factory=list)
    sample_index: list[int] = dataclasses.field(default_factory=list)  # each sampled commit's place in tokens.pt
    rendered_bytes: int = 0  # UTF-8 bytes of every full rendering
    text_bytes: int = 0  # UTF-8 bytes of the full renderings' text that was encoded (for bytes/token)
    cut_commits: int = 0  # commits whose segments were encoded only up to the budget
    encoded_commits: int = 0
    reused_commits: int = 0  # copied from the previous tokens.pt (frozen tokenizer, same rendering)
    spelled_authors: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # name -> encoded commits
    spelled_modules: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # top segment -> chunks

    def saw(self, lang: CommitLanguage, commit: Commit, chunks: list[Chunk], pieces: list[str], reused: bool) -> None:
        self.rendered_bytes += sum(len(piece.encode("utf-8")) for piece in pieces[2:])
        if reused:
            self.reused_commits += 1
            return
        self.encoded_commits += 1
        if not lang.has_author_token(commit.author.name):
            self.spelled_authors[commit.author.name] += 1
        for chunk in chunks:
            if chunk.module and not lang.has_module_token(chunk.module):
                self.spelled_modules[module_top(chunk.module)[0]] += 1

    def encoded(self, index: int, texts: list[str], cut: bool, structure: list[tuple] | None) -> None:
        """Commit `index`'s pieces as encoded (`texts`: what its stored ids decode to); sampled for the round trip."""
        full = "".join(texts[2:])
        self.text_bytes += len(full.encode("utf-8"))
        self.cut_commits += cut
        if structure is not None and len(self.sample_texts) < self.sample_size:
            self.sample_texts.append(full)
            self.sample_structures.append(structure)
            self.sample_cut.append(cut)
            self.sample_index.append(index)


def encode_history(lang: CommitLanguage, tokenizer: Any, history: Iterable[tuple[Commit, list[Chunk]]],
                   batch_size: int, sample_size: int, previous: EncodedCommits | None = None,
                   segment_budget: int | None = None) -> tuple[EncodedCommitsBuilder, EncodingNotes]:
    """Every commit's pieces (compact, task, header, segments, end), encoded `batch_size` texts at a time,
    its segments only up to `segment_budget` ids (None: whole); a commit whose rendering is unchanged since
    `previous` (same tokenizer, same budget) is copied from it instead.
    The notes keep the first `sample_size` commits' texts for `check_roundtrip`.

    The tokenizers library encodes without holding Python's lock, so one batch is encoded in a
    worker thread while the next one is rendered: the pass costs about what encoding alone does.
    """
    builder = EncodedCommitsBuilder()
    notes = EncodingNotes(sample_size)
    known = {(info.hash, digest): i for i, (info, digest) in enumerate(zip(previous.infos, previous.digests))} if previous else {}
    with ThreadPoolExecutor(max_workers=1) as worker:
        in_flight: collections.deque = collections.deque()  # (future ids, the batch's commits); at most 2
        for batch in rendered_batches(lang, history, batch_size, notes, known, segment_budget):
            in_flight.append((worker.submit(encode_texts, tokenizer, batch.texts), batch))
            if len(in_flight) > 1:
                ids, done = in_flight.popleft()
                add_batch(builder, done, ids.result(), previous, tokenizer, segment_budget, notes)
        for ids, done in in_flight:
            add_batch(builder, done, ids.result(), previous, tokenizer, segment_budget, notes)
    return builder, notes


@dataclasses.dataclass
class PendingCommit:
    """A rendered commit waiting for its ids: its pieces are in the batch's texts, or it is copied."""

    info: CommitInfo
    digest: str  # render_digest of its pieces
    pieces: int  # how many of the batch's texts are its pieces (0 when copied)
    previous: int | None  # its index in the previous tokens.pt when its ids are copied from there
    texts: list[str] | None = None  # its pieces as rendered (the batch holds the segments that may fit)
    full_bytes: int = 0  # UTF-8 bytes of its full rendering
    structure: list[tuple] | None = None  # (file, change type, symbol) per chunk, for the round-trip sample


@dataclasses.dataclass
class RenderedBatch:
    """About `batch_size` texts to encode, and the commits they belong to, in order."""

    texts: list[str] = dataclasses.field(default_factory=list)
    commits: list[PendingCommit] = dataclasses.field(default_factory=list)


def rendered_batches(lang: CommitLanguage, history: Iterable[tuple[Commit, list[Chunk]]], batch_size: int,
                     notes: EncodingNotes, known: dict[tuple[str, str], int],
                     segment_budget: int | None = None) -> Iterator[RenderedBatch]:
    """The history rendered into batches of about `batch_size` texts; a commit found in `known`
    ((hash, render digest) -> index in the previous tokens.pt) adds no text: its ids are copied. With a
    `segment_budget`, a segment past CHARS_PER_ID characters per id of it is left out of the batch
    (an empty text): `add_batch` encodes what of it the budget needs."""
    batch = RenderedBatch()
    for commit, chunks in history:
        pieces = render_pieces(lang, commit, chunks)
        digest = render_digest(pieces)
        reuse = known.get((commit.hash, digest))
        notes.saw(lang, commit, chunks, pieces, reused=reuse is not None)
        if reuse is None:
            batch.texts.extend(batchable_pieces(pieces, segment_budget))
        sampled = reuse is None and len(notes.sample_texts) + sum(c.structure is not None for c in batch.commits) < notes.sample_size
        batch.commits.append(PendingCommit(
            CommitInfo.of(commit), digest, 0 if reuse is not None else len(pieces), reuse,
            texts=pieces if reuse is None else None,
            structure=[(c.file, c.change_type, c.symbol) for c in chunks] if sampled else None,
            full_bytes=sum(len(piece.encode("utf-8")) for piece in pieces[2:])))
        if len(batch.texts) >= batch_size:
            yield batch
            batch = RenderedBatch()
    if batch.commits:
        yield batch


def batchable_pieces(pieces: list[str], segment_budget: int | None) -> list[str]:
    """The pieces to encode in the batch: every piece, except the segments beyond CHARS_PER_ID characters
    per id of the budget (empty texts in their place)."""
    if segment_budget is None:
        return pieces
    out, room = pieces[:PIECES_BEFORE_SEGMENTS], segment_budget * CHARS_PER_ID
    for segment in pieces[PIECES_BEFORE_SEGMENTS:-1]:
        room -= len(segment)
        out.append(segment if room >= 0 else "")
    return out + pieces[-1:]


def bounded_segments(tokenizer: Any, texts: list[str], ids: list[list[int]], budget: int) -> tuple[list[list[int]], list[str], bool]:
    """A commit's segments within `budget` ids: whole while they fit, then the beginning of the one that
    reaches the budget, then empty ones; with the text each holds and whether any was cut. `ids` are the
    batch's (a segment left out of the batch has none)."""
    out_ids, out_texts, used, cut = [], [], 0, False
    for text, encoded in zip(texts, ids):
        if used >= budget:
            out_ids.append([])
            out_texts.append("")
            cut = cut or bool(text)
        elif (encoded or not text) and used + len(encoded) <= budget:
            out_ids.append(encoded)
            out_texts.append(text)
            used += len(encoded)
        else:  # the segment that reaches the budget (or one the batch left out): its beginning
            kept, kept_text = encode_prefix(tokenizer, text, budget - used)
            out_ids.append(kept)
            out_texts.append(kept_text)
            used += len(kept)
            cut = cut or kept_text != text
    return out_ids, out_texts, cut


def add_batch(builder: EncodedCommitsBuilder, batch: RenderedBatch, ids: list[list[int]], previous: EncodedCommits | None,
              tokenizer: Any = None, segment_budget: int | None = None, notes: EncodingNotes | None = None) -> None:
    """The batch's commits, in order, with the ids of their encoded texts (segments within the budget) or
    copied from `previous`."""
    start = 0
    for pending in batch.commits:
        if pending.previous is not None:
            cut = bool(previous.cut[pending.previous])
            builder.add(pending.info, pending.digest, *previous.commit_ids(pending.previous), cut)
            if notes is not None:  # what the copied ids hold: the whole rendering, or (cut) their decoded text
                notes.text_bytes += len(decode_ids(tokenizer, builder.last_full().tolist()).encode("utf-8")) if cut else pending.full_bytes
                notes.cut_commits += cut
            continue
        pieces, texts = ids[start : start + pending.pieces], list(pending.texts)
        start += pending.pieces
        cut = False
        if segment_budget is not None:
            first, last = PIECES_BEFORE_SEGMENTS, len(pieces) - 1
            segments, texts[first:last], cut = bounded_segments(tokenizer, texts[first:last], pieces[first:last], segment_budget)
            pieces = pieces[:first] + segments + pieces[last:]
        builder.add_encoded(pending.info, pending.digest, pieces, cut)
        if notes is not None:
            notes.encoded(len(builder.infos) - 1, texts, cut, pending.structure)


def check_roundtrip(lang: CommitLanguage, tokenizer: Any, encoded: EncodedCommits, notes: EncodingNotes) -> dict:
    """On the first commits encoded: decode(stored full ids) == the text encoded (the whole rendering, or as
    much of it as the segment budget kept), and parse(render(c)) == c's structure (whole renderings)."""
    exact = 0
    first_bad = None
    for i, text in zip(notes.sample_index, notes.sample_texts):
        if decode_ids(tokenizer, encoded.full(i).tolist()) == text:
            exact += 1
        elif first_bad is None:
            first_bad = text[:80]
    parsed_ok = 0
    for text, structure, cut in zip(notes.sample_texts, notes.sample_structures, notes.sample_cut):
        parsed = lang.parse_commit(text)
        parsed_ok += cut or (parsed.changes == structure and parsed.well_formed)
    if exact < len(notes.sample_texts):
        log.warning(
            "tokenizer: decode(encode(text)) differs from the text for %d of %d commits (first: %r)%s",
            len(notes.sample_texts) - exact,
            len(notes.sample_texts),
            first_bad,
            ": the base tokenizer normalises text" if lang.tokenizer_info.get("mode") == "extend" else "",
        )
    return {"checked": len(notes.sample_texts), "exact": exact, "parsed": parsed_ok, "cut": sum(notes.sample_cut)}


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
        "rendered_bytes": notes.rendered_bytes,
        "cut_commits": notes.cut_commits,
        "segment_budget": encoded.segment_budget,
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
