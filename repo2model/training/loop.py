"""The training loop: `train_step` (one optimizer step: its micro-batches forward and backward, clipping, update),
`train` (steps until a limit, evaluations with early stopping, logs, checkpoints), the loss on held-out rows, and
`finish` (the best weights evaluated on the test split)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time

import torch
import torch.nn.functional as F

from repo2model.core.progress import progress as progress_bar
from repo2model.language.examples import IGNORE_INDEX, ExampleSet
from repo2model.training.checkpoints import TrainState, load_trainable, save_best, save_checkpoint
from repo2model.training.hardware import Hardware, all_reduce_sum, barrier, memory_gib, ranks_agree
from repo2model.training.logs import TrainingLogs
from repo2model.training.optimizer import learning_rate
from repo2model.training.packing import collate, pad_id, padding_share, row_tokens, step_batches
from repo2model.training.training_run import TrainingRun

log = logging.getLogger("train_model")


def token_loss_sum(model, batch: dict, hw: Hardware) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the labelled tokens of a batch, and their count."""
    batch = {k: v.to(hw.device) for k, v in batch.items()}
    with hw.autocast():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate_loss(model, examples: ExampleSet, rows: list[list[int]], micro: int, hw: Hardware, seq_len: int,
                  max_rows: int | None = None) -> tuple[float, int]:
    """Mean loss per target token over the rows (split across processes), and the token count."""
    was_training = model.training
    model.eval()
    rows = rows[:max_rows] if max_rows else rows
    mine = rows[hw.rank::hw.world_size]
    total, count = 0.0, 0
    for start in range(0, len(mine), micro):
        loss, n = token_loss_sum(model, collate(examples, mine[start:start + micro], seq_len, pad_id(examples)), hw)
        total += float(loss)
        count += n
    total, count = all_reduce_sum([total, float(count)], hw)
    model.train(was_training)
    return (total / count if count else float("nan")), int(count)


def validation_loss(run: TrainingRun) -> float:
    val = run.data.val
    return evaluate_loss(run.model, val.examples, val.rows, run.plan.micro_batch, run.hw, run.seq_len,
                         run.cfg.eval_max_rows)[0]


@dataclasses.dataclass(frozen=True)
class StepResult:
    loss: float  # mean loss per target token, over every process's micro-batches
    grad_norm: float  # before clipping
    tokens: int  # real (non-pad) tokens of the step, all processes
    lr: float


def train_step(run: TrainingRun, step: int) -> StepResult:
    """Optimizer step `step` (0-based): its micro-batches forward and backward (accumulated), clip, update.

    A function of the step alone (data order, dropout seeds, learning rate), so a resumed run replays it.
    bench/bench_gpu_qlora.py times this very function at LLaMA-2-7B's shapes.
    """
    cfg, hw, plan, train = run.cfg, run.hw, run.plan, run.data.train
    lr = learning_rate(cfg, step, run.total_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    # Dropout draws depend only on (seed, rank, step): a resumed run replays them exactly.
    torch.manual_seed(run.seed * 7919 + hw.rank * 104729 + step)
    everyone = step_batches(train.rows, train.lengths, plan.micro_batch, step, plan.accumulation * hw.world_size,
                            run.seed, run.order_cache)
    mine = everyone[hw.rank * plan.accumulation:(hw.rank + 1) * plan.accumulation]
    batches = [train.collate(rows) for rows in mine]
    local_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    global_targets = all_reduce_sum([float(local_targets)], hw)[0]
    loss_total = 0.0
    for index, batch in enumerate(batches):
        sync = index == len(batches) - 1
        context = run.forward_model.no_sync() if (hw.world_size > 1 and not sync) else contextlib.nullcontext()
        with context:
            loss_sum, _ = token_loss_sum(run.forward_model, batch, hw)
            # DDP averages gradients over processes: scale so the result is the mean over all target tokens.
            loss = loss_sum * hw.world_size / max(global_targets, 1.0)
            (run.scaler.scale(loss) if run.scaler else loss).backward()
        loss_total += float(loss_sum.detach())
    tokens = row_tokens(train.examples, [row for rows in mine for row in rows], run.seq_len)
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.trained_parameters, cfg.max_grad_norm))
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    loss_value = all_reduce_sum([loss_total], hw)[0] / max(global_targets, 1.0)
    return StepResult(loss_value, grad_norm, int(all_reduce_sum([float(tokens)], hw)[0]), lr)


def train(run: TrainingRun, state: TrainState, logs: TrainingLogs) -> TrainState:
    """Optimizer steps until max_steps, the time budget or early stopping; evaluations, logs, checkpoints."""
    cfg, hw = run.cfg, run.hw
    run.model.train()
    if state.initial_val_loss is None:
        state.initial_val_loss = state.last_val_loss = validation_loss(run)
        logs.write({"step": 0, "val_loss": state.initial_val_loss})
        if run.warm is not None:
            # A warm start's own weights are the first candidate: an update whose steps never beat them on the
            # validation split (few examples, many passes) ends with them, not with a worse model.
            state.best_val_loss, state.best_step, state.bad_evals = state.initial_val_loss, 0, 0
            if hw.is_main:
                save_best(run.paths, run.model, state)
    if state.stop_reason in ("max_steps", "time_budget"):
        state.stop_reason = None  # limits may have been raised since: re-check them
    if state.step >= run.total_steps:
        state.stop_reason = state.stop_reason or "max_steps"
    elif cfg.max_minutes is not None and state.elapsed_s >= cfg.max_minutes * 60:
        state.stop_reason = state.stop_reason or "time_budget"
    progress = progress_bar(total=run.total_steps, initial=state.step, desc="train", unit="step",
                            disable=not hw.is_main)
    started = time.perf_counter() - state.elapsed_s
    window_tokens, window_start = 0, time.perf_counter()
    while state.stop_reason is None:
        result = train_step(run, state.step)
        state.step += 1
        state.tokens_seen += result.tokens
        state.elapsed_s = time.perf_counter() - started
        window_tokens += result.tokens
        tokens_per_s = window_tokens / max(1e-9, time.perf_counter() - window_start)
        progress.update(1)
        progress.set_postfix(loss=f"{result.loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{result.lr:.2e}")
        record = None
        if state.step % cfg.log_every == 0 or state.step == 1:
            record = {"step": state.step, "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
                      "tokens_per_s": round(tokens_per_s, 1), "tokens_seen": state.tokens_seen,
                      "epoch": round(state.step * run.plan.global_batch / len(run.data.train.rows), 3),
                      "memory_gib": round(memory_gib(hw), 3)}
            window_tokens, window_start = 0, time.perf_counter()
        state.stop_reason = limit_reached(run, state)
        if state.step % cfg.eval_every == 0 or state.stop_reason:  # the last step is always evaluated
            record = record or {"step": state.step, "loss": result.loss}
            record["val_loss"] = evaluate_and_keep_best(run, state)
        if record is not None:
            logs.write(record)
        if state.step % cfg.save_every == 0 or state.stop_reason:
            save_checkpoint(run, state)
    progress.close()
    if hw.device.type == "cuda":
        log.info("train_model: peak GPU memory %.2f GiB allocated, %.2f GiB reserved (estimate %.2f GiB)",
                 torch.cuda.max_memory_allocated(hw.device) / 1024**3,
                 torch.cuda.max_memory_reserved(hw.device) / 1024**3, run.plan.estimate_gib)
    return state


def limit_reached(run: TrainingRun, state: TrainState) -> str | None:
    """max_steps or the time budget, after a step (every process stops at the same step)."""
    if state.step >= run.total_steps:
        return "max_steps"
    budget = run.cfg.max_minutes
    if budget is not None and all_reduce_sum([float(state.elapsed_s >= budget * 60)], run.hw)[0] > 0:
        return "time_budget"
    return None


def evaluate_and_keep_best(run: TrainingRun, state: TrainState) -> float:
    """Validation loss; a new best saves the weights (checkpoints/best), too many without one stop the run."""
    cfg = run.cfg
    val_loss = validation_loss(run)
    state.last_val_loss = val_loss
    if state.best_val_loss is None or val_loss < state.best_val_loss - cfg.early_stopping_min_delta:
        state.best_val_loss, state.best_step, state.bad_evals = val_loss, state.step, 0
        if run.hw.is_main:
            save_best(run.paths, run.model, state)
    else:
        state.bad_evals += 1
        if cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience:
            state.stop_reason = state.stop_reason or "early_stopping"
    return val_loss


def finish(run: TrainingRun, state: TrainState) -> dict:
    """The best weights loaded and evaluated on the test split (the validation split without one): the run's
    summary, final_eval.json."""
    hw = run.hw
    best_dir = run.paths.checkpoints_dir / "best"
    barrier(hw)
    if (best_dir / "trainable.safetensors").is_file():
        load_trainable(run.model, best_dir)
    split, final_data = run.data.final
    test_loss, test_tokens = evaluate_loss(run.model, final_data.examples, final_data.rows, run.plan.micro_batch, hw,
                                           run.seq_len)
    n_trained = sum(p.numel() for p in run.trained_parameters)
    final = {
        "split": split, "test_loss": test_loss, "test_perplexity": math.exp(min(test_loss, 50.0)),
        "test_tokens": test_tokens, "test_examples": len(final_data.examples),
        "initial_val_loss": state.initial_val_loss, "best_val_loss": state.best_val_loss,
        "best_step": state.best_step, "steps": state.step, "stop_reason": state.stop_reason,
        "epochs": round(state.step * run.plan.global_batch / max(1, len(run.data.train.rows)), 2),
        "train_examples": len(run.data.train.examples),
        "tokens_seen": state.tokens_seen, "train_seconds": round(state.elapsed_s, 1),
        "mode": run.cfg.mode, "precision": hw.precision, "device": str(hw.device), "processes": hw.world_size,
        "micro_batch": run.plan.micro_batch, "accumulation": run.plan.accumulation, "seq_len": run.seq_len,
        "peak_memory_gib": round(memory_gib(hw), 3), "warm_start": str(run.warm.folder) if run.warm else None,
    }
    if hw.world_size > 1:
        final["ranks_agree"] = ranks_agree(run.model, hw)
        if not final["ranks_agree"]:
            log.error("train_model: the processes ended with different weights: DDP synchronisation failed")
    final.update(memory_estimate_gib=round(run.plan.estimate_gib, 3),
                 padding_waste=round(padding_share(run.data.train.lengths, run.plan.micro_batch, run.seed), 4),
                 trainable_parameters=n_trained, parameters=sum(p.numel() for p in run.model.parameters()))
    return final
