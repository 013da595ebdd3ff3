"""Stage 4 on a real fixture repository (git_scraper + semantic_chunker + a trained tokenizer)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repo2model.stages import dataset_builder as stage
from repo2model.stages import tokenizer as tokenizer_stage
from conftest import GitRepo
from helpers_data import build_fixture_repo, commit, chunk, linear_history, scrape_and_chunk, write_history
from repo2model.language.commit_language import CommitLanguage
from repo2model.language.encoding import decode_ids, encode_texts
from repo2model.language.history_reader import iter_commit_records
from repo2model.language.encoded_commits import EncodedCommits
from repo2model.core.errors import UserError
from repo2model.language.examples import IGNORE_INDEX, ExampleSet
from repo2model.language.splits import SPLITS, chronological_order, padding_estimate, untie
from repo2model.core.paths import ArtifactPaths

ROOT = Path(__file__).resolve().parents[1]
CFG = dict(context_window=256, target_window=96, history_commits=3, val_ratio=0.2, test_ratio=0.2)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """(repo, {label: hash}, paths) with commits, chunks and a tokenizer."""
    base = tmp_path_factory.mktemp("history")
    repo = GitRepo(base / "repo")
    hashes = build_fixture_repo(repo)
    paths = scrape_and_chunk(repo.path, base / "out")
    tokenizer_stage.run(tokenizer_stage.Config(vocab_size=900, top_authors=2, top_modules=1), paths)
    return repo, hashes, paths


def outputs_in(paths: ArtifactPaths, folder: Path) -> ArtifactPaths:
    return dataclasses.replace(
        paths, train_data=folder / "training_data_train.pt", val_data=folder / "training_data_val.pt",
        test_data=folder / "training_data_test.pt", dataset_stats=folder / "dataset_stats.json",
    )


def build(paths, folder, **cfg):
    out = outputs_in(paths, folder)
    stats = stage.run(stage.Config(**{**CFG, **cfg}), out)
    return out, stats, {s: ExampleSet.load(out.split_data(s)) for s in SPLITS}


def effective_times(repo: GitRepo) -> dict[str, int]:
    """Commit time raised to the parents', computed from git itself."""
    times: dict[str, int] = {}
    for line in repo.git("log", "--all", "--reverse", "--topo-order", "--format=%H %ct %P").splitlines():
        sha, ct, *parents = line.split()
        times[sha] = max([int(ct), *(times[p] for p in parents)])
    return times


def test_labels_mask_the_context_token_by_token(history, tmp_path):
    from transformers import AutoTokenizer

    repo, hashes, paths = history
    out, stats, splits = build(paths, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    lang = CommitLanguage.load(paths.tokenizer_dir)
    records = {c.hash: (c, ch) for c, ch in iter_commit_records(paths.commits, paths.chunks)}
    order = chronological_order(EncodedCommits.load(paths.tokens), False).hashes
    checked = 0
    for split, examples in splits.items():
        assert examples.meta["split"] == split
        assert examples.meta["vocab_size"] == len(tok) and examples.meta["tokenizer_dir"] == str(paths.tokenizer_dir)
        assert (examples.meta["bos_token_id"], examples.meta["eos_token_id"], examples.meta["pad_token_id"]) == (
            tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        for i in range(len(examples)):
            ids, labels, start = examples.ids(i).tolist(), examples.labels(i).tolist(), int(examples.target_starts[i])
            assert len(ids) <= CFG["context_window"] and len(ids) - start <= CFG["target_window"]
            for position, (token, label) in enumerate(zip(ids, labels)):
                assert label == (IGNORE_INDEX if position < start else token)
            target_commit, target_chunks = records[examples.commits[i]]
            assert examples.timestamps[i] == target_commit.authored_at
            # the context is exactly what prediction's build_prompt gives for the same history
            rank = order.index(target_commit.hash)
            previous = [records[h] for h in order[max(0, rank - CFG["history_commits"]) : rank]]
            target_ids = ids[start:]
            prompt = lang.build_prompt(previous, target_commit.message, tok, CFG["context_window"] - len(target_ids))
            assert ids[:start] == prompt
            # the target is the full rendering of the changes, closed and ended
            target_text = decode_ids(tok, target_ids)
            assert target_text.endswith("<COMMIT_END>\n<EOS>") and target_text.startswith("<FILE>")
            if "<TRUNCATED>" not in target_text:
                assert target_text == "".join(lang.render_segments(target_chunks, "full")) + "<COMMIT_END>\n<EOS>"
            checked += 1
    assert checked == sum(stats["examples"].values()) >= 10


def test_split_is_chronological_with_no_commit_in_two_splits(history, tmp_path):
    repo, hashes, paths = history
    out, stats, splits = build(paths, tmp_path)
    sets = {s: set(e.commits) for s, e in splits.items()}
    assert all(len(sets[s]) == len(splits[s].commits) for s in sets)
    assert not (sets["train"] & sets["val"]) and not (sets["val"] & sets["test"]) and not (sets["train"] & sets["test"])
    assert all(len(e) >= 1 for e in splits.values())
    # later by git's own commit times raised along ancestry (skewed dates do not reorder)...
    times = effective_times(repo)
    assert max(times[c] for c in sets["train"]) <= min(times[c] for c in sets["val"])
    assert max(times[c] for c in sets["val"]) <= min(times[c] for c in sets["test"])
    # ...and by ancestry: nothing in a later split is an ancestor of anything in an earlier one
    for earlier, later in (("train", "val"), ("train", "test"), ("val", "test")):
        for old in sets[earlier]:
            ancestors = set(repo.git("rev-list", old).split())
            assert not ancestors & sets[later]
    # the merge duplicates the feature commits' changes: not a target; the binary-only commit has no chunks
    all_targets = set().union(*sets.values())
    assert hashes["merge"] not in all_targets
    assert stats["commits"]["skipped_merges"] == 1 and stats["commits"]["skipped_no_chunks"] == 1
    assert stats["commits"]["effective_time_raised"] == 1  # the commit whose clock was behind its parent
    assert hashes["clock_behind"] in all_targets and hashes["skewed_author"] in sets["train"]
    assert stats["splits"]["train"]["authored_at"]["min"].startswith("2019-06-01")  # raw dates reported as they are
    assert stats["splits"]["train"]["effective_time"]["last"] <= stats["splits"]["val"]["effective_time"]["first"]
    assert stats["splits"]["val"]["effective_time"]["last"] <= stats["splits"]["test"]["effective_time"]["first"]
    assert sum(stats["examples"].values()) == stats["commits"]["targets"] == len(all_targets)


def test_first_parent_only_keeps_the_main_line(history, tmp_path):
    repo, hashes, paths = history
    out, stats, splits = build(paths, tmp_path, first_parent_only=True)
    main_line = set(repo.git("rev-list", "--first-parent", "main").split())
    targets = set().union(*(set(e.commits) for e in splits.values()))
    assert targets <= main_line
    assert hashes["merge"] in targets  # on the first-parent line the merge carries the branch's work
    assert hashes["f1"] not in targets and hashes["f2"] not in targets
    assert stats["commits"]["in_order"] == len(main_line)


def test_long_targets_are_cut_between_chunks_with_a_marker(history, tmp_path):
    from transformers import AutoTokenizer

    repo, hashes, paths = history
    out, stats, splits = build(paths, tmp_path, target_window=40, context_window=120)
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    lang = CommitLanguage.load(paths.tokenizer_dir)
    records = {c.hash: ch for c, ch in iter_commit_records(paths.commits, paths.chunks)}
    truncated = 0
    for examples in splits.values():
        for i in range(len(examples)):
            ids = examples.ids(i).tolist()
            start = int(examples.target_starts[i])
            assert len(ids) - start <= 40 and len(ids) <= 120
            text = decode_ids(tok, ids[start:])
            if "<TRUNCATED>" not in text:
                continue
            truncated += 1
            assert text.endswith("<TRUNCATED>\n<COMMIT_END>\n<EOS>")
            parsed = lang.parse_commit(text)
            assert parsed.truncated and parsed.complete
            real = [(c.file, c.change_type, c.symbol) for c in records[examples.commits[i]]]
            kept = len(parsed.changes)
            assert kept >= 1 and parsed.changes == real[:kept]  # whole chunks from the start, in order
            if kept == len(real):
                assert kept == 1  # only a single over-long chunk is cut inside (at a line end)
    assert truncated == stats["truncation"]["targets_truncated"] > 0
    assert stats["truncation"]["target_rate"] == round(truncated / stats["commits"]["targets"], 4)


def test_same_inputs_give_byte_identical_artifacts(history, tmp_path):
    repo, hashes, paths = history
    out, _, _ = build(paths, tmp_path)
    files = [out.train_data, out.val_data, out.test_data, out.dataset_stats]
    first = [p.read_bytes() for p in files]
    build(paths, tmp_path)
    assert [p.read_bytes() for p in files] == first


def test_seed_cli_flags(history, tmp_path):
    repo, hashes, paths = history
    proc = subprocess.run(
        [sys.executable, str(ROOT / "dataset_builder.py"), "--vocab", str(paths.vocab), "--chunks", str(paths.chunks),
         "--commits", str(paths.commits), "--output-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sum(summary["examples"].values()) == 17  # 19 commits, less the merge and the binary-only one
    assert ExampleSet.load(tmp_path / "training_data_train.pt").meta["context_window"] == stage.Config().context_window
    assert json.loads((tmp_path / "dataset_stats.json").read_text(encoding="utf-8"))["examples"] == summary["examples"]


def test_commits_read_ahead_of_their_turn_wait_in_order(tmp_path):
    """commits.json lists an unrelated older commit after a newer one: examples follow effective time."""
    a = commit("a", when="2024-01-05T00:00:00+00:00")
    b = commit("b", when="2024-01-01T00:00:00+00:00")  # no relation to a, older
    c = commit("c", parents=[a.hash, b.hash], when="2024-01-06T00:00:00+00:00")
    pairs = [(x, [chunk(x, f"{x.message[0]}.rs", "NEW_FUNCTION", x.message[0], after="fn x() {}\n")]) for x in (a, b, c)]
    pairs += linear_history(7, start_day=10)
    pairs[3][0].parents = [c.hash]
    write_history(tmp_path / "out", pairs)
    paths = ArtifactPaths.under(tmp_path / "out")
    tokenizer_stage.run(tokenizer_stage.Config(vocab_size=600, top_authors=1, top_modules=1), paths)
    stage.run(stage.Config(**{**CFG, "merge_targets": "include"}), paths)
    commits = [h for s in SPLITS for h in ExampleSet.load(paths.split_data(s)).commits]
    assert commits[:3] == [b.hash, a.hash, c.hash]
    assert len(commits) == 10


def test_bad_inputs_are_one_line_errors(history, tmp_path):
    repo, hashes, paths = history
    out = outputs_in(paths, tmp_path)
    # a tokenizer whose special tokens do not match its commit language
    broken = tmp_path / "tok"
    shutil.copytree(paths.tokenizer_dir, broken)
    data = json.loads((broken / "commit_language.json").read_text(encoding="utf-8"))
    data["authors"].append("Someone Else")
    (broken / "commit_language.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match=r"does not match the commit language: 1 special token.*<AUTHOR:Someone Else>.*rerun the tokenizer"):
        stage.run(stage.Config(**CFG), dataclasses.replace(out, tokenizer_dir=broken))
    # a tokenizer folder that is fine, but not the one tokens.pt was encoded with
    other = tmp_path / "other"
    tokenizer_stage.run(tokenizer_stage.Config(vocab_size=800, top_authors=1, top_modules=1),
                        dataclasses.replace(paths, tokenizer_dir=other, vocab=other / "vocab.json",
                                            tokens=tmp_path / "other.pt", tokenizer_stats=tmp_path / "other.json"))
    with pytest.raises(UserError, match="was encoded with another tokenizer.*rerun the tokenizer stage"):
        stage.run(stage.Config(**CFG), dataclasses.replace(out, tokenizer_dir=other))
    with pytest.raises(UserError, match="run the tokenizer stage"):
        stage.run(stage.Config(**CFG), dataclasses.replace(out, tokenizer_dir=tmp_path / "none"))
    with pytest.raises(UserError, match="tokens.pt: not found: run the tokenizer stage"):
        stage.run(stage.Config(**CFG), dataclasses.replace(out, tokens=tmp_path / "tokens.pt"))
    # a tokens.pt of the old layout (per chunk ids, no commit pieces)
    old = tmp_path / "old-tokens.pt"
    torch.save({"input_ids": torch.zeros(3, dtype=torch.int32), "offsets": torch.tensor([0, 3]), "meta": {}}, old)
    with pytest.raises(UserError, match="not an encoded history of this version.*rerun the tokenizer stage"):
        stage.run(stage.Config(**CFG), dataclasses.replace(out, tokens=old))
    # too short a history for the split: the counts are in the message
    write_history(tmp_path / "short", linear_history(2))
    short = ArtifactPaths.under(tmp_path / "short")
    tokenizer_stage.run(tokenizer_stage.Config(vocab_size=600, top_authors=1, top_modules=1), short)
    with pytest.raises(UserError, match=r"history too short to split: 2 commits with changes .* give 2/0/0 train/val/test"):
        stage.run(stage.Config(**CFG), outputs_in(short, tmp_path))
    assert not out.train_data.exists()  # nothing written
    with pytest.raises(UserError, match="context_window: must leave"):
        stage.main.__wrapped__(["--context-window", "50", "--target-window", "48"])


def test_cli_missing_artifacts_exit_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "dataset_builder.py"), "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "tokenizer" in proc.stderr


def test_padding_estimate_by_hand():
    lengths = np.array([10, 20, 30, 40, 50])
    waste = padding_estimate(lengths, batch_size=2, context_window=64)
    # batches [10,20] [30,40] [50] padded to 20, 40, 50 -> 40 + 80 + 50 = 170 slots for 150 tokens
    assert waste["unpacked"] == round(1 - 150 / 170, 4)
    # rows: [10,20,30] [40] [50] -> 3 rows of 64
    assert waste["packed_rows"] == 3 and waste["packed"] == round(1 - 150 / 192, 4)


def test_huge_commits_are_cut_at_whole_chunks_or_lines(tmp_path):
    """A ~200 KB chunk and a 3000-file commit: targets cut within the window, the over-long chunk at a line end."""
    from transformers import AutoTokenizer

    pairs = linear_history(12)
    giant, many = pairs[4][0], pairs[7][0]
    body = "".join(f"    let value_{i} = compute({i});\n" for i in range(6000))  # one ~200 KB chunk
    pairs[4] = (giant, [chunk(giant, "src/big.rs", "NEW_FUNCTION", "big", after="fn big() {\n" + body + "}\n")])
    pairs[7] = (many, [chunk(many, f"src/m{i}.rs", "NEW_FUNCTION", f"f{i}", after=f"fn f{i}() {{}}\n") for i in range(3000)])
    write_history(tmp_path / "out", pairs)
    paths = ArtifactPaths.under(tmp_path / "out")
    tokenizer_stage.run(tokenizer_stage.Config(vocab_size=600, top_authors=1, top_modules=1), paths)
    stats = stage.run(stage.Config(**CFG), paths)
    assert stats["truncation"]["targets_truncated"] >= 2 and stats["truncation"]["cut_inside_first_chunk"] >= 1
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    lang = CommitLanguage.load(paths.tokenizer_dir)
    splits = {s: ExampleSet.load(paths.split_data(s)) for s in SPLITS}
    where = {h: (data, i) for data in splits.values() for i, h in enumerate(data.commits)}
    for target, chunks in (pairs[4], pairs[7]):
        data, i = where[target.hash]
        ids = data.ids(i).tolist()
        target = ids[int(data.target_starts[i]):]
        assert len(target) <= CFG["target_window"] and len(ids) <= CFG["context_window"]
        text = decode_ids(tok, target)
        assert text.endswith("<TRUNCATED>\n<COMMIT_END>\n<EOS>")
        kept = text[: -len("<TRUNCATED>\n<COMMIT_END>\n<EOS>")]
        full = "".join(lang.render_segments(chunks, "full"))
        assert full.startswith(kept) and kept.endswith("\n") and len(kept) > 0
        assert target[: -len(encode_texts(tok, ["<TRUNCATED>\n<COMMIT_END>\n"])[0]) - 1] == encode_texts(tok, [kept])[0]


def test_a_zero_ratio_leaves_that_split_empty(history, tmp_path):
    repo, hashes, paths = history
    out, stats, splits = build(paths, tmp_path, val_ratio=0.0, test_ratio=0.3)
    assert len(splits["val"]) == 0 and stats["examples"]["val"] == 0
    assert stats["examples"]["test"] == round(17 * 0.3) and stats["examples"]["train"] == 17 - round(17 * 0.3)


def test_split_boundaries_move_off_equal_times():
    times = [1, 2, 2, 2, 3, 4, 5]
    assert untie(2, 1, 6, times) == 4  # forward past the run of 2s
    assert untie(2, 1, 4, times) == 1  # forward would empty the next split: backward instead
    assert untie(4, 1, 6, times) == 4  # no tie
    assert untie(2, 2, 4, [2, 2, 2, 2, 2]) == 2  # cannot separate: left as is (stats show it)
    assert untie(3, 1, 3, times) == 3  # the next split is empty (ratio 0): untouched


def test_an_output_that_cannot_be_written_fails_before_any_work(history, tmp_path):
    repo, hashes, paths = history
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = dataclasses.replace(outputs_in(paths, tmp_path), test_data=blocker / "training_data_test.pt")
    with pytest.raises(UserError, match=f"{blocker}: cannot create output folder"):
        stage.run(stage.Config(**CFG), out)
    assert not out.train_data.exists() and not out.dataset_stats.exists()
    proc = subprocess.run([sys.executable, str(ROOT / "dataset_builder.py"), "--vocab", str(paths.vocab),
                           "--output-dir", str(blocker / "sub")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot create output folder" in proc.stderr


def test_seed_flags_naming_other_artifacts_than_tokens_pt_was_encoded_from_are_refused(history, tmp_path):
    repo, hashes, paths = history
    write_history(tmp_path / "other", linear_history(5))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "dataset_builder.py"), "--vocab", str(paths.vocab), "--commits", str(tmp_path / "other" / "commits.json"),
         "--output-dir", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"{paths.tokens} was not encoded from {tmp_path / 'other' / 'commits.json'}" in proc.stderr
    assert not (tmp_path / "training_data_train.pt").exists()


UPDATE_CFG = dict(CFG, val_ratio=0.1, test_ratio=0.1)


def encoded_history(folder: Path, pairs: list, frozen: bool = False) -> ArtifactPaths:
    write_history(folder, pairs)
    paths = ArtifactPaths.under(folder)
    tokenizer_stage.run(tokenizer_stage.Config(vocab_size=600, top_authors=1, top_modules=1, frozen=frozen), paths)
    return paths


def split_commits(paths: ArtifactPaths) -> dict[str, list[str]]:
    return {s: ExampleSet.load(paths.split_data(s)).commits for s in SPLITS}


def test_update_moves_the_split_forward_and_replays_earlier_training(tmp_path):
    history = linear_history(60)  # commit i is a day after commit i - 1
    rank = {c.hash: i for i, (c, _) in enumerate(history)}
    paths = encoded_history(tmp_path / "out", history[:40])
    stage.run(stage.Config(**UPDATE_CFG), paths)
    full = split_commits(paths)
    assert [len(full[s]) for s in SPLITS] == [32, 4, 4]

    encoded_history(tmp_path / "out", history[:50], frozen=True)
    stats = stage.run(stage.Config(**UPDATE_CFG, update=True, replay_share=0.25), paths, seed=7)
    first = split_commits(paths)
    never_trained = [c.hash for c, _ in history[:50] if c.hash not in full["train"]]  # old val + test + 10 new
    assert first["test"] == never_trained[-5:] and first["val"] == never_trained[-10:-5]  # 10% of 50 each
    new_train = never_trained[:-10]
    replayed = [h for h in first["train"] if h in full["train"]]
    assert len(new_train) == 8 and len(replayed) == round(8 * 0.25 / 0.75) == 3
    assert sorted(first["train"], key=rank.get) == first["train"] and set(first["train"]) == set(new_train) | set(replayed)
    assert max(rank[h] for h in first["train"]) < min(rank[h] for h in first["val"]) <= max(rank[h] for h in first["val"]) < min(rank[h] for h in first["test"])
    assert stats["update"] == {"trained_before": 32, "new_train": 8, "replayed": 3, "replay_share": 0.25}
    trained = ExampleSet.load(paths.train_data).meta["trained_commits"]
    assert trained == sorted(set(full["train"]) | set(new_train))
    assert not set(trained) & (set(first["val"]) | set(first["test"]))  # nothing trained on is evaluated on
    # the same seed draws the same replay; another seed another
    stage.run(stage.Config(**UPDATE_CFG, update=False), paths)  # back to the full split ...
    encoded_history(tmp_path / "out", history[:40], frozen=True)
    stage.run(stage.Config(**UPDATE_CFG), paths)
    encoded_history(tmp_path / "out", history[:50], frozen=True)
    stage.run(stage.Config(**UPDATE_CFG, update=True, replay_share=0.25), paths, seed=7)  # ... and the same update again
    assert split_commits(paths) == first

    # No new commit since: nothing to train on, the split files are left untouched (later stages stay up to date).
    files = {p: p.read_bytes() for p in (paths.train_data, paths.val_data, paths.test_data, paths.dataset_stats)}
    assert stage.run(stage.Config(**UPDATE_CFG, update=True), paths)["update"]["nothing_new"]
    assert {p: p.read_bytes() for p in files} == files

    # A second update: what both earlier trainings saw counts as trained, whatever the replay drew.
    encoded_history(tmp_path / "out", history, frozen=True)
    stats = stage.run(stage.Config(**UPDATE_CFG, update=True, replay_share=0.0), paths)
    second = split_commits(paths)
    assert stats["update"]["trained_before"] == len(trained) == 40 and stats["update"]["replayed"] == 0
    assert not (set(second["val"]) | set(second["test"])) & set(trained)
    assert second["train"] == [h for h in first["val"] + first["test"] + [c.hash for c, _ in history[50:]]
                               if h not in second["val"] + second["test"]]
    assert [len(second[s]) for s in SPLITS] == [8, 6, 6]


def test_update_without_a_previous_split_is_one_line(tmp_path):
    paths = encoded_history(tmp_path / "out", linear_history(12))
    with pytest.raises(UserError, match="training_data_train.pt: not found: dataset_builder.update .* without --update"):
        stage.run(stage.Config(**CFG, update=True), paths)
    with pytest.raises(UserError, match=r"replay_share: must be in \[0, 1\)"):
        stage.main.__wrapped__(["--output-dir", str(tmp_path), "--config", str(write_config(tmp_path, "  replay_share: 1.0\n"))])


def write_config(folder: Path, dataset_builder: str) -> Path:
    config = folder / "config.yaml"
    config.write_text(f"pipeline:\n  output_dir: out\ndataset_builder:\n{dataset_builder}", encoding="utf-8")
    return config
