"""Training-loop throughput against a bare PyTorch loop, and padding waste with packing.

    python bench/bench_train.py [--steps 20] [--repeats 3] [--data outputs/training_data_train.pt]

1. tokens/s of train_model's loop (`repo2model.training.loop.train`: batch assembly, schedule, clipping,
   per-step seeding, logging, the evaluation hook on a 1-row validation split and the final
   checkpoint) against a bare loop - the same tiny LLaMA, initial weights, precision, optimizer and
   the very same batches, collated before timing - alternating runs in one process. Both wall time
   and CPU time of the process are measured: on a machine shared with other jobs CPU time is the
   steadier figure. Target: ratio >= 0.9.
2. Padding waste of the batches train_model forms (packing + length bucketing), on a spread of
   example lengths like dataset_builder's (20..700 tokens, rows of 512), and on a real
   training_data_train.pt if one is given or found. Target: < 5%.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' fixture builders (repo2model itself is installed)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

from repo2model.stages import train_model  # noqa: E402
from repo2model.training.data import choose_seq_len  # noqa: E402
from repo2model.training.model import scratch_config  # noqa: E402
from repo2model.training.packing import (  # noqa: E402
    collate,
    pack_rows,
    padding_share,
    row_lengths,
    row_tokens,
    step_batches,
)
from helpers_models import make_dataset, make_tokenizer  # noqa: E402
from repo2model.language.examples import IGNORE_INDEX, ExampleSet  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402

WORK = ROOT / "bench" / "_work" / "train"
MODEL = dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=344)
BATCH = dict(micro_batch_size=8, effective_batch_size=8, seq_len=256)


def prepare() -> ArtifactPaths:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    tok = make_tokenizer(WORK / "tokenizer", vocab_size=400)
    make_dataset(WORK, tok, n_train=400, n_val=4, n_test=4, context_lines=6)
    return ArtifactPaths.under(WORK)


def timed(function, clock: dict):
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*args, **kwargs)
        clock["wall"], clock["cpu"] = time.perf_counter() - wall, time.process_time() - cpu
        return result
    return wrapper


def loop_run(paths: ArtifactPaths, cfg: train_model.Config) -> tuple[float, float]:
    """(wall, CPU) tokens/s of train_model's training loop."""
    shutil.rmtree(paths.checkpoints_dir, ignore_errors=True)
    clock: dict = {}
    original = train_model.train  # the name the stage's run() calls
    train_model.train = timed(original, clock)
    try:
        final = train_model.run(cfg, paths, seed=3, resume=False)
    finally:
        train_model.train = original
    return final["tokens_seen"] / clock["wall"], final["tokens_seen"] / clock["cpu"]


def bare_run(paths: ArtifactPaths, cfg: train_model.Config) -> tuple[float, float]:
    """The same steps in a minimal loop: forward, loss, backward, clip, step, on pre-collated batches."""
    train = ExampleSet.load(paths.train_data)
    tokenizer = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    seq_len = cfg.seq_len
    rows = pack_rows(train, seq_len, True)
    lengths = row_lengths(train, rows, seq_len)
    micro = cfg.micro_batch_size
    batches, tokens = [], 0
    for step in range(cfg.max_steps):
        (step_rows,) = step_batches(rows, lengths, micro, step, 1, 3, {})
        batches.append(collate(train, step_rows, seq_len, tokenizer.pad_token_id))
        tokens += row_tokens(train, step_rows, seq_len)
    torch.manual_seed(3)
    model = LlamaForCausalLM(scratch_config(cfg, tokenizer, seq_len)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()
    start, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        with autocast:
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)


def waste_figures(real: Path | None) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    sizes = torch.randint(20, 700, (2000,))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    spread = ExampleSet(torch.ones(int(offsets[-1]), dtype=torch.int32), offsets, torch.zeros(2000, dtype=torch.long),
                        ["c"] * 2000, ["t"] * 2000, {})
    figures = []
    for label, examples, seq_len in [("synthetic 20..700 tokens, rows of 1024", spread, 1024)] + (
            [(f"{real}", ExampleSet.load(real), None)] if real else []):
        seq_len = seq_len or choose_seq_len(train_model.Config(), examples)
        for packing in (True, False):
            lengths = row_lengths(examples, pack_rows(examples, seq_len, packing), seq_len)
            naive = [lengths[i] for i in torch.randperm(len(lengths)).tolist()]
            naive_waste = 1 - sum(naive) / sum(max(naive[i:i + 8]) * len(naive[i:i + 8]) for i in range(0, len(naive), 8))
            figures.append((f"{label}, {'packed' if packing else 'one example per row'}, bucketed",
                            padding_share(lengths, 8, seed=1)))
            figures.append((f"{label}, {'packed' if packing else 'one example per row'}, random order", naive_waste))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (1: steadiest on a shared machine)")
    parser.add_argument("--data", type=Path, default=ROOT / "outputs" / "training_data_train.pt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    paths = prepare()
    cfg = train_model.Config(**MODEL, **BATCH, precision=args.precision, num_threads=args.threads, max_steps=args.steps, warmup_steps=2,
                             eval_every=10_000, save_every=10_000, log_every=5, max_minutes=None,
                             early_stopping_patience=0)
    loop, bare = [], []
    bare_run(paths, train_model.Config(**{**cfg.__dict__, "max_steps": 3}))  # warm-up
    for _ in range(args.repeats):
        bare.append(bare_run(paths, cfg))
        loop.append(loop_run(paths, cfg))
    print(f"model: {MODEL}, rows {BATCH['micro_batch_size']} x {BATCH['seq_len']}, {args.steps} steps, "
          f"{args.precision}, {torch.get_num_threads()} threads")
    for kind, index in (("wall", 0), ("CPU", 1)):
        b = sorted(x[index] for x in bare)
        l = sorted(x[index] for x in loop)
        print(f"{kind:4} time: bare loop {', '.join(f'{x:,.0f}' for x in b)} tokens/s; "
              f"train_model {', '.join(f'{x:,.0f}' for x in l)} tokens/s; "
              f"ratio of medians {l[len(l) // 2] / b[len(b) // 2]:.3f}, of bests {l[-1] / b[-1]:.3f} (target >= 0.9)")
    for label, waste in waste_figures(args.data if args.data.is_file() else None):
        print(f"padding waste, {label}: {100 * waste:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
