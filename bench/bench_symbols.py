"""What the user gets from the symbol ranker: the parts of bench/bench_context.py that measure it.

bench_context.py calls these for each history (its --work folder, test commits and index; run it, not this):
    attach_symbols(ranking, ranker_dir)      the symbol ranker train_ranker fitted (none: today's fusion only)
    predictions_at(ranking, task, n)         at a test commit (the statistics of the commits before it): the
                                             ranker's prediction with the symbol ranker's symbols, the same with
                                             today's untrained fusion's symbols, and the symbol ranker's scorer
    evaluate_packs(index, test, ...)         per test commit, at 1k / 2k / 4k / 8k tokens:
        served    the pack the service builds (context.service_pack, `index.pack`: fused by default): the
                  ranker's files with the symbol ranker's symbols and the guided search's hits
        learned   the pack chosen for recall per token (`index.pack: chosen`, context.chosen_pack: the symbol
                  ranker's probabilities over the units of the predicted files and of the guided search's hits,
                  a greedy knapsack)
        today     the fixed order (`pack: ordered`) with the untrained fusion's symbols (the service's pack
                  before the symbol ranker)
        hybrid    the search alone (dense + BM25, fused), no predictions
        oracle    the fixed-order pack guided by the commit's true files (no symbols)
      context recall (the share of the commit's changed symbols whose code at the parent is in the pack, as
      bench_context counts it) and precision (the share of the pack's tokens that belong to changed symbols:
      an entry of a changed symbol counts whole, a whole-file entry by the share of its lines that changed
      symbols span); symbol recall@5/@10 over the same candidates for the symbol ranker, today's fusion (its
      symbols file by file, as the prediction lists them) and each single signal.
    print_symbol_results(results)            the tables, and where the served pack loses (by commit size)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from repo2model.ranking.file_ranking import FileRanking
from repo2model.ranking.metrics import size_bucket
from repo2model.ranking.symbol_features import symbol_rows, unit_key
from repo2model.ranking.symbol_history import SymbolHistory
from repo2model.ranking.symbol_ranker import SymbolRanker
from repo2model.ranking.symbol_training import SIGNALS, recall_row
from repo2model.retrieval.context import build_context, chosen_pack, gather_candidates, service_pack
from repo2model.serving.prediction import Prediction
from repo2model.serving.predictor import apply_ranker

BUDGETS = (1000, 2000, 4000, 8000)
PACKS = ("served", "learned", "today", "hybrid", "oracle")


@dataclass
class SymbolResult:
    """One history's figures, per test commit."""

    recall: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    precision: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    sizes: list[str] = field(default_factory=list)  # each test commit's size bucket (changed files)
    symbol_rows: dict[str, list[dict]] = field(default_factory=dict)  # method -> recall rows
    candidates: list[float] = field(default_factory=list)  # share of the truth among the candidates
    has_ranker: bool = False


def attach_symbols(ranking: FileRanking, ranker_dir) -> bool:
    """The ranker folder's symbol ranker on `ranking`, with an empty history for the replay to fill."""
    symbols = SymbolRanker.load(ranker_dir)
    if symbols is not None:
        ranking.use_symbols(symbols, SymbolHistory())
    return symbols is not None


def predictions_at(ranking: FileRanking, task: str, max_files: int) -> tuple[Prediction, Prediction, object]:
    """(the prediction with the symbol ranker's symbols, the same with today's fusion's symbols, the scorer)."""
    learned = apply_ranker(ranking, Prediction(task), [], max_files)
    scorer = ranking.symbol_scorer(learned)
    symbols, ranking.symbol_ranker = ranking.symbol_ranker, None
    try:
        today = apply_ranker(ranking, Prediction(task), [], max_files)
    finally:
        ranking.symbol_ranker = symbols
    return learned, today, scorer


def evaluate_packs(index, test, count_tokens, context_files: int, predicted_share: float, result: SymbolResult,
                   recall) -> None:
    """The five packs at every budget, and the symbol rankings over the learned pack's candidates (see the
    module docstring); `recall(pack, truth)` is bench_context's."""
    task = test.message[:4000]
    result.sizes.append(size_bucket(test.files))
    searched: dict[str, list] = {}

    def search_as(name: str):
        def search(query, mode="guided", files=(), modules=()):
            if name not in searched:  # one search per pack; every budget packs from the same hits
                searched[name] = index.search(query, mode=mode, files=files, modules=modules)
            return searched[name]
        return search

    for budget in BUDGETS:
        packs = {
            "today": build_context(task, test.ranked, index.units_of, search_as("today"), budget, count_tokens,
                                   context_files, "guided", predicted_share),
            "hybrid": build_context(task, Prediction(task), index.units_of, search_as("hybrid"), budget,
                                    count_tokens, context_files, "hybrid", predicted_share),
            "oracle": build_context(task, test.oracle, index.units_of, search_as("oracle"), budget, count_tokens,
                                    context_files, "guided", predicted_share),
        }
        if test.scorer is not None:
            packs["served"] = service_pack(task, test.learned, index.units_of, search_as("today"), budget,
                                           count_tokens, index.cfg, test.scorer)
            packs["learned"] = chosen_pack(task, test.learned, index.units_of, search_as("today"), budget,
                                           count_tokens, test.scorer, context_files, "guided")
        for name, pack in packs.items():
            result.recall.setdefault((name, budget), []).append(recall(pack, test.truth))
            result.precision.setdefault((name, budget), []).append(precision(pack, test.truth))
    if test.scorer is not None:
        result.has_ranker = True
        symbol_recalls(index, test, context_files, search_as("today"), result)


def symbol_recalls(index, test, context_files: int, search, result: SymbolResult) -> None:
    """Symbol recall@5/@10 over the learned pack's candidates: the ranker, today's fusion, each signal."""
    truth = {(t.path, t.symbol) for t in test.truth}
    found = gather_candidates(test.message[:4000], test.learned, index.units_of, search, test.scorer, context_files,
                              "guided")
    units = found.units
    result.candidates.append(len({unit_key(u) for u in units} & truth) / len(truth))
    order = sorted(range(len(units)), key=lambda i: (-found.p[i], units[i].path, units[i].start))
    rankings = {"symbol_ranker": [unit_key(units[i]) for i in order],
                "fusion": [(f.path, s) for f in test.ranked.files[:10] for s in f.symbols]}
    rows = symbol_rows(test.scorer.context, units)
    for name, (feature, sign) in SIGNALS.items():
        if feature in rows.names:
            values = rows.columns([feature])[:, 0]
            rank = rows.columns(["file_rank"])[:, 0]
            keyed = sorted(range(len(units)), key=lambda i: (np.isnan(values[i]), -sign * np.nan_to_num(values[i]),
                                                              np.nan_to_num(rank[i], nan=1e9), units[i].path,
                                                              units[i].start))
            rankings[name] = [unit_key(units[i]) for i in keyed]
    for name, ranking in rankings.items():
        result.symbol_rows.setdefault(name, []).append(recall_row(ranking, truth, test.files))


def precision(pack, truth) -> float:
    """The share of the pack's tokens that belong to changed symbols (see the module docstring)."""
    total = sum(e.tokens for e in pack)
    if not total:
        return 0.0
    useful = 0.0
    for entry in pack:
        if entry.kind != "file" and any(t.path == entry.path and t.symbol == entry.symbol for t in truth):
            useful += entry.tokens
        elif entry.kind == "file" and entry.full:
            lines = set()
            for t in truth:
                if t.path == entry.path and entry.start <= t.start and t.end <= entry.end:
                    lines.update(range(t.start, t.end + 1))
            useful += entry.tokens * len(lines) / max(1, entry.end - entry.start + 1)
    return useful / total


# ---------------------------------------------------------------- output


def print_symbol_results(named: list[tuple[str, SymbolResult]]) -> None:
    named = [(name, r) for name, r in named if r.recall]
    if not named:
        return
    print("\nContext recall / precision (share of the pack's tokens in changed symbols) by budget:")
    header = " | ".join(f"{p} @{b // 1000}k" for b in BUDGETS for p in PACKS)
    print(f"| history | {header} |")
    print("|---|" + "---|" * (len(BUDGETS) * len(PACKS)))
    for name, r in named:
        cells = " | ".join(cell(r, p, b) for b in BUDGETS for p in PACKS)
        print(f"| {name} | {cells} |")
    print("\nSymbol recall@5 / @10 over the learned pack's candidates (the changed symbols that existed at the parent):")
    methods = list(dict.fromkeys(m for _, r in named for m in r.symbol_rows))
    print("| history | candidates hold | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for name, r in named:
        cells = " | ".join(
            f"{np.mean([x['recall@5'] for x in r.symbol_rows[m]]):.3f} / "
            f"{np.mean([x['recall@10'] for x in r.symbol_rows[m]]):.3f}" if m in r.symbol_rows else "-"
            for m in methods)
        print(f"| {name} | {np.mean(r.candidates) if r.candidates else 0:.3f} | {cells} |")
    print_losses(named)


def cell(r: SymbolResult, pack: str, budget: int) -> str:
    if (pack, budget) not in r.recall:
        return "-"
    return f"{np.mean(r.recall[(pack, budget)]):.3f} / {np.mean(r.precision[(pack, budget)]):.2f}"


def print_losses(named: list[tuple[str, SymbolResult]]) -> None:
    """Recall of the served pack and plain hybrid search per commit size, and the commits where it loses."""
    print("\nWhere the served pack loses to plain hybrid search, by commit size (changed files): "
          "served / hybrid recall @2k, @4k (commits)")
    for name, r in named:
        if ("served", 2000) not in r.recall:
            continue
        cells = []
        for bucket in dict.fromkeys(sorted(r.sizes, key=lambda b: int(b.split("-")[0].rstrip("+")))):
            rows = [i for i, s in enumerate(r.sizes) if s == bucket]
            parts = []
            for budget in (2000, 4000):
                served = np.mean([r.recall[("served", budget)][i] for i in rows])
                hybrid = np.mean([r.recall[("hybrid", budget)][i] for i in rows])
                parts.append(f"{served:.2f}/{hybrid:.2f}")
            cells.append(f"{bucket}: {', '.join(parts)} ({len(rows)})")
        losses = {b: sum(r.recall[("served", b)][i] < r.recall[("hybrid", b)][i] for i in range(len(r.sizes)))
                  for b in BUDGETS}
        print(f"  {name}: " + "; ".join(cells) + "; commits lost @1k/2k/4k/8k: "
              + "/".join(str(losses[b]) for b in BUDGETS))


def result_dict(r: SymbolResult) -> dict:
    return {"context_recall": {f"{p}@{b}": float(np.mean(v)) for (p, b), v in r.recall.items()},
            "precision": {f"{p}@{b}": float(np.mean(v)) for (p, b), v in r.precision.items()},
            "symbol_recall": {m: {k: float(np.mean([x[k] for x in rows])) for k in ("recall@5", "recall@10")}
                              for m, rows in r.symbol_rows.items()},
            "candidate_recall": float(np.mean(r.candidates)) if r.candidates else None,
            "sizes": r.sizes}
