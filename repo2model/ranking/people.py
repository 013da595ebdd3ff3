"""Who makes the next change, and when: likely authors with probabilities, and the expected time to the next
commit that touches the predicted files, with an interval.

    activity = Activity(); activity.observe(commit, chunks)        # oldest first, beside PastCommits
    model = AuthorModel.load(ranker_folder)                        # None: none was fitted
    authors = likely_authors(past, activity, files, model)         # [AuthorGuess], most likely first
    when = next_commit_time(activity, files)                       # NextCommit (seconds, interval, basis)

Who: each candidate author (the authors of the last RECENT commits and of the predicted files) gets the
features AUTHOR_FEATURES: their share of the changes of the predicted files, of those files' modules and
folders, of the last 10 / 50 / RECENT commits and of all commits, whether they wrote the last commit (and how
many in a row), how long ago they last committed, and their share of the earlier commits whose messages are
most like the task (BM25, history.PastCommits.similar_files; a "Bump serde" task finds the dependency bot),
and, with a working tree, their share of the changes of the files it already changes. A LightGBM binary model
(train_ranker fits it on the training targets, the target's author being the one to find; the predicted files are
then the fusion baseline's best five, and each target of two files or more comes twice more with its first file
revealed, with and without its task) gives each a probability, normalised over the candidates. Without a model, an author's
share of the last 50 commits stands in. The baseline it is measured against: the author of the last commit.

When: the times the predicted files (the top three) were changed, merged into one sequence; the median of the
last MAX_GAPS gaps between them is the expected wait from the latest commit, the 10th and 90th percentiles the
interval. With fewer than MIN_GAPS such gaps, the gaps between all commits stand in, which is also the baseline
it is measured against (the median gap between commits). Histories come in topological order, where a merged
branch brings older commits after newer ones: a gap is counted only for a commit later than every one before it.

Activity is saved with the ranker (activity.json) and, at prediction time, takes in the commits the ranker's
statistics take in (`catch_up`).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import lightgbm as lgb
import numpy as np

from repo2model.core.artifacts import atomic_open, read_json, write_json
from repo2model.core.errors import UserError
from repo2model.ranking.config import FitSettings
from repo2model.ranking.history import PastCommits, commit_author, commit_time, folder_of, rendered_files

log = logging.getLogger("ranking")

RECENT = 200  # commits whose authors and gaps are remembered
TIMES_PER_FILE = 16  # change times kept per file
MAX_GAPS = 20  # the latest gaps the time estimate reads
MIN_GAPS = 3
STATE_FORMAT = 1
ACTIVITY_FILE = "activity.json"
AUTHOR_MODEL_FILE = "authors.txt"
PEOPLE_FILE = "people.json"
MAX_AUTHORS = 30  # candidate authors per prediction
AUTHOR_FEATURES = (
    "file_share_mean", "file_share_max", "file_changes", "module_share", "folder_share",
    "recent_10", "recent_50", "recent_all", "all_share", "last_author", "last_streak", "commits_since",
    "days_since", "similar_share", "similar_first", "revealed_share", "revealed_max",
)
Similar = list[tuple[int, float]]  # the earlier commits most similar to the task: (position, similarity), best first


@dataclass
class Activity:
    """Who committed when (see the module docstring); JSON with to_state / from_state."""

    position: int = 0
    time: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))  # (author, time) of the last commits
    commits: Counter = field(default_factory=Counter)  # author -> commits
    last_position: dict[str, int] = field(default_factory=dict)
    last_time: dict[str, float] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # author -> the name of their latest commit
    module_authors: dict[str, Counter] = field(default_factory=dict)  # module -> author -> changed files
    folder_authors: dict[str, Counter] = field(default_factory=dict)
    file_times: dict[str, list[float]] = field(default_factory=dict)  # the latest TIMES_PER_FILE change times
    gaps: deque = field(default_factory=lambda: deque(maxlen=RECENT))  # each commit past the latest one: seconds
    authors: list[str] = field(default_factory=list)  # every author, in order of their first commit
    by_position: list[int] = field(default_factory=list)  # each commit's author (an index into `authors`)
    author_index: dict[str, int] = field(default_factory=dict)  # author -> its index in `authors` (not saved)
    known: set[str] = field(default_factory=set)  # at prediction: the commits taken in (not saved)

    def observe(self, commit: dict, chunks: list[dict]) -> None:
        author, when = commit_author(commit), commit_time(commit)
        if when and self.time and when > self.time:  # a commit of an older branch moves no clock forward
            self.gaps.append(when - self.time)
        self.recent.append((author, when))
        if author not in self.author_index:
            self.author_index[author] = len(self.authors)
            self.authors.append(author)
        self.by_position.append(self.author_index[author])
        self.commits[author] += 1
        self.last_position[author], self.last_time[author] = self.position, when
        self.names[author] = (commit.get("author") or {}).get("name") or author
        modules = {}
        for chunk in chunks:
            if chunk.get("module"):
                modules[chunk["file"]] = chunk["module"]
        for path in rendered_files(chunks):
            times = self.file_times.setdefault(path, [])
            times.append(when)
            del times[:-TIMES_PER_FILE]
            self.folder_authors.setdefault(folder_of(path), Counter())[author] += 1
            if path in modules:
                self.module_authors.setdefault(modules[path], Counter())[author] += 1
        self.time = max(self.time, when)
        self.position += 1

    def catch_up(self, history: list, seen: set[str]) -> None:
        """Take in the (Commit, [Chunk]) of `history` that the ranker's statistics took in (`seen`) and these
        have not yet (`known`)."""
        for commit, chunks in history:
            if commit.hash in seen and commit.hash not in self.known:
                self.observe(commit.to_dict(), [c.to_dict() for c in chunks])
                self.known.add(commit.hash)

    def to_state(self) -> dict:
        return {"format": STATE_FORMAT, "position": self.position, "time": self.time,
                "recent": [list(r) for r in self.recent], "commits": dict(self.commits),
                "last_position": self.last_position, "last_time": self.last_time, "names": self.names,
                "module_authors": {k: dict(v) for k, v in self.module_authors.items()},
                "folder_authors": {k: dict(v) for k, v in self.folder_authors.items()},
                "file_times": self.file_times, "gaps": list(self.gaps), "authors": self.authors,
                "by_position": self.by_position}

    @classmethod
    def from_state(cls, state: dict) -> "Activity":
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"activity of format {state.get('format')!r}, not {STATE_FORMAT}")
        activity = cls(position=state["position"], time=state["time"], commits=Counter(state["commits"]),
                       last_position=state["last_position"], last_time=state["last_time"], names=state["names"],
                       module_authors={k: Counter(v) for k, v in state["module_authors"].items()},
                       folder_authors={k: Counter(v) for k, v in state["folder_authors"].items()},
                       file_times=state["file_times"], authors=state["authors"], by_position=state["by_position"])
        activity.recent.extend(tuple(r) for r in state["recent"])
        activity.author_index = {author: i for i, author in enumerate(activity.authors)}
        activity.gaps.extend(state["gaps"])
        return activity

    def save(self, folder: Path, commits: list[str]) -> None:
        write_json(Path(folder) / ACTIVITY_FILE, {"commits_seen": len(commits), **self.to_state()}, indent=None)

    @classmethod
    def load(cls, folder: Path | None, seen: set[str] | None = None) -> "Activity | None":
        """The activity saved in a ranker folder (None when there is none); `seen`: the commits it holds."""
        path = Path(folder) / ACTIVITY_FILE if folder is not None else None
        if path is None or not path.is_file():
            return None
        try:
            activity = cls.from_state(read_json(path))
        except (KeyError, TypeError, ValueError, UserError) as exc:
            log.warning("%s: not the activity train_ranker writes (%s): no authors or times", path, exc)
            return None
        activity.known.update(seen or ())
        return activity


# ---------------------------------------------------------------- who


@dataclass
class AuthorGuess:
    author: str  # the e-mail (lower-cased), or the name when there is none
    name: str
    probability: float


def author_candidates(past: PastCommits, activity: Activity, files: list[str]) -> list[str]:
    """The authors of the latest commits and of `files`, most recent first (at most MAX_AUTHORS)."""
    out: dict[str, None] = {}
    for author, _ in reversed(activity.recent):
        out.setdefault(author, None)
    for path in files:
        for author, _ in (past.file_authors.get(path) or Counter()).most_common(3):
            out.setdefault(author, None)
    return [a for a in out if a][:MAX_AUTHORS]


def author_rows(past: PastCommits, activity: Activity, files: list[str], authors: list[str],
                similar: Similar = (), revealed: list[str] = ()) -> np.ndarray:
    """AUTHOR_FEATURES of each author for a change predicted to touch `files` with a task whose most similar
    earlier commits are `similar`, of which the working tree already changes `revealed`."""
    recent = [a for a, _ in activity.recent]
    last = recent[-1] if recent else None
    streak = 0
    for a in reversed(recent):
        if a != last:
            break
        streak += 1
    counts = [c for c in (past.file_authors.get(p) for p in files) if c]
    known = [c for c in (past.file_authors.get(p) for p in revealed) if c]
    modules = Counter()
    for module in {past.file_module.get(p) for p in files} - {None}:
        modules.update(activity.module_authors.get(module) or {})
    folders = Counter()
    for folder in {folder_of(p) for p in files}:
        folders.update(activity.folder_authors.get(folder) or {})
    windows = {n: Counter(recent[-n:]) for n in (10, 50)}
    total_recent, total_modules, total_folders = len(recent), sum(modules.values()), sum(folders.values())
    similar_authors = Counter()
    for position, value in similar:
        if position < len(activity.by_position):
            similar_authors[activity.authors[activity.by_position[position]]] += value
    first = (activity.authors[activity.by_position[similar[0][0]]]
             if similar and similar[0][0] < len(activity.by_position) else None)
    total_similar = sum(similar_authors.values())
    rows = []
    for author in authors:
        shares = [c[author] / sum(c.values()) for c in counts]
        mine = [c[author] / sum(c.values()) for c in known]
        seen = activity.last_position.get(author)
        rows.append([
            sum(shares) / len(shares) if shares else math.nan,
            max(shares) if shares else math.nan,
            sum(c[author] for c in counts),
            modules[author] / total_modules if total_modules else math.nan,
            folders[author] / total_folders if total_folders else math.nan,
            windows[10][author] / min(10, total_recent) if total_recent else 0.0,
            windows[50][author] / min(50, total_recent) if total_recent else 0.0,
            recent.count(author) / total_recent if total_recent else 0.0,
            activity.commits[author] / activity.position if activity.position else 0.0,
            float(author == last),
            float(streak if author == last else 0),
            activity.position - seen if seen is not None else math.nan,
            max(0.0, activity.time - activity.last_time[author]) / 86400.0 if seen is not None else math.nan,
            similar_authors[author] / total_similar if total_similar else math.nan,
            float(author == first) if first is not None else math.nan,
            sum(mine) / len(mine) if mine else math.nan,
            max(mine) if mine else math.nan,
        ])
    return np.array(rows, dtype=np.float32).reshape(len(authors), len(AUTHOR_FEATURES))


@dataclass
class AuthorModel:
    booster: lgb.Booster
    info: dict = field(default_factory=dict)

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        return self.booster.predict(rows) if len(rows) else np.zeros(0)

    def save(self, folder: Path) -> None:
        with atomic_open(Path(folder) / AUTHOR_MODEL_FILE) as fh:
            fh.write(self.booster.model_to_string())

    @classmethod
    def load(cls, folder: Path | None) -> "AuthorModel | None":
        if folder is None or not (Path(folder) / AUTHOR_MODEL_FILE).is_file():
            return None
        try:
            booster = lgb.Booster(model_str=(Path(folder) / AUTHOR_MODEL_FILE).read_text(encoding="utf-8"))
        except (OSError, lgb.basic.LightGBMError) as exc:
            log.warning("%s: the author model is unreadable (%s): authors by recent activity", folder, exc)
            return None
        if booster.feature_name() != list(AUTHOR_FEATURES):
            log.warning("%s: the author model has other features: authors by recent activity", folder)
            return None
        return cls(booster)


def likely_authors(past: PastCommits, activity: Activity, files: list[str], model: AuthorModel | None,
                   similar: Similar = (), revealed: list[str] = (), top: int = 3) -> list[AuthorGuess]:
    """The `top` most likely authors of a change to `files` (the task's similar commits: `similar`; the files the
    working tree already changes: `revealed`), with probabilities (normalised over the candidates)."""
    authors = author_candidates(past, activity, files)
    if not authors:
        return []
    rows = author_rows(past, activity, files, authors, similar, revealed)
    if model is not None:
        values = model.probabilities(rows)
    else:
        values = rows[:, AUTHOR_FEATURES.index("recent_50")].astype(np.float64)
    total = float(np.sum(values))
    probabilities = values / total if total > 0 else np.full(len(authors), 1.0 / len(authors))
    order = sorted(range(len(authors)), key=lambda i: (-probabilities[i], authors[i]))[:top]
    return [AuthorGuess(authors[i], activity.names.get(authors[i], authors[i]), round(float(probabilities[i]), 4))
            for i in order]


def most_recent_author(activity: Activity) -> str | None:
    return activity.recent[-1][0] if activity.recent else None


@dataclass
class AuthorExamples:
    """The author rows of many targets: features, labels (the target's author), and target of each row."""

    rows: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, past: PastCommits, activity: Activity, files: list[str], author: str, similar: Similar = (),
            revealed: list[str] = ()) -> None:
        authors = author_candidates(past, activity, files)
        if author and authors:
            self.rows.append(author_rows(past, activity, files, authors, similar, revealed))
            self.labels.append(np.array([a == author for a in authors], dtype=np.int8))

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.rows:
            return np.zeros((0, len(AUTHOR_FEATURES)), dtype=np.float32), np.zeros(0, dtype=np.int8)
        return np.concatenate(self.rows), np.concatenate(self.labels)


def author_accuracy(examples: AuthorExamples, model: AuthorModel | None) -> dict:
    """Top-1 / top-3 accuracy over the targets of `examples`: the author model (or, without one, the share of
    the last 50 commits), and the baseline, the author of the last commit. A target whose author is no
    candidate counts as a miss for all."""
    if not examples.rows:
        return {}
    top1 = top3 = recent = 0
    last = AUTHOR_FEATURES.index("last_author")
    for rows, labels in zip(examples.rows, examples.labels):
        values = model.probabilities(rows) if model is not None else rows[:, AUTHOR_FEATURES.index("recent_50")]
        order = np.argsort(-values, kind="stable")
        top1 += bool(labels[order[0]])
        top3 += bool(labels[order[:3]].any())
        recent += bool(labels[rows[:, last] == 1].any())
    n = len(examples.rows)
    return {"targets": n, "model_top1": round(top1 / n, 4), "model_top3": round(top3 / n, 4),
            "most_recent_top1": round(recent / n, 4)}


def fit_author_model(train: AuthorExamples, val: AuthorExamples, fit: FitSettings, seed: int) -> AuthorModel | None:
    """A binary LightGBM over AUTHOR_FEATURES (is this the target's author?), early-stopped on val; None when
    there are too few training targets."""
    x, y = train.matrix()
    if len(y) < 20 or y.sum() < 5:
        return None
    params = fit.lightgbm_params(seed, objective="binary", metric="binary_logloss")
    train_set = lgb.Dataset(x, y, feature_name=list(AUTHOR_FEATURES), free_raw_data=True)
    xv, yv = val.matrix()
    valid_sets, callbacks = [], []
    if len(yv) and yv.any():
        valid_sets = [lgb.Dataset(xv, yv, reference=train_set)]
        callbacks = [lgb.early_stopping(fit.early_stopping_rounds, verbose=False)]
    booster = lgb.train(params, train_set, num_boost_round=min(fit.num_trees, 300), valid_sets=valid_sets,
                        callbacks=callbacks)
    if valid_sets and booster.best_iteration:
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return AuthorModel(booster)


# ---------------------------------------------------------------- when


@dataclass
class NextCommit:
    """The expected wait from the latest commit to the next one touching `files`, with an interval."""

    files: list[str]
    after: str | None  # the latest commit's time (ISO 8601), where the wait starts
    seconds: float | None  # the median gap; None without history
    low: float | None  # 10th percentile
    high: float | None  # 90th percentile
    basis: str  # "files": the files' own changes; "commits": every commit's (too few changes of the files)
    gaps: int  # how many gaps the estimate read

    def expected_at(self) -> str | None:
        if self.after is None or self.seconds is None:
            return None
        start = datetime.fromisoformat(self.after)
        return datetime.fromtimestamp(start.timestamp() + self.seconds, tz=start.tzinfo).isoformat(timespec="seconds")


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """(10th percentile, median, 90th percentile)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return deciles[0], statistics.median(values), deciles[-1]


def file_gaps(activity: Activity, files: list[str]) -> list[float]:
    """The latest MAX_GAPS gaps between the (distinct) times `files` were changed."""
    times = sorted({t for path in files for t in activity.file_times.get(path, ()) if t})
    return [b - a for a, b in zip(times, times[1:])][-MAX_GAPS:]


def next_commit_time(activity: Activity, files: list[str]) -> NextCommit:
    gaps, basis = file_gaps(activity, files), "files"
    if len(gaps) < MIN_GAPS:
        gaps, basis = list(activity.gaps)[-RECENT:], "commits"
    return estimate(activity, files, gaps, basis)


def commits_baseline(activity: Activity, files: list[str]) -> NextCommit:
    """The baseline: the median gap between (all) commits, its deciles as the interval."""
    return estimate(activity, files, list(activity.gaps)[-RECENT:], "commits")


def estimate(activity: Activity, files: list[str], gaps: list[float], basis: str) -> NextCommit:
    after = (datetime.fromtimestamp(activity.time, tz=timezone.utc).isoformat(timespec="seconds")
             if activity.time else None)
    if not gaps:
        return NextCommit(files, after, None, None, None, basis, 0)
    low, median, high = quantiles(gaps)
    return NextCommit(files, after, round(median, 1), round(low, 1), round(high, 1), basis, len(gaps))
