"""The prior: a file ranker learned across histories and shipped with the project, that every repository's
ranker starts from.

    prior = Prior.load()                        # the shipped one: repo2model/ranking/prior/{prior.txt,prior.json}
    prior = Prior.load(folder)                  # another (e.g. fitted without the history under test)
    booster = fit_lambdarank(train, val, names, fit, seed, init_model=prior.booster)   # repo2model.ranking.ranker
    prior_booster = fit_prior(train, val)       # bench/train_prior.py: the rows of several histories

A ranker fitted on one history starts from nothing; on a few hundred huge commits it stops after a few trees.
The prior is a LightGBM lambdarank model fitted on the feature rows of several histories (fd, axum and click,
and fd and click squashed like a coding agent's history: bench/train_prior.py). It learns from PRIOR_FEATURES
only, the features whose scale does not depend on the history (rates, shares, scores, ranks divided by the
typical commit size), so that it carries over to a history it never saw; its feature list is nevertheless the
whole FEATURES (the others are missing in every row it learned from, so no tree splits on them), which lets a
repository's ranker continue boosting from it (LightGBM's init_model) over FEATURES and the features after them:
its model (ranker.txt) holds the prior's trees, then its own, and scores their sum.

Each training target is there twice: as it is (its task's features hidden when its message is uninformative),
and with its task's features hidden, so that the prior ranks both with a task and without one, and a history
whose messages say nothing still gets the weight of the task's features from the others.

prior.json: the features, the histories it learned from, LightGBM's parameters and version, its trees, and the
sha256 of prior.txt (a prior whose text does not match is refused).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from repo2model.core.artifacts import atomic_open, write_json
from repo2model.core.errors import UserError, first_line
from repo2model.ranking.config import FitSettings
from repo2model.ranking.features import FEATURES, PRIOR_FEATURES, CandidateRows, task_hidden, without_task
from repo2model.ranking.ranker import fit_lambdarank

log = logging.getLogger("ranking")

PRIOR_DIR = Path(__file__).resolve().parent / "prior"
MODEL_FILE = "prior.txt"
INFO_FILE = "prior.json"
# Larger leaves than a repository's ranker: the rows of several histories, and a model that must not learn any
# one of them by heart. 31 leaves: 15 lost on the 300-commit windows of click (recall@5 -0.03).
PRIOR_FIT = FitSettings(num_trees=1000, early_stopping_rounds=50, learning_rate=0.05, num_leaves=31,
                        min_data_in_leaf=200, feature_fraction=0.8, num_threads=1)
PRIOR_SEED = 42


@dataclass
class Prior:
    """A prior model, loaded (see the module docstring)."""

    booster: lgb.Booster
    info: dict
    folder: Path

    @property
    def features(self) -> list[str]:
        return list(self.info["features"])

    @property
    def digest(self) -> str:
        return self.info["sha256"]

    def fits(self, names: list[str]) -> bool:
        """Whether a ranker over `names` can start from this prior: its features are their first columns."""
        return list(names[: len(self.features)]) == self.features

    def summary(self) -> dict:
        """What a ranker records of the prior it started from (settings.json, metrics.json)."""
        return {"sha256": self.digest, "trees": self.booster.num_trees(), "histories": self.info.get("histories"),
                "folder": str(self.folder)}

    @classmethod
    def load(cls, folder: Path | None = None) -> "Prior":
        """The prior in `folder` (the shipped one when None); UserError when it is not one, or its text does not
        match prior.json's digest."""
        folder = Path(folder) if folder is not None else PRIOR_DIR
        model, info_path = folder / MODEL_FILE, folder / INFO_FILE
        try:
            text = model.read_bytes()
            info = json.loads(info_path.read_text(encoding="utf-8"))
            booster = lgb.Booster(model_str=text.decode("utf-8"))
        except (OSError, ValueError, lgb.basic.LightGBMError) as exc:
            raise UserError(f"{folder}: no prior ({MODEL_FILE} + {INFO_FILE}) there ({type(exc).__name__}: "
                            f"{first_line(exc)}): regenerate it with bench/train_prior.py") from None
        if hashlib.sha256(text).hexdigest() != info.get("sha256"):
            raise UserError(f"{model}: does not match the sha256 in {INFO_FILE}: regenerate it with "
                            "bench/train_prior.py")
        if booster.feature_name() != list(info.get("features", [])):
            raise UserError(f"{folder}: {MODEL_FILE} and {INFO_FILE} disagree on the features")
        return cls(booster, info, folder)


def load_prior(setting: str, names: list[str]) -> Prior | None:
    """The prior that a ranker over `names` starts from, as `train_ranker.prior` says: auto (the shipped one;
    left out with a warning when it is missing or over other features than FEATURES: a stale prior), off, or a
    folder (UserError when it holds no prior for these features)."""
    if setting == "off":
        return None
    if setting == "auto":
        try:
            prior = Prior.load()
        except UserError as exc:
            log.warning("%s; the ranker starts from nothing", exc)
            return None
        if not prior.fits(names):
            log.warning("%s: the shipped prior is over other features than the ranker's (stale: regenerate it with "
                        "bench/train_prior.py); the ranker starts from nothing", prior.folder)
            return None
        return prior
    prior = Prior.load(Path(setting))
    if not prior.fits(names):
        raise UserError(f"train_ranker.prior: {setting} is a prior over other features than the ranker's: "
                        "regenerate it with bench/train_prior.py")
    return prior


def prior_rows(rows: list[CandidateRows], uninformative: set[str]) -> list[CandidateRows]:
    """Each target twice (module docstring): as the prior learns it, then with its task's features hidden."""
    return task_hidden(rows, uninformative) + [without_task(r) for r in rows]


def only_prior_features(rows: CandidateRows) -> CandidateRows:
    """The rows over FEATURES with every feature but PRIOR_FEATURES missing."""
    features = rows.columns(list(FEATURES)).copy()
    features[:, [j for j, name in enumerate(FEATURES) if name not in PRIOR_FEATURES]] = np.nan
    return CandidateRows(rows.commit, rows.paths, list(FEATURES), features, rows.labels)


def fit_prior(train: list[CandidateRows], val: list[CandidateRows]) -> lgb.Booster:
    """The prior over FEATURES, learned from PRIOR_FEATURES of `train`'s targets, early-stopped on `val`'s
    (both from prior_rows). The same rows give the same bytes."""
    return fit_lambdarank([only_prior_features(r) for r in train], [only_prior_features(r) for r in val],
                          list(FEATURES), PRIOR_FIT, PRIOR_SEED)


def save_prior(booster: lgb.Booster, folder: Path, histories: dict) -> Path:
    """prior.txt and prior.json in `folder` (`histories`: what it learned from, e.g. {name: targets})."""
    text = booster.model_to_string().encode("utf-8")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_open(folder / MODEL_FILE, "wb") as fh:
        fh.write(text)
    write_json(folder / INFO_FILE, {
        "features": booster.feature_name(), "learns_from": list(PRIOR_FEATURES), "histories": histories,
        "trees": booster.num_trees(), "lightgbm": {"version": lgb.__version__, "seed": PRIOR_SEED,
                                                   **{k: v for k, v in vars(PRIOR_FIT).items()}},
        "sha256": hashlib.sha256(text).hexdigest(),
    })
    return folder
