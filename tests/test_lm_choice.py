"""The LM ranker is used for predictions only where it beats ranker.txt on held-out val targets."""

from __future__ import annotations

import numpy as np
import pytest

from repo2model.ranking.config import FitSettings
from repo2model.ranking.features import LM_FEATURES, CandidateRows
from repo2model.ranking.metrics import Truth
from repo2model.ranking.ranker import Ranker, fit_lambdarank, fit_lm_ranker
from repo2model.stages.train_ranker import lm_choice

BASE = ["weak", "noise"]
FIT = FitSettings(num_trees=60, early_stopping_rounds=10, min_data_in_leaf=5, learning_rate=0.1)


def target(commit: str, rng: np.random.Generator, lm_knows: bool | None) -> CandidateRows:
    """30 candidates, 3 of them changed; `weak` is a noisy hint of the label, `noise` none. With `lm_knows`
    the LM columns follow the labels (True) or are noise (False); None: no LM columns."""
    labels = np.zeros(30, dtype=np.int8)
    labels[rng.choice(30, size=3, replace=False)] = 1
    columns = [labels + rng.normal(0.0, 1.2, 30), rng.normal(0.0, 1.0, 30)]
    names = list(BASE)
    if lm_knows is not None:
        logprob = (4.0 * labels if lm_knows else 0.0) + rng.normal(0.0, 1.0, 30) - 5.0
        rank = np.argsort(np.argsort(-logprob)) + 1.0
        columns += [logprob, rank, logprob.max() - logprob]
        names += list(LM_FEATURES)
    paths = [f"src/f{i:02d}.rs" for i in range(30)]
    return CandidateRows(commit, paths, names, np.column_stack(columns).astype(np.float32), labels)


def truth(rows: CandidateRows) -> Truth:
    files = [p for p, label in zip(rows.paths, rows.labels) if label]
    return Truth(rows.commit, files, {}, set(), set())


@pytest.mark.parametrize("lm_knows", [True, False])
def test_the_lm_ranker_is_used_only_where_it_wins_on_held_out_val_targets(lm_knows):
    rng = np.random.default_rng(7)
    train = [target(f"t{i}", rng, None) for i in range(80)]
    val = [target(f"v{i}", rng, lm_knows) for i in range(40)]
    booster = fit_lambdarank(train, val, BASE, FIT, seed=1)
    fitted = fit_lm_ranker(booster, val, FIT, seed=1, base=BASE)
    assert fitted is not None and len(fitted.held_out) == len(val)
    assert {rows.commit for rows, _ in fitted.held_out} == {rows.commit for rows in val}
    choice = lm_choice(fitted, {rows.commit: truth(rows) for rows in val})
    assert choice["val_targets"] == 40
    assert choice["used"] is lm_knows
    if lm_knows:  # the language model names the changed files: a clear win, not a coin toss
        assert choice["ranker_lm"]["recall@5"] > choice["ranker"]["recall@5"] + 0.2
    ranker = Ranker(booster, {"features": BASE, "lm_used": choice["used"]}, fitted.booster)
    assert ranker.uses_lm is lm_knows
    # A folder written before the choice existed keeps using the LM ranker it has.
    assert Ranker(booster, {"features": BASE}, fitted.booster).uses_lm
    assert not Ranker(booster, {"features": BASE, "lm_used": True}).uses_lm
