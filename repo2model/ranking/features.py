"""Candidate files and their features for each target commit, computed only from the commits before it.

    for state in walk_targets(paths.commits, paths.chunks, {hash: "test", ...}, BaselineConfig(), repo):
        rows = candidate_rows(state, FeatureConfig())      # rows.paths, rows.features [n, len(FEATURES)]
        ...                                                # state is only valid inside the loop

One streaming pass over commits.json + chunks.jsonl: at each target the `PastCommits` statistics hold
exactly the commits before it (in commits.json's order) and the `FileSearch` holds the tree of its first
parent; the target is yielded, then observed. Nothing about the target itself is used but its task (the
commit message), its author and its parent (the tree the change starts from).

Candidates: the union of every baseline's top `candidates_per_baseline` files, as many of the best co-change
partners of the PARTNER_SOURCES best fused files (files that changed together with the likely ones), the
folder mates of the `sibling_sources` best fused files (up to `siblings_per_folder` each, most recently
changed first), the files an outside scorer names (`lm_extra`) and, with `dense_candidates`, the files of the
parent's tree most similar to the task by embedding; files known to be gone from the parent's tree are
dropped (when the repository is there to say so). Large commits need the last ones: history's lists alone
hold few of their files.

Features (FEATURES; NaN = unknown, LightGBM's missing value):
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
With `dense` on, DENSE_FEATURES follow FEATURES: dense_score (cosine of the task's and the file's embeddings,
all-MiniLM-L6-v2, the file as it is at the parent: retrieval.FileEmbeddings), dense_rank (among the candidates,
or among every file of the tree with dense_candidates), dense_gap (dense_score less the best one).
The language model adds LM_FEATURES (last) when a scorer is given: lm_logprob (log-probability that the target
starts with the file), lm_rank, lm_gap (lm_logprob less the best candidate's).
"""

from __future__ import annotations

import logging
import math
import posixpath
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from repo2model.core.artifacts import iter_commits_with_chunks, read_commits_metadata
from repo2model.ranking.baselines import (
    BaselineConfig, PastCommits, SimilarFile, baseline_rankings, commit_author, folder_of, rendered_files,
)
from repo2model.core.errors import UserError
from repo2model.git.commands import open_repository
from repo2model.retrieval.bm25 import FileSearch, code_words, path_words

log = logging.getLogger("features")

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
)
DENSE_FEATURES = ("dense_score", "dense_rank", "dense_gap")
LM_FEATURES = ("lm_logprob", "lm_rank", "lm_gap")
# (task, the FileSearch at the target's parent, paths) -> {path: cosine}; e.g. retrieval.FileEmbeddings'
DenseScorer = Callable[[str, FileSearch, list[str]], dict[str, float]]

PARTNER_SOURCES = 5  # the best fused files whose co-change partners are candidates (partner_conf)
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

    def __post_init__(self):
        if self.candidates_per_baseline < 1:
            raise ValueError("candidates_per_baseline: must be >= 1")
        if self.sibling_sources < 0 or self.siblings_per_folder < 0:
            raise ValueError("sibling_sources, siblings_per_folder: must be >= 0")
        if self.dense_candidates < 0:
            raise ValueError("dense_candidates: must be >= 0")

    def names(self, lm: bool = False) -> list[str]:
        """The feature columns candidate_rows gives with these settings."""
        return list(FEATURES) + (list(DENSE_FEATURES) if self.dense else []) + (list(LM_FEATURES) if lm else [])


@dataclass
class Target:
    """A commit whose files are to be predicted, as far as a prediction may know it."""

    commit: str
    position: int  # in commits.json
    task: str  # its message
    author: str  # lower-cased e-mail (or name); "" when unknown
    parent: str | None  # the tree the change starts from (first parent)
    split: str = ""
    files: list[str] | None = None  # the truth: rendered files (None when predicting for real)
    chunks: list[dict] | None = None


@dataclass
class TargetState:
    """Everything known at one target (valid only until the walk moves on)."""

    target: Target
    past: PastCommits
    code: FileSearch | None
    task_words: list[str]
    similar: dict[str, SimilarFile]  # similar_commits' evidence per file
    rules: dict[str, tuple[float, int]]  # co-change: each file's best rule (confidence, support)
    partners: dict[str, tuple[float, int]]  # co-change from the best fused files instead of the last commits
    code_scores: dict[str, float] | None
    rankings: dict[str, list[tuple[str, float]]]


@dataclass
class CandidateRows:
    """One target's candidate files and their feature rows (FEATURES, then LM_FEATURES when scored)."""

    commit: str
    paths: list[str]
    features: np.ndarray  # float32 [len(paths), n_features]
    labels: np.ndarray  # int8 [len(paths)]: 1 = the target changed it (all 0 when there is no truth)


def walk_targets(commits_path: Path, chunks_path: Path, targets: dict[str, str], cfg: BaselineConfig,
                 repo: Path | None = None, mined_until: int | None = None, depth: int = 100,
                 on_commit: Callable[[dict, list[dict]], None] | None = None) -> Iterator[TargetState]:
    """One state per target commit (targets: hash -> split name), in commits.json's order.

    `repo`: the repository (for code_search and the tree); None leaves them out. `mined_until`: the last
    position whose commit is mined (None: every commit before each target). `on_commit(commit, chunks)` is
    called for every commit after the past has taken it in (e.g. to keep another view of the history).
    File versions whose blob the repository lacks (partial clone, pruned mirror) stay in the tree but out of
    the code search; their number is logged at the end.
    """
    past = PastCommits(cfg)
    code = FileSearch(repo, path_weight=cfg.code_path_weight) if repo is not None else None
    searched = code
    try:
        for position, (commit, chunks) in enumerate(iter_commits_with_chunks(commits_path, chunks_path)):
            split = targets.get(commit["hash"])
            if split is not None:
                parents = commit.get("parents") or []
                target = Target(commit=commit["hash"], position=position, task=commit.get("message") or "",
                                author=commit_author(commit), parent=parents[0] if parents else None, split=split,
                                files=rendered_files(chunks), chunks=chunks)
                try:
                    state = state_at(past, code, target, depth)
                except UserError as exc:  # the repository lost the commit (rewritten, gc'd): go on without it
                    log.warning("code search and the tree are left out from commit %s on: %s", target.commit[:12], exc)
                    code.close()
                    code = None
                    state = state_at(past, None, target, depth)
                yield state
            past.observe(commit, chunks, mine=mined_until is None or position <= mined_until)
            if on_commit is not None:
                on_commit(commit, chunks)
    finally:
        if code is not None:
            code.close()
        if searched is not None and searched.missing:
            log.warning("code search: %d file versions of the targets' parent trees left out, their blobs missing "
                        "from %s (partial clone or pruned mirror)", len(searched.missing), searched.repo)


def state_at(past: PastCommits, code: FileSearch | None, target: Target, depth: int = 100) -> TargetState:
    """The state for `target` given the past (moves the file search to the target's parent)."""
    words = code_words(target.task)
    code_scores = None
    if code is not None:
        code.move_to(target.parent)
        code_scores = code.search(words)
    similar, _ = past.similar_files(words)
    rules = past.cochange_rules()
    rankings = baseline_rankings(past, similar, code_scores, depth, rules)
    partners = past.rules_from({p for p, _ in rankings["fusion"][:PARTNER_SOURCES]})
    return TargetState(target, past, code, words, similar, rules, partners, code_scores, rankings)


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
    if cfg.sibling_sources and cfg.siblings_per_folder:
        past = state.past
        folders = {folder_of(p) for p, _ in state.rankings["fusion"][: cfg.sibling_sources]}
        pool = state.code.blobs.keys() if state.code is not None else past.last_seen.keys()
        mates: dict[str, list[str]] = {}
        for path in pool:
            if folder_of(path) in folders and past.searchable(path):
                mates.setdefault(folder_of(path), []).append(path)
        for folder in sorted(mates):
            near = sorted(mates[folder], key=lambda p: (-past.last_seen.get(p, -1), p))
            for path in near[: cfg.siblings_per_folder]:
                chosen.setdefault(path, None)
    paths = list(chosen)
    if state.code is not None:
        blobs = state.code.blobs
        paths = [p for p in paths if p in blobs or p in extra]
    return paths


# ---------------------------------------------------------------- features


def ranks_of(values: dict[str, float], wanted: list[str]) -> dict[str, int]:
    """1 + how many files score strictly higher, for each wanted file that has a value."""
    present = [p for p in wanted if p in values]
    if not present:
        return {}
    ordered = np.sort(np.fromiter(values.values(), dtype=np.float64, count=len(values)))
    mine = np.array([values[p] for p in present], dtype=np.float64)
    ranks = len(ordered) - np.searchsorted(ordered, mine, side="right") + 1
    return dict(zip(present, ranks.tolist()))


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


def candidate_rows(state: TargetState, cfg: FeatureConfig, lm: Callable[[list[str]], dict[str, float]] | None = None,
                   lm_extra: list[str] = (), dense: DenseScorer | None = None) -> CandidateRows:
    """The feature rows of one target's candidates.

    `lm(paths) -> {path: log-probability}` adds LM_FEATURES; `lm_extra` are files only the language model
    proposes (e.g. new files), added to the candidates. `dense` computes DENSE_FEATURES when `cfg.dense`
    (their columns are there, missing values, without it or without the repository).
    """
    past, target = state.past, state.target
    scored = cfg.dense and dense is not None and state.code is not None
    dense_scores, nearest = {}, []
    if scored and cfg.dense_candidates:  # every file of the tree scored: the nearest become candidates
        dense_scores = dense(target.task, state.code, [p for p in state.code.blobs if past.searchable(p)])
        nearest = [p for p, _ in sorted(dense_scores.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.dense_candidates]]
    paths = candidates(state, cfg, lm_extra, nearest)
    if scored and not cfg.dense_candidates:  # only the candidates scored
        dense_scores = dense(target.task, state.code, paths)
    n_features = len(cfg.names(lm=lm is not None))
    rows = np.full((len(paths), n_features), np.nan, dtype=np.float32)
    task = set(state.task_words)

    recent = ranks_of({p: float(s) for p, s in past.last_seen.items()}, paths)
    rules = state.rules
    rules_last = past.cochange_rules(1)
    rule_rank = ranks_of({p: c + s * 1e-6 for p, (c, s) in rules.items()}, paths)
    similar = state.similar
    similar_rank = ranks_of({p: e.score for p, e in similar.items()}, paths)
    code_scores = state.code_scores or {}
    code_rank = ranks_of(code_scores, paths)
    code_best = max(code_scores.values(), default=0.0)
    fusion = dict(state.rankings["fusion"])
    fusion_rank = {p: r for r, (p, _) in enumerate(state.rankings["fusion"], start=1)}

    folder_50: dict[str, float] = {}
    for path, n in past.counts_50.items():
        if n > 0:
            folder_50[folder_of(path)] = folder_50.get(folder_of(path), 0.0) + n
    folder_sim: dict[str, float] = {}
    for path, entry in similar.items():
        folder_sim[folder_of(path)] = folder_sim.get(folder_of(path), 0.0) + entry.score
    folder_code: dict[str, float] = {}
    folder_files: dict[str, int] = {}
    if state.code is not None:
        for path, score in code_scores.items():
            f = folder_of(path)
            folder_code[f] = max(folder_code.get(f, 0.0), score)
        for path in state.code.blobs:
            f = folder_of(path)
            folder_files[f] = folder_files.get(f, 0) + 1
    last_files = len(past.recent[-1]) if past.recent else 0
    lm_scores = lm(paths) if lm is not None else {}
    lm_rank = ranks_of(lm_scores, paths)
    lm_best = max(lm_scores.values(), default=NAN)
    dense_rank = ranks_of(dense_scores, paths)
    dense_best = max(dense_scores.values(), default=NAN)

    for i, path in enumerate(paths):
        seen = past.last_seen.get(path)
        info = path_info(path)
        folder, word_set, name_words, folder_words = info.folder, info.words, info.name_words, info.folder_words
        overlap = len(task & word_set)
        module = past.file_module.get(path)
        module_words = module_word_set(module) if module else frozenset()
        authors = past.file_authors.get(path)
        sim: SimilarFile | None = similar.get(path)
        rule = rules.get(path)
        kind = info.kind
        values = [
            recent.get(path, NAN),
            past.position - seen if seen is not None else NAN,
            max(0.0, past.time - past.last_time[path]) / 86400.0 if seen is not None else NAN,
            past.position - past.first_seen[path] if seen is not None else NAN,
            past.file_commits.get(path, 0),
            past.counts_50.get(path, 0),
            past.counts_10.get(path, 0),
            rule[0] if rule else 0.0,
            rule[1] if rule else 0.0,
            rule_rank.get(path, NAN),
            rules_last[path][0] if path in rules_last else 0.0,
            state.partners[path][0] if path in state.partners else 0.0,
            state.partners[path][1] if path in state.partners else 0.0,
            sim.score if sim else 0.0,
            similar_rank.get(path, NAN),
            sim.best if sim else 0.0,
            sim.hits if sim else 0.0,
            sim.best_rank if sim else NAN,
            code_scores.get(path, 0.0) if state.code_scores is not None else NAN,
            code_rank.get(path, NAN),
            code_scores.get(path, 0.0) / code_best if code_best > 0 else NAN,
            overlap,
            overlap / len(word_set) if word_set else 0.0,
            float(bool(name_words) and name_words <= task),
            len(module_words & task) / len(module_words) if module_words else NAN,
            len(folder_words & task) / len(folder_words) if folder_words else NAN,
            authors[target.author] / sum(authors.values()) if authors and target.author else NAN,
            authors[target.author] if authors and target.author else NAN,
            len(authors) if authors else 0.0,
            float(path in state.code.blobs) if state.code is not None else NAN,
            *kind,
            folder_50.get(folder, 0.0),
            folder_sim.get(folder, 0.0),
            folder_code.get(folder, 0.0) if state.code is not None else NAN,
            folder_files.get(folder, 0) if state.code is not None else NAN,
            fusion.get(path, 0.0),
            fusion_rank.get(path, NAN),
            len(state.task_words),
            last_files,
        ]
        if cfg.dense:
            cosine = dense_scores.get(path, NAN)
            values += [cosine, dense_rank.get(path, NAN), cosine - dense_best]
        if lm is not None:
            score = lm_scores.get(path, NAN)
            values += [score, lm_rank.get(path, NAN), score - lm_best]
        rows[i] = values
    truth = set(target.files or ())
    labels = np.array([path in truth for path in paths], dtype=np.int8)
    return CandidateRows(commit=target.commit, paths=paths, features=rows, labels=labels)


def repository_of(commits_path: Path) -> Path | None:
    """The repository commits.json was scraped from (its metadata), when it is still there; else None."""
    try:
        repo = read_commits_metadata(commits_path).get("repository")
        return open_repository(repo) if repo else None
    except UserError:
        return None


@lru_cache(maxsize=1 << 14)
def module_word_set(module: str) -> frozenset[str]:
    return frozenset(code_words(module))


def candidate_recall(rows: CandidateRows, truth: list[str]) -> float | None:
    """Share of the target's files among its candidates (what no ranking can exceed)."""
    if not truth:
        return None
    return len(set(rows.paths) & set(truth)) / len(set(truth))


def finite_or_none(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None
