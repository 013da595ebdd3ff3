"""What the history before a target commit says about its files: the statistics every predictor reads.

    past = PastCommits(BaselineConfig())
    for commit, chunks in history:                  # oldest first
        ... past.cochange_rules(), past.similar_files(code_words(task)) ...   # only what came before
        past.observe(commit, chunks)
    state = past.to_state()                         # JSON: saved with the ranker (history.json)
    past = PastCommits.from_state(state)            # the same statistics, without reading the history again

`PastCommits` holds statistics mined from the commits observed so far (nothing is ever read ahead): how often
and how lately each file changed (all commits, the last 50, the last 10), which files changed together
(co-change counts, for association rules x -> y as in Zimmermann et al.'s ROSE), the commit messages as a
BM25 index (BugLocator's "similar bug reports", Zhou et al. 2012), each file's change types, symbols, module
and authors. The baselines (repo2model.ranking.baselines) and the ranker's features are computed from them.

`mine=False` in `observe` records a commit as seen (recency, antecedents, messages) without adding it to the
mined counts (evaluation's `mine_from: train`).

Two statistics describe the history as a whole, so that features can be compared across repositories:
`typical_size()` (the mean number of files of the last 50 commits) and `message_counts`
(repo2model.ranking.messages: how many of the messages are boilerplate).
"""

from __future__ import annotations

import heapq
import posixpath
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from repo2model.core.config import section_dict
from repo2model.ranking.messages import MessageCounts
from repo2model.retrieval.bm25 import BM25Index, code_words

RECENT_WINDOW = 50  # commits whose files count as "recent" (counts in the last 50, recency windows)
STATE_FORMAT = 2  # PastCommits.to_state's layout (2: with the message counts)
READABLE_FORMATS = (1, 2)  # format 1 lacks the message counts: they start empty


@dataclass
class BaselineConfig:
    """The settings of the statistics and of the baselines built on them (the `evaluate` section's keys of
    the same names)."""

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
        self.message_words: dict[int, Counter[str]] = {}  # the same words, for to_state
        self.commit_files: dict[int, list[str]] = {}
        self.message_counts = MessageCounts()  # every observed commit's first line, normalised

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
        self.message_counts.add(commit.get("message") or "")
        if unique:
            words = Counter(code_words(commit.get("message") or ""))
            if words:
                self.messages.add(self.position, words)
                self.message_words[self.position] = words
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

    # ------------------------------------------------------------ what the statistics say

    def cochange_rules(self, antecedent_commits: int | None = None) -> dict[str, tuple[float, int]]:
        """Each consequent file's best rule from the last commits' files: (confidence, support)."""
        k = antecedent_commits or self.cfg.recent_commits
        return self.rules_from({path for files in list(self.recent)[-k:] for path in files})

    def rules_from(self, antecedents) -> dict[str, tuple[float, int]]:
        """Each consequent file's best rule x -> y over the given antecedent files x: (confidence, support),
        confidence = commits that changed x and y / commits that changed x."""
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

    def similar_files(self, task_words: list[str]) -> tuple[dict[str, SimilarFile], list[tuple[int, float]]]:
        """The evidence of the `similar_commits` earlier commits whose messages are most similar to the task
        (BM25) per file they changed, and those commits (position, similarity), best first."""
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

    def typical_size(self) -> float:
        """The mean number of files of the last RECENT_WINDOW commits (at least 1.0): how large a commit of
        this history usually is."""
        if not self.recent:
            return 1.0
        return max(1.0, sum(len(files) for files in self.recent) / len(self.recent))

    def searchable(self, path: str) -> bool:
        """Whether a file could be a predicted change: not one the history only ever saw without chunks."""
        return path not in self.unrendered

    def main_change_type(self, path: str) -> str | None:
        """The file's most frequent change type so far (ties: the name)."""
        types = self.file_types.get(path)
        return min(types.items(), key=lambda kv: (-kv[1], kv[0]))[0] if types else None

    # ------------------------------------------------------------ saving and restoring

    def to_state(self) -> dict:
        """Every statistic as plain JSON (insertion orders kept), for `from_state`."""
        symbol_seen: dict[str, dict[str, int]] = {}
        for (path, symbol), position in self.symbol_seen.items():
            symbol_seen.setdefault(path, {})[symbol] = position
        messages = [[key, dict(words), self.commit_files[key]] for key, words in self.message_words.items()]
        return {
            "format": STATE_FORMAT, "baselines": section_dict(self.cfg), "position": self.position,
            "time": self.time, "file_commits": dict(self.file_commits),
            "partners": {x: dict(ys) for x, ys in self.partners.items()},
            "file_types": {p: dict(c) for p, c in self.file_types.items()}, "last_types": self.last_types,
            "file_symbols": {p: dict(c) for p, c in self.file_symbols.items()}, "symbol_seen": symbol_seen,
            "file_module": self.file_module, "last_seen": self.last_seen, "first_seen": self.first_seen,
            "last_time": self.last_time, "file_authors": {p: dict(c) for p, c in self.file_authors.items()},
            "unrendered": sorted(self.unrendered), "recent": list(self.recent),
            "counts_50": dict(self.counts_50), "counts_10": dict(self.counts_10), "messages": messages,
            "message_counts": self.message_counts.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict) -> "PastCommits":
        """The statistics `to_state` saved; ValueError when the state is not one."""
        if state.get("format") not in READABLE_FORMATS:
            raise ValueError(f"history statistics of format {state.get('format')!r}, not {STATE_FORMAT}")
        past = cls(BaselineConfig(**state["baselines"]))
        past.position, past.time = state["position"], state["time"]
        past.file_commits = Counter(state["file_commits"])
        past.partners = {x: Counter(ys) for x, ys in state["partners"].items()}
        past.file_types = {p: Counter(c) for p, c in state["file_types"].items()}
        past.last_types = state["last_types"]
        past.file_symbols = {p: Counter(c) for p, c in state["file_symbols"].items()}
        past.symbol_seen = {(p, s): n for p, seen in state["symbol_seen"].items() for s, n in seen.items()}
        past.file_module, past.last_seen = state["file_module"], state["last_seen"]
        past.first_seen, past.last_time = state["first_seen"], state["last_time"]
        past.file_authors = {p: Counter(c) for p, c in state["file_authors"].items()}
        past.unrendered = set(state["unrendered"])
        past.recent.extend(state["recent"])
        past.counts_50, past.counts_10 = Counter(state["counts_50"]), Counter(state["counts_10"])
        for key, words, files in state["messages"]:  # added in the same order: the same BM25 index
            past.message_words[key] = Counter(words)
            past.messages.add(key, past.message_words[key])
            past.commit_files[key] = files
        past.message_counts = MessageCounts(state.get("message_counts"))
        return past
