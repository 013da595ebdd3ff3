"""The prediction library: given recent history and a task, which files change, how, and the code's shape.

Reads
    model/          the trained model folder (scratch, LoRA/QLoRA adapter over its base, merged), loaded once
                    with repo2model.training.models.load_trained_model
    tokenizer/      the commit language (`commit_language.json`), from the model folder or <output_dir>/tokenizer
    the history     (Commit, [Chunk]) pairs, oldest first (repo2model.serving.history makes them from a repository, from
                    commits.json + chunks.jsonl, or from a caller's records)
Writes nothing: `Predictor.predict` returns a Prediction (repo2model.serving.prediction), whose `to_json()` is
what predict.py prints and serve.py answers: files ranked with scores, change types and symbols per file, modules,
symbols, a code sketch, and every candidate's raw text with its parse problems; `missing_objects` counts what
objects the repository lacks (partial clone, pruned mirror) took away: file changes of the history without a
patch, files of the ranker's code search and predicted files of the context without content.

The prompt is the one the dataset builder makes (`CommitLanguage.build_prompt`): the compact rendering of
the recent commits, then the task as the new commit's message; the model generates the commit's full
rendering, which `CommitLanguage.parse_commit` turns back into structure. A malformed generation is
reported (`malformed`, `problems`), never fatal (repo2model.serving.generation).

File ranking (`file_ranking`):
    generation  each generated candidate gets the weight exp(mean log-probability of its tokens); a file's
                `score` is the weight share of the candidates that name it (1.0: every candidate); ties keep
                the order of first appearance (repo2model.serving.generation).
    likelihood  the model scores candidate files instead of writing them: for each file of the known
                history (CandidatePool: at most `rank_candidates`, alternately the most recently and the most
                frequently changed), the log-probability that the target starts with that file, i.e. of
                `<FILE>` + path + the token that ends the path in training (`<MODULE:x>`, `<MODULE>`, or the
                newline of a file without module), after the prompt. The prompt runs once; its KV cache is
                expanded over batches of `rank_batch_size` files. Files are sorted by that log-probability
                (`rank_score: sum`) or by it per token (`mean`); each gets `logprob` (the sum, nats) and
                `logprob_tokens`. Nothing is generated: no candidates, change types, symbols or code sketch.
    both        (default) both are run: every scored file by likelihood first, then the files that only
                generation names (not among the scored ones, e.g. a new file), by their generation score.
                A scored file keeps generation's score/votes/change types/symbols when generation named it
                (else 0 / none); modules follow the merged order; symbols and the code sketch are generation's.
With a learned ranker (train_ranker's folder beside the model), its files come first (FileRanking.merge).

The language model runs in torch (the model folder) or, with `backend: llama_cpp`, in llama.cpp (the GGUF the
export stage wrote): repo2model.serving.backends. The `predict` config section
(repo2model.serving.settings.PredictionConfig) is documented key by key in config.yaml.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch

from repo2model.core.artifacts import iter_commits, iter_jsonl, require
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.core.records import Chunk, Commit
from repo2model.language.commit_language import CommitLanguage
from repo2model.language.encoding import decode_ids, encode_texts
from repo2model.language.tokens import COMMIT_END, FILE, escape_line
from repo2model.ranking.file_ranking import FileRanking
from repo2model.serving.backends import LanguageModelBackend, TorchBackend, generated_length, load_language_model
from repo2model.serving.generation import merge_rankings, parse_generation, rank_candidates
from repo2model.serving.history import unavailable_files
from repo2model.serving.live_prediction import LiveExtras
from repo2model.serving.prediction import (
    Decoding,
    FileRankingSummary,
    HistoryCommit,
    MissingObjects,
    PredictedFile,
    Prediction,
)
from repo2model.serving.settings import MAX_TASK_CHARS, OPTION_KEYS, PredictionConfig, with_options
from repo2model.serving.work_in_progress import WorkInProgress
from repo2model.training.models import language_dir, read_training_info, trained_length
from repo2model.retrieval.retriever import Retriever

log = logging.getLogger("predict")


class CandidatePool:
    """The files of a known history (oldest commit first), for the likelihood ranking.

    `top(limit)` takes alternately the most recently changed file (the latest commit's files first) and the
    most frequently changed one (ties: the more recent, then the path) not taken yet, until `limit` files:
    the candidates the model scores. Each file keeps the module its chunks last had (its `<MODULE…>`).
    """

    def __init__(self):
        self.count: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.module: dict[str, str | None] = {}
        self.position = 0

    def add_commit(self, files: list[tuple[str, str | None]]) -> None:
        """One commit's (path, module) pairs, e.g. from its chunks; a path counts once per commit."""
        for path, module in files:
            if path not in self.last or self.last[path] != self.position:
                self.count[path] = self.count.get(path, 0) + 1
            self.last[path] = self.position
            if module or path not in self.module:
                self.module[path] = module or self.module.get(path)
        self.position += 1

    def add_chunks(self, chunks: list) -> None:
        """One commit's chunks (`Chunk` objects or their dicts), files in the chunks' order."""
        pairs = [(c["file"], c.get("module")) if isinstance(c, dict) else (c.file, c.module) for c in chunks]
        self.add_commit(pairs)

    def top(self, limit: int) -> list[tuple[str, str | None]]:
        recent = heapq.nsmallest(limit, self.last, key=lambda p: (-self.last[p], p))
        frequent = heapq.nsmallest(limit, self.count, key=lambda p: (-self.count[p], -self.last[p], p))
        chosen: dict[str, None] = {}
        for pair in zip(recent, frequent):
            for path in pair:
                if len(chosen) < limit:
                    chosen.setdefault(path, None)
        return [(path, self.module.get(path)) for path in chosen]


def pool_from_history(history: list[tuple[Commit, list[Chunk]]], pool: CandidatePool | None = None) -> CandidatePool:
    """The pool of `history`'s files (added to `pool` when given)."""
    pool = pool or CandidatePool()
    for _, chunks in history:
        pool.add_chunks(chunks)
    return pool


def pool_from_artifacts(commits_path: Path, chunks_path: Path) -> CandidatePool:
    """Every commit of commits.json (the files its chunks render; without chunks.jsonl: its changed files)."""
    pool = CandidatePool()
    if Path(chunks_path).exists():
        current, group = None, []
        for record in iter_jsonl(chunks_path, "semantic_chunker"):
            if record["commit"] != current and group:
                pool.add_chunks(group)
                group = []
            current = record["commit"]
            group.append(record)
        if group:
            pool.add_chunks(group)
    else:
        for commit in iter_commits(commits_path):
            pool.add_commit([(f.path, None) for f in commit.files])
    return pool


# ---------------------------------------------------------------- the predictor


class Predictor:
    """A model loaded once; `predict` turns (history, task) into a Prediction.

    `model`: a torch model, or a LanguageModelBackend (repo2model.serving.backends: llama.cpp); `self.lm` scores
    and generates, `self.model` is the torch model (None with another backend).
    """

    def __init__(self, model, tokenizer, language, cfg: PredictionConfig, model_dir: Path | None = None,
                 trained_length: int | None = None):
        self.lm: LanguageModelBackend = TorchBackend(model) if isinstance(model, torch.nn.Module) else model
        self.model = model if isinstance(self.lm, TorchBackend) else None
        self.tokenizer, self.language, self.cfg = tokenizer, language, cfg
        self.model_dir = model_dir
        self.stop_ids = stop_token_ids(tokenizer)
        self.max_positions = self.lm.max_positions
        # The sequence length training used: prompts beyond it reach positions the model never saw.
        self.trained_length = min(trained_length or self.max_positions, self.max_positions)
        # What the model learned up to (train_model's training_info.json; absent in older folders).
        self.training = read_training_info(model_dir) if model_dir is not None else {}
        self.ranker: FileRanking | None = None  # the learned file ranker (train_ranker), when there is one
        self.retriever: Retriever | None = None  # adds the code context and the prompt (index.py's index)
        self._extras: LiveExtras | None = None  # the ranker folder's live ranker, author model, activity

    @classmethod
    def load(cls, model_dir: Path, cfg: PredictionConfig, device: str | None = None,
             paths: ArtifactPaths | None = None, ranker: bool = True,
             retriever: Retriever | None = None) -> "Predictor":
        model_dir = require(Path(model_dir), "train_model")
        device = device or cfg.device
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        started = time.monotonic()
        lm, tokenizer = load_language_model(model_dir, cfg, device, paths)
        language = CommitLanguage.load(language_dir(model_dir, paths))
        log.info("loaded %s (%s) on %s in %.1fs", model_dir, lm.describe().get("gguf", lm.name), device,
                 time.monotonic() - started)
        predictor = cls(lm, tokenizer, language, cfg, model_dir, trained_length(model_dir))
        # <output_dir>/ranker (or beside the model) ranks the files; without one (an older folder) the model does.
        predictor.ranker = FileRanking.find(model_dir, paths) if ranker else None
        predictor.retriever = retriever
        return predictor

    def info(self) -> dict:
        return {
            "model": str(self.model_dir) if self.model_dir else None,
            **self.lm.describe(),  # backend, device, parameters (llama_cpp: the gguf file and its type)
            "max_positions": self.max_positions,
            "trained_length": self.trained_length,
            "vocab_size": len(self.tokenizer),
            "defaults": {k: getattr(self.cfg, k) for k in OPTION_KEYS},
            **{key: self.training.get(key) for key in ("last_commit", "last_commit_time", "trained_at")},
            # Which helpers answer beside the model: without them files are ranked by the model alone and
            # there is no code context (an older model folder, or train_ranker / index not run).
            "ranker": None if self.ranker is None else {
                "folder": str(self.ranker.ranker.folder) if self.ranker.ranker.folder else None,
                "language_model_features": self.ranker.ranker.uses_lm,
                "last_commit": self.ranker.last_commit,
            },
            "index": None if self.retriever is None else str(self.retriever.folder),
        }

    def extras(self) -> LiveExtras:
        """The live ranker, author model and activity of the ranker's folder (loaded once per ranker)."""
        if self._extras is None or self._extras.ranking is not self.ranker:
            self._extras = LiveExtras.load(self.ranker)
        return self._extras

    def context_window(self, cfg: PredictionConfig) -> int:
        """The prompt's token budget: as set, else the trained sequence length less the generated tokens."""
        budget = cfg.context_window or (self.trained_length - cfg.max_new_tokens)
        if budget < 16:
            raise ValueError(f"max_new_tokens: {cfg.max_new_tokens} leaves no room for a prompt in the "
                             f"{self.trained_length} positions the model was trained on (lower it or set context_window)")
        return budget

    def predict(self, history: list[tuple[Commit, list[Chunk]]], task: str, options: dict | None = None,
                seed: int = 42, pool: CandidatePool | None = None, repo: Path | None = None,
                test_failures: str | None = None, work: WorkInProgress | None = None) -> Prediction:
        """The prediction for `task` after `history` (oldest first). ValueError for bad options or task.

        `pool`: the files of the known history the likelihood ranking scores (default: those of `history`).
        With a retriever: `context` (the predicted files' and symbols' current code, then what the index finds,
        within `context_tokens`) and `prompt` (the step-4 text, with `test_failures`) for the repository `repo`.
        `work`: the working tree's changes (repo2model.serving.work_in_progress), the evidence of a change in
        progress: its files become `in_progress`, the remaining ones are ranked (the task may then be empty).
        Likely authors and the next commit's time come with every prediction the ranker folder can answer.
        """
        cfg = with_options(self.cfg, options)
        if not isinstance(task, str) or (not task.strip() and work is None):
            raise ValueError("task: must be a non-empty string")
        if len(task) > MAX_TASK_CHARS:
            raise ValueError(f"task: longer than {MAX_TASK_CHARS} characters")
        history = history[-cfg.history_commits:] if cfg.history_commits else []
        prompt = self.language.build_prompt(history, task, self.tokenizer, self.context_window(cfg))
        pool = pool if pool is not None else pool_from_history(history)
        prediction = self.predict_ids(prompt, seed=seed, cfg=cfg, candidates=pool.top(cfg.rank_candidates))
        prediction.task = task
        prediction.history = [HistoryCommit.of(commit) for commit, _ in history]
        if self.ranker is not None and work is None:  # its files first; the model keeps types, symbols, new files
            prediction = apply_ranker(self.ranker, prediction, history, cfg.max_files,
                                      score=lambda candidates: self.score_files(prompt, candidates, cfg))
        prediction = self.extras().apply(prediction, history, task, work, cfg.max_files)
        if self.retriever is not None:
            chosen = self.ranker is not None and self.retriever.cfg.pack == "chosen"  # the only pack that uses it
            scorer = self.ranker.symbol_scorer(prediction) if chosen else None
            answer = self.retriever.answer(task, prediction, repo, cfg.context_tokens, test_failures, scorer=scorer)
            prediction.context, prediction.prompt = answer["context"], answer["prompt"]
            prediction.context_source = answer["context_source"]
        code = self.ranker.code if self.ranker is not None else None
        prediction.missing_objects = MissingObjects(
            history_files=unavailable_files(history),
            code_search_files=len(code.missing_files()) if code is not None else 0,
            context_files=(prediction.context_source or {}).get("missing_objects", 0),
        )
        return prediction

    def predict_ids(self, prompt_ids: list[int], seed: int = 42, cfg: PredictionConfig | None = None,
                    candidates: list[tuple[str, str | None]] | None = None) -> Prediction:
        """From a ready prompt (token ids): generate, parse and rank the candidates, and/or rank the candidate
        files `candidates` ((path, module) pairs) by likelihood, as `cfg.file_ranking` says. The prediction's
        task and history are left empty (the prompt holds them)."""
        cfg = cfg or self.cfg
        started = time.monotonic()
        generated = []
        if cfg.file_ranking != "likelihood":
            texts, weights = self.generate(prompt_ids, cfg, seed)
            generated = [parse_generation(self.language, text, weight) for text, weight in zip(texts, weights)]
        scored: list[dict] = []
        if cfg.file_ranking != "generation" and candidates:
            scored = self.score_files(prompt_ids, candidates, cfg)
        if cfg.file_ranking == "generation":
            ranked = rank_candidates(generated, cfg.max_files)
        else:
            ranked = merge_rankings(scored, rank_candidates(generated, 10 ** 9), cfg.max_files)
        return Prediction(
            task="",
            model=str(self.model_dir) if self.model_dir else None,
            prompt_tokens=len(prompt_ids),
            decoding=Decoding(cfg.decoding, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k,
                              num_candidates=cfg.candidates if cfg.file_ranking != "likelihood" else 0, seed=seed),
            file_ranking=FileRankingSummary(cfg.file_ranking, cfg.rank_score, files_scored=len(scored)),
            files=ranked.files,
            modules=ranked.modules,
            symbols=ranked.symbols,
            code_sketch=ranked.code_sketch,
            candidates=generated,
            seconds=round(time.monotonic() - started, 3),
            ranking=cfg.file_ranking,
        )

    def file_continuations(self, candidates: list[tuple[str, str | None]]) -> list[list[int]]:
        """The ids a target starts with when it changes each file first: `<FILE>` + the path + the token that
        ends the path in training (`<MODULE:x>`, `<MODULE>`, or the newline when the file has no module)."""
        heads = encode_texts(self.tokenizer, [FILE + escape_line(path) for path, _ in candidates])
        fulls = encode_texts(self.tokenizer, [self.language.render_file_header(path, module)
                                              for path, module in candidates])
        # The path's tokens are the same alone: what follows it is a special token or a newline pre-token.
        return [full[: len(head) + 1] if full[: len(head)] == head and len(full) > len(head) else full
                for head, full in zip(heads, fulls)]

    def score_files(self, prompt_ids: list[int], candidates: list[tuple[str, str | None]],
                    cfg: PredictionConfig) -> list[dict]:
        """Log-probability of each candidate file's continuation after the prompt (the backend evaluates the
        prompt once: repo2model.serving.backends). Returns [{"path", "module", "logprob", "tokens", "rank_value"}] in
        the candidates' order (files whose continuation does not fit in the model's positions are left out)."""
        conts = self.file_continuations(candidates)
        room = self.max_positions - len(prompt_ids)
        keep = [i for i, ids in enumerate(conts) if 0 < len(ids) <= room]
        if not keep:
            return []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        values = self.lm.continuation_logprobs(prompt_ids, [conts[i] for i in keep], cfg.rank_batch_size, pad)
        totals = dict(zip(keep, values))
        scored = []
        for i in keep:
            n = len(conts[i])
            value = totals[i] / n if cfg.rank_score == "mean" else totals[i]
            scored.append({"path": candidates[i][0], "module": candidates[i][1], "logprob": totals[i], "tokens": n,
                           "rank_value": value})
        return scored

    def generate(self, prompt_ids: list[int], cfg: PredictionConfig, seed: int) -> tuple[list[str], list[float]]:
        """Candidate texts (special tokens kept: they are the structure) and their weights."""
        max_new = min(cfg.max_new_tokens, self.max_positions - len(prompt_ids))
        if max_new < 1:
            raise ValueError(f"the prompt ({len(prompt_ids)} tokens) fills the model's {self.max_positions} positions")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        generated = self.lm.generate(prompt_ids, cfg, max_new, self.stop_ids, pad, seed)
        texts = [self.decode(ids) for ids, _ in generated]
        return texts, [math.exp(lp) if math.isfinite(lp) else 0.0 for _, lp in generated]

    def decode(self, ids: list[int]) -> str:
        """The generated text up to the stop token, exactly as the commit language reads it."""
        ids = ids[: generated_length(ids, self.stop_ids)]
        drop = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, self.tokenizer.bos_token_id} - {None}
        return decode_ids(self.tokenizer, [i for i in ids if i not in drop])


def stop_token_ids(tokenizer) -> list[int]:
    """eos and the commit language's end-of-commit token: generation stops at either."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end = tokenizer.convert_tokens_to_ids(COMMIT_END)
    if isinstance(end, int) and end != tokenizer.unk_token_id and end not in ids:
        ids.append(end)
    if not ids:
        raise UserError("the tokenizer has neither an eos token nor the commit language's end token: retrain it")
    return ids


def apply_ranker(ranking: FileRanking, prediction: Prediction, history: list, max_files: int,
                 score: Callable[[list[tuple[str, str | None]]], list[dict]] | None = None) -> Prediction:
    """`prediction` with the learned ranker's files first (FileRanking.merge, which reads and writes the files
    as the prediction JSON has them): each keeps what generation said of it, the files only generation names
    follow; `ranking` says which ranker ranked them."""
    merged = ranking.merge({"files": [f.to_json() for f in prediction.files], "symbols": prediction.symbols},
                           history, prediction.task, max_files, score=score)
    return dataclasses.replace(prediction, files=[PredictedFile.from_json(f) for f in merged["files"]],
                               modules=merged["modules"], symbols=merged["symbols"], ranking=merged["ranking"],
                               ranker_candidates=merged["ranker_candidates"], new_files=merged["new_files"])
