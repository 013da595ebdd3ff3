"""The optimizer (AdamW, or bitsandbytes' 8-bit and paged 8-bit AdamW) and its schedule: linear warm-up, cosine
decay, and the number of steps a run takes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from repo2model.training.hardware import Hardware

if TYPE_CHECKING:  # annotations only: Config belongs to the stage, which imports this package
    from repo2model.stages.train_model import Config


def build_optimizer(cfg: Config, trainable: list, hw: Hardware):
    decay = [p for _, p in trainable if p.ndim >= 2]
    no_decay = [p for _, p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    kwargs = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2)}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    # Imported here, not at the top: bitsandbytes ships CUDA kernels and may not install everywhere, and only
    # qlora and the 8-bit optimizers need it (check_packages refuses those in one line when it is missing).
    import bitsandbytes as bnb

    if cfg.optimizer == "paged_adamw_8bit":
        return bnb.optim.PagedAdamW8bit(groups, **kwargs)
    return bnb.optim.AdamW8bit(groups, **kwargs)


def learning_rate(cfg: Config, step: int, total_steps: int) -> float:
    """Linear warm-up over warmup_steps, then cosine decay to min_lr_ratio * learning_rate at total_steps."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    floor = cfg.min_lr_ratio
    return cfg.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def total_steps(cfg: Config, n_rows: int, global_batch: int) -> int:
    """max_steps, or fewer: max_epochs passes over the training rows (a row holds whole examples, so a pass over
    the rows is one over the examples)."""
    steps = cfg.max_steps
    if cfg.max_epochs is not None:
        steps = min(steps, max(1, math.ceil(cfg.max_epochs * n_rows / global_batch)))
    return steps
