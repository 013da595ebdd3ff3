"""Training the symbol ranker (train_ranker's own step) and its figures (there and in evaluate.py).

    ranker = train_symbol_ranker(SymbolTraining(paths, targets, rows, booster, names, ...))   # or None
    figures = symbol_figures(test_targets, ranker)       # symbol recall@5/@10 of it, the fusion, each signal
    evaluation = SymbolEvaluation(file_ranker, symbols_per_file)   # the same figures in evaluate.py's walk

The same chronological targets as the file ranker and the same rules: each target's features come from the
commits before it (repo2model.ranking.targets.walk_targets; the SymbolHistory is answered as of the target)
and the tree at its parent. The candidates are the units of the file ranker's best SYMBOL_FILES files at the
parent (and a few units of the code search's best other files, as the index's hits are at prediction time).

The file ranker's scores are features, so they must be what prediction would see: on its own train targets
the file ranker is optimistic (it learned them). The symbol ranker is therefore fitted on the later half of
the train targets, ranked by a file ranker fitted on the earlier half only; val targets (early stopping and the
calibration) and test targets (the figures) are ranked by the file ranker itself, which never trained on them.

The truth of a target: the symbols it changed that existed at its parent (modified, deleted, moved, renamed
units; their name and file at the parent), the only ones a unit of the parent can be.
Symbol recall@k: |the first k distinct (file, symbol) of a ranking ∩ truth| / min(k, |truth|); per commit size
(changed files) too, like the file figures.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.core.progress import progress
from repo2model.ranking.config import FitSettings
from repo2model.ranking.features import CandidateRows, candidate_rows
from repo2model.ranking.history import BaselineConfig
from repo2model.ranking.metrics import aggregate, by_size, fmt
from repo2model.ranking.ranker import fit_lambdarank, importances, ranked
from repo2model.ranking.symbol_features import SymbolContext, symbol_rows, unit_key
from repo2model.ranking.symbol_history import Key, SymbolHistory
from repo2model.ranking.symbol_ranker import (
    FILE_RANKS,
    SEARCH_FILES,
    SYMBOL_FILES,
    SymbolRanker,
    TreeUnits,
    fit_symbol_ranker,
)
from repo2model.ranking.symbols import SymbolIndexes, rank_symbols
from repo2model.ranking.targets import TargetState, walk_targets
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.units import IndexUnit

log = logging.getLogger("ranking")

KEPT_PREFIXES = ("MODIFIED_", "DELETED_", "MOVED_", "RENAMED_")  # changes of a unit the parent already had
MAX_TRAIN_TARGETS = 800  # the latest train targets the symbol ranker learns from (its rows are large)
SYMBOL_KS = (5, 10)
# The single signals compared with the ranker: a feature, and whether larger is better.
SIGNALS = {"bm25": ("unit_bm25", 1), "name_bm25": ("name_bm25", 1), "recency": ("sym_since", -1),
           "frequency": ("sym_changes", 1), "similar_commits": ("similar_score", 1), "cochange": ("cochange_conf", 1),
           "dense": ("dense_score", 1), "file_order": ("file_rank", -1)}


@dataclass
class SymbolTarget:
    """One target's candidate units, their rows and what the figures compare."""

    commit: str
    split: str
    rows: CandidateRows
    units: list[IndexUnit]
    truth: set[Key]
    files: int  # changed files (the commit's size)
    fusion: list[Key]  # the untrained fusion's symbols (ranking.symbols.rank_symbols), file by file


@dataclass
class SymbolTraining:
    """What train_ranker hands the symbol ranker's step."""

    paths: ArtifactPaths
    targets: dict[str, str]  # commit -> split, as the file ranker's
    rows: dict[str, list[CandidateRows]]  # the file ranker's rows per split, in history order
    booster: lgb.Booster  # the file ranker
    names: list[str]  # its features
    fit: FitSettings
    seed: int
    baselines: BaselineConfig
    repo: Path | None
    index: IndexConfig


def changed_at_parent(chunks: list[dict]) -> set[Key]:
    """The (file, symbol) pairs at the parent that a commit changed (see the module docstring)."""
    return {(c.get("old_file") or c["file"], c.get("old_symbol") or c["symbol"]) for c in chunks
            if c.get("kind") != "hunk" and (c.get("old_symbol") or c.get("symbol"))
            and c["change_type"].startswith(KEPT_PREFIXES)}


def file_ranking(booster: lgb.Booster, names: list[str], rows: CandidateRows) -> list[tuple[str, float]]:
    """A target's candidate files by the file ranker's score, best first."""
    if not len(rows.paths):
        return []
    return ranked(rows.paths, booster.predict(rows.columns(names)))


def file_ranks(ranked: list[tuple[str, float]]) -> dict[str, tuple[int, float]]:
    return {path: (rank, score) for rank, (path, score) in enumerate(ranked[:FILE_RANKS], start=1)}


def target_rows(state: TargetState, ranked: list[tuple[str, float]], history: SymbolHistory, tree: TreeUnits,
                indexes: SymbolIndexes, symbols_per_file: int, dense: bool = False) -> SymbolTarget:
    """One target's symbol candidates and rows (valid after the walk moves on), and the fusion's symbols."""
    target, past, words = state.target, state.past, state.task_words
    _, similar = past.similar_files(words)
    files = [path for path, _ in ranked[:SYMBOL_FILES]]
    units: list[IndexUnit] = []
    if state.code is not None:
        searched = heapq.nsmallest(SEARCH_FILES + len(files), (state.code_scores or {}).items(),
                                   key=lambda kv: (-kv[1], kv[0]))
        others = [path for path, _ in searched if path not in files][:SEARCH_FILES]
        units = tree.candidates(state.code, files, others, words)
    context = SymbolContext(words, target.position, history, similar, file_ranks(ranked))
    truth = changed_at_parent(target.chunks or [])
    rows = symbol_rows(context, units, truth, target.commit, dense)
    fusion = [(path, symbol) for path in files
              for symbol in rank_symbols(past, path, [], words, symbols_per_file, index=indexes.get(past, path, state.code))]
    return SymbolTarget(target.commit, target.split, rows, units, truth, len(target.files or ()), fusion)


def train_symbol_ranker(job: SymbolTraining) -> SymbolRanker | None:
    """The symbol ranker, with the history it needs at prediction time and its test figures in `metrics`;
    None without the repository (no tree to take units from) or without a changed unit among the candidates."""
    if job.repo is None:
        log.warning("symbol ranker: the repository is not there (no units at the parents): left out")
        return None
    started = time.monotonic()
    train = job.rows["train"]
    half = len(train) // 2
    early = job.booster
    if half:
        try:
            early = fit_lambdarank(train[:half], job.rows["val"], job.names, job.fit, job.seed)
        except UserError:  # no changed file among the earlier half's candidates: the file ranker itself
            half = 0
    chosen = train[half:][-MAX_TRAIN_TARGETS:]
    ranked = {r.commit: file_ranking(early, job.names, r) for r in chosen}
    ranked.update({r.commit: file_ranking(job.booster, job.names, r) for s in ("val", "test") for r in job.rows[s]})
    history = SymbolHistory()
    collected: dict[str, list[SymbolTarget]] = {"train": [], "val": [], "test": []}
    tree, indexes = TreeUnits(job.index), SymbolIndexes()
    walk = walk_targets(job.paths.commits, job.paths.chunks, {c: job.targets[c] for c in ranked}, job.baselines,
                        job.repo, on_commit=lambda commit, chunks: history.observe(chunks),
                        report_missing=False)  # the file ranker's walk over these targets reported them
    for state in progress(walk, total=len(ranked), desc="symbol features", unit="targets"):
        collected[state.target.split].append(
            target_rows(state, ranked[state.target.commit], history, tree, indexes, job.baselines.symbols_per_file))
    fitted = fit_symbol_ranker([t.rows for t in collected["train"]], [t.rows for t in collected["val"]], job.fit,
                               job.seed)
    if fitted is None:
        return None
    fitted.history = history
    fitted.metrics = {
        "targets": {split: len(found) for split, found in collected.items()},
        "file_ranker_for_train_targets": "fitted on the earlier half of the train targets" if half else "itself",
        "trees": fitted.booster.num_trees(),
        "seconds": round(time.monotonic() - started, 2),
        "test": symbol_figures(collected["test"], fitted),
        "feature_importance": importances(fitted.booster),
    }
    log.info("symbol ranker: %d train targets, %d trees; test symbol recall@10 %s (fusion %s)",
             len(collected["train"]), fitted.booster.num_trees(),
             fmt(fitted.metrics["test"]["overall"].get("symbol_ranker", {}).get("recall@10")),
             fmt(fitted.metrics["test"]["overall"].get("fusion", {}).get("recall@10")))
    return fitted


# ---------------------------------------------------------------- figures


def recall_row(ranking: list[Key], truth: set[Key], files: int) -> dict:
    """recall@5/@10 and MRR of one ranking of (file, symbol) pairs (repeats dropped)."""
    order = list(dict.fromkeys(ranking))
    row: dict = {"files": files}
    for k in SYMBOL_KS:
        row[f"recall@{k}"] = len(set(order[:k]) & truth) / min(k, len(truth))
    first = next((i for i, key in enumerate(order) if key in truth), None)
    row["mrr"] = 1.0 / (first + 1) if first is not None else 0.0
    return row


def signal_ranking(target: SymbolTarget, feature: str, sign: int) -> list[Key]:
    """The candidates by one feature (those without a value last), ties in file order."""
    if feature not in target.rows.names:
        return []
    values = target.rows.columns([feature])[:, 0]
    rank = target.rows.columns(["file_rank"])[:, 0]

    def order(i: int):
        value = values[i]
        return (np.isnan(value), -sign * (0.0 if np.isnan(value) else value),
                np.nan_to_num(rank[i], nan=1e9), target.units[i].path, target.units[i].start)

    return [unit_key(target.units[i]) for i in sorted(range(len(target.units)), key=order)]


def symbol_figures(targets: list[SymbolTarget], ranker: SymbolRanker | None) -> dict:
    """Symbol recall@5/@10 and MRR of the ranker, the untrained fusion and each single signal, over the targets
    with a truth; per commit size; and the candidates' recall (what no ranking of them can pass)."""
    rows: dict[str, list[dict]] = {}
    reach = []
    for target in targets:
        if not target.truth:
            continue
        reach.append(len({unit_key(u) for u in target.units} & target.truth) / len(target.truth))
        rankings = {"fusion": target.fusion}
        if ranker is not None and len(target.units):
            scores = ranker.scores(target.rows)
            order = sorted(range(len(target.units)), key=lambda i: (-scores[i], target.units[i].path,
                                                                    target.units[i].start))
            rankings["symbol_ranker"] = [unit_key(target.units[i]) for i in order]
        elif ranker is not None:
            rankings["symbol_ranker"] = []
        for name, (feature, sign) in SIGNALS.items():
            if feature in target.rows.names and not (feature.startswith("dense") and
                                                     np.isnan(target.rows.columns([feature])).all()):
                rankings[name] = signal_ranking(target, feature, sign)
        for name, ranking in rankings.items():
            rows.setdefault(name, []).append(recall_row(ranking, target.truth, target.files))
    keep = ("recall@5", "recall@10", "mrr", "commits")
    return {"overall": {name: {k: v for k, v in aggregate(r, SYMBOL_KS).items() if k in keep}
                        for name, r in rows.items()},
            "by_size": {name: by_size(r, SYMBOL_KS) for name, r in rows.items()},
            "candidate_recall": round(float(np.mean(reach)), 4) if reach else None,
            "targets": len(reach)}


# ---------------------------------------------------------------- in evaluate.py


class SymbolEvaluation:
    """The symbol ranker's figures on evaluate.py's targets (the same as train_ranker's on its test targets):
    feed it every commit of the walk (`on_commit`) and each target (`add`), then `figures()`."""

    def __init__(self, ranker, symbols_per_file: int, index: IndexConfig | None = None):
        self.ranker = ranker  # the file ranker (ranker.Ranker), or None
        self.symbols = SymbolRanker.load(ranker.folder) if ranker is not None else None
        self.symbols_per_file = symbols_per_file
        self.history = SymbolHistory()
        self.tree, self.indexes = TreeUnits(index), SymbolIndexes()
        self.targets: list[SymbolTarget] = []

    def on_commit(self, commit: dict, chunks: list[dict]) -> None:
        self.history.observe(chunks)

    def add(self, state: TargetState, rows: CandidateRows | None) -> None:
        """One target, its files ranked by the file ranker (`rows`: its rows when already built)."""
        if self.symbols is None or state.code is None:
            return
        if rows is None:
            rows = candidate_rows(state, self.ranker.candidates(), dense=self.ranker.dense_scorer())
        ranked = self.ranker.rank(rows)
        self.targets.append(target_rows(state, ranked, self.history, self.tree, self.indexes, self.symbols_per_file,
                                        self.symbols.dense))

    def figures(self) -> dict:
        """{"symbols": symbol recall of the symbol ranker, the fusion and each signal} ({} without a ranker)."""
        return {"symbols": symbol_figures(self.targets, self.symbols)} if self.symbols is not None else {}


def symbol_report(result: dict) -> list[str]:
    """evaluation.md's section on the symbol ranker (none without one)."""
    figures = result.get("symbols")
    if not figures or not figures.get("overall"):
        return []
    intro = (f"Symbol recall of {figures['targets']} targets' changed symbols that existed at the parent, ranked "
             f"among the units of the ranker's top {SYMBOL_FILES} files (they hold "
             f"{fmt(figures['candidate_recall'])} of them).")
    lines = ["", "## Symbols", "", intro, "", "| ranking | recall@5 | recall@10 | MRR |", "|---|---|---|---|"]
    for name, row in figures["overall"].items():
        lines.append(f"| {name} | {fmt(row.get('recall@5'))} | {fmt(row.get('recall@10'))} | {fmt(row.get('mrr'))} |")
    lines += ["", "Per commit size (changed files), recall@10: " + "; ".join(
        f"{bucket}: " + ", ".join(f"{name} {fmt(sizes[bucket].get('recall@10'))}" for name, sizes in
                                 figures["by_size"].items() if name in ("symbol_ranker", "fusion") and bucket in sizes)
        for bucket in figures["by_size"].get("symbol_ranker", {}))]
    return lines
