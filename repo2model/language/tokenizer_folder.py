"""The tokenizer folder the tokenizer stage writes, as every later stage loads it.

    <tokenizer_dir>/tokenizer.json, tokenizer_config.json, ...   Hugging Face (AutoTokenizer, offline)
    <tokenizer_dir>/commit_language.json                          the commit language's token families
    <tokenizer_dir>/vocab.json

`save_commit_tokenizer` writes it (atomically, whole);
`load_commit_tokenizer(folder)` gives the commit language and the tokenizer,
checked against each other (every special token one id); `tokenizer_digest(tokenizer)`
names the exact vocabulary, so that token ids made with one tokenizer are never
read with another (tokens.pt and the model folder's training_info.json record it).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from repo2model.core.artifacts import atomic_path, require, write_json
from repo2model.core.errors import UserError, first_line
from repo2model.language.commit_language import CommitLanguage
from repo2model.language.encoding import backend


def save_commit_tokenizer(tokenizer: Any, lang: CommitLanguage, tokenizer_dir: Path, vocab_path: Path) -> None:
    """The tokenizer folder (replaced whole, atomically) and a copy of its vocab.json at `vocab_path`."""
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
    with atomic_path(tokenizer_dir) as tmp:
        tmp.mkdir(parents=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "vocab.json", vocab, indent=None)
        lang.save(tmp)
    if vocab_path.resolve() != (tokenizer_dir / "vocab.json").resolve():
        with atomic_path(vocab_path) as tmp:
            shutil.copyfile(tokenizer_dir / "vocab.json", tmp)


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


def tokenizer_digest(tokenizer: Any) -> str:
    """A digest of the whole tokenizer (vocabulary, merges, added tokens, normalisation): equal digests, equal ids.

    training_info.json (train_model) and tokens.pt (tokenizer stage) record it; a reader compares.
    """
    return hashlib.blake2b(backend(tokenizer).to_str().encode("utf-8"), digest_size=12).hexdigest()
