"""Prediction's side of the index: the context pack and the prompt for a predicted change, from the unit index
(or, without one of the repository, from the repository's HEAD).

    retriever = Retriever(load_index_config(config_path), paths.index_dir)   # once, by predict.py / serve.py
    retriever.answer(task, prediction, repo=repo, budget=2000, test_failures=...)  # {"context", "prompt", ...}
    retriever.answer(..., scorer=ranking.symbol_scorer(prediction))   # with `index.pack: chosen`: the pack the
                                                                      # symbol ranker chooses (unused otherwise)

The index is opened on a request and closed after `keep_open_s` without one, so that the index stage (which
waits up to `lock_wait_s` for the embedded store's lock) can update it between bursts of requests.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from repo2model.core.errors import UserError
from repo2model.git.commands import git, open_repository
from repo2model.retrieval.context import UnitScorer, service_pack
from repo2model.retrieval.embedding import Embedder
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.prompt import render_prompt
from repo2model.retrieval.unit_index import UnitIndex, tree_units
from repo2model.serving.prediction import Prediction

log = logging.getLogger("index")


class Retriever:
    """Context and prompt for predictions: loaded once (tokenizer now, embedding model on first search). The
    index is opened on a request and kept open until `keep_open_s` pass without one, then closed so that
    index.py (which waits up to `lock_wait_s` for it) can update it between bursts of requests."""

    def __init__(self, cfg: IndexConfig, folder: Path, embedder: Embedder | None = None):
        self.cfg = cfg
        self.folder = Path(folder)
        self.embedder = embedder or Embedder.from_config(cfg)
        self._open: UnitIndex | None = None
        self._lock = threading.Lock()
        self._closer: threading.Timer | None = None

    def index(self) -> UnitIndex:
        """The index, open when there is one (call with the lock held)."""
        if self._open is not None:
            return self._open
        index = UnitIndex(self.cfg, self.folder, self.embedder)
        if index.exists():
            self._open = index.__enter__()
        return index

    def close(self) -> None:
        with self._lock:
            if self._open is not None:
                self._open.__exit__(None, None, None)
                self._open = None

    def _close_later(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
        self._closer = threading.Timer(self.cfg.keep_open_s, self.close)
        self._closer.daemon = True
        self._closer.start()

    def answer(self, task: str, prediction: Prediction, repo: Path | str | None = None, budget: int = 2000,
               test_failures: str | None = None, scorer: UnitScorer | None = None) -> dict:
        """{"context": [...], "prompt": str, "context_source": {...}} for a prediction of `task`.

        The index serves when it is of `repo` (or no repo is given); otherwise the predicted files' current code
        is read from `repo`'s HEAD and no search is made (context_source says why). `scorer` (the symbol
        ranker's, for this prediction) chooses the pack for recall per token (context.chosen_pack) when
        `index.pack` is `chosen`; otherwise it is not used: with `ordered` the pack keeps build_context's fixed
        order, with `fused` the predicted symbols and the search hits are one ranking (build_context's
        fuse_weight); the predicted symbols are whatever the prediction names (the symbol ranker's, when it
        named them).
        """
        try:
            with self._lock:
                try:
                    return self._answer(task, prediction, repo, budget, test_failures, scorer)
                finally:
                    self._close_later()
        except UserError as exc:  # an index in use too long, a server down: the prediction still answers
            log.warning("no code context: %s", exc)
            return {"context": [], "prompt": render_prompt(task, prediction, [], test_failures),
                    "context_source": {"index": None, "tokens": budget, "reason": str(exc), "used_tokens": 0}}

    def _answer(self, task: str, prediction: Prediction, repo: Path | str | None, budget: int,
                test_failures: str | None, scorer: UnitScorer | None) -> dict:
        index = self.index()
        source: dict[str, Any] = {"index": None, "tokens": budget}
        top = open_repository(repo) if repo is not None else None
        use_index = index.exists() and (top is None or index.info.get("repository") == str(top))
        commit = None
        if use_index:
            context = service_pack(task, prediction, index.units_of, index.search, budget,
                                   self.embedder.count_tokens, self.cfg, scorer)
            commit = index.info.get("commit")
            source["index"] = {k: index.info.get(k) for k in ("repository", "commit", "units", "updated_at")}
            if top is not None:
                head = git(top, "rev-parse", "HEAD").strip()
                source["index"]["behind_head"] = head != commit
        else:
            source["reason"] = ("no code index (run python index.py)" if not index.exists() else
                                f"the index is of {index.info.get('repository')}, not of {top}")
            context = []
            if top is not None:
                commit = git(top, "rev-parse", "HEAD").strip()
                missing: list[str] = []
                context = service_pack(task, prediction,
                                       lambda paths: tree_units(top, commit, paths, self.cfg, missing=missing),
                                       None, budget, self.embedder.count_tokens, self.cfg, scorer,
                                       predicted_share=1.0)  # nothing else to show: no search
                source["missing_objects"] = len(missing)  # predicted files whose blob the repository lacks
                if missing:
                    log.warning("context: %d predicted files left out, their blobs missing from %s (e.g. %s)",
                                len(missing), top, missing[0])
        repository = str(top) if top is not None else (index.info.get("repository") if use_index else None)
        source["used_tokens"] = sum(e.tokens for e in context)
        return {"context": [e.to_dict() for e in context],
                "prompt": render_prompt(task, prediction, context, test_failures, repository, commit),
                "context_source": source}
