"""Tiny real tokenizers, training data and LLaMA models, built offline in tmp_path for the training tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from repo2model.language.commit_language import CommitLanguage
from repo2model.language.tokens import BOS, EOS, PAD
from repo2model.language.examples import ExampleSet

BASE_SPECIALS = ["<pad>", "<bos>", "<eos>"]  # a stand-in base model's own, as LLaMA-2 has <s> and </s>
LANGUAGE = CommitLanguage()  # the commit language's structure and change tokens (no author/module families)


def corpus_lines(n: int = 400, seed: int = 0) -> list[str]:
    """Commit-like text with a learnable structure."""
    rng = random.Random(seed)
    crates = ["core", "net", "store", "vm", "cli"]
    verbs = ["add", "fix", "refactor", "remove", "test"]
    lines = []
    for i in range(n):
        crate = rng.choice(crates)
        verb = rng.choice(verbs)
        lines.append(f"{verb} {crate}: fn {crate}_{verb}_{i % 7}() -> Result<(), Error> {{ Ok(()) }}")
    return lines


def make_tokenizer(folder: Path, vocab_size: int = 400, base: bool = False) -> Path:
    """A byte-level BPE tokenizer trained on `corpus_lines`, saved as the tokenizer stage saves one in train mode
    (the commit language's special tokens, commit_language.json beside it); `base`: a plain tokenizer standing in
    for a base model's (its own pad/bos/eos, no commit language), for extend_tokenizer."""
    specials = BASE_SPECIALS if base else LANGUAGE.special_tokens()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_lines(), trainer)
    pad, bos, eos = BASE_SPECIALS if base else (PAD, BOS, EOS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos)
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    (folder / "vocab.json").write_text(json.dumps(tok.get_vocab(), sort_keys=True), encoding="utf-8")
    if not base:
        language = CommitLanguage(tokenizer_info={"mode": "train", "vocab_size": len(fast), "added_tokens": 0})
        language.save(folder)
    return folder


def extend_tokenizer(base_folder: Path, folder: Path) -> Path:
    """The base tokenizer plus the commit language's special tokens, as the tokenizer stage does in extend mode
    (appended after the base's ids; the base keeps its own pad/bos/eos)."""
    tok = AutoTokenizer.from_pretrained(str(base_folder))
    base_size = len(tok)
    new = [t for t in LANGUAGE.special_tokens() if t not in (PAD, BOS, EOS)]
    added = tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    folder = Path(folder)
    tok.save_pretrained(str(folder))
    language = CommitLanguage(tokenizer_info={"mode": "extend", "base_vocab_size": base_size, "vocab_size": len(tok),
                                              "added_tokens": added})
    language.save(folder)
    return folder


def make_examples(tokenizer_dir: Path, path: Path, n: int, split: str, seed: int = 0,
                  context_lines: int = 2, extra_ids: list[int] | None = None) -> ExampleSet:
    """n examples: a few context lines (masked) then one target line, as dataset_builder writes them."""
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    lines = corpus_lines(n * (context_lines + 1) + 10, seed=seed)
    ids, offsets, starts = [], [0], []
    for i in range(n):
        chunk = lines[i * (context_lines + 1): (i + 1) * (context_lines + 1)]
        context = [tok.bos_token_id] + tok.encode("\n".join(chunk[:-1]) + "\n", add_special_tokens=False)
        if extra_ids:
            context += extra_ids
        target = tok.encode(chunk[-1], add_special_tokens=False) + [tok.eos_token_id]
        ids.extend(context + target)
        starts.append(len(context))
        offsets.append(len(ids))
    examples = ExampleSet(
        input_ids=torch.tensor(ids, dtype=torch.int32),
        offsets=torch.tensor(offsets, dtype=torch.int64),
        target_starts=torch.tensor(starts, dtype=torch.int64),
        commits=[f"{split}{i:040d}"[-40:] for i in range(n)],
        timestamps=[f"2024-01-{1 + i % 28:02d}T00:00:00+00:00" for i in range(n)],
        meta={"split": split, "tokenizer_dir": str(tokenizer_dir), "pad_token_id": tok.pad_token_id,
              "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "context_window": 256,
              "target_window": 64, "vocab_size": len(tok)},
    )
    examples.save(path)
    return examples


def make_dataset(out: Path, tokenizer_dir: Path, n_train: int = 48, n_val: int = 12, n_test: int = 12, **kwargs) -> None:
    """training_data_{train,val,test}.pt in `out` (the pipeline's output-folder layout)."""
    for split, n, seed in (("train", n_train, 1), ("val", n_val, 2), ("test", n_test, 3)):
        make_examples(tokenizer_dir, out / f"training_data_{split}.pt", n, split, seed=seed, **kwargs)


def make_base_model(folder: Path, vocab_size: int, tie: bool = False, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny untied LLaMA (like LLaMA-2) saved with save_pretrained: a stand-in for a hub base model."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return Path(folder)
