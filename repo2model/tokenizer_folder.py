"""The tokenizer folder the tokenizer stage writes, as every later stage loads it.

    <tokenizer_dir>/tokenizer.json, tokenizer_config.json, ...   Hugging Face (AutoTokenizer, offline)
    <tokenizer_dir>/commit_language.json                          the commit language's token families
    <tokenizer_dir>/vocab.json

`load_commit_tokenizer(folder)` gives the commit language and the tokenizer,
checked against each other (every special token one id); `tokenizer_digest(folder)`
names the exact vocabulary, so that token ids made with one tokenizer are never
read with another (tokens.pt and the model folder record it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from repo2model.artifacts import require
from repo2model.commit_language import LANGUAGE_FILE, CommitLanguage
from repo2model.errors import UserError, first_line

DIGEST_FILES = ("tokenizer.json", LANGUAGE_FILE)


def load_commit_tokenizer(tokenizer_dir: Path | str) -> tuple[CommitLanguage, Any]:
    """The commit language and tokenizer saved by the tokenizer stage; UserError unless they agree."""
    tokenizer_dir = require(Path(tokenizer_dir), "tokenizer")
    lang = CommitLanguage.load(tokenizer_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        raise UserError(f"{tokenizer_dir}: cannot load the tokenizer ({first_line(exc)[:160]}): rerun the tokenizer stage") from None
    lang.check_tokenizer(tokenizer, f"the tokenizer in {tokenizer_dir}")
    return lang, tokenizer


def tokenizer_digest(tokenizer_dir: Path | str) -> str:
    """A short hash of tokenizer.json and commit_language.json: equal digests, equal token ids."""
    digest = hashlib.sha256()
    for name in DIGEST_FILES:
        path = Path(tokenizer_dir) / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"")
        digest.update(b"\0")
    return digest.hexdigest()[:16]
