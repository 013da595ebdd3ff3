"""evaluate.py's figures for predictions as you code: the work in progress, who and when, on the same targets.

    extras = LiveEvaluation(ranker)                       # the ranker folder's live ranker and author model
    for state in walk_targets(..., on_commit=...):
        extras.on_commit(commit, chunks)                  # every commit, after the statistics took it in
        extras.add(state, predicted_files)                # every target: the ranker's (else fusion's) files
    result = extras.figures()                             # {"work_in_progress", "who", "when"}

work_in_progress  the simulation of repo2model.ranking.live (`simulate`): each target's first k files revealed
                  (k = 1, 2, half), recall@k of the rest for the live ranker, the ranker without the
                  in-progress features and co-change from the revealed files alone
who               top-1 / top-3 accuracy of the likely authors (the author model over the predicted files'
                  authors, modules, folders, the task and recent activity; repo2model.ranking.people) against the
                  author of the last commit; `with_first_file`: the same on the targets of two files or more with
                  their first file revealed and no task, as a working tree watched without one; `frequent_authors`: those who wrote at least
                  FREQUENT of the targets (the target only matters where there is more than one)
when              the expected wait from the latest commit before a target to the next commit that touches its
                  top three predicted files (that commit may come after the target), against the median gap
                  between commits: the median error factor (max(p/t, t/p), 1 is exact), the share within a
                  factor of 2, and how often the interval holds the truth; the next commit is the first after the
                  target (the target included) not older than the latest commit before it (a merged branch's
                  older commits are no answer); targets whose files no such commit touches are left out
                  (`censored`)
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

from repo2model.ranking.history import commit_time, rendered_files
from repo2model.ranking.live import LiveRanker, LiveSimulation, simulation_table
from repo2model.ranking.metrics import fmt
from repo2model.ranking.people import (
    Activity, AuthorExamples, AuthorModel, NextCommit, author_accuracy, commits_baseline, next_commit_time,
)
from repo2model.ranking.ranker import Ranker
from repo2model.ranking.targets import TargetState

FREQUENT = 0.10  # an author who wrote this share of the targets is a frequent one
AUTHOR_FILES = 5  # the predicted files the likely authors are computed for
WHEN_FILES = 3  # the predicted files whose next change is timed
MIN_SECONDS = 60.0  # waits shorter than a minute count as a minute (commits of the same minute)


@dataclass
class Timed:
    """One target's time estimates, waiting for the truth (the next commit touching `files`)."""

    position: int
    start: float
    files: frozenset[str]
    model: NextCommit
    baseline: NextCommit


class LiveEvaluation:
    def __init__(self, ranker: Ranker | None):
        folder = ranker.folder if ranker is not None else None
        self.simulation = LiveSimulation(ranker, LiveRanker.load(folder)) if ranker is not None else None
        self.model = AuthorModel.load(folder)
        self.activity = Activity()
        self.authors = AuthorExamples()
        self.revealed_authors = AuthorExamples()  # targets of two files or more, their first file revealed
        self.target_authors: Counter = Counter()
        self.timed: list[Timed] = []
        self.later: list[tuple[int, float, set[str]]] = []  # commits from the first target on
        self.position = 0

    def on_commit(self, commit: dict, chunks: list[dict]) -> None:
        self.activity.observe(commit, chunks)
        if self.timed:
            self.later.append((self.position, commit_time(commit), set(rendered_files(chunks))))
        self.position += 1

    def add(self, state: TargetState, predicted: list[str]) -> None:
        if self.simulation is not None:
            self.simulation.add(state)
        target = state.target
        similar = state.past.similar_files(state.task_words)[1]
        self.authors.add(state.past, self.activity, predicted[:AUTHOR_FILES], target.author, similar)
        if len(target.files or ()) > 1:  # a working tree watched without a task: the first file being changed
            revealed = target.files[:1]
            seen = list(dict.fromkeys(revealed + predicted))[:AUTHOR_FILES]
            self.revealed_authors.add(state.past, self.activity, seen, target.author, [], revealed)
        self.target_authors[target.author] += 1
        files = predicted[:WHEN_FILES]
        if files:
            self.timed.append(Timed(self.position, self.activity.time, frozenset(files),
                                    next_commit_time(self.activity, files), commits_baseline(self.activity, files)))

    def figures(self) -> dict:
        return {"work_in_progress": self.simulation.figures() if self.simulation is not None else None,
                "who": self.who(), "when": self.when()}

    def who(self) -> dict:
        figures = author_accuracy(self.authors, self.model)
        total = sum(self.target_authors.values())
        frequent = {a: round(n / total, 4) for a, n in self.target_authors.most_common() if n / total >= FREQUENT}
        return {**figures, "author_model": self.model is not None, "frequent_authors": frequent,
                "with_first_file": author_accuracy(self.revealed_authors, self.model),
                "target_met": (figures.get("model_top1", 0) >= figures.get("most_recent_top1", 0) + 0.05
                               if len(frequent) > 1 and figures else None)}

    def when(self) -> dict:
        errors: dict[str, list[float]] = {"model": [], "baseline": []}
        inside: dict[str, int] = {"model": 0, "baseline": 0}
        censored = 0
        for timed in self.timed:
            truth = next((when for position, when, files in self.later  # not an older branch's commit
                          if position >= timed.position and when >= timed.start and files & timed.files), None)
            if truth is None:
                censored += 1
                continue
            actual = max(MIN_SECONDS, truth - timed.start)
            for name, guess in (("model", timed.model), ("baseline", timed.baseline)):
                if guess.seconds is None:
                    continue
                predicted = max(MIN_SECONDS, guess.seconds)
                errors[name].append(max(predicted / actual, actual / predicted))
                inside[name] += max(MIN_SECONDS, guess.low) <= actual <= max(MIN_SECONDS, guess.high)
        out = {"targets": len(self.timed), "censored": censored}
        for name, values in errors.items():
            out[name] = {"targets": len(values),
                         "median_error_factor": round(statistics.median(values), 3) if values else None,
                         "within_factor_2": round(sum(v <= 2 for v in values) / len(values), 4) if values else None,
                         "interval_coverage": round(inside[name] / len(values), 4) if values else None,
                         "log_error": round(statistics.mean(math.log(v) for v in values), 4) if values else None}
        out["from_files"] = sum(t.model.basis == "files" for t in self.timed)
        return out


def live_report(result: dict) -> list[str]:
    """Markdown lines for evaluation.md: the work in progress, who and when."""
    lines = simulation_table(result.get("work_in_progress"))
    who, when = result.get("who") or {}, result.get("when") or {}
    if who.get("targets"):
        frequent = who.get("frequent_authors") or {}
        first = who.get("with_first_file") or {}
        text = (f"Top-1 / top-3 accuracy on {who['targets']} targets: likely authors {fmt(who['model_top1'])} / "
                f"{fmt(who['model_top3'])}; the last commit's author {fmt(who['most_recent_top1'])}. ")
        if first:
            text += (f"With the first file revealed ({first['targets']} targets): {fmt(first['model_top1'])} / "
                     f"{fmt(first['model_top3'])}. ")
        text += f"Frequent authors (>= {FREQUENT:.0%} of the targets): {len(frequent)}"
        lines += ["", "## Who makes the change", "",
                  text + (" (one: the target does not apply)." if len(frequent) <= 1 else ".")]
    if when.get("targets"):
        lines += ["", "## When the predicted files change next", "",
                  f"{when['targets']} targets ({when['censored']} whose files no later commit touches left out); "
                  "error factor max(p/t, t/p), lower is better.", "",
                  "| estimate | median error factor | within x2 | interval coverage |", "|---|---|---|---|"]
        for name in ("model", "baseline"):
            figures = when.get(name) or {}
            lines.append(f"| {'the files own gaps' if name == 'model' else 'median gap between commits'} | "
                         f"{fmt(figures.get('median_error_factor'))} | {fmt(figures.get('within_factor_2'))} | "
                         f"{fmt(figures.get('interval_coverage'))} |")
    return lines
