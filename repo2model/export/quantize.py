"""The f16 GGUF -> q8_0 or q4_k_m, by llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize).

q4_k_m is llama.cpp's "Q4_K - Medium" mix: most matrices Q4_K, the output layer and half of the attention-value
and feed-forward-down matrices Q6_K, the norms f32. K-quants work on rows of 256 values: a matrix whose rows are
not a multiple of 256 wide (hidden sizes below 256, as in the tests' tiny models) falls back to a legacy type
(Q5_0 for Q4_K, Q8_0 for Q6_K), which llama.cpp logs and `tensor_types` reads back.
"""

from __future__ import annotations

import collections
import ctypes
from pathlib import Path

from repo2model.core.artifacts import atomic_path
from repo2model.core.errors import UserError
from repo2model.export import packages

TYPES = ("f16", "q8_0", "q4_k_m")  # file types an export writes; f16 is written directly, the others from it
FTYPE_NAMES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def quantize(f16_path: Path, out_path: Path, file_type: str, threads: int | None = None) -> Path:
    """Write `out_path`, the model of `f16_path` quantized to `file_type` (q8_0 or q4_k_m), atomically."""
    llama_cpp = packages.llama_cpp()
    if file_type not in FTYPE_NAMES:
        raise UserError(f"export.types: {file_type!r} is not a quantized type (choose from {', '.join(FTYPE_NAMES)})")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPE_NAMES[file_type])
    params.nthread = threads or 0  # 0: every core
    with atomic_path(out_path) as tmp:
        status = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            raise UserError(f"export: llama.cpp could not quantize {f16_path} to {file_type} (status {status}); "
                            "its log above says why")
    return out_path


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF file holds, e.g. {"Q4_K": 10, "Q6_K": 3, "F32": 5}."""
    reader = packages.gguf().GGUFReader(str(path))
    return dict(collections.Counter(t.tensor_type.name for t in reader.tensors))
