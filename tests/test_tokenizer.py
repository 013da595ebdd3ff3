"""Stage 3: trained and extended tokenizers of the commit language, tokens.pt, stats, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repo2model.stages import tokenizer as stage
from conftest import GitRepo
from helpers_data import build_fixture_repo, chunk, linear_history, scrape_and_chunk, tricky_commit, write_history
from repo2model.language.commit_language import CommitLanguage, group_by_file
from repo2model.language.encoding import decode_ids, encode_texts
from repo2model.language.history_reader import iter_commit_records
from repo2model.core.config import build_section
from repo2model.language.encoded_commits import EncodedCommits
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.language.tokenizer_folder import load_commit_tokenizer, tokenizer_digest

ROOT = Path(__file__).resolve().parents[1]


def small_history():
    pairs = linear_history(24)
    c, chunks = tricky_commit()
    c.parents = [pairs[-1][0].hash]
    pairs.append((c, chunks))
    return pairs


def trained(tmp_path: Path, pairs=None, dataset=None, **cfg) -> tuple[ArtifactPaths, dict]:
    write_history(tmp_path / "out", pairs or small_history())
    paths = ArtifactPaths.under(tmp_path / "out")
    settings = {"vocab_size": 700, "top_authors": 2, "top_modules": 3, **cfg}
    return paths, stage.run(stage.Config(**settings), paths, dataset=dataset)


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
    for commit, chunks in iter_commit_records(paths.commits, paths.chunks):
        for form in ("full", "compact"):
            text = lang.render_commit(commit, chunks, form)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text
            assert ids == encode_texts(tok, [text])[0]
            parsed = lang.parse_commit(tok.decode(ids))
            assert parsed.well_formed and parsed.changes == [(c.file, c.change_type, c.symbol) for c in chunks]
    assert stats["roundtrip"] == {"checked": 25, "exact": 25, "parsed": 25, "cut": 0}
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


def test_tokens_pt_holds_every_commit_rendered_once(tmp_path):
    """tokens.pt: per commit the ids of its compact rendering, task and full rendering (one segment per chunk)."""
    from transformers import AutoTokenizer

    pairs = small_history()
    paths, stats = trained(tmp_path, pairs)
    raw = torch.load(paths.tokens, weights_only=True)
    assert raw["input_ids"].dtype == torch.int32 and raw["piece_offsets"].dtype == torch.int64
    encoded = EncodedCommits.load(paths.tokens)
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    lang = CommitLanguage.load(paths.tokenizer_dir)
    assert len(encoded) == len(pairs) == stats["commits"]
    assert [info.hash for info in encoded.infos] == [c.hash for c, _ in pairs]
    for i, (commit, chunks) in enumerate(pairs):
        info = encoded.infos[i]
        assert (info.parents, info.authored_at, info.committed_at, info.is_merge) == (
            commit.parents, commit.authored_at, commit.committed_at, commit.is_merge)
        for ids, text in ((encoded.compact(i), lang.render_commit(commit, chunks, "compact")),
                          (encoded.task(i), lang.render_task(commit.message)),
                          (encoded.full(i), lang.render_commit(commit, chunks, "full"))):
            assert ids.tolist() == encode_texts(tok, [text])[0]  # the pieces' ids are the whole text's
            assert decode_ids(tok, ids.tolist()) == text
        segments = encoded.segments(i)
        assert encoded.chunk_count(i) == len(chunks) == len(segments)
        assert [decode_ids(tok, s.tolist()) for s in segments] == lang.render_segments(chunks, "full")
    assert stats["chunks"] == sum(len(ch) for _, ch in pairs)
    assert stats["tokens"] == sum(len(encoded.full(i)) for i in range(len(encoded)))
    saved = json.loads(paths.tokenizer_stats.read_text(encoding="utf-8"))
    assert saved["tokens_per_chunk"]["max"] == max(len(s) for i in range(len(encoded)) for s in encoded.segments(i))
    assert saved["tokens_per_commit"]["max"] == max(len(encoded.full(i)) for i in range(len(encoded)))
    assert 1.0 < saved["bytes_per_token"] < 8.0
    assert 0.0 < saved["special_token_share"] < 1.0
    assert encoded.meta["tokenizer_digest"] == tokenizer_digest(tok) and encoded.made_with(lang, tok)


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
    for commit, chunks in iter_commit_records(paths.commits, paths.chunks):
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


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[number - 1] = text + ("," if lines[number - 1].rstrip("\n").endswith(",") else "") + "\n"
    path.write_text("".join(lines), encoding="utf-8")


BAD_RECORDS = [  # (file, line, replacement, what the message names)
    ("commits.json", 4, '{"hash": 5}', r"commits.json: line 4: hash: expected str, got int"),
    ("commits.json", 5, None, r"commits.json: line 5: files: expected a list, got str"),
    ("chunks.jsonl", 3, '{"x": 1}', r"chunks.jsonl: line 3: commit: missing"),
    ("chunks.jsonl", 2, None, r"chunks.jsonl: line 2: file: expected str, got int"),
]


def write_bad_history(folder: Path, name: str, line: int, text: str | None) -> None:
    write_history(folder, small_history())
    path = folder / name
    if text is None:  # a real record with one field of the wrong type
        record = json.loads(path.read_text(encoding="utf-8").splitlines()[line - 1].rstrip(","))
        record.update({"files": "oops"} if name == "commits.json" else {"file": 7})
        text = json.dumps(record)
    replace_line(path, line, text)


@pytest.mark.parametrize("name, line, text, message", BAD_RECORDS)
def test_wrong_shaped_records_are_one_line_naming_file_line_and_field(tmp_path, name, line, text, message):
    write_bad_history(tmp_path / "out", name, line, text)
    paths = ArtifactPaths.under(tmp_path / "out")
    with pytest.raises(UserError, match=message):
        stage.run(stage.Config(vocab_size=600, top_authors=1, top_modules=1), paths)
    assert not paths.tokenizer_dir.exists() and not paths.tokens.exists()


def test_wrong_shaped_record_from_the_cli_and_through_the_pipeline_is_one_line(tmp_path):
    name, line, text, message = BAD_RECORDS[0]
    write_bad_history(tmp_path / "out", name, line, text)
    proc = subprocess.run([sys.executable, str(ROOT / "tokenizer.py"), "--output-dir", str(tmp_path / "out"), "--vocab-size", "600"],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and re.search(message, proc.stderr), proc.stderr
    config = tmp_path / "config.yaml"
    config.write_text("pipeline:\n  output_dir: out\ntokenizer:\n  vocab_size: 600\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "--config", str(config), "--stage", "tokenizer"],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and re.search(message, errors[0]), proc.stderr
    result = json.loads((tmp_path / "out" / "pipeline_results.json").read_text(encoding="utf-8"))["stages"]["tokenizer"]
    assert result["status"] == "failed" and re.search(message, result["error"])


def test_an_output_that_cannot_be_written_fails_before_training(tmp_path):
    write_history(tmp_path / "out", small_history())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    paths = dataclasses.replace(ArtifactPaths.under(tmp_path / "out"), tokens=blocker / "tokens.pt")
    with pytest.raises(UserError, match=f"{blocker}: cannot create output folder"):
        stage.run(stage.Config(vocab_size=600), paths)
    assert not paths.tokenizer_dir.exists() and not paths.vocab.exists()  # BPE never ran: nothing was written
    proc = subprocess.run([sys.executable, str(ROOT / "tokenizer.py"), "--output-dir", str(tmp_path / "out"),
                           "--output-tokens", str(blocker / "tokens.pt")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot create output folder" in proc.stderr


def history_with_newcomers(base: int, extra: int) -> list:
    """linear_history(base) and `extra` later commits, one of them by a new author touching a new crate."""
    pairs = linear_history(base + extra)
    newcomer, chunks = pairs[base + 1]
    newcomer.author.name = "Dave Newcomer"
    chunks.append(chunk(newcomer, "crates/fresh/src/lib.rs", "NEW_FUNCTION", "fresh", after="fn fresh() {}\n", module="freshcrate::lib"))
    return pairs


def test_frozen_tokenizer_keeps_its_ids_spells_out_new_names_and_encodes_only_what_changed(tmp_path):
    pairs = history_with_newcomers(20, 4)
    paths, first = trained(tmp_path, pairs[:20], vocab_size=700, top_authors=2, top_modules=2)
    folder = {p.name: p.read_bytes() for p in paths.tokenizer_dir.iterdir()}
    before = EncodedCommits.load(paths.tokens)
    pairs[3][0].message = "A reworded message (the scraper's redaction changed, say)"
    write_history(paths.output_dir, pairs)
    stats = stage.run(stage.Config(frozen=True, vocab_size=9999, top_authors=30), paths)  # those keys are the folder's now

    assert {p.name: p.read_bytes() for p in paths.tokenizer_dir.iterdir()} == folder  # the very same tokenizer
    assert stats["frozen"] and stats["vocab_size"] == first["vocab_size"]
    assert (stats["reused_commits"], stats["encoded_commits"], stats["commits"]) == (19, 5, 24)
    lang, tok = load_commit_tokenizer(paths.tokenizer_dir)
    assert "<AUTHOR:Dave Newcomer>" not in tok.get_vocab() and "<MODULE:freshcrate>" not in tok.get_vocab()
    encoded = EncodedCommits.load(paths.tokens)
    for i, (commit, chunks) in enumerate(pairs):
        assert encoded.full(i).tolist() == encode_texts(tok, [lang.render_commit(commit, chunks, "full")])[0]
        if i < 20 and i != 3:
            assert encoded.full(i).tolist() == before.full(i).tolist()  # copied
    assert "<AUTHOR>Dave Newcomer" in decode_ids(tok, encoded.compact(21).tolist())
    assert "<MODULE>freshcrate::lib" in decode_ids(tok, encoded.full(21).tolist())
    # spelled out, among the 5 commits encoded this run: authors and module tops without a token
    encoded_now = [pairs[i] for i in (3, 20, 21, 22, 23)]
    authors = {c.author.name for c, _ in encoded_now if c.author.name not in lang.authors}
    modules = [ch.module.split("::")[0] for _, chs in encoded_now for ch in chs if ch.module and ch.module.split("::")[0] not in lang.modules]
    assert "Dave Newcomer" in authors and "freshcrate" in modules
    assert stats["spelled_out"] == {
        "authors": len(authors), "author_commits": sum(c.author.name in authors for c, _ in encoded_now),
        "modules": len(set(modules)), "module_chunks": len(modules),
    }
    again = stage.run(stage.Config(frozen=True), paths)  # nothing changed: every commit copied
    assert (again["reused_commits"], again["encoded_commits"]) == (24, 0)


def test_frozen_without_a_tokenizer_is_one_line(tmp_path):
    write_history(tmp_path / "out", small_history())
    paths = ArtifactPaths.under(tmp_path / "out")
    with pytest.raises(UserError, match="no tokenizer to keep .*frozen: false"):
        stage.run(stage.Config(frozen=True), paths)
    assert stage.stage_outputs(stage.Config(frozen=True), paths) == [paths.tokens, paths.tokenizer_stats]
    assert paths.tokenizer_dir in stage.stage_inputs(stage.Config(frozen=True), paths)


def test_segments_are_encoded_only_as_far_as_an_example_can_use_them(tmp_path):
    """A commit's segments stop at target_window + 1 ids (cut commits marked), exactly the whole encoding's
    first ids; the examples are the same as from whole segments, and a larger target_window is refused."""
    from repo2model.language.dataset_config import DatasetConfig
    from repo2model.language.examples import ExampleSet
    from repo2model.stages import dataset_builder

    pairs = small_history()
    settings = {"vocab_size": 700, "top_authors": 2, "top_modules": 3}
    whole_paths, whole_stats = trained(tmp_path / "whole", pairs, dataset=DatasetConfig(context_window=9000, target_window=8000))
    paths, stats = trained(tmp_path / "cut", pairs, dataset=DatasetConfig(context_window=64, target_window=24))
    whole, bounded = EncodedCommits.load(whole_paths.tokens), EncodedCommits.load(paths.tokens)
    tok = load_commit_tokenizer(paths.tokenizer_dir)[1]
    assert whole_stats["cut_commits"] == 0 and whole.segment_budget == 8001
    assert bounded.segment_budget == 25 and stats["cut_commits"] == int(bounded.cut.sum()) > 5
    assert stats["roundtrip"]["exact"] == stats["roundtrip"]["checked"] == len(pairs) and stats["roundtrip"]["cut"] > 5
    for i in range(len(pairs)):
        full = [s.tolist() for s in whole.segments(i)]
        kept = [s.tolist() for s in bounded.segments(i)]
        assert len(kept) == len(full) == bounded.chunk_count(i)
        flat_full, flat_kept = sum(full, []), sum(kept, [])
        assert flat_kept == flat_full[: len(flat_kept)]  # the first ids of the whole encoding
        if bounded.cut[i]:
            assert 25 <= len(flat_kept) <= 28 < len(flat_full)  # a character's bytes stay together
            last = max(j for j, s in enumerate(kept) if s)
            assert kept[:last] == full[:last] and not any(kept[last + 1:])
        else:
            assert kept == full and len(flat_full) <= 25
        assert bounded.compact(i).tolist() == whole.compact(i).tolist() and bounded.task(i).tolist() == whole.task(i).tolist()
    assert decode_ids(tok, bounded.full(0).tolist()) == decode_ids(tok, whole.full(0).tolist()) or bounded.cut[0]
    windows = {"context_window": 64, "target_window": 24, "history_commits": 3, "val_ratio": 0.2, "test_ratio": 0.2}
    for out in (whole_paths, paths):
        dataset_builder.run(dataset_builder.Config(**windows), out)
    for split in ("train", "val", "test"):
        a, b = ExampleSet.load(whole_paths.split_data(split)), ExampleSet.load(paths.split_data(split))
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.offsets, b.offsets)
        assert torch.equal(a.target_starts, b.target_starts) and a.commits == b.commits
    with pytest.raises(UserError, match=r"holds up to 24 target tokens per commit.*target_window is 40"):
        dataset_builder.run(dataset_builder.Config(**{**windows, "target_window": 40}), paths)
    stage.run(stage.Config(**settings, frozen=True), paths, dataset=DatasetConfig(context_window=64, target_window=24))
    again = EncodedCommits.load(paths.tokens)  # frozen: every commit copied, marks and all
    assert np.array_equal(again.input_ids, bounded.input_ids) and np.array_equal(again.cut, bounded.cut)


def test_bpe_learns_from_a_bounded_sample_cutting_the_longest_renderings(tmp_path):
    from repo2model.language.tokenizer_training import bpe_sample, fair_cap

    assert fair_cap([5, 7, 9], 21) is None and fair_cap([5, 7, 9], 17) == 6 and fair_cap([1, 50, 50], 41) == 20
    texts = ["short", "a much longer rendering " * 10, "ünïcode ✓ " * 30]
    sample, count = bpe_sample(iter(texts), 10_000, tmp_path)
    assert count == 3 and list(sample) == texts
    sample, count = bpe_sample(iter(texts), 205, tmp_path)
    cut = list(sample)
    assert cut == [texts[0], texts[1][:100], texts[2][:100]] and sum(map(len, cut)) <= 205
    _, small = trained(tmp_path / "a")
    _, bounded = trained(tmp_path / "b", bpe_sample_chars=3000)
    assert bounded["vocab_size"] <= small["vocab_size"] and bounded["roundtrip"]["exact"] == bounded["roundtrip"]["checked"]
