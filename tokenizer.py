"""Stage 3: the tokenizer of the commit language, and every chunk's token ids.

Reads `commits.json` (git_scraper) and `chunks.jsonl` (semantic_chunker), renders
each commit in the commit language (`repo2model/commit_language.py`) and writes:

    <output_dir>/tokenizer/          Hugging Face tokenizer folder (tokenizer.json,
                                     tokenizer_config.json) that
                                     `AutoTokenizer.from_pretrained(folder)` loads
                                     offline, plus vocab.json and commit_language.json
                                     (the author/module token families, the mode and,
                                     in extend mode, how many tokens were added)
    <output_dir>/vocab.json          a copy of the vocabulary {token: id}
    <output_dir>/tokens.pt           every chunk's ids: input_ids int32 [total] (flat),
                                     offsets int64 [n+1], chunk_ids int64 [n] (line
                                     index in chunks.jsonl), commit_index int64 [n]
                                     (index into `commits`, a list of hashes), meta
    <output_dir>/tokenizer_stats.json

A chunk's ids are those of its file header plus its full rendering
(`<FILE>path<MODULE..>` `<CHANGE:..>symbol` `<CODE>..`).

Config section `tokenizer`:
    mode            "train": byte-level BPE trained on the rendered history (for a model
                    trained from scratch); "extend": a base model's tokenizer plus the
                    special tokens (for fine-tuning; training must resize embeddings)
    vocab_size      train: the BPE vocabulary size asked for (the reached size can be
                    smaller on a small history: reported); extend: ignored
    min_frequency   train: a merge needs at least this many occurrences
    base_tokenizer  extend: a local tokenizer/model folder or a hub id
    top_authors     K: the most frequent authors that get an <AUTHOR:name> token
    top_modules     K: the most frequent crates/top-level modules with a <MODULE:x> token
    compact_max_files    history (compact) renderings list at most this many files (0 = all)
    compact_max_changes  ... and at most this many change lines (0 = all); saved in
                    commit_language.json so prediction renders history the same way
    batch_size      texts per encode_batch call (bounds memory)
    roundtrip_sample commits checked for decode(encode(render)) == render after training

CLI (the seed's flags work): python tokenizer.py --chunks outputs/chunks.jsonl
    --vocab-size 50257 --output-vocab outputs/vocab.json --output-tokens outputs/tokens.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from repo2model.artifacts import atomic_path, read_commits_metadata, require, save_pt, write_json
from repo2model.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.commit_language import (
    BOS,
    backend,
    EOS,
    PAD,
    STRUCTURE_TOKENS,
    CHANGE_TOKENS,
    CommitLanguage,
    count_families,
    decode_ids,
    encode_texts,
    iter_history,
)
from repo2model.errors import UserError, first_line
from repo2model.paths import ArtifactPaths, tokenizer_dir_for_vocab

SECTION = "tokenizer"
log = logging.getLogger("tokenizer")

BYTE_ALPHABET = 256
FIXED_SPECIALS = 3 + len(STRUCTURE_TOKENS) + len(CHANGE_TOKENS)


@dataclasses.dataclass
class Config:
    mode: Literal["train", "extend"] = "train"
    vocab_size: int = 8000
    min_frequency: int = 2
    base_tokenizer: str | None = None
    top_authors: int = 32
    top_modules: int = 64
    compact_max_files: int = 32
    compact_max_changes: int = 16
    batch_size: int = 1024
    roundtrip_sample: int = 200

    def __post_init__(self) -> None:
        if self.top_authors < 0 or self.top_modules < 0:
            raise ValueError("top_authors/top_modules: must be >= 0")
        smallest = BYTE_ALPHABET + FIXED_SPECIALS + self.top_authors + self.top_modules
        if self.mode == "train" and self.vocab_size < smallest:
            raise ValueError(
                f"vocab_size: must be at least {smallest} (256 bytes + {smallest - BYTE_ALPHABET} special tokens), got {self.vocab_size}"
            )
        if self.compact_max_files < 0 or self.compact_max_changes < 0:
            raise ValueError("compact_max_files/compact_max_changes: must be >= 0 (0 = no limit)")
        if self.min_frequency < 1:
            raise ValueError("min_frequency: must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if self.roundtrip_sample < 0:
            raise ValueError("roundtrip_sample: must be >= 0")
        if self.mode == "extend" and not self.base_tokenizer:
            raise ValueError("base_tokenizer: required in extend mode (a local folder or hub id)")


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    inputs = [paths.commits, paths.chunks]
    if cfg.mode == "extend" and cfg.base_tokenizer and Path(cfg.base_tokenizer).expanduser().exists():
        inputs.append(Path(cfg.base_tokenizer).expanduser())
    return inputs


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.tokenizer_dir, paths.vocab, paths.tokens, paths.tokenizer_stats]


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42) -> dict:
    """Choose the token families, build the tokenizer, encode every chunk, save stats."""
    require(paths.commits, "git_scraper")
    require(paths.chunks, "semantic_chunker")
    total_commits = read_commits_metadata(paths.commits).get("total_commits")

    lang = choose_language(cfg, paths, total_commits)
    if cfg.mode == "train":
        tokenizer = train_tokenizer(cfg, lang, paths, total_commits)
    else:
        tokenizer = extend_tokenizer(cfg, lang)
    lang.check_tokenizer(tokenizer, "the new tokenizer")
    save_tokenizer(tokenizer, lang, paths)
    tokenizer = reload(paths.tokenizer_dir)  # check and encode with what later stages will load
    lang.check_tokenizer(tokenizer, f"the tokenizer saved in {paths.tokenizer_dir}")

    roundtrip = check_roundtrip(lang, tokenizer, paths, cfg.roundtrip_sample)
    stats = encode_chunks(cfg, lang, tokenizer, paths, total_commits)
    stats.update(
        mode=cfg.mode,
        vocab_size_requested=cfg.vocab_size if cfg.mode == "train" else None,
        vocab_size=len(tokenizer),
        special_tokens=len(lang.special_tokens()),
        added_tokens=lang.tokenizer_info.get("added_tokens"),
        authors_with_tokens=len(lang.authors),
        modules_with_tokens=len(lang.modules),
        roundtrip=roundtrip,
        tokenizer_dir=str(paths.tokenizer_dir),
    )
    write_json(paths.tokenizer_stats, stats)
    log.info(
        "tokenizer: %s vocab %d (%s), %d chunks -> %d tokens, %.2f bytes/token, %.1f%% special; round trip %d/%d exact",
        cfg.mode,
        len(tokenizer),
        f"asked {cfg.vocab_size}" if cfg.mode == "train" else f"+{lang.tokenizer_info.get('added_tokens')} added",
        stats["chunks"],
        stats["tokens"],
        stats["bytes_per_token"],
        100 * stats["special_token_share"],
        roundtrip["exact"],
        roundtrip["checked"],
    )
    return stats


# ------------------------------------------------------------------ steps


def choose_language(cfg: Config, paths: ArtifactPaths, total_commits: int | None) -> CommitLanguage:
    """The K most frequent authors and modules of the whole history."""
    authors, modules = count_families(_progress(iter_history(paths.commits, paths.chunks), total_commits, "counting authors/modules"))
    if not authors:
        raise UserError(f"{paths.commits}: no commits: nothing to learn a tokenizer from (check the git_scraper settings)")
    lang = CommitLanguage.from_counts(
        authors, modules, cfg.top_authors, cfg.top_modules,
        compact_max_files=cfg.compact_max_files, compact_max_changes=cfg.compact_max_changes,
    )
    log.debug("tokenizer: %d authors, %d modules; tokens for %d and %d", len(authors), len(modules), len(lang.authors), len(lang.modules))
    return lang


def rendered_history(lang: CommitLanguage, paths: ArtifactPaths, total: int | None) -> Iterator[str]:
    for commit, chunks in _progress(iter_history(paths.commits, paths.chunks), total, "training BPE"):
        yield lang.render_commit(commit, chunks, "full")


def train_tokenizer(cfg: Config, lang: CommitLanguage, paths: ArtifactPaths, total_commits: int | None) -> Any:
    """Byte-level BPE on the full renderings: every byte is in the alphabet, so nothing is unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=lang.special_tokens(),  # whole tokens, never split, ids 0..n-1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(rendered_history(lang, paths, total_commits), trainer=trainer, length=total_commits)
    reached = raw.get_vocab_size(with_added_tokens=True)
    if reached < cfg.vocab_size:
        log.warning("tokenizer: BPE stopped at %d tokens of the %d asked (history too small for more merges)", reached, cfg.vocab_size)
    lang.tokenizer_info = {"mode": "train", "vocab_size_requested": cfg.vocab_size, "vocab_size": reached, "added_tokens": 0}
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def extend_tokenizer(cfg: Config, lang: CommitLanguage) -> Any:
    """The base model's tokenizer plus our special tokens (appended; bos/eos/pad kept when it has them)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    base = cfg.base_tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(base).expanduser()) if Path(base).expanduser().exists() else base)
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer.base_tokenizer: cannot load {base!r} ({first_line(exc)}): give a local tokenizer folder") from None
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise UserError(f"tokenizer.base_tokenizer: {base!r} has no fast (tokenizers) version: convert it first")
    base_size = len(tokenizer)
    vocab = tokenizer.get_vocab()
    new = [t for t in lang.special_tokens() if t not in (PAD, BOS, EOS) and t not in vocab]
    # add_tokens appends; add_special_tokens({"additional_special_tokens"}) would replace the base's extras (FACTS.md)
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
    from tokenizers import Tokenizer

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


def reload(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def save_tokenizer(tokenizer: Any, lang: CommitLanguage, paths: ArtifactPaths) -> None:
    """The tokenizer folder (replaced whole, atomically) and the vocab.json copy beside it."""
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
    with atomic_path(paths.tokenizer_dir) as tmp:
        tmp.mkdir(parents=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "vocab.json", vocab, indent=None)
        lang.save(tmp)
    if paths.vocab.resolve() != (paths.tokenizer_dir / "vocab.json").resolve():
        with atomic_path(paths.vocab) as tmp:
            shutil.copyfile(paths.tokenizer_dir / "vocab.json", tmp)


def check_roundtrip(lang: CommitLanguage, tokenizer: Any, paths: ArtifactPaths, sample: int) -> dict:
    """decode(encode(render(c))) == render(c) and parse(render(c)) == c's structure, on the first commits."""
    texts, structures = [], []
    for commit, chunks in iter_history(paths.commits, paths.chunks):
        if len(texts) >= sample:
            break
        texts.append(lang.render_commit(commit, chunks, "full"))
        structures.append([(c.file, c.change_type, c.symbol) for c in chunks])
    exact = 0
    first_bad = None
    for text, ids in zip(texts, encode_texts(tokenizer, texts)):
        if decode_ids(tokenizer, ids) == text:
            exact += 1
        elif first_bad is None:
            first_bad = text[:80]
    parsed_ok = sum(lang.parse_commit(t).changes == s and lang.parse_commit(t).well_formed for t, s in zip(texts, structures))
    if exact < len(texts):
        log.warning(
            "tokenizer: decode(encode(text)) differs from the text for %d of %d commits (first: %r)%s",
            len(texts) - exact,
            len(texts),
            first_bad,
            ": the base tokenizer normalises text" if lang.tokenizer_info.get("mode") == "extend" else "",
        )
    return {"checked": len(texts), "exact": exact, "parsed": parsed_ok}


def encode_chunks(cfg: Config, lang: CommitLanguage, tokenizer: Any, paths: ArtifactPaths, total_commits: int | None) -> dict:
    """tokens.pt: each chunk's ids (file header + full rendering), encoded in batches."""
    import torch

    vocab = tokenizer.get_vocab()
    special_ids = np.array(sorted({vocab[t] for t in lang.special_tokens() if t in vocab}), dtype=np.int64)
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    commit_index: list[int] = []
    commits: list[str] = []
    text_bytes = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal text_bytes
        for ids in encode_texts(tokenizer, batch):
            parts.append(np.asarray(ids, dtype=np.int32))
            lengths.append(len(ids))
        text_bytes += sum(len(t.encode("utf-8")) for t in batch)
        batch.clear()

    for commit, chunks in _progress(iter_history(paths.commits, paths.chunks), total_commits, "encoding chunks"):
        if chunks:
            commits.append(commit.hash)
        for chunk in chunks:
            batch.append(lang.render_file_header(chunk.file, chunk.module) + lang.render_chunk(chunk, "full"))
            commit_index.append(len(commits) - 1)
            if len(batch) >= cfg.batch_size:
                flush()
    flush()

    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    length_arr = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(length_arr, out=offsets[1:])
    meta = {"tokenizer_dir": str(paths.tokenizer_dir), "vocab_size": len(tokenizer), "text": "file header + full chunk rendering"}
    save_pt(
        {
            "input_ids": torch.from_numpy(flat),
            "offsets": torch.from_numpy(offsets),
            "chunk_ids": torch.arange(len(lengths), dtype=torch.int64),
            "commit_index": torch.tensor(commit_index, dtype=torch.int64),
            "commits": commits,
            "meta": meta,
        },
        paths.tokens,
    )
    total = int(flat.size)
    special = int(np.isin(flat, special_ids).sum()) if total else 0
    return {
        "commits_with_chunks": len(commits),
        "chunks": len(lengths),
        "tokens": total,
        "text_bytes": text_bytes,
        "bytes_per_token": round(text_bytes / total, 3) if total else 0.0,
        "special_token_share": round(special / total, 4) if total else 0.0,
        "tokens_per_chunk": percentiles(length_arr),
    }


def percentiles(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"mean": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": round(float(values.mean()), 2), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": int(values.max())}


def _progress(iterable, total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=" commits", disable=None, leave=False)


# ------------------------------------------------------------------ CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--chunks", type=Path, help="chunks.jsonl (default: <output_dir>/chunks.jsonl)")
    parser.add_argument("--commits", type=Path, help="commits.json (default: beside --chunks, else <output_dir>/commits.json)")
    parser.add_argument("--mode", choices=["train", "extend"], help="override tokenizer.mode")
    parser.add_argument("--vocab-size", type=int, help="override tokenizer.vocab_size (train mode)")
    parser.add_argument("--base-tokenizer", help="override tokenizer.base_tokenizer (extend mode; sets --mode extend)")
    parser.add_argument("--output-vocab", type=Path, help="vocab.json to write (default: <output_dir>/vocab.json); the tokenizer folder goes beside it in tokenizer/")
    parser.add_argument("--output-tokens", type=Path, help="tokens.pt to write (default: <output_dir>/tokens.pt)")
    parser.add_argument("--tokenizer-dir", type=Path, help="tokenizer folder to write (default: <output_dir>/tokenizer)")
    args = parser.parse_args(argv)
    cfg, pipeline, paths = load_stage(args, SECTION, Config)

    overrides: dict[str, Any] = {}
    if args.mode:
        overrides["mode"] = args.mode
    if args.vocab_size is not None:
        overrides["vocab_size"] = args.vocab_size
    if args.base_tokenizer:
        overrides.update(base_tokenizer=args.base_tokenizer, mode="extend")
    cfg = apply_overrides(cfg, SECTION, overrides)

    changes: dict[str, Path] = {}
    if args.chunks:
        changes["chunks"] = args.chunks.resolve()
        changes["commits"] = args.chunks.resolve().parent / "commits.json"
    if args.commits:
        changes["commits"] = args.commits.resolve()
    if args.output_vocab:
        vocab = args.output_vocab.resolve()
        changes.update(vocab=vocab, tokenizer_dir=tokenizer_dir_for_vocab(vocab), tokenizer_stats=vocab.parent / "tokenizer_stats.json")
    if args.output_tokens:
        changes["tokens"] = args.output_tokens.resolve()
    if args.tokenizer_dir:
        changes["tokenizer_dir"] = args.tokenizer_dir.resolve()
    paths = dataclasses.replace(paths, **changes)
    summary = run(cfg, paths, seed=pipeline.seed)
    print(json.dumps({k: summary[k] for k in ("vocab_size", "chunks", "tokens", "bytes_per_token")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
