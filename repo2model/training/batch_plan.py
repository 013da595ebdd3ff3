"""How the sequences of one optimizer step are split into micro-batches, accumulated, over processes: the largest
micro-batch whose memory estimate (memory.py) fits vram_budget_gb on a GPU, else micro_batch_size."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from repo2model.core.errors import UserError
from repo2model.training.hardware import Hardware
from repo2model.training.memory import (
    MemoryEstimate,
    ModelShape,
    TrainingSetup,
    estimate,
    largest_micro_batch,
    setting_to_lower,
)
from repo2model.training.model import (
    check_tokenizer_extends_base,
    count_new_tokens,
    load_base_config,
    scratch_config,
)

if TYPE_CHECKING:  # annotations only: Config belongs to the stage, which imports this package
    from repo2model.stages.train_model import Config

log = logging.getLogger("train_model")


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How the sequences of one optimizer step are split: micro-batches of rows, accumulated, over processes."""

    micro_batch: int  # rows per forward pass
    accumulation: int  # forward passes per optimizer step and process
    world_size: int
    estimate: MemoryEstimate | None  # repo2model/training/memory.py for this micro-batch; None for a non-LLaMA shape

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    @property
    def estimate_gib(self) -> float:
        return self.estimate.total_gib if self.estimate else float("nan")


def describe_model(cfg: Config, tokenizer, tok_dir: Path, seq_len: int, hw: Hardware) -> tuple[ModelShape | None, TrainingSetup]:
    """The model's shape for the memory estimate, read from config only (nothing loaded yet)."""
    if cfg.mode == "scratch":
        config = scratch_config(cfg, tokenizer, seq_len)
        new_tokens = 0
    else:
        config = load_base_config(cfg.base_model)
        check_tokenizer_extends_base(tok_dir)
        new_tokens = count_new_tokens(tok_dir, tokenizer, config.vocab_size)
    try:
        shape = dataclasses.replace(ModelShape.from_config(config), vocab_size=max(len(tokenizer), config.vocab_size))
    except AttributeError:
        shape = None
    setup = TrainingSetup(
        mode=cfg.mode, seq_len=seq_len, micro_batch=cfg.micro_batch_size,
        compute_bytes=4 if hw.precision == "fp32" else 2, lora_rank=cfg.lora_rank, lora_dropout=cfg.lora_dropout,
        lora_targets=tuple(cfg.lora_target_modules), new_tokens=new_tokens if cfg.train_new_tokens else 0,
        optimizer=cfg.optimizer, gradient_checkpointing=cfg.gradient_checkpointing,
        fp32_embeddings=cfg.mode == "qlora" and cfg.prepare_kbit_training,
    )
    return shape, setup


def plan_batches(cfg: Config, shape: ModelShape | None, setup: TrainingSetup, hw: Hardware) -> BatchPlan:
    """Micro-batch and gradient accumulation for the effective batch; the memory estimate, printed."""
    per_rank = max(1, cfg.effective_batch_size // hw.world_size)
    micro = min(cfg.micro_batch_size, per_rank)
    if cfg.vram_budget_gb is not None and shape is not None:
        if hw.device.type == "cuda":
            micro = largest_micro_batch(shape, setup, cfg.vram_budget_gb, per_rank)
            if micro == 0:
                raise UserError("train_model.vram_budget_gb: " + setting_to_lower(shape, setup, cfg.vram_budget_gb))
        else:
            log.warning("train_model: no GPU: vram_budget_gb is not applied (micro_batch_size %d is used)", micro)
    accumulation = math.ceil(per_rank / micro)
    est = estimate(shape, dataclasses.replace(setup, micro_batch=micro)) if shape else None
    log.info("train_model: micro-batch %d x accumulation %d x %d process(es) = %d sequences of %d tokens per step; "
             "memory estimate %s", micro, accumulation, hw.world_size, micro * accumulation * hw.world_size,
             setup.seq_len, est.describe() if est else "n/a (not a LLaMA-shaped config)")
    return BatchPlan(micro, accumulation, hw.world_size, est)
