"""The metrics every predictor is scored with, per target commit, then averaged over the commits where they apply.

    row = score(Prediction(files=[("src/a.py", 0.9), ...]), Truth.of(commit, chunks))
    figures = aggregate(rows)                       # {"recall@1": ..., "mrr": ..., "commits": n}
    buckets = by_size(rows)                         # the same per commit size (changed files)

    recall@k         |top-k predicted files ∩ changed files| / min(k, |changed files|)
    mrr              1 / rank of the first changed file in the ranking (0 when none is ranked)
    change_type_acc  over the changed files a predictor named in its top 10: the share whose predicted main
                     change type is one of the file's actual change types (pooled)
    module_acc       the predictor's first module is one of the commit's modules
    symbol_recall    |predicted symbols ∩ changed symbols| / |changed symbols|
The changed files of a commit are those with chunks (what the commit language renders; binary and filtered
files count for no predictor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

KS = (1, 5, 10)
SIZE_BUCKETS = ((1, 1), (2, 3), (4, 10), (11, 30), (31, None))  # changed files per commit, inclusive


@dataclass
class Prediction:
    """What one predictor says about one target commit."""

    files: list[tuple[str, float]]  # ranked, best first
    change_types: dict[str, str] = field(default_factory=dict)  # file -> its main predicted change type
    modules: list[str] = field(default_factory=list)  # ranked
    symbols: list[str] = field(default_factory=list)
    new_files: list = field(default_factory=list)  # the ranker's: repo2model.ranking.new_files.NewFolder, best first


@dataclass
class Truth:
    """What the target commit really changed."""

    commit: str
    files: list[str]
    change_types: dict[str, set[str]]
    modules: set[str]
    symbols: set[str]

    @classmethod
    def of(cls, commit: str, chunks: list[dict]) -> "Truth":
        change_types: dict[str, set[str]] = {}
        for chunk in chunks:
            change_types.setdefault(chunk["file"], set()).add(chunk["change_type"])
        return cls(
            commit=commit,
            files=list(dict.fromkeys(chunk["file"] for chunk in chunks)),
            change_types=change_types,
            modules={c["module"] for c in chunks if c.get("module")},
            symbols={c["symbol"] for c in chunks if c.get("symbol")},
        )


def score(pred: Prediction, truth: Truth, ks: Iterable[int] = KS) -> dict:
    """The per-commit metrics of one prediction (None where a metric does not apply)."""
    ks = tuple(ks)
    actual = set(truth.files)
    ranked = [path for path, _ in pred.files]
    row: dict = {"files": len(actual)}
    for k in ks:
        row[f"recall@{k}"] = len(set(ranked[:k]) & actual) / min(k, len(actual)) if actual else None
    first = next((i for i, path in enumerate(ranked) if path in actual), None)
    row["mrr"] = (1.0 / (first + 1) if first is not None else 0.0) if actual else None
    hits = [path for path in ranked[: max(ks)] if path in actual and truth.change_types.get(path)]
    row["change_type_hits"] = len(hits)
    row["change_type_correct"] = sum(pred.change_types.get(path) in truth.change_types[path] for path in hits)
    row["module_acc"] = (float(bool(pred.modules) and pred.modules[0] in truth.modules) if truth.modules else None)
    row["symbol_recall"] = (len(set(pred.symbols) & truth.symbols) / len(truth.symbols) if truth.symbols else None)
    return row


def aggregate(rows: list[dict], ks: Iterable[int] = KS) -> dict:
    """Per-commit rows -> one figure per metric (means over the commits where it applies)."""

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    hits = sum(r.get("change_type_hits", 0) for r in rows)
    out = {f"recall@{k}": mean(f"recall@{k}") for k in ks}
    out["mrr"] = mean("mrr")
    out["change_type_acc"] = sum(r.get("change_type_correct", 0) for r in rows) / hits if hits else None
    out["change_type_files"] = hits
    out["module_acc"] = mean("module_acc")
    out["symbol_recall"] = mean("symbol_recall")
    out["commits"] = len(rows)
    return out


def size_bucket(files: int) -> str:
    for low, high in SIZE_BUCKETS:
        if files >= low and (high is None or files <= high):
            return f"{low}" if low == high else (f"{low}-{high}" if high else f"{low}+")
    return "0"


def by_size(rows: list[dict], ks: Iterable[int] = KS) -> dict[str, dict]:
    """recall@k and mrr per commit-size bucket (changed files), so that large commits are not hidden."""
    buckets: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("files"):
            buckets.setdefault(size_bucket(row["files"]), []).append(row)
    order = [size_bucket(low) for low, _ in SIZE_BUCKETS]
    return {name: {k: v for k, v in aggregate(buckets[name], ks).items()
                   if k.startswith("recall@") or k in ("mrr", "commits")}
            for name in order if name in buckets}


def candidate_recall(candidates: list[str], truth: list[str]) -> float | None:
    """Share of the target's files among its candidates (what no ranking can exceed)."""
    if not truth:
        return None
    return len(set(candidates) & set(truth)) / len(set(truth))


def candidate_recall_by_size(targets: list[tuple[list[str], list[str]]]) -> dict[str, dict]:
    """Candidate recall per commit-size bucket over (candidates, changed files) of each target: the mean
    share, the targets, the mean number of candidates."""
    buckets: dict[str, list[tuple[float, int]]] = {}
    for candidates, truth in targets:
        recall = candidate_recall(candidates, truth)
        if recall is not None:
            buckets.setdefault(size_bucket(len(set(truth))), []).append((recall, len(candidates)))
    order = [size_bucket(low) for low, _ in SIZE_BUCKETS]
    return {name: {"candidate_recall": round(sum(r for r, _ in buckets[name]) / len(buckets[name]), 4),
                   "commits": len(buckets[name]),
                   "candidates": round(sum(n for _, n in buckets[name]) / len(buckets[name]), 1)}
            for name in order if name in buckets}


def fmt(value) -> str:
    """A figure in a report: three decimals, n/a when there is none."""
    return "n/a" if value is None else f"{value:.3f}"
