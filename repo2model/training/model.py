"""The model to train: a LLaMA from scratch, or a base model (16-bit, or 4-bit NF4 for QLoRA) with its embeddings
resized to the extended tokenizer and a LoRA adapter (plus the new token rows); activation checkpointing.

Not to be confused with models.py, which loads the model folders a run wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from repo2model.core.errors import UserError, first_line
from repo2model.language.commit_language import CommitLanguage
from repo2model.training.hardware import Hardware

if TYPE_CHECKING:  # annotations only: Config belongs to the stage, which imports this package
    from repo2model.stages.train_model import Config

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def scratch_config(cfg: Config, tokenizer, seq_len: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=max(seq_len, 2048),
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def load_base_config(base_model: str):
    try:
        return AutoConfig.from_pretrained(resolve_base(base_model))
    except OSError as exc:
        raise UserError(f"train_model.base_model: cannot load {base_model!r} ({first_line(exc)}): give a "
                        "local folder with config.json and weights, or a hub id reachable from here") from None


def resolve_base(base_model: str) -> str:
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.exists() else base_model


def check_tokenizer_extends_base(tok_dir: Path) -> None:
    """LoRA needs the base model's own tokenizer (extended); a tokenizer trained here numbers tokens differently."""
    if CommitLanguage.load(tok_dir).tokenizer_info.get("mode") == "train":
        raise UserError(f"{tok_dir}: this tokenizer was trained from scratch; train_model.mode lora/qlora "
                        "needs the base model's tokenizer extended: set tokenizer.mode: extend and "
                        "tokenizer.base_tokenizer to the base model, then rerun the tokenizer stage")


def count_new_tokens(tok_dir: Path, tokenizer, base_vocab: int) -> int:
    """Tokens the tokenizer stage added to the base tokenizer (its commit language records them), else the rows
    beyond the base's."""
    added = CommitLanguage.load(tok_dir).tokenizer_info.get("added_tokens")
    return added if isinstance(added, int) else max(0, len(tokenizer) - base_vocab)


def build_model(cfg: Config, tokenizer, tok_dir: Path, seq_len: int, hw: Hardware):
    """The model to train, on its device, with only the parameters to train requiring gradients."""
    if cfg.mode == "scratch":
        model = LlamaForCausalLM(scratch_config(cfg, tokenizer, seq_len)).to(hw.device)
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)
        return model, []
    return build_adapter_model(cfg, tokenizer, tok_dir, hw)


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing (named activation_checkpointing_enable since transformers 5.x)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_adapter_model(cfg: Config, tokenizer, tok_dir: Path, hw: Hardware):
    # Frozen weights in the compute dtype; on the CPU fp32 unless bf16 autocast is in use.
    dtype = hw.compute_dtype
    kwargs: dict = {"dtype": dtype}
    if cfg.mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if hw.device.type == "cuda":  # load straight onto the GPU, not through host memory
        kwargs["device_map"] = {"": hw.device.index}
    elif cfg.mode == "qlora":
        kwargs["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(resolve_base(cfg.base_model), **kwargs)
    base_vocab = model.get_input_embeddings().weight.shape[0]
    n_new = count_new_tokens(tok_dir, tokenizer, base_vocab)
    if len(tokenizer) > base_vocab:
        model.resize_token_embeddings(len(tokenizer))
    new_ids = list(range(len(tokenizer) - n_new, len(tokenizer))) if n_new else []
    if cfg.mode != "qlora":
        model.to(hw.device)
    if cfg.mode == "qlora" and cfg.prepare_kbit_training:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        enable_checkpointing(model)
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need an input with grad
    token_indices = None
    if cfg.train_new_tokens and new_ids:
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        token_indices = {"embed_tokens": new_ids} if tied else {"embed_tokens": new_ids, "lm_head": new_ids}
    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules), trainable_token_indices=token_indices, task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    # fp16 loss scaling needs fp32 trained parameters; fp32 masters are better for bf16 too.
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model, new_ids
