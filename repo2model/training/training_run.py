"""`TrainingRun`: everything fixed for one run (settings, hardware, data, batch plan, model, optimizer), and
`setup`, which builds it in that order."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from repo2model.core.paths import ArtifactPaths
from repo2model.training.batch_plan import BatchPlan, describe_model, plan_batches
from repo2model.training.checkpoints import run_fingerprint
from repo2model.training.data import check_vocab, choose_seq_len, find_tokenizer, load_data
from repo2model.training.hardware import Hardware
from repo2model.training.model import build_model
from repo2model.training.optimizer import build_optimizer, total_steps
from repo2model.training.packing import TrainingData, pack_data, padding_share
from repo2model.training.warm_start import WarmStart, check_warm_start, load_warm_weights

if TYPE_CHECKING:  # annotations only: Config belongs to the stage, which imports this package
    from repo2model.stages.train_model import Config

log = logging.getLogger("train_model")


@dataclasses.dataclass
class TrainingRun:
    """Everything fixed for one run, built by `setup`; `train_step` and `train` read it."""

    cfg: Config
    hw: Hardware
    paths: ArtifactPaths
    seed: int
    tokenizer: object
    tok_dir: Path
    seq_len: int
    data: TrainingData
    plan: BatchPlan
    model: torch.nn.Module
    forward_model: torch.nn.Module  # the model, wrapped in DDP over several processes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16: dynamic loss scaling
    new_token_ids: list[int]
    total_steps: int
    fingerprint: str
    warm: WarmStart | None = None  # the model folder this run continues
    order_cache: dict = dataclasses.field(default_factory=dict)  # the current epoch's micro-batches

    @property
    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def setup(cfg: Config, paths: ArtifactPaths, hw: Hardware, seed: int, tokenizer_dir: Path | None = None,
          warm: WarmStart | None = None) -> TrainingRun:
    """Data, tokenizer, batch plan (and memory estimate), model, optimizer: everything `train_step` needs.

    warm: a model folder to continue from (read_warm_start): its weights replace the fresh ones.
    """
    examples = load_data(paths)
    tokenizer, tok_dir = find_tokenizer(examples["train"], paths, tokenizer_dir)
    check_vocab(examples, tokenizer)
    seq_len = choose_seq_len(cfg, examples["train"])
    if warm is not None:
        check_warm_start(warm, cfg, tokenizer, seq_len)
    shape, memory_setup = describe_model(cfg, tokenizer, tok_dir, seq_len, hw)
    plan = plan_batches(cfg, shape, memory_setup, hw)
    data = pack_data(cfg, examples, seq_len)
    log.info("train_model: %d train examples packed into %d rows of %d tokens (padding waste %.1f%%)",
             len(data.train.examples), len(data.train.rows), seq_len,
             100 * padding_share(data.train.lengths, plan.micro_batch, seed))

    steps = total_steps(cfg, len(data.train.rows), plan.global_batch)
    torch.manual_seed(seed)
    model, new_token_ids = build_model(cfg, tokenizer, tok_dir, seq_len, hw)
    if warm is not None:
        load_warm_weights(model, warm)
        log.info("train_model: warm start from %s (trained %s, last commit %s): %d steps (%.1f epochs over %d "
                 "examples; update_epochs %s, update_max_steps %d), learning rate %g", warm.folder,
                 warm.info.get("trained_at", "?"), (warm.info.get("last_commit") or "?")[:12], steps,
                 steps * plan.global_batch / max(1, len(data.train.rows)), len(data.train.examples), cfg.max_epochs,
                 cfg.max_steps, cfg.learning_rate)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for _, p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    log.info("train_model: %s model, %.2fM parameters, %.2fM trained, %s on %s%s", cfg.mode, n_total / 1e6,
             n_trainable / 1e6, hw.precision, hw.device, f" x {hw.world_size} processes" if hw.world_size > 1 else "")
    optimizer = build_optimizer(cfg, trainable, hw)
    forward_model = model
    if hw.world_size > 1:
        forward_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[hw.local_rank] if hw.device.type == "cuda" else None)
    return TrainingRun(
        cfg=cfg, hw=hw, paths=paths, seed=seed, tokenizer=tokenizer, tok_dir=tok_dir, seq_len=seq_len, data=data,
        plan=plan, model=model, forward_model=forward_model, optimizer=optimizer,
        scaler=torch.amp.GradScaler(hw.device.type) if hw.precision == "fp16" else None,
        new_token_ids=new_token_ids, total_steps=steps,
        fingerprint=run_fingerprint(cfg, paths, seed, hw, plan, seq_len, warm), warm=warm,
    )
