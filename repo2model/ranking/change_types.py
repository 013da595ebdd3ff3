"""The change-type classifier: a predicted file's main change type (MODIFIED_FUNCTION, NEW_TEST, ...).

    classes, model = fit_classifier({"train": [...], "val": [...]}, fit_settings, seed)   # LightGBM multiclass
    types = predict_change_types(model, classes, [type_example(past, path, task_words, exists)])

What it sees of one (target, file) (`TypeExample`): the file's past chunks per change type, its main type the
last time it changed, the task's action words (add, fix, test, rename, ...), the kind of file (test, doc,
config, language) and whether it is in the parent's tree. Without a classifier (too little to learn), a
file's most frequent change type so far stands in (`most_frequent_type`, also the baseline it is compared with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import lightgbm as lgb
import numpy as np

from repo2model.code.units import PARSED_LANGUAGES, language_of
from repo2model.ranking.config import FitSettings
from repo2model.ranking.features import file_kind
from repo2model.ranking.history import PastCommits, main_change_types

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


def change_type_feature_names(classes: list[str]) -> list[str]:
    return ([f"share_{c}" for c in classes] + ["type_chunks", "last_type"] + [f"task_{w}" for w in ACTION_WORDS]
            + ["is_test", "is_doc", "is_config", "language", "exists", "count_all"])


def most_frequent_type(example: TypeExample) -> str | None:
    """The baseline: the file's most frequent change type so far."""
    return min(example.types.items(), key=lambda kv: (-kv[1], kv[0]))[0] if example.types else None


# ---------------------------------------------------------------- fitting and predicting


def fit_classifier(examples: dict[str, list[TypeExample]], fit: FitSettings, seed: int
                   ) -> tuple[list[str], lgb.Booster | None]:
    """The change-type classes (the most frequent main types of the train targets' files) and the classifier,
    fitted on `examples["train"]`, early-stopped on `examples["val"]`."""
    counts: dict[str, int] = {}
    for example in examples["train"]:
        if example.main:
            counts[example.main] = counts.get(example.main, 0) + 1
    classes = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TYPE_CLASSES]]
    if len(classes) < 2:
        return classes, None

    def matrix(split: list[TypeExample]) -> tuple[np.ndarray, np.ndarray]:
        kept = [e for e in split if e.main in classes]
        x = np.array([change_type_features(e, classes) for e in kept], dtype=np.float32)
        labels = np.array([classes.index(e.main) for e in kept])
        return x.reshape(len(kept), len(change_type_feature_names(classes))), labels

    return classes, fit_change_types(matrix(examples["train"]), matrix(examples["val"]), classes, fit, seed)


def fit_change_types(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], classes: list[str],
                     fit: FitSettings, seed: int) -> lgb.Booster | None:
    """A multiclass booster on (features, class index) pairs; None when there is too little to learn."""
    x, y = train
    if len(y) < 20 or len(set(y.tolist())) < 2:
        return None
    params = fit.lightgbm_params(seed, objective="multiclass", num_class=len(classes), metric="multi_logloss")
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
    """Each example's predicted main change type by path (the examples of one target: one per file); see
    `predicted_main_types` for examples of several targets, where a path can come back."""
    return {e.path: main for e, main in zip(examples, predicted_main_types(model, classes, examples)) if main}


def predicted_main_types(model: lgb.Booster | None, classes: list[str], examples: list[TypeExample]) -> list[str | None]:
    """Each example's predicted main change type, in order: the classifier's when there is one, else the file's
    most frequent type so far (None: no history and no classifier)."""
    if model is not None and examples:
        x = np.array([change_type_features(e, classes) for e in examples], dtype=np.float32)
        return [classes[int(np.argmax(row))] for row in np.atleast_2d(model.predict(x))]
    return [most_frequent_type(e) or None for e in examples]


def change_type_figures(model: lgb.Booster | None, classes: list[str], examples: list[TypeExample]) -> dict:
    """On the test targets' files: the share whose predicted main type is one of the file's actual types, for
    the classifier and for "most frequent type so far"."""
    if not examples:
        return {}
    # per example, not per path: a file changed by several test targets is scored at each of them
    predicted = predicted_main_types(model, classes, examples)
    classifier = sum(main in e.actual for e, main in zip(examples, predicted))
    frequent = sum(most_frequent_type(e) in e.actual for e in examples)
    return {"files": len(examples), "classifier": round(classifier / len(examples), 4),
            "most_frequent": round(frequent / len(examples), 4)}
