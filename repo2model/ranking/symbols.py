"""A predicted file's symbols most likely to change for a task.

    indexes = SymbolIndexes()                                   # one per walk or service: a cache
    symbols = rank_symbols(past, path, [], task_words, 5, index=indexes.get(past, path, files))

The candidates are the file's named units at the target's parent (Rust and Python, parsed by
repo2model.code.units) and the symbols its history changed; they are ranked by weighted reciprocal-rank
fusion of three lists: BM25 against the task (name words counted three times, then the unit's code),
recency of change, and frequency of change.
"""

from __future__ import annotations

from dataclasses import dataclass

from repo2model.code.units import PARSED_LANGUAGES, extract_units, is_test_file, language_of
from repo2model.ranking.history import PastCommits
from repo2model.retrieval.bm25 import FileSearch, FixedBM25, code_words

SYMBOL_WEIGHTS = (2.0, 1.0, 0.5)  # task relevance, recency, frequency in rank_symbols' fusion


@dataclass
class SymbolCandidate:
    symbol: str
    text: str  # the unit's code at the parent ("" for a symbol known only from the history)


def units_at_parent(path: str, data: bytes | None) -> list[SymbolCandidate]:
    """The named units of one file version (Rust and Python; nothing for other files)."""
    language = language_of(path)
    if data is None or language not in PARSED_LANGUAGES:
        return []
    parsed = extract_units(language, data, test_file=is_test_file(language, path))
    lines = data.decode("utf-8", "replace").splitlines()
    seen: dict[str, SymbolCandidate] = {}
    for unit in parsed.units:
        if unit.symbol and unit.base_kind not in ("import",) and unit.symbol not in seen:
            seen[unit.symbol] = SymbolCandidate(unit.symbol, "\n".join(lines[unit.start - 1: unit.end]))
    return list(seen.values())


@dataclass
class SymbolIndex:
    """A file's candidate symbols (its units at the parent, then the symbols its history changed) and their
    BM25 documents (name words counted three times, then the unit's code); reusable while neither changes."""

    names: list[str]
    index: FixedBM25

    @classmethod
    def of(cls, past: PastCommits, path: str, units: list[SymbolCandidate]) -> "SymbolIndex":
        candidates = {u.symbol: u.text for u in units}
        for symbol in past.file_symbols.get(path) or {}:
            candidates.setdefault(symbol, "")
        names = list(candidates)
        documents = [list(code_words(name)) * 3 + code_words(candidates[name][:20_000]) for name in names]
        return cls(names, FixedBM25(documents))


class SymbolIndexes:
    """SymbolIndex per (path, blob at the parent, symbols the history knows): a file at the same version with
    the same known symbols is parsed and indexed once (the history only ever adds symbols)."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self.indexes: dict[tuple[str, str | None, int], SymbolIndex] = {}

    def get(self, past: PastCommits, path: str, files: FileSearch | None) -> SymbolIndex:
        """`path`'s index as it is in `files`' tree (no units without one, or when it is not there)."""
        oid = files.blobs.get(path) if files is not None else None
        key = (path, oid, len(past.file_symbols.get(path) or ()))
        if key not in self.indexes:
            if len(self.indexes) > self.limit:
                self.indexes.clear()
            units = units_at_parent(path, files.read(path)) if oid is not None else []
            self.indexes[key] = SymbolIndex.of(past, path, units)
        return self.indexes[key]


def rank_symbols(past: PastCommits, path: str, units: list[SymbolCandidate], task_words: list[str],
                 limit: int, k: int = 10, weights: tuple[float, float, float] = SYMBOL_WEIGHTS,
                 index: SymbolIndex | None = None) -> list[str]:
    """A file's symbols most likely to change for this task: its units at the parent and the symbols its
    history changed, ranked by weighted reciprocal-rank fusion of three lists, each holding only the
    symbols with evidence: BM25 against the task (SymbolIndex), recency of change, and frequency of change;
    ties and symbols without evidence by their order in the file. `index`: SymbolIndex.of(past, path, units)
    when already built."""
    index = index or SymbolIndex.of(past, path, units)
    names = index.names
    if not names or limit <= 0:
        return []
    known = past.file_symbols.get(path) or {}
    relevance = index.index.scores(task_words)
    seen = [past.symbol_seen.get((path, name), -1) for name in names]
    counts = [known.get(name, 0) for name in names]
    lists = [
        sorted((i for i in range(len(names)) if relevance[i] > 0), key=lambda i: -relevance[i]),
        sorted((i for i in range(len(names)) if seen[i] >= 0), key=lambda i: -seen[i]),
        sorted((i for i in range(len(names)) if counts[i] > 0), key=lambda i: -counts[i]),
    ]
    fused = [0.0] * len(names)
    for weight, order in zip(weights, lists):
        for rank, i in enumerate(order, start=1):
            fused[i] += weight / (k + rank)
    best = sorted(range(len(names)), key=lambda i: -fused[i])
    return [names[i] for i in best[:limit]]
