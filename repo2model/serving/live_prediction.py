"""What the ranker folder adds to a prediction made while coding: the remaining files of the work in progress
(the live ranker), the likely authors and when the next commit comes.

    extras = LiveExtras.load(predictor.ranker)               # the FileRanking's folder: live ranker, authors, activity
    prediction = extras.apply(prediction, history, task, work, max_files)   # files, in_progress, authors, when

With a working tree (repo2model.serving.work_in_progress), the files it already changes are `in_progress` and
leave `files`; the rest are ranked by the live ranker (repo2model.ranking.live: the ranker's features plus the
in-progress ones, candidates widened by what the changed files point at), or, in a folder without one, by the
ranker with the changed files dropped. Each kept file keeps what generation said of it; files only generation
names follow. Authors and the time of the next commit (repo2model.ranking.people) are computed over the top
files (with the working tree: the changed files first), from the activity saved with the ranker, which takes in
the commits the ranker's statistics take in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from repo2model.ranking.features import candidate_rows
from repo2model.ranking.file_ranking import FileRanking, describe_files
from repo2model.ranking.live import LiveRanker, live_rows
from repo2model.ranking.people import Activity, AuthorModel, likely_authors, next_commit_time
from repo2model.ranking.targets import Target, state_at
from repo2model.retrieval.bm25 import code_words
from repo2model.serving.prediction import (
    ChangeTypeWeight, LikelyAuthor, NextCommitTime, PredictedFile, Prediction, WorkInProgressSummary,
)
from repo2model.serving.work_in_progress import WorkInProgress

AUTHOR_FILES = 5  # the top files whose authors are weighed
WHEN_FILES = 3  # the top files whose next change is timed
CHANGED_TOP = 5  # the top remaining files whose change `WorkInProgressSummary.changed` reports


@dataclass
class LiveExtras:
    ranking: FileRanking | None
    live: LiveRanker | None = None
    authors: AuthorModel | None = None
    activity: Activity | None = None

    @classmethod
    def load(cls, ranking: FileRanking | None) -> "LiveExtras":
        folder = ranking.ranker.folder if ranking is not None else None
        if folder is None:
            return cls(ranking)
        return cls(ranking, LiveRanker.load(folder), AuthorModel.load(folder), Activity.load(folder, set(ranking.seen)))

    def apply(self, prediction: Prediction, history: list, task: str, work: WorkInProgress | None,
              max_files: int) -> Prediction:
        """The prediction with the remaining files (with `work`), its likely authors and the next commit's time."""
        if work is not None:
            prediction = self.remaining(prediction, history, task, work, max_files)
        if self.ranking is None or self.activity is None:
            return prediction
        self.activity.catch_up(history, self.ranking.seen)
        top = list(dict.fromkeys((work.files if work is not None else []) + [f.path for f in prediction.files]))
        similar = self.ranking.past.similar_files(code_words(task))[1] if task else []
        guesses = likely_authors(self.ranking.past, self.activity, top[:AUTHOR_FILES], self.authors, similar,
                                 work.files if work is not None else ())
        when = next_commit_time(self.activity, [f.path for f in prediction.files[:WHEN_FILES]] or top[:WHEN_FILES])
        return dataclasses.replace(
            prediction, authors=[LikelyAuthor(g.author, g.name, g.probability) for g in guesses],
            when=NextCommitTime(when.files, when.after, when.seconds, when.expected_at(),
                                [when.low, when.high] if when.seconds is not None else None, when.basis, when.gaps))

    def remaining(self, prediction: Prediction, history: list, task: str, work: WorkInProgress,
                  max_files: int) -> Prediction:
        """`prediction` with the working tree's changed files moved to `in_progress` and the rest ranked."""
        changed = {f.path for f in work.in_progress()} | set(work.files)
        generated = {f.path: f for f in prediction.files if f.path not in changed}
        method = "generation"
        files = list(generated.values())
        if self.ranking is not None:
            method, files = self.ranked_remaining(generated, history, task, work, changed, max_files)
        files = files[:max_files]
        tree = work.tree
        summary = WorkInProgressSummary(tree.head, len(tree.commit.files), tree.untracked, dict(tree.left_out),
                                        dict(tree.commit.redactions), method)
        return dataclasses.replace(
            prediction, files=files, in_progress=work.in_progress(), work_in_progress=summary,
            modules=list(dict.fromkeys(f.module for f in files if f.module)),
            symbols=list(dict.fromkeys([s for f in files for s in f.symbols] + list(prediction.symbols))),
            ranking=method if method != "generation" else prediction.ranking)

    def ranked_remaining(self, generated: dict[str, PredictedFile], history: list, task: str, work: WorkInProgress,
                         changed: set[str], max_files: int) -> tuple[str, list[PredictedFile]]:
        """The live ranker's files (or the ranker's), none of the `changed` ones, then the files only generation
        names; each keeps what generation said of it."""
        ranking = self.ranking
        ranking.catch_up(history)
        code = ranking.file_search()
        head = work.tree.head
        parent = head if head in ranking.seen else ranking.last_commit
        author = (work.tree.commit.author.email or work.tree.commit.author.name or "").lower()
        state = state_at(ranking.past, code, Target(commit="", position=ranking.past.position, task=task,
                                                    author=author, parent=parent))
        revealed = work.files
        if self.live is not None and revealed:
            method = "live"
            ranked = self.live.rank(live_rows(state, revealed, ranking.candidates, ranking.dense), ranking.ranker)
        else:
            method = "ranker"
            rows = candidate_rows(state, ranking.candidates, dense=ranking.dense)
            ranked = ranking.ranker.rank(rows)
        ranked = [(p, s) for p, s in ranked if p not in changed]
        described = describe_files(ranking.ranker, state, ranked[:max_files], ranking.symbols_per_file,
                                   ranking.symbol_indexes)
        files = []
        for entry in described:
            gen = generated.get(entry.path)
            types = (gen.change_types if gen is not None and gen.change_types else
                     [ChangeTypeWeight(entry.change_type, None)] if entry.change_type else [])
            base = gen if gen is not None else PredictedFile(entry.path)
            files.append(dataclasses.replace(base, score=round(entry.score, 6), ranked_by=method,
                                             module=entry.module or base.module, change_types=types,
                                             symbols=list(dict.fromkeys(entry.symbols + list(base.symbols)))))
        known = {f.path for f in files}
        files += [dataclasses.replace(f, ranked_by="generation") for f in generated.values()
                  if f.path not in known and f.votes]
        return method, files


def top_paths(prediction: Prediction) -> frozenset[str]:
    """The top remaining files whose change `WorkInProgressSummary.changed` reports."""
    return frozenset(f.path for f in prediction.files[:CHANGED_TOP])
