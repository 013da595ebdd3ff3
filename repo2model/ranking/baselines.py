"""Predictors that need no model: each ranks files from the history's statistics (`history.PastCommits`),
best first, ties broken by path.

    rankings = baseline_rankings(past, similar, code_scores, depth=100)     # {name: [(path, score), ...]}
    predictions = baseline_predictions(past, rankings, 10)                  # {name: metrics.Prediction}

    frequent         files changed most often
    recent           files changed most recently
    cochange         association rules x -> y (Zimmermann et al., ROSE): support = commits that changed x
                     and y, confidence = support / commits that changed x; the antecedents are the files of
                     the last `recent_commits` commits; a file scores its best rule (confidence, then support)
    similar_commits  BugLocator's "similar bug reports" (Zhou et al. 2012): BM25 of the task against every
                     earlier commit message; a file scores the sum, over the `similar_commits` most similar
                     commits that changed it, of similarity / that commit's file count
    code_search      BM25 of the task against every file's content at the target's parent, path words
                     weighted up (`bm25.FileSearch`; needs the repository)
    fusion           reciprocal-rank fusion (Cormack et al. 2009) of recent, cochange, similar_commits and
                     code_search: sum of 1 / (fusion_k + rank) over the members that rank the file

A baseline's structure (change types, modules, symbols) comes from the same history: a file's most frequent
change type, the module its chunks last had, its most often changed symbols (`structure`).
"""

from __future__ import annotations

import heapq
from collections import Counter

from repo2model.ranking.history import PastCommits, SimilarFile
from repo2model.ranking.metrics import Prediction

# Fusion members: the signals that need no mining of types or symbols.
FUSION_MEMBERS = ("recent", "cochange", "similar_commits", "code_search")
BASELINES = ("frequent", "recent", "cochange", "similar_commits", "code_search", "fusion")


def ranked(scores: dict[str, float], limit: int) -> list[tuple[str, float]]:
    """The `limit` best (path, score) pairs, best first, ties by path."""
    return heapq.nsmallest(limit, scores.items(), key=lambda kv: (-kv[1], kv[0]))


def frequent(past: PastCommits, limit: int) -> list[tuple[str, float]]:
    total = max(1, past.position)
    top = heapq.nsmallest(limit, past.file_commits.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(path, count / total) for path, count in top]


def most_recent(past: PastCommits, limit: int) -> list[tuple[str, float]]:
    top = heapq.nsmallest(limit, past.last_seen.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(path, 1.0 / (past.position - seen)) for path, seen in top]


def cochange(past: PastCommits, limit: int, rules: dict[str, tuple[float, int]] | None = None
             ) -> list[tuple[str, float]]:
    """Files by their best rule (`rules`: past.cochange_rules() when already computed)."""
    rules = past.cochange_rules() if rules is None else rules
    top = heapq.nsmallest(limit, rules.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return [(path, conf) for path, (conf, _) in top]


def similar_commits(past: PastCommits, task_words: list[str], limit: int) -> list[tuple[str, float]]:
    files, _ = past.similar_files(task_words)
    return ranked({path: entry.score for path, entry in files.items()}, limit)


def code_search(past: PastCommits, code_scores: dict[str, float], limit: int) -> list[tuple[str, float]]:
    """The file search's scores (`FileSearch.search`) without the files no predictor can name."""
    return ranked({p: s for p, s in code_scores.items() if past.searchable(p)}, limit)


def fusion(rankings: dict[str, list[tuple[str, float]]], k: int, limit: int,
           members: tuple[str, ...] = FUSION_MEMBERS) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion of the members' rankings: sum of 1 / (k + rank), rank 1 = best."""
    scores: dict[str, float] = {}
    for name in members:
        for rank, (path, _) in enumerate(rankings.get(name, []), start=1):
            scores[path] = scores.get(path, 0.0) + 1.0 / (k + rank)
    return ranked(scores, limit)


def baseline_rankings(past: PastCommits, similar: dict[str, SimilarFile], code_scores: dict[str, float] | None,
                      depth: int, rules: dict[str, tuple[float, int]] | None = None
                      ) -> dict[str, list[tuple[str, float]]]:
    """Every baseline's top `depth` files for one target, from its similar-commit evidence
    (`past.similar_files`), code-search scores (code_search only when `code_scores` is given) and co-change
    rules (`past.cochange_rules()`, computed when not given)."""
    rankings = {
        "frequent": frequent(past, depth),
        "recent": most_recent(past, depth),
        "cochange": cochange(past, depth, rules),
        "similar_commits": ranked({path: entry.score for path, entry in similar.items()}, depth),
    }
    if code_scores is not None:
        rankings["code_search"] = code_search(past, code_scores, depth)
    rankings["fusion"] = fusion(rankings, past.cfg.fusion_k, depth)
    return rankings


def structure(past: PastCommits, files: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """For predicted files: change types (each file's most frequent), modules (in file order) and symbols
    (each file's `symbols_per_file` most often changed)."""
    change_types, modules, symbols = {}, [], []
    for path in files:
        main = past.main_change_type(path)
        if main:
            change_types[path] = main
        module = past.file_module.get(path)
        if module and module not in modules:
            modules.append(module)
        top = sorted(past.file_symbols.get(path, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))
        symbols.extend(s for s, _ in top[: past.cfg.symbols_per_file] if s not in symbols)
    return change_types, modules, symbols


def baseline_predictions(past: PastCommits, rankings: dict[str, list[tuple[str, float]]], limit: int
                         ) -> dict[str, Prediction]:
    """Each baseline's top `limit` files with their structure, as a Prediction to score."""
    predictions = {}
    for name, ranking in rankings.items():
        change_types, modules, symbols = structure(past, [p for p, _ in ranking[:limit]])
        predictions[name] = Prediction(ranking[:limit], change_types, modules, symbols)
    return predictions
