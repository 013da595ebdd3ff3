"""evaluate.py: baselines checked by hand on a fixture history; metrics; the report files; the model path."""

from __future__ import annotations

import json
import math

import pytest

from repo2model.stages import dataset_builder
from repo2model.stages import evaluate
from repo2model.stages import predict
from repo2model.stages import tokenizer
from repo2model.stages import train_model
from repo2model.stages import train_ranker
from repo2model.core.artifacts import CommitsWriter, iter_commits_with_chunks, write_jsonl
from repo2model.ranking.baselines import cochange, frequent, most_recent, structure
from repo2model.ranking.history import BaselineConfig, PastCommits
from repo2model.ranking.metrics import Prediction, Truth, aggregate, score
from repo2model.ranking.targets import walk_targets
from repo2model.core.paths import ArtifactPaths
from repo2model.serving.predictor import CandidatePool
from repo2model.serving.settings import PredictionConfig

# A history where every baseline's answer can be worked out by hand.
#   pos  commit  files (chunk: change type, symbol, module)
#   0    A       a.py (NEW_FUNCTION f pkg.a), b.py (NEW_FUNCTION g pkg.b)
#   1    B       a.py (MODIFIED_FUNCTION f), c.py (NEW_CLASS C pkg.c)
#   2    C       a.py (MODIFIED_FUNCTION f, NEW_FUNCTION h), b.py (MODIFIED_FUNCTION g)
#   3    D       d.md (NEW_HUNK, no symbol, no module)
#   ---- targets from position 4 (mined history: positions 0..3)
#   4    E       b.py (MODIFIED_FUNCTION g), c.py (MODIFIED_CLASS C)
#   5    F       a.py (MODIFIED_FUNCTION f)
HISTORY = [
    ("A", [("a.py", "NEW_FUNCTION", "f", "pkg.a"), ("b.py", "NEW_FUNCTION", "g", "pkg.b")]),
    ("B", [("a.py", "MODIFIED_FUNCTION", "f", "pkg.a"), ("c.py", "NEW_CLASS", "C", "pkg.c")]),
    ("C", [("a.py", "MODIFIED_FUNCTION", "f", "pkg.a"), ("a.py", "NEW_FUNCTION", "h", "pkg.a"),
           ("b.py", "MODIFIED_FUNCTION", "g", "pkg.b")]),
    ("D", [("d.md", "NEW_HUNK", None, None)]),
    ("E", [("b.py", "MODIFIED_FUNCTION", "g", "pkg.b"), ("c.py", "MODIFIED_CLASS", "C", "pkg.c")]),
    ("F", [("a.py", "MODIFIED_FUNCTION", "f", "pkg.a")]),
]


def sha(name: str) -> str:
    return (name.lower() * 40)[:40] if name in "ABCDEF" else name


def write_history(out, history=HISTORY) -> ArtifactPaths:
    paths = ArtifactPaths.under(out)
    out.mkdir(parents=True, exist_ok=True)
    chunks = []
    with CommitsWriter(paths.commits) as writer:
        for i, (name, units) in enumerate(history):
            when = f"2024-01-0{1 + i // 9}T{10 + i % 9:02d}:00:00+00:00"
            files = []
            for path, *_ in units:
                if path not in [f["path"] for f in files]:
                    files.append({"path": path, "old_path": None, "status": "M", "additions": 1, "deletions": 0,
                                  "binary": False, "old_blob": None, "new_blob": None, "patch": "@@ -1 +1 @@\n+x\n"})
            person = {"name": "Alice", "email": "alice@example.com"}
            writer.add({"hash": sha(name), "parents": [sha(history[i - 1][0])] if i else [], "author": person,
                        "committer": person, "authored_at": when, "committed_at": when, "message": f"commit {name}",
                        "files": files})
            for path, change_type, symbol, module in units:
                chunks.append({"commit": sha(name), "timestamp": when, "author": "Alice", "file": path,
                               "language": "python" if path.endswith(".py") else "markdown", "module": module,
                               "kind": change_type.split("_", 1)[1].lower(), "symbol": symbol,
                               "change_type": change_type, "before": None, "after": None, "diff": "+x"})
        writer.metadata = {"total_commits": len(history), "total_authors": 1}
    write_jsonl(paths.chunks, chunks)
    return paths


def past_before(paths, stop: int, cfg: BaselineConfig, mined_until: int | None = None) -> PastCommits:
    """The baselines' statistics after observing positions 0..stop-1 (mined up to `mined_until`)."""
    past = PastCommits(cfg)
    for position, (commit, chunks) in enumerate(iter_commits_with_chunks(paths.commits, paths.chunks)):
        if position == stop:
            break
        past.observe(commit, chunks, mine=mined_until is None or position <= mined_until)
    return past


def baseline_rows(tmp_path, **overrides):
    paths = write_history(tmp_path / "out")
    cfg = evaluate.Config(recent_commits=1, baselines_only=True, test_from=4, **overrides)
    plan = evaluate.plan_targets(cfg, paths)
    rows, _ = evaluate.score_targets(cfg, paths, plan, None, None, None, PredictionConfig(), 42)
    return rows


def test_baseline_rankings_match_hand_computed_answers(tmp_path):
    paths = write_history(tmp_path / "out")
    past = past_before(paths, 5, BaselineConfig(recent_commits=1), mined_until=3)
    # Before F: mined A..D, observed A..E.
    assert [p for p, _ in frequent(past, 10)] == ["a.py", "b.py", "c.py", "d.md"]
    assert frequent(past, 10)[0][1] == pytest.approx(3 / 5)
    assert [p for p, _ in most_recent(past, 10)] == ["b.py", "c.py", "d.md", "a.py"]
    # Antecedent = E's files {b, c}; rules b->a (2/2) and c->a (1/1); b and c never co-changed in A..D.
    assert cochange(past, 10) == [("a.py", 1.0)]
    change_types, modules, symbols = structure(past, [p for p, _ in frequent(past, 10)])
    assert change_types == {"a.py": "MODIFIED_FUNCTION", "b.py": "MODIFIED_FUNCTION", "c.py": "NEW_CLASS",
                            "d.md": "NEW_HUNK"}
    assert modules == ["pkg.a", "pkg.b", "pkg.c"]
    assert symbols == ["f", "h", "g", "C"]


def test_baseline_metrics_on_the_fixture(tmp_path):
    rows = baseline_rows(tmp_path, mine_from="train")
    e, f = sha("E"), sha("F")
    # frequent: [a, b, c, d] for both targets.
    assert rows["frequent"][e]["recall@1"] == 0.0 and rows["frequent"][e]["recall@5"] == 1.0
    assert rows["frequent"][f]["recall@1"] == 1.0
    assert rows["frequent"][e]["change_type_hits"] == 2 and rows["frequent"][e]["change_type_correct"] == 1
    assert rows["frequent"][e]["module_acc"] == 0.0 and rows["frequent"][f]["module_acc"] == 1.0
    assert rows["frequent"][e]["symbol_recall"] == 1.0
    assert rows["frequent"][e]["mrr"] == 0.5 and rows["frequent"][f]["mrr"] == 1.0
    # recent before E: [d, a, b, c]; before F: [b, c, d, a].
    assert rows["recent"][e]["recall@1"] == 0.0 and rows["recent"][e]["recall@5"] == 1.0
    assert rows["recent"][f]["recall@1"] == 0.0 and rows["recent"][f]["recall@5"] == 1.0
    # cochange before E: antecedent {d.md}, which never co-changed: no candidates at all.
    assert rows["cochange"][e]["recall@10"] == 0.0 and rows["cochange"][e]["module_acc"] == 0.0
    assert rows["cochange"][f]["recall@1"] == 1.0
    totals = {name: aggregate([by[e], by[f]]) for name, by in rows.items()}
    assert totals["frequent"]["recall@1"] == 0.5 and totals["recent"]["recall@1"] == 0.0
    assert totals["frequent"]["change_type_acc"] == pytest.approx(2 / 3)
    assert totals["cochange"]["recall@5"] == 0.5
    # No repository: no code search; fusion of recent, cochange and similar_commits.
    assert "code_search" not in rows and set(rows) >= {"similar_commits", "fusion"}


def test_mining_from_every_commit_before_the_target(tmp_path):
    paths = write_history(tmp_path / "out")
    past = past_before(paths, 5, BaselineConfig(recent_commits=1))
    # E mined too: b->a 2/3, c->a 1/2, c->b 1/2, b->c 1/3.
    assert cochange(past, 10) == [("a.py", pytest.approx(2 / 3)), ("b.py", 0.5), ("c.py", pytest.approx(1 / 3))]
    rows = baseline_rows(tmp_path / "again", mine_from="before_target")
    assert rows["cochange"][sha("F")]["recall@1"] == 1.0


def test_rule_thresholds_and_large_commits_are_left_out(tmp_path):
    paths = write_history(tmp_path / "out")
    for cfg, expected in [
        (BaselineConfig(recent_commits=1, rules_min_support=2), [("a.py", 1.0)]),  # c->a has support 1
        (BaselineConfig(recent_commits=1, rules_max_commit_files=2), [("a.py", 1.0)]),
    ]:
        assert cochange(past_before(paths, 5, cfg, mined_until=3), 10) == expected
    past = PastCommits(BaselineConfig(recent_commits=1, rules_max_commit_files=2))
    past.observe({"hash": "x", "files": []}, [{"file": f, "change_type": "NEW_HUNK"} for f in "xyz"])
    assert past.partners == {}


def test_score_recall_uses_the_best_possible_denominator():
    truth = Truth("c", ["a", "b", "c"], {"a": {"NEW_FUNCTION"}}, {"m"}, {"s", "t"})
    pred = Prediction(files=[("a", 1.0), ("x", 0.5), ("b", 0.2)], change_types={"a": "NEW_FUNCTION"},
                               modules=["m"], symbols=["t"])
    row = score(pred, truth)
    assert row["recall@1"] == 1.0
    assert row["recall@5"] == pytest.approx(2 / 3)
    assert row["change_type_correct"] == 1 and row["change_type_hits"] == 1
    assert row["module_acc"] == 1.0 and row["symbol_recall"] == 0.5


def test_run_writes_json_markdown_and_chart(tmp_path):
    paths = write_history(tmp_path / "out")
    summary = evaluate.run(evaluate.Config(recent_commits=1, test_from=4), paths)
    result = json.loads(paths.evaluation.read_text())
    assert result["targets"] == 2
    assert set(result["metrics"]) == {"frequent", "recent", "cochange", "similar_commits", "fusion"}
    assert result["metrics"]["frequent"]["recall@1"] == 0.5
    assert [row["commit"] for row in result["per_commit"]] == [sha("E"), sha("F")]
    table = evaluate.report_path(paths).read_text()
    assert "| recall@1 | **0.500** | 0.000 | **0.500** |" in table
    assert evaluate.chart_path(paths).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["targets"] == 2
    first = paths.evaluation.read_bytes()
    evaluate.run(evaluate.Config(recent_commits=1, test_from=4), paths)
    assert paths.evaluation.read_bytes() == first


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    paths = write_history(tmp_path / "out")
    code = evaluate.main(["--output-dir", str(tmp_path / "out"), "--test-from", "99"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test_from" in err[0]
    code = evaluate.main(["--output-dir", str(tmp_path / "nothing"), "--test-from", "2"])
    assert code == 2 and "run the git_scraper stage" in capsys.readouterr().err
    code = evaluate.main(["--output-dir", str(tmp_path / "out"), "--baselines-only"])
    assert code == 2 and "dataset_builder" in capsys.readouterr().err
    assert paths.commits.exists()


def test_evenly_spaced():
    assert evaluate.evenly_spaced(10, 0) == list(range(10))
    assert evaluate.evenly_spaced(10, 3) == [0, 4, 9]  # round(4.5) == 4 (banker's rounding)
    assert evaluate.evenly_spaced(3, 5) == [0, 1, 2]
    assert math.isclose(len(evaluate.evenly_spaced(100, 7)), 7)


# ---------------------------------------------------------------- with a model trained in the test


def patterned_history(n: int = 36) -> list:
    """Commits that follow a learnable cycle: a.py+test, then b.py, then a.py+c.py."""
    cycle = [
        [("src/a.py", "MODIFIED_FUNCTION", "run", "src.a"), ("tests/test_a.py", "NEW_TEST", "test_run", "tests.test_a")],
        [("src/b.py", "MODIFIED_FUNCTION", "build", "src.b")],
        [("src/a.py", "MODIFIED_FUNCTION", "run", "src.a"), ("src/c.py", "NEW_FUNCTION", "check", "src.c")],
    ]
    return [(f"{i + 1:040x}", cycle[i % 3]) for i in range(n)]


@pytest.fixture(scope="module")
def trained_pipeline(tmp_path_factory):
    """commits.json + chunks.jsonl -> the real tokenizer, dataset builder and train_model stages (tiny)."""
    out = tmp_path_factory.mktemp("pipeline")
    paths = write_history(out, patterned_history())
    tokenizer.run(tokenizer.Config(vocab_size=420, min_frequency=1, top_authors=2, top_modules=4), paths)
    dataset_builder.run(dataset_builder.Config(context_window=192, target_window=64, history_commits=3,
                                               val_ratio=0.15, test_ratio=0.2), paths)
    train_model.run(train_model.Config(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                                       max_steps=40, eval_every=20, save_every=20, warmup_steps=2,
                                       micro_batch_size=4, effective_batch_size=4, learning_rate=3e-3,
                                       max_minutes=None, device="cpu", precision="fp32"), paths)
    return paths


@pytest.mark.slow
def test_evaluate_model_and_rankers_beside_baselines(trained_pipeline):
    paths = trained_pipeline
    train_ranker.run(train_ranker.Config(min_data_in_leaf=2, num_trees=20), paths,
                     prediction=PredictionConfig(rank_batch_size=8))
    settings = json.loads((paths.ranker_dir / "settings.json").read_text())
    assert settings["lm_features"] and (paths.ranker_dir / "ranker_lm.txt").is_file()
    summary = evaluate.run(evaluate.Config(max_examples=3), paths,
                           prediction=PredictionConfig(max_new_tokens=48, decoding="greedy"))
    result = json.loads(paths.evaluation.read_text())
    assert list(result["metrics"]) == ["ranker_lm", "ranker", "model", "frequent", "recent", "cochange",
                                       "similar_commits", "fusion"]
    model = result["metrics"]["model"]
    assert model["commits"] == 3 and result["metrics"]["frequent"]["commits"] == result["targets"] > 3
    assert result["metrics"]["ranker"]["commits"] == result["metrics"]["ranker_lm"]["commits"] == result["targets"]
    assert math.isfinite(model["loss"]) and model["perplexity"] == pytest.approx(math.exp(model["loss"]))
    assert result["model"]["target_tokens"] > 0 and result["model"]["candidates"] == 3
    for name, metrics in result["metrics"].items():
        for k in (1, 5, 10):
            assert 0.0 <= metrics[f"recall@{k}"] <= 1.0, name
    known = {"src/a.py", "tests/test_a.py", "src/b.py", "src/c.py"}  # every file of the history before the targets
    for sample in result["model"]["samples"]:  # the default ranking scores them all before generation's own
        assert set(sample["predicted_files"][:4]) == known, sample
    table = evaluate.report_path(paths).read_text()
    assert "## Where each predictor loses" in table and "| target loss (nats/token) |" in table
    choice = json.loads((paths.ranker_dir / "metrics.json").read_text())["lm_choice"]
    assert settings["lm_used"] is choice["used"] and choice["val_targets"] > 0
    assert f"Predictions rank with **{'ranker_lm' if choice['used'] else 'ranker'}**" in table
    ablation = result["ranker"]["prior_ablation"]  # the shipped prior (train_ranker.prior: auto), and without it
    assert ablation["ranker"]["recall@5"] == round(result["metrics"]["ranker"]["recall@5"], 4)
    assert (f"and {ablation['ranker_without_prior']['recall@5']:.3f} / {ablation['ranker_without_prior']['mrr']:.3f} "
            "fitted from nothing on the same rows") in table
    assert "feature importances" in table and "lm_logprob" in table
    assert evaluate.chart_path(paths).stat().st_size > 1000
    assert summary["targets"] == result["targets"]


@pytest.mark.slow
def test_predict_cli_loads_the_trained_model(trained_pipeline, capsys):
    paths = trained_pipeline
    code = predict.main(["--model", str(paths.model_dir), "--commits", str(paths.commits), "--task", "Work on b",
                         "--max-new-tokens", "40", "--history", "3", "--output-dir", str(paths.output_dir)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "Work on b" and len(out["history"]) == 3 and len(out["candidates"]) == 1
    assert isinstance(out["candidates"][0]["malformed"], bool)
    code = predict.main(["--model", str(paths.output_dir / "nope"), "--commits", str(paths.commits), "--task", "x"])
    assert code == 2 and "run the train_model stage" in capsys.readouterr().err


def test_the_candidate_pool_sees_every_commit_before_each_target(tmp_path):
    """The language model's likelihood candidates (evaluate's CandidatePool) follow walk_targets' on_commit."""
    history = patterned_history(9)
    paths = write_history(tmp_path, history)
    targets = {sha(history[4][0]): "test", sha(history[8][0]): "test"}
    pool, seen = CandidatePool(), {}
    for state in walk_targets(paths.commits, paths.chunks, targets, BaselineConfig(),
                              on_commit=lambda commit, chunks: pool.add_chunks(chunks)):
        seen[state.target.commit] = pool.top(3)
    for position in (4, 8):
        expected = CandidatePool()
        for _, files in history[:position]:
            expected.add_commit([(path, module) for path, _, _, module in files])
        assert seen[sha(history[position][0])] == expected.top(3)
    assert len(seen[sha(history[8][0])]) == 3
