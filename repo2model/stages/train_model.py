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

The recipe, in the order `run()` calls it, each step from its module of repo2model/training/:
validate (hardware.py: device, precision, packages, writable outputs; warm_start.py: the model to
continue; all before anything expensive) -> setup (training_run.py: data, tokenizer, batch plan,
model, optimizer: a `TrainingRun`) -> restore a checkpoint (checkpoints.py: a `TrainState`) ->
train (loop.py: `train_step` per optimizer step, evaluations, checkpoints; logs.py) -> finish
(loop.py: the best weights' test loss) -> save (checkpoints.py: the model folder).

Features, and the keys of the `train_model` section that switch them:

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
  with a fresh optimizer and a short schedule: update_epochs passes (3.0) over the update's training examples
  (the new ones and the replayed ones), at most update_max_steps steps (null update_epochs: those steps)
  (instead of max_steps and max_epochs), within update_max_minutes (null = max_minutes), update_warmup_steps of
  warm-up, update_learning_rate (null = learning_rate); the starting weights are the first best, so steps that
  never beat them on the validation split leave them as they were (with a warning).
  The tokenizer must be
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
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Literal

from repo2model.core.artifacts import require, write_json
from repo2model.core.cli import (
    add_config_argument,
    apply_overrides,
    load_stage,
    user_errors_to_exit,
)
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths, tokenizer_dir_for_vocab
from repo2model.language.tokenizer_folder import load_commit_tokenizer
from repo2model.training.checkpoints import restore_checkpoint, save_model
from repo2model.training.hardware import barrier, check_outputs_writable, check_packages, setup_hardware
from repo2model.training.logs import TrainingLogs, plot_loss_curve
from repo2model.training.loop import finish, train
from repo2model.training.model import ALL_LINEAR
from repo2model.training.training_run import setup
from repo2model.training.warm_start import check_warm_start, read_warm_start, with_update_schedule

SECTION = "train_model"
CODE = ("core", "language", "training")  # the packages it runs (its fingerprint covers them)
log = logging.getLogger("train_model")


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
    # 3 passes (bench/bench_update.py --shipped, fd, 13 new + 13 replayed examples): 10 steps, the new commits'
    # loss 0.964x a fresh model's and the old test split's 0.984x of the base's; with 100 steps it ran 74 (23 passes,
    # its 5-minute cap), none beat the starting weights on the validation split, and it took as long as a full training
    update_epochs: float | None = 3.0
    update_max_steps: int = 100
    update_max_minutes: float | None = None
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
        for name in ("max_minutes", "max_epochs", "update_epochs", "update_max_minutes"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive (or null)")
        if self.update_learning_rate is not None and self.update_learning_rate <= 0:
            raise ValueError("update_learning_rate: must be positive (or null)")
        if self.update_warmup_steps < 0:
            raise ValueError("update_warmup_steps: must not be negative")


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.train_data, paths.val_data, paths.test_data, paths.tokenizer_dir]


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.model_dir, paths.training_logs / "final_eval.json"]


def input_state(cfg: Config, paths: ArtifactPaths) -> str:
    base = Path(cfg.base_model).expanduser() if cfg.base_model else None
    if base is not None and base.is_dir():
        return f"{base}:" + ":".join(f"{p.name}={p.stat().st_size}" for p in sorted(base.glob("*")) if p.is_file())
    return str(cfg.base_model)


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
        save_model(training, final)
        write_json(paths.training_logs / "final_eval.json", final)
        plot_loss_curve(paths.training_logs)
    log.info("train_model: %d steps (%s), val loss %.3f -> best %.3f at step %d, test loss %.3f (perplexity %.1f); "
             "model in %s", final["steps"], final["stop_reason"], final["initial_val_loss"], final["best_val_loss"],
             final["best_step"], final["test_loss"], final["test_perplexity"], paths.model_dir)
    if final["warm_start"] and final["best_step"] == 0:
        log.warning("train_model: no step of the warm start beat its starting weights on the validation split "
                    "(%.3f): the model keeps them (fewer update_epochs or a lower update_learning_rate may help)",
                    final["initial_val_loss"])
    barrier(hw)
    return final


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
    parser.add_argument("--mode", choices=["scratch", "lora", "qlora"], help="override train_model.mode")
    parser.add_argument("--base-model", help="override train_model.base_model")
    parser.add_argument("--max-steps", type=int, help="override train_model.max_steps (update_max_steps with a warm "
                        "start)")
    parser.add_argument("--warm-start", type=Path, help="continue from this model folder (override train_model."
                        "warm_start): its weights, a fresh short schedule (update_epochs, at most update_max_steps "
                        "steps, update_learning_rate)")
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
