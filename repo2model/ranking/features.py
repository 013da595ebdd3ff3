"""Candidate files and their named features for one target, computed only from the commits before it.

    for state in walk_targets(...):                           # repo2model.ranking.targets
        rows = candidate_rows(state, FeatureConfig())         # rows.paths, rows.names, rows.features
        x = rows.columns(ranker.features)                     # the matrix a ranker was fitted on, by name

Candidates: the union of every baseline's top `candidates_per_baseline` files, as many of the best co-change
partners of the PARTNER_SOURCES best fused files (files that changed together with the likely ones), the
folder mates of the `sibling_sources` best fused files (up to `siblings_per_folder` each, most recently
changed first), the files an outside scorer names (`lm_extra`) and, with `dense_candidates`, the files of the
parent's tree most similar to the task by embedding; files known to be gone from the parent's tree are
dropped (when the repository is there to say so). Large commits need the last ones: history's lists alone
hold few of their files. Where commits are large, `pool_per_commit_size` x the typical commit size of the best
files of the tree by a cheap pre-score join them (repo2model.ranking.pool).

Features (FEATURES; NaN = unknown, LightGBM's missing value), each computed under its name by one family:
    recency          recent_rank (1 = changed by the last commit), commits_since, days_since (from the
                     latest commit before the target), file_age (commits since its first change)
    frequency        count_all, count_50, count_10 (commits that changed it: all, last 50, last 10)
    co-change        cochange_conf, cochange_support, cochange_rank (rules from the last `recent_commits`
                     commits), cochange_last_conf (from the last commit only), partner_conf, partner_support
                     (rules from the best fused files)
    similar commits  similar_score, similar_rank, similar_best (highest similarity of a similar commit that
                     changed it), similar_hits, similar_best_rank
    code search      code_score, code_rank, code_ratio (score / best score of the target)
    task words       path_overlap (task words in the path), path_overlap_frac, name_in_task (the file's name),
                     module_in_task (its module's words), folder_in_task
    people           author_share (the target author's share of the file's changes), author_changes,
                     file_authors (distinct authors)
    the tree         exists (in the parent's tree), is_test, is_doc, is_config
    folder level     folder_count_50, folder_similar (sum of similar_score in the folder), folder_code (best
                     code_score in the folder), folder_files (files of the folder in the tree)
    fusion           fusion_score, fusion_rank
    the task         task_words, last_commit_files (files of the previous commit)
    relation         fused_partner_conf, fused_partner_support (co-change rules from the top 20 of the fusion's
                     top 200), fused_same_name (top-30 fused files of its name in a sibling folder),
                     fused_same_folder (in its folder), fused_near_folder (in its parent or child folders)
    portable         the same evidence on a scale that does not depend on the history's length or commit size,
                     so that one model can learn it across histories (repo2model.ranking.prior): rate_all,
                     rate_50, rate_10, folder_rate_50 (changes per commit: all, last 50, last 10; its folder's),
                     file_age_share and cochange_support_rate (per commit of the history), recent_rank_s,
                     fusion_rank_s, code_rank_s, similar_rank_s, cochange_rank_s, count_50_s, folder_count_50_s
                     (divided by the typical commit size: the mean files of the last 50 commits), typical_size,
                     tree_size (files of the parent's tree), informative_share (of the history's messages,
                     repo2model.ranking.messages)
TASK_FEATURES are those computed from the task: the ranker's training hides them (missing values) on targets
whose message is uninformative. PRIOR_FEATURES (FEATURES less the counts and ranks whose scale depends on the
history: SCALE_DEPENDENT) are those the prior learns from.
With `dense` on, DENSE_FEATURES follow FEATURES: dense_score (cosine of the task's and the file's embeddings,
all-MiniLM-L6-v2, the file as it is at the parent: repo2model.ranking.dense), dense_rank (among the candidates,
or among every file of the tree with dense_candidates), dense_gap (dense_score less the best one).
The language model adds LM_FEATURES (last) when a scorer is given: lm_logprob (log-probability that the target
starts with the file), lm_rank, lm_gap (lm_logprob less the best candidate's).

FEATURES' order is the column order of the matrix (and of a ranker fitted on it); a ranker takes its columns
by name (`CandidateRows.columns`), so rows built in another order, or lacking a feature, never reach it
misaligned. Rows are saved as <name>.npy + <name>.json (`save_rows`, `load_rows`): no pickle.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from repo2model.core.artifacts import atomic_path, read_json, write_json
from repo2model.core.errors import UserError
from repo2model.ranking.history import folder_of
from repo2model.ranking.pool import RELATION_SOURCES, expanded_pool, relation_counts
from repo2model.ranking.targets import TargetState
from repo2model.retrieval.bm25 import FileSearch, code_words, path_words

FEATURES = (
    "recent_rank", "commits_since", "days_since", "file_age",
    "count_all", "count_50", "count_10",
    "cochange_conf", "cochange_support", "cochange_rank", "cochange_last_conf", "partner_conf", "partner_support",
    "similar_score", "similar_rank", "similar_best", "similar_hits", "similar_best_rank",
    "code_score", "code_rank", "code_ratio",
    "path_overlap", "path_overlap_frac", "name_in_task", "module_in_task", "folder_in_task",
    "author_share", "author_changes", "file_authors",
    "exists", "is_test", "is_doc", "is_config",
    "folder_count_50", "folder_similar", "folder_code", "folder_files",
    "fusion_score", "fusion_rank",
    "task_words", "last_commit_files",
    "fused_partner_conf", "fused_partner_support", "fused_same_name", "fused_same_folder", "fused_near_folder",
    "rate_all", "rate_50", "rate_10", "folder_rate_50", "file_age_share", "cochange_support_rate",
    "recent_rank_s", "fusion_rank_s", "code_rank_s", "similar_rank_s", "cochange_rank_s", "count_50_s",
    "folder_count_50_s", "typical_size", "tree_size", "informative_share",
)
DENSE_FEATURES = ("dense_score", "dense_rank", "dense_gap")
TASK_FEATURES = frozenset({
    "similar_score", "similar_rank", "similar_best", "similar_hits", "similar_best_rank", "code_score", "code_rank",
    "code_ratio", "path_overlap", "path_overlap_frac", "name_in_task", "module_in_task", "folder_in_task",
    "folder_similar", "folder_code", "fusion_score", "fusion_rank", "task_words", "partner_conf", "partner_support",
    "fused_partner_conf", "fused_partner_support", "fused_same_name", "fused_same_folder", "fused_near_folder",
    "fusion_rank_s", "code_rank_s", "similar_rank_s", *DENSE_FEATURES,
})
SCALE_DEPENDENT = frozenset({
    "count_all", "file_age", "folder_files", "author_changes", "commits_since", "recent_rank", "fusion_rank",
    "code_rank", "similar_rank", "cochange_rank", "similar_best_rank", "tree_size", "count_50", "folder_count_50",
    "cochange_support", "partner_support", "fused_partner_support", "file_authors", "count_50_s", "folder_count_50_s",
})
PRIOR_FEATURES = tuple(name for name in FEATURES if name not in SCALE_DEPENDENT)
LM_FEATURES = ("lm_logprob", "lm_rank", "lm_gap")
# (task, the file search at the target's parent, paths) -> {path: cosine}; e.g. repo2model.ranking.dense's
DenseScorer = Callable[[str, FileSearch, list[str]], dict[str, float]]
# paths -> {path: log-probability that the target starts with it} (the language model's)
LMScorer = Callable[[list[str]], dict[str, float]]
Columns = dict[str, list[float]]  # feature name -> one value per candidate path

DOC_EXTENSIONS = frozenset({".md", ".rst", ".txt", ".adoc", ".1", ".html"})
CONFIG_EXTENSIONS = frozenset({".toml", ".yml", ".yaml", ".json", ".cfg", ".ini", ".lock", ".in"})
NAN = float("nan")


@dataclass
class FeatureConfig:
    """How candidates are gathered (saved with the ranker, so that prediction gathers them the same way)."""

    candidates_per_baseline: int = 30
    sibling_sources: int = 5
    siblings_per_folder: int = 10
    dense: bool = False  # DENSE_FEATURES (a DenseScorer must be given to candidate_rows)
    dense_candidates: int = 0  # with dense: the tree's N files nearest the task become candidates too
    # At least this many x the typical commit size of candidates (0 = off). Off by default: on the three
    # agent-written histories (axum-agentic, fd-squash8, click-squash8; bench_prediction.py) 15 raised candidate
    # recall (axum-agentic 0.65 -> 0.94) but lowered recall@5 (0.539 / 0.620 / 0.694 against 0.574 / 0.631 /
    # 0.741 off, each with a prior fitted on rows gathered the same way).
    pool_per_commit_size: int = 0
    pool_max: int = 1000  # but never more than this many from the pre-score
    # The language model scores the best this many candidates by the fusion's rank (0 = all): its scoring was
    # two thirds of axum's train_ranker stage with every candidate (about 100) scored.
    lm_candidates: int = 32

    def __post_init__(self):
        if self.candidates_per_baseline < 1:
            raise ValueError("candidates_per_baseline: must be >= 1")
        if self.pool_per_commit_size < 0 or self.pool_max < 1:
            raise ValueError("pool_per_commit_size: must be >= 0 (0 = off), pool_max >= 1")
        if self.sibling_sources < 0 or self.siblings_per_folder < 0:
            raise ValueError("sibling_sources, siblings_per_folder: must be >= 0")
        if self.dense_candidates < 0:
            raise ValueError("dense_candidates: must be >= 0")
        if self.lm_candidates < 0:
            raise ValueError("lm_candidates: must be >= 0 (0 = all)")

    def names(self, lm: bool = False) -> list[str]:
        """The feature columns candidate_rows gives with these settings."""
        return list(FEATURES) + (list(DENSE_FEATURES) if self.dense else []) + (list(LM_FEATURES) if lm else [])


@dataclass
class CandidateRows:
    """One target's candidate files and their feature rows, one column per name."""

    commit: str
    paths: list[str]
    names: list[str]  # the feature of each column
    features: np.ndarray  # float32 [len(paths), len(names)]
    labels: np.ndarray  # int8 [len(paths)]: 1 = the target changed it (all 0 when there is no truth)

    def columns(self, names: list[str]) -> np.ndarray:
        """The features `names`, in that order (a ranker's); UserError when one is missing."""
        names = list(names)
        if names == self.names[: len(names)]:
            return self.features[:, : len(names)]
        where = {name: i for i, name in enumerate(self.names)}
        missing = [name for name in names if name not in where]
        if missing:
            raise UserError(f"the ranker's features {', '.join(missing)} are not among those computed "
                            f"({len(self.names)} features): rerun the train_ranker stage")
        return self.features[:, [where[name] for name in names]]

    def select(self, names: list[str]) -> "CandidateRows":
        """These rows with only the features `names`, in that order."""
        return CandidateRows(self.commit, self.paths, list(names), self.columns(names), self.labels)

    def with_columns(self, columns: Columns) -> "CandidateRows":
        """These rows with more named columns (replacing those of the same names)."""
        kept = [n for n in self.names if n not in columns]
        names = kept + list(columns)
        matrix = np.empty((len(self.paths), len(names)), dtype=np.float32)
        matrix[:, : len(kept)] = self.columns(kept)
        for j, name in enumerate(columns, start=len(kept)):
            matrix[:, j] = columns[name]
        return CandidateRows(self.commit, self.paths, names, matrix, self.labels)


# ---------------------------------------------------------------- candidates


def candidates(state: TargetState, cfg: FeatureConfig, extra: list[str] = (), nearest: list[str] = ()) -> list[str]:
    """The files worth ranking for this target (see the module docstring), in a fixed order (`nearest`: the
    files nearest the task by embedding, best first)."""
    chosen: dict[str, None] = {}
    for ranking in state.rankings.values():
        for path, _ in ranking[: cfg.candidates_per_baseline]:
            chosen.setdefault(path, None)
    for path in extra:
        chosen.setdefault(path, None)
    for path in nearest:
        chosen.setdefault(path, None)
    for path, _ in sorted(state.partners.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[
            : cfg.candidates_per_baseline]:
        chosen.setdefault(path, None)
    for path in folder_mates(state, cfg):
        chosen.setdefault(path, None)
    paths = list(chosen)
    if state.code is not None:
        blobs = state.code.blobs
        paths = [p for p in paths if p in blobs or p in extra]
    return paths + expanded_pool(state, paths, cfg.pool_per_commit_size, cfg.pool_max)


def folder_mates(state: TargetState, cfg: FeatureConfig) -> list[str]:
    """The files of the best fused files' folders, up to `siblings_per_folder` each, most recently changed first."""
    if not (cfg.sibling_sources and cfg.siblings_per_folder):
        return []
    past = state.past
    folders = {folder_of(p) for p, _ in state.rankings["fusion"][: cfg.sibling_sources]}
    pool = state.code.blobs.keys() if state.code is not None else past.last_seen.keys()
    mates: dict[str, list[str]] = {}
    for path in pool:
        if folder_of(path) in folders and past.searchable(path):
            mates.setdefault(folder_of(path), []).append(path)
    out = []
    for folder in sorted(mates):
        near = sorted(mates[folder], key=lambda p: (-past.last_seen.get(p, -1), p))
        out += near[: cfg.siblings_per_folder]
    return out


# ---------------------------------------------------------------- the rows


def candidate_rows(state: TargetState, cfg: FeatureConfig, lm: LMScorer | None = None, lm_extra: list[str] = (),
                   dense: DenseScorer | None = None) -> CandidateRows:
    """The feature rows of one target's candidates.

    `lm(paths) -> {path: log-probability}` adds LM_FEATURES; `lm_extra` are files only the language model
    proposes (e.g. new files), added to the candidates. `dense` computes DENSE_FEATURES when `cfg.dense`
    (their columns are there, missing values, without it or without the repository).
    """
    scored = cfg.dense and dense is not None and state.code is not None
    tree_scores, nearest = {}, []
    if scored and cfg.dense_candidates:  # every file of the tree scored: the nearest become candidates
        tree_scores = dense(state.target.task, state.code, [p for p in state.code.blobs if state.past.searchable(p)])
        nearest = [p for p, _ in sorted(tree_scores.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.dense_candidates]]
    paths = candidates(state, cfg, lm_extra, nearest)
    columns: Columns = {}
    for family in FAMILIES:
        columns.update(family(state, paths))
    columns.update(portable_features(state, columns, len(paths)))
    if cfg.dense:
        scores = {}
        if scored:  # with dense_candidates, every file of the tree is scored already
            scores = tree_scores if cfg.dense_candidates else dense(state.target.task, state.code, paths)
        columns.update(score_columns(scores, paths, DENSE_FEATURES))
    if lm is not None:
        columns.update(lm_columns(paths, columns["fusion_rank"], lm, cfg.lm_candidates, keep=lm_extra))
    truth = set(state.target.files or ())
    labels = np.array([path in truth for path in paths], dtype=np.int8)
    names = cfg.names(lm=lm is not None)
    return CandidateRows(state.target.commit, paths, names, feature_matrix(columns, names, len(paths)), labels)


def feature_matrix(columns: Columns, names: list[str], n_rows: int) -> np.ndarray:
    """The named columns as a float32 matrix in `names`' order; every name computed, none left over."""
    if set(columns) != set(names) or len(names) != len(set(names)):
        missing, extra = sorted(set(names) - set(columns)), sorted(set(columns) - set(names))
        raise ValueError(f"feature columns disagree with the feature names: missing {missing}, not named {extra}")
    matrix = np.empty((n_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        matrix[:, j] = columns[name]
    return matrix


def ranks_of(values: dict[str, float], wanted: list[str]) -> dict[str, int]:
    """1 + how many files score strictly higher, for each wanted file that has a value."""
    present = [p for p in wanted if p in values]
    if not present:
        return {}
    ordered = np.sort(np.fromiter(values.values(), dtype=np.float64, count=len(values)))
    mine = np.array([values[p] for p in present], dtype=np.float64)
    ranks = len(ordered) - np.searchsorted(ordered, mine, side="right") + 1
    return dict(zip(present, ranks.tolist()))


def lm_columns(paths: list[str], fusion_rank: list[float], lm: LMScorer, limit: int, keep=()) -> Columns:
    """LM_FEATURES of `paths`: the language model scores the best `limit` of them by the fusion's rank (every one
    when 0), and those in `keep`; the others' columns are missing values."""
    scored = paths
    if limit and len(paths) > limit:
        order = sorted(range(len(paths)), key=lambda i: (fusion_rank[i] if fusion_rank[i] == fusion_rank[i]
                                                         else float("inf"), i))
        chosen = {paths[i] for i in order[:limit]} | set(keep)
        scored = [p for p in paths if p in chosen]
    return score_columns(lm(scored), paths, LM_FEATURES)


def score_columns(scores: dict[str, float], paths: list[str], names: tuple[str, str, str]) -> Columns:
    """An outside scorer's (score, rank among the candidates, score less the best) under `names`."""
    score, rank, gap = names
    ranks = ranks_of(scores, paths)
    best = max(scores.values(), default=NAN)
    values = [scores.get(path, NAN) for path in paths]
    return {score: values, rank: [ranks.get(path, NAN) for path in paths], gap: [v - best for v in values]}


# ---------------------------------------------------------------- the feature families (module docstring)


def recency_features(state: TargetState, paths: list[str]) -> Columns:
    past = state.past
    recent = ranks_of({p: float(s) for p, s in past.last_seen.items()}, paths)
    seen = [past.last_seen.get(path) for path in paths]
    return {
        "recent_rank": [recent.get(path, NAN) for path in paths],
        "commits_since": [past.position - s if s is not None else NAN for s in seen],
        "days_since": [max(0.0, past.time - past.last_time[path]) / 86400.0 if s is not None else NAN
                       for path, s in zip(paths, seen)],
        "file_age": [past.position - past.first_seen[path] if s is not None else NAN for path, s in zip(paths, seen)],
    }


def frequency_features(state: TargetState, paths: list[str]) -> Columns:
    past = state.past
    return {"count_all": [past.file_commits.get(path, 0) for path in paths],
            "count_50": [past.counts_50.get(path, 0) for path in paths],
            "count_10": [past.counts_10.get(path, 0) for path in paths]}


def cochange_features(state: TargetState, paths: list[str]) -> Columns:
    rules, partners = state.rules, state.partners
    last = state.past.cochange_rules(1)
    rank = ranks_of({p: c + s * 1e-6 for p, (c, s) in rules.items()}, paths)
    return {
        "cochange_conf": [rules[path][0] if path in rules else 0.0 for path in paths],
        "cochange_support": [rules[path][1] if path in rules else 0.0 for path in paths],
        "cochange_rank": [rank.get(path, NAN) for path in paths],
        "cochange_last_conf": [last[path][0] if path in last else 0.0 for path in paths],
        "partner_conf": [partners[path][0] if path in partners else 0.0 for path in paths],
        "partner_support": [partners[path][1] if path in partners else 0.0 for path in paths],
    }


def similar_features(state: TargetState, paths: list[str]) -> Columns:
    similar = state.similar
    rank = ranks_of({p: e.score for p, e in similar.items()}, paths)
    found = [similar.get(path) for path in paths]
    return {
        "similar_score": [e.score if e else 0.0 for e in found],
        "similar_rank": [rank.get(path, NAN) for path in paths],
        "similar_best": [e.best if e else 0.0 for e in found],
        "similar_hits": [e.hits if e else 0.0 for e in found],
        "similar_best_rank": [e.best_rank if e else NAN for e in found],
    }


def code_features(state: TargetState, paths: list[str]) -> Columns:
    scores = state.code_scores or {}
    rank = ranks_of(scores, paths)
    best = max(scores.values(), default=0.0)
    return {
        "code_score": [scores.get(path, 0.0) if state.code_scores is not None else NAN for path in paths],
        "code_rank": [rank.get(path, NAN) for path in paths],
        "code_ratio": [scores.get(path, 0.0) / best if best > 0 else NAN for path in paths],
    }


def task_word_features(state: TargetState, paths: list[str]) -> Columns:
    task = set(state.task_words)
    columns: Columns = {name: [] for name in ("path_overlap", "path_overlap_frac", "name_in_task",
                                              "module_in_task", "folder_in_task")}
    for path in paths:
        info = path_info(path)
        overlap = len(task & info.words)
        module = state.past.file_module.get(path)
        module_words = module_word_set(module) if module else frozenset()
        columns["path_overlap"].append(overlap)
        columns["path_overlap_frac"].append(overlap / len(info.words) if info.words else 0.0)
        columns["name_in_task"].append(float(bool(info.name_words) and info.name_words <= task))
        columns["module_in_task"].append(len(module_words & task) / len(module_words) if module_words else NAN)
        columns["folder_in_task"].append(len(info.folder_words & task) / len(info.folder_words)
                                         if info.folder_words else NAN)
    return columns


def people_features(state: TargetState, paths: list[str]) -> Columns:
    author = state.target.author
    counts = [state.past.file_authors.get(path) for path in paths]
    return {
        "author_share": [c[author] / sum(c.values()) if c and author else NAN for c in counts],
        "author_changes": [c[author] if c and author else NAN for c in counts],
        "file_authors": [len(c) if c else 0.0 for c in counts],
    }


def tree_features(state: TargetState, paths: list[str]) -> Columns:
    kinds = [path_info(path).kind for path in paths]
    return {"exists": [state.in_tree(path) for path in paths],
            "is_test": [k[0] for k in kinds], "is_doc": [k[1] for k in kinds], "is_config": [k[2] for k in kinds]}


def folder_features(state: TargetState, paths: list[str]) -> Columns:
    folder_50: dict[str, float] = {}
    for path, n in state.past.counts_50.items():
        if n > 0:
            folder_50[folder_of(path)] = folder_50.get(folder_of(path), 0.0) + n
    folder_similar: dict[str, float] = {}
    for path, entry in state.similar.items():
        folder_similar[folder_of(path)] = folder_similar.get(folder_of(path), 0.0) + entry.score
    folder_code: dict[str, float] = {}
    folder_files: dict[str, int] = {}
    if state.code is not None:
        for path, score in (state.code_scores or {}).items():
            folder_code[folder_of(path)] = max(folder_code.get(folder_of(path), 0.0), score)
        for path in state.code.blobs:
            folder_files[folder_of(path)] = folder_files.get(folder_of(path), 0) + 1
    folders = [path_info(path).folder for path in paths]
    tree = state.code is not None
    return {"folder_count_50": [folder_50.get(f, 0.0) for f in folders],
            "folder_similar": [folder_similar.get(f, 0.0) for f in folders],
            "folder_code": [folder_code.get(f, 0.0) if tree else NAN for f in folders],
            "folder_files": [folder_files.get(f, 0) if tree else NAN for f in folders]}


def fusion_features(state: TargetState, paths: list[str]) -> Columns:
    fused = dict(state.rankings["fusion"])
    rank = {p: r for r, (p, _) in enumerate(state.rankings["fusion"], start=1)}
    return {"fusion_score": [fused.get(path, 0.0) for path in paths],
            "fusion_rank": [rank.get(path, NAN) for path in paths]}


def task_features(state: TargetState, paths: list[str]) -> Columns:
    last_files = len(state.past.recent[-1]) if state.past.recent else 0
    return {"task_words": [len(state.task_words)] * len(paths), "last_commit_files": [last_files] * len(paths)}


def relation_features(state: TargetState, paths: list[str]) -> Columns:
    partners = state.fused_partners
    same_name, same_folder, near = relation_counts(paths, state.fused[:RELATION_SOURCES])
    return {"fused_partner_conf": [partners[path][0] if path in partners else 0.0 for path in paths],
            "fused_partner_support": [partners[path][1] if path in partners else 0.0 for path in paths],
            "fused_same_name": same_name, "fused_same_folder": same_folder, "fused_near_folder": near}


FAMILIES = (recency_features, frequency_features, cochange_features, similar_features, code_features,
            task_word_features, people_features, tree_features, folder_features, fusion_features, task_features,
            relation_features)


def portable_features(state: TargetState, columns: Columns, n_rows: int) -> Columns:
    """The portable family, from the other families' columns (NaN stays NaN)."""
    past = state.past
    commits, size = max(1, past.position), past.typical_size()

    def per(name: str, by: float) -> list[float]:
        return [value / by for value in columns[name]]

    tree = len(state.code.blobs) if state.code is not None and state.code.blobs else NAN
    return {
        "rate_all": per("count_all", commits), "rate_50": per("count_50", min(50, commits)),
        "rate_10": per("count_10", min(10, commits)), "folder_rate_50": per("folder_count_50", min(50, commits)),
        "file_age_share": per("file_age", commits), "cochange_support_rate": per("cochange_support", commits),
        **{f"{name}_s": per(name, size) for name in ("recent_rank", "fusion_rank", "code_rank", "similar_rank",
                                                    "cochange_rank", "count_50", "folder_count_50")},
        "typical_size": [size] * n_rows, "tree_size": [tree] * n_rows,
        "informative_share": [past.message_counts.informative_share()] * n_rows,
    }


def without_task(rows: CandidateRows) -> CandidateRows:
    """The rows with TASK_FEATURES missing (NaN): what a target whose message says nothing may teach."""
    hidden = [j for j, name in enumerate(rows.names) if name in TASK_FEATURES]
    features = rows.features.copy()
    features[:, hidden] = np.nan
    return CandidateRows(rows.commit, rows.paths, rows.names, features, rows.labels)


def task_hidden(rows: list[CandidateRows], commits: set[str]) -> list[CandidateRows]:
    """The rows of many targets, those of `commits` without their task's features (`without_task`)."""
    return [without_task(r) if r.commit in commits else r for r in rows]


# ---------------------------------------------------------------- what a path alone says


@dataclass(frozen=True)
class PathInfo:
    """What a path alone says (cached: the same paths come back at every target)."""

    folder: str
    words: frozenset[str]
    name_words: frozenset[str]
    folder_words: frozenset[str]
    kind: tuple[float, float, float]


@lru_cache(maxsize=1 << 16)
def path_info(path: str) -> PathInfo:
    folder = folder_of(path)
    return PathInfo(folder, frozenset(path_words(path)),
                    frozenset(path_words(posixpath.splitext(posixpath.basename(path))[0])),
                    frozenset(path_words(folder)), file_kind(path))


@lru_cache(maxsize=1 << 16)
def file_kind(path: str) -> tuple[float, float, float]:
    """(is_test, is_doc, is_config) from the path alone."""
    words = set(path_words(path))
    ext = posixpath.splitext(path)[1].lower()
    name = posixpath.basename(path).lower()
    is_test = float(bool(words & {"test", "tests", "spec", "testing"}))
    is_doc = float(ext in DOC_EXTENSIONS or name.startswith(("readme", "changelog", "license")) or "doc" in words)
    return is_test, is_doc, float(ext in CONFIG_EXTENSIONS)


@lru_cache(maxsize=1 << 14)
def module_word_set(module: str) -> frozenset[str]:
    return frozenset(code_words(module))


# ---------------------------------------------------------------- the language model's scores


def lm_scorer(score_files: Callable[[list[tuple[str, str | None]]], list[dict]], modules: dict[str, str]) -> LMScorer:
    """An LMScorer over a language model's `score_files([(path, module)]) -> [{"path", "logprob"}]` (the
    predictor's, with the prompt bound), each file asked with the module its chunks last had."""

    def lm(paths: list[str]) -> dict[str, float]:
        return {s["path"]: float(s["logprob"]) for s in score_files([(p, modules.get(p)) for p in paths])}

    return lm


# ---------------------------------------------------------------- saving rows


def save_rows(folder: Path, name: str, rows: list[CandidateRows], settings: dict) -> None:
    """`rows` as <name>.npy (every target's rows, one float32 matrix) and <name>.json (`settings`, the feature
    names, and per target its commit, paths, changed paths and number of columns: the first that many names)."""
    names = max((r.names for r in rows), key=len, default=[])
    matrix = np.full((sum(len(r.paths) for r in rows), len(names)), np.nan, dtype=np.float32)
    start = 0
    targets = []
    for r in rows:
        if r.names != names[: len(r.names)]:
            raise ValueError(f"{r.commit}: rows of other features than {names}")
        matrix[start: start + len(r.paths), : len(r.names)] = r.features
        start += len(r.paths)
        targets.append({"commit": r.commit, "paths": r.paths, "changed": np.flatnonzero(r.labels).tolist(),
                        "columns": len(r.names)})
    with atomic_path(folder / f"{name}.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, matrix, allow_pickle=False)
    write_json(folder / f"{name}.json", {"settings": settings, "names": names, "targets": targets}, indent=None)


def load_rows(folder: Path, name: str) -> tuple[dict, dict[str, CandidateRows]] | None:
    """What `save_rows` wrote: (settings, {commit: rows}); None when there is none."""
    meta_path, matrix_path = folder / f"{name}.json", folder / f"{name}.npy"
    if not (meta_path.is_file() and matrix_path.is_file()):
        return None
    try:
        meta = read_json(meta_path)
        matrix = np.load(matrix_path, allow_pickle=False)
    except (OSError, ValueError, UserError):  # unreadable: the rows are computed again
        return None
    out, start = {}, 0
    for target in meta["targets"]:
        n, width = len(target["paths"]), target["columns"]
        labels = np.zeros(n, dtype=np.int8)
        labels[target["changed"]] = 1
        out[target["commit"]] = CandidateRows(target["commit"], target["paths"], meta["names"][:width],
                                              matrix[start: start + n, :width], labels)
        start += n
    return meta["settings"], out

