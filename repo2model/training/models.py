"""Model folders: load, merge (scratch, LoRA, QLoRA), and what prediction reads beside the weights.

Reads a model folder train_model wrote:
    config.json + safetensors      a full model (scratch, or `merged/` inside an adapter folder)
    adapter_config.json + weights  a LoRA/QLoRA adapter; its base model (local folder or hub id) is recorded in
                                   training_info.json (`base_model`) or the adapter's own config
    training_info.json             written last by train_model: mode, base_model, seq_len, ... (INFO_FILE)
    tokenizer files, commit_language.json   beside the weights (or in the pipeline's tokenizer folder)
Writes
    <model>/merged/ (merge_adapter): the adapter merged into its base, full safetensors + tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Iterator

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from repo2model.core.artifacts import atomic_path, read_json, require
from repo2model.core.errors import UserError, first_line
from repo2model.core.paths import INFO_FILE, ArtifactPaths

log = logging.getLogger("train_model")

# What transformers, tokenizers, safetensors, peft and json raise on a damaged folder: a cut safetensors file
# (SafetensorError), a config.json that is not JSON (OSError) or not an object (TypeError), an unknown
# architecture (ValueError), a field of the wrong type (StrictDataclassError), weights that do not fit the
# config (RuntimeError), a cut tokenizer.json (JSONDecodeError, a ValueError).
DAMAGED_FOLDER_ERRORS = (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError, StrictDataclassError)


def load_base_for_adapter(model_dir: Path, device: str, dtype: torch.dtype, quantize: bool = False):
    """The adapter's base model (resized to the saved tokenizer) and that tokenizer.

    quantize: load the base in 4-bit NF4 as QLoRA trained it (a 7B base then fits an 8 GB GPU).
    """
    info = read_json(model_dir / INFO_FILE) if (model_dir / INFO_FILE).is_file() else {}
    adapter = read_json(model_dir / "adapter_config.json")
    base = info.get("base_model") or adapter.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{model_dir}: the adapter does not record its base model: add base_model to {INFO_FILE}")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    kwargs: dict = {"dtype": dtype}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": torch.device(device).index or 0} if device.startswith("cuda") else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except DAMAGED_FOLDER_ERRORS as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        raise UserError(f"{model_dir}: its base model {base!r} cannot be loaded ({first_line(exc)})") from None
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return (model if quantize else model.to(device)), tokenizer


def load_trained_model(model_dir: Path, device: str = "cpu"):
    """(model, tokenizer) from a model folder train_model wrote: scratch, LoRA/QLoRA adapter or merged; eval mode.

    An adapter is applied over its base model (path or hub id recorded in training_info.json):
    on the CPU unquantised in fp32; on a GPU in bf16/fp16, and for a QLoRA adapter in 4-bit NF4 as
    it was trained.
    """
    model_dir = require(Path(model_dir), "train_model")
    adapter = (model_dir / "adapter_config.json").is_file()
    if not adapter and not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model folder written by train_model (no config.json or adapter_config.json)")
    with damaged_folder_errors(model_dir):
        if adapter:
            dtype, quantize = torch.float32, False
            if device.startswith("cuda"):
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                info = read_json(model_dir / INFO_FILE) if (model_dir / INFO_FILE).is_file() else {}
                quantize = info.get("mode") == "qlora"
            base, tokenizer = load_base_for_adapter(model_dir, device, dtype, quantize)
            model = adapter_class().from_pretrained(base, str(model_dir))
            if not quantize:
                model = model.to(device)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = load_full_model(model_dir).to(device)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def damaged_folder_errors(model_dir: Path) -> Iterator[None]:
    """A library's error while loading `model_dir` becomes one line naming the folder and the fix."""
    try:
        yield
    except DAMAGED_FOLDER_ERRORS as exc:
        if isinstance(exc, torch.OutOfMemoryError):  # a RuntimeError, but the folder is fine
            raise
        raise UserError(f"{model_dir}: cannot load the model ({type(exc).__name__}: {first_line(exc)}): the folder is "
                        "damaged or incomplete; retrain it (python pipeline.py --stage train_model) or restore it "
                        "from a backup") from None


def load_full_model(model_dir: Path):
    """A full model (scratch or merged) whose safetensors must hold every tensor of config.json's shape: a tensor
    missing or of another shape (a weights file from another run) is a UserError, not a half-random model."""
    with without_load_report():  # its table of keys would bury the one line below
        model, info = AutoModelForCausalLM.from_pretrained(str(model_dir), output_loading_info=True,
                                                           ignore_mismatched_sizes=True)
    missing, mismatched = sorted(info["missing_keys"]), sorted(info["mismatched_keys"])
    if missing:
        raise UserError(f"{model_dir}: the weights lack {len(missing)} of the model's tensors (e.g. {missing[0]}): "
                        "the folder is damaged or incomplete; retrain it (python pipeline.py --stage train_model)")
    if mismatched:
        key, saved, expected = mismatched[0]
        raise UserError(f"{model_dir}: the weights do not fit config.json ({len(mismatched)} tensors, e.g. {key}: "
                        f"{tuple(saved)} saved, {tuple(expected)} expected): config.json and model.safetensors come "
                        "from different runs; retrain it (python pipeline.py --stage train_model)")
    if info["unexpected_keys"]:
        log.warning("%s: %d tensors in the weights that the model does not use (ignored)", model_dir,
                    len(info["unexpected_keys"]))
    return model


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def without_load_report() -> Iterator[None]:
    """transformers' loading report (a table of missing/mismatched keys) left out: load_full_model says it in a line."""
    logger = logging.getLogger("transformers.modeling_utils")
    quiet = _DropLoadReport()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def merge_adapter(model_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the adapter merged into its (unquantised) base as full safetensors weights + tokenizer in `out_dir`."""
    base, tokenizer = load_base_for_adapter(Path(model_dir), "cpu", dtype)
    merged = adapter_class().from_pretrained(base, str(model_dir)).merge_and_unload()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        info = read_json(Path(model_dir) / INFO_FILE) if (Path(model_dir) / INFO_FILE).is_file() else {}
        (tmp / INFO_FILE).write_text(json.dumps({**info, "merged": True}, indent=2) + "\n", encoding="utf-8")
    log.info("train_model: merged weights written to %s", out_dir)
    return out_dir


def adapter_class():
    """peft's PeftModel, imported on first use: importing peft loads bitsandbytes (seconds of start-up, and a
    kernels warning on the CPU) that a full model folder never needs."""
    from peft import PeftModel

    return PeftModel


def read_training_info(model_dir: Path) -> dict:
    """The model folder's training_info.json (for merged weights: the adapter folder's around them); {} when it is
    absent or unreadable (a model saved by an older version, or by hand)."""
    for folder in (Path(model_dir), Path(model_dir).parent):
        info = folder / INFO_FILE
        if info.is_file():
            try:
                data = json.loads(info.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def trained_length(model_dir: Path) -> int | None:
    """`seq_len` from the model folder's training_info.json (train_model writes it), if there."""
    value = read_training_info(model_dir).get("seq_len")
    return int(value) if isinstance(value, int) and value > 0 else None


def language_dir(model_dir: Path, paths: ArtifactPaths | None) -> Path:
    """Where the commit language lives: beside the model, else the pipeline's tokenizer folder."""
    candidates = [Path(model_dir), Path(model_dir).parent]  # model/merged: the language is in model/
    if paths is not None:
        candidates.append(paths.tokenizer_dir)
    candidates.append(Path(model_dir).parent / "tokenizer")
    for folder in candidates:
        if (folder / "commit_language.json").is_file():
            return folder
    raise UserError(f"{model_dir}: no commit_language.json beside the model or in the tokenizer folder: "
                    "run the tokenizer stage (python pipeline.py --stage tokenizer)")
