"""What train_ranker adds for predictions as you code: the live ranker, the author model and the activity.

    extras = LiveTraining(candidates_cfg, dense)
    for state in walk_targets(..., on_commit=...):      # train_ranker's one pass over the history
        extras.on_commit(commit, chunks)                # every commit, after the statistics took it in
        extras.add(state, rows)                         # every target, with the ranker's rows of it
    summary = extras.finish(ranker, folder, fit_settings, seed)   # after ranker.save(folder)

Per target: its simulated partial commits (repo2model.ranking.live.partial_targets) and its author rows
(repo2model.ranking.people; the predicted files are the fusion baseline's best five: the ranker is not fitted
yet). `finish` fits the live ranker (train targets, early-stopped on val) and the author model, scores both on
the test targets, and writes into the ranker folder: live_ranker.txt + live.json (the live ranker, its figures),
authors.txt + people.json (the author model, its figures) and activity.json (who committed when, up to the last
commit). A ranker folder without them still predicts: without the in-progress features, and with authors by
recent activity.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightgbm as lgb

from repo2model.core.artifacts import write_json
from repo2model.core.errors import UserError
from repo2model.ranking.config import FitSettings
from repo2model.ranking.features import CandidateRows, DenseScorer, FeatureConfig, task_hidden, without_task
from repo2model.ranking.live import (
    LiveRanker, PartialTarget, fit_live_ranker, partial_targets, simulate, with_base_score,
)
from repo2model.ranking.people import (
    PEOPLE_FILE, Activity, AuthorExamples, author_accuracy, fit_author_model,
)
from repo2model.ranking.ranker import Ranker, fit_lambdarank, importances
from repo2model.ranking.targets import TargetState

log = logging.getLogger("ranking")

SPLITS = ("train", "val", "test")
AUTHOR_FILES = 5  # the predicted files the author rows are computed for


class LiveTraining:
    """The collector train_ranker feeds during its pass, and the fitting and saving afterwards."""

    def __init__(self, cfg: FeatureConfig, dense: DenseScorer | None = None):
        self.cfg, self.dense = cfg, dense
        self.activity = Activity()
        self.partials: dict[str, list[PartialTarget]] = {s: [] for s in SPLITS}
        self.authors: dict[str, AuthorExamples] = {s: AuthorExamples() for s in SPLITS}
        self.commits: list[str] = []
        self.base_rows: dict[str, list[CandidateRows]] = {"train": [], "val": []}  # the ranker's, for its folds
        self.cpu_seconds = 0.0  # this process's CPU time in add and finish (the machine may be shared)

    def on_commit(self, commit: dict, chunks: list[dict]) -> None:
        self.activity.observe(commit, chunks)
        self.commits.append(commit["hash"])

    def add(self, state: TargetState, rows: CandidateRows) -> None:
        """One target of the walk, and the ranker's rows of it (`candidate_rows`)."""
        cpu, target = time.process_time(), state.target
        self.partials[target.split] += partial_targets(state, self.cfg, self.dense)
        if target.split in ("train", "val"):
            self.base_rows[target.split].append(rows)
        files = [p for p, _ in state.rankings["fusion"][:AUTHOR_FILES]]
        similar = state.past.similar_files(state.task_words)[1]
        self.authors[target.split].add(state.past, self.activity, files, target.author, similar)
        if len(target.files or ()) > 1 and target.split != "test":  # as if its first file were being written,
            revealed = target.files[:1]  # with the task and without it (a working tree watched without one)
            seen = list(dict.fromkeys(revealed + files))[:AUTHOR_FILES]
            for task_similar in (similar, []):
                self.authors[target.split].add(state.past, self.activity, seen, target.author, task_similar, revealed)
        self.cpu_seconds += time.process_time() - cpu

    def finish(self, ranker: Ranker, folder: Path, fit: FitSettings, seed: int, prior: lgb.Booster | None = None,
               uninformative: frozenset[str] | set[str] = frozenset(), previous: LiveRanker | None = None) -> dict:
        """Fit, score and save (see the module docstring); the figures, for the ranker's metrics. `prior` and
        `uninformative` are what the ranker was fitted with: the prior it was boosted on, and the targets whose
        task's features it did not see (their partial commits hide them too). `previous` (in an update, the live
        ranker being updated) passes on how it was fitted."""
        cpu = time.process_time()
        for split in ("train", "val"):
            for partial in self.partials[split]:
                if partial.commit in uninformative:
                    partial.rows = without_task(partial.rows)
        self.add_base_scores(ranker, fit, seed, prior, uninformative)
        live = fit_live_ranker(self.partials["train"], self.partials["val"], ranker.features, fit, seed, previous)
        figures = simulate(self.partials["test"], ranker, live)
        if live is not None:
            live.info["test"] = figures
            live.save(folder)
        model = fit_author_model(self.authors["train"], self.authors["val"], fit, seed)
        people = {"author_model": model is not None, "test": author_accuracy(self.authors["test"], model),
                  "feature_importance": importances(model.booster) if model is not None else None}
        if model is not None:
            model.save(folder)
        write_json(Path(folder) / PEOPLE_FILE, people)
        self.activity.save(folder, self.commits)
        log.info("live ranker: %s; authors: top-1 %s (the last commit's author: %s)",
                 "none (too few partial commits)" if live is None else
                 f"{live.booster.num_trees()} trees, recall@5 with one file revealed "
                 f"{figures.get('1', {}).get('live', {}).get('recall@5')}",
                 people["test"].get("model_top1"), people["test"].get("most_recent_top1"))
        self.cpu_seconds += time.process_time() - cpu
        return {"live": figures, "people": people, "cpu_seconds": round(self.cpu_seconds, 2)}

    def add_base_scores(self, ranker: Ranker, fit: FitSettings, seed: int, prior: lgb.Booster | None = None,
                        uninformative: frozenset[str] | set[str] = frozenset()) -> None:
        """BASE_SCORE on every partial commit: on a train target, from a ranker fitted on the other half of the
        train targets (out of fold: the final ranker has seen it) as the ranker was (boosted on the prior, the
        uninformative tasks hidden), so that its scores are on the ranker's scale; on val and test, the ranker's
        own."""
        names = ranker.features
        train = task_hidden(self.base_rows["train"], set(uninformative))
        val = task_hidden(self.base_rows["val"], set(uninformative))
        folds = [train[0::2], train[1::2]]
        scorers = {}
        for i, fold in enumerate(folds):
            try:
                booster = fit_lambdarank(folds[1 - i], val, names, fit, seed, init_model=prior)
            except UserError:  # a half without a changed file among its candidates: the ranker's own scores
                booster = ranker.booster
            scorers.update({rows.commit: booster for rows in fold})
        for split, partials in self.partials.items():
            for partial in partials:
                booster = scorers.get(partial.commit, ranker.booster) if split == "train" else ranker.booster
                partial.rows = with_base_score(partial.rows, booster, names)
