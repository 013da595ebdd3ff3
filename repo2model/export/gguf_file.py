"""A full LLaMA model and its vocabulary -> an f16 GGUF file (gguf's GGUFWriter and its tensor names for llama).

What llama.cpp's LLaMA reads, and where it differs from transformers:
    hyper-parameters  context length (the model's positions), embedding / feed-forward width, blocks, heads
                      (and key/value heads), rotary dimension and base, RMS-norm epsilon, vocabulary size
    tensors           named by gguf's map (model.layers.0.self_attn.q_proj.weight -> blk.0.attn_q.weight);
                      matrices f16, vectors (the norms) f32, as llama.cpp's converter writes them
    q and k           permuted back to the interleaved rotary layout of the original LLaMA: transformers
                      rotates the two halves of each head, llama.cpp adjacent pairs
    tied embeddings   no output.weight: llama.cpp then uses token_embd as the output layer
Only the LLaMA architecture without biases and with default rotary embeddings is written; anything else is
refused in one line rather than written wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repo2model.core.artifacts import atomic_path
from repo2model.core.errors import UserError
from repo2model.export import packages
from repo2model.export.vocabulary import Vocabulary


def write_gguf(model: Any, vocabulary: Vocabulary, path: Path, name: str) -> Path:
    """Write `model` (LlamaForCausalLM) with `vocabulary` to `path` as f16 GGUF, atomically."""
    gguf = packages.gguf()
    config = model.config
    check_architecture(config)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        add_hyperparameters(writer, config, len(vocabulary.tokens), name, gguf.LlamaFileType.MOSTLY_F16)
        vocabulary.add_to(writer)
        for tensor_name, array in gguf_tensors(model, gguf):
            writer.add_tensor(tensor_name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def check_architecture(config: Any) -> None:
    rope = rope_settings(config)
    problems = []
    if rope.get("rope_type", "default") not in ("default", None):
        problems.append(f"rotary scaling {rope.get('rope_type')!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("biases in attention or MLP")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"activation {config.hidden_act!r}")
    if problems:
        raise UserError(f"export: the model has {', '.join(problems)}, which this exporter does not write for "
                        "llama.cpp's LLaMA (train_model's models have none)")


def rope_settings(config: Any) -> dict:
    """The rotary settings: transformers 5's rope_parameters, else the older rope_theta / rope_scaling."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        return params
    scaling = getattr(config, "rope_scaling", None) or {}
    return {"rope_theta": getattr(config, "rope_theta", 10000.0), "rope_type": scaling.get("rope_type", "default")}


def add_hyperparameters(writer: Any, config: Any, n_vocab: int, name: str, file_type: int) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_settings(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(n_vocab)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)


def gguf_tensors(model: Any, gguf: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, array) of every weight: matrices f16, vectors f32; q and k permuted."""
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"export: the model has a tensor llama.cpp's LLaMA has no place for ({hf_name})")
        tensor = tensor.detach()
        if hf_name.endswith("self_attn.q_proj.weight"):
            tensor = interleave_rotary_halves(tensor, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            tensor = interleave_rotary_halves(tensor, kv_heads)
        dtype = torch.float16 if tensor.dim() >= 2 else torch.float32
        yield gguf_name, tensor.to(dtype).contiguous().numpy()


def interleave_rotary_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection from transformers' rotary layout (each head's first half, then its second) to
    the original LLaMA's (pairs of adjacent rows): the inverse of what transformers' conversion script does."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))
