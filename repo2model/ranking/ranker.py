"""The learned file ranker (LightGBM lambdarank), the change-type classifier, symbol ranking, and the metrics
every predictor is scored with.

    ranker = Ranker.load(output_dir / "ranker")            # offline: LightGBM text models + settings.json
    order = ranker.rank(rows)                              # rows: features.CandidateRows -> [(path, score)]
    types = ranker.change_types(type_examples)             # {path: "MODIFIED_FUNCTION", ...}
    ranking = FileRanking.find(model_dir, paths)           # prediction time: the ranker + the history's statistics

The ranker folder (written by train_ranker.py, atomically):
    ranker.txt          LightGBM text model over features.FEATURES (then DENSE_FEATURES when `dense` is on)
    ranker_lm.txt       optional: the same plus the language model's features (LM_FEATURES) and ranker.txt's
                        score, fitted only on targets the language model never trained on
    change_types.txt    optional: LightGBM multiclass model for a file's main change type
    settings.json       the feature names, the baseline and candidate settings the features were computed with,
                        the embedding settings (dense), the change-type classes, LightGBM's parameters and version
    file_vectors.npy    with dense: the file versions' embeddings computed while training, and their (path, blob)
    file_vectors.json   keys, so that evaluation and the first predictions need not embed them again
    metrics.json        train/val/test figures, feature importances, fit time

Determinism: LightGBM runs with `deterministic`, `force_row_wise`, a fixed thread count and seed, so the same
rows give the same model bytes.

Metrics (per target commit, then averaged over the commits where they apply):
    recall@k         |top-k predicted files ∩ changed files| / min(k, |changed files|)
    mrr              1 / rank of the first changed file in the ranking (0 when none is ranked)
    change_type_acc  over the changed files a predictor named in its top 10: the share whose predicted main
                     change type is one of the file's actual change types (pooled)
    module_acc       the predictor's first module is one of the commit's modules
    symbol_recall    |predicted symbols ∩ changed symbols| / |changed symbols|
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

import lightgbm as lgb
import numpy as np

from repo2model.core.artifacts import atomic_open, atomic_path, iter_commits_with_chunks, write_json
from repo2model.ranking.baselines import BaselineConfig, PastCommits, main_change_types
from repo2model.code.units import PARSED_LANGUAGES, extract_units, is_test_file, language_of
from repo2model.core.errors import UserError, first_line
from repo2model.ranking.features import (
    DENSE_FEATURES, CandidateRows, DenseScorer, FeatureConfig, Target, candidate_rows, file_kind, repository_of,
    state_at,
)
from repo2model.core.paths import ArtifactPaths
from repo2model.retrieval.embedding import Embedder, FileEmbeddings
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.bm25 import FileSearch, FixedBM25, code_words

log = logging.getLogger("ranking")

KS = (1, 5, 10)
SIZE_BUCKETS = ((1, 1), (2, 3), (4, 10), (11, 30), (31, None))  # changed files per commit, inclusive

RANKER_FILE = "ranker.txt"
RANKER_LM_FILE = "ranker_lm.txt"
CHANGE_TYPES_FILE = "change_types.txt"
SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.json"


# ---------------------------------------------------------------- what is compared


@dataclass
class Prediction:
    """What one predictor says about one target commit."""

    files: list[tuple[str, float]]  # ranked, best first
    change_types: dict[str, str] = field(default_factory=dict)  # file -> its main predicted change type
    modules: list[str] = field(default_factory=list)  # ranked
    symbols: list[str] = field(default_factory=list)


@dataclass
class Truth:
    """What the target commit really changed."""

    commit: str
    files: list[str]
    change_types: dict[str, set[str]]
    modules: set[str]
    symbols: set[str]

    @classmethod
    def of(cls, commit: str, chunks: list[dict]) -> "Truth":
        change_types: dict[str, set[str]] = {}
        for chunk in chunks:
            change_types.setdefault(chunk["file"], set()).add(chunk["change_type"])
        return cls(
            commit=commit,
            files=list(dict.fromkeys(chunk["file"] for chunk in chunks)),
            change_types=change_types,
            modules={c["module"] for c in chunks if c.get("module")},
            symbols={c["symbol"] for c in chunks if c.get("symbol")},
        )


def score(pred: Prediction, truth: Truth, ks: Iterable[int] = KS) -> dict:
    """The per-commit metrics of one prediction (None where a metric does not apply)."""
    ks = tuple(ks)
    actual = set(truth.files)
    ranked = [path for path, _ in pred.files]
    row: dict = {"files": len(actual)}
    for k in ks:
        row[f"recall@{k}"] = len(set(ranked[:k]) & actual) / min(k, len(actual)) if actual else None
    first = next((i for i, path in enumerate(ranked) if path in actual), None)
    row["mrr"] = (1.0 / (first + 1) if first is not None else 0.0) if actual else None
    hits = [path for path in ranked[: max(ks)] if path in actual and truth.change_types.get(path)]
    row["change_type_hits"] = len(hits)
    row["change_type_correct"] = sum(pred.change_types.get(path) in truth.change_types[path] for path in hits)
    row["module_acc"] = (float(bool(pred.modules) and pred.modules[0] in truth.modules) if truth.modules else None)
    row["symbol_recall"] = (len(set(pred.symbols) & truth.symbols) / len(truth.symbols) if truth.symbols else None)
    return row


def aggregate(rows: list[dict], ks: Iterable[int] = KS) -> dict:
    """Per-commit rows -> one figure per metric (means over the commits where it applies)."""

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    hits = sum(r.get("change_type_hits", 0) for r in rows)
    out = {f"recall@{k}": mean(f"recall@{k}") for k in ks}
    out["mrr"] = mean("mrr")
    out["change_type_acc"] = sum(r.get("change_type_correct", 0) for r in rows) / hits if hits else None
    out["change_type_files"] = hits
    out["module_acc"] = mean("module_acc")
    out["symbol_recall"] = mean("symbol_recall")
    out["commits"] = len(rows)
    return out


def size_bucket(files: int) -> str:
    for low, high in SIZE_BUCKETS:
        if files >= low and (high is None or files <= high):
            return f"{low}" if low == high else (f"{low}-{high}" if high else f"{low}+")
    return "0"


def by_size(rows: list[dict], ks: Iterable[int] = KS) -> dict[str, dict]:
    """recall@k and mrr per commit-size bucket (changed files), so that large commits are not hidden."""
    buckets: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("files"):
            buckets.setdefault(size_bucket(row["files"]), []).append(row)
    order = [size_bucket(low) for low, _ in SIZE_BUCKETS]
    return {name: {k: v for k, v in aggregate(buckets[name], ks).items()
                   if k.startswith("recall@") or k in ("mrr", "commits")}
            for name in order if name in buckets}


# ---------------------------------------------------------------- the config sections


@dataclass
class EvaluationConfig(BaselineConfig):
    """The `evaluate` section (evaluate.py; its baseline keys also set the ranker's features)."""

    split: Literal["test", "val"] = "test"
    max_examples: int = 40
    mine_from: Literal["train", "before_target"] = "before_target"
    baselines_only: bool = False
    test_from: int | None = None
    device: str = "cpu"

    def __post_init__(self):
        super().__post_init__()
        if self.max_examples < 0:
            raise ValueError("max_examples: must be >= 0 (0 = all)")
        if self.test_from is not None and self.test_from < 1:
            raise ValueError("test_from: must be >= 1 (some history must come before the targets)")

    def baselines(self) -> BaselineConfig:
        return BaselineConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BaselineConfig)})


@dataclass
class FitSettings:
    """LightGBM settings."""

    num_trees: int = 1000
    early_stopping_rounds: int = 50
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.8
    num_threads: int = 1

    def __post_init__(self):
        if self.num_trees < 1 or self.early_stopping_rounds < 1:
            raise ValueError("num_trees, early_stopping_rounds: must be >= 1")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError("learning_rate: must be in (0, 1]")
        if self.num_leaves < 2 or self.min_data_in_leaf < 1:
            raise ValueError("num_leaves: must be >= 2, min_data_in_leaf >= 1")
        if not 0.0 < self.feature_fraction <= 1.0:
            raise ValueError("feature_fraction: must be in (0, 1]")
        if self.num_threads < 1:
            raise ValueError("num_threads: must be >= 1")


@dataclass
class RankerConfig(FitSettings, FeatureConfig):
    """The `train_ranker` section (train_ranker.py): candidates, LightGBM, the classifier, the language model."""

    max_train_targets: int = 0
    change_types: bool = True
    language_model: Literal["auto", "off"] = "auto"
    device: str = "cpu"

    def __post_init__(self):
        FitSettings.__post_init__(self)
        FeatureConfig.__post_init__(self)
        if self.max_train_targets < 0:
            raise ValueError("max_train_targets: must be >= 0 (0 = all)")
        if self.language_model not in ("auto", "off"):
            raise ValueError("language_model: must be auto or off")

    def fit(self) -> FitSettings:
        return FitSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FitSettings)})

    def candidates(self) -> FeatureConfig:
        return FeatureConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FeatureConfig)})


# ---------------------------------------------------------------- LightGBM


def lightgbm_params(fit: FitSettings, seed: int, **extra) -> dict:
    """Parameters that make the same rows give the same model bytes."""
    return {
        "learning_rate": fit.learning_rate,
        "num_leaves": fit.num_leaves,
        "min_data_in_leaf": fit.min_data_in_leaf,
        "feature_fraction": fit.feature_fraction,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": fit.num_threads,
        "seed": seed,
        "verbosity": -1,
        **extra,
    }


def stack(groups: list[CandidateRows], columns: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Rows of many targets -> (features, labels, group sizes) for LightGBM (targets without candidates dropped)."""
    groups = [g for g in groups if len(g.paths)]
    if not groups:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int8), []
    features = np.concatenate([g.features if columns is None else g.features[:, columns] for g in groups])
    return features, np.concatenate([g.labels for g in groups]), [len(g.paths) for g in groups]


def fit_lambdarank(train: list[CandidateRows], val: list[CandidateRows], names: list[str], fit: FitSettings,
                   seed: int, columns: list[int] | None = None, rounds: int | None = None) -> lgb.Booster:
    """A lambdarank booster on `train`'s targets, early-stopped on `val`'s (or exactly `rounds` trees)."""
    x, y, groups = stack(train, columns)
    if not groups or not y.any():
        raise UserError("no training target has a changed file among its candidates: the history is too short "
                        "to train a ranker (or every candidate list missed): lower dataset_builder's val/test ratios")
    params = lightgbm_params(fit, seed, objective="lambdarank", metric="ndcg", eval_at=[5, 10],
                             lambdarank_truncation_level=20)
    train_set = lgb.Dataset(x, y, group=groups, feature_name=list(names), free_raw_data=True)
    callbacks, valid_sets = [], []
    xv, yv, gv = stack(val, columns)
    if rounds is None and gv and yv.any():
        valid_sets = [lgb.Dataset(xv, yv, group=gv, reference=train_set)]
        callbacks = [lgb.early_stopping(fit.early_stopping_rounds, first_metric_only=False, verbose=False)]
    booster = lgb.train(params, train_set, num_boost_round=rounds or fit.num_trees, valid_sets=valid_sets,
                        callbacks=callbacks)
    if valid_sets and booster.best_iteration:
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return booster


def importances(booster: lgb.Booster) -> dict[str, float]:
    """Each feature's share of the total split gain, largest first."""
    gain = booster.feature_importance("gain")
    total = float(gain.sum()) or 1.0
    pairs = sorted(zip(booster.feature_name(), gain), key=lambda kv: (-kv[1], kv[0]))
    return {name: round(float(value) / total, 4) for name, value in pairs}


# ---------------------------------------------------------------- change types


ACTION_WORDS = ("add", "new", "fix", "test", "remove", "delete", "rename", "move", "refactor", "doc", "update",
                "bump", "support", "implement", "clean", "improve", "change", "use", "allow", "deprecate",
                "release", "version", "readme", "changelog", "typo", "example", "option", "error", "feature")
TYPE_CLASSES = 16  # the most frequent main change types of the training targets; the rest are left out


@dataclass
class TypeExample:
    """What the change-type classifier sees of one (target, file): the file's history of change types, the
    task's words, the kind of file; and, for training and scoring, what the target did to it."""

    path: str
    types: dict[str, int]  # the file's past chunks per change type
    last: str | None  # its main change type the last time it changed
    count: int  # commits that changed it
    task: frozenset[str]
    exists: float  # 1.0: in the parent's tree, 0.0: not (a new file), NaN: unknown
    actual: frozenset[str] = frozenset()  # the target's change types of this file
    main: str | None = None  # the target's main change type of this file


def type_example(past: PastCommits, path: str, task_words: Iterable[str], exists: float,
                 chunks: list[dict] = ()) -> TypeExample:
    actual = [c["change_type"] for c in chunks if c["file"] == path]
    return TypeExample(path, dict(past.file_types.get(path) or {}), past.last_types.get(path),
                       past.file_commits.get(path, 0), frozenset(task_words), exists, frozenset(actual),
                       main_change_types([c for c in chunks if c["file"] == path]).get(path) if actual else None)


def change_type_features(example: TypeExample, classes: list[str]) -> list[float]:
    total = sum(example.types.values())
    language = language_of(example.path)
    return [
        *(example.types.get(c, 0) / total if total else math.nan for c in classes),
        float(total),
        float(classes.index(example.last)) if example.last in classes else math.nan,
        *(float(word in example.task) for word in ACTION_WORDS),
        *file_kind(example.path),
        float(PARSED_LANGUAGES.index(language)) if language in PARSED_LANGUAGES else -1.0,
        example.exists,
        float(example.count),
    ]


def most_frequent_type(example: TypeExample) -> str | None:
    """The baseline: the file's most frequent change type so far."""
    return min(example.types.items(), key=lambda kv: (-kv[1], kv[0]))[0] if example.types else None


def change_type_feature_names(classes: list[str]) -> list[str]:
    return ([f"share_{c}" for c in classes] + ["type_chunks", "last_type"] + [f"task_{w}" for w in ACTION_WORDS]
            + ["is_test", "is_doc", "is_config", "language", "exists", "count_all"])


def fit_change_types(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], classes: list[str],
                     fit: FitSettings, seed: int) -> lgb.Booster | None:
    """A multiclass booster on (features, class index) pairs; None when there is too little to learn."""
    x, y = train
    if len(y) < 20 or len(set(y.tolist())) < 2:
        return None
    params = lightgbm_params(fit, seed, objective="multiclass", num_class=len(classes), metric="multi_logloss")
    train_set = lgb.Dataset(x, y, feature_name=change_type_feature_names(classes), free_raw_data=True)
    callbacks, valid_sets = [], []
    if len(val[1]):
        valid_sets = [lgb.Dataset(val[0], val[1], reference=train_set)]
        callbacks = [lgb.early_stopping(fit.early_stopping_rounds, verbose=False)]
    booster = lgb.train(params, train_set, num_boost_round=min(fit.num_trees, 300), valid_sets=valid_sets,
                        callbacks=callbacks)
    if valid_sets and booster.best_iteration:
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return booster


def predict_change_types(model: lgb.Booster | None, classes: list[str], examples: list[TypeExample]) -> dict[str, str]:
    """Each example's predicted main change type: the classifier's when there is one, else the file's most
    frequent type so far (files with no history and no classifier get none)."""
    out: dict[str, str] = {}
    if model is not None and examples:
        x = np.array([change_type_features(e, classes) for e in examples], dtype=np.float32)
        for example, row in zip(examples, np.atleast_2d(model.predict(x))):
            out[example.path] = classes[int(np.argmax(row))]
        return out
    for example in examples:
        main = most_frequent_type(example)
        if main:
            out[example.path] = main
    return out


# ---------------------------------------------------------------- symbols


@dataclass
class SymbolCandidate:
    symbol: str
    text: str  # the unit's code at the parent ("" for a symbol known only from the history)


def units_at_parent(path: str, data: bytes | None) -> list[SymbolCandidate]:
    """The named units of one file version (Rust and Python; nothing for other files)."""
    language = language_of(path)
    if data is None or language not in PARSED_LANGUAGES:
        return []
    parsed = extract_units(language, data, test_file=is_test_file(language, path))
    lines = data.decode("utf-8", "replace").splitlines()
    seen: dict[str, SymbolCandidate] = {}
    for unit in parsed.units:
        if unit.symbol and unit.base_kind not in ("import",) and unit.symbol not in seen:
            seen[unit.symbol] = SymbolCandidate(unit.symbol, "\n".join(lines[unit.start - 1: unit.end]))
    return list(seen.values())


SYMBOL_WEIGHTS = (2.0, 1.0, 0.5)  # task relevance, recency, frequency in rank_symbols' fusion


@dataclass
class SymbolIndex:
    """A file's candidate symbols (its units at the parent, then the symbols its history changed) and their
    BM25 documents (name words counted three times, then the unit's code); reusable while neither changes."""

    names: list[str]
    index: FixedBM25

    @classmethod
    def of(cls, past: PastCommits, path: str, units: list[SymbolCandidate]) -> "SymbolIndex":
        candidates = {u.symbol: u.text for u in units}
        for symbol in past.file_symbols.get(path) or {}:
            candidates.setdefault(symbol, "")
        names = list(candidates)
        documents = [list(code_words(name)) * 3 + code_words(candidates[name][:20_000]) for name in names]
        return cls(names, FixedBM25(documents))


def rank_symbols(past: PastCommits, path: str, units: list[SymbolCandidate], task_words: list[str],
                 limit: int, k: int = 10, weights: tuple[float, float, float] = SYMBOL_WEIGHTS,
                 index: SymbolIndex | None = None) -> list[str]:
    """A file's symbols most likely to change for this task: its units at the parent and the symbols its
    history changed, ranked by weighted reciprocal-rank fusion of three lists, each holding only the
    symbols with evidence: BM25 against the task (SymbolIndex), recency of change, and frequency of change;
    ties and symbols without evidence by their order in the file. `index`: SymbolIndex.of(past, path, units)
    when already built."""
    index = index or SymbolIndex.of(past, path, units)
    names = index.names
    if not names or limit <= 0:
        return []
    known = past.file_symbols.get(path) or {}
    relevance = index.index.scores(task_words)
    seen = [past.symbol_seen.get((path, name), -1) for name in names]
    counts = [known.get(name, 0) for name in names]
    lists = [
        sorted((i for i in range(len(names)) if relevance[i] > 0), key=lambda i: -relevance[i]),
        sorted((i for i in range(len(names)) if seen[i] >= 0), key=lambda i: -seen[i]),
        sorted((i for i in range(len(names)) if counts[i] > 0), key=lambda i: -counts[i]),
    ]
    fused = [0.0] * len(names)
    for weight, order in zip(weights, lists):
        for rank, i in enumerate(order, start=1):
            fused[i] += weight / (k + rank)
    best = sorted(range(len(names)), key=lambda i: -fused[i])
    return [names[i] for i in best[:limit]]


# ---------------------------------------------------------------- the dense feature


DENSE_SETTINGS = ("model_dir", "max_tokens", "max_file_bytes", "whole_file_lines", "text_files")


def dense_settings(index: IndexConfig) -> dict:
    """What the dense feature's vectors depend on (the `index` section's model and file texts), for settings.json."""
    return {name: (str(getattr(index, name)) if name == "model_dir" and index.model_dir is not None
                   else getattr(index, name)) for name in DENSE_SETTINGS}


def file_embeddings(settings: dict) -> FileEmbeddings:
    """A FileEmbeddings as `dense_settings` describes it (defaults: the packaged all-MiniLM-L6-v2)."""
    index = IndexConfig(**{k: v for k, v in settings.items() if k in DENSE_SETTINGS})
    return FileEmbeddings(Embedder(index.model_dir, index.max_tokens, index.batch_size, index.num_threads), index)


def scorer_of(embeddings: FileEmbeddings) -> DenseScorer:
    """features.DenseScorer over a FileEmbeddings: the files as they are in the FileSearch's tree."""

    def dense(task: str, code: FileSearch, paths: list[str]) -> dict[str, float]:
        return embeddings.similarities(task, code.blobs, code.read, paths)

    return dense


# ---------------------------------------------------------------- the ranker


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

    @property
    def features(self) -> list[str]:
        return list(self.settings["features"])

    def candidates(self) -> FeatureConfig:
        """The candidate settings the ranker was trained with; `dense` as its feature list says (a folder
        written before the dense features existed has neither the key nor the features)."""
        known = {f.name for f in dataclasses.fields(FeatureConfig)}
        values = {k: v for k, v in (self.settings.get("candidates") or {}).items() if k in known}
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
    def classes(self) -> list[str]:
        return list(self.settings.get("change_type_classes") or [])

    def scores(self, rows: CandidateRows, lm: bool = False) -> np.ndarray:
        """The ranker's score of each candidate (the LM ranker's when `lm` and it exists and the rows carry
        the LM features)."""
        if not len(rows.paths):
            return np.zeros(0)
        n = len(self.features)
        base = self.booster.predict(rows.features[:, :n])
        if lm and self.booster_lm is not None and rows.features.shape[1] > n:
            return self.booster_lm.predict(np.column_stack([rows.features, base]))
        return base

    def rank(self, rows: CandidateRows, lm: bool = False) -> list[tuple[str, float]]:
        values = self.scores(rows, lm)
        order = sorted(range(len(rows.paths)), key=lambda i: (-values[i], rows.paths[i]))
        return [(rows.paths[i], float(values[i])) for i in order]

    def change_types(self, examples: list[TypeExample]) -> dict[str, str]:
        """Each file's predicted main change type (the classifier's, else the file's most frequent one)."""
        return predict_change_types(self.change_type_model, self.classes, examples)

    def save(self, folder: Path) -> Path:
        """Write the ranker folder atomically (replacing any older one)."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            with atomic_open(tmp / RANKER_FILE) as fh:
                fh.write(self.booster.model_to_string())
            if self.booster_lm is not None:
                with atomic_open(tmp / RANKER_LM_FILE) as fh:
                    fh.write(self.booster_lm.model_to_string())
            if self.change_type_model is not None:
                with atomic_open(tmp / CHANGE_TYPES_FILE) as fh:
                    fh.write(self.change_type_model.model_to_string())
            write_json(tmp / SETTINGS_FILE, self.settings)
            write_json(tmp / METRICS_FILE, self.metrics)
            if self.file_embeddings is not None:
                self.file_embeddings.save(tmp)
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


def find_ranker(*folders: Path | None) -> Path | None:
    """The first of `folders` that holds a ranker (e.g. <output_dir>/ranker, then beside the model)."""
    for folder in folders:
        if folder is not None and (Path(folder) / RANKER_FILE).is_file():
            return Path(folder)
    return None


# ---------------------------------------------------------------- the ranker at prediction time


class FileRanking:
    """The ranker with what its features need at prediction time: the statistics of the whole history
    (the pipeline's commits.json + chunks.jsonl, read once) and the repository's tree at the newest commit.

        ranking = FileRanking.find(model_dir, paths)         # None when there is no ranker
        ranked = ranking.rank(history, task)                 # {"method", "files": [...], "candidates"}
        output = ranking.merge(lm_output, history, task, max_files, score=...)   # the prediction JSON

    Commits of a request's history that the statistics have not seen are taken in (once) when the
    repository has them (real commits, e.g. scraped by --repo); a caller's made-up records are not.
    """

    def __init__(self, ranker: Ranker, past: PastCommits, repo: Path | None, last_commit: str | None):
        self.ranker, self.past, self.repo, self.last_commit = ranker, past, repo, last_commit
        self.code: FileSearch | None = None
        self.seen: set[str] = set()
        self.candidates = ranker.candidates()
        self.dense = ranker.dense_scorer()  # None unless the ranker was fitted with the dense features
        self.symbols_per_file = int(ranker.settings["baselines"].get("symbols_per_file", 5))
        # (path, blob, symbols known) -> SymbolIndex: a file at the same version is parsed and indexed once
        self.symbol_indexes: dict[tuple[str, str | None, int], SymbolIndex] = {}

    @classmethod
    def find(cls, model_dir: Path, paths: ArtifactPaths | None = None) -> "FileRanking | None":
        """The ranker beside the model folder (`<model>/ranker`, `<model>/../ranker`; or `<output_dir>/ranker` for
        the pipeline's own model) with the history it was trained on (commits.json and chunks.jsonl beside the
        ranker folder); None when either is missing: the language model then ranks the files alone."""
        model_dir = Path(model_dir).resolve()
        places = [model_dir / "ranker", model_dir.parent / "ranker"]
        if paths is not None and Path(paths.model_dir).resolve() == model_dir:
            places.append(paths.ranker_dir)
        folder = find_ranker(*places)
        if folder is None:
            return None
        history = ArtifactPaths.under(folder.parent)
        if not (history.commits.exists() and history.chunks.exists()):
            log.warning("%s: no %s / %s beside it for the ranker's features: files ranked by the language model",
                        folder, history.commits.name, history.chunks.name)
            return None
        return cls.load(folder, history.commits, history.chunks)

    @classmethod
    def load(cls, folder: Path, commits_path: Path, chunks_path: Path) -> "FileRanking":
        started = time.monotonic()
        ranker = Ranker.load(folder)
        past = PastCommits(BaselineConfig(**ranker.settings["baselines"]))
        last, seen = None, set()
        for commit, chunks in iter_commits_with_chunks(commits_path, chunks_path):
            past.observe(commit, chunks)
            seen.add(commit["hash"])
            last = commit["hash"]
        repo = repository_of(commits_path) if ranker.settings.get("code_search") else None
        ranking = cls(ranker, past, repo, last)
        if ranker.file_embeddings is not None:  # the embedding model loads now, not on the first request
            ranker.file_embeddings.embedder.embed(["warm up"])
        ranking.seen = seen
        log.info("ranker %s with the statistics of %d commits loaded in %.1fs", folder, len(seen),
                 time.monotonic() - started)
        return ranking

    def catch_up(self, history: list) -> None:
        """Take in the history's commits (Commit, [Chunk]) not seen yet that the repository has."""
        fresh = [(c, chunks) for c, chunks in history if c.hash not in self.seen]
        if not fresh or self.repo is None:
            return
        code = self.file_search()
        for commit, chunks in fresh:
            if code is not None and code.has_commit(commit.hash):
                self.past.observe(commit.to_dict(), [c.to_dict() for c in chunks])
                self.seen.add(commit.hash)
                self.last_commit = commit.hash

    def file_search(self) -> FileSearch | None:
        if self.code is None and self.repo is not None:
            self.code = FileSearch(self.repo, path_weight=self.past.cfg.code_path_weight)
        return self.code

    def rank(self, history: list, task: str, author: str | None = None,
             score: Callable[[list[tuple[str, str | None]]], list[dict]] | None = None, limit: int = 20) -> dict:
        """The ranker's files for `task` after `history` (oldest first): path, score, change type, module and
        symbols each. `score(candidates)` (the language model's score_files) feeds the LM ranker when both exist."""
        self.catch_up(history)
        code = self.file_search()
        parent = history[-1][0].hash if history and history[-1][0].hash in self.seen else self.last_commit
        target = Target(commit="", position=self.past.position, task=task, author=(author or "").lower(),
                        parent=parent)
        state = state_at(self.past, code, target)
        lm = None
        if score is not None and self.ranker.booster_lm is not None:
            modules = self.past.file_module

            def lm(paths: list[str]) -> dict[str, float]:
                return {s["path"]: float(s["logprob"]) for s in score([(p, modules.get(p)) for p in paths])}

        rows = candidate_rows(state, self.candidates, lm=lm, dense=self.dense)
        ranked = self.ranker.rank(rows, lm=lm is not None)[:limit]
        paths = [p for p, _ in ranked]
        exists = {p: float(p in code.blobs) if code is not None else math.nan for p in paths}
        types = self.ranker.change_types([type_example(self.past, p, state.task_words, exists[p]) for p in paths])
        files = []
        for path, value in ranked:
            index = self.symbol_index(path, code)
            files.append({"path": path, "score": round(value, 6), "change_type": types.get(path),
                          "module": self.past.file_module.get(path),
                          "symbols": rank_symbols(self.past, path, [], state.task_words, self.symbols_per_file,
                                                  index=index)})
        return {"method": "ranker_lm" if lm is not None else "ranker", "files": files, "candidates": len(rows.paths)}

    def symbol_index(self, path: str, code: FileSearch | None) -> SymbolIndex:
        oid = code.blobs.get(path) if code is not None else None
        key = (path, oid, len(self.past.file_symbols.get(path) or ()))
        if key not in self.symbol_indexes:
            if len(self.symbol_indexes) > 4096:
                self.symbol_indexes.clear()
            units = units_at_parent(path, code.read(path)) if oid is not None else []
            self.symbol_indexes[key] = SymbolIndex.of(self.past, path, units)
        return self.symbol_indexes[key]

    def merge(self, output: dict, history: list, task: str, max_files: int,
              score: Callable[[list[tuple[str, str | None]]], list[dict]] | None = None) -> dict:
        """The prediction JSON with the ranker's files first (each keeps what generation said of it: change
        types, symbols, votes), then the files only generation names (e.g. new files); modules follow the
        files; symbols are the ranker's, then generation's; the code sketch stays generation's."""
        ranked = self.rank(history, task, score=score, limit=max_files)
        generated = {f["path"]: f for f in output.get("files", [])}
        files = []
        for entry in ranked["files"]:
            gen = generated.get(entry["path"], {})
            types = gen.get("change_types") or ([{"type": entry["change_type"], "weight": None}]
                                                if entry["change_type"] else [])
            files.append({**{k: v for k, v in gen.items() if k not in ("path", "score", "module")},
                          "path": entry["path"], "score": entry["score"], "ranked_by": ranked["method"],
                          "module": entry["module"] or gen.get("module"), "change_types": types,
                          "symbols": list(dict.fromkeys(entry["symbols"] + list(gen.get("symbols") or [])))})
        known = {f["path"] for f in files}
        files += [{**f, "ranked_by": "generation"} for f in output.get("files", [])
                  if f["path"] not in known and f.get("votes")]
        files = files[:max_files]
        symbols = list(dict.fromkeys([s for f in files for s in f["symbols"]] + list(output.get("symbols") or [])))
        return {**output, "ranking": ranked["method"], "ranker_candidates": ranked["candidates"], "files": files,
                "modules": list(dict.fromkeys(f["module"] for f in files if f.get("module"))), "symbols": symbols}
