"""Stage `export`: the trained model as GGUF files for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile.

Reads
    <output_dir>/model/        train_model's folder: a scratch model, a LoRA or QLoRA adapter (merged into its
                               base here; QLoRA into the 4-bit base dequantized), or merged/, with its tokenizer
Writes <output_dir>/export/
    <name>-f16.gguf            the weights at f16 (norms f32), the vocabulary with its token types and special ids
    <name>-q8_0.gguf           quantized from the f16 file by llama.cpp's own quantizer
    <name>-q4_k_m.gguf
    Modelfile                  Ollama: FROM the `modelfile` type's file, raw template, stop at <COMMIT_END>, num_ctx
    export_info.json           what was exported: the source, each file's size and tensor types, the vocabulary,
                               the context length, seconds per step

The library is repo2model/export/ (its __init__ lists the modules). It needs the optional packages of
requirements-export.txt: `pip install -r requirements-export.txt` (llama-cpp-python builds from source).

    python export.py --config config.yaml
    python export.py --model outputs/model --types f16 q4_k_m
    python pipeline.py --config config.yaml --stage export
    ollama create my-repo -f outputs/export/Modelfile

Off by default in the pipeline: a whole run leaves it out unless `enabled: true`; `--stage export` runs it
regardless. It runs right after train_model, so that with `predict.backend: llama_cpp` the ranker's language-model
features and the evaluation score the new model's GGUF.

Config keys (section `export`):
    enabled          true: a whole pipeline run exports the model (false: only --stage export or export.py do)
    model_dir        the model folder (null: <output_dir>/model)
    output_dir       where the files go (null: <output_dir>/export)
    name             the files' names, <name>-<type>.gguf, and the GGUF's general.name (model)
    types            the files written, from f16, q8_0, q4_k_m ([f16, q8_0, q4_k_m]); the f16 file is the
                     quantizer's input and is removed at the end when not listed
    modelfile        the type the Modelfile loads (q4_k_m; must be in types)
    context_length   the Modelfile's num_ctx (null: the sequence length the model was trained on, else its positions)
    merge_dtype      float16 | float32: the precision an adapter is merged at (float16: a 7B model in ~14 GB of
                     memory instead of ~28 GB; the GGUF is f16 either way)
    threads          threads of llama.cpp's quantizer (null: every core)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from repo2model.core.artifacts import ensure_folder, write_json
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.export import packages
from repo2model.export.backend import LlamaCppModel
from repo2model.export.gguf_file import write_gguf
from repo2model.export.merge import load_for_export
from repo2model.export.modelfile import write_modelfile
from repo2model.export.quantize import TYPES, quantize, tensor_types
from repo2model.export.vocabulary import Vocabulary, read_vocabulary
from repo2model.training.models import read_training_info, trained_length

log = logging.getLogger("export")

SECTION = "export"
CODE = ("core", "export", "language", "training")  # the packages it runs (its fingerprint covers them)
DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclasses.dataclass
class Config:
    enabled: bool = False
    model_dir: Path | None = None
    output_dir: Path | None = None
    name: str = "model"
    types: list[str] = dataclasses.field(default_factory=lambda: list(TYPES))
    modelfile: str = "q4_k_m"
    context_length: int | None = None
    merge_dtype: Literal["float16", "float32"] = "float16"
    threads: int | None = None

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in TYPES]
        if unknown or not self.types:
            raise ValueError(f"types: {unknown or 'empty'}: choose from {', '.join(TYPES)}")
        if self.modelfile not in self.types:
            raise ValueError(f"modelfile: {self.modelfile!r} is not among types {self.types}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name: {self.name!r}: a plain file name is needed")
        if self.context_length is not None and self.context_length < 1:
            raise ValueError(f"context_length: {self.context_length}: must be positive")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: {self.threads}: must be positive")


def model_folder(cfg: Config, paths: ArtifactPaths) -> Path:
    return cfg.model_dir or paths.model_dir


def export_folder(cfg: Config, paths: ArtifactPaths) -> Path:
    return cfg.output_dir or paths.output_dir / "export"


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    """The model folder, and an adapter's base when it is a local folder."""
    inputs = [model_folder(cfg, paths)]
    base = read_training_info(model_folder(cfg, paths)).get("base_model")
    if isinstance(base, str) and Path(base).is_dir():
        inputs.append(Path(base))
    return inputs


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    folder = export_folder(cfg, paths)
    return [folder / f"{cfg.name}-{t}.gguf" for t in cfg.types] + [folder / "Modelfile", folder / "export_info.json"]


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42) -> dict:
    """Export the model folder to GGUF files, the Modelfile and export_info.json; returns export_info."""
    packages.gguf()  # both packages checked before minutes of merging
    packages.llama_cpp()
    out = ensure_folder(export_folder(cfg, paths))
    seconds: dict[str, float] = {}
    started = time.monotonic()
    with f16_path(cfg, out) as f16:
        kind, vocabulary, positions = write_f16(cfg, model_folder(cfg, paths), f16, seconds)
        written = {"f16": f16, **write_quantized(cfg, f16, out, seconds)}
        files = {file_type: written[file_type] for file_type in cfg.types}
        check_vocabulary(files[cfg.modelfile], vocabulary)
    context = cfg.context_length or trained_length(model_folder(cfg, paths)) or positions
    write_modelfile(out, files[cfg.modelfile].name, context)
    info = export_info(cfg, paths, kind, files, vocabulary, context, seconds)
    write_json(out / "export_info.json", info)
    log.info("export: %s in %.0fs -> %s (Modelfile: %s, num_ctx %d)",
             ", ".join(f"{t} {info['files'][t]['bytes'] / 2**20:.1f} MiB" for t in cfg.types),
             time.monotonic() - started, out, files[cfg.modelfile].name, context)
    return info


@contextlib.contextmanager
def f16_path(cfg: Config, out: Path) -> Iterator[Path]:
    """Where the f16 file goes: its own name when `types` lists it, else a temporary beside the outputs (the
    quantizer's input), removed at the end; an f16 file already there is left as it is."""
    if "f16" in cfg.types:
        yield out / f"{cfg.name}-f16.gguf"
        return
    handle, name = tempfile.mkstemp(prefix=f".{cfg.name}-f16.gguf.", suffix=".tmp", dir=out)
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def write_f16(cfg: Config, model_dir: Path, path: Path, seconds: dict[str, float]) -> tuple[str, Vocabulary, int]:
    """The model folder as one full model (an adapter merged), written at f16 to `path` with its vocabulary.
    Returns (the source's kind, the vocabulary, the model's positions); the torch weights are freed on return,
    before llama.cpp reads the file (a 7B model twice would not fit)."""
    started = time.monotonic()
    source = load_for_export(model_dir, DTYPES[cfg.merge_dtype])
    seconds["load_and_merge"] = time.monotonic() - started
    log.info("export: %s model from %s", source.kind, source.model_dir)
    started = time.monotonic()
    vocabulary = read_vocabulary(source.tokenizer, source.model.get_input_embeddings().weight.shape[0])
    write_gguf(source.model, vocabulary, path, cfg.name)
    seconds["f16"] = time.monotonic() - started
    kind, positions = source.kind, int(source.model.config.max_position_embeddings)
    del source
    gc.collect()
    return kind, vocabulary, positions


def write_quantized(cfg: Config, f16: Path, out: Path, seconds: dict[str, float]) -> dict[str, Path]:
    files = {}
    for file_type in (t for t in cfg.types if t != "f16"):
        started = time.monotonic()
        files[file_type] = quantize(f16, out / f"{cfg.name}-{file_type}.gguf", file_type, cfg.threads)
        seconds[file_type] = time.monotonic() - started
    return files


def check_vocabulary(path: Path, vocabulary: Vocabulary) -> None:
    """llama.cpp reads back the vocabulary we wrote: its size, and each special and added token's text by id."""
    with LlamaCppModel(path, context_length=64) as model:
        if model.n_vocab != len(vocabulary.tokens):
            raise UserError(f"{path}: llama.cpp reads {model.n_vocab} tokens, {len(vocabulary.tokens)} were written")
        wrong = [(i, text, model.token_text(i)) for i, (text, _) in vocabulary.added().items()
                 if model.token_text(i) != text]
    if wrong:
        i, text, read = wrong[0]
        raise UserError(f"{path}: llama.cpp reads token {i} as {read!r}, {text!r} was written "
                        f"({len(wrong)} tokens differ)")


def export_info(cfg: Config, paths: ArtifactPaths, kind: str, files: dict[str, Path], vocabulary: Vocabulary,
                context: int, seconds: dict[str, float]) -> dict:
    training = read_training_info(model_folder(cfg, paths))
    return {
        "model_dir": str(model_folder(cfg, paths)),
        "mode": kind,  # scratch, lora, qlora (merged here), or merged (a merged/ folder exported as it is)
        "base_model": training.get("base_model"),
        # the training run exported: prediction with backend llama_cpp refuses a GGUF of another run
        "trained_at": training.get("trained_at"),
        "last_commit": training.get("last_commit"),
        "merge_dtype": cfg.merge_dtype if kind in ("lora", "qlora") else None,
        "files": {t: {"file": files[t].name, "bytes": files[t].stat().st_size, "tensor_types": tensor_types(files[t])}
                  for t in cfg.types},
        "modelfile": {"file": "Modelfile", "gguf": files[cfg.modelfile].name, "num_ctx": context},
        "vocabulary": {"model": vocabulary.model, "pre": vocabulary.pre, "size": len(vocabulary.tokens),
                       "special": vocabulary.special, "added": len(vocabulary.added())},
        "seconds": {step: round(value, 2) for step, value in seconds.items()},
    }


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--model", type=Path, dest="model_dir", help="override export.model_dir (a model folder)")
    parser.add_argument("--out", type=Path, dest="export_dir", help="override export.output_dir")
    parser.add_argument("--types", nargs="+", choices=TYPES, help="override export.types")
    parser.add_argument("--modelfile", choices=TYPES, help="override export.modelfile")
    parser.add_argument("--name", help="override export.name")
    parser.add_argument("--context-length", type=int, help="override export.context_length (the Modelfile's num_ctx)")
    parser.add_argument("--merge-dtype", choices=sorted(DTYPES), help="override export.merge_dtype")
    parser.add_argument("--threads", type=int, help="override export.threads")
    args = parser.parse_args(argv)
    cfg, pipeline, paths = load_stage(args, SECTION, Config)
    types = args.types
    modelfile = args.modelfile or (cfg.modelfile if types is None or cfg.modelfile in types else types[-1])
    cfg = apply_overrides(cfg, SECTION, {
        "model_dir": args.model_dir.resolve() if args.model_dir else None,
        "output_dir": args.export_dir.resolve() if args.export_dir else None,
        "types": types, "modelfile": modelfile, "name": args.name, "context_length": args.context_length,
        "merge_dtype": args.merge_dtype, "threads": args.threads})
    run(cfg, paths, seed=pipeline.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
