"""Candidates for large commits, and how files relate to the likeliest ones by name and folder.

    extra = expanded_pool(state, paths, per_size=15, most=1000)   # files to add to the candidates `paths`

A history of large commits (coding agents', squashed ones) has the usual candidates hold few of a commit's
files. N = per_size x the history's typical commit size (PastCommits.typical_size: the mean files of its last
50 commits), at most `most`; when N exceeds the candidates, the N best files of the candidates and the
searchable files of the parent's tree, by a reciprocal-rank fusion (k = 60) of five cheap rankings, join them:
    fused      rank in the fusion's top FUSED_DEPTH files (TargetState.fused)
    partners   co-change from the top 20 fused files (confidence, then support)
    recency    the most recently changed first
    frequency  changes in the last 50 commits (then in all)
    relation   how many of the top 30 fused files have its name in a sibling folder, or share its folder
On fd, click and axum (a few files per commit) the candidates already outnumber N, so nothing changes; on
axum-agentic (28 files per commit) the share of a test commit's files among its candidates rises from 0.65 to
0.94 (0.94 on commits of 11-30 files, 0.93 on 31 and more).

`relation_counts` also gives the ranker's features fused_same_name, fused_same_folder and fused_near_folder.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from repo2model.ranking.history import folder_of
from repo2model.ranking.targets import TargetState

RELATION_SOURCES = 30  # the top fused files that files are related to by name and folder
FUSION_K = 60
UNRANKED = 10000  # the rank of a file a ranking does not hold


def relation_counts(paths: list[str], seeds: list[str]) -> tuple[list[int], list[int], list[int]]:
    """For each path, how many of the `seeds` (other than itself): have its file name in a folder that differs
    from its own in exactly one component (a sibling module's file of the same name); share its folder; are in
    its parent folder or in one of its direct subfolders."""
    seeds_set = set(seeds)
    folders = Counter(folder_of(s) for s in seeds_set)
    below = Counter()  # folder -> seeds in its direct subfolders
    for folder, n in folders.items():
        if folder:
            below[folder_of(folder)] += n
    by_name: dict[tuple[int, str], list[list[str]]] = {}
    for seed in seeds_set:
        parts = seed.split("/")
        by_name.setdefault((len(parts), parts[-1]), []).append(parts)
    same_name, same_folder, near = [], [], []
    for path in paths:
        parts = path.split("/")
        named = by_name.get((len(parts), parts[-1]), ())
        same_name.append(sum(1 for other in named if other != parts
                             and sum(a != b for a, b in zip(parts[:-1], other[:-1])) == 1))
        folder = folder_of(path)
        same_folder.append(folders.get(folder, 0) - (path in seeds_set))
        near.append((folders.get(folder_of(folder), 0) if folder else 0) + below.get(folder, 0))
    return same_name, same_folder, near


def expanded_pool(state: TargetState, paths: list[str], per_size: int, most: int) -> list[str]:
    """The files that join the candidates `paths` (see the module docstring), in path order; [] when the
    candidates already number N or `per_size` is 0."""
    if not per_size:
        return []
    past = state.past
    wanted = min(most, int(per_size * past.typical_size()))
    if wanted <= len(paths):
        return []
    chosen = set(paths)
    tree = state.code.blobs if state.code is not None else past.last_seen
    pool = list(paths) + sorted(p for p in tree if p not in chosen and past.searchable(p))
    scores = prescore(state, pool)
    best = np.argsort(-scores, kind="stable")[:wanted]
    return sorted(pool[i] for i in best if pool[i] not in chosen)


def prescore(state: TargetState, pool: list[str]) -> np.ndarray:
    """The reciprocal-rank fusion of the five cheap rankings (module docstring) over `pool`."""
    past = state.past
    fused = {p: rank for rank, p in enumerate(state.fused, start=1)}
    partners = state.fused_partners
    same_name, same_folder, _ = relation_counts(pool, state.fused[:RELATION_SOURCES])
    related = np.array(same_name, dtype=np.float64) + np.array(same_folder, dtype=np.float64)
    partner = np.array([partners[p][0] + 1e-3 * partners[p][1] if p in partners else 0.0 for p in pool])
    last = np.array([past.last_seen.get(p, -1) for p in pool], dtype=np.float64)
    frequency = np.array([past.counts_50.get(p, 0) + 1e-3 * past.file_commits.get(p, 0) for p in pool])
    ranks = [
        np.array([fused.get(p, UNRANKED + 1) for p in pool], dtype=np.float64),
        np.where(partner > 0, rank_min(partner), UNRANKED),
        np.where(last >= 0, rank_min(last), UNRANKED),
        np.where([past.file_commits.get(p, 0) > 0 for p in pool], rank_min(frequency), UNRANKED),
        np.where(related > 0, rank_min(related), UNRANKED),
    ]
    return sum(1.0 / (FUSION_K + r) for r in ranks)


def rank_min(values: np.ndarray) -> np.ndarray:
    """1 + how many values are strictly greater (the highest value ranks 1; ties share the best rank)."""
    ordered = np.sort(values)
    return (len(values) - np.searchsorted(ordered, values, side="right") + 1).astype(np.float64)
