"""The ranker at prediction time: its files for a task, merged into the prediction JSON.

    ranking = FileRanking.find(model_dir, paths)         # None when there is no ranker
    ranked = ranking.rank(history, task)                 # {"method", "files": [...], "candidates"}
    output = ranking.merge(lm_output, history, task, max_files, score=...)   # the prediction JSON

The ranker's features need the history's statistics at its newest commit: train_ranker saves them in the
ranker folder (history.json: `history_record`), so that loading reads one file and the pipeline's
commits.json and chunks.jsonl may be gone (`pipeline.keep_intermediates: false`); a folder written before
that replays commits.json + chunks.jsonl instead. `describe_files` and `ranked_prediction` give the ranker's
files their change types (the classifier), modules and symbols, here and in evaluate.py alike
(`ranker_predictions`). With a symbol ranker in the folder (repo2model.ranking.symbol_ranker), a file's symbols
are its units at the newest commit that the symbol ranker finds most likely to change, each with its
probability, and `symbol_scorer` scores units for the context pack; without one, the untrained fusion names them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from repo2model.core.artifacts import iter_commits_with_chunks, read_json
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.ranking.change_types import type_example
from repo2model.ranking.features import LM_FEATURES, CandidateRows, LMScorer, candidate_rows, lm_scorer
from repo2model.ranking.history import BaselineConfig, PastCommits
from repo2model.ranking.metrics import KS, Prediction
from repo2model.ranking.new_files import new_file_guesses
from repo2model.ranking.ranker import HISTORY_FILE, Ranker, find_ranker
from repo2model.ranking.row_cache import with_lm_columns
from repo2model.ranking.symbol_features import SymbolContext
from repo2model.ranking.symbol_history import SymbolHistory
from repo2model.ranking.symbol_ranker import FILE_RANKS, SYMBOL_FILES, SymbolRanker, TreeUnits, UnitScorer
from repo2model.ranking.symbols import SymbolIndexes, rank_symbols
from repo2model.ranking.targets import Target, TargetState, open_repository_named, repository_of, state_at
from repo2model.retrieval.bm25 import FileSearch, code_words

log = logging.getLogger("ranking")

HISTORY_FORMAT = 1
# A language model's score_files with the prompt bound: [(path, module)] -> [{"path", "logprob", ...}]
FileScorer = Callable[[list[tuple[str, str | None]]], list[dict]]


def history_record(past: PastCommits, commits: list[str], repo: Path | None) -> dict:
    """What history.json holds: the statistics of `commits` (every commit of the history, oldest first) and
    the repository they came from (for code search and the tree)."""
    return {"format": HISTORY_FORMAT, "repository": str(repo) if repo is not None else None, "commits": commits,
            "past": past.to_state()}


@dataclass
class RankedFile:
    """One of the ranker's files, described."""

    path: str
    score: float
    change_type: str | None
    module: str | None
    symbols: list[str]
    symbol_scores: list[tuple[str, float]] = field(default_factory=list)  # the symbol ranker's, when it named them


def describe_files(ranker: Ranker, state: TargetState, ranked: list[tuple[str, float]], symbols_per_file: int,
                   indexes: SymbolIndexes, learned: dict[str, list[tuple[str, float]]] | None = None
                   ) -> list[RankedFile]:
    """The ranked files with their change types (classifier), modules and symbols: the symbol ranker's
    (`learned`: path -> [(symbol, probability)], best first) where it scored the file, else the untrained
    fusion's (units at the parent)."""
    past, paths = state.past, [p for p, _ in ranked]
    types = ranker.change_types([type_example(past, p, state.task_words, state.in_tree(p)) for p in paths])
    learned = learned or {}
    return [RankedFile(path, value, types.get(path), past.file_module.get(path),
                       [s for s, _ in learned[path]] if path in learned else
                       rank_symbols(past, path, [], state.task_words, symbols_per_file,
                                    index=indexes.get(past, path, state.code)),
                       learned.get(path, []))
            for path, value in ranked]


def ranked_prediction(ranker: Ranker, state: TargetState, ranked: list[tuple[str, float]], symbols_per_file: int,
                      indexes: SymbolIndexes) -> Prediction:
    """A ranker's files as a Prediction to score: change types, modules and symbols in file order."""
    files = describe_files(ranker, state, ranked, symbols_per_file, indexes)
    return Prediction(ranked, {f.path: f.change_type for f in files if f.change_type},
                      list(dict.fromkeys(f.module for f in files if f.module)),
                      list(dict.fromkeys(s for f in files for s in f.symbols)))


def ranker_predictions(ranker: Ranker, state: TargetState, lm: LMScorer | None, saved: CandidateRows | None,
                       symbols_per_file: int, indexes: SymbolIndexes) -> dict[str, Prediction]:
    """The ranker's prediction for a target of a walk (evaluate.py), and the LM ranker's when `lm` scores the
    candidates; `saved`: the target's rows as train_ranker saved them (their language-model columns computed
    here when they lack them), else they are computed."""
    rows = saved
    if rows is None:
        rows = candidate_rows(state, ranker.candidates(), lm=lm, dense=ranker.dense_scorer())
    elif lm is not None and not set(LM_FEATURES) <= set(rows.names):
        rows = with_lm_columns(rows, lm, ranker.candidates().lm_candidates)
    variants = {"ranker": False, **({"ranker_lm": True} if lm is not None else {})}
    out = {}
    for name, with_lm in variants.items():
        ranked = ranker.rank(rows, lm=with_lm)
        out[name] = ranked_prediction(ranker, state, ranked[: max(KS)], symbols_per_file, indexes)
        out[name].new_files = new_file_guesses(state.target.task, ranked, state.past,
                                               state.code.blobs if state.code is not None else None)
    return out


class FileRanking:
    """The ranker with what its features need at prediction time: the statistics of the whole history and the
    repository's tree at the newest commit.

    Commits of a request's history that the statistics have not seen are taken in (once) when the
    repository has them (real commits, e.g. scraped by --repo); a caller's made-up records are not.
    """

    def __init__(self, ranker: Ranker, past: PastCommits, repo: Path | None, last_commit: str | None,
                 seen: set[str] | None = None):
        self.ranker, self.past, self.repo, self.last_commit = ranker, past, repo, last_commit
        self.code: FileSearch | None = None
        self.seen: set[str] = seen if seen is not None else set()
        self.candidates = ranker.candidates()
        self.dense = ranker.dense_scorer()  # None unless the ranker was fitted with the dense features
        self.symbols_per_file = int(ranker.settings["baselines"].get("symbols_per_file", 5))
        self.symbol_indexes = SymbolIndexes()
        self.symbol_ranker: SymbolRanker | None = None  # use_symbols: the learned symbol ranker and its history
        self.symbol_history = SymbolHistory()
        self.tree_units = TreeUnits()

    @classmethod
    def find(cls, model_dir: Path, paths: ArtifactPaths | None = None) -> "FileRanking | None":
        """The ranker beside the model folder (`<model>/ranker`, `<model>/../ranker`; or `<output_dir>/ranker` for
        the pipeline's own model); None when there is none, or when it has no saved history statistics and no
        commits.json / chunks.jsonl beside it to replay: the language model then ranks the files alone."""
        model_dir = Path(model_dir).resolve()
        places = [model_dir / "ranker", model_dir.parent / "ranker"]
        if paths is not None and Path(paths.model_dir).resolve() == model_dir:
            places.append(paths.ranker_dir)
        folder = find_ranker(*places)
        if folder is None:
            return None
        if (folder / HISTORY_FILE).is_file():
            return cls.load(folder)
        history = ArtifactPaths.under(folder.parent)
        if not (history.commits.exists() and history.chunks.exists()):
            log.warning("%s: no %s, and no %s / %s beside it, for the ranker's features: files ranked by the "
                        "language model (rerun train_ranker)", folder, HISTORY_FILE, history.commits.name,
                        history.chunks.name)
            return None
        return cls.load(folder, history.commits, history.chunks)

    @classmethod
    def load(cls, folder: Path, commits_path: Path | None = None, chunks_path: Path | None = None) -> "FileRanking":
        """The ranker with the history statistics saved beside it; for a folder without them, replayed from
        `commits_path` + `chunks_path`."""
        started = time.monotonic()
        ranker = Ranker.load(folder)
        if (Path(folder) / HISTORY_FILE).is_file():
            past, commits, repo = cls.saved_history(Path(folder))
        elif commits_path is not None and chunks_path is not None:
            past, commits, repo = cls.replayed_history(ranker, commits_path, chunks_path)
        else:
            raise UserError(f"{folder}: no {HISTORY_FILE} (the history's statistics): rerun the train_ranker stage")
        repo = repo if ranker.settings.get("code_search") else None
        ranking = cls(ranker, past, repo, commits[-1] if commits else None, set(commits))
        try:
            symbols = SymbolRanker.load(folder)
        except UserError as exc:  # unreadable: the files still rank, the untrained fusion names the symbols
            log.warning("%s: symbols named by the untrained fusion", exc)
            symbols = None
        if symbols is not None and (symbols.history is None or symbols.history.position != past.position):
            log.warning("%s: the symbol ranker's history is not the ranker's (%s commits, not %d): symbols named by "
                        "the untrained fusion (rerun train_ranker)", folder,
                        symbols.history.position if symbols.history else "no", past.position)
        elif symbols is not None:
            ranking.use_symbols(symbols, symbols.history)
        if ranker.file_embeddings is not None:  # the embedding model loads now, not on the first request
            ranker.file_embeddings.embedder.embed(["warm up"])
        log.info("ranker %s with the statistics of %d commits loaded in %.1fs", folder, len(commits),
                 time.monotonic() - started)
        return ranking

    @staticmethod
    def saved_history(folder: Path) -> tuple[PastCommits, list[str], Path | None]:
        record = read_json(folder / HISTORY_FILE)
        try:
            if record.get("format") != HISTORY_FORMAT:
                raise ValueError(f"format {record.get('format')!r}, not {HISTORY_FORMAT}")
            past = PastCommits.from_state(record["past"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{folder / HISTORY_FILE}: not the history statistics train_ranker writes "
                            f"({type(exc).__name__}: {exc}): rerun that stage") from None
        return past, list(record["commits"]), open_repository_named(record.get("repository"))

    @staticmethod
    def replayed_history(ranker: Ranker, commits_path: Path, chunks_path: Path
                         ) -> tuple[PastCommits, list[str], Path | None]:
        past = PastCommits(BaselineConfig(**ranker.settings["baselines"]))
        commits = []
        for commit, chunks in iter_commits_with_chunks(commits_path, chunks_path):
            past.observe(commit, chunks)
            commits.append(commit["hash"])
        return past, commits, repository_of(commits_path)

    def use_symbols(self, symbols: SymbolRanker, history: SymbolHistory) -> None:
        """Name and score symbols with `symbols`; `history` holds the same commits as the statistics."""
        self.symbol_ranker, self.symbol_history = symbols, history

    def catch_up(self, history: list) -> None:
        """Take in the history's commits (Commit, [Chunk]) not seen yet that the repository has."""
        fresh = [(c, chunks) for c, chunks in history if c.hash not in self.seen]
        if not fresh or self.repo is None:
            return
        code = self.file_search()
        for commit, chunks in fresh:
            if code is not None and code.has_commit(commit.hash):
                self.past.observe(commit.to_dict(), [c.to_dict() for c in chunks])
                self.symbol_history.observe([c.to_dict() for c in chunks])
                self.seen.add(commit.hash)
                self.last_commit = commit.hash

    def file_search(self) -> FileSearch | None:
        if self.code is None and self.repo is not None:
            self.code = FileSearch(self.repo, path_weight=self.past.cfg.code_path_weight)
        return self.code

    def rank(self, history: list, task: str, author: str | None = None, score: FileScorer | None = None,
             limit: int = 20) -> dict:
        """The ranker's files for `task` after `history` (oldest first): path, score, change type, module and
        symbols each. `score(candidates)` (the language model's score_files) feeds the LM ranker when both exist."""
        self.catch_up(history)
        code = self.file_search()
        parent = history[-1][0].hash if history and history[-1][0].hash in self.seen else self.last_commit
        target = Target(commit="", position=self.past.position, task=task, author=(author or "").lower(),
                        parent=parent)
        state = state_at(self.past, code, target)
        with_lm = score is not None and self.ranker.uses_lm
        lm = lm_scorer(score, self.past.file_module) if with_lm else None
        rows = candidate_rows(state, self.candidates, lm=lm, dense=self.dense)
        everything = self.ranker.rank(rows, lm=lm is not None)
        ranked = everything[:limit]
        learned = self.learned_symbols(state, everything)
        files = [{"path": f.path, "score": round(f.score, 6), "change_type": f.change_type, "module": f.module,
                  "symbols": f.symbols, "symbol_scores": [{"symbol": s, "score": p} for s, p in f.symbol_scores]}
                 for f in describe_files(self.ranker, state, ranked, self.symbols_per_file, self.symbol_indexes,
                                         learned)]
        new = new_file_guesses(task, everything, self.past, code.blobs if code is not None else None)
        return {"method": "ranker_lm" if lm is not None else "ranker", "files": files, "candidates": len(rows.paths),
                "new_files": [g.to_json() for g in new]}

    def learned_symbols(self, state: TargetState, ranked: list[tuple[str, float]]) -> dict[str, list[tuple[str, float]]]:
        """The symbol ranker's most likely symbols of the best files (path -> [(symbol, probability)]), from
        their units in the tree; {} without a symbol ranker or a tree."""
        if self.symbol_ranker is None or state.code is None:
            return {}
        files = [path for path, _ in ranked[:SYMBOL_FILES]]
        scorer = self.scorer_for(state.target.task, ranked, files)
        out: dict[str, list[tuple[str, float]]] = {}
        for unit, p in scorer.ranked(self.tree_units.candidates(state.code, files, [], state.task_words)):
            named = out.setdefault(unit.path, [])
            if len(named) < self.symbols_per_file and unit.symbol not in {s for s, _ in named}:
                named.append((unit.symbol, round(p, 6)))
        return out

    def scorer_for(self, task: str, ranked: list[tuple[str, float]], files: list[str]) -> UnitScorer:
        """The symbol ranker's scorer for `task` now (the statistics' last commit), the files ranked so."""
        words = code_words(task)
        _, similar = self.past.similar_files(words)
        ranks = {path: (rank, score) for rank, (path, score) in enumerate(ranked[:FILE_RANKS], start=1)}
        context = SymbolContext(words, self.past.position, self.symbol_history, similar, ranks)
        return UnitScorer(self.symbol_ranker, context, files)

    def symbol_scorer(self, prediction) -> UnitScorer | None:
        """For the context pack of a prediction (serving.prediction.Prediction) this ranking made: units ->
        (probability of change, why), its files as the learned ranker ranked them; None without a symbol
        ranker."""
        if self.symbol_ranker is None:
            return None
        files = [(f.path, f.score) for f in prediction.files if f.ranked_by in ("ranker", "ranker_lm")]
        return self.scorer_for(prediction.task, files, [path for path, _ in files[:SYMBOL_FILES]])

    def merge(self, output: dict, history: list, task: str, max_files: int, score: FileScorer | None = None) -> dict:
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
                          "symbols": list(dict.fromkeys(entry["symbols"] + list(gen.get("symbols") or []))),
                          "symbol_scores": entry["symbol_scores"]})
        known = {f["path"] for f in files}
        files += [{**f, "ranked_by": "generation"} for f in output.get("files", [])
                  if f["path"] not in known and f.get("votes")]
        files = files[:max_files]
        symbols = list(dict.fromkeys([s for f in files for s in f["symbols"]] + list(output.get("symbols") or [])))
        return {**output, "ranking": ranked["method"], "ranker_candidates": ranked["candidates"], "files": files,
                "new_files": ranked["new_files"],
                "modules": list(dict.fromkeys(f["module"] for f in files if f.get("module"))), "symbols": symbols}
