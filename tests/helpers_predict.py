"""A tiny real model that has learned one change, for the prediction, evaluation and service tests.

The tokenizer is a byte-level BPE with the commit language's special tokens (as the tokenizer stage
makes it); the model is a 2-layer LLaMA trained in the test, with a plain torch loop, until it
reproduces the target commit after its prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from repo2model.language.commit_language import CommitLanguage
from repo2model.language.encoding import encode_texts
from repo2model.language.tokens import BOS, COMMIT_END, EOS, PAD
from repo2model.core.records import Chunk, Commit, Person

ALICE = Person("Alice", "alice@example.com")


def commit(sha: str, message: str, day: int) -> Commit:
    when = f"2024-02-{day:02d}T10:00:00+00:00"
    return Commit(hash=sha * 40 if len(sha) == 1 else sha, parents=[], author=ALICE, committer=ALICE,
                  authored_at=when, committed_at=when, message=message)


def chunk(c: Commit, path: str, change_type: str, symbol: str | None, module: str | None, after: str | None,
          diff: str = "+x") -> Chunk:
    kind = change_type.split("_", 1)[1].lower()
    return Chunk(commit=c.hash, timestamp=c.authored_at, author=c.author.name, file=path, language="python",
                 module=module, kind=kind, symbol=symbol, change_type=change_type, before=None, after=after,
                 diff=diff)


def fixture_history() -> list[tuple[Commit, list[Chunk]]]:
    a = commit("a", "Add the parser", 1)
    b = commit("b", "Add tests for the parser", 2)
    return [
        (a, [chunk(a, "pkg/parse.py", "NEW_FUNCTION", "parse", "pkg.parse", "def parse(s):\n    return s\n")]),
        (b, [chunk(b, "tests/test_parse.py", "NEW_TEST", "test_parse", "tests.test_parse",
                   "def test_parse():\n    assert parse('x') == 'x'\n")]),
    ]


TASK = "Make the parser strip spaces"


def target_chunks() -> list[Chunk]:
    t = commit("c", TASK, 3)
    return [
        chunk(t, "pkg/parse.py", "MODIFIED_FUNCTION", "parse", "pkg.parse", None, "-    return s\n+    return s.strip()\n"),
        chunk(t, "pkg/strip.py", "NEW_FUNCTION", "strip", "pkg.strip", "def strip(s):\n    return s.strip()\n"),
    ]


def target_text(lang: CommitLanguage) -> str:
    return "".join(lang.render_segments(target_chunks(), "full")) + COMMIT_END + "\n"


def build_tokenizer(folder: Path, lang: CommitLanguage, texts: list[str]):
    """Byte-level BPE with the language's special tokens, saved with commit_language.json."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, special_tokens=lang.special_tokens(),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    lang.save(folder)
    return tokenizer


def tiny_llama(tokenizer, seed: int = 0, max_positions: int = 512):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def train_on(model, examples: list[tuple[list[int], list[int]]], steps: int = 150, lr: float = 3e-3):
    """Train until the model reproduces each (prompt, target): loss on the target only."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        prompt, target = examples[step % len(examples)]
        ids = torch.tensor([prompt + target])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


_TRAINED: dict[int, tuple] = {}


def trained_predictor_parts(folder: Path, steps: int = 150):
    """(model, tokenizer, language, prompt ids, target ids) for the fixture: the model has learned the target.

    Trained once per test session (the test files share it; nothing mutates it); `folder` receives the
    tokenizer the first time.
    """
    if steps not in _TRAINED:
        _TRAINED[steps] = _train(folder, steps)
    return _TRAINED[steps]


def _train(folder: Path, steps: int):
    lang = CommitLanguage(authors=["Alice"], modules=["pkg"])
    history = fixture_history()
    corpus = [lang.render_commit(c, ch, "full") for c, ch in history] + [target_text(lang), lang.render_task(TASK)]
    tokenizer = build_tokenizer(folder / "tokenizer", lang, corpus * 3)
    prompt = lang.build_prompt(history, TASK, tokenizer, 400)
    target = encode_texts(tokenizer, [target_text(lang)])[0] + [tokenizer.eos_token_id]
    model = tiny_llama(tokenizer)
    train_on(model, [(prompt, target)], steps=steps)
    return model, tokenizer, lang, prompt, target
