"""What a run saves: checkpoints to resume from (trained weights, optimizer, `TrainState`) that belong to one run
(its fingerprint), the best weights so far, and at the end the model folder."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from repo2model.core.artifacts import atomic_path
from repo2model.core.config import section_dict
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.language.tokenizer_folder import tokenizer_digest
from repo2model.training.data import latest_target
from repo2model.training.hardware import Hardware, barrier
from repo2model.training.model import resolve_base
from repo2model.training.models import INFO_FILE, merge_adapter

if TYPE_CHECKING:  # annotations only: Config belongs to the stage, and training_run imports this module
    from repo2model.stages.train_model import Config
    from repo2model.training.batch_plan import BatchPlan
    from repo2model.training.training_run import TrainingRun
    from repo2model.training.warm_start import WarmStart

log = logging.getLogger("train_model")


# Settings that do not change the trained weights: a checkpoint stays valid when only these change.
# The update keys act through with_update_schedule (whose result is fingerprinted) and the warm-start model by its
# identity (run_fingerprint), so they never change the fingerprint of a run without warm_start.
NOT_IN_FINGERPRINT = {"resume", "merge", "max_minutes", "log_every", "keep_checkpoints", "save_every", "num_threads",
                      "max_steps", "max_epochs", "early_stopping_patience", "early_stopping_min_delta",
                      "warm_start", "update_epochs", "update_max_steps", "update_max_minutes", "update_learning_rate", "update_warmup_steps"}

@dataclasses.dataclass
class TrainState:
    """Where a run is; saved as a checkpoint's train_state.json and restored on resume."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training-loop time, over every resumed part
    best_val_loss: float | None = None
    best_step: int = 0
    initial_val_loss: float | None = None
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    stop_reason: str | None = None  # max_steps | time_budget | early_stopping
    last_val_loss: float | None = None
    fingerprint: str | None = None  # the run a checkpoint belongs to (run_fingerprint)
    scaler: dict | None = None  # fp16: the loss scaler's state, so a resumed run scales as the interrupted one

    @classmethod
    def from_json(cls, path: Path) -> TrainState:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def run_fingerprint(cfg: Config, paths: ArtifactPaths, seed: int, hw: Hardware, plan: BatchPlan, seq_len: int,
                    warm: WarmStart | None = None) -> str:
    """Which run a checkpoint belongs to: settings that change the weights, data, seed, layout, warm-start model."""
    settings = {k: v for k, v in section_dict(cfg).items() if k not in NOT_IN_FINGERPRINT}
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps({"settings": settings, "seed": seed, "world_size": hw.world_size, "seq_len": seq_len,
                              "micro": plan.micro_batch, "accumulation": plan.accumulation,
                              "precision": hw.precision, **({"warm_start": warm.identity} if warm else {})},
                             sort_keys=True).encode())
    for path in (paths.train_data, paths.val_data):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def checkpoint_dirs(paths: ArtifactPaths) -> list[Path]:
    if not paths.checkpoints_dir.is_dir():
        return []
    found = [p for p in paths.checkpoints_dir.iterdir()
             if re.fullmatch(r"step-\d{6,}", p.name) and (p / "train_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, folder: Path) -> None:
    saved = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def restore_checkpoint(run: TrainingRun, resume: bool | None) -> TrainState:
    """The state to start from: the latest checkpoint of this same run, or a fresh one."""
    cfg, paths, hw = run.cfg, run.paths, run.hw
    if hw.is_main and paths.checkpoints_dir.is_dir():
        for leftover in [*paths.checkpoints_dir.glob(".*.tmp"), *paths.checkpoints_dir.glob(".*.old-*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # a checkpoint write cut by a kill
    barrier(hw)
    found = checkpoint_dirs(paths)
    want = cfg.resume if resume is None else resume
    if resume is True and not found:
        raise UserError(f"{paths.checkpoints_dir}: no checkpoint to resume from: run without --resume")
    if want and found:
        latest = found[-1]
        state = TrainState.from_json(latest / "train_state.json")
        if state.fingerprint == run.fingerprint:
            load_trainable(run.model, latest)
            run.optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location="cpu", weights_only=True))
            if run.scaler is not None and state.scaler:
                run.scaler.load_state_dict(state.scaler)
            log.info("train_model: resuming from %s (step %d)", latest, state.step)
            return state
        if resume is True:
            raise UserError(f"{latest}: this checkpoint belongs to a different run (config, data, seed or number of "
                            "processes changed): run without --resume to start over")
        log.warning("train_model: checkpoints in %s belong to a different run (config, data or seed changed): "
                    "starting over", paths.checkpoints_dir)
    barrier(hw)
    if hw.is_main and paths.checkpoints_dir.is_dir():
        shutil.rmtree(paths.checkpoints_dir)
    barrier(hw)
    return TrainState()


def save_checkpoint(run: TrainingRun, state: TrainState) -> None:
    """Trained weights, optimizer and state of step `state.step` (every process calls it; the main one writes)."""
    state.fingerprint = run.fingerprint
    if run.scaler is not None:
        state.scaler = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in run.scaler.state_dict().items()}
    if run.hw.is_main:
        folder = run.paths.checkpoints_dir / f"step-{state.step:06d}"
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            save_file(trainable_state(run.model), str(tmp / "trainable.safetensors"))
            torch.save(run.optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "train_state.json").write_text(state.to_json(), encoding="utf-8")
        for old in checkpoint_dirs(run.paths)[:-run.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(run.hw)


def save_best(paths: ArtifactPaths, model, state: TrainState) -> None:
    with atomic_path(paths.checkpoints_dir / "best") as tmp:
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        (tmp / "best.json").write_text(json.dumps({"step": state.step, "val_loss": state.best_val_loss}) + "\n")


def save_model(run: TrainingRun, final: dict) -> None:
    """The model folder, replaced whole (atomically): weights (or adapter), tokenizer, commit language, and
    training_info.json, the folder's marker (what it is, what it learned up to, when; serve.py reloads on its change)."""
    cfg, tokenizer, new_ids, warm = run.cfg, run.tokenizer, run.new_token_ids, run.warm
    last_commit, last_commit_time = latest_target(run.data.train.examples)
    info = {"mode": cfg.mode, "base_model": resolve_base(cfg.base_model) if cfg.base_model else None,
            "vocab_size": len(tokenizer), "new_token_ids": [new_ids[0], new_ids[-1] + 1] if new_ids else None,
            "best_step": final["best_step"], "best_val_loss": final["best_val_loss"], "seq_len": final["seq_len"],
            "steps": final["steps"], "last_commit": last_commit, "last_commit_time": last_commit_time,
            "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tokenizer_digest": tokenizer_digest(tokenizer),
            "warm_start": None if warm is None else {"folder": str(warm.folder), "trained_at": warm.info.get("trained_at"),
                                                     "last_commit": warm.info.get("last_commit")}}
    model_dir = run.paths.model_dir
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        run.model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for extra in run.tok_dir.iterdir():  # vocab.json, commit_language.json: what prediction reads beside the model
            if extra.is_file() and not (tmp / extra.name).exists():
                shutil.copy2(extra, tmp / extra.name)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if cfg.merge and cfg.mode != "scratch":
            merge_adapter(tmp, tmp / "merged")  # reads the base model from training_info.json
    log.info("train_model: saved %s to %s", "the model" if cfg.mode == "scratch" else "the adapter", model_dir)
