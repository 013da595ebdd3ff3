"""The prediction settings: the `predict` config section, what a caller may change per request, the shared flags.

    PredictionConfig        the `predict` section (documented key by key in config.yaml): the model folder,
                            the backend (torch, or llama.cpp and the GGUF), the history in the prompt,
                            decoding, file ranking, the code context's budget
    with_options            the section with a request's `options` (OPTION_KEYS: what a caller of serve.py may set)
    add_decoding_arguments  the flags predict.py and serve.py share; config_from_args applies the given ones
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from repo2model.core.cli import apply_overrides
from repo2model.core.config import load_config

SECTION = "predict"
MAX_TASK_CHARS = 4000  # a task is a commit message, not a document
BEAM_WITH_LLAMA_CPP = "decoding: beam is not supported with backend llama_cpp (use greedy or sample, or backend torch)"


@dataclass
class PredictionConfig:
    """The `predict` section: the model folder, the language model's backend, the history in the prompt,
    decoding and file ranking."""

    model_dir: Path | None = None
    backend: Literal["torch", "llama_cpp"] = "torch"  # llama_cpp: the exported GGUF (repo2model.serving.backends)
    gguf: Path | None = None  # the GGUF llama_cpp loads (None: the export stage's, <output_dir>/export)
    history_commits: int = 8
    decoding: Literal["greedy", "sample", "beam"] = "greedy"
    num_candidates: int = 4
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    context_window: int | None = None
    max_files: int = 20
    device: str = "cpu"
    num_threads: int | None = None
    file_ranking: Literal["likelihood", "generation", "both"] = "both"
    rank_candidates: int = 200
    rank_score: Literal["sum", "mean"] = "sum"
    rank_batch_size: int = 32
    context_tokens: int = 2000  # the code context's budget (repo2model.retrieval.context); 0 = none

    def __post_init__(self):
        if self.backend not in ("torch", "llama_cpp"):
            raise ValueError("backend: must be torch or llama_cpp")
        if self.backend == "llama_cpp" and self.decoding == "beam":
            raise ValueError(BEAM_WITH_LLAMA_CPP)
        if self.file_ranking not in ("likelihood", "generation", "both"):
            raise ValueError("file_ranking: must be likelihood, generation or both")
        if self.rank_candidates < 1:
            raise ValueError("rank_candidates: must be >= 1")
        if self.rank_score not in ("sum", "mean"):
            raise ValueError("rank_score: must be sum or mean")
        if self.rank_batch_size < 1:
            raise ValueError("rank_batch_size: must be >= 1")
        if self.history_commits < 0:
            raise ValueError("history_commits: must be >= 0")
        if not 1 <= self.num_candidates <= 64:
            raise ValueError("num_candidates: must be between 1 and 64")
        if not 1 <= self.max_new_tokens <= 8192:
            raise ValueError("max_new_tokens: must be between 1 and 8192")
        if not 0.0 < self.temperature <= 10.0:
            raise ValueError("temperature: must be in (0, 10]")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p: must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k: must be >= 0 (0 = off)")
        if self.context_window is not None and self.context_window < 16:
            raise ValueError("context_window: must be >= 16 tokens")
        if self.max_files < 1:
            raise ValueError("max_files: must be >= 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads: must be >= 1 (or null)")
        if not 0 <= self.context_tokens <= 200_000:
            raise ValueError("context_tokens: must be between 0 and 200000")

    @property
    def candidates(self) -> int:
        return 1 if self.decoding == "greedy" else self.num_candidates


# Settings a caller may change per request (the service's `options`).
OPTION_KEYS = ("history_commits", "decoding", "num_candidates", "max_new_tokens", "temperature", "top_p", "top_k",
               "max_files", "file_ranking", "context_tokens")


def with_options(cfg: PredictionConfig, options: dict | None) -> PredictionConfig:
    """`cfg` with per-request `options`; a ValueError names the bad option."""
    if not options:
        return cfg
    if not isinstance(options, dict):
        raise ValueError("options: must be an object")
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"options.{unknown[0]}: unknown option (allowed: {', '.join(OPTION_KEYS)})")
    types = {f.name: f.type for f in dataclasses.fields(PredictionConfig)}
    for key, value in options.items():
        expected = types[key]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        }.get(expected, isinstance(value, str))
        if not ok:
            raise ValueError(f"options.{key}: expected {expected if expected in ('int', 'float') else 'a string'}")
    if "decoding" in options and options["decoding"] not in ("greedy", "sample", "beam"):
        raise ValueError("options.decoding: must be greedy, sample or beam")
    if "file_ranking" in options and options["file_ranking"] not in ("likelihood", "generation", "both"):
        raise ValueError("options.file_ranking: must be likelihood, generation or both")
    try:
        return dataclasses.replace(cfg, **options)
    except ValueError as exc:
        raise ValueError(f"options.{exc}") from None


def load_prediction_config(config_path: Path | None) -> PredictionConfig:
    """The `predict` section of a config file (its defaults without one)."""
    if config_path is None:
        return PredictionConfig()
    return load_config(config_path, {SECTION: PredictionConfig}, strict_sections=False)[SECTION]


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags predict.py and serve.py share: the model folder and the decoding settings."""
    parser.add_argument("--model", type=Path, help="the trained model folder (default: predict.model_dir, "
                                                   "else <output_dir>/model)")
    parser.add_argument("--history", type=int, dest="history_commits", help="override predict.history_commits")
    parser.add_argument("--decoding", choices=["greedy", "sample", "beam"], help="override predict.decoding")
    parser.add_argument("--num-candidates", type=int, help="override predict.num_candidates")
    parser.add_argument("--max-new-tokens", type=int, help="override predict.max_new_tokens")
    parser.add_argument("--temperature", type=float, help="override predict.temperature")
    parser.add_argument("--top-p", type=float, help="override predict.top_p")
    parser.add_argument("--top-k", type=int, help="override predict.top_k")
    parser.add_argument("--device", help="override predict.device (cpu, cuda, cuda:0)")
    parser.add_argument("--backend", choices=["torch", "llama_cpp"], help="override predict.backend")
    parser.add_argument("--gguf", type=Path, help="override predict.gguf (the GGUF file of --backend llama_cpp)")
    parser.add_argument("--threads", type=int, dest="num_threads", help="override predict.num_threads")
    parser.add_argument("--file-ranking", choices=["likelihood", "generation", "both"],
                        help="override predict.file_ranking")
    parser.add_argument("--rank-candidates", type=int, help="override predict.rank_candidates")


def config_from_args(cfg: PredictionConfig, args: argparse.Namespace) -> PredictionConfig:
    """`cfg` with the flags of add_decoding_arguments that were given."""
    overrides = {name: getattr(args, name) for name in
                 ("history_commits", "decoding", "num_candidates", "max_new_tokens", "temperature", "top_p", "top_k",
                  "device", "num_threads", "file_ranking", "rank_candidates", "backend")
                 if getattr(args, name, None) is not None}
    if args.model is not None:
        overrides["model_dir"] = args.model.resolve()
    if getattr(args, "gguf", None) is not None:
        overrides["gguf"] = args.gguf.resolve()
    return apply_overrides(cfg, SECTION, overrides)
