"""The learned symbol ranker: which units of the likely files (and of the search's hits) a change will touch.

    symbols = SymbolRanker.load(ranker_dir)                    # None when the folder has none
    p = symbols.probabilities(rows)                            # rows: symbol_features.symbol_rows(...)
    scorer = UnitScorer(symbols, context, files)               # for the context pack: units -> (p, why)

A LightGBM lambdarank model over symbol_features' named features (fitted by ranker.fit_lambdarank, like the
file ranker), and a calibration of its score into the probability that the target changes the unit: a
logistic fit of (score, score less the target's best) on the val targets' candidates. The context pack needs
probabilities, not only an order: it weighs a unit's chance against its tokens.

Files beside the file ranker (written into its folder by train_ranker, atomically with it):
    symbol_ranker.txt      the LightGBM text model
    symbol_ranker.json     the feature names, the calibration, the candidate settings, LightGBM's parameters
    symbol_history.json    the symbols' change positions at the history's last commit (SymbolHistory.to_state)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np

from repo2model.core.artifacts import atomic_open, read_json, write_json
from repo2model.core.errors import UserError, first_line
from repo2model.ranking.config import FitSettings
from repo2model.ranking.features import CandidateRows
from repo2model.ranking.ranker import fit_lambdarank
from repo2model.ranking.symbol_features import SYMBOL_FEATURES, SymbolContext, reasons, symbol_rows
from repo2model.ranking.symbol_history import SymbolHistory
from repo2model.retrieval.bm25 import FileSearch, code_words
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.units import IndexUnit, units_of_file

log = logging.getLogger("ranking")

MODEL_FILE = "symbol_ranker.txt"
SETTINGS_FILE = "symbol_ranker.json"
HISTORY_FILE = "symbol_history.json"
SYMBOL_FILES = 10  # the file ranker's best files whose units are candidates
FILE_RANKS = 20  # the file ranker's files whose rank and score the features know (the prediction's max_files)
SEARCH_FILES = 5  # in training, the code search's best other files lend units that share task words ...
SEARCH_UNITS = 10  # ... at most this many each (the index's search hits at prediction time)


@dataclass
class SymbolRanker:
    """A fitted symbol ranker (see the module docstring); `history` is saved with it."""

    booster: lgb.Booster
    settings: dict
    history: SymbolHistory | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return list(self.settings["features"])

    @property
    def dense(self) -> bool:
        return len(self.features) > len(SYMBOL_FEATURES)

    def scores(self, rows: CandidateRows) -> np.ndarray:
        return self.booster.predict(rows.columns(self.features)) if len(rows.paths) else np.zeros(0)

    def probabilities(self, rows: CandidateRows) -> np.ndarray:
        """The calibrated probability that the target changes each candidate."""
        return calibrated(self.scores(rows), self.settings["calibration"])

    def save(self, folder: Path) -> None:
        """Write the three files into `folder` (the ranker folder being written)."""
        with atomic_open(Path(folder) / MODEL_FILE) as fh:
            fh.write(self.booster.model_to_string())
        write_json(Path(folder) / SETTINGS_FILE, {**self.settings, "metrics": self.metrics})
        if self.history is not None:
            write_json(Path(folder) / HISTORY_FILE, self.history.to_state(), indent=None)

    @classmethod
    def load(cls, folder: Path | None) -> SymbolRanker | None:
        """The symbol ranker of a ranker folder, with its history; None when the folder has none (a ranker
        written before it existed, or one whose history was too short to fit it)."""
        if folder is None or not (Path(folder) / MODEL_FILE).is_file():
            return None
        folder = Path(folder)
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
            booster = lgb.Booster(model_str=(folder / MODEL_FILE).read_text(encoding="utf-8"))
            history = (SymbolHistory.from_state(read_json(folder / HISTORY_FILE))
                       if (folder / HISTORY_FILE).is_file() else None)
        except (OSError, ValueError, KeyError, TypeError, UserError, lgb.basic.LightGBMError) as exc:
            raise UserError(f"{folder}: not a symbol ranker written by train_ranker ({type(exc).__name__}: "
                            f"{first_line(exc)}): rerun that stage") from None
        if booster.feature_name() != list(settings.get("features", [])):
            raise UserError(f"{folder}: {MODEL_FILE} and {SETTINGS_FILE} disagree on the features: rerun train_ranker")
        return cls(booster, settings, history, settings.get("metrics") or {})


# ---------------------------------------------------------------- fitting


def fit_symbol_ranker(train: list[CandidateRows], val: list[CandidateRows], fit: FitSettings, seed: int,
                      dense: bool = False) -> SymbolRanker | None:
    """Lambdarank on the train targets' candidates, early-stopped on val's, then calibrated on val's. None (and
    a warning) when no train target has a changed unit among its candidates."""
    names = [*SYMBOL_FEATURES, *(() if not dense else ("dense_score", "dense_rank", "dense_gap"))]
    try:
        booster = fit_lambdarank(train, val, names, fit, seed)
    except UserError:
        log.warning("symbol ranker: no training target has a changed unit among its candidates: left out")
        return None
    scores = [booster.predict(r.columns(names)) if len(r.paths) else np.zeros(0) for r in val]
    calibration = fit_calibration(scores, [r.labels for r in val])
    settings = {"features": names, "calibration": calibration, "symbol_files": SYMBOL_FILES,
                "file_ranks": FILE_RANKS, "lightgbm": {"version": lgb.__version__, "seed": seed}}
    return SymbolRanker(booster, settings)


def calibration_inputs(scores: np.ndarray) -> np.ndarray:
    """(score, score less the target's best, 1) per candidate."""
    best = scores.max() if len(scores) else 0.0
    return np.column_stack([scores, scores - best, np.ones(len(scores))])


def calibrated(scores: np.ndarray, weights: list[float]) -> np.ndarray:
    if not len(scores):
        return np.zeros(0)
    return 1.0 / (1.0 + np.exp(-np.clip(calibration_inputs(scores) @ np.asarray(weights), -30, 30)))


def fit_calibration(scores: list[np.ndarray], labels: list[np.ndarray], l2: float = 1.0) -> list[float]:
    """Logistic regression (Newton's method) of the labels on calibration_inputs; a flat 1% without positives."""
    x = np.concatenate([calibration_inputs(s) for s in scores if len(s)] or [np.zeros((0, 3))])
    y = np.concatenate([lab for s, lab in zip(scores, labels) if len(s)] or [np.zeros(0)]).astype(np.float64)
    if not len(y) or not y.any() or y.all():
        return [0.0, 0.0, float(np.log(0.01 / 0.99))]
    weights = np.zeros(3)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ weights, -30, 30)))
        gradient = x.T @ (p - y) + l2 * weights
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(3)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-9:
            break
    return [round(float(w), 8) for w in weights]


# ---------------------------------------------------------------- candidates from a tree


class TreeUnits:
    """The candidate units of files of a tree (FileSearch), parsed once per file version."""

    def __init__(self, cfg: IndexConfig | None = None, limit: int = 8192):
        self.cfg, self.limit = cfg or IndexConfig(), limit
        self.cache: dict[tuple[str, str], list[IndexUnit]] = {}

    def of(self, code: FileSearch, path: str) -> list[IndexUnit]:
        """`path`'s units (not its `file` units) as it is in `code`'s tree; [] when it is not there."""
        oid = code.blobs.get(path)
        if oid is None:
            return []
        if (path, oid) not in self.cache:
            if len(self.cache) > self.limit:
                self.cache.clear()
            data = code.read(path)
            units = units_of_file(path, data, oid, self.cfg) if data is not None else []
            self.cache[(path, oid)] = [u for u in units if u.kind != "file"]
        return self.cache[(path, oid)]

    def candidates(self, code: FileSearch, files: list[str], others: list[str], task_words: list[str]) -> list[IndexUnit]:
        """Every unit of `files`, then of each of `others` (files a search found) at most SEARCH_UNITS of those
        that share the most task words (none that share none)."""
        out = [u for path in files for u in self.of(code, path)]
        task = set(task_words)
        for path in others:
            shared = [(len(task & set(code_words(u.symbol + " " + u.text[:20_000]))), i)
                      for i, u in enumerate(self.of(code, path))]
            best = sorted((s for s in shared if s[0] > 0), key=lambda s: (-s[0], s[1]))[:SEARCH_UNITS]
            out += [self.of(code, path)[i] for _, i in sorted(best, key=lambda s: s[1])]
        return out


# ---------------------------------------------------------------- scoring units for the context pack


class UnitScorer:
    """Units -> (probability that the change touches each, why), for one task: what the context pack weighs.

    `files` are the predicted files whose units are candidates (the pack asks the index for them)."""

    def __init__(self, ranker: SymbolRanker, context: SymbolContext, files: list[str]):
        self.ranker, self.context, self.files = ranker, context, files

    def __call__(self, units: list[IndexUnit]) -> list[tuple[float, str]]:
        if not units:
            return []
        rows = symbol_rows(self.context, units, dense=self.ranker.dense)
        p = self.ranker.probabilities(rows)
        return [(float(p[i]), "; ".join(reasons(rows, i))) for i in range(len(units))]

    def ranked(self, units: list[IndexUnit]) -> list[tuple[IndexUnit, float]]:
        """The units with their probabilities, most likely first."""
        scored = self(units)
        order = sorted(range(len(units)), key=lambda i: (-scored[i][0], units[i].path, units[i].start))
        return [(units[i], scored[i][0]) for i in order]
