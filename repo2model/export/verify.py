"""The proof that a GGUF export is the model torch runs, on the test split.

    max_logit_difference   the largest |logit| difference between torch and llama.cpp over every position and
                           every token of the test sequences (f16: rounding of the weights and activations only)
    target_loss            the mean loss (nats per target token) on the test split, for either backend
    recall_targets         each test target's prompt, the files of the history before it (the likelihood
                           ranking's candidates) and the files it really changed
    likelihood_recall      recall@k of the files ranked by a scorer's log-probability of each file continuation

tests/test_export.py and bench/bench_export.py hold the exports to the tolerances they state with these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from repo2model.core.artifacts import iter_commits_with_chunks
from repo2model.export.backend import LlamaCppModel
from repo2model.language.examples import ExampleSet
from repo2model.ranking.metrics import Prediction, Truth, score
from repo2model.serving.predictor import CandidatePool

# (prompt ids, candidate (path, module) pairs) -> path -> value to rank by (higher first)
Scorer = Callable[[list[int], list[tuple[str, str | None]]], dict[str, float]]


@dataclasses.dataclass
class RecallTarget:
    commit: str
    prompt: list[int]
    candidates: list[tuple[str, str | None]]
    truth: Truth


def split_sequences(examples: ExampleSet, limit: int | None = None) -> list[tuple[list[int], int]]:
    """(ids, target start) of the first `limit` examples (all when None)."""
    count = len(examples) if limit is None else min(limit, len(examples))
    return [(examples.ids(i).tolist(), int(examples.target_starts[i])) for i in range(count)]


def torch_logits(model, ids: Sequence[int]) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(ids)], dtype=torch.long))
    return out.logits[0].float().numpy()


def max_logit_difference(model, backend: LlamaCppModel, sequences: list[tuple[list[int], int]]) -> float:
    return max(float(np.abs(torch_logits(model, ids) - backend.logits(ids)).max()) for ids, _ in sequences)


def target_loss(logprobs: Callable[[list[int], int], np.ndarray], sequences: list[tuple[list[int], int]]) -> float:
    """Mean -log p over the target tokens of every sequence; `logprobs(ids, start)` gives log p(ids[i] | ids[:i])
    for i >= start."""
    total, count = 0.0, 0
    for ids, start in sequences:
        values = logprobs(ids, start)
        total -= float(np.sum(values))
        count += len(values)
    return total / count


def torch_token_logprobs(model) -> Callable[[list[int], int], np.ndarray]:
    def logprobs(ids: list[int], start: int) -> np.ndarray:
        rows = torch.log_softmax(torch.from_numpy(torch_logits(model, ids[:-1])).double(), dim=-1)
        return rows[start - 1:].gather(1, torch.tensor(ids[start:])[:, None]).squeeze(1).numpy()
    return logprobs


def recall_targets(commits: Path, chunks: Path, examples: ExampleSet, candidates: int,
                   limit: int | None = None) -> list[RecallTarget]:
    """The examples' targets (the first `limit`) with the files of every commit before each (CandidatePool's
    `candidates` most recent and most frequent, as prediction takes them) and the files each changed."""
    wanted = {commit: i for i, commit in enumerate(examples.commits[:limit] if limit else examples.commits)}
    pool = CandidatePool()
    targets = []
    for commit, commit_chunks in iter_commits_with_chunks(commits, chunks):
        i = wanted.get(commit["hash"])
        if i is not None and commit_chunks:
            prompt = examples.ids(i)[: int(examples.target_starts[i])].tolist()
            targets.append(RecallTarget(commit["hash"], prompt, pool.top(candidates),
                                        Truth.of(commit["hash"], commit_chunks)))
        pool.add_chunks(commit_chunks)
    return targets


def likelihood_recall(scorer: Scorer, targets: list[RecallTarget], k: int = 5) -> tuple[float, list[list[str]]]:
    """(mean recall@k over the targets, each target's top-k files) with files ranked by `scorer`."""
    recalls, tops = [], []
    for target in targets:
        values = scorer(target.prompt, target.candidates)
        ranked = sorted(values, key=lambda path: -values[path])  # stable: ties keep the candidates' order
        row = score(Prediction(files=[(path, values[path]) for path in ranked]), target.truth, ks=(k,))
        if row[f"recall@{k}"] is not None:
            recalls.append(row[f"recall@{k}"])
        tops.append(ranked[:k])
    return (float(np.mean(recalls)) if recalls else float("nan")), tops


def torch_file_scorer(predictor, cfg) -> Scorer:
    """The Predictor's own likelihood ranking (torch, the prompt's cache expanded over batches of files)."""
    def scores(prompt: list[int], candidates: list[tuple[str, str | None]]) -> dict[str, float]:
        return {row["path"]: row["rank_value"] for row in predictor.score_files(prompt, candidates, cfg)}
    return scores


def llama_file_scorer(backend: LlamaCppModel, predictor, cfg) -> Scorer:
    """The same ranking through llama.cpp: the Predictor's continuations (`<FILE>` + path + the token after it),
    scored by `backend`; files whose continuation does not fit in the model's positions are left out, as there."""
    def scores(prompt: list[int], candidates: list[tuple[str, str | None]]) -> dict[str, float]:
        room = min(backend.n_ctx, predictor.max_positions) - len(prompt)
        kept = [(path, ids) for (path, _), ids in zip(candidates, predictor.file_continuations(candidates))
                if 0 < len(ids) <= room]
        values = backend.continuation_logprobs(prompt, [ids for _, ids in kept])
        return {path: value / len(ids) if cfg.rank_score == "mean" else value
                for (path, ids), value in zip(kept, values)}
    return scores
