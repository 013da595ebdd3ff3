"""BM25 as Qdrant sparse vectors: a unit's words weighted by BM25's term-frequency part, the IDF left to Qdrant.

    document = sparse_document(unit_words(unit), average_length)   # stored with the unit (vector `bm25`)
    query = sparse_query(task)                                      # the task's word counts

The unit's words are repo2model.retrieval.bm25.word_counts' (identifiers split at `_`/humps, path and symbol
words added), with BM25's term-frequency saturation (k1 1.5, b 0.75, length against the average unit length of
the first build); Qdrant applies the IDF (`Modifier.IDF`) over the points it holds, so a search scores as
repo2model.retrieval.bm25's Lucene BM25 over the same words. Word ids: 32-bit blake2b of the word.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import dataclass

from repo2model.retrieval.bm25 import code_words, path_words, word_counts
from repo2model.retrieval.units import IndexUnit

K1, B = 1.5, 0.75  # BM25 as repo2model.retrieval.bm25 computes it (bm25s's Lucene defaults)


@functools.lru_cache(maxsize=1 << 18)  # a tree's vocabulary repeats: hashing each word once is enough
def word_id(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "little")


@dataclass
class Sparse:
    indices: list[int]
    values: list[float]


def unit_words(unit: IndexUnit) -> dict[str, int]:
    """The words BM25 counts for a unit: its code's, plus its path's and its symbol's."""
    return word_counts(unit.text, extra=[*path_words(unit.path), *code_words(unit.symbol)])


def sparse_document(words: dict[str, int], average_length: float) -> Sparse:
    """BM25's term-frequency part for each word (the IDF part is Qdrant's `Modifier.IDF`)."""
    length = sum(words.values())
    norm = K1 * (1 - B + B * length / max(average_length, 1.0))
    values: dict[int, float] = {}
    for word, tf in words.items():
        index = word_id(word)
        values[index] = values.get(index, 0.0) + tf / (tf + norm)
    ordered = sorted(values)
    return Sparse(ordered, [values[i] for i in ordered])


def sparse_query(text: str) -> Sparse:
    counts: dict[int, float] = {}
    for word, n in Counter(code_words(text)).items():
        counts[word_id(word)] = counts.get(word_id(word), 0.0) + n
    ordered = sorted(counts)
    return Sparse(ordered, [counts[i] for i in ordered])
