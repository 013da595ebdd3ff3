"""The learned file ranker: LightGBM lambdarank over the named features, its folder, and how it is fitted.

    booster = fit_lambdarank(train_rows, val_rows, names, fit_settings, seed)   # early-stopped on val
    ranker = Ranker.load(output_dir / "ranker")            # offline: LightGBM text models + settings.json
    order = ranker.rank(rows)                              # rows: features.CandidateRows -> [(path, score)]
    types = ranker.change_types(type_examples)             # {path: "MODIFIED_FUNCTION", ...}

The ranker folder (written by train_ranker.py, atomically):
    ranker.txt          LightGBM text model over features.FEATURES (then DENSE_FEATURES when `dense` is on)
    ranker_lm.txt       optional: the same plus the language model's features (LM_FEATURES) and ranker.txt's
                        score, fitted only on targets the language model never trained on; predictions use it
                        only where it beat ranker.txt on held-out val targets (settings' `lm_used`, metrics'
                        `lm_choice`), evaluation reports it either way
    change_types.txt    optional: LightGBM multiclass model for a file's main change type
    settings.json       the feature names, the baseline and candidate settings the features were computed with,
                        the embedding settings (dense), the change-type classes, LightGBM's parameters and version
    history.json        the history's statistics at its last commit (history.PastCommits.to_state), the commits
                        seen and the repository: what prediction needs, without commits.json and chunks.jsonl
    test_rows.npy       the test targets' feature rows and, in test_rows.json, their paths and the settings that
    test_rows.json      shaped them (baselines, repository, history digests, language model), for evaluate.py
    file_vectors.npy    with dense: the file versions' embeddings computed while training, and their (path, blob)
    file_vectors.json   keys, so that evaluation and the first predictions need not embed them again
    metrics.json        train/val/test figures, feature importances, fit time
    symbol_ranker.*     optional: the symbol ranker and the symbols' history (repo2model.ranking.symbol_ranker)

A ranker takes its features by name (CandidateRows.columns), never by position.
Determinism: LightGBM runs with `deterministic`, `force_row_wise`, a fixed thread count and seed, so the same
rows give the same model bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np

from repo2model.core.artifacts import atomic_open, atomic_path, write_json
from repo2model.core.config import section_dict
from repo2model.core.errors import UserError, first_line
from repo2model.ranking.change_types import TypeExample, predict_change_types
from repo2model.ranking.config import FitSettings
from repo2model.ranking.dense import file_embeddings, scorer_of
from repo2model.ranking.features import (
    DENSE_FEATURES, LM_FEATURES, CandidateRows, DenseScorer, FeatureConfig, load_rows, save_rows,
)
from repo2model.ranking.history import BaselineConfig
from repo2model.retrieval.embedding import FileEmbeddings

log = logging.getLogger("ranking")

RANKER_FILE = "ranker.txt"
RANKER_LM_FILE = "ranker_lm.txt"
CHANGE_TYPES_FILE = "change_types.txt"
SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
TEST_ROWS = "test_rows"  # test_rows.npy + test_rows.json
BASE_SCORE = "base_score"  # the LM ranker's last feature: ranker.txt's score


@dataclass
class Ranker:
    """A trained ranker folder, loaded (see the module docstring)."""

    booster: lgb.Booster
    settings: dict
    booster_lm: lgb.Booster | None = None
    change_type_model: lgb.Booster | None = None
    metrics: dict = field(default_factory=dict)
    folder: Path | None = None
    file_embeddings: FileEmbeddings | None = None  # with dense: saved with the ranker, loaded on first use
    history: dict | None = None  # to save: history.json (read by file_ranking.FileRanking, not by load)
    test_rows: tuple[dict, list[CandidateRows]] | None = None  # to save: (settings, rows); read by saved_test_rows
    companions: list = field(default_factory=list)  # to save beside it: models with save(folder), e.g. the symbol ranker

    @property
    def features(self) -> list[str]:
        return list(self.settings["features"])

    def candidates(self) -> FeatureConfig:
        """The candidate settings the ranker was trained with; `dense` as its feature list says (a folder
        written before the dense features existed has neither the key nor the features)."""
        known = {f.name for f in dataclasses.fields(FeatureConfig)}
        values = {k: v for k, v in (self.settings.get("candidates") or {}).items() if k in known}
        values.setdefault("pool_per_commit_size", 0)  # a folder written before the pool grew gathers as it did
        values.setdefault("lm_candidates", 0)  # a folder written before the limit: the model scored every one
        return FeatureConfig(**{**values, "dense": any(name in self.features for name in DENSE_FEATURES)})

    def dense_scorer(self) -> DenseScorer | None:
        """The dense similarity the ranker's features were computed with (None when it has none): the same
        embedding model and file texts (settings' `dense`), the vectors saved with it loaded once."""
        if not self.candidates().dense:
            return None
        if self.file_embeddings is None:
            self.file_embeddings = file_embeddings(self.settings.get("dense") or {})
            if self.folder is not None:
                self.file_embeddings.load(self.folder)
        return scorer_of(self.file_embeddings)

    @property
    def uses_lm(self) -> bool:
        """Whether predictions rank with the LM ranker: it exists and beat ranker.txt on held-out val targets
        (settings' `lm_used`; a folder written before that choice existed uses it whenever it exists)."""
        return self.booster_lm is not None and bool(self.settings.get("lm_used", True))

    @property
    def classes(self) -> list[str]:
        return list(self.settings.get("change_type_classes") or [])

    def scores(self, rows: CandidateRows, lm: bool = False) -> np.ndarray:
        """The ranker's score of each candidate (the LM ranker's when `lm` and it exists and the rows carry
        the LM features)."""
        if not len(rows.paths):
            return np.zeros(0)
        base = self.booster.predict(rows.columns(self.features))
        if lm and self.booster_lm is not None and set(LM_FEATURES) <= set(rows.names):
            return self.booster_lm.predict(np.column_stack([rows.columns(self.features + list(LM_FEATURES)), base]))
        return base

    def rank(self, rows: CandidateRows, lm: bool = False) -> list[tuple[str, float]]:
        return ranked(rows.paths, self.scores(rows, lm))

    def change_types(self, examples: list[TypeExample]) -> dict[str, str]:
        """Each file's predicted main change type (the classifier's, else the file's most frequent one)."""
        return predict_change_types(self.change_type_model, self.classes, examples)

    def saved_test_rows(self) -> tuple[dict, dict[str, CandidateRows]] | None:
        """The test targets' rows train_ranker saved: (the settings that shaped them, {commit: rows})."""
        return load_rows(self.folder, TEST_ROWS) if self.folder is not None else None

    def save(self, folder: Path) -> Path:
        """Write the ranker folder atomically (replacing any older one)."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            for name, booster in ((RANKER_FILE, self.booster), (RANKER_LM_FILE, self.booster_lm),
                                  (CHANGE_TYPES_FILE, self.change_type_model)):
                if booster is not None:
                    with atomic_open(tmp / name) as fh:
                        fh.write(booster.model_to_string())
            write_json(tmp / SETTINGS_FILE, self.settings)
            write_json(tmp / METRICS_FILE, self.metrics)
            if self.history is not None:
                write_json(tmp / HISTORY_FILE, self.history, indent=None)
            if self.test_rows is not None:
                save_rows(tmp, TEST_ROWS, self.test_rows[1], self.test_rows[0])
            if self.file_embeddings is not None:
                self.file_embeddings.save(tmp)
            for companion in self.companions:
                companion.save(tmp)
        return folder

    @classmethod
    def load(cls, folder: Path) -> "Ranker":
        folder = Path(folder)
        model = folder / RANKER_FILE
        if not model.is_file():
            raise UserError(f"{folder}: no {RANKER_FILE}: run the train_ranker stage (python pipeline.py --stage "
                            "train_ranker)")
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
            metrics_path = folder / METRICS_FILE
            metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
            booster = lgb.Booster(model_str=model.read_text(encoding="utf-8"))
            lm_path, types_path = folder / RANKER_LM_FILE, folder / CHANGE_TYPES_FILE
            booster_lm = lgb.Booster(model_str=lm_path.read_text(encoding="utf-8")) if lm_path.is_file() else None
            types = lgb.Booster(model_str=types_path.read_text(encoding="utf-8")) if types_path.is_file() else None
        except (OSError, ValueError, lgb.basic.LightGBMError) as exc:
            raise UserError(f"{folder}: not a ranker folder written by train_ranker ({type(exc).__name__}: "
                            f"{first_line(exc)}): rerun that stage") from None
        if booster.feature_name() != list(settings.get("features", [])):
            raise UserError(f"{folder}: {RANKER_FILE} and {SETTINGS_FILE} disagree on the features: rerun train_ranker")
        return cls(booster, settings, booster_lm, types, metrics, folder)


def ranked(paths: list[str], values: np.ndarray) -> list[tuple[str, float]]:
    """(path, score), best first; equal scores in path order."""
    order = sorted(range(len(paths)), key=lambda i: (-values[i], paths[i]))
    return [(paths[i], float(values[i])) for i in order]


def find_ranker(*folders: Path | None) -> Path | None:
    """The first of `folders` that holds a ranker (e.g. <output_dir>/ranker, then beside the model)."""
    for folder in folders:
        if folder is not None and (Path(folder) / RANKER_FILE).is_file():
            return Path(folder)
    return None


# ---------------------------------------------------------------- fitting


def stack(groups: list[CandidateRows], names: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Rows of many targets -> (the features `names`, labels, group sizes) for LightGBM (targets without
    candidates dropped)."""
    groups = [g for g in groups if len(g.paths)]
    if not groups:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int8), []
    features = np.concatenate([g.columns(names) for g in groups])
    return features, np.concatenate([g.labels for g in groups]), [len(g.paths) for g in groups]


def fit_lambdarank(train: list[CandidateRows], val: list[CandidateRows], names: list[str], fit: FitSettings,
                   seed: int, rounds: int | None = None, init_model: lgb.Booster | None = None,
                   start_column: str | None = None) -> lgb.Booster:
    """A lambdarank booster over the features `names` on `train`'s targets, early-stopped on `val`'s (or
    exactly `rounds` trees). `init_model` (e.g. the prior, repo2model.ranking.prior), a model over the first of
    `names`, is boosted on: its scores start every row, and the booster holds its trees, then the new ones.
    `start_column` (one of `names`, e.g. BASE_SCORE) starts every row at that column's value instead: the
    booster learns only what to add to it, so its score is `start_column` + its prediction."""
    if init_model is not None and start_column is not None:
        raise ValueError("boost on a model or start from a column, not both")
    x, y, groups = stack(train, names)
    if not groups or not y.any():
        raise UserError("no training target has a changed file among its candidates: the history is too short "
                        "to train a ranker (or every candidate list missed): lower dataset_builder's val/test ratios")
    params = fit.lightgbm_params(seed, objective="lambdarank", metric="ndcg", eval_at=[5, 10],
                                 lambdarank_truncation_level=20)
    if init_model is not None:
        if init_model.feature_name() != list(names[: init_model.num_feature()]):
            raise ValueError("the model to boost on is over other features than the first of these")
        if init_model.num_feature() < len(names):  # it reads the first columns only
            params["predict_disable_shape_check"] = True
    column = names.index(start_column) if start_column is not None else None
    start = (lambda features: features[:, column].astype(np.float64)) if column is not None else (lambda _: None)
    train_set = lgb.Dataset(x, y, group=groups, init_score=start(x), feature_name=list(names), free_raw_data=True)
    callbacks, valid_sets = [], []
    xv, yv, gv = stack(val, names)
    if rounds is None and gv and yv.any():
        valid_sets = [lgb.Dataset(xv, yv, group=gv, init_score=start(xv), reference=train_set)]
        callbacks = [lgb.early_stopping(fit.early_stopping_rounds, first_metric_only=False, verbose=False)]
    booster = lgb.train(params, train_set, num_boost_round=rounds or fit.num_trees, valid_sets=valid_sets,
                        callbacks=callbacks, init_model=init_model)
    if valid_sets and booster.best_iteration:  # counts init_model's trees too
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return booster


def with_base_score(booster: lgb.Booster, rows: list[CandidateRows], base: list[str]) -> list[CandidateRows]:
    """Rows with the first ranker's score (over the features `base`) as the column BASE_SCORE."""
    return [r.with_columns({BASE_SCORE: booster.predict(r.columns(base)) if len(r.paths) else np.zeros(0)})
            for r in rows]


@dataclass
class LMFit:
    """The LM ranker, and its scores on the val targets from the half of val it was not fitted on (the rows carry
    ranker.txt's scores as BASE_SCORE): what tells whether predictions should use it (train_ranker's lm_choice)."""

    booster: lgb.Booster
    held_out: list[tuple[CandidateRows, np.ndarray]]  # (val rows, the LM ranker's out-of-fold scores)


def fit_lm_ranker(booster: lgb.Booster, val: list[CandidateRows], fit: FitSettings, seed: int,
                  base: list[str]) -> LMFit | None:
    """The ranker with the language model's features, over `base` (the first ranker's features), LM_FEATURES
    and the first ranker's score, fitted on the val targets only: the language model trained on the train
    targets, so its scores there are optimistic. Its number of trees is chosen by cross-fitting the two halves
    of val (fit on one, stop on the other, both ways); those two fits also score the half they were not fitted
    on. None when val has too few targets with those features."""
    names = list(base) + list(LM_FEATURES) + [BASE_SCORE]
    rows = [r for r in with_base_score(booster, val, base) if r.names == names]
    if len(rows) < 4:
        log.warning("ranker: too few val targets (%d) for the language-model ranker: left out", len(rows))
        return None
    half = len(rows) // 2
    first, second = rows[:half], rows[half:]
    trees, held_out = [], []
    for fitted_on, other in ((first, second), (second, first)):
        model = fit_lambdarank(fitted_on, other, names, fit, seed)
        trees.append(model.num_trees())
        held_out += [(r, model.predict(r.columns(names))) for r in other]
    final = fit_lambdarank(rows, [], names, fit, seed, rounds=max(1, round(sum(trees) / len(trees))))
    return LMFit(final, held_out)


def importances(booster: lgb.Booster, after: int = 0) -> dict[str, float]:
    """Each feature's share of the total split gain, largest first; of the trees after the first `after` only (a
    ranker boosted on from the prior: what its own history taught it)."""
    gain = booster.feature_importance("gain")
    if after:
        gain = gain - booster.feature_importance("gain", iteration=after)
    total = float(gain.sum()) or 1.0
    pairs = sorted(zip(booster.feature_name(), gain), key=lambda kv: (-kv[1], kv[0]))
    return {name: round(float(value) / total, 4) for name, value in pairs}


# ---------------------------------------------------------------- the test targets' rows, built once


def rows_settings(baselines: BaselineConfig, repo: Path | None, mined_until: int | None, commits_path: Path,
                  chunks_path: Path, language_model: dict | None) -> dict:
    """Everything besides the ranker's own settings that shapes a target's rows: the statistics' settings and
    how far they are mined, the repository (code search, the tree), the history itself (digests of its files)
    and the language model that scored the candidates (`language_model_identity`; None: none did)."""
    return {"baselines": section_dict(baselines), "mined_until": mined_until,
            "repository": str(repo) if repo is not None else None,
            "history": {"commits": file_digest(commits_path), "chunks": file_digest(chunks_path)},
            "language_model": language_model}


def language_model_identity(model_dir: Path, device: str, prediction: dict) -> dict:
    """Which language model scored the candidates, and how (the `predict` section: batching, ...)."""
    return {"model_dir": str(Path(model_dir).resolve()), "device": device, "prediction": prediction}


def file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "blake2b").hexdigest()


def reusable_test_rows(ranker: Ranker, settings: dict) -> dict[str, CandidateRows]:
    """The test targets' rows train_ranker saved ({commit: rows}) when it built them as `settings`
    (rows_settings) says; without their language-model columns when another model, or none, scored them
    ({} when the settings differ or nothing was saved)."""
    saved = ranker.saved_test_rows()
    if saved is None:
        return {}
    shaped, rows = saved
    differ = sorted(k for k in set(shaped) | set(settings)
                    if k != "language_model" and shaped.get(k) != settings.get(k))
    if differ:
        log.info("the ranker's saved test rows were built with other %s: computed again", ", ".join(differ))
        return {}
    if shaped.get("language_model") != settings.get("language_model"):
        rows = {commit: r.select([n for n in r.names if n not in LM_FEATURES]) for commit, r in rows.items()}
    return rows
