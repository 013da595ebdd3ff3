"""predict.py on a tiny real model trained in the test: generation, parsing, ranking, options, history."""

from __future__ import annotations

import json

import pytest

import helpers_predict as H
import predict
from repo2model.artifacts import CommitsWriter, write_jsonl


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learned")
    model, tokenizer, lang, prompt, target = H.trained_predictor_parts(folder)
    return {"folder": folder, "model": model, "tokenizer": tokenizer, "lang": lang, "prompt": prompt,
            "target": target}


def predictor(learned, **cfg):
    return predict.Predictor(learned["model"], learned["tokenizer"], learned["lang"],
                             predict.Config(max_new_tokens=120, **cfg))


def test_greedy_prediction_recovers_the_learned_change(learned):
    out = predictor(learned).predict(H.fixture_history(), H.TASK)
    assert [(f["path"], f["score"]) for f in out["files"]] == [("pkg/parse.py", 1.0), ("pkg/strip.py", 1.0)]
    assert [f["change_types"][0]["type"] for f in out["files"]] == ["MODIFIED_FUNCTION", "NEW_FUNCTION"]
    assert out["modules"] == ["pkg.parse", "pkg.strip"] and out["symbols"] == ["parse", "strip"]
    assert "def strip(s):\n    return s.strip()" in out["code_sketch"]
    (candidate,) = out["candidates"]
    assert candidate["text"] == H.target_text(learned["lang"]).rstrip("\n")  # stops at <COMMIT_END>
    assert candidate["malformed"] is False and candidate["problems"] == []
    assert out["prompt_tokens"] == len(learned["prompt"])
    assert [h["message"] for h in out["history"]] == ["Add the parser", "Add tests for the parser"]
    json.dumps(out)  # JSON-able as is


def test_sampling_ranks_across_candidates_and_is_seeded(learned):
    p = predictor(learned)
    options = {"decoding": "sample", "num_candidates": 4, "temperature": 1.2}
    first = p.predict(H.fixture_history(), H.TASK, options, seed=7)
    again = p.predict(H.fixture_history(), H.TASK, options, seed=7)
    assert [c["text"] for c in first["candidates"]] == [c["text"] for c in again["candidates"]]
    assert len(first["candidates"]) == 4
    scores = [f["score"] for f in first["files"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1.0 for s in scores)
    total = sum(c["score"] for c in first["candidates"])
    for f in first["files"]:  # a file's score: the weight share of the candidates naming it
        share = sum(c["score"] for c in first["candidates"] if f["path"] in c["files"]) / total
        assert f["score"] == pytest.approx(share, abs=1e-5)
        assert f["votes"] == sum(f["path"] in c["files"] for c in first["candidates"])
    assert max(f["votes"] for f in first["files"]) == first["files"][0]["votes"] or first["files"][0]["score"] > 0.5
    beam = p.predict(H.fixture_history(), H.TASK, {"decoding": "beam", "num_candidates": 2})
    assert len(beam["candidates"]) == 2 and beam["files"][0]["path"] == "pkg/parse.py"


def test_untrained_model_gives_malformed_candidates_not_a_crash(learned):
    model = H.tiny_llama(learned["tokenizer"], seed=3)
    p = predict.Predictor(model, learned["tokenizer"], learned["lang"],
                          predict.Config(max_new_tokens=30, decoding="sample", num_candidates=3))
    out = p.predict(H.fixture_history(), H.TASK)
    assert len(out["candidates"]) == 3
    assert out["malformed_candidates"] == 3
    assert all(c["problems"] for c in out["candidates"])


def test_parse_generation_reports_problems():
    from repo2model.commit_language import CommitLanguage

    lang = CommitLanguage()
    cut = predict.parse_generation(lang, "<FILE>a.py\n<CHANGE:new_function>f\n<CODE>def f(")
    assert cut["malformed"] and cut["files"][0]["path"] == "a.py"
    assert any("COMMIT_END" in p for p in cut["problems"])
    empty = predict.parse_generation(lang, "garbage")
    assert empty["malformed"] and empty["files"] == []


def test_rank_candidates_by_hand():
    def cand(score, *paths, malformed=False):
        return {"score": score, "malformed": malformed, "files": [
            {"path": p, "module": None, "changes": [{"change_type": "NEW_FUNCTION", "symbol": p[0], "code": "x"}]}
            for p in paths]}

    ranked = predict.rank_candidates([cand(0.6, "a", "b"), cand(0.2, "b", "c"), cand(0.2, "a")], max_files=2)
    assert [(f["path"], f["score"], f["votes"]) for f in ranked["files"]] == [("a", 0.8, 2), ("b", 0.8, 2)]
    assert ranked["symbols"] == ["a", "b"]
    assert ranked["code_sketch"].startswith("# a NEW_FUNCTION a")


def test_options_are_validated():
    cfg = predict.Config()
    assert predict.with_options(cfg, {"max_new_tokens": 10}).max_new_tokens == 10
    for options, word in [({"bogus": 1}, "options.bogus"), ({"max_new_tokens": "5"}, "options.max_new_tokens"),
                          ({"max_new_tokens": 0}, "options.max_new_tokens"), ({"decoding": "magic"}, "decoding"),
                          ({"top_p": 2.0}, "options.top_p"), ([1], "options")]:
        with pytest.raises(ValueError, match=word.replace(".", r"\.")):
            predict.with_options(cfg, options)


def test_history_from_artifacts_takes_the_last_commits_with_their_chunks(tmp_path):
    history = H.fixture_history()
    with CommitsWriter(tmp_path / "commits.json") as writer:
        for c, _ in history:
            writer.add(c)
        writer.metadata = {"total_commits": 2}
    write_jsonl(tmp_path / "chunks.jsonl", [ch for _, chunks in history for ch in chunks])
    last = predict.history_from_artifacts(tmp_path / "commits.json", tmp_path / "chunks.jsonl", 1)
    assert [(c.hash, [ch.symbol for ch in chunks]) for c, chunks in last] == [(history[1][0].hash, ["test_parse"])]
    records = [{**c.to_dict(), "chunks": [ch.to_dict() for ch in chunks]} for c, chunks in history]
    assert predict.history_from_records(records) == history
    with pytest.raises(ValueError, match=r"commits\[0\]"):
        predict.history_from_records([{"hash": "x"}])


# ---------------------------------------------------------------- every model folder train_model writes


def save_model_folder(learned, folder):
    learned["model"].save_pretrained(str(folder))
    learned["tokenizer"].save_pretrained(str(folder))
    learned["lang"].save(folder)
    return folder


def test_scratch_adapter_and_merged_folders_all_predict(learned, tmp_path):
    import train_model

    from peft import LoraConfig, get_peft_model

    expected = predictor(learned).predict(H.fixture_history(), H.TASK)["files"]
    cfg = predict.Config(max_new_tokens=120)

    scratch = save_model_folder(learned, tmp_path / "scratch")
    base = save_model_folder(learned, tmp_path / "base")
    adapter_dir = tmp_path / "adapter"
    peft_model = get_peft_model(H.tiny_llama(learned["tokenizer"]), LoraConfig(r=4, target_modules=["q_proj"]))
    peft_model.base_model.model.load_state_dict(learned["model"].state_dict(), strict=False)
    peft_model.save_pretrained(str(adapter_dir))  # LoRA B starts at zero: the adapter changes nothing
    learned["tokenizer"].save_pretrained(str(adapter_dir))
    learned["lang"].save(adapter_dir)
    (adapter_dir / train_model.INFO_FILE).write_text(json.dumps({"mode": "lora", "base_model": str(base)}))
    merged = train_model.merge_adapter(adapter_dir, adapter_dir / "merged")

    for folder in (scratch, adapter_dir, merged):
        loaded = predict.Predictor.load(folder, cfg)
        out = loaded.predict(H.fixture_history(), H.TASK)
        assert out["files"] == expected, folder
        assert out["model"] == str(folder)


def test_cli_predicts_from_commits_json(learned, tmp_path, capsys):
    folder = save_model_folder(learned, tmp_path / "model")
    history = H.fixture_history()
    with CommitsWriter(tmp_path / "commits.json") as writer:
        for c, _ in history:
            writer.add(c)
        writer.metadata = {"total_commits": 2}
    write_jsonl(tmp_path / "chunks.jsonl", [ch for _, chunks in history for ch in chunks])
    out_file = tmp_path / "prediction.json"
    code = predict.main(["--model", str(folder), "--commits", str(tmp_path / "commits.json"), "--task", H.TASK,
                         "--max-new-tokens", "120", "--output", str(out_file)])
    assert code == 0
    result = json.loads(out_file.read_text())
    assert [f["path"] for f in result["files"]] == ["pkg/parse.py", "pkg/strip.py"]
    bare = tmp_path / "bare" / "model"  # a model folder without its commit language
    learned["model"].save_pretrained(str(bare))
    learned["tokenizer"].save_pretrained(str(bare))
    capsys.readouterr()
    for argv, word in [
        (["--task", "", "--commits", str(tmp_path / "commits.json")], "--task"),
        (["--task", "x", "--commits", str(tmp_path / "missing.json")], "git_scraper"),
        (["--task", "x", "--commits", str(tmp_path / "commits.json"), "--num-candidates", "0"], "num_candidates"),
        (["--task", "x", "--repo", str(tmp_path)], "not a git repository"),
        (["--task", "x", "--commits", str(tmp_path / "commits.json"), "--model", str(tmp_path)], "not a model folder"),
        (["--task", "x", "--commits", str(tmp_path / "commits.json"), "--model", str(bare),
          "--output-dir", str(tmp_path / "out")], "commit_language.json"),
    ]:
        assert predict.main(["--model", str(folder), *argv] if "--model" not in argv else argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and word in errors[0], errors


def test_prompt_budget_follows_the_trained_length(learned, tmp_path):
    (tmp_path / "training_info.json").write_text(json.dumps({"seq_len": 200}))
    assert predict.trained_length(tmp_path) == 200
    assert predict.trained_length(tmp_path / "merged") == 200  # merged weights sit inside the adapter folder
    p = predict.Predictor(learned["model"], learned["tokenizer"], learned["lang"], predict.Config(max_new_tokens=120),
                          trained_length=200)
    assert p.context_window(p.cfg) == 80
    with pytest.raises(ValueError, match="max_new_tokens"):
        p.predict(H.fixture_history(), H.TASK, {"max_new_tokens": 190})
