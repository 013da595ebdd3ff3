"""The machine a run trains on, checked before anything expensive: device and precision (bf16 where the GPU or
CPU has it, fp16 with loss scaling on older GPUs), the packages the settings need, writable output folders;
the processes of a DDP run (barrier, all-reduce, weights compared at the end) and peak memory."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from repo2model.core.artifacts import ensure_folder
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths

if TYPE_CHECKING:  # annotations only: Config belongs to the stage, which imports this package
    from repo2model.stages.train_model import Config


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
        raise UserError("train_model.device: cuda, but PyTorch sees no CUDA GPU: set device: auto (or cpu)")
    use_cuda = cuda and cfg.device != "cpu"
    if cfg.precision == "fp16" and not use_cuda:
        raise UserError("train_model.precision: fp16 needs a CUDA GPU: use bf16 or fp32 on the CPU (or auto)")
    if cfg.precision == "bf16" and use_cuda and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name()
        raise UserError(f"train_model.precision: bf16 is not supported by {name}: use fp16 (or auto)")
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
        raise UserError(f"train_model.{needs} needs bitsandbytes, which is not installed: "
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


def memory_gib(hw: Hardware) -> float:
    if hw.device.type == "cuda":
        return torch.cuda.max_memory_allocated(hw.device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # RSS peak (KiB on Linux)


def ranks_agree(model, hw: Hardware) -> bool:
    """Whether every process holds the same trained weights (checksums compared across processes)."""
    sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                        for p in model.parameters() if p.requires_grad]).flatten().to(hw.device)
    gathered = [torch.zeros_like(sums) for _ in range(hw.world_size)]
    torch.distributed.all_gather(gathered, sums)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])
