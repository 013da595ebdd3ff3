"""Train the model: a small LLaMA from scratch, or LoRA / QLoRA on a base model, sized to the hardware.

    python train_model.py --config config.yaml
    python train_model.py --vocab outputs/vocab.json --train-data outputs/training_data_train.pt \\
        --val-data outputs/training_data_val.pt [--resume] [--merge]
    torchrun --nproc_per_node 2 train_model.py --config config.yaml      # DDP, unchanged code
    (or accelerate launch --multi_gpu ...; FSDP/DeepSpeed are not supported: checkpoints hold full tensors)

Reads `training_data_{train,val,test}.pt` (repo2model.language.examples.ExampleSet) and
the tokenizer folder (the data's `meta["tokenizer_dir"]`, the folder of
`--vocab`, or `<output_dir>/tokenizer`). Writes:

    model/            save_pretrained safetensors with the tokenizer beside it: the full model
                      (scratch) or the adapter (lora/qlora) + training_info.json (mode, base model
                      path or hub id, seq_len, ...), written last; `merged/` inside it with --merge.
                      Load it with `repo2model.training.models.load_trained_model(model_dir)`.
    checkpoints/      step-NNNNNN/ every save_every steps (last keep_checkpoints kept) and best/
    training_logs/    steps.jsonl (loss, lr, grad norm, tokens/s, memory per logged step; val loss
                      at evaluations), tb/ TensorBoard events, loss_curve.png, final_eval.json
                      (test loss and perplexity of the best checkpoint)

The recipe, in the order `run()` calls it: validate (hardware, precision, packages, writable
outputs: before anything expensive) -> setup (data, tokenizer, batch plan, model, optimizer:
a `TrainingRun`) -> restore a checkpoint (a `TrainState`) -> train (`train_step` per optimizer
step, evaluations, checkpoints) -> finish (best weights, test loss, the model folder).

Features, and the keys of the `model_training` section that switch them:

- mode: scratch | lora | qlora.  scratch builds a LlamaForCausalLM from hidden_size, num_layers,
  num_heads, num_kv_heads, intermediate_size, rope_theta, tie_word_embeddings with the
  tokenizer's vocabulary.  lora loads base_model (a local folder or a hub id), resizes its
  embeddings to the extended tokenizer and trains LoRA (lora_rank, lora_alpha, lora_dropout,
  lora_target_modules) plus, with train_new_tokens, only the new token rows of the embedding and
  the head (peft trainable_token_indices).  qlora does the same on a 4-bit NF4 base with double
  quantisation; prepare_kbit_training applies peft's prepare_model_for_kbit_training (fp32
  embeddings and head: more memory), otherwise the lean set-up is used (16-bit embeddings, input
  gradients enabled for checkpointing).
- device (auto | cpu | cuda) and precision (auto | fp32 | bf16 | fp16): auto picks bf16 where
  the GPU supports it, fp16 with loss scaling on Turing and older, bf16 autocast on a CPU with
  native bf16 (AVX512-BF16/AMX) and fp32 otherwise.  fp16 or device: cuda without a GPU is
  refused in one line.  Trained parameters are always kept in fp32.
- vram_budget_gb: on a GPU, the largest micro-batch whose memory estimate
  (repo2model/training/memory.py) fits, up to effective_batch_size; gradient accumulation makes up the
  rest.  The estimate is printed before training, and the measured peak logged beside it.  A
  set-up that cannot fit stops with one line naming the setting to lower.
  Without a budget: micro_batch_size.  effective_batch_size: sequences per optimizer step.
- seq_len (null: the data's context_window, or the longest example) and packing: examples are
  packed whole into rows of seq_len tokens (best-fit decreasing); position ids restart at 0 for
  each example and transformers derives a block-diagonal causal mask from them, so no token
  attends across an example boundary and each example's loss is the same as unpacked.  Longer
  examples keep their last seq_len tokens.  packing: false puts one example per row.  Either way
  rows are length-bucketed into micro-batches, each padded to its longest row.
- gradient_checkpointing, optimizer (adamw | adamw_8bit | paged_adamw_8bit), learning_rate,
  weight_decay, adam_beta1, adam_beta2, max_grad_norm (clipping), warmup_steps + cosine decay to
  min_lr_ratio * learning_rate, max_steps, max_epochs, max_minutes (time budget), num_threads.
- eval_every, eval_max_rows: validation loss; early_stopping_patience (evaluations without an
  improvement over early_stopping_min_delta; 0 = off); the best weights are kept and saved.
- save_every, keep_checkpoints, resume: a rerun (or --resume) continues from the latest
  checkpoint of the same run (same config, data, seed, batch layout) and finishes exactly as an
  uninterrupted run would: the data order and the dropout seeds are functions of the step.
- log_every: training-log cadence.  merge: also write merged full weights (lora/qlora).
- warm_start (a model folder this stage wrote, e.g. the current <output_dir>/model; null = off): the
  run starts from that model's weights - scratch: every weight; lora/qlora: the adapter and the
  new-token rows continue over the same base (a LoRA adapter may continue as QLoRA and back) -
  with a fresh optimizer and a short schedule: update_max_steps steps (instead of max_steps),
  update_warmup_steps of warm-up, update_learning_rate (null = learning_rate).  The tokenizer must be
  the one the model was trained with (tokenizer_digest in training_info.json), and the architecture
  or adapter shape the same; otherwise one line says which setting differs.  pipeline.py --update
  uses it to learn new commits in minutes.

training_info.json (the model folder's marker, read by prediction and serve.py): mode, base_model,
vocab_size, new_token_ids, seq_len, steps, best_step, best_val_loss, last_commit and last_commit_time
(the latest training target), trained_at (UTC, ISO 8601), tokenizer_digest, warm_start (folder,
trained_at and last_commit of the model continued, or null).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import datetime
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from peft import (
    LoraConfig,
    get_peft_model,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file, save_file
from torch.utils.tensorboard import SummaryWriter
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from repo2model.core.artifacts import (
    atomic_path,
    ensure_folder,
    read_json,
    require,
    write_json,
)
from repo2model.core.cli import (
    add_config_argument,
    apply_overrides,
    load_stage,
    user_errors_to_exit,
)
from repo2model.language.commit_language import CommitLanguage
from repo2model.core.config import section_dict
from repo2model.core.errors import UserError, first_line
from repo2model.language.examples import IGNORE_INDEX, ExampleSet
from repo2model.training.memory import (
    MemoryEstimate,
    ModelShape,
    TrainingSetup,
    estimate,
    largest_micro_batch,
    setting_to_lower,
)
from repo2model.training.models import INFO_FILE, merge_adapter
from repo2model.core.paths import ArtifactPaths, tokenizer_dir_for_vocab
from repo2model.language.tokenizer_folder import load_commit_tokenizer, tokenizer_digest
from repo2model.core.progress import progress as progress_bar

SECTION = "model_training"
log = logging.getLogger("train_model")

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass
class Config:
    mode: Literal["scratch", "lora", "qlora"] = "scratch"
    base_model: str | None = None
    # scratch model sizes
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int = 688
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    # LoRA / QLoRA
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = dataclasses.field(default_factory=lambda: list(ALL_LINEAR))
    train_new_tokens: bool = True
    prepare_kbit_training: bool = False
    # hardware
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    vram_budget_gb: float | None = None
    num_threads: int | None = None
    # batches
    seq_len: int | None = None
    packing: bool = True
    micro_batch_size: int = 8
    effective_batch_size: int = 8
    # optimisation
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    max_steps: int = 300
    max_epochs: float | None = None
    max_minutes: float | None = 5.0
    # evaluation, checkpoints, logs
    eval_every: int = 25
    eval_max_rows: int | None = None
    early_stopping_patience: int = 4
    early_stopping_min_delta: float = 0.0
    save_every: int = 25
    keep_checkpoints: int = 2
    resume: bool = True
    log_every: int = 5
    merge: bool = False
    # update: continue from a trained model folder (pipeline.py --update points it at the current model)
    warm_start: Path | None = None
    update_max_steps: int = 100
    update_learning_rate: float | None = None
    update_warmup_steps: int = 5

    def __post_init__(self):
        positive = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "lora_rank", "micro_batch_size",
                    "effective_batch_size", "max_steps", "eval_every", "save_every", "keep_checkpoints", "log_every",
                    "update_max_steps")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be at least 1")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size: must be a multiple of num_heads")
        if self.num_kv_heads is not None and (self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads):
            raise ValueError("num_kv_heads: must divide num_heads")
        if self.seq_len is not None and self.seq_len < 8:
            raise ValueError("seq_len: must be at least 8 (or null)")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError("lora_dropout: must be in [0, 1)")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate: must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio: must be in [0, 1]")
        if self.warmup_steps < 0 or self.early_stopping_patience < 0:
            raise ValueError("warmup_steps: must not be negative")
        if self.mode != "scratch" and not self.base_model:
            raise ValueError(f"base_model: mode {self.mode} needs a base model (a local folder or a hub id)")
        if self.vram_budget_gb is not None and self.vram_budget_gb <= 0:
            raise ValueError("vram_budget_gb: must be positive (or null)")
        for name in ("max_minutes", "max_epochs"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive (or null)")
        if self.update_learning_rate is not None and self.update_learning_rate <= 0:
            raise ValueError("update_learning_rate: must be positive (or null)")
        if self.update_warmup_steps < 0:
            raise ValueError("update_warmup_steps: must not be negative")


# Settings that do not change the trained weights: a checkpoint stays valid when only these change.
# The update keys act through with_update_schedule (whose result is fingerprinted) and the warm-start model by its
# identity (run_fingerprint), so a run without warm_start keeps the fingerprint it had before they existed.
NOT_IN_FINGERPRINT = {"resume", "merge", "max_minutes", "log_every", "keep_checkpoints", "save_every", "num_threads",
                      "max_steps", "max_epochs", "early_stopping_patience", "early_stopping_min_delta",
                      "warm_start", "update_max_steps", "update_learning_rate", "update_warmup_steps"}


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.train_data, paths.val_data, paths.test_data, paths.tokenizer_dir]


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.model_dir, paths.training_logs / "final_eval.json"]


def input_state(cfg: Config, paths: ArtifactPaths) -> str:
    base = Path(cfg.base_model).expanduser() if cfg.base_model else None
    if base is not None and base.is_dir():
        return f"{base}:" + ":".join(f"{p.name}={p.stat().st_size}" for p in sorted(base.glob("*")) if p.is_file())
    return str(cfg.base_model)


# ----------------------------------------------------------------------------- the stage


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42, tokenizer_dir: Path | None = None,
        resume: bool | None = None) -> dict:
    """Train as configured; returns the summary. `resume`: None = cfg.resume, True = must resume, False = fresh."""
    hw = setup_hardware(cfg)
    check_packages(cfg)
    check_outputs_writable(paths)
    warm = read_warm_start(cfg)
    cfg = with_update_schedule(cfg)
    training = setup(cfg, paths, hw, seed, tokenizer_dir, warm)
    state = restore_checkpoint(training, resume)
    logs = TrainingLogs(paths.training_logs, state.step, hw.is_main)
    try:
        state = train(training, state, logs)
        final = finish(training, state)
    finally:
        logs.close()
    if hw.is_main:
        write_json(paths.training_logs / "final_eval.json", final)
        plot_loss_curve(paths.training_logs)
    log.info("train_model: %d steps (%s), val loss %.3f -> best %.3f at step %d, test loss %.3f (perplexity %.1f); "
             "model in %s", final["steps"], final["stop_reason"], final["initial_val_loss"], final["best_val_loss"],
             final["best_step"], final["test_loss"], final["test_perplexity"], paths.model_dir)
    barrier(hw)
    return final


# ----------------------------------------------------------------------------- validate: hardware, packages, outputs


@dataclasses.dataclass
class Hardware:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def compute_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)


def setup_hardware(cfg: Config) -> Hardware:
    """Validate device and precision against the machine before any expensive work; start DDP if launched so."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise UserError("model_training.device: cuda, but PyTorch sees no CUDA GPU: set device: auto (or cpu)")
    use_cuda = cuda and cfg.device != "cpu"
    if cfg.precision == "fp16" and not use_cuda:
        raise UserError("model_training.precision: fp16 needs a CUDA GPU: use bf16 or fp32 on the CPU (or auto)")
    if cfg.precision == "bf16" and use_cuda and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name()
        raise UserError(f"model_training.precision: bf16 is not supported by {name}: use fp16 (or auto)")
    precision = cfg.precision
    if precision == "auto":
        if use_cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not torch.distributed.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    return Hardware(device, precision, rank, world_size, local_rank)


def cpu_has_bf16() -> bool:
    """Native bf16 on this CPU (AVX512-BF16 or AMX): bf16 autocast is faster there, emulated elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_packages(cfg: Config) -> None:
    """bitsandbytes is needed only for qlora and the 8-bit optimizers: its absence is one line, before any work."""
    needs = "mode: qlora" if cfg.mode == "qlora" else (f"optimizer: {cfg.optimizer}" if cfg.optimizer != "adamw" else None)
    if needs and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"model_training.{needs} needs bitsandbytes, which is not installed: "
                        "pip install bitsandbytes (or use mode: lora and optimizer: adamw)")


def check_outputs_writable(paths: ArtifactPaths) -> None:
    """Fail in one line before training when an output folder cannot be written (not hours later, when saving)."""
    for folder, what in ((paths.model_dir, "model"), (paths.checkpoints_dir, "checkpoints"),
                         (paths.training_logs, "training logs")):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder}: a file is in the way of the {what} folder: move it away or choose another folder")
        parent = ensure_folder(folder.parent)
        if not os.access(parent, os.W_OK):
            raise UserError(f"{parent}: output folder is not writable (it receives the {what} folder)")


def barrier(hw: Hardware) -> None:
    if hw.world_size > 1:
        torch.distributed.barrier()


def all_reduce_sum(values: list[float], hw: Hardware) -> list[float]:
    if hw.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=hw.device if hw.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


# ----------------------------------------------------------------------------- setup: the pieces of a run


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


@dataclasses.dataclass
class PackedSplit:
    """One split's examples packed into rows (lists of example indices) of at most seq_len tokens."""

    examples: ExampleSet
    rows: list[list[int]]
    seq_len: int

    def __post_init__(self):
        self.lengths = row_lengths(self.examples, self.rows, self.seq_len)  # real tokens per row

    @property
    def pad_id(self) -> int:
        return pad_id(self.examples)

    def collate(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        return collate(self.examples, rows, self.seq_len, self.pad_id)


@dataclasses.dataclass
class TrainingData:
    train: PackedSplit
    val: PackedSplit
    test: PackedSplit | None  # None: the final evaluation uses the validation split

    @property
    def final(self) -> tuple[str, PackedSplit]:
        return ("test", self.test) if self.test is not None else ("val", self.val)


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

    torch.manual_seed(seed)
    model, new_token_ids = build_model(cfg, tokenizer, tok_dir, seq_len, hw)
    if warm is not None:
        load_warm_weights(model, warm)
        log.info("train_model: warm start from %s (trained %s, last commit %s): %d steps, learning rate %g",
                 warm.folder, warm.info.get("trained_at", "?"), (warm.info.get("last_commit") or "?")[:12],
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
        new_token_ids=new_token_ids, total_steps=total_steps(cfg, len(data.train.rows), plan.global_batch),
        fingerprint=run_fingerprint(cfg, paths, seed, hw, plan, seq_len, warm), warm=warm,
    )


# ----------------------------------------------------------------------------- data


def load_data(paths: ArtifactPaths) -> dict[str, ExampleSet]:
    data = {}
    for split in ("train", "val", "test"):
        path = paths.split_data(split)
        if split == "test" and not path.exists():
            log.warning("train_model: %s not found: the final evaluation uses the validation split", path)
            continue
        data[split] = ExampleSet.load(require(path, "dataset_builder"))
        if len(data[split]) == 0 and split != "test":
            raise UserError(f"{path}: no {split} examples: the history is too short for a {split} split "
                            "(lower dataset_builder's split fractions or use a longer history)")
    if "test" in data and len(data["test"]) == 0:
        del data["test"]
    return data


def find_tokenizer(train: ExampleSet, paths: ArtifactPaths, tokenizer_dir: Path | None):
    """(tokenizer, its folder): `tokenizer_dir`, else the folder the data was encoded with, else <output>/tokenizer.

    Loaded as every stage loads it (checked against its commit language, which the model folder gets a copy of).
    """
    candidates = [tokenizer_dir] if tokenizer_dir else []
    if train.meta.get("tokenizer_dir"):
        candidates.append(Path(train.meta["tokenizer_dir"]))
    candidates.append(paths.tokenizer_dir)
    for folder in candidates:
        if folder is not None and (Path(folder) / "tokenizer.json").is_file():
            _, tokenizer = load_commit_tokenizer(folder)
            return tokenizer, Path(folder)
    raise UserError(f"{candidates[0]}: no tokenizer folder (tokenizer.json) found: run the tokenizer stage first "
                    "(python pipeline.py --stage tokenizer)")


def check_vocab(data: dict[str, ExampleSet], tokenizer) -> None:
    for split, examples in data.items():
        if examples.input_ids.numel() and int(examples.input_ids.max()) >= len(tokenizer):
            raise UserError(f"training_data_{split}.pt holds token ids up to {int(examples.input_ids.max())} but the "
                            f"tokenizer has {len(tokenizer)}: rerun the dataset_builder stage with this tokenizer")


def choose_seq_len(cfg: Config, train: ExampleSet) -> int:
    """cfg.seq_len, else the dataset's example window (context_window: context + target), or the longest example."""
    if cfg.seq_len:
        return cfg.seq_len
    longest = int(train.lengths().max()) if len(train) else 64
    window = int(train.meta.get("context_window") or 0)
    return max(64, math.ceil(max(longest, window) / 64) * 64)


def pack_data(cfg: Config, examples: dict[str, ExampleSet], seq_len: int) -> TrainingData:
    """Every split packed into rows; evaluation rows longest first (their order does not matter: least padding)."""
    packed = {}
    for split, split_examples in examples.items():
        rows = pack_rows(split_examples, seq_len, cfg.packing)
        if split != "train":
            lengths = row_lengths(split_examples, rows, seq_len)
            rows = [rows[i] for i in sorted(range(len(lengths)), key=lambda i: -lengths[i])]
        packed[split] = PackedSplit(split_examples, rows, seq_len)
    return TrainingData(packed["train"], packed["val"], packed.get("test"))


def pack_rows(examples: ExampleSet, seq_len: int, packing: bool) -> list[list[int]]:
    """Example indices per row. Packing: best-fit decreasing, whole examples (longer ones count as seq_len)."""
    lengths = [min(int(n), seq_len) for n in examples.lengths().tolist()]
    if not packing:
        return [[i] for i in range(len(lengths))]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), sorted
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at < len(free):
            space, row = free.pop(at)
            rows[row].append(i)
            space -= lengths[i]
        else:
            rows.append([i])
            row, space = len(rows) - 1, seq_len - lengths[i]
        if space > 0:
            bisect.insort(free, (space, row))
    return rows


def row_lengths(examples: ExampleSet, rows: list[list[int]], seq_len: int) -> list[int]:
    """Real (non-pad) tokens of each row."""
    lengths = [min(int(n), seq_len) for n in examples.lengths().tolist()]
    return [sum(lengths[i] for i in row) for row in rows]


def padding_share(row_len: list[int], micro: int, seed: int) -> float:
    """Share of pad positions in the first epoch's micro-batches (each padded to its longest row)."""
    if not row_len:
        return 0.0
    batches = epoch_batches(row_len, micro, seed, 0)
    padded = sum(max(row_len[r] for r in batch) * len(batch) for batch in batches)
    return 1 - sum(row_len) / padded


def collate(examples: ExampleSet, rows: list[list[int]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, labels and position_ids [B, T] for rows of packed examples (T = the longest row).

    Each example keeps its last seq_len tokens, positions restart at 0 for each one and its first
    label is ignored (nothing before it in the same example predicts it), so its loss equals the
    unpacked loss.  Pad positions form their own segment with ignored labels.
    """
    ids, labels, positions = [], [], []
    for row in rows:
        row_ids, row_labels, row_pos = [], [], []
        for i in row:
            x = examples.ids(i).long()
            y = examples.labels(i)
            if len(x) > seq_len:
                x, y = x[-seq_len:], y[-seq_len:]
            y = y.clone()
            y[0] = IGNORE_INDEX
            row_ids.append(x)
            row_labels.append(y)
            row_pos.append(torch.arange(len(x)))
        ids.append(torch.cat(row_ids))
        labels.append(torch.cat(row_labels))
        positions.append(torch.cat(row_pos))
    width = max(len(x) for x in ids)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for b, (x, y, p) in enumerate(zip(ids, labels, positions)):
        n = len(x)
        batch["input_ids"][b, :n] = x
        batch["labels"][b, :n] = y
        batch["position_ids"][b, :n] = p
        batch["position_ids"][b, n:] = torch.arange(width - n)
    return batch


def row_tokens(examples: ExampleSet, rows: list[list[int]], seq_len: int) -> int:
    """Real (non-pad) tokens in the rows."""
    return sum(min(int(examples.offsets[i + 1] - examples.offsets[i]), seq_len) for row in rows for i in row)


def pad_id(examples: ExampleSet) -> int:
    value = examples.meta.get("pad_token_id")
    return int(value) if value is not None else 0


MEGABATCH = 50  # micro-batches per length-sorted group, as in transformers' group_by_length


def epoch_batches(row_len: list[int], micro: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches (row indices) of one epoch: a seeded shuffle, then length bucketing.

    Inside each group of MEGABATCH micro-batches the rows are sorted by length and cut into
    micro-batches, so that a micro-batch holds rows of similar length (little padding); the
    micro-batches of a group are then shuffled again. Only the epoch's last micro-batch can be short.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(row_len), generator=generator).tolist()
    batches: list[list[int]] = []
    group = MEGABATCH * micro
    for start in range(0, len(perm), group):
        chunk = sorted(perm[start:start + group], key=lambda r: -row_len[r])
        cut = [chunk[i:i + micro] for i in range(0, len(chunk), micro)]
        full = [b for b in cut if len(b) == micro]
        batches.extend(full[i] for i in torch.randperm(len(full), generator=generator).tolist())
        batches.extend(b for b in cut if len(b) < micro)
    return batches


def step_batches(rows: list[list[int]], row_len: list[int], micro: int, step: int, per_step: int, seed: int,
                 cache: dict) -> list[list[list[int]]]:
    """The `per_step` micro-batches (lists of rows) of optimizer step `step` (0-based).

    A pure function of the step, so a resumed run replays the order; the epochs follow each other
    without a gap.
    """
    picked = []
    per_epoch = math.ceil(len(rows) / micro)
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = epoch_batches(row_len, micro, seed, epoch)
        picked.append([rows[r] for r in cache[epoch][offset]])
    return picked


# ----------------------------------------------------------------------------- model, batch plan, optimizer


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
                raise UserError("model_training.vram_budget_gb: " + setting_to_lower(shape, setup, cfg.vram_budget_gb))
        else:
            log.warning("train_model: no GPU: vram_budget_gb is not applied (micro_batch_size %d is used)", micro)
    accumulation = math.ceil(per_rank / micro)
    est = estimate(shape, dataclasses.replace(setup, micro_batch=micro)) if shape else None
    log.info("train_model: micro-batch %d x accumulation %d x %d process(es) = %d sequences of %d tokens per step; "
             "memory estimate %s", micro, accumulation, hw.world_size, micro * accumulation * hw.world_size,
             setup.seq_len, est.describe() if est else "n/a (not a LLaMA-shaped config)")
    return BatchPlan(micro, accumulation, hw.world_size, est)


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
        raise UserError(f"model_training.base_model: cannot load {base_model!r} ({first_line(exc)}): give a "
                        "local folder with config.json and weights, or a hub id reachable from here") from None


def resolve_base(base_model: str) -> str:
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.exists() else base_model


def check_tokenizer_extends_base(tok_dir: Path) -> None:
    """LoRA needs the base model's own tokenizer (extended); a tokenizer trained here numbers tokens differently."""
    if CommitLanguage.load(tok_dir).tokenizer_info.get("mode") == "train":
        raise UserError(f"{tok_dir}: this tokenizer was trained from scratch; model_training.mode lora/qlora "
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
    steps = cfg.max_steps
    if cfg.max_epochs is not None:
        steps = min(steps, max(1, math.ceil(cfg.max_epochs * n_rows / global_batch)))
    return steps


# ----------------------------------------------------------------------------- warm start (update mode)


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """A model folder this stage wrote, continued by a new run: its weights, not its optimizer or schedule."""

    folder: Path
    info: dict  # its training_info.json
    identity: str  # digest of that file: the model a checkpoint of this run started from

    @property
    def is_adapter(self) -> bool:
        return self.info.get("mode") in ("lora", "qlora")


def read_warm_start(cfg: Config) -> WarmStart | None:
    """model_training.warm_start, checked against the settings before anything is loaded; None when unset."""
    if cfg.warm_start is None:
        return None
    folder = Path(cfg.warm_start).expanduser()
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        raise UserError(f"model_training.warm_start: {folder}: not a model folder written by train_model (no {INFO_FILE}): "
                        "train without warm_start first")
    raw = info_path.read_bytes()
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{info_path}: corrupt (not JSON): train without warm_start") from None
    warm = WarmStart(folder, info, hashlib.blake2b(raw, digest_size=12).hexdigest())
    mode = info.get("mode")
    if mode not in ("scratch", "lora", "qlora") or (mode == "scratch") != (cfg.mode == "scratch"):
        raise UserError(f"model_training.warm_start: {folder} holds a {mode} model and model_training.mode is "
                        f"{cfg.mode}: a scratch model continues as scratch, an adapter as lora or qlora")
    if warm.is_adapter:
        base = resolve_base(cfg.base_model)
        if info.get("base_model") != base:
            raise UserError(f"model_training.warm_start: {folder} is an adapter over {info.get('base_model')!r}, "
                            f"model_training.base_model is {base!r}: an adapter continues over its own base only")
        adapter = read_json(require(folder / "adapter_config.json", "train_model"))
        for key, saved, asked in (("lora_rank", adapter.get("r"), cfg.lora_rank),
                                  ("lora_alpha", adapter.get("lora_alpha"), cfg.lora_alpha),
                                  ("lora_target_modules", sorted(adapter.get("target_modules") or []),
                                   sorted(cfg.lora_target_modules))):
            if saved != asked:
                raise UserError(f"model_training.{key}: {asked}, but the warm-start adapter {folder} has {saved}: "
                                "an adapter continues with its own shape (set it back, or warm_start: null)")
    return warm


def with_update_schedule(cfg: Config) -> Config:
    """A warm-started run is short: update_max_steps steps, update_warmup_steps of warm-up, update_learning_rate."""
    if cfg.warm_start is None:
        return cfg
    return dataclasses.replace(cfg, max_steps=cfg.update_max_steps, warmup_steps=cfg.update_warmup_steps,
                               learning_rate=cfg.update_learning_rate or cfg.learning_rate)


def check_warm_start(warm: WarmStart, cfg: Config, tokenizer, seq_len: int) -> None:
    """The token ids and (scratch) the architecture must be the warm model's: checked before building anything."""
    saved = warm.info.get("tokenizer_digest")
    if (saved is not None and saved != tokenizer_digest(tokenizer)) or warm.info.get("vocab_size") != len(tokenizer):
        raise UserError(f"model_training.warm_start: the tokenizer changed since {warm.folder} was trained (its token "
                        "ids differ): keep the tokenizer frozen for updates (tokenizer.frozen: true) or train "
                        "without warm_start")
    if warm.is_adapter:
        return
    saved_config = read_json(require(warm.folder / "config.json", "train_model"))
    config = scratch_config(cfg, tokenizer, seq_len)
    for ours, theirs in (("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
                         ("num_heads", "num_attention_heads"), ("num_kv_heads", "num_key_value_heads"),
                         ("intermediate_size", "intermediate_size"), ("tie_word_embeddings", "tie_word_embeddings")):
        if saved_config.get(theirs) != getattr(config, theirs):
            raise UserError(f"model_training.{ours}: {getattr(config, theirs)}, but the warm-start model {warm.folder} "
                            f"has {saved_config.get(theirs)}: train with its settings (or warm_start: null)")


def warm_start_refusal(cfg: Config, paths: ArtifactPaths) -> str | None:
    """Why `cfg.warm_start` cannot be continued with these settings and the tokenizer in paths.tokenizer_dir
    (None: it can). pipeline.py --update asks before it starts, and runs the full pipeline instead when refused."""
    try:
        warm = read_warm_start(cfg)
        if warm is not None:
            _, tokenizer = load_commit_tokenizer(paths.tokenizer_dir)
            check_warm_start(warm, cfg, tokenizer, int(warm.info.get("seq_len") or cfg.seq_len or 512))
    except UserError as exc:
        return str(exc)
    return None


def load_warm_weights(model, warm: WarmStart) -> None:
    """The warm model's weights into the model just built: every weight (scratch), or the adapter and new-token rows."""
    if warm.is_adapter:
        state = load_file(str(require(warm.folder / "adapter_model.safetensors", "train_model")))
        result = set_peft_model_state_dict(model, state)
        mismatched = list(result.unexpected_keys) + [k for k in result.missing_keys
                                                     if "lora_" in k or "trainable_tokens" in k]
    else:
        state = {}
        for file in sorted(warm.folder.glob("*.safetensors")):  # model.safetensors, or its shards
            state.update(load_file(str(file)))
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a shape differs
            raise UserError(f"model_training.warm_start: {warm.folder} does not fit the model built from "
                            f"model_training ({first_line(exc)})") from None
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        mismatched = list(result.unexpected_keys) + [k for k in result.missing_keys
                                                     if not (tied and k == "lm_head.weight")]
    if mismatched:
        raise UserError(f"model_training.warm_start: {warm.folder} does not fit the model built from model_training "
                        f"({len(mismatched)} weights differ, e.g. {mismatched[0]}): train with its settings "
                        "(or warm_start: null)")


def latest_target(examples: ExampleSet) -> tuple[str | None, str | None]:
    """(hash, time) of the latest target commit among the examples (by time; the later example on a tie)."""
    latest = None
    for commit, stamp in zip(examples.commits, examples.timestamps):
        try:
            when = datetime.datetime.fromisoformat(stamp)
        except (TypeError, ValueError):
            continue
        when = when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)
        if latest is None or when >= latest[0]:
            latest = (when, commit, stamp)
    if latest is None:
        return (examples.commits[-1] if len(examples) else None), None
    return latest[1], latest[2]


# ----------------------------------------------------------------------------- checkpoints


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


# ----------------------------------------------------------------------------- training


class TrainingLogs:
    """steps.jsonl and TensorBoard events; on resume both are cut back to the checkpoint's step."""

    def __init__(self, folder: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = folder / "steps.jsonl"
        self.writer = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        kept = []
        if start_step and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= start_step:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError):
                    break  # a line cut by a kill
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        if not start_step:
            shutil.rmtree(folder / "tb", ignore_errors=True)
        self.writer = SummaryWriter(str(folder / "tb"), purge_step=start_step + 1 if start_step else None)
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.file.close()
            self.writer = None


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


def memory_gib(hw: Hardware) -> float:
    if hw.device.type == "cuda":
        return torch.cuda.max_memory_allocated(hw.device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # RSS peak (KiB on Linux)


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
    """Load the best weights, evaluate on the test split, save the model folder; the run's summary."""
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
        "tokens_seen": state.tokens_seen, "train_seconds": round(state.elapsed_s, 1),
        "mode": run.cfg.mode, "precision": hw.precision, "device": str(hw.device), "processes": hw.world_size,
        "micro_batch": run.plan.micro_batch, "accumulation": run.plan.accumulation, "seq_len": run.seq_len,
        "peak_memory_gib": round(memory_gib(hw), 3), "warm_start": str(run.warm.folder) if run.warm else None,
    }
    if hw.world_size > 1:
        final["ranks_agree"] = ranks_agree(run.model, hw)
        if not final["ranks_agree"]:
            log.error("train_model: the processes ended with different weights: DDP synchronisation failed")
    if hw.is_main:
        save_model(run, final)
    barrier(hw)
    final.update(memory_estimate_gib=round(run.plan.estimate_gib, 3),
                 padding_waste=round(padding_share(run.data.train.lengths, run.plan.micro_batch, run.seed), 4),
                 trainable_parameters=n_trained, parameters=sum(p.numel() for p in run.model.parameters()))
    return final


def ranks_agree(model, hw: Hardware) -> bool:
    """Whether every process holds the same trained weights (checksums compared across processes)."""
    sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                        for p in model.parameters() if p.requires_grad]).flatten().to(hw.device)
    gathered = [torch.zeros_like(sums) for _ in range(hw.world_size)]
    torch.distributed.all_gather(gathered, sums)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


# ----------------------------------------------------------------------------- the model folder


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


# ----------------------------------------------------------------------------- the loss curve


def plot_loss_curve(folder: Path) -> Path:
    records = [json.loads(line) for line in (folder / "steps.jsonl").read_text(encoding="utf-8").splitlines() if line]
    train_pts = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val_pts = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = Figure(figsize=(7, 4))  # matplotlib's object API renders PNG with Agg: no pyplot, no display, no global state
    ax = fig.subplots()
    if train_pts:
        ax.plot(*zip(*train_pts), label="train")
    if val_pts:
        ax.plot(*zip(*val_pts), "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.grid(alpha=0.3)
    ax.legend()
    target = folder / "loss_curve.png"
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": None})
    return target


# ----------------------------------------------------------------------------- CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--vocab", type=Path, help="the tokenizer's vocab.json (its tokenizer folder is used)")
    parser.add_argument("--tokenizer-dir", type=Path, help="the tokenizer folder (default: from the data)")
    parser.add_argument("--train-data", type=Path, help="training_data_train.pt (default: in the output folder)")
    parser.add_argument("--val-data", type=Path, help="training_data_val.pt")
    parser.add_argument("--test-data", type=Path, help="training_data_test.pt")
    parser.add_argument("--model-dir", type=Path, help="where the model folder goes (default: <output>/model)")
    parser.add_argument("--mode", choices=["scratch", "lora", "qlora"], help="override model_training.mode")
    parser.add_argument("--base-model", help="override model_training.base_model")
    parser.add_argument("--max-steps", type=int, help="override model_training.max_steps (update_max_steps with a warm "
                        "start)")
    parser.add_argument("--warm-start", type=Path, help="continue from this model folder (override model_training."
                        "warm_start): its weights, a fresh short schedule (update_max_steps, update_learning_rate)")
    parser.add_argument("--seed", type=int, help="override pipeline.seed")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (error if none)")
    group.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    parser.add_argument("--merge", action="store_true", help="also write merged full weights to <model>/merged")
    args = parser.parse_args(argv)
    cfg, pipeline_cfg, paths = load_stage(args, SECTION, Config)
    warm_start = args.warm_start.resolve() if args.warm_start else cfg.warm_start
    steps_key = "update_max_steps" if warm_start else "max_steps"
    overrides = {k: v for k, v in {"mode": args.mode, "base_model": args.base_model, steps_key: args.max_steps,
                                   "warm_start": warm_start}.items() if v is not None}
    if args.merge:
        overrides["merge"] = True
    cfg = apply_overrides(cfg, SECTION, overrides)
    replaced = {"train_data": args.train_data, "val_data": args.val_data, "test_data": args.test_data,
                "model_dir": args.model_dir}
    paths = dataclasses.replace(paths, **{k: v.resolve() for k, v in replaced.items() if v is not None})
    if args.train_data and not args.test_data:
        paths = dataclasses.replace(paths, test_data=args.train_data.resolve().with_name("training_data_test.pt"))
    tokenizer_dir = args.tokenizer_dir or (tokenizer_dir_for_vocab(args.vocab) if args.vocab else None)
    if args.vocab:
        require(args.vocab, "tokenizer")
    resume = True if args.resume else (False if args.fresh else None)
    seed = args.seed if args.seed is not None else pipeline_cfg.seed
    run(cfg, paths, seed=seed, tokenizer_dir=tokenizer_dir, resume=resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
