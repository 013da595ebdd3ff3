"""LlamaCppModel: a GGUF file loaded in llama.cpp, answering what prediction asks of a language model.

    logits(ids)                                  the logits after each position (what torch's forward returns)
    token_logprobs(ids, start)                   log p(ids[i] | ids[:i]) for i >= start (the loss of a target)
    continuation_logprobs(prompt, continuations) the summed log-probability of each continuation after one
                                                 prompt, evaluated once (the likelihood ranking of files)
    generate(prompt, ...)                        candidates sampled (or greedy) up to a stop token, each with
                                                 the log-probability of its tokens (generation's weights)
    tokenize / token_text / token_attributes     llama.cpp's own view of the vocabulary

Every method takes and returns token ids: the caller tokenizes with the project's tokenizer, as it does for
torch, so both backends score exactly the same tokens. Sampling follows transformers' order (temperature, then
top-k, then top-p) with numpy's generator, and a candidate's log-probabilities are taken under the distribution
it was drawn from, as transformers' `compute_transition_scores(normalize_logits=True)` does; the draws differ
from torch's (another random generator).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np

from repo2model.core.errors import UserError
from repo2model.export import packages


@dataclasses.dataclass
class Sampling:
    """How `generate` picks each token: greedy (argmax) or sampled with temperature / top-k / top-p."""

    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k
    top_p: float = 1.0


class LlamaCppModel:
    """A GGUF model in llama.cpp (CPU, or the GPU when llama-cpp-python was built for one: `gpu_layers`).

    `context_length`: the positions of llama.cpp's context (None: the model's own, the GGUF's context_length).
    Every position's logits are kept (n_ctx x n_vocab floats: 0.5 GB for LLaMA-2's 32k tokens at 4096), so
    prediction passes the length it needs.
    """

    def __init__(self, path: Path, context_length: int | None = None, threads: int | None = None,
                 batch: int = 512, gpu_layers: int = 0):
        llama_cpp = packages.llama_cpp()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no GGUF file there: run the export stage (python export.py)")
        try:
            # logits_all: every position's logits are kept, which continuation scoring and the loss read
            self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=context_length or 0, n_batch=batch,
                                       n_ubatch=batch, n_threads=threads, n_threads_batch=threads,
                                       n_gpu_layers=gpu_layers, logits_all=True, verbose=False)
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise UserError(f"{self.path}: llama.cpp cannot load it ({exc}): a damaged or foreign GGUF file; "
                            "export it again") from None
        self.n_vocab = self.llm.n_vocab()
        self.n_ctx = self.llm.n_ctx()

    # ---------------------------------------------------------------- scores

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """[len(ids), n_vocab] float32: row i is the prediction after ids[: i + 1]."""
        self._eval_from(0, ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def token_logprobs(self, ids: Sequence[int], start: int = 1) -> np.ndarray:
        """log p(ids[i] | ids[:i]) for i in start..len(ids)-1 (nats)."""
        if start < 1:
            raise ValueError("start: the first token has no prediction (start >= 1)")
        self._eval_from(0, ids[:-1])
        rows = log_softmax(self.llm.scores[start - 1: len(ids) - 1])
        return rows[np.arange(len(rows)), np.asarray(ids[start:])]

    def continuation_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float]:
        """The summed log-probability of each continuation after `prompt`; the prompt is evaluated once and each
        continuation from the end of its cache."""
        if any(not continuation for continuation in continuations):
            raise ValueError("an empty continuation has no log-probability")
        self._eval_from(0, prompt)
        first = log_softmax(self.llm.scores[len(prompt) - 1: len(prompt)])[0]
        totals = []
        for continuation in continuations:
            total = float(first[continuation[0]])
            if len(continuation) > 1:
                self._eval_from(len(prompt), continuation[:-1])
                rows = log_softmax(self.llm.scores[len(prompt): len(prompt) + len(continuation) - 1])
                total += float(rows[np.arange(len(rows)), np.asarray(continuation[1:])].sum())
            totals.append(total)
        return totals

    # ---------------------------------------------------------------- generation

    def generate(self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int], candidates: int = 1,
                 sampling: Sampling | None = None, seed: int = 42) -> list[tuple[list[int], list[float]]]:
        """`candidates` continuations of `prompt`, each up to and including its first stop token (or
        `max_new_tokens`), with the log-probability of each of its tokens."""
        sampling = sampling or Sampling()
        if len(prompt) + max_new_tokens > self.n_ctx:
            raise ValueError(f"the prompt ({len(prompt)} tokens) and {max_new_tokens} new tokens exceed the "
                             f"{self.n_ctx} positions of the llama.cpp context")
        rng = np.random.default_rng(seed)
        stops = set(stop_ids)
        self._eval_from(0, prompt)
        results = []
        for _ in range(candidates):
            ids: list[int] = []
            logprobs: list[float] = []
            logits = np.array(self.llm.scores[len(prompt) - 1], dtype=np.float64)
            for _ in range(max_new_tokens):
                token, logprob = pick(logits, sampling, rng)
                ids.append(token)
                logprobs.append(logprob)
                if token in stops or len(ids) == max_new_tokens:
                    break
                self._eval_from(len(prompt) + len(ids) - 1, [token])
                logits = np.array(self.llm.scores[len(prompt) + len(ids) - 1], dtype=np.float64)
            results.append((ids, logprobs))
            if not sampling.sample:  # greedy: every candidate would be the same
                results.extend((list(ids), list(logprobs)) for _ in range(candidates - 1))
                break
        return results

    # ---------------------------------------------------------------- vocabulary

    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        """llama.cpp's tokenization of `text` (special tokens in it recognised)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def token_text(self, token_id: int) -> str:
        return self.llm._model.token_get_text(token_id)

    def token_attributes(self, token_id: int) -> int:
        """llama.cpp's attribute bits of a token (LLAMA_TOKEN_ATTR_CONTROL, _USER_DEFINED, ...)."""
        return self.llm._model.token_get_attr(token_id)

    def metadata(self) -> dict[str, str]:
        return dict(self.llm.metadata)

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _eval_from(self, position: int, ids: Sequence[int]) -> None:
        """Evaluate `ids` at positions position.. (the cache beyond `position` is dropped first)."""
        if position + len(ids) > self.n_ctx:
            raise ValueError(f"{position + len(ids)} tokens exceed the {self.n_ctx} positions of the llama.cpp "
                             "context")
        if any(not 0 <= i < self.n_vocab for i in ids):
            raise ValueError(f"a token id outside the model's vocabulary of {self.n_vocab}")
        self.llm.n_tokens = position
        if ids:
            self.llm.eval(list(ids))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def pick(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> tuple[int, float]:
    """(token, its log-probability under the distribution it was drawn from)."""
    if not sampling.sample:
        token = int(np.argmax(logits))
        return token, float(log_softmax(logits)[token])
    scores = logits / max(sampling.temperature, 1e-6)
    if sampling.top_k and sampling.top_k < len(scores):
        kth = np.partition(scores, -sampling.top_k)[-sampling.top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    if sampling.top_p < 1.0:
        order = np.argsort(scores)  # ascending, as transformers' TopPLogitsWarper
        probs = np.exp(log_softmax(scores[order]))
        drop = np.cumsum(probs) <= 1 - sampling.top_p
        drop[-1] = False  # keep at least the most likely token
        scores[order[drop]] = -np.inf
    logprobs = log_softmax(scores)
    probs = np.exp(logprobs)
    token = int(rng.choice(len(scores), p=probs / probs.sum()))
    return token, float(logprobs[token])
