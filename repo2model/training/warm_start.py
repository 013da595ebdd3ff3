"""Warm start (update mode): a run continues from a model folder the stage wrote, with its weights (every weight
of a scratch model; the adapter and new-token rows of a LoRA/QLoRA one) but a fresh optimizer and a short
schedule.  Every setting that would make the weights not fit is refused in one line before anything is loaded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from repo2model.core.artifacts import read_json, require
from repo2model.core.errors import UserError, first_line
from repo2model.language.tokenizer_folder import tokenizer_digest
from repo2model.training.model import resolve_base, scratch_config
from repo2model.training.models import INFO_FILE

if TYPE_CHECKING:  # annotations only: Config belongs to the stage, which imports this package
    from repo2model.stages.train_model import Config


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """A model folder this stage wrote, continued by a new run: its weights, not its optimizer or schedule."""

    folder: Path
    info: dict  # its training_info.json
    identity: str  # digest of that file: the model a checkpoint of this run started from

    @property
    def is_adapter(self) -> bool:
        return self.info.get("mode") in ("lora", "qlora")


def read_warm_start(cfg: Config) -> WarmStart | None:
    """train_model.warm_start, checked against the settings before anything is loaded; None when unset."""
    if cfg.warm_start is None:
        return None
    folder = Path(cfg.warm_start).expanduser()
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        raise UserError(f"train_model.warm_start: {folder}: not a model folder written by train_model (no {INFO_FILE}): "
                        "train without warm_start first")
    raw = info_path.read_bytes()
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{info_path}: corrupt (not JSON): train without warm_start") from None
    warm = WarmStart(folder, info, hashlib.blake2b(raw, digest_size=12).hexdigest())
    mode = info.get("mode")
    if mode not in ("scratch", "lora", "qlora") or (mode == "scratch") != (cfg.mode == "scratch"):
        raise UserError(f"train_model.warm_start: {folder} holds a {mode} model and train_model.mode is "
                        f"{cfg.mode}: a scratch model continues as scratch, an adapter as lora or qlora")
    if warm.is_adapter:
        base = resolve_base(cfg.base_model)
        if info.get("base_model") != base:
            raise UserError(f"train_model.warm_start: {folder} is an adapter over {info.get('base_model')!r}, "
                            f"train_model.base_model is {base!r}: an adapter continues over its own base only")
        adapter = read_json(require(folder / "adapter_config.json", "train_model"))
        for key, saved, asked in (("lora_rank", adapter.get("r"), cfg.lora_rank),
                                  ("lora_alpha", adapter.get("lora_alpha"), cfg.lora_alpha),
                                  ("lora_target_modules", sorted(adapter.get("target_modules") or []),
                                   sorted(cfg.lora_target_modules))):
            if saved != asked:
                raise UserError(f"train_model.{key}: {asked}, but the warm-start adapter {folder} has {saved}: "
                                "an adapter continues with its own shape (set it back, or warm_start: null)")
    return warm


def with_update_schedule(cfg: Config) -> Config:
    """A warm-started run is short: at most update_max_steps steps, and when update_epochs is set, that many passes
    over its training examples (the new ones and the replayed ones), within update_max_minutes (else max_minutes)
    of wall time, update_warmup_steps of warm-up,
    update_learning_rate. (By default 3 passes: on fd's shipped-settings update, 10 steps; with 100 steps it ran 74, 23
    passes over 26 examples, and no step of them beat the starting weights on the validation split.)"""
    if cfg.warm_start is None:
        return cfg
    return dataclasses.replace(cfg, max_steps=cfg.update_max_steps, max_epochs=cfg.update_epochs,
                               max_minutes=cfg.update_max_minutes or cfg.max_minutes,
                               warmup_steps=cfg.update_warmup_steps,
                               learning_rate=cfg.update_learning_rate or cfg.learning_rate)


def check_warm_start(warm: WarmStart, cfg: Config, tokenizer, seq_len: int) -> None:
    """The token ids and (scratch) the architecture must be the warm model's: checked before building anything."""
    saved = warm.info.get("tokenizer_digest")
    if (saved is not None and saved != tokenizer_digest(tokenizer)) or warm.info.get("vocab_size") != len(tokenizer):
        raise UserError(f"train_model.warm_start: the tokenizer changed since {warm.folder} was trained (its token "
                        "ids differ): keep the tokenizer frozen for updates (tokenizer.frozen: true) or train "
                        "without warm_start")
    if warm.is_adapter:
        return
    saved_config = read_json(require(warm.folder / "config.json", "train_model"))
    config = scratch_config(cfg, tokenizer, seq_len)
    for ours, theirs in (("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
                         ("num_heads", "num_attention_heads"), ("num_kv_heads", "num_key_value_heads"),
                         ("intermediate_size", "intermediate_size"), ("tie_word_embeddings", "tie_word_embeddings")):
        if saved_config.get(theirs) != getattr(config, theirs):
            raise UserError(f"train_model.{ours}: {getattr(config, theirs)}, but the warm-start model {warm.folder} "
                            f"has {saved_config.get(theirs)}: train with its settings (or warm_start: null)")


def load_warm_weights(model, warm: WarmStart) -> None:
    """The warm model's weights into the model just built: every weight (scratch), or the adapter and new-token rows."""
    if warm.is_adapter:
        state = load_file(str(require(warm.folder / "adapter_model.safetensors", "train_model")))
        result = set_peft_model_state_dict(model, state)
        mismatched = list(result.unexpected_keys) + [k for k in result.missing_keys
                                                     if "lora_" in k or "trainable_tokens" in k]
    else:
        state = {}
        for file in sorted(warm.folder.glob("*.safetensors")):  # model.safetensors, or its shards
            state.update(load_file(str(file)))
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a shape differs
            raise UserError(f"train_model.warm_start: {warm.folder} does not fit the model built from "
                            f"train_model ({first_line(exc)})") from None
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        mismatched = list(result.unexpected_keys) + [k for k in result.missing_keys
                                                     if not (tied and k == "lm_head.weight")]
    if mismatched:
        raise UserError(f"train_model.warm_start: {warm.folder} does not fit the model built from train_model "
                        f"({len(mismatched)} weights differ, e.g. {mismatched[0]}): train with its settings "
                        "(or warm_start: null)")
