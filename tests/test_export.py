"""export: tiny models trained by the real stages on a real git history, written as GGUF, read back and run by
llama.cpp beside torch.

Tolerances, and why:
    f16 logits     max |torch fp32 - llama.cpp f16| <= 1e-2 over every position and token of the test split: f16
                   weights (11-bit mantissa) and llama.cpp's f16 activations in its matrix products round at ~1e-3
                   relative; these models' logits are below 20 in magnitude
    q8_0 loss      within 1% of f16's test loss: blocks of 32 weights with their own f16 scale
    q4_k_m loss    within 5% of f16's (the target of the issue)
    recall@5       the likelihood ranking through llama.cpp at f16 equals torch's, target by target
Skipped when gguf / llama-cpp-python are not installed (pip install -r requirements-export.txt), unless
REPO2MODEL_REQUIRE_EXPORT=1, as in CI, where their absence fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast

from repo2model.core.artifacts import iter_commits_with_chunks
from repo2model.core.paths import ArtifactPaths
from repo2model.core.records import Chunk, Commit
from repo2model.export import packages
from repo2model.export.backend import LlamaCppModel, Sampling
from repo2model.export.gguf_file import write_gguf
from repo2model.export.quantize import tensor_types
from repo2model.export.verify import (
    likelihood_recall,
    llama_file_scorer,
    max_logit_difference,
    recall_targets,
    split_sequences,
    target_loss,
    torch_file_scorer,
    torch_logits,
    torch_token_logprobs,
)
from repo2model.export.vocabulary import read_vocabulary
from repo2model.language.commit_language import COMMIT_END, CommitLanguage, encode_texts
from repo2model.language.examples import ExampleSet
from repo2model.serving.predictor import Predictor, stop_token_ids
from repo2model.serving.settings import PredictionConfig
from repo2model.stages import dataset_builder, export, tokenizer, train_model
from repo2model.training.models import load_base_for_adapter, load_trained_model, trained_length

sys.path.insert(0, str(Path(__file__).parent))
from conftest import GitRepo
from helpers_data import scrape_and_chunk
from helpers_models import corpus_lines, make_base_model

# The library imports gguf and llama_cpp on first use: without them every test below fails in one line.
MISSING = packages.missing()
REQUIRED = os.environ.get("REPO2MODEL_REQUIRE_EXPORT") == "1"
if MISSING and not REQUIRED:
    pytest.skip(f"the export extra is not installed ({', '.join(MISSING)}): pip install -r requirements-export.txt "
                "(REPO2MODEL_REQUIRE_EXPORT=1 makes this a failure)", allow_module_level=True)


def test_the_export_extra_is_installed():
    assert not MISSING, (f"REPO2MODEL_REQUIRE_EXPORT=1 but {', '.join(MISSING)} cannot be imported: "
                         "pip install -r requirements-export.txt")


F16_LOGITS = 1e-2
Q8_LOSS, Q4_LOSS = 0.01, 0.05
ATTR = {"unknown": 1 << 0, "normal": 1 << 2, "control": 1 << 3, "user_defined": 1 << 4, "byte": 1 << 5}
TINY_TRAINING = {"micro_batch_size": 4, "effective_batch_size": 4, "warmup_steps": 2, "max_minutes": None,
                 "device": "cpu", "num_threads": 1}


# ----------------------------------------------------------------------------- the history and the models


def python_function(name: str, version: int) -> str:
    return f"def {name}(value):\n    total = value + {version}\n    return total * {version % 7 + 1}\n\n"


def make_history(repo: GitRepo, commits: int = 48) -> None:
    """Commits in a learnable cycle: the parser with its test, then the builder, then the parser with the checker."""
    cycle = [("Fix the parser", {"src/parser.py": "parse", "tests/test_parser.py": "test_parse"}),
             ("Speed up the builder", {"src/builder.py": "build"}),
             ("Check parsed values", {"src/parser.py": "parse", "src/checker.py": "check"})]
    for k in range(commits):
        message, files = cycle[k % 3]
        repo.commit(f"{message} ({k})", {path: python_function(name, k) for path, name in files.items()})


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    """commits.json and chunks.jsonl of a real repository, from the real scraper and chunker."""
    root = tmp_path_factory.mktemp("history")
    repo = GitRepo(root / "repo")
    make_history(repo)
    scrape_and_chunk(repo.path, root / "out")
    return root / "out"


def outputs(history: Path, folder: Path) -> ArtifactPaths:
    folder.mkdir(parents=True)
    for name in ("commits.json", "chunks.jsonl"):
        shutil.copy(history / name, folder / name)
    return ArtifactPaths.under(folder)


def build_dataset(paths: ArtifactPaths, **tokenizer_settings) -> None:
    tokenizer.run(tokenizer.Config(min_frequency=1, top_authors=2, top_modules=4, **tokenizer_settings), paths)
    dataset_builder.run(dataset_builder.Config(context_window=192, target_window=64, history_commits=3,
                                               val_ratio=0.15, test_ratio=0.25), paths)


@pytest.fixture(scope="module")
def scratch(history, tmp_path_factory) -> ArtifactPaths:
    """A scratch model 256 wide (K-quants work on rows of 256: narrower rows fall back to Q5_0 / Q8_0), its
    trained byte-level BPE, exported to f16, q8_0 and q4_k_m."""
    paths = outputs(history, tmp_path_factory.mktemp("scratch") / "out")
    build_dataset(paths, vocab_size=600)
    train_model.run(train_model.Config(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=512,
                                       max_steps=60, eval_every=30, save_every=30, learning_rate=3e-3,
                                       precision="fp32", **TINY_TRAINING), paths)
    export.run(export.Config(), paths)
    return paths


def sentencepiece_base(folder: Path, legacy: bool = False) -> Path:
    """A stand-in for a LLaMA-2 base tokenizer: BPE with byte fallback over "▁"-spaced words, <unk> <s> </s>,
    then the 256 <0xNN> byte tokens, then the trained pieces, built by transformers 5's LlamaTokenizer.
    `legacy`: as LLaMA-2's own tokenizer.json has it, a normalizer that prefixes "▁" and replaces spaces."""
    raw = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    raw.train_from_iterator(corpus_lines() + [python_function("parse", 3)] * 20,
                            trainers.BpeTrainer(vocab_size=300, show_progress=False))
    spec = json.loads(raw.to_str())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    LlamaTokenizer(vocab=vocab, merges=merges).save_pretrained(str(folder))
    if legacy:
        path = folder / "tokenizer.json"
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        saved["pre_tokenizer"] = None
        path.write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def extended(history, tmp_path_factory) -> dict:
    """A tiny LLaMA base with a SentencePiece-style tokenizer; the tokenizer stage extends it with the commit
    language (extend mode), the dataset builder encodes the history with it."""
    root = tmp_path_factory.mktemp("extended")
    base = sentencepiece_base(root / "base")
    make_base_model(base, len(AutoTokenizer.from_pretrained(str(base))), hidden=64)  # NF4 on the CPU: >= 64 wide
    paths = outputs(history, root / "data")
    build_dataset(paths, mode="extend", base_tokenizer=str(base))
    return {"root": root, "base": base, "data": paths.output_dir}


def adapter_outputs(extended: dict, folder: Path, mode: str) -> ArtifactPaths:
    shutil.copytree(extended["data"], folder)
    paths = ArtifactPaths.under(folder)
    precision = "bf16" if mode == "qlora" else "fp32"
    train_model.run(train_model.Config(mode=mode, base_model=str(extended["base"]), precision=precision,
                                       max_steps=12, eval_every=6, save_every=6, learning_rate=1e-2,
                                       **TINY_TRAINING), paths, seed=5)
    return paths


@pytest.fixture(scope="module")
def lora(extended, tmp_path_factory) -> ArtifactPaths:
    paths = adapter_outputs(extended, tmp_path_factory.mktemp("lora") / "out", "lora")
    export.run(export.Config(types=["f16"], modelfile="f16"), paths)
    return paths


@pytest.fixture(scope="module")
def qlora(extended, tmp_path_factory) -> ArtifactPaths:
    paths = adapter_outputs(extended, tmp_path_factory.mktemp("qlora") / "out", "qlora")
    export.run(export.Config(types=["f16"], modelfile="f16"), paths)
    return paths


def gguf(paths: ArtifactPaths, file_type: str) -> Path:
    return paths.output_dir / "export" / f"model-{file_type}.gguf"


def split_of(paths: ArtifactPaths) -> list[tuple[list[int], int]]:
    return split_sequences(ExampleSet.load(paths.test_data))


def commit_texts(paths: ArtifactPaths, language: CommitLanguage) -> list[str]:
    """Commits of the history rendered in the commit language (compact and full), and a text that needs the
    byte fallback, odd spaces and digits."""
    texts = []
    for commit, chunks in iter_commits_with_chunks(paths.commits, paths.chunks):
        pair = (Commit.from_dict(commit), [Chunk.from_dict(c) for c in chunks])
        texts += [language.render_commit(*pair, "compact"), language.render_commit(*pair, "full")]
    return texts[:12] + [f"<COMMIT_START><MSG> naïve café: ∑ 42 , x\t\ty  \n\n  z 1234567{COMMIT_END}\n"]


def check_vocabulary_read_back(path: Path, tok, texts: list[str]) -> dict[int, str]:
    """llama.cpp reads every added token back by id with its text and type, and tokenizes `texts` (which start
    with an added token, as every text of the commit language does) to the ids the project's tokenizer gives.
    Returns id -> type of the added tokens."""
    added = {i: t for i, t in tok.added_tokens_decoder.items()}
    roles = {tok.bos_token_id: "control", tok.eos_token_id: "control", tok.pad_token_id: "control"}
    if tok.unk_token_id is not None:
        roles[tok.unk_token_id] = "unknown"
    kinds = {}
    with LlamaCppModel(path, context_length=64) as model:
        for i, token in added.items():
            kinds[i] = roles.get(i, "user_defined")
            assert model.token_text(i) == token.content, (i, token.content)
            assert model.token_attributes(i) & ATTR[kinds[i]], (i, token.content, model.token_attributes(i))
        for text in texts:
            assert model.tokenize(text) == encode_texts(tok, [text])[0], text[:80]
    return kinds


# ----------------------------------------------------------------------------- scratch: f16, q8_0, q4_k_m


def test_scratch_export_writes_gguf_files_the_modelfile_and_the_info(scratch):
    info = json.loads((scratch.output_dir / "export" / "export_info.json").read_text())
    assert info["mode"] == "scratch" and info["vocabulary"]["model"] == "gpt2" and info["vocabulary"]["pre"] == "gpt-2"
    files = {t: gguf(scratch, t) for t in ("f16", "q8_0", "q4_k_m")}
    assert {t: info["files"][t]["bytes"] for t in files} == {t: p.stat().st_size for t, p in files.items()}
    assert set(tensor_types(files["f16"])) == {"F16", "F32"}  # matrices f16, norms f32
    assert set(tensor_types(files["q8_0"])) == {"Q8_0", "F32"}
    q4 = tensor_types(files["q4_k_m"])
    assert q4.get("Q4_K") and q4.get("Q6_K") and set(q4) <= {"Q4_K", "Q6_K", "F32"}, q4  # rows of 256: no fallback
    # f16 holds 2 bytes a weight, q4_k_m ~4.9 bits; the f32 norms and the Q6_K output layer weigh more at this size
    assert files["q4_k_m"].stat().st_size < 0.45 * files["f16"].stat().st_size
    modelfile = (scratch.output_dir / "export" / "Modelfile").read_text()
    seq_len = trained_length(scratch.model_dir)
    assert seq_len and f"PARAMETER num_ctx {seq_len}\n" in modelfile and info["modelfile"]["num_ctx"] == seq_len
    assert "FROM ./model-q4_k_m.gguf\n" in modelfile and 'TEMPLATE """{{ .Prompt }}"""\n' in modelfile
    assert f'PARAMETER stop "{COMMIT_END}"\n' in modelfile


def test_cli_without_f16_keeps_an_f16_file_already_there_and_leaves_no_temporary(scratch, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model-f16.gguf").write_bytes(b"an earlier export")
    assert export.main(["--model", str(scratch.model_dir), "--out", str(out), "--types", "q8_0"]) == 0
    assert (out / "model-f16.gguf").read_bytes() == b"an earlier export"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export_info.json", "model-f16.gguf",
                                                     "model-q8_0.gguf"]
    assert "FROM ./model-q8_0.gguf" in (out / "Modelfile").read_text()  # the only type written
    assert set(tensor_types(out / "model-q8_0.gguf")) == {"Q8_0", "F32"}


def test_scratch_f16_logits_and_likelihood_recall_match_torch(scratch):
    model, tok = load_trained_model(scratch.model_dir)
    language = CommitLanguage.load(scratch.tokenizer_dir)
    cfg = PredictionConfig(rank_candidates=20)
    predictor = Predictor(model, tok, language, cfg)
    targets = recall_targets(scratch.commits, scratch.chunks, ExampleSet.load(scratch.test_data), cfg.rank_candidates)
    assert len(targets) >= 5 and all(len(t.candidates) >= 4 for t in targets)
    with LlamaCppModel(gguf(scratch, "f16")) as f16:
        assert max_logit_difference(model, f16, split_of(scratch)) <= F16_LOGITS
        torch_recall, torch_top = likelihood_recall(torch_file_scorer(predictor, cfg), targets)
        llama_recall, llama_top = likelihood_recall(llama_file_scorer(f16, predictor, cfg), targets)
    assert llama_top == torch_top and llama_recall == torch_recall
    assert torch_recall > 0.5  # the model learnt the cycle: the likelihood ranking means something


def test_quantized_test_loss_within_the_margins_of_f16(scratch):
    sequences = split_of(scratch)
    model, _ = load_trained_model(scratch.model_dir)
    losses = {"torch": target_loss(torch_token_logprobs(model), sequences)}
    for file_type in ("f16", "q8_0", "q4_k_m"):
        with LlamaCppModel(gguf(scratch, file_type)) as backend:
            losses[file_type] = target_loss(backend.token_logprobs, sequences)
    assert losses["f16"] == pytest.approx(losses["torch"], rel=1e-3), losses
    assert abs(losses["q8_0"] - losses["f16"]) <= Q8_LOSS * losses["f16"], losses
    assert abs(losses["q4_k_m"] - losses["f16"]) <= Q4_LOSS * losses["f16"], losses
    assert losses["q4_k_m"] != losses["f16"]  # a real quantization, not a copy


def test_trained_vocabulary_read_back_by_id_and_tokenized_alike(scratch):
    tok = AutoTokenizer.from_pretrained(str(scratch.model_dir))
    texts = commit_texts(scratch, CommitLanguage.load(scratch.tokenizer_dir))
    kinds = check_vocabulary_read_back(gguf(scratch, "q4_k_m"), tok, texts)
    assert kinds[tok.convert_tokens_to_ids(COMMIT_END)] == "user_defined" and kinds[tok.bos_token_id] == "control"
    with LlamaCppModel(gguf(scratch, "f16"), context_length=64) as model:
        assert model.llm._model.token_eot() == tok.convert_tokens_to_ids(COMMIT_END)  # llama.cpp tools stop there


def test_greedy_generation_through_llama_cpp_is_torch_s(scratch):
    model, tok = load_trained_model(scratch.model_dir)
    stops = stop_token_ids(tok)
    prompt, _ = split_of(scratch)[0]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=stops,
                             pad_token_id=tok.pad_token_id)
    expected = out[0, len(prompt):].tolist()
    with LlamaCppModel(gguf(scratch, "f16")) as f16:
        [(ids, logprobs)] = f16.generate(prompt, 24, stops)
        sampled = f16.generate(prompt, 24, stops, candidates=3, sampling=Sampling(True, 0.8, 20, 0.95), seed=3)
        again = f16.generate(prompt, 24, stops, candidates=3, sampling=Sampling(True, 0.8, 20, 0.95), seed=3)
    assert ids == expected[: len(ids)] and (len(ids) == 24 or ids[-1] in stops)
    assert all(lp <= 0 for lp in logprobs)
    assert sampled == again and len(sampled) == 3  # the seed fixes the draws


# ----------------------------------------------------------------------------- adapters, SentencePiece vocabulary


def test_lora_adapter_merged_export_matches_the_adapter_in_torch(lora):
    info = json.loads((lora.output_dir / "export" / "export_info.json").read_text())
    assert info["mode"] == "lora" and info["vocabulary"]["model"] == "llama" and info["merge_dtype"] == "float16"
    assert list(info["files"]) == ["f16"] and not gguf(lora, "q4_k_m").exists()
    assert "FROM ./model-f16.gguf" in (lora.output_dir / "export" / "Modelfile").read_text()
    model, _ = load_trained_model(lora.model_dir)  # the adapter over its fp32 base, as prediction runs it
    with LlamaCppModel(gguf(lora, "f16")) as f16:
        assert max_logit_difference(model, f16, split_of(lora)) <= F16_LOGITS


def test_extended_sentencepiece_vocabulary_read_back_by_id_and_tokenized_alike(lora):
    tok = AutoTokenizer.from_pretrained(str(lora.model_dir))
    texts = commit_texts(lora, CommitLanguage.load(lora.tokenizer_dir))
    kinds = check_vocabulary_read_back(gguf(lora, "f16"), tok, texts)
    base_size = CommitLanguage.load(lora.tokenizer_dir).tokenizer_info["base_vocab_size"]
    assert {kinds[i] for i in kinds if i >= base_size} == {"user_defined", "control"}  # ours, and <PAD>
    assert kinds[0] == "unknown" and kinds[1] == kinds[2] == "control"  # <unk> <s> </s>
    with LlamaCppModel(gguf(lora, "f16"), context_length=64) as model:
        assert model.token_attributes(3 + 0x41) & ATTR["byte"] and model.token_text(3 + 0x41) == "<0x41>"


def test_legacy_sentencepiece_normalizer_prefixes_a_space_after_each_added_token(tmp_path):
    """A LLaMA-2 tokenizer.json as the hub has it (a normalizer prefixing "▁" to every text between added
    tokens), read as it is written (transformers 5's LlamaTokenizer class would rebuild it as Metaspace with
    prepend_scheme "first"): llama.cpp's add_space_prefix does the same, after each special token."""
    folder = sentencepiece_base(tmp_path / "base", legacy=True)
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok.add_tokens(["<COMMIT_START>", "<FILE>", COMMIT_END], special_tokens=True)
    model = make_model(len(tok))
    vocabulary = read_vocabulary(tok, len(tok))
    assert vocabulary.model == "llama" and vocabulary.add_space_prefix is True
    path = write_gguf(model, vocabulary, tmp_path / "legacy.gguf", "legacy")
    texts = ["<COMMIT_START>fix core: naïve<FILE>src/core.py\n def parse(value):<COMMIT_END>", "add net 42  x"]
    check_vocabulary_read_back(path, tok, texts)


def make_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=128)).eval()


def test_qlora_adapter_merged_into_its_dequantized_4bit_base(qlora):
    """The export is the model QLoRA trained: the adapter over the 4-bit base. Exactly: the adapter unmerged over
    the base dequantized in fp32 (f16 tolerance). Against bitsandbytes' own 4-bit forward, which multiplies at
    bf16 precision on the CPU, it is ten times closer than merging into the original base, or into the 4-bit
    weights (peft's merge there quantizes the sum again and rounds the adapter's update away)."""
    import bitsandbytes as bnb
    from peft import PeftModel

    from repo2model.export.merge import dequantized

    info = json.loads((qlora.output_dir / "export" / "export_info.json").read_text())
    assert info["mode"] == "qlora" and info["merge_dtype"] == "float16"
    sequences = split_of(qlora)[:4]

    def logits_of(model) -> list:
        return [torch_logits(model, ids) for ids, _ in sequences]

    def distance(logits: list, reference: list) -> float:
        return max(float(abs(a - b).max()) for a, b in zip(logits, reference))

    base, _ = load_base_for_adapter(qlora.model_dir, "cpu", torch.float32, quantize=True)
    trained = PeftModel.from_pretrained(base, str(qlora.model_dir)).eval()
    assert isinstance(trained.base_model.model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    as_trained = logits_of(trained)
    base, _ = load_base_for_adapter(qlora.model_dir, "cpu", torch.float32, quantize=True)
    exact = logits_of(PeftModel.from_pretrained(dequantized(base, torch.float32), str(qlora.model_dir)).eval())
    with LlamaCppModel(gguf(qlora, "f16")) as f16:
        exported = [f16.logits(ids) for ids, _ in sequences]
    original_base = logits_of(load_trained_model(qlora.model_dir)[0])  # the adapter over the fp32 base
    into_4bit = logits_of(trained.merge_and_unload())  # after as_trained: the merge changes `trained` in place
    distances = {"export": distance(exported, as_trained), "original base": distance(original_base, as_trained),
                 "into 4-bit": distance(into_4bit, as_trained)}
    print("max |logit - the QLoRA model's|:", {k: f"{v:.2e}" for k, v in distances.items()},
          f"export vs exact: {distance(exported, exact):.2e}")
    assert distance(exported, exact) <= F16_LOGITS
    assert distances["export"] * 10 < min(distances["original base"], distances["into 4-bit"]), distances


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    code = export.main(["--output-dir", str(tmp_path / "out"), "--types", "f16"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "train_model" in err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("{not json", encoding="utf-8")
    assert export.main(["--model", str(damaged), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and not (tmp_path / "export" / "model-f16.gguf").exists()
    config = tmp_path / "config.yaml"
    config.write_text("export:\n  types: [f16, q3_k]\n", encoding="utf-8")
    assert export.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "export.types" in err and "q4_k_m" in err
    config.write_text("export:\n  types: [f16]\n", encoding="utf-8")  # the Modelfile's q4_k_m is not written
    assert export.main(["--config", str(config)]) == 2
    assert "export.modelfile" in capsys.readouterr().err


# ----------------------------------------------------------------------------- predict.backend: llama_cpp


def llama_settings(paths: ArtifactPaths, file_type: str = "f16", **settings) -> PredictionConfig:
    return PredictionConfig(backend="llama_cpp", gguf=gguf(paths, file_type), **settings)


def test_the_predictor_through_llama_cpp_at_f16_ranks_and_writes_as_torch(scratch):
    """The same prompts through Predictor.load with either backend: the same top files with log-probabilities
    within the f16 tolerance, the same greedy candidate; the torch weights are not loaded for llama_cpp."""
    settings = {"rank_candidates": 20, "max_new_tokens": 24}
    by_torch = Predictor.load(scratch.model_dir, PredictionConfig(**settings), paths=scratch, ranker=False)
    by_llama = Predictor.load(scratch.model_dir, llama_settings(scratch, **settings), paths=scratch, ranker=False)
    info = by_llama.info()
    assert by_llama.model is None and info["backend"] == "llama_cpp" and by_torch.info()["backend"] == "torch"
    assert info["gguf"] == str(gguf(scratch, "f16")) and info["file_type"] == "f16"
    assert info["parameters"] == by_torch.info()["parameters"] and by_llama.max_positions == by_torch.max_positions
    targets = recall_targets(scratch.commits, scratch.chunks, ExampleSet.load(scratch.test_data), 20, limit=4)
    for target in targets:
        expected = by_torch.predict_ids(target.prompt, candidates=target.candidates)
        answer = by_llama.predict_ids(target.prompt, candidates=target.candidates)
        assert answer.file_ranking.files_scored == expected.file_ranking.files_scored == len(target.candidates)
        assert [f.path for f in answer.files[:5]] == [f.path for f in expected.files[:5]]
        scored = {f.path: f.logprob for f in expected.files if f.logprob is not None}
        assert all(f.logprob == pytest.approx(scored[f.path], abs=0.05) for f in answer.files if f.logprob is not None)
        assert [c.text for c in answer.candidates] == [c.text for c in expected.candidates]
        assert answer.candidates[0].score == pytest.approx(expected.candidates[0].score, abs=0.01)


def post(server, path: str, body: dict | None = None) -> tuple[int, dict]:
    import http.client

    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=120)
    conn.request("POST" if body is not None else "GET", path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_serve_answers_predict_through_the_exported_q4_k_m_and_refuses_beam_in_one_line(scratch):
    import threading

    from repo2model.serving.service import Service, make_server
    from repo2model.stages import serve

    # predict.gguf unset: the file the export's Modelfile loads (q4_k_m)
    cfg = PredictionConfig(backend="llama_cpp", max_new_tokens=24, rank_candidates=20)
    server = make_server(Service(Predictor.load(scratch.model_dir, cfg, paths=scratch), serve.Config(port=0)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        records = [{**commit, "chunks": chunks} for commit, chunks in iter_commits_with_chunks(scratch.commits,
                                                                                               scratch.chunks)]
        status, health = post(server, "/health")
        assert status == 200 and health["model"]["backend"] == "llama_cpp"
        assert health["model"]["file_type"] == "q4_k_m" and health["model"]["gguf"] == str(gguf(scratch, "q4_k_m"))
        status, answer = post(server, "/predict", {"task": "Fix the parser", "commits": records[-6:]})
        assert status == 200, answer
        assert answer["files"] and len(answer["candidates"]) == 1 and answer["prompt_tokens"] > 0
        assert {f["path"] for f in answer["files"]} <= {c["file"] for r in records for c in r["chunks"]} | {
            p for c in answer["candidates"] for p in c["files"]}
        status, refused = post(server, "/predict", {"task": "Fix the parser", "commits": records[-6:],
                                                    "options": {"decoding": "beam", "num_candidates": 2}})
        assert status == 422 and "beam is not supported with backend llama_cpp" in refused["error"]
        assert "\n" not in refused["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_evaluate_scores_the_model_through_llama_cpp_as_through_torch(scratch, tmp_path):
    from repo2model.ranking.config import EvaluationConfig
    from repo2model.stages import evaluate

    shutil.copytree(scratch.output_dir, tmp_path / "out")
    paths = ArtifactPaths.under(tmp_path / "out")
    results = {}
    for backend, cfg in (("torch", PredictionConfig(max_new_tokens=24, rank_candidates=20)),
                         ("llama_cpp", llama_settings(paths, max_new_tokens=24, rank_candidates=20))):
        evaluate.run(EvaluationConfig(max_examples=3), paths, prediction=cfg)
        results[backend] = json.loads(paths.evaluation.read_text())
    model = {backend: result["model"] for backend, result in results.items()}
    assert model["llama_cpp"]["loss"] == pytest.approx(model["torch"]["loss"], rel=1e-3)
    assert model["llama_cpp"]["target_tokens"] == model["torch"]["target_tokens"] > 0
    metrics = {backend: result["metrics"]["model"] for backend, result in results.items()}
    assert metrics["llama_cpp"]["recall@5"] == metrics["torch"]["recall@5"]


def test_the_rankers_language_model_features_through_llama_cpp(scratch):
    from repo2model.stages import train_ranker

    splits = train_ranker.load_splits(scratch)
    scores = {cfg.backend: train_ranker.load_language_model(train_ranker.Config(), scratch, cfg, splits)
              for cfg in (PredictionConfig(rank_candidates=20), llama_settings(scratch, rank_candidates=20))}
    assert scores["llama_cpp"].predictor.lm.name == "llama_cpp"
    # the saved feature rows of one backend are not taken for the other's
    assert scores["llama_cpp"].identity != scores["torch"].identity
    target = recall_targets(scratch.commits, scratch.chunks, splits["test"], 20, limit=1)[0]
    files = [path for path, _ in target.candidates]
    modules = {path: module for path, module in target.candidates if module}
    by_torch = scores["torch"].for_target(target.commit, modules)(files)
    by_llama = scores["llama_cpp"].for_target(target.commit, modules)(files)
    assert set(by_llama) == set(by_torch) == set(files)
    assert all(by_llama[path] == pytest.approx(by_torch[path], abs=0.05) for path in files)


def test_a_bad_llama_cpp_backend_setting_is_one_line(scratch, tmp_path, capsys):
    from repo2model.core.errors import UserError
    from repo2model.stages import predict

    base = ["--model", str(scratch.model_dir), "--commits", str(scratch.commits), "--task", "Fix the parser"]
    assert predict.main([*base, "--backend", "llama_cpp", "--decoding", "beam"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "beam is not supported with backend llama_cpp" in err
    # no export beside the model folder
    shutil.copytree(scratch.model_dir, tmp_path / "out" / "model")
    with pytest.raises(UserError, match="no exported model"):
        Predictor.load(tmp_path / "out" / "model", PredictionConfig(backend="llama_cpp"))
    # a GGUF exported from another training run than the folder's
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(gguf(scratch, "f16"), other / "model-f16.gguf")
    info = json.loads((scratch.output_dir / "export" / "export_info.json").read_text())
    (other / "export_info.json").write_text(json.dumps({**info, "trained_at": "2001-01-01T00:00:00+0000"}))
    assert predict.main([*base, "--backend", "llama_cpp", "--gguf", str(other / "model-f16.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exported from the model trained at 2001-01-01" in err and "--stage export" in err
    # not a GGUF at all
    (tmp_path / "broken.gguf").write_bytes(b"GGUF but not really")
    assert predict.main([*base, "--backend", "llama_cpp", "--gguf", str(tmp_path / "broken.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load it" in err


def test_the_pipeline_runs_the_export_stage_when_asked_and_skips_it_when_up_to_date(scratch, tmp_path, capsys):
    from repo2model.stages import pipeline

    shutil.copytree(scratch.model_dir, tmp_path / "out" / "model")
    config = tmp_path / "config.yaml"
    settings = "pipeline:\n  output_dir: out\nexport:\n  types: [q8_0]\n  modelfile: q8_0\n"
    config.write_text(settings, encoding="utf-8")

    def export_result() -> dict:
        assert pipeline.main(["--config", str(config), "--stage", "export"]) == 0, capsys.readouterr().err
        return json.loads((tmp_path / "out" / "pipeline_results.json").read_text())["stages"]["export"]

    result = export_result()
    assert result["status"] == "ok" and result["summary"]["mode"] == "scratch"
    assert sorted(p.name for p in (tmp_path / "out" / "export").iterdir()) == [
        "Modelfile", "export_info.json", "model-q8_0.gguf"]
    assert export_result()["status"] == "skipped"
    config.write_text(settings + "  enabled: true\n", encoding="utf-8")  # switching it on changes nothing it writes
    assert export_result()["status"] == "skipped"
    config.write_text(settings.replace("q8_0", "q4_k_m"), encoding="utf-8")
    assert export_result()["status"] == "ok"
    assert (tmp_path / "out" / "export" / "model-q4_k_m.gguf").is_file()
