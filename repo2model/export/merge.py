"""The model folder train_model wrote -> one full LLaMA model in memory, ready to be written as GGUF.

    scratch, or merged/   loaded as saved (fp32)
    LoRA adapter          its base (training_info.json's base_model) in `dtype`, the adapter merged in
    QLoRA adapter         its base quantized to 4-bit NF4 as training saw it, dequantized to `dtype`, then the
                          adapter merged in. The adapter learnt to correct the 4-bit weights: merged into the
                          original base it makes a model it was never trained with; merged into the 4-bit weights
                          (peft's merge on a Linear4bit layer) the sum is quantized again, which rounds most of
                          the adapter's small update away. tests/test_export.py measures both against this.

`dtype` float16 holds a 7B model in about 14 GB of memory (float32: 28 GB); the GGUF file is f16 either way.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from repo2model.core.artifacts import require
from repo2model.core.errors import UserError
from repo2model.training.models import (
    adapter_class,
    damaged_folder_errors,
    load_base_for_adapter,
    load_full_model,
    read_training_info,
)

log = logging.getLogger("export")


@dataclasses.dataclass
class ExportSource:
    """A full model and its tokenizer, with what they came from."""

    model: Any  # LlamaForCausalLM, eval mode, on the CPU
    tokenizer: Any
    kind: str  # scratch | merged | lora | qlora
    info: dict  # training_info.json ({} when absent)
    model_dir: Path


def load_for_export(model_dir: Path, dtype: torch.dtype = torch.float16) -> ExportSource:
    """The model folder as one full model: an adapter is merged into its base (module docstring)."""
    model_dir = require(Path(model_dir), "train_model")
    adapter = (model_dir / "adapter_config.json").is_file()
    if not adapter and not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model folder written by train_model (no config.json or "
                        "adapter_config.json)")
    info = read_training_info(model_dir)
    with damaged_folder_errors(model_dir):
        if adapter:
            kind = "qlora" if info.get("mode") == "qlora" else "lora"
            model, tokenizer = (merge_qlora if kind == "qlora" else merge_lora)(model_dir, dtype)
        else:
            from transformers import AutoTokenizer

            kind = "merged" if info.get("merged") else "scratch"
            if kind == "merged" and info.get("mode") == "qlora":
                log.warning("export: %s was merged into the unquantized base, not the 4-bit base the QLoRA adapter "
                            "was trained on; export the adapter folder (%s) for the model training saw",
                            model_dir, model_dir.parent)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = load_full_model(model_dir)
    if getattr(model.config, "model_type", None) != "llama":
        raise UserError(f"{model_dir}: a {model.config.model_type!r} model; export writes LLaMA-architecture models "
                        "(what train_model trains from scratch, and LLaMA bases)")
    model.eval()
    return ExportSource(model, tokenizer, kind, info, model_dir)


def merge_lora(model_dir: Path, dtype: torch.dtype):
    """(the adapter merged into its unquantized base, tokenizer)."""
    base, tokenizer = load_base_for_adapter(model_dir, "cpu", dtype)
    return adapter_class().from_pretrained(base, str(model_dir)).merge_and_unload(), tokenizer


def merge_qlora(model_dir: Path, dtype: torch.dtype):
    """(the adapter merged into its NF4 base dequantized to `dtype`, tokenizer)."""
    try:
        import bitsandbytes  # noqa: F401  (the NF4 base as training saw it: transformers quantizes with it)
    except ImportError:
        raise UserError(f"{model_dir}: a QLoRA adapter is merged into its 4-bit base, which needs bitsandbytes: "
                        'pip install -e ".[gpu]"') from None
    base, tokenizer = load_base_for_adapter(model_dir, "cpu", torch.float32, quantize=True)
    base = dequantized(base, dtype)
    return adapter_class().from_pretrained(base, str(model_dir)).merge_and_unload(), tokenizer


def dequantized(model: Any, dtype: torch.dtype) -> Any:
    """The 4-bit model with each Linear4bit replaced by a Linear holding its dequantized weights (transformers'
    bitsandbytes dequantization, meant for merging QLoRA adapters)."""
    quiet = logging.getLogger("transformers.integrations.bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "dequantized in float32 and casted to ...": the point, said once in our log
    try:
        model = model.dequantize(dtype=dtype)
    finally:
        quiet.setLevel(level)
    return model
