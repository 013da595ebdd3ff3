"""Train the model: a small LLaMA from scratch, or LoRA / QLoRA on a base model, sized to the hardware.

    python train_model.py --config config.yaml
    python train_model.py --vocab outputs/vocab.json --train-data outputs/training_data_train.pt \\
        --val-data outputs/training_data_val.pt [--resume] [--merge]
    torchrun --nproc_per_node 2 train_model.py --config config.yaml      # DDP, unchanged code
    (or accelerate launch --multi_gpu ...; FSDP/DeepSpeed are not supported: checkpoints hold full tensors)

Reads `training_data_{train,val,test}.pt` (repo2model.examples.ExampleSet) and
the tokenizer folder (the data's `meta["tokenizer_dir"]`, the folder of
`--vocab`, or `<output_dir>/tokenizer`). Writes:

    model/            save_pretrained safetensors with the tokenizer beside it: the full model
                      (scratch) or the adapter (lora/qlora) + training_info.json (mode, base model
                      path or hub id); `merged/` inside it with --merge. Load it with
                      `load_trained_model(model_dir)`.
    checkpoints/      step-NNNNNN/ every save_every steps (last keep_checkpoints kept) and best/
    training_logs/    steps.jsonl (loss, lr, grad norm, tokens/s, memory per logged step; val loss
                      at evaluations), tb/ TensorBoard events, loss_curve.png, final_eval.json
                      (test loss and perplexity of the best checkpoint)

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
  (repo2model/memory.py) fits, up to effective_batch_size; gradient accumulation makes up the
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
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import hashlib
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

from repo2model.artifacts import atomic_path, require, write_json
from repo2model.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.config import section_dict
from repo2model.errors import UserError
from repo2model.examples import IGNORE_INDEX, ExampleSet
from repo2model.memory import ModelShape, TrainingSetup, estimate, largest_micro_batch, setting_to_lower
from repo2model.models import INFO_FILE, merge_adapter
from repo2model.models import load_base_for_adapter, load_trained_model  # noqa: F401  (tests call them here)
from repo2model.paths import ArtifactPaths, tokenizer_dir_for_vocab

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

    def __post_init__(self):
        positive = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "lora_rank", "micro_batch_size",
                    "effective_batch_size", "max_steps", "eval_every", "save_every", "keep_checkpoints", "log_every")
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


# Settings that do not change the trained weights: a checkpoint stays valid when only these change.
NOT_IN_FINGERPRINT = {"resume", "merge", "max_minutes", "log_every", "keep_checkpoints", "save_every", "num_threads",
                      "max_steps", "max_epochs", "early_stopping_patience", "early_stopping_min_delta"}


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
    data = load_data(paths)
    tokenizer, tok_dir = load_tokenizer(data["train"], paths, tokenizer_dir)
    check_vocab(data, tokenizer)
    seq_len = choose_seq_len(cfg, data["train"])
    shape, setup = describe_model(cfg, tokenizer, tok_dir, seq_len, hw)
    plan = plan_batches(cfg, shape, setup, hw)
    rows = {split: pack_rows(data[split], seq_len, cfg.packing) for split in data}
    for split in ("val", "test"):  # evaluation order does not matter: longest first, least padding
        if split in rows:
            lengths = row_lengths(data[split], rows[split], seq_len)
            rows[split] = [rows[split][i] for i in sorted(range(len(lengths)), key=lambda i: -lengths[i])]
    waste = padding_waste(row_lengths(data["train"], rows["train"], seq_len), plan["micro_batch"], seed)
    log.info("train_model: %d train examples packed into %d rows of %d tokens (padding waste %.1f%%)",
             len(data["train"]), len(rows["train"]), seq_len, 100 * waste)

    torch.manual_seed(seed)
    model, new_token_ids = build_model(cfg, tokenizer, tok_dir, seq_len, hw)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for _, p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    log.info("train_model: %s model, %.2fM parameters, %.2fM trained, %s on %s%s", cfg.mode, n_total / 1e6,
             n_trainable / 1e6, hw.precision, hw.device, f" x {hw.world_size} processes" if hw.world_size > 1 else "")
    optimizer = build_optimizer(cfg, trainable, hw)

    fingerprint = run_fingerprint(cfg, paths, seed, hw, plan, seq_len)
    state = restore_checkpoint(cfg, paths, fingerprint, model, optimizer, hw, resume)
    logs = TrainingLogs(paths.training_logs, state["step"], hw.is_main)
    try:
        state = train(cfg, model, optimizer, data, rows, plan, hw, seed, state, paths, fingerprint, logs, seq_len)
        final = finish(cfg, model, data, rows, plan, hw, paths, state, logs, tokenizer, tok_dir, new_token_ids, seq_len)
    finally:
        logs.close()
    final.update(memory_estimate_gib=round(plan["estimate_gib"], 3), padding_waste=round(waste, 4),
                 trainable_parameters=n_trainable, parameters=n_total)
    if hw.is_main:
        write_json(paths.training_logs / "final_eval.json", final)
        plot_loss_curve(paths.training_logs)
    log.info("train_model: %d steps (%s), val loss %.3f -> best %.3f at step %d, test loss %.3f (perplexity %.1f); "
             "model in %s", final["steps"], final["stop_reason"], final["initial_val_loss"], final["best_val_loss"],
             final["best_step"], final["test_loss"], final["test_perplexity"], paths.model_dir)
    barrier(hw)
    return final


# ----------------------------------------------------------------------------- hardware


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


def barrier(hw: Hardware) -> None:
    if hw.world_size > 1:
        torch.distributed.barrier()


def all_reduce_sum(values: list[float], hw: Hardware) -> list[float]:
    if hw.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=hw.device if hw.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


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


def load_tokenizer(train: ExampleSet, paths: ArtifactPaths, tokenizer_dir: Path | None):
    from transformers import AutoTokenizer

    candidates = [tokenizer_dir] if tokenizer_dir else []
    if train.meta.get("tokenizer_dir"):
        candidates.append(Path(train.meta["tokenizer_dir"]))
    candidates.append(paths.tokenizer_dir)
    for folder in candidates:
        if folder is not None and (Path(folder) / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(folder)), Path(folder)
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


def padding_waste(row_len: list[int], micro: int, seed: int) -> float:
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


# ----------------------------------------------------------------------------- model


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


def plan_batches(cfg: Config, shape: ModelShape | None, setup: TrainingSetup, hw: Hardware) -> dict:
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
    return {"micro_batch": micro, "accumulation": accumulation, "global_batch": micro * accumulation * hw.world_size,
            "estimate_gib": est.total_gib if est else float("nan")}


def scratch_config(cfg: Config, tokenizer, seq_len: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=max(seq_len, 2048),
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def load_base_config(base_model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_base(base_model))
    except OSError as exc:
        raise UserError(f"model_training.base_model: cannot load {base_model!r} ({str(exc).splitlines()[0]}): give a "
                        "local folder with config.json and weights, or a hub id reachable from here") from None


def resolve_base(base_model: str) -> str:
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.exists() else base_model


def check_tokenizer_extends_base(tok_dir: Path) -> None:
    """LoRA needs the base model's own tokenizer (extended); a tokenizer trained here numbers tokens differently."""
    info_path = tok_dir / "commit_language.json"
    if info_path.is_file():
        mode = (json.loads(info_path.read_text(encoding="utf-8")).get("tokenizer") or {}).get("mode")
        if mode == "train":
            raise UserError(f"{tok_dir}: this tokenizer was trained from scratch; model_training.mode lora/qlora "
                            "needs the base model's tokenizer extended: set tokenizer.mode: extend and "
                            "tokenizer.base_tokenizer to the base model, then rerun the tokenizer stage")


def count_new_tokens(tok_dir: Path, tokenizer, base_vocab: int) -> int:
    """Tokens the tokenizer stage added to the base tokenizer (commit_language.json), else the rows beyond the base."""
    info_path = tok_dir / "commit_language.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        for key in ("added_tokens", "num_added_tokens", "added_special_tokens"):
            value = info.get(key)
            if isinstance(value, int):
                return value
            if isinstance(value, list):
                return len(value)
    return max(0, len(tokenizer) - base_vocab)


def build_model(cfg: Config, tokenizer, tok_dir: Path, seq_len: int, hw: Hardware):
    """The model to train, on its device, with only the parameters to train requiring gradients."""
    from transformers import LlamaForCausalLM

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
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

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


# ----------------------------------------------------------------------------- checkpoints


def run_fingerprint(cfg: Config, paths: ArtifactPaths, seed: int, hw: Hardware, plan: dict, seq_len: int) -> str:
    settings = {k: v for k, v in section_dict(cfg).items() if k not in NOT_IN_FINGERPRINT}
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps({"settings": settings, "seed": seed, "world_size": hw.world_size, "seq_len": seq_len,
                              "micro": plan["micro_batch"], "accumulation": plan["accumulation"],
                              "precision": hw.precision}, sort_keys=True).encode())
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
    from safetensors.torch import load_file

    saved = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def fresh_state() -> dict:
    return {"step": 0, "tokens_seen": 0, "elapsed_s": 0.0, "best_val_loss": None, "best_step": 0,
            "initial_val_loss": None, "bad_evals": 0, "stop_reason": None, "last_val_loss": None}


def restore_checkpoint(cfg: Config, paths: ArtifactPaths, fingerprint: str, model, optimizer, hw: Hardware,
                       resume: bool | None) -> dict:
    """The state to start from: the latest checkpoint of this same run, or a fresh one."""
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
        state = json.loads((latest / "train_state.json").read_text(encoding="utf-8"))
        if state.get("fingerprint") == fingerprint:
            load_trainable(model, latest)
            optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location="cpu", weights_only=True))
            log.info("train_model: resuming from %s (step %d)", latest, state["step"])
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
    return fresh_state()


def save_checkpoint(paths: ArtifactPaths, model, optimizer, state: dict, keep: int) -> None:
    folder = paths.checkpoints_dir / f"step-{state['step']:06d}"
    from safetensors.torch import save_file

    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "train_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    for old in checkpoint_dirs(paths)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def save_best(paths: ArtifactPaths, model, state: dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(paths.checkpoints_dir / "best") as tmp:
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        (tmp / "best.json").write_text(json.dumps({"step": state["step"], "val_loss": state["best_val_loss"]}) + "\n")


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
        from torch.utils.tensorboard import SummaryWriter

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


def pad_id(examples: ExampleSet) -> int:
    value = examples.meta.get("pad_token_id")
    return int(value) if value is not None else 0


def memory_gib(hw: Hardware) -> float:
    if hw.device.type == "cuda":
        return torch.cuda.max_memory_allocated(hw.device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # RSS peak (KiB on Linux)


def train(cfg: Config, model, optimizer, data, rows, plan, hw: Hardware, seed: int, state: dict, paths: ArtifactPaths,
          fingerprint: str, logs: TrainingLogs, seq_len: int) -> dict:
    from tqdm import tqdm

    train_set, val_set = data["train"], data["val"]
    micro, accumulation, global_batch = plan["micro_batch"], plan["accumulation"], plan["global_batch"]
    steps = total_steps(cfg, len(rows["train"]), global_batch)
    ddp_model = model
    if hw.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[hw.local_rank] if hw.device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(hw.device.type) if hw.precision == "fp16" else None  # fp16: loss scaling
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])  # the resumed run scales as the interrupted one did
    trained = [p for p in model.parameters() if p.requires_grad]
    pad = pad_id(train_set)
    order_cache: dict = {}
    train_lengths = row_lengths(train_set, rows["train"], seq_len)
    model.train()

    if state["initial_val_loss"] is None:
        state["initial_val_loss"], _ = evaluate_loss(model, val_set, rows["val"], micro, hw, seq_len, cfg.eval_max_rows)
        state["last_val_loss"] = state["initial_val_loss"]
        logs.write({"step": 0, "val_loss": state["initial_val_loss"]})
    if state["stop_reason"] in ("max_steps", "time_budget"):
        state["stop_reason"] = None  # limits may have been raised since: re-check them
    if state["step"] >= steps:
        state["stop_reason"] = state["stop_reason"] or "max_steps"
    elif cfg.max_minutes is not None and state["elapsed_s"] >= cfg.max_minutes * 60:
        state["stop_reason"] = state["stop_reason"] or "time_budget"
    progress = tqdm(total=steps, initial=state["step"], desc="train", unit="step", disable=not hw.is_main,
                    dynamic_ncols=True)
    started = time.perf_counter() - state["elapsed_s"]
    window_tokens, window_start = 0, time.perf_counter()
    while state["stop_reason"] is None:
        step = state["step"]
        lr = learning_rate(cfg, step, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Dropout draws depend only on (seed, rank, step): a resumed run replays them exactly.
        torch.manual_seed(seed * 7919 + hw.rank * 104729 + step)
        everyone = step_batches(rows["train"], train_lengths, micro, step, accumulation * hw.world_size, seed,
                                order_cache)
        mine = everyone[hw.rank * accumulation:(hw.rank + 1) * accumulation]
        my_rows = [row for batch in mine for row in batch]
        batches = [collate(train_set, batch, seq_len, pad) for batch in mine]
        local_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        global_targets = all_reduce_sum([float(local_targets)], hw)[0]
        loss_total = 0.0
        for index, batch in enumerate(batches):
            sync = index == len(batches) - 1
            context = ddp_model.no_sync() if (hw.world_size > 1 and not sync) else contextlib.nullcontext()
            with context:
                loss_sum, _ = token_loss_sum(ddp_model, batch, hw)
                # DDP averages gradients over processes: scale so the result is the mean over all target tokens.
                loss = loss_sum * hw.world_size / max(global_targets, 1.0)
                (scaler.scale(loss) if scaler else loss).backward()
            loss_total += float(loss_sum.detach())
        step_tokens = row_tokens(train_set, my_rows, seq_len)
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trained, cfg.max_grad_norm))
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        loss_value = all_reduce_sum([loss_total], hw)[0] / max(global_targets, 1.0)
        step_tokens = int(all_reduce_sum([float(step_tokens)], hw)[0])
        state["step"] = step = step + 1
        state["tokens_seen"] += step_tokens
        window_tokens += step_tokens
        state["elapsed_s"] = time.perf_counter() - started
        tokens_per_s = window_tokens / max(1e-9, time.perf_counter() - window_start)
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{lr:.2e}")
        record = None
        if step % cfg.log_every == 0 or step == 1:
            record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_s": round(tokens_per_s, 1), "tokens_seen": state["tokens_seen"],
                      "epoch": round(step * global_batch / len(rows["train"]), 3), "memory_gib": round(memory_gib(hw), 3)}
            window_tokens, window_start = 0, time.perf_counter()
        if step >= steps:
            state["stop_reason"] = "max_steps"
        elif cfg.max_minutes is not None and all_reduce_sum(
                [float(state["elapsed_s"] >= cfg.max_minutes * 60)], hw)[0] > 0:  # every process stops together
            state["stop_reason"] = "time_budget"
        if step % cfg.eval_every == 0 or state["stop_reason"]:  # the last step is always evaluated
            val_loss, _ = evaluate_loss(model, val_set, rows["val"], micro, hw, seq_len, cfg.eval_max_rows)
            record = record or {"step": step, "loss": loss_value}
            record["val_loss"] = val_loss
            state["last_val_loss"] = val_loss
            best = state["best_val_loss"]
            if best is None or val_loss < best - cfg.early_stopping_min_delta:
                state.update(best_val_loss=val_loss, best_step=step, bad_evals=0)
                if hw.is_main:
                    save_best(paths, model, state)
            else:
                state["bad_evals"] += 1
                if cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience:
                    state["stop_reason"] = state["stop_reason"] or "early_stopping"
        if record is not None:
            logs.write(record)
        if step % cfg.save_every == 0 or state["stop_reason"]:
            state["fingerprint"] = fingerprint
            if scaler is not None:
                state["scaler"] = {k: float(v) if isinstance(v, torch.Tensor) else v
                                   for k, v in scaler.state_dict().items()}
            if hw.is_main:
                save_checkpoint(paths, model, optimizer, state, cfg.keep_checkpoints)
            barrier(hw)
    progress.close()
    if hw.device.type == "cuda":
        log.info("train_model: peak GPU memory %.2f GiB allocated, %.2f GiB reserved (estimate %.2f GiB)",
                 torch.cuda.max_memory_allocated(hw.device) / 1024**3,
                 torch.cuda.max_memory_reserved(hw.device) / 1024**3, plan["estimate_gib"])
    return state


def finish(cfg: Config, model, data, rows, plan, hw: Hardware, paths: ArtifactPaths, state: dict, logs: TrainingLogs,
           tokenizer, tok_dir: Path, new_token_ids: list[int], seq_len: int) -> dict:
    """Load the best weights, evaluate on the test split, save the model folder."""
    best_dir = paths.checkpoints_dir / "best"
    barrier(hw)
    if (best_dir / "trainable.safetensors").is_file():
        load_trainable(model, best_dir)
    split = "test" if "test" in data else "val"
    test_loss, test_tokens = evaluate_loss(model, data[split], rows[split], plan["micro_batch"], hw, seq_len)
    final = {
        "split": split, "test_loss": test_loss, "test_perplexity": math.exp(min(test_loss, 50.0)),
        "test_tokens": test_tokens, "test_examples": len(data[split]),
        "initial_val_loss": state["initial_val_loss"], "best_val_loss": state["best_val_loss"],
        "best_step": state["best_step"], "steps": state["step"], "stop_reason": state["stop_reason"],
        "tokens_seen": state["tokens_seen"], "train_seconds": round(state["elapsed_s"], 1),
        "mode": cfg.mode, "precision": hw.precision, "device": str(hw.device), "processes": hw.world_size,
        "micro_batch": plan["micro_batch"], "accumulation": plan["accumulation"], "seq_len": seq_len,
        "peak_memory_gib": round(memory_gib(hw), 3),
    }
    if hw.world_size > 1:
        final["ranks_agree"] = ranks_agree(model, hw)
        if not final["ranks_agree"]:
            log.error("train_model: the processes ended with different weights: DDP synchronisation failed")
    if hw.is_main:
        save_model(cfg, model, tokenizer, tok_dir, paths.model_dir, final, new_token_ids)
    barrier(hw)
    return final


def ranks_agree(model, hw: Hardware) -> bool:
    """Whether every process holds the same trained weights (checksums compared across processes)."""
    sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                        for p in model.parameters() if p.requires_grad]).flatten().to(hw.device)
    gathered = [torch.zeros_like(sums) for _ in range(hw.world_size)]
    torch.distributed.all_gather(gathered, sums)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


# ----------------------------------------------------------------------------- the model folder


def save_model(cfg: Config, model, tokenizer, tok_dir: Path, model_dir: Path, final: dict, new_token_ids) -> None:
    info = {"mode": cfg.mode, "base_model": resolve_base(cfg.base_model) if cfg.base_model else None,
            "vocab_size": len(tokenizer), "new_token_ids": [new_token_ids[0], new_token_ids[-1] + 1] if new_token_ids else None,
            "best_step": final["best_step"], "best_val_loss": final["best_val_loss"], "seq_len": final["seq_len"]}
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for extra in tok_dir.iterdir():  # vocab.json, commit_language.json: what prediction reads beside the model
            if extra.is_file() and not (tmp / extra.name).exists():
                shutil.copy2(extra, tmp / extra.name)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if cfg.merge and cfg.mode != "scratch":
            merge_adapter(tmp, tmp / "merged")
    log.info("train_model: saved %s to %s", "the model" if cfg.mode == "scratch" else "the adapter", model_dir)


# ----------------------------------------------------------------------------- the loss curve


def plot_loss_curve(folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (folder / "steps.jsonl").read_text(encoding="utf-8").splitlines() if line]
    train_pts = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val_pts = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
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
    plt.close(fig)
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
    parser.add_argument("--max-steps", type=int, help="override model_training.max_steps")
    parser.add_argument("--seed", type=int, help="override pipeline.seed")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (error if none)")
    group.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    parser.add_argument("--merge", action="store_true", help="also write merged full weights to <model>/merged")
    args = parser.parse_args(argv)
    cfg, pipeline_cfg, paths = load_stage(args, SECTION, Config)
    overrides = {k: v for k, v in {"mode": args.mode, "base_model": args.base_model, "max_steps": args.max_steps}.items()
                 if v is not None}
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
