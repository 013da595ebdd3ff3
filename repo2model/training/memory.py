"""GPU memory estimate for training a LLaMA-shaped causal LM, and the micro-batch that fits a budget.

    python -m repo2model.training.memory --preset llama-2-7b --mode qlora --seq-len 2048 --budget-gb 8

The estimate is a sum of five terms (bytes; `a` = bytes per element of the
compute dtype, 2 for fp16/bf16 and 4 for fp32; B = micro-batch, S = sequence
length, L = layers, h = hidden size, k = key/value width, f = MLP width,
V = vocabulary):

    weights      frozen or trained parameters as stored:
                   linear layers  P_lin = L (2h^2 + 2hk + 3hf)
                   scratch  4 B/param (fp32 master) + a B/param autocast copy when a = 2
                   lora     a B/param
                   qlora    4.127/8 B/param for P_lin (NF4 + double quantisation, measured),
                            embeddings and head at a B (4 B when prepare_model_for_kbit_training
                            upcasts them), norms fp32
    trainable    the trained parameters P_t: weight 4 + gradient 4 + optimizer state
                 (AdamW 8, 8-bit AdamW 2) bytes each.  P_t is everything for scratch; for
                 (q)lora P_t = L r sum(d_in + d_out) over the target modules, plus 2 h n_new for
                 the new token rows of the embedding and the head.
    activations  per token:
                   kept per layer   with checkpointing: h a (each layer's input) for all L layers
                                    plus two layers' worth (one recomputed, its gradients);
                                    without: every layer's tensors, L (9h + 2k + 4f) a
                   LoRA dropout     p > 0 keeps a dropped copy of each target's input, + 1-byte mask
                   eager attention  without SDPA/flash kernels: the S x S scores, n_heads S (2a + 1)
                   logits           V (a + 12): the logits, their fp32 upcast, log-softmax, gradient
                                    (V (4 + 12) when the head runs in fp32)
    overhead     0.5 GiB: CUDA context, cuBLAS workspaces, allocator slack.

Checked against published LLaMA-2-7B QLoRA figures (tests/test_memory.py and
the README's training section lists them with their sources); the difference stays under 15%.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

GIB = 1024**3
NF4_BITS = 4.127  # bitsandbytes NF4 with double quantisation: 4 bits + 8-bit absmax per 64 weights + fp32 per 256 blocks
OVERHEAD_BYTES = int(0.5 * GIB)

Mode = Literal["scratch", "lora", "qlora"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit"]


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The sizes of a LLaMA-architecture model that memory depends on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a transformers config (LlamaConfig or anything with the same field names)."""
        heads = config.num_attention_heads
        return cls(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    @property
    def kv_width(self) -> int:
        return self.hidden_size // self.num_heads * self.num_kv_heads

    def module_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear module of one decoder layer, by its HF name."""
        h, k, f = self.hidden_size, self.kv_width, self.intermediate_size
        return {
            "q_proj": (h, h),
            "k_proj": (h, k),
            "v_proj": (h, k),
            "o_proj": (h, h),
            "gate_proj": (h, f),
            "up_proj": (h, f),
            "down_proj": (f, h),
        }

    @property
    def linear_params(self) -> int:
        return self.num_layers * sum(i * o for i, o in self.module_dims().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def norm_params(self) -> int:
        return (2 * self.num_layers + 1) * self.hidden_size

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params


PRESETS = {
    "llama-2-7b": ModelShape(4096, 32, 32, 32, 11008, 32000),
    "llama-2-13b": ModelShape(5120, 40, 40, 40, 13824, 32000),
}


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """The settings of a run that memory depends on."""

    mode: Mode = "qlora"
    seq_len: int = 2048
    micro_batch: int = 1
    compute_bytes: int = 2  # 2 for fp16/bf16, 4 for fp32
    lora_rank: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    new_tokens: int = 0
    optimizer: Optimizer = "paged_adamw_8bit"
    gradient_checkpointing: bool = True
    fp32_embeddings: bool = False  # prepare_model_for_kbit_training upcasts embeddings, head and norms
    sdpa: bool = True  # SDPA / flash kernels: no S x S attention matrix kept


@dataclasses.dataclass
class MemoryEstimate:
    weights: int
    trainable: int
    activations: int
    overhead: int
    trainable_params: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations + self.overhead

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def describe(self) -> str:
        parts = ", ".join(
            f"{name} {getattr(self, name) / GIB:.2f}" for name in ("weights", "trainable", "activations", "overhead")
        )
        return f"{self.total_gib:.2f} GiB ({parts} GiB; {self.trainable_params / 1e6:.2f}M trainable parameters)"


def lora_params(shape: ModelShape, setup: TrainingSetup) -> int:
    dims = shape.module_dims()
    per_layer = sum(setup.lora_rank * (dims[t][0] + dims[t][1]) for t in setup.lora_targets if t in dims)
    rows = setup.new_tokens * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    return shape.num_layers * per_layer + rows


def estimate(shape: ModelShape, setup: TrainingSetup) -> MemoryEstimate:
    """Peak training memory on one device for `shape` trained as `setup` (see the module docstring)."""
    a = setup.compute_bytes
    embed_bytes = 4 if setup.fp32_embeddings else a
    if setup.mode == "scratch":
        weights = shape.total_params * (4 + (a if a < 4 else 0))
        trained = shape.total_params
    elif setup.mode == "lora":
        weights = (shape.linear_params + shape.embedding_params) * a + shape.norm_params * 4
        trained = lora_params(shape, setup)
    else:
        weights = int(shape.linear_params * NF4_BITS / 8) + shape.embedding_params * embed_bytes + shape.norm_params * 4
        trained = lora_params(shape, setup)
    optimizer_bytes = 8 if setup.optimizer == "adamw" else 2
    trainable = trained * (4 + 4 + optimizer_bytes)

    tokens = setup.seq_len * setup.micro_batch
    h, k, f = shape.hidden_size, shape.kv_width, shape.intermediate_size
    layer = (9 * h + 2 * k + 4 * f) * a
    if setup.mode != "scratch" and setup.lora_dropout > 0:
        dims = shape.module_dims()
        layer += sum(dims[t][0] for t in setup.lora_targets if t in dims) * (a + 1)
    if not setup.sdpa:
        layer += shape.num_heads * setup.seq_len * (2 * a + 1)
    # The residual stream runs in fp32 once the embeddings are fp32.
    stream = 4 if (setup.fp32_embeddings and setup.mode == "qlora") else a
    if setup.gradient_checkpointing:
        kept = shape.num_layers * h * stream + 2 * layer
    else:
        kept = shape.num_layers * layer + layer
    logits = shape.vocab_size * ((4 if setup.fp32_embeddings else a) + 12)
    activations = tokens * (kept + logits)
    return MemoryEstimate(weights, trainable, activations, OVERHEAD_BYTES, trained)


def largest_micro_batch(shape: ModelShape, setup: TrainingSetup, budget_gb: float, limit: int) -> int:
    """The largest micro-batch in 1..limit whose estimate fits `budget_gb` (GiB); 0 if none does."""
    best = 0
    for micro in range(1, max(1, limit) + 1):
        if estimate(shape, dataclasses.replace(setup, micro_batch=micro)).total_gib <= budget_gb:
            best = micro
        else:
            break
    return best


def setting_to_lower(shape: ModelShape, setup: TrainingSetup, budget_gb: float) -> str:
    """One line naming what to change when even a micro-batch of 1 does not fit."""
    one = estimate(shape, dataclasses.replace(setup, micro_batch=1))
    fixed = (one.weights + one.trainable + one.overhead) / GIB
    need = f"the estimate for micro-batch 1 is {one.total_gib:.1f} GiB, over the {budget_gb:g} GiB budget"
    if fixed > budget_gb:
        fix = "use mode: qlora" if setup.mode != "qlora" else "use a smaller base_model"
        return f"{need}; the weights and optimizer alone take {fixed:.1f} GiB: {fix} (or raise vram_budget_gb)"
    if not setup.gradient_checkpointing:
        return f"{need}: set gradient_checkpointing: true (or lower seq_len)"
    if setup.fp32_embeddings:
        return f"{need}: set prepare_kbit_training: false (or lower seq_len)"
    return f"{need}: lower seq_len (now {setup.seq_len})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Estimate training memory (GiB) for a LLaMA-shaped model.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama-2-7b")
    parser.add_argument("--mode", choices=["scratch", "lora", "qlora"], default="qlora")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--dtype-bytes", type=int, choices=[2, 4], default=2)
    parser.add_argument("--optimizer", choices=["adamw", "adamw_8bit", "paged_adamw_8bit"], default="paged_adamw_8bit")
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--prepare-kbit", action="store_true", help="embeddings/head/norms upcast to fp32")
    parser.add_argument("--budget-gb", type=float, default=None)
    args = parser.parse_args(argv)
    shape = PRESETS[args.preset]
    for seq_len in args.seq_len:
        setup = TrainingSetup(
            mode=args.mode, seq_len=seq_len, micro_batch=args.micro_batch, compute_bytes=args.dtype_bytes,
            lora_rank=args.rank, lora_dropout=args.dropout, optimizer=args.optimizer,
            gradient_checkpointing=not args.no_checkpointing, fp32_embeddings=args.prepare_kbit,
        )
        line = f"{args.preset} {args.mode} seq {seq_len} x {args.micro_batch}: {estimate(shape, setup).describe()}"
        if args.budget_gb:
            line += f"; largest micro-batch in {args.budget_gb:g} GiB: {largest_micro_batch(shape, setup, args.budget_gb, 64)}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
