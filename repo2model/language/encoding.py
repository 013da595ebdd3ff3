"""Text to ids and back through any tokenizer (a transformers tokenizer or a `tokenizers.Tokenizer`),
exactly: `decode_ids(tokenizer, encode_texts(tokenizer, [text])[0]) == text` for the commit language."""

from __future__ import annotations

from typing import Any, Sequence

from repo2model.language.tokens import BOS, EOS, PAD


def backend(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` behind a transformers tokenizer (or the object itself)."""
    return getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None) or tokenizer


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text, without bos/eos, through the library's batch encoder."""
    if not texts:
        return []
    raw = backend(tokenizer)
    if len(texts) == 1:  # one text: no thread pool to wake (the same ids)
        return [raw.encode(texts[0], add_special_tokens=False).ids]
    encode = getattr(raw, "encode_batch_fast", None) or raw.encode_batch  # _fast: no character offsets (~1.6x faster)
    return [e.ids for e in encode(list(texts), add_special_tokens=False)]


def decode_ids(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of `ids`, special tokens kept, no space clean-up (the exact inverse of `encode_texts`).

    The tokenizers library runs added tokens through the byte-level decoder too, which garbles one that
    holds a non-ASCII character (`<MODULE:naïve>` decodes as `<MODULE:na\ufffdve>`): those are put back
    by id, and the runs between them decoded as usual.
    """
    raw = backend(tokenizer)
    ids = list(ids)
    verbatim = _non_ascii_added_tokens(raw)
    if not verbatim or not any(i in verbatim for i in ids):
        return raw.decode(ids, skip_special_tokens=False)
    parts, run = [], []
    for i in ids:
        if i in verbatim:
            if run:
                parts.append(raw.decode(run, skip_special_tokens=False))
                run = []
            parts.append(verbatim[i])
        else:
            run.append(i)
    if run:
        parts.append(raw.decode(run, skip_special_tokens=False))
    return "".join(parts)


_VERBATIM: dict[int, tuple[Any, int, dict[int, str]]] = {}  # id(raw) -> (raw, its size, its non-ASCII added tokens)


def _non_ascii_added_tokens(raw: Any) -> dict[int, str]:
    """Added tokens whose text is not ASCII, by id; cached per tokenizer and its size (tokens get added)."""
    if not hasattr(raw, "get_added_tokens_decoder"):
        return {}
    size = raw.get_vocab_size(with_added_tokens=True)
    cached = _VERBATIM.get(id(raw))
    if cached is None or cached[0] is not raw or cached[1] != size:
        found = {int(i): t.content for i, t in raw.get_added_tokens_decoder().items() if not t.content.isascii()}
        cached = _VERBATIM[id(raw)] = (raw, size, found)
    return cached[2]


_DEFAULT_SPECIAL = {"bos": BOS, "eos": EOS, "pad": PAD}


def special_id(tokenizer: Any, name: str) -> int | None:
    """The id of the tokenizer's bos/eos/pad token (a transformers tokenizer's own, else ours)."""
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is not None:
        return int(value)
    raw = backend(tokenizer)
    value = raw.token_to_id(_DEFAULT_SPECIAL[name]) if hasattr(raw, "token_to_id") else None
    return None if value is None else int(value)


CHARS_PER_ID = 6  # a first guess of the text an id covers (the commit language averages about 3.8 bytes per id)


def encode_prefix(tokenizer: Any, text: str, count: int) -> tuple[list[int], str]:
    """The first `count` ids of `text` (or a few more, not to split a character), exactly as encoding the
    whole text starts, and the text they decode to; all of them when the text has no more.

    Only a beginning of the text is encoded: cut after a line end, then the ids whose text ends before the
    cut's trailing whitespace are the whole text's too (a word, a number, a run of punctuation or of spaces
    ends where it ends in the whole text; the whitespace at the cut may join the next line's), so those are
    kept. Encoded again with twice as much while they are fewer than `count`.
    """
    raw = backend(tokenizer)
    size = max(count, 1) * CHARS_PER_ID
    while True:
        end = text.find("\n", size) + 1 if size < len(text) else 0
        prefix = text[:end] if end else text
        encoding = raw.encode(prefix, add_special_tokens=False)
        ids, offsets = encoding.ids, encoding.offsets
        if prefix is text:
            safe = len(ids)
        else:
            stable = len(prefix.rstrip())
            safe = next((i for i, (_, stop) in enumerate(offsets) if stop > stable), len(ids))
        if safe >= count or prefix is text:
            kept = min(count, safe)
            while 0 < kept < safe and offsets[kept][1] == offsets[kept - 1][1]:
                kept += 1  # the next id ends in the same character: a character's bytes stay together
            if kept == len(ids) and prefix is text:
                return ids, text
            return ids[:kept], prefix[: offsets[kept - 1][1]] if kept else ""
        size *= 2
