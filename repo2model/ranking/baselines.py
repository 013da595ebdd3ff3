"""What the history before a target commit says about the files it will change: predictors that need no model.

    past = PastCommits(BaselineConfig())
    for commit, chunks in history:                  # oldest first
        ... past.frequent(10), past.similar_commits(code_words(task), 10) ...   # only what came before
        past.observe(commit, chunks)

`PastCommits` holds statistics mined from the commits observed so far (nothing is ever read ahead), and
each baseline ranks files from them, best first, ties broken by path:

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
change type, the module its chunks last had, its most often changed symbols (`PastCommits.structure`).

`mine=False` in `observe` records a commit as seen (recency, antecedents, messages) without adding it to the
mined counts (evaluation's `mine_from: train`).
"""

from __future__ import annotations

import heapq
import posixpath
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from repo2model.retrieval.bm25 import BM25Index, code_words

RECENT_WINDOW = 50  # commits whose files count as "recent" (counts in the last 50, recency windows)

# Fusion members (issue 9): the signals that need no mining of types or symbols.
FUSION_MEMBERS = ("recent", "cochange", "similar_commits", "code_search")
BASELINES = ("frequent", "recent", "cochange", "similar_commits", "code_search", "fusion")


@dataclass
class BaselineConfig:
    """The baselines' settings (the `evaluate` section's keys of the same names)."""

    recent_commits: int = 3
    rules_min_support: int = 1
    rules_min_confidence: float = 0.0
    rules_max_commit_files: int = 30
    similar_commits: int = 50
    code_path_weight: int = 3
    fusion_k: int = 60
    symbols_per_file: int = 5

    def __post_init__(self):
        if not 1 <= self.recent_commits <= RECENT_WINDOW:
            raise ValueError(f"recent_commits: must be between 1 and {RECENT_WINDOW}")
        if self.rules_min_support < 1:
            raise ValueError("rules_min_support: must be >= 1")
        if not 0.0 <= self.rules_min_confidence <= 1.0:
            raise ValueError("rules_min_confidence: must be between 0 and 1")
        if self.rules_max_commit_files < 2:
            raise ValueError("rules_max_commit_files: must be >= 2")
        if self.similar_commits < 1:
            raise ValueError("similar_commits: must be >= 1")
        if self.code_path_weight < 0:
            raise ValueError("code_path_weight: must be >= 0")
        if self.fusion_k < 1:
            raise ValueError("fusion_k: must be >= 1")
        if self.symbols_per_file < 0:
            raise ValueError("symbols_per_file: must be >= 0")


def rendered_files(chunks: list[dict]) -> list[str]:
    """The files of a commit as the commit language renders them (those with chunks), in order.

    Files without chunks (binary, filtered) are invisible to the model, so they count for no predictor.
    """
    return list(dict.fromkeys(chunk["file"] for chunk in chunks))


def main_change_types(chunks: list[dict]) -> dict[str, str]:
    """Each file's main change type in one commit: its most frequent (ties: the name)."""
    counts: dict[str, dict[str, int]] = {}
    for chunk in chunks:
        per = counts.setdefault(chunk["file"], {})
        per[chunk["change_type"]] = per.get(chunk["change_type"], 0) + 1
    return {path: min(per.items(), key=lambda kv: (-kv[1], kv[0]))[0] for path, per in counts.items()}


def commit_time(commit: dict) -> float:
    """The commit's time (committer's, else author's) in seconds since the epoch; 0.0 when unknown."""
    for key in ("committed_at", "authored_at"):
        value = commit.get(key)
        if value:
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
    return 0.0


def commit_author(commit: dict) -> str:
    person = commit.get("author") or {}
    return (person.get("email") or person.get("name") or "").lower()


@lru_cache(maxsize=1 << 16)
def folder_of(path: str) -> str:
    return posixpath.dirname(path)


def ranked(scores: dict[str, float], limit: int) -> list[tuple[str, float]]:
    """The `limit` best (path, score) pairs, best first, ties by path."""
    return heapq.nsmallest(limit, scores.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass
class SimilarFile:
    """similar_commits' evidence for one file."""

    score: float = 0.0  # sum of similarity / files of each similar commit that changed it
    best: float = 0.0  # the highest similarity of one such commit
    hits: int = 0  # how many of the similar commits changed it
    best_rank: int = 0  # rank (1 = most similar) of the most similar such commit


@dataclass
class PastCommits:
    """Statistics of the commits observed so far (see the module docstring)."""

    cfg: BaselineConfig = field(default_factory=BaselineConfig)

    def __post_init__(self):
        self.position = 0  # commits observed
        self.time = 0.0  # time of the latest observed commit
        self.file_commits: Counter[str] = Counter()  # mined: commits that changed each file
        self.partners: dict[str, Counter[str]] = {}  # mined: x -> {y: commits that changed x and y}
        self.file_types: dict[str, Counter[str]] = {}
        self.last_types: dict[str, str] = {}  # each file's main change type in its last mined change
        self.file_symbols: dict[str, Counter[str]] = {}
        self.symbol_seen: dict[tuple[str, str], int] = {}  # (file, symbol) -> position of its last change
        self.file_module: dict[str, str] = {}
        self.last_seen: dict[str, int] = {}
        self.first_seen: dict[str, int] = {}
        self.last_time: dict[str, float] = {}
        self.file_authors: dict[str, Counter[str]] = {}
        self.unrendered: set[str] = set()  # changed, but never with chunks (binary, filtered)
        self.recent: deque[list[str]] = deque(maxlen=RECENT_WINDOW)
        self.counts_50: Counter[str] = Counter()
        self.counts_10: Counter[str] = Counter()
        self.messages = BM25Index()  # position -> message words
        self.commit_files: dict[int, list[str]] = {}

    # ------------------------------------------------------------ learning from a commit

    def observe(self, commit: dict, chunks: list[dict], mine: bool = True) -> None:
        files = rendered_files(chunks)
        unique = sorted(set(files))
        for change in commit.get("files") or []:
            if change["path"] not in self.last_seen and change["path"] not in files:
                self.unrendered.add(change["path"])
        self.unrendered.difference_update(unique)
        if mine:
            self._mine(unique, chunks)
        when = commit_time(commit)
        author = commit_author(commit)
        for path in unique:
            self.last_seen[path] = self.position
            self.first_seen.setdefault(path, self.position)
            self.last_time[path] = when
            self.file_authors.setdefault(path, Counter())[author] += 1
        if len(self.recent) == self.recent.maxlen:
            self.counts_50.subtract(self.recent[0])
        if len(self.recent) >= 10:
            self.counts_10.subtract(self.recent[-10])
        self.recent.append(unique)
        self.counts_50.update(unique)
        self.counts_10.update(unique)
        if unique:
            words = Counter(code_words(commit.get("message") or ""))
            if words:
                self.messages.add(self.position, words)
                self.commit_files[self.position] = unique
        self.time = max(self.time, when)
        self.position += 1

    def _mine(self, unique: list[str], chunks: list[dict]) -> None:
        self.file_commits.update(unique)
        if len(unique) <= self.cfg.rules_max_commit_files:
            for x in unique:
                partners = self.partners.setdefault(x, Counter())
                partners.update(y for y in unique if y != x)
        for chunk in chunks:
            path = chunk["file"]
            self.file_types.setdefault(path, Counter())[chunk["change_type"]] += 1
            if chunk.get("symbol"):
                self.file_symbols.setdefault(path, Counter())[chunk["symbol"]] += 1
                self.symbol_seen[(path, chunk["symbol"])] = self.position
            if chunk.get("module"):
                self.file_module[path] = chunk["module"]
        self.last_types.update(main_change_types(chunks))

    # ------------------------------------------------------------ the baselines

    def frequent(self, limit: int) -> list[tuple[str, float]]:
        total = max(1, self.position)
        top = heapq.nsmallest(limit, self.file_commits.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(path, count / total) for path, count in top]

    def most_recent(self, limit: int) -> list[tuple[str, float]]:
        top = heapq.nsmallest(limit, self.last_seen.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(path, 1.0 / (self.position - seen)) for path, seen in top]

    def cochange_rules(self, antecedent_commits: int | None = None) -> dict[str, tuple[float, int]]:
        """Each consequent file's best rule from the last commits' files: (confidence, support)."""
        k = antecedent_commits or self.cfg.recent_commits
        return self.rules_from({path for files in list(self.recent)[-k:] for path in files})

    def rules_from(self, antecedents) -> dict[str, tuple[float, int]]:
        """Each consequent file's best rule x -> y over the given antecedent files x: (confidence, support)."""
        best: dict[str, tuple[float, int]] = {}
        for x in sorted(antecedents):
            support_x = self.file_commits.get(x, 0)
            if not support_x:
                continue
            for y, support in self.partners.get(x, Counter()).items():
                confidence = support / support_x
                if support < self.cfg.rules_min_support or confidence < self.cfg.rules_min_confidence:
                    continue
                if (confidence, support) > best.get(y, (-1.0, -1)):
                    best[y] = (confidence, support)
        return best

    def cochange(self, limit: int, rules: dict[str, tuple[float, int]] | None = None) -> list[tuple[str, float]]:
        """Files by their best rule (`rules`: cochange_rules() when already computed)."""
        rules = self.cochange_rules() if rules is None else rules
        top = heapq.nsmallest(limit, rules.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        return [(path, conf) for path, (conf, _) in top]

    def similar_files(self, task_words: list[str]) -> tuple[dict[str, SimilarFile], list[tuple[int, float]]]:
        """similar_commits' evidence per file, and the similar commits (position, similarity), best first."""
        similarity = self.messages.scores(task_words)
        top = heapq.nsmallest(self.cfg.similar_commits, similarity.items(), key=lambda kv: (-kv[1], -kv[0]))
        files: dict[str, SimilarFile] = {}
        for rank, (position, sim) in enumerate(top, start=1):
            changed = self.commit_files[position]
            for path in changed:
                entry = files.setdefault(path, SimilarFile(best_rank=rank))
                entry.score += sim / len(changed)
                entry.best = max(entry.best, sim)
                entry.hits += 1
        return files, top

    def similar_commits(self, task_words: list[str], limit: int) -> list[tuple[str, float]]:
        files, _ = self.similar_files(task_words)
        return ranked({path: entry.score for path, entry in files.items()}, limit)

    def searchable(self, path: str) -> bool:
        """Whether a file could be a predicted change: not one the history only ever saw without chunks."""
        return path not in self.unrendered

    def code_search(self, code_scores: dict[str, float], limit: int) -> list[tuple[str, float]]:
        """The file search's scores (`FileSearch.search`) without the files no predictor can name."""
        return ranked({p: s for p, s in code_scores.items() if self.searchable(p)}, limit)

    # ------------------------------------------------------------ structure of predicted files

    def main_change_type(self, path: str) -> str | None:
        types = self.file_types.get(path)
        return min(types.items(), key=lambda kv: (-kv[1], kv[0]))[0] if types else None

    def structure(self, files: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
        """For predicted files: change types (each file's most frequent), modules (in file order) and symbols
        (each file's `symbols_per_file` most often changed)."""
        change_types, modules, symbols = {}, [], []
        for path in files:
            main = self.main_change_type(path)
            if main:
                change_types[path] = main
            module = self.file_module.get(path)
            if module and module not in modules:
                modules.append(module)
            top = sorted(self.file_symbols.get(path, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))
            symbols.extend(s for s, _ in top[: self.cfg.symbols_per_file] if s not in symbols)
        return change_types, modules, symbols


def fusion(rankings: dict[str, list[tuple[str, float]]], k: int, limit: int,
           members: tuple[str, ...] = FUSION_MEMBERS) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion of the members' rankings: sum of 1 / (k + rank), rank 1 = best."""
    scores: dict[str, float] = {}
    for name in members:
        for rank, (path, _) in enumerate(rankings.get(name, []), start=1):
            scores[path] = scores.get(path, 0.0) + 1.0 / (k + rank)
    return ranked(scores, limit)


def baseline_rankings(past: PastCommits, similar: dict[str, SimilarFile], code_scores: dict[str, float] | None,
                      depth: int, rules: dict[str, tuple[float, int]] | None = None) -> dict[str, list[tuple[str, float]]]:
    """Every baseline's top `depth` files for one target, from its similar-commit evidence
    (`past.similar_files`), code-search scores (code_search only when `code_scores` is given) and co-change
    rules (`past.cochange_rules()`, computed when not given)."""
    rankings = {
        "frequent": past.frequent(depth),
        "recent": past.most_recent(depth),
        "cochange": past.cochange(depth, rules),
        "similar_commits": ranked({path: entry.score for path, entry in similar.items()}, depth),
    }
    if code_scores is not None:
        rankings["code_search"] = past.code_search(code_scores, depth)
    rankings["fusion"] = fusion(rankings, past.cfg.fusion_k, depth)
    return rankings
