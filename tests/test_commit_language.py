"""The commit language: escaping, rendering, parsing, prompts (no tokenizer training here)."""

from __future__ import annotations

import random

import pytest

from helpers_data import chunk, commit, linear_history, tricky_commit, write_history
from repo2model.language.commit_language import CommitLanguage, assemble_prompt
from repo2model.language.encoding import decode_ids
from repo2model.language.history_reader import iter_commit_records
from repo2model.language.tokens import BOS, COMMIT_END, escape, escape_line, module_top, unescape, unescape_line
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from repo2model.core.errors import UserError
from repo2model.core.records import ALL_CHANGE_TYPES


def structure(chunks):
    """What a rendering must carry back: per file path and module, per chunk type/symbol/code."""
    files = []
    for c in chunks:
        if not files or files[-1][0] != c.file:
            files.append((c.file, c.module, []))
        prefix = c.change_type.split("_", 1)[0]
        if prefix == "NEW" and c.after is not None:
            code = (c.after, "code")
        elif prefix != "DELETED" and c.diff:
            code = (c.diff, "diff")
        else:
            code = (None, None)
        old = c.old_file if c.old_file and c.old_file != c.file else None
        was = c.old_symbol if c.old_symbol and c.old_symbol != c.symbol else None
        files[-1][2].append((c.change_type, c.symbol, *code, old, was))
    return files


def parsed_structure(parsed):
    return [(f.path, f.module, [(c.change_type, c.symbol, c.code, c.code_form, c.old_file, c.old_symbol) for c in f.chunks]) for f in parsed.files]


@pytest.mark.parametrize(
    "text",
    ["plain", "<FILE>", "a<FILE>b<COMMIT_END>", "<\u2060FILE>", "<\u2060\u2060x", "<\u2060", "x<", "<AUTHOR:bob>",
     "<MODULE:core>", "<CHANGE:new_function>", "Vec<T>", "<BOS><EOS><PAD>", "\u2060<FILE>\u2060"],
)
def test_escape_is_reversible_and_hides_tokens(text):
    escaped = escape(text)
    assert unescape(escaped) == text
    for token in ("<FILE>", "<COMMIT_END>", "<AUTHOR:", "<MODULE:", "<CHANGE:", "<BOS>", "<EOS>", "<PAD>"):
        assert token not in escaped
    if "<" not in text or text == "Vec<T>":
        assert escaped == text  # ordinary text, Rust generics included, is left alone


@pytest.mark.parametrize("text", ["plain", "line\nbreak.txt", "\u2424", "\u2424n", "a\u2424\u2424\nb\n", "<FILE>\n<\u2060x"])
def test_line_escape_is_reversible_and_keeps_one_line(text):
    escaped = escape_line(text)
    assert "\n" not in escaped and unescape_line(escaped) == text
    if "\n" not in text and "\u2424" not in text and "<" not in text:
        assert escaped == text


def test_one_line_fields_holding_newlines_parse_back():
    """A path, module, symbol or old name with a newline in it (git allows it) keeps the rendering parseable."""
    c = commit("newlines")
    chunks = [
        chunk(c, "line\nbreak.txt", "MODIFIED_HUNK", None, diff="+x\n"),
        chunk(c, "src/na\u00efve\u2424.rs", "RENAMED_FUNCTION", "new\nname", diff="-a\n+b\n", module="na\u00efve::x\ny",
              old_symbol="old\nname", old_file="old\n\u2424.rs"),
    ]
    lang = CommitLanguage.from_counts({}, {"na\u00efve": 2}, 0, 1)
    for form in ("full", "compact"):
        parsed = lang.parse_commit(lang.render_commit(c, chunks, form))
        assert parsed.well_formed, parsed.problems
        assert parsed.changes == [(ch.file, ch.change_type, ch.symbol) for ch in chunks]
        assert [f.module for f in parsed.files] == [None, "na\u00efve::x\ny"]
        assert (parsed.files[1].chunks[0].old_file, parsed.files[1].chunks[0].old_symbol) == ("old\n\u2424.rs", "old\nname")


def test_decode_keeps_added_tokens_that_are_not_ascii():
    """The tokenizers library byte-decodes added tokens too (`<MODULE:naïve>` came back as `na\ufffdve`)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["na\u00efve code, Zo\u00eb's code"] * 10, trainer)
    tokenizer.add_special_tokens(["<MODULE:na\u00efve>", "<FILE>"])
    text = "<FILE>src/na\u00efve.rs<MODULE:na\u00efve>::x Zo\u00eb<MODULE:na\u00efve>"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) != text  # the library's own decode garbles it
    assert decode_ids(tokenizer, ids) == text
    tokenizer.add_special_tokens(["<AUTHOR:Zo\u00eb>"])  # tokens added later are seen too
    ids = tokenizer.encode(text + "<AUTHOR:Zo\u00eb>").ids
    assert decode_ids(tokenizer, ids) == text + "<AUTHOR:Zo\u00eb>"


def test_module_top():
    assert module_top("core::market::x") == ("core", "::market::x")
    assert module_top("pkg.mod.sub") == ("pkg", ".mod.sub")
    assert module_top("solo") == ("solo", "")


def test_families_are_top_k_by_frequency_with_ties_by_name():
    lang = CommitLanguage.from_counts({"b": 3, "a": 3, "c": 5, "bad<name>": 9, "d": 1}, {"x": 1, "y": 2}, 3, 1)
    assert lang.authors == ["c", "a", "b"]  # "bad<name>" cannot be a token
    assert lang.modules == ["y"]
    tokens = lang.special_tokens()
    assert len(tokens) == len(set(tokens))
    assert "<AUTHOR:c>" in tokens and "<MODULE:y>" in tokens and "<MODULE:x>" not in tokens
    assert sum(t.startswith("<CHANGE:") for t in tokens) == len(ALL_CHANGE_TYPES)


@pytest.mark.parametrize("top", [0, 5])
def test_full_rendering_parses_back_to_the_commit(top):
    c, chunks = tricky_commit()
    lang = CommitLanguage.from_counts({c.author.name: 1, "Alice Example": 2}, {"core": 3, "net": 1, "pkg": 1}, top, top)
    parsed = lang.parse_commit(lang.render_commit(c, chunks, "full"))
    assert parsed.well_formed, parsed.problems
    assert parsed.author == c.author.name
    assert parsed.date == c.authored_at[:10]
    assert parsed.message == c.message
    assert parsed_structure(parsed) == structure(chunks)
    assert not parsed.truncated


def test_compact_rendering_has_structure_but_no_code():
    c, chunks = tricky_commit()
    lang = CommitLanguage.from_counts({}, {"core": 1}, 0, 1)
    text = lang.render_commit(c, chunks, "compact")
    parsed = lang.parse_commit(text)
    assert parsed.well_formed, parsed.problems
    assert parsed.changes == [(ch.file, ch.change_type, ch.symbol) for ch in chunks]
    assert all(ch.code is None for f in parsed.files for ch in f.chunks)
    assert "<CODE>" not in text and "<DIFF>" not in text
    assert len(text) < len(lang.render_commit(c, chunks, "full"))


def test_message_and_code_keep_their_final_newlines_exactly():
    c = commit("nl", message="no newline")
    pieces = [chunk(c, "a.rs", "NEW_FUNCTION", "a", after="fn a() {}"), chunk(c, "a.rs", "NEW_FUNCTION", "b", after="fn b() {}\n\n")]
    lang = CommitLanguage()
    for message in ("no newline", "one\n", "two\n\n", ""):
        c.message = message
        parsed = lang.parse_commit(lang.render_commit(c, pieces, "full"))
        assert parsed.message == message
        assert [ch.code for ch in parsed.files[0].chunks] == ["fn a() {}", "fn b() {}\n\n"]


def test_segments_start_with_a_token_and_join_to_the_body():
    c, chunks = tricky_commit()
    lang = CommitLanguage()
    segments = lang.render_segments(chunks, "full")
    assert len(segments) == len(chunks)
    assert all(s.startswith(("<FILE>", "<CHANGE")) for s in segments)
    assert [s.startswith("<FILE>") for s in segments] == [True, False, False, True, False, True, True]
    assert lang.render_header(c) + "".join(segments) + COMMIT_END + "\n" == lang.render_commit(c, chunks, "full")


def test_parser_never_raises_on_cut_or_garbled_text():
    c, chunks = tricky_commit()
    lang = CommitLanguage.from_counts({}, {"core": 1}, 0, 1)
    text = lang.render_commit(c, chunks, "full")
    for end in range(text.rindex(COMMIT_END) + len(COMMIT_END)):
        parsed = lang.parse_commit(text[:end])
        assert not parsed.complete and parsed.problems  # cut before <COMMIT_END>: flagged
    rng = random.Random(0)
    tokens = ["<FILE>", "<CHANGE:new_function>", "<CODE>", "<DIFF>", "<COMMIT_END>", "<MODULE:x>", "<FROM>", "<MSG>",
              "<TRUNCATED>", "<AUTHOR>", "<DATE>", "<CHANGE>", "<WAS>", "text", "\n", "<MODULE>", "<", ">"]
    for _ in range(300):
        garbage = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 30)))
        parsed = lang.parse_commit(garbage)  # must not raise
        assert parsed.well_formed == (parsed.complete and not parsed.problems)


def test_parser_flags_structure_errors():
    lang = CommitLanguage()
    parsed = lang.parse_commit("<CHANGE:new_function>f\n<CODE>x\n<COMMIT_END>\n")
    assert parsed.complete and not parsed.well_formed
    assert any("before any <FILE>" in p for p in parsed.problems)
    assert parsed.changes == [("", "NEW_FUNCTION", "f")]


def test_parse_of_a_prompt_plus_generation_reads_the_target_commit():
    pairs = linear_history(3)
    lang = CommitLanguage()
    target_commit, target_chunks = pairs[-1]
    prompt_text = "".join(lang.render_commit(c, ch, "compact") for c, ch in pairs[:-1]) + lang.render_task(target_commit.message)
    generated = "".join(lang.render_segments(target_chunks, "full")) + COMMIT_END + "\n"
    parsed = lang.parse_commit(BOS + prompt_text + generated)
    assert parsed.well_formed, parsed.problems
    assert parsed.task == target_commit.message
    assert parsed.changes == [(ch.file, ch.change_type, ch.symbol) for ch in target_chunks]


def test_assemble_prompt_keeps_the_most_recent_history_that_fits():
    history = [[10] * 5, [11] * 5, [12] * 5, [13] * 5]
    task = [7, 7, 7]
    prompt, dropped = assemble_prompt(history, task, 1, 1 + 3 + 10)
    assert prompt == [1] + [12] * 5 + [13] * 5 + task and dropped == 2
    prompt, dropped = assemble_prompt(history, task, 1, 1 + 3 + 9)  # one short: only the last commit
    assert prompt == [1] + [13] * 5 + task and dropped == 3
    prompt, dropped = assemble_prompt(history, list(range(50)), 1, 8)  # the task alone is too long: cut
    assert prompt == [1] + list(range(7)) and dropped == 4
    prompt, dropped = assemble_prompt([], task, 1, 100)
    assert prompt == [1] + task and dropped == 0


def test_load_needs_a_language_file(tmp_path):
    with pytest.raises(UserError, match="run the tokenizer stage"):
        CommitLanguage.load(tmp_path / "missing")
    with pytest.raises(UserError, match="not a tokenizer folder"):
        CommitLanguage.load(tmp_path)
    lang = CommitLanguage(authors=["a"], modules=["m"], tokenizer_info={"mode": "train", "added_tokens": 0})
    lang.save(tmp_path)
    assert CommitLanguage.load(tmp_path) == lang
    (tmp_path / "commit_language.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(UserError, match="corrupt"):
        CommitLanguage.load(tmp_path)


def test_compact_form_of_a_huge_commit_is_capped_and_marked():
    c = commit("huge")
    chunks = [chunk(c, f"src/f{i // 5}.rs", "NEW_FUNCTION", f"f{i}", after="fn x() {}\n") for i in range(100)]  # 20 files
    lang = CommitLanguage(compact_max_files=8, compact_max_changes=12)
    parsed = lang.parse_commit(lang.render_commit(c, chunks, "compact"))
    assert parsed.well_formed and parsed.truncated
    assert [f.path for f in parsed.files] == [f"src/f{i}.rs" for i in range(8)]
    assert parsed.changes == [(ch.file, ch.change_type, ch.symbol) for ch in chunks[:12]]
    unlimited = CommitLanguage(compact_max_files=0, compact_max_changes=0)
    parsed = unlimited.parse_commit(unlimited.render_commit(c, chunks, "compact"))
    assert not parsed.truncated and len(parsed.changes) == 100 and len(parsed.files) == 20
    full = lang.parse_commit(lang.render_commit(c, chunks, "full"))  # targets are never capped here
    assert not full.truncated and len(full.changes) == 100
    small = lang.render_commit(c, chunks[:3], "compact")
    assert "<TRUNCATED>" not in small and lang.parse_commit(small).changes == [(ch.file, ch.change_type, ch.symbol) for ch in chunks[:3]]


def test_history_reader_pairs_commits_with_their_chunks_and_refuses_a_mismatch(tmp_path):
    pairs = linear_history(4)
    pairs[1] = (pairs[1][0], [])  # a commit without chunks
    commits_path, chunks_path = write_history(tmp_path / "ok", pairs)
    read = list(iter_commit_records(commits_path, chunks_path))
    assert [(c.hash, [ch.symbol for ch in chunks]) for c, chunks in read] == [(c.hash, [ch.symbol for ch in chunks]) for c, chunks in pairs]
    swapped = [pairs[0], (pairs[2][0], pairs[3][1]), (pairs[3][0], pairs[2][1])]  # chunks out of the commits' order
    commits_path, chunks_path = write_history(tmp_path / "bad", swapped)
    with pytest.raises(UserError, match="do not belong together"):
        list(iter_commit_records(commits_path, chunks_path))
