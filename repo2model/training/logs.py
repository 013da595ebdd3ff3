"""A run's training logs: steps.jsonl and TensorBoard events (cut back to the checkpoint's step on resume), and
the loss curve drawn from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from repo2model.core.artifacts import atomic_path


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
