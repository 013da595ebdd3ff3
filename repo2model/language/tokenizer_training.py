"""Making the commit language's tokenizer: byte-level BPE trained on the full renderings of a history
(mode "train"), or a base model's tokenizer with the special tokens added (mode "extend").

Either way every special token of the language is one id (`CommitLanguage.check_tokenizer`),
and `lang.tokenizer_info` records how the tokenizer was made (saved in commit_language.json).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
import tempfile
from typing import Any, Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from repo2model.core.errors import UserError, first_line
from repo2model.language.commit_language import CommitLanguage
from repo2model.language.encoding import backend, decode_ids, encode_texts
from repo2model.language.tokens import BOS, CHANGE_TOKENS, EOS, PAD, STRUCTURE_TOKENS

log = logging.getLogger("tokenizer")

BYTE_ALPHABET = 256
FIXED_SPECIALS = 3 + len(STRUCTURE_TOKENS) + len(CHANGE_TOKENS)  # <PAD> <BOS> <EOS>, structure, change types


def bpe_sample(texts: Iterable[str], max_chars: int, folder: Path) -> tuple[Iterator[str], int]:
    """What BPE is trained on: every text while they hold at most `max_chars` characters together; beyond,
    each text cut to the same length, the largest that keeps the total within `max_chars` (short texts
    whole, the longest cut), so that no commit's share is lost and a few huge ones cannot dominate.

    The texts are written to a temporary file in `folder` first (their sizes decide the cut); returns the
    sample (read back lazily) and its number of texts.
    """
    spool = tempfile.TemporaryFile(dir=folder)
    sizes = []
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        spool.write(len(data).to_bytes(8, "little") + data)
        sizes.append(len(text))
    cap = fair_cap(sizes, max_chars)
    if cap is not None:
        log.info("tokenizer: BPE trained on %d characters of the %d rendered (each commit's first %d at most)",
                 sum(min(size, cap) for size in sizes), sum(sizes), cap)

    def read_back() -> Iterator[str]:
        with spool:
            spool.seek(0)
            for _ in sizes:
                text = spool.read(int.from_bytes(spool.read(8), "little")).decode("utf-8", "surrogatepass")
                yield text if cap is None else text[:cap]

    return read_back(), len(sizes)


def fair_cap(sizes: list[int], budget: int) -> int | None:
    """The largest cap with sum(min(size, cap)) <= budget (None: every size fits whole)."""
    if sum(sizes) <= budget:
        return None
    ordered = sorted(sizes)
    left, remaining = budget, len(ordered)
    for size in ordered:
        if size * remaining > left:
            return left // remaining
        left -= size
        remaining -= 1
    return ordered[-1]


def train_tokenizer(lang: CommitLanguage, full_texts: Iterable[str], count: int, vocab_size: int,
                    min_frequency: int) -> Any:
    """Byte-level BPE on the full renderings (`count` of them): every byte is in the alphabet, so nothing
    is unknown. Sets `lang.tokenizer_info`."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=lang.special_tokens(),  # whole tokens, never split, ids 0..n-1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(full_texts, trainer=trainer, length=count)
    reached = raw.get_vocab_size(with_added_tokens=True)
    if reached < vocab_size:
        log.warning("tokenizer: BPE stopped at %d tokens of the %d asked (history too small for more merges)", reached, vocab_size)
    lang.tokenizer_info = {"mode": "train", "vocab_size_requested": vocab_size, "vocab_size": reached, "added_tokens": 0}
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def extend_tokenizer(lang: CommitLanguage, base: str) -> Any:
    """The base model's tokenizer (a local folder or hub id) plus our special tokens (appended; bos/eos/pad
    kept when it has them). Sets `lang.tokenizer_info`."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(base).expanduser()) if Path(base).expanduser().exists() else base)
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer.base_tokenizer: cannot load {base!r} ({first_line(exc)}): give a local tokenizer folder") from None
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise UserError(f"tokenizer.base_tokenizer: {base!r} has no fast (tokenizers) version: convert it first")
    base_size = len(tokenizer)
    vocab = tokenizer.get_vocab()
    new = [t for t in lang.special_tokens() if t not in (PAD, BOS, EOS) and t not in vocab]
    # add_tokens appends; add_special_tokens({"additional_special_tokens"}) would replace the base's extras (measured with transformers 5)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    for name, ours in (("pad", PAD), ("bos", BOS), ("eos", EOS)):
        if getattr(tokenizer, f"{name}_token", None) is None:
            tokenizer.add_tokens([AddedToken(ours, special=True, normalized=False)], special_tokens=True)
            setattr(tokenizer, f"{name}_token", ours)
    added = len(tokenizer) - base_size
    fixed = exact_after_tokens(tokenizer)
    lang.tokenizer_info = {
        "mode": "extend",
        "base_tokenizer": str(base),
        "base_vocab_size": base_size,
        "vocab_size": len(tokenizer),
        "added_tokens": added,  # training resizes the embeddings by this many rows
        "prefix_space_removed": fixed,
    }
    log.info("tokenizer: extended %s (%d tokens) with %d special tokens", base, base_size, added)
    return tokenizer


PROBE = "<FILE>src/a.rs<MODULE>a\n<CHANGE:new_function>f\n<DIFF> fn f() {\n+    x();\n }\n<COMMIT_END>\n"


def exact_after_tokens(tokenizer: Any) -> bool:
    """Make text after a special token round-trip exactly; True if the base tokenizer had to change.

    SentencePiece-style tokenizers (LLaMA-2 "legacy") put a word-start marker before every text
    segment, so after each of our tokens a space would appear on decoding (`<FILE> src/a.rs`) and
    parsed paths would be wrong. Text in the commit language always follows a special token, so
    the marker is only prepended at the very start of a text ("first"), as transformers does for
    non-legacy LLaMA tokenizers.
    """
    if decode_ids(tokenizer, encode_texts(tokenizer, [PROBE])[0]) == PROBE:
        return False
    spec = json.loads(backend(tokenizer).to_str())

    def edit(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "Sequence":
                key = "normalizers" if "normalizers" in node else "pretokenizers" if "pretokenizers" in node else None
                if key:
                    node[key] = [edit(n) for n in node[key] if not (isinstance(n, dict) and n.get("type") == "Prepend")]
                    return node
            if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "always":
                node["prepend_scheme"] = "first"
        return node

    for key in ("normalizer", "pre_tokenizer"):
        if isinstance(spec.get(key), dict) and spec[key].get("type") == "Prepend":
            spec[key] = None
        else:
            spec[key] = edit(spec.get(key))
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))
    if "legacy" in tokenizer.init_kwargs or hasattr(tokenizer, "legacy"):
        tokenizer.init_kwargs["legacy"] = False  # a LLaMA tokenizer class rebuilds its pre-tokenizer from this
        tokenizer.legacy = False
    if decode_ids(tokenizer, encode_texts(tokenizer, [PROBE])[0]) != PROBE:
        log.warning("tokenizer: the base tokenizer changes text around special tokens; decoded text will differ")
    return True
