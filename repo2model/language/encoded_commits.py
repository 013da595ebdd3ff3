"""The encoded history `tokens.pt`: every commit's token ids, written once by the tokenizer stage.

The dataset builder assembles its examples from these ids (it encodes nothing
again), so a commit is rendered and encoded exactly once in the pipeline.

Each commit is stored as a run of *pieces*, always in this order:

    compact   render_commit(commit, chunks, "compact")   the commit as history
    task      render_task(commit.message)                 what the model is asked
    header    render_header(commit)                       \\
    segment   one per chunk (render_segments, "full")      } the full rendering,
    ...                                                     } contiguous:
    end       "<COMMIT_END>\\n"                            /  header .. end

Every piece starts with a special token, which the tokenizer never merges with
the text around it, so the ids of a concatenation are the concatenated ids: the
full rendering's ids are the header's, the segments' and the end's, one after
the other, and a target cut between segments is exactly what encoding the kept
text would give.

Layout (loadable with `torch.load(weights_only=True)`):

    input_ids      int32 [total]     every piece's ids, concatenated
    piece_offsets  int64 [P + 1]     piece p is input_ids[piece_offsets[p]:piece_offsets[p+1]]
    commit_pieces  int64 [n + 1]     commit i owns pieces commit_pieces[i]:commit_pieces[i+1]
    commits        list[str]         hashes, in commits.json order (every commit, with or without chunks)
    parents        list[list[str]]
    authored_at    list[str]         ISO 8601, as in commits.json
    committed_at   list[str]
    is_merge       bool [n]
    on_default_first_parent  bool [n]
    render_digests list[str]         a hash of each commit's rendered pieces: a frozen tokenizer's
                                     next run copies the ids of a commit whose rendering is unchanged
    segments_cut   bool [n]          the commit's segments were encoded only up to the budget (below)
    meta           dict              format_version, tokenizer_dir, tokenizer_digest, vocab_size,
                                     segment_budget, ...

Bounded segments. A target keeps at most `target_window` ids of a commit's segments, so the tokenizer
stage encodes them only up to `meta["segment_budget"]` ids (target_window + 1: the one more id tells
the builder the commit is longer). In a cut commit (`segments_cut`), the segments before the budget
is reached are whole, the one that reaches it holds only the first ids of its text (exactly the ids
encoding the whole text would start with), and the ones after it are empty: the builder cuts there
whatever it was given, and refuses a `target_window` beyond the budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from repo2model.core.artifacts import load_pt, save_pt
from repo2model.core.errors import UserError
from repo2model.core.records import Chunk, Commit
from repo2model.language.commit_language import CommitLanguage
from repo2model.language.tokenizer_folder import tokenizer_digest
from repo2model.language.tokens import COMMIT_END

FORMAT_VERSION = 3
PIECES_BEFORE_SEGMENTS = 3  # compact, task, header
END_PIECE = COMMIT_END + "\n"
_KEYS = ("input_ids", "piece_offsets", "commit_pieces", "commits", "parents", "authored_at", "committed_at",
         "is_merge", "on_default_first_parent", "render_digests", "segments_cut", "meta")


def render_pieces(lang: CommitLanguage, commit: Commit, chunks: Sequence[Chunk]) -> list[str]:
    """The texts of one commit's pieces, in the stored order (see the module docstring)."""
    return [
        lang.render_commit(commit, chunks, "compact"),
        lang.render_task(commit.message),
        lang.render_header(commit),
        *lang.render_segments(chunks, "full"),
        END_PIECE,
    ]


def render_digest(pieces: Sequence[str]) -> str:
    """A short hash of a commit's rendered pieces (equal digests, equal texts, equal ids)."""
    digest = hashlib.blake2b(digest_size=8)
    for piece in pieces:
        digest.update(piece.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


@dataclasses.dataclass
class CommitInfo:
    """What the dataset builder needs of a commit besides its ids (its place in time and ancestry)."""

    hash: str
    parents: list[str]
    authored_at: str
    committed_at: str
    is_merge: bool
    on_default_first_parent: bool

    @classmethod
    def of(cls, commit: Commit) -> "CommitInfo":
        return cls(commit.hash, list(commit.parents), commit.authored_at, commit.committed_at,
                   bool(commit.is_merge), bool(commit.on_default_first_parent))


@dataclasses.dataclass
class EncodedCommits:
    """tokens.pt in memory; `compact(i)`, `task(i)`, `segments(i)`, `full(i)` give commit i's ids."""

    input_ids: np.ndarray  # int32
    piece_offsets: np.ndarray  # int64
    commit_pieces: np.ndarray  # int64
    infos: list[CommitInfo]
    digests: list[str]  # render_digest of each commit's pieces
    cut: np.ndarray  # bool [n]: the commit's segments stop at meta["segment_budget"] ids
    meta: dict

    def __len__(self) -> int:
        return len(self.infos)

    def _piece(self, p: int) -> np.ndarray:
        return self.input_ids[self.piece_offsets[p] : self.piece_offsets[p + 1]]

    def compact(self, i: int) -> np.ndarray:
        return self._piece(int(self.commit_pieces[i]))

    def task(self, i: int) -> np.ndarray:
        return self._piece(int(self.commit_pieces[i]) + 1)

    def chunk_count(self, i: int) -> int:
        return int(self.commit_pieces[i + 1] - self.commit_pieces[i]) - PIECES_BEFORE_SEGMENTS - 1

    def segments(self, i: int) -> list[np.ndarray]:
        """One piece per chunk (the file header joins the first chunk of each file)."""
        first = int(self.commit_pieces[i]) + PIECES_BEFORE_SEGMENTS
        return [self._piece(p) for p in range(first, int(self.commit_pieces[i + 1]) - 1)]

    def full(self, i: int) -> np.ndarray:
        """The full rendering (header, segments, <COMMIT_END>): one contiguous run."""
        header, end = int(self.commit_pieces[i]) + 2, int(self.commit_pieces[i + 1]) - 1
        return self.input_ids[self.piece_offsets[header] : self.piece_offsets[end + 1]]

    def made_with(self, lang: CommitLanguage, tokenizer: Any) -> bool:
        """True if these ids are what `lang` and `tokenizer` give (same vocabulary, same rendering)."""
        return self.meta.get("tokenizer_digest") == tokenizer_digest(tokenizer) and self.meta.get("rendering") == lang.rendering()

    @property
    def segment_budget(self) -> int | None:
        """The most ids of a commit's segments stored (None: every segment whole)."""
        return self.meta.get("segment_budget")

    def piece_lengths(self) -> np.ndarray:
        return np.diff(self.piece_offsets)

    def commit_ids(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(every piece's ids, concatenated; the pieces' lengths) of commit i, to copy it into another history."""
        first, end = int(self.commit_pieces[i]), int(self.commit_pieces[i + 1])
        return self.input_ids[self.piece_offsets[first] : self.piece_offsets[end]], np.diff(self.piece_offsets[first : end + 1])

    # ---- storage

    def save(self, path: Path | str) -> Path:
        return save_pt(
            {
                "input_ids": torch.from_numpy(self.input_ids),
                "piece_offsets": torch.from_numpy(self.piece_offsets),
                "commit_pieces": torch.from_numpy(self.commit_pieces),
                "commits": [c.hash for c in self.infos],
                "parents": [c.parents for c in self.infos],
                "authored_at": [c.authored_at for c in self.infos],
                "committed_at": [c.committed_at for c in self.infos],
                "is_merge": torch.tensor([c.is_merge for c in self.infos], dtype=torch.bool),
                "on_default_first_parent": torch.tensor([c.on_default_first_parent for c in self.infos], dtype=torch.bool),
                "render_digests": list(self.digests),
                "segments_cut": torch.from_numpy(np.asarray(self.cut, dtype=bool)),
                "meta": {**self.meta, "format_version": FORMAT_VERSION},
            },
            path,
        )

    @classmethod
    def load(cls, path: Path | str) -> "EncodedCommits":
        """tokens.pt as written by `save`; a file of another layout is a one-line error."""
        data = load_pt(path, "tokenizer")
        fix = "rerun the tokenizer stage (python pipeline.py --stage tokenizer --force)"
        if not isinstance(data, dict) or any(k not in data for k in _KEYS):
            raise UserError(f"{path}: not an encoded history of this version (no commit pieces): {fix}")
        version = data["meta"].get("format_version") if isinstance(data["meta"], dict) else None
        if version != FORMAT_VERSION:
            raise UserError(f"{path}: encoded history format {version}, this code reads {FORMAT_VERSION}: {fix}")
        n = len(data["commits"])
        columns = [data[k] for k in ("parents", "authored_at", "committed_at", "is_merge", "on_default_first_parent", "render_digests",
                                     "segments_cut")]
        offsets, pieces = data["piece_offsets"], data["commit_pieces"]
        if (any(len(c) != n for c in columns) or len(pieces) != n + 1 or len(offsets) < 1
                or int(pieces[-1]) != len(offsets) - 1 or int(offsets[-1]) != data["input_ids"].numel()):
            raise UserError(f"{path}: inconsistent counts of commits, pieces and ids: {fix}")
        infos = [
            CommitInfo(h, list(p), a, c, bool(m), bool(f))
            for h, p, a, c, m, f, _, _ in zip(data["commits"], *columns)
        ]
        return cls(
            input_ids=data["input_ids"].numpy(),
            piece_offsets=offsets.numpy(),
            commit_pieces=pieces.numpy(),
            infos=infos,
            digests=list(data["render_digests"]),
            cut=data["segments_cut"].numpy(),
            meta=dict(data["meta"]),
        )


class EncodedCommitsBuilder:
    """Collects commits and their pieces' ids, in order, into an EncodedCommits."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self.infos: list[CommitInfo] = []
        self.digests: list[str] = []
        self.cut: list[bool] = []

    def add(self, info: CommitInfo, digest: str, ids: np.ndarray, piece_lengths: np.ndarray, cut: bool = False) -> None:
        """One commit: all its pieces' ids concatenated, each piece's length, whether its segments were cut."""
        if len(piece_lengths) < PIECES_BEFORE_SEGMENTS + 1 or int(piece_lengths.sum()) != len(ids):
            raise ValueError(f"commit {info.hash[:12]}: {len(piece_lengths)} pieces of {int(piece_lengths.sum())} ids for {len(ids)} ids")
        self.infos.append(info)
        self.digests.append(digest)
        self.cut.append(bool(cut))
        self._parts.append(np.asarray(ids, dtype=np.int32))
        self._lengths.append(np.asarray(piece_lengths, dtype=np.int64))

    def add_encoded(self, info: CommitInfo, digest: str, pieces: Sequence[Sequence[int]], cut: bool = False) -> None:
        """One commit from its pieces' ids as `encode_texts` returns them (lists)."""
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        ids = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=int(lengths.sum()))
        self.add(info, digest, ids, lengths, cut)

    def last_full(self) -> np.ndarray:
        """The full-rendering ids (header .. end) of the commit added last."""
        ids, lengths = self._parts[-1], self._lengths[-1]
        return ids[int(lengths[: PIECES_BEFORE_SEGMENTS - 1].sum()):]

    def build(self, meta: dict[str, Any]) -> EncodedCommits:
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        piece_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=piece_offsets[1:])
        commit_pieces = np.zeros(len(self._lengths) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, self._lengths), dtype=np.int64, count=len(self._lengths)), out=commit_pieces[1:])
        input_ids = np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=np.int32)
        cut = np.asarray(self.cut, dtype=bool)
        return EncodedCommits(input_ids, piece_offsets, commit_pieces, list(self.infos), list(self.digests), cut, dict(meta))
