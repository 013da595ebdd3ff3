"""Which situation an evaluation measures: how many targets' messages say nothing, recall on the informative
ones apart, the share of a target's files among the ranker's candidates by commit size, and how many of its files
the commit created and where the ranker's new-file guesses (repo2model.ranking.new_files) found them.

    situation = Situation(ranker)                     # evaluate.py, beside its other observers
    for state in walk_targets(...):
        situation.add(state, saved_rows)              # the target's rows train_ranker saved, or None
    result.update(situation.figures(rows, order))     # rows: {predictor: {commit: metrics row}}
    lines = situation_report(result)                  # evaluation.md's section

A target's message is judged uninformative (repo2model.ranking.messages) against the whole history's messages,
as train_ranker judges its training targets: on a history whose commits come from coding agents the test
targets asked with real tasks are the informative ones, and their recall is the figure that matters.
"""

from __future__ import annotations

from repo2model.ranking.features import CandidateRows, candidates
from repo2model.ranking.history import PastCommits
from repo2model.ranking.metrics import aggregate, candidate_recall_by_size, fmt
from repo2model.ranking.new_files import FOLDERS, new_file_summary
from repo2model.ranking.targets import TargetState

SHOWN = ("recall@1", "recall@5", "recall@10", "mrr", "commits")


class Situation:
    """Gathers, target by target, what the figures need (see the module docstring)."""

    def __init__(self, ranker=None):
        self.ranker = ranker
        self.tasks: dict[str, str] = {}
        self.candidates: dict[str, tuple[list[str], list[str]]] = {}  # commit -> (candidates, changed files)
        self.past: PastCommits | None = None

    def add(self, state: TargetState, saved: CandidateRows | None = None) -> None:
        target = state.target
        self.tasks[target.commit] = target.task
        self.past = state.past  # once the walk ends: the statistics of the whole history
        if self.ranker is not None:
            paths = saved.paths if saved is not None else candidates(state, self.ranker.candidates())
            self.candidates[target.commit] = (paths, list(target.files or []))

    def figures(self, rows: dict[str, dict[str, dict]], order: list[str]) -> dict:
        """{"messages": ...}: the targets judged uninformative, every predictor's figures on the others, and the
        ranker's candidate recall by commit size."""
        if self.past is None:
            return {}
        counts = self.past.message_counts
        judged = {h: counts.uninformative(self.tasks[h]) for h in order if h in self.tasks}
        uninformative = [h for h, said_nothing in judged.items() if said_nothing]
        informative = [h for h, said_nothing in judged.items() if not said_nothing]
        return {"messages": {
            "targets": len(informative) + len(uninformative),
            "uninformative": len(uninformative),
            "share": round(len(uninformative) / len(order), 4) if order else None,
            "history_informative_share": round(counts.informative_share(), 4) if counts.total else None,
            "informative_metrics": {
                name: {k: v for k, v in aggregate([per[h] for h in informative if h in per]).items() if k in SHOWN}
                for name, per in rows.items() if any(h in per for h in informative)},
            "candidate_recall_by_size": candidate_recall_by_size([self.candidates[h] for h in order
                                                                  if h in self.candidates]),
            # What the ranker was fitted on (train_ranker's judgement of its train and val messages)
            "ranker_training": (self.ranker.metrics.get("messages") if self.ranker is not None else None),
        }, "new_files": new_file_summary([rows["ranker"][h] for h in order if h in rows.get("ranker", {})])}


def situation_report(result: dict) -> list[str]:
    """evaluation.md's section on the situation measured ([] without the figures)."""
    info = result.get("messages")
    if not info:
        return []
    lines = ["", "## The situation measured", "",
             f"{info['uninformative']} of {info['targets']} target messages are uninformative (boilerplate repeated "
             "across the history, or fewer than two words); "
             + (f"{100 * info['history_informative_share']:.0f}% of the history's messages are informative."
                if info.get("history_informative_share") is not None else "")]
    trained = (info.get("ranker_training") or {}).get("train")
    if trained:
        lines += ["", f"The ranker was fitted on {trained['targets']} training targets, {trained['uninformative']} "
                  "of them with an uninformative message (their task features hidden: those targets taught it the "
                  "history's signals only)."]
    shown = info.get("informative_metrics") or {}
    if info["uninformative"] and shown:
        lines += ["", "On the targets whose message is informative:", "",
                  "| predictor | recall@1 | recall@5 | recall@10 | mrr | commits |", "|---|---|---|---|---|---|"]
        for name, m in shown.items():
            lines.append(f"| {name} | " + " | ".join(fmt(m.get(k)) for k in SHOWN[:4]) + f" | {m['commits']} |")
    sizes = info.get("candidate_recall_by_size") or {}
    if sizes:
        lines += ["", "The ranker's candidate recall (the share of a commit's files among its candidates, what no "
                  "ranking can exceed) by commit size:", "",
                  "| changed files | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes),
                  "| candidate recall | " + " | ".join(fmt(b["candidate_recall"]) for b in sizes.values()) + " |",
                  "| candidates | " + " | ".join(f"{b['candidates']:.0f}" for b in sizes.values()) + " |",
                  "| commits | " + " | ".join(str(b["commits"]) for b in sizes.values()) + " |"]
    return lines + new_files_report(result)


def new_files_report(result: dict) -> list[str]:
    """evaluation.md's lines on the files the targets created ([] without the figures)."""
    new = result.get("new_files")
    if not new:
        return []
    lines = ["", "## New files", "",
             f"{new['new_files']} of the {new['changed_files']} changed files of the {new['targets']} targets were created "
             f"by their commit ({fmt(new['share'])}; in {new['commits_with_new']} commits): no ranker can rank them."]
    if new["new_files"]:
        lines.append(f"The ranker's {FOLDERS} likeliest folders for new files (the prediction's `new_files`) held "
                     f"{new['folder_found']} of them ({fmt(new['folder_share'])}); its named guesses (the task's "
                     f"identifiers as file names) named {new['named']} exactly ({fmt(new['named_share'])}).")
    return lines
