"""The tokenizer as a GGUF vocabulary: tokens by id, their types, merges or scores, the special ids.

llama.cpp's converter recognises a BPE tokenizer by hashing its output on a fixed text and refuses one it has not
seen ("BPE pre-tokenizer was not recognized"), which every tokenizer trained here is. We name the tokenizer's kind
ourselves, from its tokenizer.json, and refuse (one line) a kind llama.cpp would tokenize differently:

    byte-level BPE (the tokenizer stage's train mode)
        tokenizer.ggml.model = gpt2, pre = gpt-2: the ByteLevel pre-tokenizer splits with GPT-2's regex, which is
        llama.cpp's `gpt-2` pre-tokenizer; the merges in rank order; tokens in their byte-level spelling
    SentencePiece-style BPE with byte fallback (a LLaMA-2 base, extend mode)
        tokenizer.ggml.model = llama: llama.cpp merges the pair whose result has the highest score, the tokenizers
        library the pair of lowest merge rank; a token's score is minus the rank of the merge that makes it, so the
        two agree (the stock converter gives every token -1000 when there is no tokenizer.model, and then they
        do not); <0xNN> tokens are BYTE

Token types: the tokenizer's bos/eos/pad (and unk: UNKNOWN) are CONTROL; every other added token (the commit
language's <COMMIT_START>, <FILE>, <CHANGE:...>, ...) is USER_DEFINED, so llama.cpp matches it in any text, as the
tokenizers library matches added tokens, and prints it in generated text, where the commit language's parser
reads the structure. <COMMIT_END> is also the end-of-turn token: llama.cpp-based tools stop generating there.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from repo2model.core.errors import UserError
from repo2model.export import packages
from repo2model.language.encoding import backend
from repo2model.language.tokens import COMMIT_END

BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# Token types, as gguf.TokenType numbers them (kept here so that reading a vocabulary needs no import).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {NORMAL: "normal", UNKNOWN: "unknown", CONTROL: "control", USER_DEFINED: "user_defined",
              UNUSED: "unused", BYTE: "byte"}


@dataclasses.dataclass
class Vocabulary:
    model: str  # gpt2 | llama
    pre: str  # the pre-tokenizer llama.cpp applies: gpt-2 | default
    tokens: list[str]  # by id
    types: list[int]  # by id
    merges: list[str] | None  # gpt2: "left right" in rank order
    scores: list[float] | None  # llama: by id
    special: dict[str, int]  # bos, eos, pad, unk, eot -> id
    add_bos: bool  # every prompt the commit language builds starts with bos; tools given plain text add it
    add_space_prefix: bool | None  # llama: "▁" before the text (None: llama.cpp's default for the model)

    def added(self) -> dict[int, tuple[str, str]]:
        """id -> (text, type name) of the control and user-defined tokens."""
        return {i: (self.tokens[i], TYPE_NAMES[t]) for i, t in enumerate(self.types) if t in (CONTROL, USER_DEFINED)}

    def add_to(self, writer: Any) -> None:
        """The vocabulary's keys on a gguf.GGUFWriter."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id,
                   "unk": writer.add_unk_token_id, "eot": writer.add_eot_token_id}
        for role, token_id in self.special.items():
            setters[role](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(False)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)


def read_vocabulary(tokenizer: Any, n_vocab: int) -> Vocabulary:
    """The vocabulary of a transformers tokenizer (fast) for a model with `n_vocab` embedding rows."""
    spec = json.loads(backend(tokenizer).to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"export: the tokenizer is {model.get('type')!r}; only BPE tokenizers (byte-level, or "
                        "SentencePiece-style with byte fallback) can be written for llama.cpp here")
    by_id = {i: text for text, i in model["vocab"].items()}
    added = {t["id"]: t["content"] for t in spec.get("added_tokens") or []}
    by_id.update(added)
    if max(by_id) >= n_vocab:
        raise UserError(f"export: the tokenizer has {max(by_id) + 1} ids but the model only {n_vocab} embedding rows: "
                        "the tokenizer and the weights come from different runs")
    roles = special_roles(tokenizer)
    control = {i for role, i in roles.items() if role != "eot"}
    tokens, types = [], []
    spm = sentencepiece_style(spec)
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:  # embedding rows beyond the tokenizer (padded for speed): never produced
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(text)
        if i == roles.get("unk"):
            types.append(UNKNOWN)
        elif i in control:
            types.append(CONTROL)
        elif i in added:
            types.append(USER_DEFINED)
        elif spm and BYTE_TOKEN.fullmatch(text):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if spm:
        return Vocabulary("llama", "default", tokens, types, None, merge_scores(tokens, merges), roles,
                          add_bos=True, add_space_prefix=space_prefix(spec))
    check_byte_level(spec)
    return Vocabulary("gpt2", "gpt-2", tokens, types, merges, None, roles, add_bos=True, add_space_prefix=None)


def special_roles(tokenizer: Any) -> dict[str, int]:
    """bos, eos, pad, unk -> id (those the tokenizer has), and eot: the commit language's end of commit."""
    roles = {}
    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if isinstance(token_id, int):
            roles[role] = token_id
    end = tokenizer.convert_tokens_to_ids(COMMIT_END)
    if isinstance(end, int) and end != roles.get("unk") and end not in roles.values():
        roles["eot"] = end
    return roles


def sentencepiece_style(spec: dict) -> bool:
    """A LLaMA-style tokenizer: BPE with byte fallback over text whose spaces are "▁" (Metaspace, or a normalizer
    that replaces them)."""
    if not spec["model"].get("byte_fallback"):
        return False
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Metaspace"' in text or '"\\u2581"' in text or "\u2581" in text


def space_prefix(spec: dict) -> bool:
    """Whether "▁" goes before a text: a Prepend normalizer, or Metaspace's prepend_scheme "always".

    prepend_scheme "first" (transformers 5's LLaMA, and the tokenizer stage's extend mode) prepends only when the
    text does not start with an added token; every prompt of the commit language starts with bos, so no prefix
    is what it does there.
    """
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "always"' in text


def check_byte_level(spec: dict) -> None:
    """The tokenizer stage's byte-level BPE: a ByteLevel pre-tokenizer with GPT-2's regex, no normalizer, no
    prefix space: exactly llama.cpp's `gpt-2` pre-tokenizer. Anything else would tokenize differently there."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    problems = []
    if spec.get("normalizer"):
        problems.append(f"a normalizer ({spec['normalizer'].get('type')})")
    if [p.get("type") for p in parts] != ["ByteLevel"]:
        problems.append(f"pre-tokenizer {[p.get('type') for p in parts]}")
    elif parts[0].get("add_prefix_space") or not parts[0].get("use_regex", True):
        problems.append("a ByteLevel pre-tokenizer with add_prefix_space or without GPT-2's regex")
    if problems:
        raise UserError("export: the tokenizer is a BPE that llama.cpp's gpt-2 pre-tokenizer would split differently ("
                        + "; ".join(problems) + "): export supports the tokenizer stage's byte-level BPE and "
                        "SentencePiece-style base tokenizers")


def merge_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Minus the rank of the merge that makes each token (the first merge wins). A token no merge makes (single
    characters, <0xNN>, added tokens) scores below every merge: llama.cpp must not prefer it where the tokenizers
    library would never make it."""
    rank: dict[str, int] = {}
    for position, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        rank.setdefault(left + right, position)
    last = -float(len(merges) + 1)
    return [-float(rank[t]) if t in rank else last for t in tokens]


def token_types_of_file(path) -> list[int]:
    """The token types a GGUF file holds, by id (gguf's reader)."""
    reader = packages.gguf().GGUFReader(str(path))
    field = reader.fields["tokenizer.ggml.token_type"]
    return [int(field.parts[i][0]) for i in field.data]
