"""The ranker's feature rows of past targets, kept in the ranker folder, so that a refit computes rows only for the
targets it has not seen (after an update: the new commits), and the language model's columns only where the model
changed.

    cache = RowCache.load(folders, shaping_settings(...))      # the first folder whose cache has these settings
    walk_targets(..., on_commit=lambda commit, chunks: cache.observe(commit, chunks))
    rows = cache.rows_for(state.target, lambda: candidate_rows(state, ...), lm, lm_key)   # saved, or computed
    cache.save(ranker_folder)                  # row_cache.npy + row_cache.json (features.save_rows' format)

What a target's rows depend on, and so what keys them:
- the settings that shape every row (`shaping_settings`: the baseline and candidate settings, the feature names,
  whether the repository is there, the dense settings, and the source of the code that computes rows; not the prior, which shapes
  the fit, not the rows): when one differs
  the whole cache is set aside, and the log says which;
- the history up to the target: every commit before it with its chunks, in commits.json's order, then the target
  itself (its commit and chunks: its task, author, parent and, as labels, its files). A digest chained commit by
  commit (`observe`) stands for it, so a rewritten history or another chunking invalidates exactly the targets
  after the first change, and new commits appended to the history invalidate none;
- the language model, for its columns (features.LM_FEATURES) only: they are kept with the identity of the model
  that scored them (`model_key`). Rows asked for with another model (or none) come back without them, and only
  they are computed again; unless the cache `keeps_lm_columns` (train_ranker in an update, whose model only
  continued the last one for a few steps): then saved columns of an earlier model are kept as they are (and
  counted), and only the targets that have none (the new val/test targets) are scored by the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

from repo2model.core.config import section_dict
from repo2model.ranking.features import (
    LM_FEATURES, CandidateRows, FeatureConfig, LMScorer, lm_columns, load_rows, save_rows,
)
from repo2model.ranking.history import BaselineConfig
from repo2model.ranking.targets import Target

log = logging.getLogger("ranking")

ROW_CACHE = "row_cache"  # row_cache.npy + row_cache.json in the ranker folder
LIBRARY = Path(__file__).resolve().parents[1]
CODE = ("ranking", "retrieval")  # the packages whose source computes rows: an edit there sets the cache aside


def shaping_settings(baselines: BaselineConfig, features: FeatureConfig, names: list[str], repo: Path | None,
                     dense: dict | None = None) -> dict:
    """Everything besides the history that shapes every target's rows."""
    return {"baselines": section_dict(baselines), "candidates": section_dict(features), "features": list(names),
            # Whether there is a repository, not where: rows are a function of the commits (hashes name their
            # content), so a project folder moved elsewhere keeps its cache.
            "repository": repo is not None, "dense": dense, "code": code_digest()}


def code_digest() -> str:
    digest = hashlib.blake2b(digest_size=16)
    for package in CODE:
        for path in sorted((LIBRARY / package).rglob("*.py")):
            digest.update(str(path.relative_to(LIBRARY)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def model_key(model_dir: Path, identity: dict) -> dict:
    """Which model scored the LM columns, by content (its training_info.json, rewritten by every training) rather
    than by folder, which an update's switch renames; `identity`: how it scored them (device, prediction settings)."""
    info = Path(model_dir) / "training_info.json"
    content = hashlib.blake2b(info.read_bytes(), digest_size=16).hexdigest() if info.is_file() else None
    return {**{k: v for k, v in identity.items() if k != "model_dir"}, "training_info": content}


class RowCache:
    """The rows of past targets (see the module docstring) and those of this run, to save."""

    def __init__(self, settings: dict, saved: dict[str, CandidateRows] | None = None,
                 saved_history: dict[str, str] | None = None, saved_models: dict[str, str] | None = None):
        self.settings = settings
        self.saved, self.saved_history, self.saved_models = saved or {}, saved_history or {}, saved_models or {}
        self.history = hashlib.blake2b(digest_size=16)  # the chained digest of the commits observed so far
        self.kept: list[tuple[CandidateRows, str, str | None]] = []  # (rows, history digest, model key) to save
        self.reused = self.computed = self.lm_computed = self.lm_kept = 0
        self.keeps_lm_columns = False  # True: an earlier model's saved LM columns are kept (see the docstring)

    @classmethod
    def load(cls, folders: list[Path | None], settings: dict) -> "RowCache":
        """The cache of the first folder that holds one with these settings (an empty one otherwise)."""
        for folder in folders:
            if folder is None:
                continue
            loaded = load_rows(Path(folder), ROW_CACHE)
            if loaded is None:
                continue
            saved_settings, rows = loaded
            shaped_by = saved_settings.get("shaped_by") or {}
            differ = sorted(k for k in set(shaped_by) | set(settings) if shaped_by.get(k) != settings.get(k))
            if differ:
                log.info("ranker: the rows saved in %s were computed with other %s: computed again", folder,
                         ", ".join(differ))
                continue
            return cls(settings, rows, saved_settings.get("history") or {}, saved_settings.get("models") or {})
        return cls(settings)

    # ------------------------------------------------------------ during the walk

    def observe(self, commit: dict, chunks: list[dict]) -> None:
        """A commit of the walk, after the target it may be (walk_targets' on_commit)."""
        self.history.update(commit["hash"].encode())
        self.history.update(chunks_digest(chunks))

    def target_digest(self, target: Target) -> str:
        """The history up to and including `target` (the commits observed so far, then it)."""
        digest = self.history.copy()
        digest.update(target.commit.encode())
        digest.update(chunks_digest(target.chunks or []))
        return digest.hexdigest()

    def rows_for(self, target: Target, compute: Callable[[], CandidateRows], lm: LMScorer | None = None,
                 lm_key: dict | None = None) -> CandidateRows:
        """`target`'s rows: the saved ones when the history up to it is the one they were computed from, with the
        LM columns of `lm` (the model `lm_key`) computed again unless that model scored them; else `compute()`.
        Either way they go into the cache this run saves."""
        digest = self.target_digest(target)
        model = key_text(lm_key) if lm is not None else None
        rows = self.saved.get(target.commit)
        if rows is None or self.saved_history.get(target.commit) != digest:
            rows = compute()
            self.computed += 1
        else:
            self.reused += 1
            scored_by = self.saved_models.get(target.commit)
            if (lm is not None and self.keeps_lm_columns and scored_by is not None and scored_by != model
                    and set(LM_FEATURES) <= set(rows.names)):
                self.lm_kept += 1  # an earlier model's columns, kept: recorded with that model
                self.kept.append((rows, digest, scored_by))
                return rows
            if model is None or scored_by != model:
                rows = rows.select([n for n in rows.names if n not in LM_FEATURES])
                if lm is not None:
                    rows = with_lm_columns(rows, lm, (self.settings.get("candidates") or {}).get("lm_candidates", 0))
                    self.lm_computed += 1
        self.kept.append((rows, digest, model if set(LM_FEATURES) <= set(rows.names) else None))
        return rows

    def save(self, folder: Path) -> None:
        """row_cache.npy + row_cache.json in `folder` (the ranker folder being written)."""
        rows = [r for r, _, _ in self.kept]
        save_rows(Path(folder), ROW_CACHE, rows, {
            "shaped_by": self.settings,
            "history": {r.commit: digest for r, digest, _ in self.kept},
            "models": {r.commit: model for r, _, model in self.kept if model is not None},
        })

    def summary(self) -> dict:
        return {"reused": self.reused, "computed": self.computed, "lm_columns_computed": self.lm_computed,
                "lm_columns_kept_from_an_earlier_model": self.lm_kept}


def with_lm_columns(rows: CandidateRows, lm: LMScorer, limit: int = 0) -> CandidateRows:
    """Saved rows with the language model's columns computed again (the model changed): the same columns, in the
    same place (last), for the same candidates (the best `limit` by the fusion's rank), as candidate_rows gives."""
    return rows.with_columns(lm_columns(rows.paths, rows.columns(["fusion_rank"])[:, 0].tolist(), lm, limit))


def chunks_digest(chunks: list[dict]) -> bytes:
    return hashlib.blake2b(json.dumps(chunks, ensure_ascii=False).encode(), digest_size=16).digest()


def key_text(key: dict | None) -> str | None:
    return None if key is None else json.dumps(key, sort_keys=True)
