"""train_model: tiny real LLaMA models trained for a few steps on the CPU, offline, in tmp_path."""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from repo2model.stages import train_model
from repo2model.training.data import find_tokenizer
from repo2model.training.hardware import Hardware, setup_hardware
from repo2model.training.loop import evaluate_loss, token_loss_sum, validation_loss
from repo2model.training.model import build_model, scratch_config
from repo2model.training.optimizer import build_optimizer, learning_rate
from repo2model.training.packing import collate, pack_rows, padding_share, row_lengths, step_batches
from repo2model.training.training_run import setup
from repo2model.training.warm_start import read_warm_start, with_update_schedule
from repo2model.core.errors import UserError
from repo2model.language.examples import IGNORE_INDEX, ExampleSet
from repo2model.training.models import load_base_for_adapter, load_trained_model
from repo2model.core.paths import ArtifactPaths
from repo2model.language.tokenizer_folder import tokenizer_digest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_models import (  # noqa: E402
    extend_tokenizer,
    make_base_model,
    make_dataset,
    make_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, micro_batch_size=4,
            effective_batch_size=8, warmup_steps=2, max_minutes=None, num_threads=1)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A trained BPE tokenizer and train/val/test splits, built once."""
    root = tmp_path_factory.mktemp("shared")
    tok = make_tokenizer(root / "tokenizer")
    make_dataset(root, tok)
    return root


def outputs(shared: Path, tmp_path: Path) -> ArtifactPaths:
    out = tmp_path / "outputs"
    out.mkdir(parents=True)
    for name in ("training_data_train.pt", "training_data_val.pt", "training_data_test.pt"):
        shutil.copy(shared / name, out / name)
    shutil.copytree(shared / "tokenizer", out / "tokenizer")
    return ArtifactPaths.under(out)


def read_steps(paths: ArtifactPaths) -> list[dict]:
    return [json.loads(line) for line in (paths.training_logs / "steps.jsonl").read_text().splitlines()]


def write_config(path: Path, output_dir: Path, **training) -> Path:
    path.write_text(yaml.safe_dump({"pipeline": {"output_dir": str(output_dir), "seed": 7},
                                    "train_model": training}))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_hw(precision: str = "fp32") -> Hardware:
    return Hardware(torch.device("cpu"), precision)


# ----------------------------------------------------------------------------- packing


def test_packing_fills_rows_and_places_every_example_once(shared):
    examples = ExampleSet.load(shared / "training_data_train.pt")
    rows = pack_rows(examples, 256, packing=True)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(len(examples)))
    lengths = examples.lengths().tolist()
    assert all(sum(lengths[i] for i in row) <= 256 for row in rows)
    assert len(rows) < len(examples) / 2  # short examples share rows
    # A realistic spread of lengths: the waste in training order stays under 5%.
    torch.manual_seed(0)
    sizes = torch.randint(20, 700, (400,))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    varied = ExampleSet(torch.ones(int(offsets[-1]), dtype=torch.int32), offsets, torch.zeros(400, dtype=torch.long),
                        ["c"] * 400, ["t"] * 400, {})
    packed = pack_rows(varied, 1024, packing=True)
    assert padding_share(row_lengths(varied, packed, 1024), 8, seed=1) < 0.05
    # One example per row, length-bucketed: little waste; the same rows in plain random order waste a lot.
    unpacked = row_lengths(varied, pack_rows(varied, 1024, packing=False), 1024)
    assert padding_share(unpacked, 8, seed=1) < 0.05
    shuffled = [unpacked[i] for i in torch.randperm(400).tolist()]  # what the bucketing avoids
    assert 1 - sum(unpacked) / sum(max(shuffled[i:i + 8]) * 8 for i in range(0, 400, 8)) > 0.2


def test_collate_masks_context_and_restarts_positions(shared):
    examples = ExampleSet.load(shared / "training_data_train.pt")
    batch = collate(examples, [[0, 1], [2]], 256, pad_id=0)
    n0, n1, n2 = (int(examples.lengths()[i]) for i in range(3))
    labels, positions = batch["labels"], batch["position_ids"]
    assert batch["input_ids"].shape == (2, n0 + n1)
    assert positions[0, :n0].tolist() == list(range(n0)) and positions[0, n0:].tolist() == list(range(n1))
    start0, start1 = int(examples.target_starts[0]), int(examples.target_starts[1])
    assert (labels[0, :start0] == IGNORE_INDEX).all()
    assert labels[0, start0:n0].tolist() == examples.ids(0)[start0:].tolist()
    assert labels[0, n0] == IGNORE_INDEX and labels[0, n0 + start1:].tolist() == examples.ids(1)[start1:].tolist()
    assert (labels[1, n2:] == IGNORE_INDEX).all() and (batch["input_ids"][1, n2:] == 0).all()


def test_packed_loss_equals_the_examples_alone(shared):
    """Position ids restart per example, so attention does not cross examples: packing changes no loss."""
    examples = ExampleSet.load(shared / "training_data_val.pt")
    tokenizer = AutoTokenizer.from_pretrained(str(shared / "tokenizer"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(scratch_config(train_model.Config(**TINY), tokenizer, 256)).eval()
    hw = cpu_hw()
    with torch.no_grad():
        packed, n_packed = token_loss_sum(model, collate(examples, [[0, 1, 2]], 256, 0), hw)
        alone = [token_loss_sum(model, collate(examples, [[i]], 256, 0), hw) for i in range(3)]
    assert n_packed == sum(n for _, n in alone)
    assert float(packed) == pytest.approx(sum(float(loss) for loss, _ in alone), rel=1e-5)


def test_data_order_is_a_function_of_the_step():
    rows = [[i] for i in range(10)]
    lengths = [5, 9, 1, 7, 3, 8, 2, 6, 4, 10]
    first = [step_batches(rows, lengths, 3, s, 2, seed=3, cache={}) for s in range(6)]
    again = [step_batches(rows, lengths, 3, s, 2, seed=3, cache={}) for s in (5, 2, 0, 1, 4, 3)]
    assert again == [first[s] for s in (5, 2, 0, 1, 4, 3)]
    epoch0 = [b for s in range(2) for b in first[s]]  # 4 micro-batches of 3, 3, 3 and 1 rows
    assert [len(b) for b in epoch0] == [3, 3, 3, 1]
    assert sorted(r[0] for b in epoch0 for r in b) == list(range(10))  # each row once per epoch
    assert all(len(b) == 3 for b in first[2])  # the next epoch starts with full micro-batches again
    assert first[0] != step_batches(rows, lengths, 3, 0, 2, seed=4, cache={})  # the seed matters
    # Length bucketing: the rows of a micro-batch have neighbouring lengths.
    for batch in epoch0[:3]:
        spread = [lengths[r[0]] for r in batch]
        assert max(spread) - min(spread) == len(batch) - 1


def test_cosine_schedule_with_warmup():
    cfg = train_model.Config(learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(1e-4)
    assert lrs[55] == pytest.approx(1e-4 + 0.9e-3 * 0.5)


# ----------------------------------------------------------------------------- scratch


def test_scratch_trains_logs_and_reloads(shared, tmp_path):
    paths = outputs(shared, tmp_path)
    cfg = train_model.Config(**TINY, precision="fp32", max_steps=30, eval_every=10, save_every=10,
                             learning_rate=3e-3)
    final = train_model.run(cfg, paths, seed=5)

    assert final["best_val_loss"] < final["initial_val_loss"] - 1.0
    assert final["test_perplexity"] == pytest.approx(math.exp(final["test_loss"]))
    assert final["padding_waste"] < 0.05
    saved = json.loads((paths.training_logs / "final_eval.json").read_text())
    assert saved["test_loss"] == final["test_loss"]
    steps = read_steps(paths)
    assert [r["step"] for r in steps if "val_loss" in r] == [0, 10, 20, 30]
    assert all({"loss", "lr", "tokens_per_s", "memory_gib"} <= r.keys() for r in steps if r["step"] % 5 == 0 and r["step"])
    assert (paths.training_logs / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert list((paths.training_logs / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in paths.checkpoints_dir.iterdir()) == ["best", "step-000020", "step-000030"]
    assert (paths.model_dir / "model.safetensors").is_file() and (paths.model_dir / "tokenizer.json").is_file()

    model, tokenizer = load_trained_model(paths.model_dir)
    assert not model.training and len(tokenizer) == model.config.vocab_size
    test = ExampleSet.load(paths.test_data)
    loss, _ = evaluate_loss(model, test, pack_rows(test, final["seq_len"], True), 4, cpu_hw(),
                                        final["seq_len"])
    assert loss == pytest.approx(final["test_loss"], abs=1e-4)


def test_early_stopping_keeps_the_best_weights(shared, tmp_path):
    paths = outputs(shared, tmp_path)
    # Only an improvement by 10 nats counts: the first evaluation is the best, two more end the run.
    cfg = train_model.Config(**TINY, precision="fp32", max_steps=40, eval_every=2, save_every=2,
                             learning_rate=3e-3, early_stopping_patience=2, early_stopping_min_delta=10.0)
    final = train_model.run(cfg, paths, seed=5)
    assert final["stop_reason"] == "early_stopping"
    assert final["best_step"] == 2 and final["steps"] == 6
    last_val = [r["val_loss"] for r in read_steps(paths) if "val_loss" in r][-1]
    assert last_val < final["best_val_loss"] - 0.1  # the weights kept are not the last ones
    model, _ = load_trained_model(paths.model_dir)
    val = ExampleSet.load(paths.val_data)
    loss, _ = evaluate_loss(model, val, pack_rows(val, final["seq_len"], True), 4, cpu_hw(),
                                        final["seq_len"])
    assert loss == pytest.approx(final["best_val_loss"], abs=1e-4)


def test_gpu_only_settings_are_refused_without_a_gpu(shared, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="precision: fp16 needs a CUDA GPU"):
        setup_hardware(train_model.Config(precision="fp16"))
    paths = outputs(shared, tmp_path)
    config = write_config(tmp_path / "c.yaml", paths.output_dir, device="cuda")
    proc = subprocess.run([sys.executable, str(ROOT / "train_model.py"), "--config", str(config)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    # Only our line (bitsandbytes may log a kernels hint while peft is imported, on CPUs with AVX512-BF16).
    ours = [line for line in proc.stderr.strip().splitlines() if "kernels-community" not in line]
    assert ours == ["error: train_model.device: cuda, but PyTorch sees no CUDA GPU: set device: auto (or cpu)"]


def test_missing_data_names_the_stage_to_run(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train_model.py"), "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "run the dataset_builder stage first" in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_model_dir_fails_before_training(shared, tmp_path):
    """--model-dir under a regular file: one line at once, not a crash after the whole training."""
    paths = outputs(shared, tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    proc = subprocess.run([sys.executable, str(ROOT / "train_model.py"), "--output-dir", str(paths.output_dir),
                           "--model-dir", str(blocker / "model"), "--max-steps", "2"],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {blocker}: cannot create output folder")
    assert not paths.training_logs.exists() and not paths.checkpoints_dir.exists()  # nothing was trained
    # A file where the model folder itself should go: named, and nothing trained either.
    paths.model_dir.write_text("in the way")
    with pytest.raises(UserError, match="a file is in the way of the model folder"):
        train_model.run(train_model.Config(**TINY, max_steps=2), paths)
    assert not paths.training_logs.exists()


def test_seed_command_line(shared, tmp_path):
    paths = outputs(shared, tmp_path)
    out = paths.output_dir
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_model.py"), "--vocab", str(out / "tokenizer" / "vocab.json"),
         "--train-data", str(out / "training_data_train.pt"), "--val-data", str(out / "training_data_val.pt"),
         "--output-dir", str(out), "--max-steps", "2"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train_model: 2 steps (max_steps)" in proc.stderr
    assert json.loads((paths.training_logs / "final_eval.json").read_text())["steps"] == 2


# ----------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_after_kill_9_matches_an_uninterrupted_run(shared, tmp_path):
    settings = dict(**{k: v for k, v in TINY.items() if k != "max_minutes"}, precision="fp32", max_steps=24,
                    eval_every=6, save_every=4, log_every=1, learning_rate=3e-3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "train_model.py"), "--config"]

    straight = outputs(shared, tmp_path / "a")
    config_a = write_config(tmp_path / "a.yaml", straight.output_dir, **settings)
    subprocess.run(command + [str(config_a)], check=True, capture_output=True, env=env)

    killed = outputs(shared, tmp_path / "b")
    config_b = write_config(tmp_path / "b.yaml", killed.output_dir, **settings)
    proc = subprocess.Popen(command + [str(config_b)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (killed.checkpoints_dir / "step-000008").is_dir():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed.checkpoints_dir / "step-000024").exists()
    resumed = subprocess.run(command + [str(config_b), "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr

    a, b = read_steps(straight), read_steps(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "val_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], abs=1e-5), (ra, rb)
    final_a = json.loads((straight.training_logs / "final_eval.json").read_text())
    final_b = json.loads((killed.training_logs / "final_eval.json").read_text())
    assert final_b["test_loss"] == pytest.approx(final_a["test_loss"], abs=1e-5)


# ----------------------------------------------------------------------------- LoRA / QLoRA


@pytest.fixture(scope="module")
def extended(shared, tmp_path_factory):
    """A tiny untied base model, its tokenizer extended with 4 commit tokens, data that uses them."""
    root = tmp_path_factory.mktemp("extended")
    base_tok = make_tokenizer(root / "base_tokenizer", base=True)
    base_vocab = len(AutoTokenizer.from_pretrained(str(base_tok)))
    base = make_base_model(root / "base", base_vocab, hidden=64)  # bitsandbytes' CPU NF4 needs >= 64 inputs
    tok_dir = extend_tokenizer(base_tok, root / "out" / "tokenizer")
    new_ids = list(range(base_vocab, len(AutoTokenizer.from_pretrained(str(tok_dir)))))
    make_dataset(root / "out", tok_dir, extra_ids=new_ids[:4])
    return {"root": root, "base": base, "out": root / "out", "new_ids": new_ids, "base_vocab": base_vocab}


def adapter_outputs(extended, tmp_path) -> ArtifactPaths:
    out = tmp_path / "outputs"
    shutil.copytree(extended["out"], out)
    return ArtifactPaths.under(out)


def test_lora_trains_only_adapters_and_new_rows_and_reloads(extended, tmp_path):
    paths = adapter_outputs(extended, tmp_path)
    cfg = train_model.Config(**TINY, mode="lora", base_model=str(extended["base"]), precision="fp32", max_steps=12,
                             eval_every=6, save_every=6, learning_rate=1e-2, merge=True)
    hw = cpu_hw()
    tokenizer, tok_dir = find_tokenizer(ExampleSet.load(paths.train_data), paths, None)
    model, new_ids = build_model(cfg, tokenizer, tok_dir, 256, hw)
    assert new_ids == extended["new_ids"]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "trainable_tokens" in n for n in names)
    assert any("embed_tokens" in n and "trainable_tokens" in n for n in names)
    assert any("lm_head" in n and "trainable_tokens" in n for n in names)

    final = train_model.run(cfg, paths, seed=5)
    assert final["best_val_loss"] < final["initial_val_loss"]
    info = json.loads((paths.model_dir / "training_info.json").read_text())
    assert info["mode"] == "lora" and info["base_model"] == str(extended["base"].resolve())
    assert (paths.model_dir / "adapter_model.safetensors").is_file()
    assert not (paths.model_dir / "model.safetensors").exists()

    reloaded, tokenizer = load_trained_model(paths.model_dir)
    assert isinstance(reloaded, PeftModel) and not reloaded.training
    base = AutoModelForCausalLM.from_pretrained(str(extended["base"]))
    embed = reloaded.get_input_embeddings()
    ids = torch.tensor([extended["new_ids"] + [5, 6]])
    rows = embed(ids)[0]
    assert torch.equal(rows[-2:], base.get_input_embeddings()(torch.tensor([5, 6])))  # old rows untouched
    test = ExampleSet.load(paths.test_data)
    packed = pack_rows(test, final["seq_len"], True)
    loss, _ = evaluate_loss(reloaded, test, packed, 4, hw, final["seq_len"])
    assert loss == pytest.approx(final["test_loss"], abs=1e-4)

    merged, _ = load_trained_model(paths.model_dir / "merged")
    assert not isinstance(merged, PeftModel)
    merged_loss, _ = evaluate_loss(merged, test, packed, 4, hw, final["seq_len"])
    assert merged_loss == pytest.approx(loss, abs=1e-4)


def test_qlora_nf4_on_cpu_with_paged_8bit_adamw(extended, tmp_path):
    paths = adapter_outputs(extended, tmp_path)
    cfg = train_model.Config(**TINY, mode="qlora", base_model=str(extended["base"]), precision="bf16", max_steps=4,
                             eval_every=2, save_every=2, optimizer="paged_adamw_8bit", learning_rate=1e-2,
                             gradient_checkpointing=True)
    hw = cpu_hw("bf16")
    tokenizer, tok_dir = find_tokenizer(ExampleSet.load(paths.train_data), paths, None)
    model, _ = build_model(cfg, tokenizer, tok_dir, 256, hw)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for _, p in trainable)
    assert isinstance(build_optimizer(cfg, trainable, hw), bnb.optim.PagedAdamW8bit)
    del model

    final = train_model.run(cfg, paths, seed=5)
    assert final["steps"] == 4 and math.isfinite(final["test_loss"]) and final["precision"] == "bf16"
    assert (paths.model_dir / "adapter_model.safetensors").is_file()
    reloaded, _ = load_trained_model(paths.model_dir)
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapter was trained (B starts at zero)
    # As on a GPU: the adapter over the base re-quantised to NF4, as it was trained.
    base, _ = load_base_for_adapter(paths.model_dir, "cpu", torch.bfloat16, quantize=True)
    quantized = PeftModel.from_pretrained(base, str(paths.model_dir)).eval()
    assert isinstance(quantized.base_model.model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    test = ExampleSet.load(paths.test_data)
    loss, _ = evaluate_loss(quantized, test, pack_rows(test, final["seq_len"], True), 4,
                                        cpu_hw("bf16"), final["seq_len"])
    assert loss == pytest.approx(final["test_loss"], rel=0.05)


# ----------------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_two_processes_under_torchrun_agree_and_match_one_process(shared, tmp_path):
    settings = dict(**TINY, precision="fp32", max_steps=6, eval_every=3, save_every=3, log_every=1,
                    learning_rate=3e-3)
    single = outputs(shared, tmp_path / "one")
    train_model.run(train_model.Config(**settings), single, seed=7)
    double = outputs(shared, tmp_path / "two")
    config = write_config(tmp_path / "two.yaml", double.output_dir, **settings)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(ROOT / "train_model.py"), "--config", str(config)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((double.training_logs / "final_eval.json").read_text())
    assert final["processes"] == 2 and final["ranks_agree"] is True
    # The same rows per step, split over two processes, give the same losses as one process.
    for one, two in zip(read_steps(single), read_steps(double)):
        assert one["step"] == two["step"]
        assert two.get("loss", 0) == pytest.approx(one.get("loss", 0), abs=2e-4)


def test_qlora_with_prepare_model_for_kbit_training(extended, tmp_path):
    """The HF-default set-up: embeddings and head upcast to fp32 by peft, checkpointing on."""
    paths = adapter_outputs(extended, tmp_path)
    cfg = train_model.Config(**TINY, mode="qlora", base_model=str(extended["base"]), precision="bf16", max_steps=2,
                             eval_every=2, save_every=2, optimizer="adamw_8bit", prepare_kbit_training=True,
                             gradient_checkpointing=True)
    tokenizer, tok_dir = find_tokenizer(ExampleSet.load(paths.train_data), paths, None)
    model, _ = build_model(cfg, tokenizer, tok_dir, 256, cpu_hw("bf16"))
    assert model.get_input_embeddings().weight.dtype == torch.float32
    del model
    final = train_model.run(cfg, paths, seed=5)
    assert final["steps"] == 2 and math.isfinite(final["test_loss"])


def test_fp16_loss_scaling_path(shared, tmp_path, monkeypatch):
    """The Turing path (fp16 autocast + GradScaler), run on the CPU's fp16 kernels.

    setup_hardware refuses fp16 without a GPU; here it is bypassed to exercise the same loop.
    """
    paths = outputs(shared, tmp_path)
    monkeypatch.setattr(train_model, "setup_hardware", lambda cfg: cpu_hw("fp16"))
    cfg = train_model.Config(**TINY, max_steps=12, eval_every=6, save_every=6, learning_rate=3e-3)
    final = train_model.run(cfg, paths, seed=5)
    assert final["precision"] == "fp16"
    assert final["best_val_loss"] < final["initial_val_loss"] - 0.5
    model, _ = load_trained_model(paths.model_dir)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    saved = json.loads((paths.checkpoints_dir / "step-000012" / "train_state.json").read_text())
    assert saved["scaler"]["scale"] > 0  # the loss scale is kept for a resume


# ----------------------------------------------------------------------------- warm start (update mode)


def test_warm_start_scratch_continues_and_beats_a_fresh_model(shared, tmp_path):
    first = outputs(shared, tmp_path / "first")
    trained = train_model.run(train_model.Config(**TINY, precision="fp32", max_steps=16, eval_every=8, save_every=100,
                                                 learning_rate=3e-3), first, seed=5)
    info = json.loads((first.model_dir / "training_info.json").read_text())
    train = ExampleSet.load(first.train_data)
    latest = max(range(len(train)), key=lambda i: (datetime.datetime.fromisoformat(train.timestamps[i]), i))
    assert (info["last_commit"], info["last_commit_time"]) == (train.commits[latest], train.timestamps[latest])
    assert datetime.datetime.fromisoformat(info["trained_at"]).tzinfo is not None and info["warm_start"] is None
    assert info["tokenizer_digest"] == tokenizer_digest(AutoTokenizer.from_pretrained(str(first.tokenizer_dir)))

    update = dict(**TINY, precision="fp32", eval_every=2, save_every=100, learning_rate=3e-3, update_max_steps=4,
                  update_epochs=None, update_warmup_steps=2, log_every=1)
    warm = outputs(shared, tmp_path / "warm")
    continued = train_model.run(train_model.Config(**update, warm_start=first.model_dir), warm, seed=6)
    fresh = outputs(shared, tmp_path / "fresh")
    baseline = train_model.run(train_model.Config(**update, max_steps=4), fresh, seed=6)

    # It starts exactly where the first run ended (its best weights), with a fresh short schedule, and gets better;
    # a new model with the same budget is far behind.
    assert continued["initial_val_loss"] == pytest.approx(trained["best_val_loss"], abs=1e-4)
    assert continued["steps"] == 4 and continued["best_val_loss"] < trained["best_val_loss"]
    assert continued["test_loss"] < trained["test_loss"] and continued["test_loss"] < baseline["test_loss"] - 1.0
    assert [r["lr"] for r in read_steps(warm) if "lr" in r][:2] == pytest.approx([1.5e-3, 3e-3])  # warm-up again
    marker = json.loads((warm.model_dir / "training_info.json").read_text())
    assert marker["warm_start"] == {"folder": str(first.model_dir), "trained_at": info["trained_at"],
                                    "last_commit": info["last_commit"]}
    assert marker["tokenizer_digest"] == info["tokenizer_digest"]
    # The next update continues the model folder it replaces (as pipeline.py --update does), not the old checkpoints.
    again = train_model.run(train_model.Config(**{**update, "update_max_steps": 2}, warm_start=warm.model_dir), warm,
                            seed=7)
    assert again["initial_val_loss"] == pytest.approx(continued["best_val_loss"], abs=1e-4) and again["steps"] == 2
    assert json.loads((warm.model_dir / "training_info.json").read_text())["warm_start"]["trained_at"] == marker["trained_at"]

    # A warm start whose steps only make it worse (a learning rate that wrecks it) ends with its starting weights.
    wrecked = outputs(shared, tmp_path / "wrecked")
    kept = train_model.run(train_model.Config(**{**update, "update_learning_rate": 50.0}, warm_start=warm.model_dir),
                           wrecked, seed=8)
    assert kept["best_step"] == 0 and kept["steps"] == 4
    assert kept["best_val_loss"] == pytest.approx(kept["initial_val_loss"], abs=1e-6)
    assert kept["test_loss"] == pytest.approx(again["test_loss"], abs=1e-4)  # the weights `again` saved
    started = load_trained_model(warm.model_dir)[0].state_dict()
    ended = load_trained_model(wrecked.model_dir)[0].state_dict()
    assert all(torch.equal(started[name], ended[name]) for name in started)

    # What cannot continue is refused in one line, before anything is trained.
    refused = outputs(shared, tmp_path / "refused")
    with pytest.raises(UserError, match=r"train_model.num_layers: 3, but the warm-start model .* has 2"):
        train_model.run(train_model.Config(**{**update, "num_layers": 3}, warm_start=first.model_dir), refused)
    retokenized = tmp_path / "retokenized"
    shutil.copytree(first.model_dir, retokenized)
    (retokenized / "training_info.json").write_text(json.dumps({**info, "tokenizer_digest": "0" * 24}))
    with pytest.raises(UserError, match="the tokenizer changed since .* keep the tokenizer frozen"):
        train_model.run(train_model.Config(**update, warm_start=retokenized), refused)
    with pytest.raises(UserError, match="not a model folder written by train_model"):
        train_model.run(train_model.Config(**update, warm_start=tmp_path), refused)
    assert not refused.training_logs.exists() and not refused.model_dir.exists()


def test_warm_start_is_sized_in_epochs_over_the_update_examples(shared, tmp_path):
    """An update trains its examples (new + replayed) update_epochs times, at most update_max_steps steps; with
    update_epochs null the cap alone decides (the old fixed schedule)."""
    first = outputs(shared, tmp_path / "first")
    train_model.run(train_model.Config(**TINY, precision="fp32", max_steps=2, eval_every=2, save_every=100), first,
                    seed=5)
    warm = outputs(shared, tmp_path / "warm")
    base = dict(**TINY, precision="fp32", eval_every=100, save_every=100, warm_start=first.model_dir)

    def planned(**keys) -> tuple[int, int, int]:
        cfg = with_update_schedule(train_model.Config(**base, **keys))
        run = setup(cfg, warm, cpu_hw(), 6, warm=read_warm_start(cfg))
        return run.total_steps, len(run.data.train.rows), run.plan.global_batch

    steps, rows, batch = planned(update_epochs=2.0, update_max_steps=100)
    assert 1 < rows < len(ExampleSet.load(warm.train_data))  # packed: a pass over the rows is one over the examples
    assert steps == math.ceil(2.0 * rows / batch)
    assert planned(update_epochs=6.0, update_max_steps=100)[0] == math.ceil(6.0 * rows / batch) > steps
    assert planned(update_epochs=6.0, update_max_steps=3)[0] == 3  # the cap
    assert planned(update_epochs=None, update_max_steps=5)[0] == 5
    # max_steps and max_epochs belong to full runs: an update ignores them.
    assert planned(update_epochs=2.0, max_steps=1, max_epochs=0.1)[0] == steps

    final = train_model.run(train_model.Config(**base, update_epochs=2.0), warm, seed=6)
    assert final["steps"] == steps and final["stop_reason"] == "max_steps"
    assert final["epochs"] == pytest.approx(steps * batch / rows, abs=0.01) and final["epochs"] >= 2.0
    assert final["train_examples"] == len(ExampleSet.load(warm.train_data))

    # update_max_minutes bounds the update's wall time as max_minutes bounds a full run's (and replaces it).
    capped = train_model.run(train_model.Config(**{**base, "max_minutes": 60.0}, update_max_steps=100,
                                                update_max_minutes=0.0001), outputs(shared, tmp_path / "capped"), seed=6)
    assert capped["stop_reason"] == "time_budget" and 1 <= capped["steps"] < 100


def test_warm_start_lora_adapter_continues_also_as_qlora(extended, tmp_path):
    settings = dict(**TINY, mode="lora", base_model=str(extended["base"]), precision="fp32", learning_rate=1e-2,
                    save_every=100)
    first = adapter_outputs(extended, tmp_path / "first")
    trained = train_model.run(train_model.Config(**settings, max_steps=8, eval_every=4), first, seed=5)
    update = dict(**settings, eval_every=3, update_max_steps=3, update_epochs=None)
    warm = adapter_outputs(extended, tmp_path / "warm")
    continued = train_model.run(train_model.Config(**update, warm_start=first.model_dir), warm, seed=6)
    fresh = adapter_outputs(extended, tmp_path / "fresh")
    baseline = train_model.run(train_model.Config(**update, max_steps=3), fresh, seed=6)
    # The adapter and the new token rows continue: the same loss at step 0, better after, ahead of a new adapter.
    assert continued["initial_val_loss"] == pytest.approx(trained["best_val_loss"], abs=1e-4)
    assert continued["best_val_loss"] < trained["best_val_loss"]
    assert continued["test_loss"] < baseline["test_loss"]

    # The LoRA adapter continues over the 4-bit base as well (QLoRA): nearly the same loss before any step.
    qlora = train_model.Config(**{**update, "mode": "qlora", "precision": "bf16"}, warm_start=first.model_dir)
    run = setup(qlora, warm, cpu_hw("bf16"), 6, warm=read_warm_start(qlora))
    assert validation_loss(run) == pytest.approx(trained["best_val_loss"], rel=0.05)
    del run

    refused = adapter_outputs(extended, tmp_path / "refused")
    with pytest.raises(UserError, match="train_model.lora_rank: 8, but the warm-start adapter .* has 16"):
        train_model.run(train_model.Config(**{**update, "lora_rank": 8}, warm_start=first.model_dir), refused)
    with pytest.raises(UserError, match="holds a lora model and train_model.mode is scratch"):
        train_model.run(train_model.Config(**{**update, "mode": "scratch"}, warm_start=first.model_dir), refused)
    assert not refused.training_logs.exists()


# ----------------------------------------------------------------------------- the GPU benchmark's CPU path


def test_gpu_qlora_bench_runs_its_tiny_path(tmp_path):
    """bench/bench_gpu_qlora.py --tiny: the profile's QLoRA set-up and loop.train_step, at toy shapes."""
    spec = importlib.util.spec_from_file_location("bench_gpu_qlora", ROOT / "bench" / "bench_gpu_qlora.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "figures.json"
    assert bench.main(["--tiny", "--work", str(tmp_path / "work"), "--steps", "2", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["quant_type"] == "nf4" and figures["double_quant"] is True
    assert figures["linear4bit_layers"] == 7 * bench.TINY["num_hidden_layers"]
    assert figures["optimizer"] == "PagedAdamW8bit" and figures["checkpointing"] is True
    assert figures["precision"] == "fp16" and figures["loss_scaling"] is True
    assert figures["new_token_rows"] == figures["vocab_size"] - bench.TINY["vocab_size"] > 100
    assert (figures["micro_batch"], figures["accumulation"]) == (1, 2)
    assert figures["tokens_per_step"] == 2 * bench.TINY_SEQ_LEN and figures["finite"] and len(figures["losses"]) == 2
    assert figures["estimate_gib"] > 0.5  # the estimator ran on the planned set-up
