"""The walk to each target commit: what a prediction for it may know, and nothing after it.

    for state in walk_targets(paths.commits, paths.chunks, {hash: "test", ...}, BaselineConfig(), repo):
        state.past, state.code, state.rankings ...      # state is only valid inside the loop

One streaming pass over commits.json + chunks.jsonl: at each target the `PastCommits` statistics hold
exactly the commits before it (in commits.json's order) and the `FileSearch` holds the tree of its first
parent; the target is yielded, then observed. Nothing about the target itself is used but its task (the
commit message, or the task `tasks` gives it), its author and its parent (the tree the change starts from).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from repo2model.core.artifacts import iter_commits_with_chunks, read_commits_metadata
from repo2model.core.errors import UserError
from repo2model.git.commands import open_repository
from repo2model.ranking.baselines import baseline_rankings, fusion
from repo2model.ranking.history import BaselineConfig, PastCommits, SimilarFile, commit_author, rendered_files
from repo2model.retrieval.bm25 import FileSearch, code_words

log = logging.getLogger("features")

PARTNER_SOURCES = 5  # the best fused files whose co-change partners are candidates (partner_conf)
FUSED_DEPTH = 200  # the longer fused list that large commits' candidates and relations are drawn from
FUSED_PARTNER_SOURCES = 20  # the best fused files whose co-change partners count for large commits (p20_*)


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
    rankings: dict[str, list[tuple[str, float]]]  # every baseline's top files
    fused: list[str] = field(default_factory=list)  # the fusion's top FUSED_DEPTH files (members that deep too)
    fused_partners: dict[str, tuple[float, int]] = field(default_factory=dict)  # co-change from the top 20 fused

    def in_tree(self, path: str) -> float:
        """1.0: the file is in the parent's tree, 0.0: not (a new file), NaN: unknown (no repository)."""
        return float(path in self.code.blobs) if self.code is not None else float("nan")


def walk_targets(commits_path: Path, chunks_path: Path, targets: dict[str, str], cfg: BaselineConfig,
                 repo: Path | None = None, mined_until: int | None = None, depth: int = 100,
                 on_commit: Callable[[dict, list[dict]], None] | None = None,
                 past: PastCommits | None = None, tasks: dict[str, str] | None = None,
                 report_missing: bool = True) -> Iterator[TargetState]:
    """One state per target commit (targets: hash -> split name), in commits.json's order.

    `repo`: the repository (for code_search and the tree); None leaves them out. `mined_until`: the last
    position whose commit is mined (None: every commit before each target). `on_commit(commit, chunks)` is
    called for every commit after the past has taken it in (e.g. to keep another view of the history).
    `past`: the statistics to fill (PastCommits(cfg) when None); once the walk is done they hold the whole
    history. File versions whose blob the repository lacks (partial clone, pruned mirror) stay in the tree but
    out of the code search; their number is logged at the end (unless `report_missing` is false: a second walk
    over targets a first one already reported). `tasks`: commit -> the task to ask with instead of its message
    (e.g. the real task of a squashed commit whose message is boilerplate).
    """
    past = PastCommits(cfg) if past is None else past
    code = FileSearch(repo, path_weight=cfg.code_path_weight) if repo is not None else None
    searched = code
    try:
        for position, (commit, chunks) in enumerate(iter_commits_with_chunks(commits_path, chunks_path)):
            split = targets.get(commit["hash"])
            if split is not None:
                parents = commit.get("parents") or []
                task = tasks.get(commit["hash"]) if tasks else None
                target = Target(commit=commit["hash"], position=position,
                                task=task if task is not None else commit.get("message") or "",
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
        if report_missing and searched is not None and searched.missing:
            log.warning("code search: %d file versions of the targets' parent trees left out, their blobs missing "
                        "from %s (partial clone or pruned mirror)", len(searched.missing), searched.repo)


def state_at(past: PastCommits, code: FileSearch | None, target: Target, depth: int = 100) -> TargetState:
    """The state for `target` given the past (moves the file search to the target's parent).

    The baselines are ranked FUSED_DEPTH deep once; each baseline's top `depth` files are a prefix of that (ties
    are broken by path), and the fusion of those prefixes is the fused ranking of `depth` members."""
    words = code_words(target.task)
    code_scores = None
    if code is not None:
        code.move_to(target.parent)
        code_scores = code.search(words)
    similar, _ = past.similar_files(words)
    rules = past.cochange_rules()
    deep = baseline_rankings(past, similar, code_scores, max(depth, FUSED_DEPTH), rules)
    rankings = {name: ranking[:depth] for name, ranking in deep.items() if name != "fusion"}
    rankings["fusion"] = fusion(rankings, past.cfg.fusion_k, depth)
    fused = [p for p, _ in deep["fusion"][:FUSED_DEPTH]]
    partners = past.rules_from({p for p, _ in rankings["fusion"][:PARTNER_SOURCES]})
    return TargetState(target, past, code, words, similar, rules, partners, code_scores, rankings, fused,
                       past.rules_from(set(fused[:FUSED_PARTNER_SOURCES])))


def repository_of(commits_path: Path) -> Path | None:
    """The repository commits.json was scraped from (its metadata), when it is still there; else None."""
    try:
        repo = read_commits_metadata(commits_path).get("repository")
    except UserError:
        return None
    return open_repository_named(repo)


def open_repository_named(repo: str | None) -> Path | None:
    """The repository at `repo` (as commits.json's metadata names it), when it is still there; else None."""
    try:
        return open_repository(repo) if repo else None
    except UserError:
        return None
