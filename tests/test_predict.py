"""The prediction library and predict.py on a tiny real model trained in the test: generation, parsing, ranking,
options, history."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

import helpers_predict as H
from repo2model.stages import predict
from repo2model.serving import history as history_lib
from repo2model.serving.generation import RankedFiles, merge_rankings, parse_generation, rank_candidates
from repo2model.serving.prediction import Candidate, PredictedFile
from repo2model.serving.predictor import CandidatePool, Predictor, pool_from_history
from repo2model.serving.settings import PredictionConfig, with_options
from repo2model.core.artifacts import CommitsWriter, write_jsonl
from repo2model.language.commit_language import CommitLanguage
from repo2model.language.encoding import encode_texts
from repo2model.language.parse import ParsedChunk, ParsedFile
from repo2model.training.models import INFO_FILE, merge_adapter, trained_length


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learned")
    model, tokenizer, lang, prompt, target = H.trained_predictor_parts(folder)
    return {"folder": folder, "model": model, "tokenizer": tokenizer, "lang": lang, "prompt": prompt,
            "target": target}


def predictor(learned, **cfg):
    """Generation-only ranking unless asked (the generation tests); the likelihood tests ask for theirs."""
    cfg.setdefault("file_ranking", "generation")
    return Predictor(learned["model"], learned["tokenizer"], learned["lang"],
                     PredictionConfig(max_new_tokens=120, **cfg))


def test_greedy_prediction_recovers_the_learned_change(learned):
    out = predictor(learned).predict(H.fixture_history(), H.TASK).to_json()
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
    first = p.predict(H.fixture_history(), H.TASK, options, seed=7).to_json()
    again = p.predict(H.fixture_history(), H.TASK, options, seed=7).to_json()
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
    beam = p.predict(H.fixture_history(), H.TASK, {"decoding": "beam", "num_candidates": 2}).to_json()
    assert len(beam["candidates"]) == 2 and beam["files"][0]["path"] == "pkg/parse.py"


def test_untrained_model_gives_malformed_candidates_not_a_crash(learned):
    model = H.tiny_llama(learned["tokenizer"], seed=3)
    p = Predictor(model, learned["tokenizer"], learned["lang"],
                  PredictionConfig(max_new_tokens=30, decoding="sample", num_candidates=3))
    out = p.predict(H.fixture_history(), H.TASK).to_json()
    assert len(out["candidates"]) == 3
    assert out["malformed_candidates"] == 3
    assert all(c["problems"] for c in out["candidates"])


def test_parse_generation_reports_problems():
    lang = CommitLanguage()
    cut = parse_generation(lang, "<FILE>a.py\n<CHANGE:new_function>f\n<CODE>def f(", 1.0)
    assert cut.malformed and cut.files[0].path == "a.py"
    assert any("COMMIT_END" in p for p in cut.problems)
    empty = parse_generation(lang, "garbage", 1.0)
    assert empty.malformed and empty.files == []


def test_rank_candidates_by_hand():
    def cand(score, *paths, malformed=False):
        files = [ParsedFile(p, None, [ParsedChunk("NEW_FUNCTION", p[0], "x", "code")]) for p in paths]
        return Candidate("", score, files, malformed=malformed, problems=[], truncated=False)

    ranked = rank_candidates([cand(0.6, "a", "b"), cand(0.2, "b", "c"), cand(0.2, "a")], max_files=2)
    assert [(f.path, f.score, f.votes) for f in ranked.files] == [("a", 0.8, 2), ("b", 0.8, 2)]
    assert ranked.symbols == ["a", "b"]
    assert ranked.code_sketch.startswith("# a NEW_FUNCTION a")


def test_options_are_validated():
    cfg = PredictionConfig()
    assert with_options(cfg, {"max_new_tokens": 10}).max_new_tokens == 10
    for options, word in [({"bogus": 1}, "options.bogus"), ({"max_new_tokens": "5"}, "options.max_new_tokens"),
                          ({"max_new_tokens": 0}, "options.max_new_tokens"), ({"decoding": "magic"}, "decoding"),
                          ({"top_p": 2.0}, "options.top_p"), ([1], "options")]:
        with pytest.raises(ValueError, match=word.replace(".", r"\.")):
            with_options(cfg, options)


def test_history_from_artifacts_takes_the_last_commits_with_their_chunks(tmp_path):
    history = H.fixture_history()
    with CommitsWriter(tmp_path / "commits.json") as writer:
        for c, _ in history:
            writer.add(c)
        writer.metadata = {"total_commits": 2}
    write_jsonl(tmp_path / "chunks.jsonl", [ch for _, chunks in history for ch in chunks])
    last = history_lib.history_from_artifacts(tmp_path / "commits.json", tmp_path / "chunks.jsonl", 1)
    assert [(c.hash, [ch.symbol for ch in chunks]) for c, chunks in last] == [(history[1][0].hash, ["test_parse"])]
    records = [{**c.to_dict(), "chunks": [ch.to_dict() for ch in chunks]} for c, chunks in history]
    assert history_lib.history_from_records(records) == history
    with pytest.raises(ValueError, match=r"commits\[0\]"):
        history_lib.history_from_records([{"hash": "x"}])


# ---------------------------------------------------------------- every model folder train_model writes


def save_model_folder(learned, folder):
    learned["model"].save_pretrained(str(folder))
    learned["tokenizer"].save_pretrained(str(folder))
    learned["lang"].save(folder)
    return folder


def test_scratch_adapter_and_merged_folders_all_predict(learned, tmp_path):
    expected = predictor(learned, file_ranking="both").predict(H.fixture_history(), H.TASK).to_json()["files"]
    cfg = PredictionConfig(max_new_tokens=120)  # the default ranking: likelihood, then generation's own files

    scratch = save_model_folder(learned, tmp_path / "scratch")
    base = save_model_folder(learned, tmp_path / "base")
    adapter_dir = tmp_path / "adapter"
    peft_model = get_peft_model(H.tiny_llama(learned["tokenizer"]), LoraConfig(r=4, target_modules=["q_proj"]))
    peft_model.base_model.model.load_state_dict(learned["model"].state_dict(), strict=False)
    peft_model.save_pretrained(str(adapter_dir))  # LoRA B starts at zero: the adapter changes nothing
    learned["tokenizer"].save_pretrained(str(adapter_dir))
    learned["lang"].save(adapter_dir)
    (adapter_dir / INFO_FILE).write_text(json.dumps({"mode": "lora", "base_model": str(base)}))
    merged = merge_adapter(adapter_dir, adapter_dir / "merged")

    for folder in (scratch, adapter_dir, merged):
        loaded = Predictor.load(folder, cfg)
        out = loaded.predict(H.fixture_history(), H.TASK).to_json()
        assert [f["path"] for f in out["files"]] == [f["path"] for f in expected], folder
        for got, want in zip(out["files"], expected):  # the cache path works through peft and merged weights
            assert got.get("logprob") == pytest.approx(want.get("logprob"), abs=1e-4), folder
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
    # commits.json's files by likelihood (the learned one first), then the new file only generation names
    assert [f["path"] for f in result["files"]] == ["pkg/parse.py", "tests/test_parse.py", "pkg/strip.py"]
    assert result["file_ranking"]["files_scored"] == 2 and "logprob" not in result["files"][2]
    code = predict.main(["--model", str(folder), "--commits", str(tmp_path / "commits.json"), "--task", H.TASK,
                         "--max-new-tokens", "120", "--output", str(out_file), "--file-ranking", "generation"])
    assert code == 0
    assert [f["path"] for f in json.loads(out_file.read_text())["files"]] == ["pkg/parse.py", "pkg/strip.py"]
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
    assert trained_length(tmp_path) == 200
    assert trained_length(tmp_path / "merged") == 200  # merged weights sit inside the adapter folder
    p = Predictor(learned["model"], learned["tokenizer"], learned["lang"], PredictionConfig(max_new_tokens=120),
                  trained_length=200)
    assert p.context_window(p.cfg) == 80
    with pytest.raises(ValueError, match="max_new_tokens"):
        p.predict(H.fixture_history(), H.TASK, {"max_new_tokens": 190})


# ---------------------------------------------------------------- likelihood ranking of candidate files


CANDIDATES = [("tests/test_parse.py", "tests.test_parse"), ("pkg/strip.py", "pkg.strip"), ("README.md", None),
              ("pkg/parse.py", "pkg.parse"), ("pkg/other.py", "pkg.other")]


def direct_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    """log P(continuation | prompt) from one plain forward pass over prompt + continuation (no cache, no batch)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + continuation])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[len(prompt) - 1 + j, token]) for j, token in enumerate(continuation))


def test_likelihood_ranks_the_learned_file_first(learned):
    out = predictor(learned, file_ranking="likelihood").predict_ids(learned["prompt"], candidates=CANDIDATES).to_json()
    assert out["files"][0]["path"] == "pkg/parse.py"  # the target's first file
    assert sorted(f["path"] for f in out["files"]) == sorted(p for p, _ in CANDIDATES)
    logprobs = [f["logprob"] for f in out["files"]]
    assert logprobs == sorted(logprobs, reverse=True) and logprobs[0] > -1.0 > logprobs[1]
    assert out["candidates"] == [] and out["malformed_candidates"] == 0  # likelihood alone generates nothing
    assert out["modules"][0] == "pkg.parse"
    json.dumps(out)


def test_continuation_is_the_training_file_header(learned):
    p = predictor(learned)
    conts = p.file_continuations(CANDIDATES)
    tokens = [learned["tokenizer"].convert_ids_to_tokens(ids) for ids in conts]
    assert tokens[0][0] == "<FILE>" and tokens[0][-1] == "<MODULE>"  # tests: module spelled out
    assert tokens[1][-1] == "<MODULE:pkg>" and tokens[2][-1] == "Ċ"  # a top module's token; no module: newline
    # the target the model was trained on starts with exactly these ids
    parse = conts[3]
    assert learned["target"][: len(parse)] == parse
    header = learned["lang"].render_file_header("pkg/parse.py", "pkg.parse")
    assert encode_texts(learned["tokenizer"], [header])[0][: len(parse)] == parse


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_batched_cached_scores_equal_a_direct_computation(learned, batch_size):
    p = predictor(learned)
    cfg = PredictionConfig(rank_batch_size=batch_size, rank_score="sum")
    scored = p.score_files(learned["prompt"], CANDIDATES, cfg)
    conts = p.file_continuations(CANDIDATES)
    assert [s["path"] for s in scored] == [path for path, _ in CANDIDATES]
    for entry, ids in zip(scored, conts):
        assert entry["tokens"] == len(ids)
        assert entry["logprob"] == pytest.approx(direct_logprob(learned["model"], learned["prompt"], ids), abs=1e-4)
        assert entry["rank_value"] == entry["logprob"]
    mean = p.score_files(learned["prompt"], CANDIDATES, PredictionConfig(rank_score="mean"))
    assert [m["rank_value"] for m in mean] == pytest.approx([s["logprob"] / s["tokens"] for s in scored])


def test_both_puts_scored_files_first_then_generation_only_files(learned):
    history = H.fixture_history()
    out = predictor(learned, file_ranking="both").predict(history, H.TASK).to_json()
    # the history's files by likelihood, then pkg/strip.py (a new file: only the generation names it)
    assert [f["path"] for f in out["files"]] == ["pkg/parse.py", "tests/test_parse.py", "pkg/strip.py"]
    parse, test, strip = out["files"]
    assert parse["logprob"] > test["logprob"] and "logprob" not in strip
    assert (parse["score"], parse["votes"], test["score"], test["votes"]) == (1.0, 1, 0.0, 0)
    assert parse["change_types"][0]["type"] == "MODIFIED_FUNCTION" and test["change_types"] == []
    assert strip["score"] == 1.0 and strip["change_types"][0]["type"] == "NEW_FUNCTION"
    assert out["file_ranking"] == {"method": "both", "score": "sum", "files_scored": 2}
    assert out["modules"] == ["pkg.parse", "tests.test_parse", "pkg.strip"]
    assert len(out["candidates"]) == 1 and "def strip(s)" in out["code_sketch"]
    capped = predictor(learned, file_ranking="both", max_files=2).predict(history, H.TASK).to_json()
    assert [f["path"] for f in capped["files"]] == ["pkg/parse.py", "tests/test_parse.py"]
    wider = CandidatePool()
    wider.add_commit([("pkg/strip.py", "pkg.strip")])  # known from an older commit: now scored, not appended
    pool_from_history(history, wider)
    out = predictor(learned, file_ranking="both").predict(history, H.TASK, pool=wider).to_json()
    assert out["file_ranking"]["files_scored"] == 3 and all("logprob" in f for f in out["files"])
    assert out["files"][0]["path"] == "pkg/parse.py"


# The prediction JSON predict.py prints and serve.py answers (n8n's workflows read it): key -> JSON type(s).
ANSWER = {"task": str, "history": list, "model": (str, type(None)), "prompt_tokens": int, "decoding": dict,
          "file_ranking": dict, "files": list, "modules": list, "symbols": list, "code_sketch": str,
          "malformed_candidates": int, "candidates": list, "seconds": float, "ranking": str, "missing_objects": dict}
HISTORY = {"hash": str, "message": str}
DECODING = {"decoding": str, "max_new_tokens": int, "temperature": float, "top_p": float, "top_k": int,
            "num_candidates": int, "seed": int}
FILE_RANKING = {"method": str, "score": str, "files_scored": int}
GENERATED_FILE = {"path": str, "score": float, "votes": int, "module": (str, type(None)), "change_types": list,
                  "symbols": list}
SCORED_FILE = {**GENERATED_FILE, "logprob": float, "logprob_tokens": int}
CHANGE_TYPE = {"type": str, "weight": float}
CANDIDATE = {"text": str, "score": float, "malformed": bool, "problems": list, "truncated": bool, "files": list}
MISSING_OBJECTS = {"history_files": int, "code_search_files": int, "context_files": int}


def assert_shape(value: dict, shape: dict, where: str) -> None:
    assert list(value) == list(shape), (where, list(value))
    for key, expected in shape.items():
        assert isinstance(value[key], expected) and not (expected is int and isinstance(value[key], bool)), \
            (where, key, value[key])


def test_the_prediction_json_keeps_its_keys_and_types(learned):
    """A real answer (both rankings: a scored file, a file only generation names) as predict.py and serve.py
    write it: every key in its place with its JSON type; optional keys absent rather than null."""
    prediction = predictor(learned, file_ranking="both").predict(H.fixture_history(), H.TASK)
    out = json.loads(json.dumps(prediction.to_json()))
    assert_shape(out, ANSWER, "answer")
    for commit in out["history"]:
        assert_shape(commit, HISTORY, "history")
    assert_shape(out["decoding"], DECODING, "decoding")
    assert_shape(out["file_ranking"], FILE_RANKING, "file_ranking")
    assert_shape(out["missing_objects"], MISSING_OBJECTS, "missing_objects")
    parse, test, strip = out["files"]
    for file, shape in ((parse, SCORED_FILE), (test, SCORED_FILE), (strip, GENERATED_FILE)):
        assert set(file) == set(shape), file
        assert_shape({k: file[k] for k in shape}, shape, file["path"])
    for change_type in parse["change_types"] + strip["change_types"]:
        assert_shape(change_type, CHANGE_TYPE, "change_types")
    (candidate,) = out["candidates"]
    assert_shape(candidate, CANDIDATE, "candidate")
    assert candidate["files"] == ["pkg/parse.py", "pkg/strip.py"] and out["malformed_candidates"] == 0
    # The typed prediction is what the JSON says, file by file.
    assert [PredictedFile.from_json(f) for f in out["files"]] == prediction.files
    assert [(f.path, f.logprob is None) for f in prediction.files] == [(f["path"], "logprob" not in f)
                                                                       for f in out["files"]]


def test_merge_rankings_by_hand():
    generated = RankedFiles(files=[PredictedFile("new.py", 0.7, None, votes=2),
                                   PredictedFile("b.py", 0.3, "b", symbols=["f"], votes=1)],
                            modules=[], symbols=["f"], code_sketch="x")
    scored = [{"path": "a.py", "module": "a", "logprob": -3.0, "tokens": 3, "rank_value": -1.0},
              {"path": "b.py", "module": "b", "logprob": -2.0, "tokens": 1, "rank_value": -2.0}]
    merged = merge_rankings(scored, generated, max_files=10)
    assert [(f.path, f.score, f.logprob) for f in merged.files] == [
        ("a.py", 0.0, -3.0), ("b.py", 0.3, -2.0), ("new.py", 0.7, None)]
    assert merged.modules == ["a", "b"] and merged.symbols == ["f"] and merged.code_sketch == "x"


def test_candidate_pool_alternates_recent_and_frequent():
    pool = CandidatePool()
    for files in (["often.py", "old.py"], ["often.py"], ["often.py", "mid.py"], ["new.py"]):
        pool.add_commit([(f, None) for f in files])
    assert [p for p, _ in pool.top(10)] == ["new.py", "often.py", "mid.py", "old.py"]
    assert [p for p, _ in pool.top(2)] == ["new.py", "often.py"]
    pool.add_chunks([{"file": "a.py", "module": "a"}, {"file": "a.py", "module": "a"}])
    assert pool.count["a.py"] == 1 and pool.top(1) == [("a.py", "a")]


def test_ranking_options_are_validated():
    assert with_options(PredictionConfig(), {"file_ranking": "likelihood"}).file_ranking == "likelihood"
    with pytest.raises(ValueError, match="options.file_ranking"):
        with_options(PredictionConfig(), {"file_ranking": "votes"})
    for bad, word in [({"rank_candidates": 0}, "rank_candidates"), ({"rank_score": "max"}, "rank_score"),
                      ({"rank_batch_size": 0}, "rank_batch_size")]:
        with pytest.raises(ValueError, match=word):
            PredictionConfig(**bad)


# ---------------------------------------------------------------- a damaged model folder


def cut_in_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "cut safetensors": (lambda d: cut_in_half(d / "model.safetensors"), "SafetensorError"),
    "empty safetensors": (lambda d: (d / "model.safetensors").write_bytes(b""), "SafetensorError"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no file named model.safetensors"),
    "config.json not JSON": (lambda d: (d / "config.json").write_text('{"model_type": "llama", '), "config"),
    "config.json a list": (lambda d: (d / "config.json").write_text("[1]"), "TypeError"),
    "unknown architecture": (lambda d: (d / "config.json").write_text('{"model_type": "nosuch"}'), "nosuch"),
    "weights of another shape": (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"hidden_size": 64', '"hidden_size": 32')), "do not fit config.json"),
    "cut tokenizer.json": (lambda d: cut_in_half(d / "tokenizer.json"), "JSONDecodeError"),
    "no tokenizer": (lambda d: [(d / name).unlink() for name in ("tokenizer.json", "tokenizer_config.json")],
                     "tokenizer"),
}


def test_a_damaged_model_folder_is_one_line_not_a_traceback(learned, tmp_path, capsys):
    good = save_model_folder(learned, tmp_path / "good")
    commits = tmp_path / "commits.json"
    with CommitsWriter(commits) as writer:
        for c, _ in H.fixture_history():
            writer.add(c)
        writer.metadata = {"total_commits": 2}
    partial = save_model_folder(learned, tmp_path / "partial")  # a tensor missing: not a half-random model
    tensors = load_file(str(partial / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "layers.1." not in k}, str(partial / "model.safetensors"))
    folders = {"missing tensors": (partial, "lack 9 of the model's tensors")}
    for name, (damage, word) in DAMAGES.items():
        folder = tmp_path / name.replace(" ", "_")
        shutil.copytree(good, folder)
        damage(folder)
        folders[name] = (folder, word)
    capsys.readouterr()
    for name, (folder, word) in folders.items():
        code = predict.main(["--model", str(folder), "--commits", str(commits), "--task", H.TASK,
                             "--max-new-tokens", "8", "--output-dir", str(tmp_path / "out")])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and str(folder) in errors[0] and word in errors[0], (name, err)
        assert "Traceback" not in err and "retrain" in errors[0], name
    assert predict.main(["--model", str(good), "--commits", str(commits), "--task", H.TASK,
                         "--max-new-tokens", "8", "--output", str(tmp_path / "ok.json")]) == 0
