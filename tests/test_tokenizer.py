"""Stage 3: trained and extended tokenizers of the commit language, tokens.pt, stats, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tokenizer as stage
from conftest import GitRepo
from helpers_data import build_fixture_repo, linear_history, scrape_and_chunk, tricky_commit, write_history
from repo2model.commit_language import CommitLanguage, decode_ids, encode_texts, group_by_file, iter_history
from repo2model.config import build_section
from repo2model.errors import UserError
from repo2model.paths import ArtifactPaths

ROOT = Path(__file__).resolve().parents[1]


def small_history():
    pairs = linear_history(24)
    c, chunks = tricky_commit()
    c.parents = [pairs[-1][0].hash]
    pairs.append((c, chunks))
    return pairs


def trained(tmp_path: Path, pairs=None, **cfg) -> tuple[ArtifactPaths, dict]:
    write_history(tmp_path / "out", pairs or small_history())
    paths = ArtifactPaths.under(tmp_path / "out")
    settings = {"vocab_size": 700, "top_authors": 2, "top_modules": 3, **cfg}
    return paths, stage.run(stage.Config(**settings), paths)


def test_trained_tokenizer_loads_offline_and_round_trips_every_commit(tmp_path):
    from transformers import AutoTokenizer

    paths, stats = trained(tmp_path)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    lang = CommitLanguage.load(paths.tokenizer_dir)
    assert lang.authors == ["Alice Example", "Bob Builder"]  # 9 and 8 commits of the 25; Carol has 8 too, later by name
    assert lang.tokenizer_info["mode"] == "train"
    lang.check_tokenizer(tok)
    # every special token is one id, the first ids, in the language's order
    assert [tok.convert_tokens_to_ids(t) for t in lang.special_tokens()] == list(range(len(lang.special_tokens())))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<BOS>", "<EOS>", "<PAD>")
    assert stats["vocab_size"] == len(tok) <= 700
    assert stats["vocab_size_requested"] == 700
    for commit, chunks in iter_history(paths.commits, paths.chunks):
        for form in ("full", "compact"):
            text = lang.render_commit(commit, chunks, form)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text
            assert ids == encode_texts(tok, [text])[0]
            parsed = lang.parse_commit(tok.decode(ids))
            assert parsed.well_formed and parsed.changes == [(c.file, c.change_type, c.symbol) for c in chunks]
    assert stats["roundtrip"] == {"checked": 25, "exact": 25, "parsed": 25}
    vocab = json.loads(paths.vocab.read_text(encoding="utf-8"))
    assert vocab == tok.get_vocab() == json.loads((paths.tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))


def test_special_tokens_are_never_split_and_nothing_is_unknown(tmp_path):
    from transformers import AutoTokenizer

    paths, _ = trained(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    lang = CommitLanguage.load(paths.tokenizer_dir)
    vocab = tok.get_vocab()
    for token in lang.special_tokens():
        ids = encode_texts(tok, [f"x{token}y {token}\n{token}"])[0]
        assert ids.count(vocab[token]) == 3
    odd = "naïve 日本語 🚀 \x00\x07\t tab\r\n \u2060 <NOT_A_TOKEN> \udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    ids = encode_texts(tok, [odd])[0]
    assert decode_ids(tok, ids) == odd
    assert tok.unk_token is None


def test_tokens_pt_holds_every_chunk_flat(tmp_path):
    from transformers import AutoTokenizer

    pairs = small_history()
    paths, stats = trained(tmp_path, pairs)
    data = torch.load(paths.tokens, weights_only=True)
    all_chunks = [ch for _, chunks in pairs for ch in chunks]
    assert data["input_ids"].dtype == torch.int32
    assert len(data["offsets"]) == len(all_chunks) + 1 == stats["chunks"] + 1
    assert data["chunk_ids"].tolist() == list(range(len(all_chunks)))
    assert int(data["offsets"][-1]) == data["input_ids"].numel() == stats["tokens"]
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    lang = CommitLanguage.load(paths.tokenizer_dir)
    for i in (0, 5, len(all_chunks) - 1):
        ids = data["input_ids"][data["offsets"][i] : data["offsets"][i + 1]].tolist()
        ch = all_chunks[i]
        assert decode_ids(tok, ids) == lang.render_file_header(ch.file, ch.module) + lang.render_chunk(ch, "full")
        assert data["commits"][int(data["commit_index"][i])] == ch.commit
    saved = json.loads(paths.tokenizer_stats.read_text(encoding="utf-8"))
    assert saved["tokens_per_chunk"]["max"] == int((data["offsets"][1:] - data["offsets"][:-1]).max())
    assert 1.0 < saved["bytes_per_token"] < 8.0
    assert 0.0 < saved["special_token_share"] < 1.0


def test_same_inputs_give_byte_identical_artifacts(tmp_path):
    paths, _ = trained(tmp_path)
    files = [paths.tokenizer_dir / n for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "commit_language.json")]
    files += [paths.vocab, paths.tokens, paths.tokenizer_stats]
    first = {p: p.read_bytes() for p in files}
    stage.run(stage.Config(vocab_size=700, top_authors=2, top_modules=3), paths)
    assert {p: p.read_bytes() for p in files} == first


def make_base_tokenizer(folder: Path) -> int:
    """A tiny GPT-2-style base tokenizer (byte-level BPE, <|endoftext|> as bos/eos, no pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<FILE>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(["fn main() { let x = 1; }\n", "def f(x):\n    return x\n"] * 50, trainer)
    base = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    base.save_pretrained(str(folder))
    return len(base)


def test_extend_mode_adds_the_special_tokens_to_a_base_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    base_dir = tmp_path / "base"
    base_size = make_base_tokenizer(base_dir)
    base = AutoTokenizer.from_pretrained(str(base_dir))
    paths, stats = trained(tmp_path, mode="extend", base_tokenizer=str(base_dir))
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    lang = CommitLanguage.load(paths.tokenizer_dir)
    lang.check_tokenizer(tok)
    # <FILE> was already in the base: reused; every other language token and a pad token appended
    expected_added = len([t for t in lang.special_tokens() if t not in ("<PAD>", "<BOS>", "<EOS>", "<FILE>")]) + 1
    assert len(tok) == base_size + expected_added
    assert lang.tokenizer_info["added_tokens"] == expected_added == stats["added_tokens"]
    saved = json.loads((paths.tokenizer_dir / "commit_language.json").read_text(encoding="utf-8"))
    assert saved["added_tokens"] == expected_added and saved["tokenizer"]["base_vocab_size"] == base_size
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<PAD>"
    for token, index in base.get_vocab().items():
        assert tok.convert_tokens_to_ids(token) == index  # base ids unchanged: embeddings only grow
    pairs = small_history()
    text = lang.render_commit(*pairs[-1], "full")
    assert decode_ids(tok, encode_texts(tok, [text])[0]) == text
    assert stats["roundtrip"]["exact"] == stats["roundtrip"]["checked"] == 25


def test_seed_cli_flags(tmp_path):
    out = tmp_path / "outputs"
    write_history(out, small_history())
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tokenizer.py"), "--chunks", str(out / "chunks.jsonl"), "--vocab-size", "600",
         "--output-vocab", str(out / "vocab.json"), "--output-tokens", str(out / "tokens.pt")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "tokenizer" / "tokenizer.json").is_file() and (out / "tokens.pt").is_file()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["chunks"] == sum(len(ch) for _, ch in small_history())
    assert (out / "tokenizer_stats.json").is_file()


def test_bad_inputs_are_one_line_errors(tmp_path):
    paths = ArtifactPaths.under(tmp_path / "empty")
    with pytest.raises(UserError, match="run the git_scraper stage"):
        stage.run(stage.Config(), paths)
    write_history(tmp_path / "empty", small_history())
    paths.chunks.unlink()
    with pytest.raises(UserError, match="run the semantic_chunker stage"):
        stage.run(stage.Config(), paths)
    with pytest.raises(UserError, match="vocab_size: must be at least"):
        build_section(stage.Config, {"vocab_size": 300}, "tokenizer", "config.yaml", tmp_path)
    with pytest.raises(UserError, match="base_tokenizer: required"):
        build_section(stage.Config, {"mode": "extend"}, "tokenizer", "config.yaml", tmp_path)
    write_history(tmp_path / "empty", small_history())
    with pytest.raises(UserError, match="cannot load"):
        stage.run(stage.Config(mode="extend", base_tokenizer=str(tmp_path / "no-such-model")), paths)
    assert not paths.tokenizer_dir.exists()  # nothing half-written


def test_cli_reports_user_errors_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tokenizer.py"), "--chunks", str(tmp_path / "chunks.jsonl")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "git_scraper" in proc.stderr


def test_round_trips_on_real_chunks_of_a_fixture_repository(tmp_path):
    """git_scraper + semantic_chunker on a real repository: render/parse and encode/decode are exact."""
    from transformers import AutoTokenizer

    repo = GitRepo(tmp_path / "repo")
    build_fixture_repo(repo)
    paths = scrape_and_chunk(repo.path, tmp_path / "out")
    stats = stage.run(stage.Config(vocab_size=800, top_authors=1, top_modules=1), paths)
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    lang = CommitLanguage.load(paths.tokenizer_dir)
    assert lang.modules == ["net"]  # the crate with the most chunks; "core" is spelled out
    seen_kinds = set()
    for commit, chunks in iter_history(paths.commits, paths.chunks):
        full = lang.render_commit(commit, chunks, "full")
        assert decode_ids(tok, encode_texts(tok, [full])[0]) == full
        parsed = lang.parse_commit(full)
        assert parsed.well_formed, parsed.problems
        assert (parsed.author, parsed.message, parsed.date) == (commit.author.name, commit.message, commit.authored_at[:10])
        assert parsed.changes == [(c.file, c.change_type, c.symbol) for c in chunks]
        parsed_chunks = [pc for f in parsed.files for pc in f.chunks]
        for pc, c in zip(parsed_chunks, chunks):
            seen_kinds.add(c.change_type)
            expected = c.after if c.change_type.startswith("NEW_") and c.after is not None else (
                None if c.change_type.startswith("DELETED_") else c.diff or None)
            assert pc.code == expected
            assert pc.old_symbol == (c.old_symbol if c.old_symbol != c.symbol else None)
        assert [f.module for f in parsed.files] == [module for _, module, _ in group_by_file(chunks)]
        compact = lang.parse_commit(lang.render_commit(commit, chunks, "compact"))
        assert compact.well_formed and compact.changes == parsed.changes
    assert {"NEW_FUNCTION", "NEW_METHOD", "NEW_TEST", "MODIFIED_FUNCTION", "RENAMED_FUNCTION"} <= seen_kinds
    assert stats["roundtrip"]["exact"] == stats["roundtrip"]["parsed"] == stats["roundtrip"]["checked"] == 19


def make_sentencepiece_style_base(folder: Path) -> None:
    """A LLaMA-2 "legacy"-style base: prepend-▁ normalizer, byte fallback, <s>/</s>/<unk>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)],
                                  show_progress=False)
    raw.train_from_iterator(["fn main() { let x = 1; }\n", "def f(x):\n    return x\n"] * 50, trainer)
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(str(folder))


def test_extend_mode_keeps_text_after_special_tokens_exact_with_a_sentencepiece_base(tmp_path):
    from transformers import AutoTokenizer

    make_sentencepiece_style_base(tmp_path / "base")
    base = AutoTokenizer.from_pretrained(str(tmp_path / "base"))
    ids = encode_texts(base, ["<s>x = 1"])[0]
    assert decode_ids(base, ids) == "<s> x = 1"  # the base alone puts a space after a special token
    paths, stats = trained(tmp_path, mode="extend", base_tokenizer=str(tmp_path / "base"))
    assert stats["roundtrip"]["exact"] == stats["roundtrip"]["checked"] == stats["roundtrip"]["parsed"] == 25
    lang = CommitLanguage.load(paths.tokenizer_dir)
    assert lang.tokenizer_info["prefix_space_removed"] is True
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    text = lang.render_commit(*small_history()[-1], "full")
    assert decode_ids(tok, encode_texts(tok, [text])[0]) == text
    assert tok.bos_token == "<s>" and tok.pad_token == "<PAD>"
