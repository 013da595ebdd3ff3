"""The 8 GB promise at LLaMA-2-7B's real shapes: QLoRA under an 8 GiB cap, with train_model's own step.

    python bench/bench_gpu_qlora.py [--steps 20] [--cap-gib 8] [--json results.json]   # a CUDA GPU
    python bench/bench_gpu_qlora.py --tiny                                             # CPU, seconds (CI)

Peak memory does not depend on the weights' values, so a model with LLaMA-2-7B's exact
configuration (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32,000) and random fp16
weights stands in for the gated real one. It is saved once to `<work>/base` (13.5 GB on disk; built
on the GPU in a child process, reused by later runs), so loading goes through the very code path a
user's `train_model.base_model` takes. A stand-in tokenizer with 32,000 tokens is extended with
our special tokens exactly as the tokenizer stage extends LLaMA-2's (the profile's top_authors /
top_modules), and synthetic training data fills every row of the profile's sequence length.

Then, in this process:
1. `torch.cuda.set_per_process_memory_fraction` caps PyTorch's allocator at --cap-gib (8). What
   the card holds besides - the CUDA context and libraries, outside the allocator - is measured
   and printed: on an 8 GB card it comes off the same 8 GiB.
2. `hardware.setup_hardware` / `training_run.setup` (repo2model/training/) with the shipped profile
   configs/rtx2060-llama2-7b-qlora.yaml (only base_model pointed at the stand-in): NF4 with double
   quantisation (BitsAndBytesConfig), the embeddings resized for the new tokens, LoRA on all linear
   layers, trainable new-token rows, checkpointing, paged 8-bit AdamW, fp16 with dynamic loss
   scaling as on Turing even where bf16 exists, and the micro-batch / accumulation that
   vram_budget_gb picks from repo2model/training/memory.py.
   On a GPU newer than Turing, SDPA is kept off FlashAttention (Turing has none) so attention uses
   the memory-efficient kernel the 2060 would use.
3. `loop.train_step` (the stage's own optimizer step, not a copy) for --steps steps.

Prints peak allocated and reserved memory (loading and training apart), the memory outside the
allocator, tokens/s and seconds per step, and the estimator's figure beside the measured peak with
their ratio. Targets: peak reserved at most 7.5 GiB under the 8 GiB cap with no OOM over
20 steps; the estimate within 10% of the measured peak.

`--tiny` runs the same path at tiny shapes on the CPU (fp16 autocast + loss scaling on the CPU's
kernels; RSS instead of GPU memory), so tests/test_train_model.py keeps it working in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import bitsandbytes as bnb  # noqa: E402
import torch  # noqa: E402
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast  # noqa: E402

from repo2model.stages import train_model  # noqa: E402
from repo2model.training.hardware import Hardware, check_outputs_writable, check_packages, setup_hardware  # noqa: E402
from repo2model.training.loop import train_step  # noqa: E402
from repo2model.training.training_run import TrainingRun, setup  # noqa: E402
from repo2model.language.commit_language import CommitLanguage  # noqa: E402
from repo2model.language.tokens import BOS, EOS, PAD  # noqa: E402
from repo2model.core.config import load_config, load_yaml  # noqa: E402
from repo2model.language.examples import ExampleSet  # noqa: E402
from repo2model.training.memory import GIB  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402

PROFILE = ROOT / "configs" / "rtx2060-llama2-7b-qlora.yaml"
WORK = ROOT / "bench" / "_work" / "gpu_qlora"
TARGET_RESERVED_GIB = 7.5

# meta-llama/Llama-2-7b-hf's config.json, apart from the weights' values.
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 rope_theta=10000.0, hidden_act="silu", initializer_range=0.02, tie_word_embeddings=False,
                 bos_token_id=1, eos_token_id=2, pad_token_id=None)
# The same architecture at toy size (bitsandbytes' CPU NF4 kernels want >= 64 input features).
TINY = dict(LLAMA2_7B, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
TINY_SEQ_LEN = 64
TINY_EFFECTIVE_BATCH = 2  # micro-batch 1 x accumulation 2: the profile's structure, at CI speed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, default=PROFILE, help="the training profile (its train_model section)")
    parser.add_argument("--work", type=Path, default=WORK, help="folder for the stand-in base model and data")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 20; --tiny 2)")
    parser.add_argument("--cap-gib", type=float, default=8.0, help="PyTorch allocator cap, GiB (the card's memory)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: the same path, for CI")
    parser.add_argument("--rebuild", action="store_true", help="build the stand-in base model again")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--build-base-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shape = TINY if args.tiny else LLAMA2_7B
    base_dir = args.work / ("base-tiny" if args.tiny else "base")
    if args.build_base_only:
        build_base(base_dir, shape)
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("error: no CUDA GPU here: this benchmark measures GPU memory (use --tiny for the CPU path)",
              file=sys.stderr)
        return 2
    steps = args.steps or (2 if args.tiny else 20)

    cfg, top_authors, top_modules = profile_settings(args.profile, base_dir, args.tiny)
    if args.rebuild or not base_ready(base_dir, shape):
        if args.tiny:
            build_base(base_dir, shape)
        else:  # in a child process: this one's GPU memory and allocator stay untouched until the measurement
            subprocess.run([sys.executable, __file__, "--build-base-only", "--work", str(args.work)], check=True)
    paths = ArtifactPaths.under(args.work / ("out-tiny" if args.tiny else "out"))
    seq_len = cfg.seq_len or 2048
    vocab = make_tokenizer(paths.tokenizer_dir, shape["vocab_size"], top_authors, top_modules)
    rows = steps * cfg.effective_batch_size
    make_data(paths, vocab, seq_len, rows, args.seed)

    figures = measure(cfg, paths, steps, args.cap_gib, args.seed, args.tiny)
    figures.update(profile=str(args.profile), steps=steps, shape="tiny" if args.tiny else "llama-2-7b",
                   vocab_size=vocab, seq_len=seq_len)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------- the stand-ins


def profile_settings(profile: Path, base_dir: Path, tiny: bool) -> tuple[train_model.Config, int, int]:
    """The profile's train_model section, its base model replaced by the stand-in; its tokenizer family sizes."""
    cfg = load_config(profile, {train_model.SECTION: train_model.Config}, strict_sections=False)[train_model.SECTION]
    cfg = dataclasses.replace(cfg, base_model=str(base_dir), max_minutes=None)
    if tiny:
        cfg = dataclasses.replace(cfg, device="cpu", seq_len=TINY_SEQ_LEN, micro_batch_size=1,
                                  effective_batch_size=TINY_EFFECTIVE_BATCH)
    tokenizer = load_yaml(profile).get("tokenizer") or {}
    return cfg, int(tokenizer.get("top_authors", 32)), int(tokenizer.get("top_modules", 64))


def base_ready(base_dir: Path, shape: dict) -> bool:
    marker = base_dir / "bench_shape.json"
    return marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == shape


def build_base(base_dir: Path, shape: dict) -> None:
    """Random fp16 weights of `shape`, saved with save_pretrained (built on a GPU with room for them, else the CPU)."""
    device = "cpu"
    if torch.cuda.is_available() and torch.cuda.mem_get_info()[0] > 20 * GIB:
        device = "cuda"  # initialising 6.7B parameters takes seconds there, minutes on the CPU
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=torch.float16)
    shutil.rmtree(base_dir, ignore_errors=True)
    model.save_pretrained(str(base_dir))
    (base_dir / "bench_shape.json").write_text(json.dumps(shape), encoding="utf-8")
    print(f"stand-in base model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, fp16, "
          f"built on {device} and saved to {base_dir} in {time.perf_counter() - started:.0f} s")


def make_tokenizer(folder: Path, base_vocab: int, top_authors: int, top_modules: int) -> int:
    """A word-level tokenizer of `base_vocab` tokens (<unk>, <s>, </s>, ... as LLaMA-2's) extended with our tokens.

    Only the vocabulary's size matters here (the embedding and head rows, the logits); the
    special tokens are the commit language's, added as the tokenizer stage adds them (extend mode).
    """
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(base_vocab - 3)]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    lang = CommitLanguage(authors=[f"author{i}" for i in range(top_authors)],
                          modules=[f"crate{i}" for i in range(top_modules)])
    new = [t for t in lang.special_tokens() if t not in (PAD, BOS, EOS)] + [PAD]  # LLaMA-2 has no pad token
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    tokenizer.pad_token = PAD
    lang.tokenizer_info = {"mode": "extend", "base_tokenizer": "bench stand-in", "base_vocab_size": base_vocab,
                           "vocab_size": len(tokenizer), "added_tokens": len(tokenizer) - base_vocab}
    shutil.rmtree(folder, ignore_errors=True)
    tokenizer.save_pretrained(str(folder))
    lang.save(folder)
    return len(tokenizer)


def make_data(paths: ArtifactPaths, vocab: int, seq_len: int, rows: int, seed: int) -> None:
    """`rows` training examples of exactly seq_len tokens (every packed row full), one each for val and test.

    Ids are drawn over the whole extended vocabulary, so the new tokens' rows get gradients; the
    last quarter of each example is its target, as dataset_builder's target_window does.
    """
    generator = torch.Generator().manual_seed(seed)
    for split, n in (("train", rows), ("val", 1), ("test", 1)):
        ids = torch.randint(3, vocab, (n * seq_len,), generator=generator, dtype=torch.int32)
        ids[::seq_len] = 1  # <s> opens each example
        ExampleSet(
            input_ids=ids, offsets=torch.arange(n + 1, dtype=torch.int64) * seq_len,
            target_starts=torch.full((n,), seq_len - seq_len // 4, dtype=torch.int64),
            commits=[f"{i:040x}" for i in range(n)], timestamps=["2024-01-01T00:00:00+00:00"] * n,
            meta={"split": split, "tokenizer_dir": str(paths.tokenizer_dir), "pad_token_id": vocab - 1,
                  "bos_token_id": 1, "eos_token_id": 2, "context_window": seq_len, "target_window": seq_len // 4,
                  "vocab_size": vocab},
        ).save(paths.split_data(split))


# ----------------------------------------------------------------------------- the measurement


def measure(cfg: train_model.Config, paths: ArtifactPaths, steps: int, cap_gib: float, seed: int, tiny: bool) -> dict:
    figures: dict = {}
    if tiny:
        # setup_hardware refuses fp16 without a GPU; the CPU's fp16 kernels run the same loss-scaling path.
        hw = Hardware(torch.device("cpu"), "fp16")
    else:
        total = torch.cuda.mem_get_info()[1]
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))
        hw = setup_hardware(cfg)  # the stage's own validation: device cuda, precision fp16
        figures.update(device=torch.cuda.get_device_name(hw.device), device_total_gib=total / GIB, cap_gib=cap_gib)
    check_packages(cfg)
    check_outputs_writable(paths)
    with turing_attention(hw):
        started = time.perf_counter()
        run = setup(cfg, paths, hw, seed)
        figures["load_s"] = time.perf_counter() - started
        figures.update(memory_figures(hw, "load"))
        figures.update(describe_run(run))
        figures.update(micro_batch=run.plan.micro_batch, accumulation=run.plan.accumulation,
                       estimate_gib=run.plan.estimate_gib,
                       estimate_parts_gib={k: v / GIB for k, v in dataclasses.asdict(run.plan.estimate).items()
                                           if k != "trainable_params"} if run.plan.estimate else None)
        if hw.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(hw.device)
        step_seconds, tokens, losses, device_used = [], [], [], []
        scales = [run.scaler.get_scale() if run.scaler else None]  # the initial scale, then after each step
        for step in range(steps):
            started = time.perf_counter()
            result = train_step(run, step)
            if hw.device.type == "cuda":
                torch.cuda.synchronize(hw.device)
                free, total = torch.cuda.mem_get_info(hw.device)
                device_used.append((total - free) / GIB)
            step_seconds.append(time.perf_counter() - started)
            tokens.append(result.tokens)
            losses.append(result.loss)
            scales.append(run.scaler.get_scale() if run.scaler else None)
            print(f"step {step + 1}/{steps}: loss {result.loss:.3f}, {step_seconds[-1]:.2f} s, "
                  f"{result.tokens / step_seconds[-1]:,.0f} tokens/s" + (f", loss scale {scales[-1]:g}" if run.scaler else ""))
    figures.update(memory_figures(hw, "train"))
    if device_used:
        figures["device_used_peak_gib"] = max(device_used)  # every process and library, as nvidia-smi counts
    # The first step pays one-off costs (kernels, cuBLAS workspaces, the optimizer's state): timed apart.
    later = slice(1, None) if steps > 1 else slice(None)
    figures.update(
        first_step_s=step_seconds[0], seconds_per_step=sum(step_seconds[later]) / len(step_seconds[later]),
        tokens_per_s=sum(tokens[later]) / sum(step_seconds[later]), tokens_per_step=tokens[-1],
        losses=losses, loss_scales=scales[1:],
        # GradScaler halves its scale exactly when it skips a step for inf/NaN gradients.
        skipped_steps=sum(1 for a, b in zip(scales, scales[1:]) if b is not None and b < a),
        finite=all(math.isfinite(x) for x in losses),
    )
    if hw.device.type == "cuda":
        reserved = max(figures["load_peak_reserved_gib"], figures["train_peak_reserved_gib"])
        figures["peak_reserved_gib"] = reserved
        figures["measured_gib"] = reserved + figures["outside_allocator_gib"]
        figures["estimate_ratio"] = figures["estimate_gib"] / figures["measured_gib"]
        figures["fits"] = reserved <= TARGET_RESERVED_GIB
    else:
        figures["estimate_ratio"] = None  # the estimator models GPU memory: nothing to compare on the CPU
    return figures


def describe_run(run: TrainingRun) -> dict:
    """What was set up: the proof that the path is the QLoRA one (NF4 + double quantisation, paged 8-bit AdamW, ...)."""
    quantized = [m for m in run.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    state = quantized[0].weight.quant_state if quantized else None
    return {"linear4bit_layers": len(quantized), "quant_type": state.quant_type if state else None,
            "double_quant": bool(state is not None and state.nested), "optimizer": type(run.optimizer).__name__,
            "precision": run.hw.precision, "loss_scaling": run.scaler is not None,
            "new_token_rows": len(run.new_token_ids),
            "trained_parameters": sum(p.numel() for p in run.trained_parameters),
            "checkpointing": checkpointing(run.model)}


def checkpointing(model) -> bool:
    """Whether activation checkpointing is on (transformers 5 renamed the attribute; the old name warns)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or hasattr(getattr(model, "base_model", None), name):
            return bool(getattr(model, name))
    return False


def turing_attention(hw: Hardware):
    """SDPA without FlashAttention on GPUs that have it: Turing's memory-efficient kernel, as on the 2060."""
    if hw.device.type == "cuda" and torch.cuda.get_device_capability(hw.device) >= (8, 0):
        return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    return contextlib.nullcontext()


def memory_figures(hw: Hardware, phase: str) -> dict:
    if hw.device.type != "cuda":
        return {f"{phase}_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    free, total = torch.cuda.mem_get_info(hw.device)
    figures = {f"{phase}_peak_allocated_gib": torch.cuda.max_memory_allocated(hw.device) / GIB,
               f"{phase}_peak_reserved_gib": torch.cuda.max_memory_reserved(hw.device) / GIB}
    if phase == "load":
        # Device memory in use that PyTorch's allocator does not hold: the CUDA context, library code, and
        # bitsandbytes' paged (managed) memory. It is not under the cap, but an 8 GB card pays it too.
        figures["outside_allocator_gib"] = (total - free - torch.cuda.memory_reserved(hw.device)) / GIB
    return figures


def report(f: dict) -> None:
    print()
    print(f"set-up: {f['linear4bit_layers']} NF4 layers ({f['quant_type']}, double quantisation {f['double_quant']}), "
          f"{f['trained_parameters'] / 1e6:.1f}M trained parameters ({f['new_token_rows']} new token rows), "
          f"{f['optimizer']}, {f['precision']}{' with loss scaling' if f['loss_scaling'] else ''}, "
          f"checkpointing {f['checkpointing']}")
    print(f"shape {f['shape']}, vocabulary {f['vocab_size']:,}, sequence {f['seq_len']}, micro-batch {f['micro_batch']} "
          f"x accumulation {f['accumulation']}, {f['steps']} steps (profile {Path(f['profile']).name})")
    if "device" in f:
        print(f"device: {f['device']} ({f['device_total_gib']:.1f} GiB), PyTorch allocator capped at {f['cap_gib']:g} GiB")
        print(f"outside the allocator (CUDA context, libraries): {f['outside_allocator_gib']:.2f} GiB "
              "- on an 8 GB card this comes off the same memory, with what the driver and a display keep")
        print(f"loading: {f['load_s']:.0f} s, peak allocated {f['load_peak_allocated_gib']:.2f} GiB, "
              f"reserved {f['load_peak_reserved_gib']:.2f} GiB")
        print(f"training: peak allocated {f['train_peak_allocated_gib']:.2f} GiB, reserved "
              f"{f['train_peak_reserved_gib']:.2f} GiB; device in use at most {f.get('device_used_peak_gib', 0):.2f} GiB")
        print(f"peak reserved {f['peak_reserved_gib']:.2f} GiB: {'within' if f['fits'] else 'OVER'} the "
              f"{TARGET_RESERVED_GIB} GiB target")
        print(f"estimate (repo2model/training/memory.py) {f['estimate_gib']:.2f} GiB vs measured (peak reserved + outside the "
              f"allocator) {f['measured_gib']:.2f} GiB: ratio {f['estimate_ratio']:.3f} (target 0.9-1.1)")
    else:
        print(f"CPU: loading {f['load_s']:.1f} s, peak RSS {f['train_peak_rss_gib']:.2f} GiB; estimate for a GPU "
              f"{f['estimate_gib']:.3f} GiB (not comparable on the CPU)")
    print(f"speed: {f['tokens_per_s']:,.0f} tokens/s, {f['seconds_per_step']:.2f} s per optimizer step "
          f"({f['tokens_per_step']:,} tokens; first step {f['first_step_s']:.2f} s); loss {f['losses'][0]:.3f} -> "
          f"{f['losses'][-1]:.3f}, {f['skipped_steps']} step(s) skipped by the loss scaler")


if __name__ == "__main__":
    sys.exit(main())
