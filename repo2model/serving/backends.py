"""The language model behind a Predictor: torch (the model folder) or llama.cpp (the exported GGUF file).

    LanguageModelBackend  what prediction asks of a language model, in token ids: the log-probability of
                          continuations after one prompt (the likelihood ranking of files), candidates generated
                          with the mean log-probability of their tokens, the loss on a target (evaluate)
    TorchBackend          a transformers model: the prompt's KV cache expanded over batches of continuations;
                          generate() greedy, sampled or by beam search
    LlamaCppBackend       a GGUF file in llama.cpp (repo2model.export.backend.LlamaCppModel): the prompt evaluated
                          once, each continuation from the end of its cache; greedy or sampled (no beam search)
    load_language_model   the `predict` section's `backend` -> (backend, tokenizer) for a model folder

Both take the ids of the project's tokenizer (read from the model folder either way), so they score the same
tokens. With llama_cpp the torch weights are never loaded: a 7B model at q4_k_m needs about 4 GB instead of 28.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import DynamicCache

from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.serving.settings import BEAM_WITH_LLAMA_CPP, PredictionConfig
from repo2model.training.models import damaged_folder_errors, load_trained_model, read_training_info

EXPORT_INFO = "export_info.json"

# (the new token ids up to and including the first stop token, the mean log-probability of those tokens)
Generated = tuple[list[int], float]


class LanguageModelBackend(Protocol):
    name: str
    max_positions: int  # prompt + continuation must fit in these

    def continuation_logprobs(self, prompt: list[int], continuations: list[list[int]], batch_size: int,
                              pad_id: int) -> list[float]:
        """The summed log-probability of each (non-empty) continuation after `prompt`."""

    def generate(self, prompt: list[int], cfg: PredictionConfig, max_new_tokens: int, stop_ids: list[int],
                 pad_id: int, seed: int) -> list[Generated]:
        """`cfg.candidates` continuations of `prompt` as `cfg.decoding` says."""

    def target_loss(self, ids: Sequence[int], labels: Sequence[int]) -> tuple[float, int]:
        """(the summed -log p of the tokens whose label is not -100, their count): the training loss's terms."""

    def describe(self) -> dict:
        """What /health and the prediction's `info` show: backend, device, parameters, file."""


def generated_length(ids: list[int], stop_ids: list[int]) -> int:
    """Tokens up to and including the first stop token (all of them if none)."""
    for i, token in enumerate(ids):
        if token in stop_ids:
            return i + 1
    return len(ids)


def mean_logprob(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("-inf")


# ---------------------------------------------------------------- torch


class TorchBackend:
    """A transformers causal LM (eval mode) on its device."""

    name = "torch"

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 2048)

    def continuation_logprobs(self, prompt: list[int], continuations: list[list[int]], batch_size: int,
                              pad_id: int) -> list[float]:
        """The prompt runs once; its KV cache is expanded over batches of `batch_size` continuations."""
        ids_prompt = torch.tensor([prompt], dtype=torch.long, device=self.device)
        totals: list[float] = []
        with torch.no_grad():
            out = self.model(input_ids=ids_prompt, attention_mask=torch.ones_like(ids_prompt), use_cache=True,
                             logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            layers = [(layer.keys, layer.values) for layer in out.cache.layers]  # transformers 5: `cache`
            del out
            for start in range(0, len(continuations), batch_size):
                batch = continuations[start: start + batch_size]
                width = max(len(c) for c in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long, device=self.device)
                mask = torch.zeros((len(batch), width), dtype=torch.long, device=self.device)
                for row, continuation in enumerate(batch):
                    ids[row, : len(continuation)] = torch.tensor(continuation, dtype=torch.long)
                    mask[row, : len(continuation)] = 1
                cache = DynamicCache(ddp_cache_data=[(k.expand(len(batch), -1, -1, -1),
                                                      v.expand(len(batch), -1, -1, -1)) for k, v in layers])
                attention = torch.cat([torch.ones((len(batch), len(prompt)), dtype=torch.long,
                                                  device=self.device), mask], dim=1)
                token_lp = first[ids[:, 0]].unsqueeze(1)
                if width > 1:
                    logits = self.model(input_ids=ids[:, :-1], attention_mask=attention[:, :-1],
                                        cache=cache, use_cache=True).logits
                    rest = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
                    token_lp = torch.cat([token_lp, rest], dim=1)
                totals += [float(s) for s in (token_lp * mask).sum(dim=1)]
        return totals

    def generate(self, prompt: list[int], cfg: PredictionConfig, max_new_tokens: int, stop_ids: list[int],
                 pad_id: int, seed: int) -> list[Generated]:
        input_ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": stop_ids, "pad_token_id": pad_id,
                                  "return_dict_in_generate": True, "output_scores": True,
                                  "num_return_sequences": cfg.candidates}
        if cfg.decoding == "sample":
            kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or None)
        elif cfg.decoding == "beam":
            kwargs.update(do_sample=False, num_beams=cfg.candidates)
        else:
            kwargs.update(do_sample=False, num_beams=1)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        new = [row.tolist() for row in out.sequences[:, input_ids.shape[1]:]]
        if cfg.decoding == "beam" and getattr(out, "sequences_scores", None) is not None:
            means = [float(s) for s in out.sequences_scores]
        else:
            steps = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            means = [mean_logprob(row[: generated_length(ids, stop_ids)].float().tolist())
                     for ids, row in zip(new, steps)]
        return list(zip(new, means))

    def target_loss(self, ids: Sequence[int], labels: Sequence[int]) -> tuple[float, int]:
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).unsqueeze(0)
        labels = torch.as_tensor(labels, device=self.device).unsqueeze(0)
        count = int((labels[:, 1:] != -100).sum())
        if count == 0:
            return 0.0, 0
        with torch.no_grad():
            return float(self.model(input_ids=ids, labels=labels).loss) * count, count

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device),
                "parameters": sum(p.numel() for p in self.model.parameters())}


# ---------------------------------------------------------------- llama.cpp


class LlamaCppBackend:
    """A GGUF file the export stage wrote, in llama.cpp (its context: the model's trained positions)."""

    name = "llama_cpp"

    def __init__(self, model, file_type: str | None = None):
        self.model = model  # repo2model.export.backend.LlamaCppModel
        self.file_type = file_type
        self.max_positions = model.n_ctx

    def continuation_logprobs(self, prompt: list[int], continuations: list[list[int]], batch_size: int,
                              pad_id: int) -> list[float]:
        return self.model.continuation_logprobs(prompt, continuations)

    def generate(self, prompt: list[int], cfg: PredictionConfig, max_new_tokens: int, stop_ids: list[int],
                 pad_id: int, seed: int) -> list[Generated]:
        from repo2model.export.backend import Sampling

        if cfg.decoding == "beam":
            raise ValueError(BEAM_WITH_LLAMA_CPP)
        sampling = Sampling(sample=cfg.decoding == "sample", temperature=cfg.temperature, top_k=cfg.top_k,
                            top_p=cfg.top_p)
        rows = self.model.generate(prompt, max_new_tokens, stop_ids, cfg.candidates, sampling, seed)
        return [(ids, mean_logprob(logprobs)) for ids, logprobs in rows]

    def target_loss(self, ids: Sequence[int], labels: Sequence[int]) -> tuple[float, int]:
        ids, labels = [int(i) for i in ids], np.asarray([int(x) for x in labels])
        counted = labels[1:] != -100
        if not counted.any():
            return 0.0, 0
        logprobs = self.model.token_logprobs(ids, 1)  # log p(ids[i] | ids[:i]) for i >= 1
        return float(-logprobs[counted].sum()), int(counted.sum())

    def describe(self) -> dict:
        llm = self.model.llm
        return {"backend": self.name, "device": "gpu" if llm.model_params.n_gpu_layers else "cpu",
                "parameters": int(llm._model.n_params()), "gguf": str(self.model.path), "file_type": self.file_type}


# ---------------------------------------------------------------- loading


def load_language_model(model_dir: Path, cfg: PredictionConfig, device: str,
                        paths: ArtifactPaths | None = None) -> tuple[LanguageModelBackend, Any]:
    """(the backend `cfg.backend` names, the model folder's tokenizer)."""
    if cfg.backend == "llama_cpp":
        return load_llama_cpp(model_dir, cfg, device, paths)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device}: no CUDA GPU is available here; use --device cpu")
    model, tokenizer = load_trained_model(model_dir, device=device)
    return TorchBackend(model), tokenizer


def load_llama_cpp(model_dir: Path, cfg: PredictionConfig, device: str,
                   paths: ArtifactPaths | None) -> tuple[LlamaCppBackend, Any]:
    """The GGUF (predict.gguf, else the export's) in llama.cpp, refused when it was exported from another model
    than the folder's; the folder's tokenizer. `device` cuda offloads every layer (a CUDA build of llama.cpp)."""
    from transformers import AutoTokenizer

    from repo2model.export import packages
    from repo2model.export.backend import LlamaCppModel

    path = Path(cfg.gguf) if cfg.gguf is not None else exported_gguf(model_dir, paths)
    check_exported_from(path, model_dir)
    gpu = device.startswith("cuda")
    if gpu and not packages.llama_cpp().llama_supports_gpu_offload():
        raise UserError(f"device {device}: this llama-cpp-python was built without GPU support: reinstall it with "
                        'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python, '
                        "or use --device cpu")
    with damaged_folder_errors(model_dir):
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = LlamaCppModel(path, threads=cfg.num_threads, gpu_layers=-1 if gpu else 0)
    if model.n_vocab < len(tokenizer):
        model.close()
        raise UserError(f"{path}: {model.n_vocab} tokens, but the tokenizer of {model_dir} has {len(tokenizer)}: "
                        "a GGUF of another model; export this one (python pipeline.py --stage export)")
    return LlamaCppBackend(model, file_type_of(path)), tokenizer


def exported_gguf(model_dir: Path, paths: ArtifactPaths | None) -> Path:
    """The file the export stage's Modelfile loads: export/ beside the model folder, else <output_dir>/export
    (an update's model is staged in next/ while the export goes to the output folder)."""
    folders = [Path(model_dir).resolve().parent / "export"]
    if paths is not None:
        folders.append(Path(paths.output_dir).resolve() / "export")
    for folder in dict.fromkeys(folders):
        try:
            info = json.loads((folder / EXPORT_INFO).read_text(encoding="utf-8"))
            return folder / info["modelfile"]["gguf"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise UserError(f"{folders[-1]}: no exported model ({EXPORT_INFO}) for predict.backend llama_cpp: run python "
                    "pipeline.py --stage export (or set export.enabled: true), or set predict.gguf")


def check_exported_from(path: Path, model_dir: Path) -> None:
    """A GGUF whose export_info.json names another training run than the model folder's is refused: its scores
    would not be the model's the ranker and the tokenizer belong to."""
    try:
        exported = json.loads((path.parent / EXPORT_INFO).read_text(encoding="utf-8")).get("trained_at")
    except (OSError, ValueError, AttributeError):
        return  # a GGUF from elsewhere (predict.gguf): nothing to compare
    current = read_training_info(model_dir).get("trained_at")
    if exported and current and exported != current:
        raise UserError(f"{path}: exported from the model trained at {exported}, but {model_dir} holds the one "
                        f"trained at {current}: export it again (python pipeline.py --stage export)")


def file_type_of(path: Path) -> str | None:
    """f16 / q8_0 / q4_k_m from export_info.json beside the file (None for a GGUF from elsewhere)."""
    try:
        files = json.loads((path.parent / EXPORT_INFO).read_text(encoding="utf-8"))["files"]
        return next((t for t, f in files.items() if f.get("file") == path.name), None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
