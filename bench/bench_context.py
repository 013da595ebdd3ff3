"""Benchmark the code index and the context pack on real histories: recall, build, update and query times.

    python bench/bench_context.py                                   # the three histories, 30 test commits each
    python bench/bench_context.py ../shared/data/repos/axum.bundle --test-commits 40 --work /tmp/bench-context
    python bench/bench_context.py --stores                          # also Qdrant Edge vs qdrant-client local mode

For each history (a bundle or a repository; cloned into --work):
1. Scrape and chunk it with the pipeline's own stages (`pipeline.py --stage git_scraper / semantic_chunker`, run
   as subprocesses into <work>/<name>/out; cached there by the pipeline's up-to-date check).
2. Test commits: the last `--test-commits` non-merge commits on HEAD's first-parent line that change at least one
   symbol that existed at their parent (MODIFIED_/DELETED_/MOVED_/RENAMED_ chunks of units). The truth of a test
   commit: those symbols, with their path and line span at the parent.
3. The learned ranker, as the pipeline would have trained it at the first test commit's parent: stages 1-4 and
   train_ranker (no language model) into <work>/<name>/out-ranker on the history that parent reaches
   (`git_scraper.rev_range: <parent>`), with the pipeline's own split (train; val for early stopping; the latest
   10% held out). No test commit is among its targets (checked), so nothing leaks. (The pipeline's own split of
   the whole history does not do: on these histories the bench's test commits, the last non-merge commits of
   the first-parent line, lie before its test split, since recent first-parent commits are merges.) At each test
   commit the ranker predicts as predict.py / serve.py do, through repo2model.ranking.file_ranking.FileRanking.merge (its
   files, change types, modules, symbols; the language model's part left empty), with the history statistics
   of exactly the commits before it (commits.json's order) and the tree at its parent.
4. The index is of a tree, not of a history, so it is built at the parent of the first test commit (timed: the
   build), then moved to each later test commit's parent with the incremental update (each update timed). The
   "after 20 commits" figure: a copy of the first index updated to the commit 20 first-parent commits later.
5. For each test commit (its message is the task), packs at 2,000 and 4,000 tokens (the embedding tokenizer's
   tokens) from:
       ranker-guided   the learned ranker's predictions (step 3), then the pack as the service builds it
                   (context.service_pack with the index section's settings, `pack: fused` by default: the
                   predicted symbols, the symbol ranker's when there is one, and the guided search's hits as
                   one ranking, then the predicted files)
       guided      the fixed-order pack (`pack: ordered`) from a model-free stand-in's predictions: the 5 files
                   of repo2model.ranking.baselines' similar_commits (BM25 of the task against earlier commit
                   messages) with each file's 5 most often changed symbols (kept for comparison: what the pack
                   gets from weaker predictions)
       guided-files-first   the stand-in's predictions, every predicted file before the search
       oracle      guided by the commit's true files (no symbols): what perfect file predictions would give
       hybrid      the search alone (dense + BM25, fused), no predictions
       bm25        BM25 alone
       dense       the embedding alone
   Recall: the share of a test commit's truth symbols whose code at the parent is in the pack (an entry of the
   same path and symbol, or a full-text entry whose lines cover the symbol's span), averaged over test commits.
   Also printed: recall@5 of the truth symbols' files for the ranker and the stand-in.
   The symbol ranker (bench/bench_symbols.py): the served pack (ranker-guided above), the pack chosen for recall
   per token (`index.pack: chosen`), the same order with the untrained fusion's symbols, plain hybrid search and
   the true-files oracle at 1k / 2k / 4k / 8k tokens, with precision; symbol recall@5/@10 of the symbol ranker,
   today's fusion and each single signal; where the served pack loses, by commit size.
   --tune: the ranker-guided recall under other fusion settings (rrf_k, guided_weight) and under other pack
   strategies (PACKS: predicted_share, files first, the fused pack of build_context's fuse_weight, the same with
   the unguided hybrid search's hits, only the top predicted file).
6. Timings: one query as the service answers it (Retriever.answer with the ranker's prediction and, when there is
   one, the symbol ranker's scorer: open the index, embed the task, guided search, the 4,000-token pack, the
   prompt; median and 90th percentile), each update, the
   build (wall and CPU seconds; this machine is shared, so wall times are also printed against a reference
   measured in the same run: embedding 256 fixed texts).

--stores: the largest history's final index copied point for point (same vectors and payloads) into a fresh
Qdrant Edge shard and a fresh qdrant-client local-mode store: build, open, hybrid and guided query, an update of
50 points + 20 deletions, size on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

import bench_symbols  # noqa: E402

from repo2model.core.artifacts import iter_commits_with_chunks  # noqa: E402
from repo2model.ranking.baselines import similar_commits  # noqa: E402
from repo2model.ranking.history import BaselineConfig, PastCommits  # noqa: E402
from repo2model.language.examples import ExampleSet  # noqa: E402
from repo2model.ranking.targets import repository_of  # noqa: E402
from repo2model.git.commands import git  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402
from repo2model.serving.prediction import PredictedFile, Prediction  # noqa: E402
from repo2model.serving.predictor import apply_ranker  # noqa: E402
from repo2model.serving.settings import PredictionConfig  # noqa: E402
from repo2model.ranking.file_ranking import FileRanking  # noqa: E402
from repo2model.ranking.ranker import Ranker  # noqa: E402
from repo2model.retrieval.context import build_context, predicted_parts, service_pack  # noqa: E402
from repo2model.retrieval.embedding import Embedder  # noqa: E402
from repo2model.retrieval.index_config import IndexConfig  # noqa: E402
from repo2model.retrieval.retriever import Retriever  # noqa: E402
from repo2model.retrieval.stores import ClientStore, EdgeStore, Prefetch, StoredPoint  # noqa: E402
from repo2model.retrieval.unit_index import UnitIndex  # noqa: E402
from repo2model.git.scraping import PathFilter, ScraperConfig  # noqa: E402
from repo2model.retrieval.bm25 import code_words  # noqa: E402

DEFAULT_REPOS = [ROOT.parent / "shared" / "data" / "repos" / f"{name}.bundle" for name in ("fd", "axum", "click")]
BUDGETS = (2000, 4000)
MODES = ("ranker-guided", "guided", "guided-files-first", "oracle", "hybrid", "bm25", "dense")
STAGES = ("git_scraper", "semantic_chunker", "tokenizer", "dataset_builder", "train_ranker")
TUNING = [(2, 1.0), (2, 2.0), (2, 8.0), (60, 4.0), (10, 4.0)]  # (rrf_k, guided_weight) beside the configured one
# Pack strategies compared under --tune (build_context's options), on the ranker-guided search's hits.
PACKS = {f"share={share:g}": {"predicted_share": share} for share in (0.0, 0.25, 0.5, 0.75, 1.0)}
PACKS["files-first"] = {"files_first": True}
PACKS.update({f"fused w={w:g}": {"fuse_weight": w} for w in (0.5, 1.0, 2.0)})
# The same with the unguided (hybrid) search's hits: the prediction only through the pack, not the search.
PACKS.update({f"hybrid-search {name}": {**options, "hits": "hybrid"} for name, options in PACKS.items()
              if name in ("share=0.25", "share=0.5", "fused w=0.5", "fused w=1")})
# Only the first predicted file's symbols and file (the ranker's top file is its surest).
PACKS.update({f"{name} top file": {**options, "max_files": 1} for name, options in list(PACKS.items())
              if name in ("share=0.5", "fused w=1", "hybrid-search share=0.25", "hybrid-search fused w=1")})
KEPT_PREFIXES = ("MODIFIED_", "DELETED_", "MOVED_", "RENAMED_")


@dataclass
class Truth:
    path: str
    symbol: str
    start: int
    end: int


@dataclass
class TestCommit:
    hash: str
    parent: str
    message: str
    truth: list[Truth]
    prediction: Prediction  # the model-free stand-in's
    oracle: Prediction
    ranked: Prediction  # the learned ranker's (FileRanking.merge) with the untrained fusion's symbols
    learned: Prediction | None = None  # the same with the symbol ranker's symbols: what predict.py / serve.py make
    scorer: object = None  # the symbol ranker's scorer for its pack (None: no symbol ranker)
    files: int = 0  # changed files (the commit's size)


@dataclass
class HistoryResult:
    name: str
    units: int = 0
    build_wall: float = 0.0
    build_cpu: float = 0.0
    update20_wall: float = 0.0
    update20_cpu: float = 0.0
    update20_embedded: int = 0
    update20_commits: int = 0
    updates: list[float] = field(default_factory=list)
    update_cpu: list[float] = field(default_factory=list)
    query_ms: list[float] = field(default_factory=list)
    cold_ms: list[float] = field(default_factory=list)
    recall: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    tuning: dict[tuple[int, float, int], list[float]] = field(default_factory=dict)
    packs: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    file_recall: dict[str, list[float]] = field(default_factory=dict)  # predictor -> recall@5 of the truth's files
    test_commits: int = 0
    truth_symbols: int = 0
    symbols: bench_symbols.SymbolResult = field(default_factory=bench_symbols.SymbolResult)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repos", nargs="*", type=Path, help="bundles or repositories (default: the three in "
                                                           "../shared/data/repos)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-context")
    parser.add_argument("--test-commits", type=int, default=30)
    parser.add_argument("--stores", action="store_true", help="also compare Qdrant Edge with qdrant-client local mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for embedding (default: torch's)")
    parser.add_argument("--max-tokens", type=int, default=IndexConfig.max_tokens, help="index.max_tokens")
    parser.add_argument("--backend", default=IndexConfig.backend, help="index.backend (auto, onnx-int8, onnx, torch)")
    parser.add_argument("--tune", action="store_true", help="also the guided recall under other rrf_k and "
                                                             "guided_weight settings")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    repos = args.repos or DEFAULT_REPOS
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = IndexConfig(num_threads=args.threads, max_tokens=args.max_tokens, backend=args.backend)
    embedder = Embedder.from_config(cfg)
    print(f"embedder: {embedder.identity}, max_tokens {cfg.max_tokens}")
    print(f"machine load at start: {os.getloadavg()[0]:.1f} (2 cores; others are running too)")
    reference = reference_seconds(embedder)
    print(f"reference: embedding 256 fixed texts took {reference:.1f}s wall")
    results = []
    for source in repos:
        results.append(bench_history(source.resolve(), args.work, args.test_commits, cfg, embedder, args.tune))
        print_results(results, reference)
    if args.stores:
        largest = max(results, key=lambda r: r.units)
        compare_stores(args.work / largest.name / "index", cfg)
    print(f"machine load at end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([result_dict(r, reference) for r in results], indent=2))
    return 0


def reference_seconds(embedder: Embedder) -> float:
    texts = [f"fn handler_{i}(request: Request) -> Response {{ route(request, {i}) }} " * 8 for i in range(256)]
    embedder.embed(texts[:8])
    started = time.perf_counter()
    embedder.embed(texts)
    return time.perf_counter() - started


# ---------------------------------------------------------------- one history


def bench_history(source: Path, work: Path, count: int, cfg: IndexConfig, embedder: Embedder,
                  tune: bool) -> HistoryResult:
    name = source.name.removesuffix(".bundle")
    folder = work / name
    repo = clone(source, folder / "repo")
    paths = run_stages(repo, folder / "out", STAGES[:2])
    chosen = choose_tests(repo, paths, count)
    # The ranker as the pipeline would have trained it at the first test commit's parent: stages 1-4 and
    # train_ranker on the history that commit reaches (its own split: train, val for early stopping, test).
    first_parent = git(repo, "rev-parse", f"{chosen[0]}^").strip()
    ranker_paths = run_stages(repo, folder / "out-ranker", STAGES, rev_range=first_parent)
    check_no_leakage(ranker_paths, chosen)
    tests = test_commits(paths, chosen, ranker_paths)
    result = HistoryResult(name, test_commits=len(tests), truth_symbols=sum(len(t.truth) for t in tests))
    print(f"\n{name}: {len(tests)} test commits, {result.truth_symbols} changed symbols that existed at the parent")
    scraper = ScraperConfig(repo=repo)
    excluded = PathFilter(scraper.file_filters, scraper.exclude_globs).excluded
    index_dir = folder / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    index = UnitIndex(cfg, index_dir, embedder)
    cpu = time.process_time()
    summary = index.update(repo, tests[0].parent, redactor=scraper.redactor(), excluded=excluded)
    result.build_cpu, result.build_wall, result.units = time.process_time() - cpu, summary.seconds, summary.units
    print(f"  build at {tests[0].parent[:12]}: {summary.units} units in {summary.seconds:.1f}s wall, "
          f"{result.build_cpu:.1f}s CPU" + (f"; {summary.missing_objects} files left out, their blobs missing from "
                                           "the repository" if summary.missing_objects else ""))
    update_after(index_dir, repo, tests[0].parent, 20, cfg, embedder, scraper, excluded, result)
    for i, test in enumerate(tests):
        if i:
            cpu = time.process_time()
            step = index.update(repo, test.parent, redactor=scraper.redactor(), excluded=excluded, progress=False)
            result.updates.append(step.seconds)
            result.update_cpu.append(time.process_time() - cpu)
        evaluate(index, test, embedder, result, tune)
    return result


def clone(source: Path, target: Path) -> Path:
    if not (target / ".git").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", str(source), str(target)], check=True)
    return target


def run_stages(repo: Path, out: Path, stages: tuple[str, ...], rev_range: str | None = None) -> ArtifactPaths:
    """Pipeline stages through pipeline.py into `out` (cached there by the pipeline's up-to-date check); with
    `rev_range`, the history git reaches from it only."""
    config = out.with_name(f"{out.name}.yaml")
    config.write_text(f"pipeline:\n  output_dir: {out}\ngit_scraper:\n  repo: {repo}\n"
                      + (f"  rev_range: {rev_range}\n" if rev_range else "") + "train_ranker:\n  language_model: 'off'\n")
    for stage in stages:
        proc = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "--config", str(config), "--stage", stage],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{stage} failed on {repo}:\n{proc.stderr[-2000:]}")
    return ArtifactPaths.under(out)


def choose_tests(repo: Path, paths: ArtifactPaths, count: int) -> list[str]:
    """The last `count` commits of HEAD's first-parent line that are not merges and change at least one symbol
    that existed at their parent, oldest first."""
    line = git(repo, "rev-list", "--first-parent", "--no-merges", "HEAD").split()
    candidates = set(line)
    found = [commit["hash"] for commit, chunks in iter_commits_with_chunks(paths.commits, paths.chunks)
             if commit["hash"] in candidates and commit["parents"] and truth_of(chunks)]
    order = {sha: i for i, sha in enumerate(reversed(line))}
    return sorted(found, key=lambda sha: order[sha])[-count:]


def test_commits(paths: ArtifactPaths, chosen: list[str], ranker_paths: ArtifactPaths) -> list[TestCommit]:
    """The chosen commits with their truth and the stand-in's and the ranker's predictions, each made from the
    commits before it (in commits.json's order), in `chosen`'s order."""
    # The product's ranking: FileRanking as predict.py / serve.py load it, with the statistics (PastCommits) of
    # exactly the commits before the test commit and the tree moved to the commit's parent.
    ranker = Ranker.load(ranker_paths.ranker_dir)
    past = PastCommits(BaselineConfig(**ranker.settings["baselines"]))
    ranking = FileRanking(ranker, past, repository_of(paths.commits) if ranker.settings.get("code_search") else None,
                          None)
    bench_symbols.attach_symbols(ranking, ranker_paths.ranker_dir)
    max_files, wanted = PredictionConfig().max_files, set(chosen)
    tests: dict[str, TestCommit] = {}
    for commit, chunks in iter_commits_with_chunks(paths.commits, paths.chunks):
        if commit["hash"] in wanted:
            task, truth = commit.get("message") or "", truth_of(chunks)
            ranking.last_commit = commit["parents"][0]
            learned, today, scorer = bench_symbols.predictions_at(ranking, task, max_files)
            tests[commit["hash"]] = TestCommit(
                commit["hash"], commit["parents"][0], task, truth, stand_in_prediction(past, task),
                Prediction(task, files=[PredictedFile(p) for p in dict.fromkeys(t.path for t in truth)]),
                today, learned, scorer, len(dict.fromkeys(c["file"] for c in chunks)))
        past.observe(commit, chunks)
        ranking.symbol_history.observe(chunks)
    if ranking.code is not None:
        ranking.code.close()
    return [tests[sha] for sha in chosen]


def check_no_leakage(ranker_paths: ArtifactPaths, chosen: list[str]) -> None:
    """The ranker's history (scraped from the first test commit's parent) holds no test commit."""
    fitted = [c for split in ("train", "val", "test") for c in ExampleSet.load(ranker_paths.split_data(split)).commits]
    leaked = set(fitted) & set(chosen)
    if leaked:
        raise SystemExit(f"{ranker_paths.commits}: the ranker's targets hold test commits ({len(leaked)})")
    print(f"  ranker: trained on the {len(fitted)} targets before the first test commit (none of them a test commit)")


def truth_of(chunks: list[dict]) -> list[Truth]:
    seen, out = set(), []
    for chunk in chunks:
        if chunk["kind"] == "hunk" or not chunk["change_type"].startswith(KEPT_PREFIXES) or not chunk["old_span"]:
            continue
        path = chunk.get("old_file") or chunk["file"]
        symbol = chunk.get("old_symbol") or chunk["symbol"]
        if symbol and (path, symbol) not in seen:
            seen.add((path, symbol))
            out.append(Truth(path, symbol, *chunk["old_span"]))
    return out


def stand_in_prediction(past: PastCommits, task: str) -> Prediction:
    files = [path for path, _ in similar_commits(past, code_words(task), 5)]
    out = []
    for path in files:
        symbols = sorted(past.file_symbols.get(path, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        out.append(PredictedFile(path, module=past.file_module.get(path), symbols=[s for s, _ in symbols]))
    return Prediction(task, files=out, modules=[f.module for f in out if f.module])


def update_after(index_dir: Path, repo: Path, start: str, commits: int, cfg: IndexConfig, embedder: Embedder,
                 scraper: ScraperConfig, excluded, result: HistoryResult) -> None:
    """A copy of the index at `start`, updated to the commit `commits` first-parent commits later (timed)."""
    line = git(repo, "rev-list", "--first-parent", "--reverse", f"{start}..HEAD").split()
    if not line:
        return
    target = line[min(commits, len(line)) - 1]
    copy = index_dir.with_name("index-copy")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(index_dir, copy)
    cpu = time.process_time()
    summary = UnitIndex(cfg, copy, embedder).update(repo, target, redactor=scraper.redactor(), excluded=excluded,
                                                     progress=False)
    result.update20_cpu = time.process_time() - cpu
    result.update20_wall, result.update20_embedded = summary.seconds, summary.embedded
    result.update20_commits = len(git(repo, "rev-list", f"{start}..{target}").split())
    print(f"  update after {min(commits, len(line))} first-parent commits ({result.update20_commits} commits): "
          f"{summary.seconds:.1f}s wall, {result.update20_cpu:.1f}s CPU, {summary.files_changed} files read, "
          f"{summary.embedded} units embedded")
    shutil.rmtree(copy, ignore_errors=True)


def evaluate(index: UnitIndex, test: TestCommit, embedder: Embedder, result: HistoryResult, tune: bool) -> None:
    task = test.message[:4000]
    base = index.cfg
    served = test.learned or test.ranked  # the prediction the service packs from
    # One query as the service answers it: open the index, guided search, the 4,000-token pack, the prompt.
    retriever = Retriever(index.cfg, index.folder, embedder)
    for times in (result.cold_ms, result.query_ms):  # the first opens the index, the second finds it open
        started = time.perf_counter()
        retriever.answer(task, served, budget=max(BUDGETS), scorer=test.scorer)
        times.append(1000 * (time.perf_counter() - started))
    retriever.close()
    predictions = {"ranker-guided": served, "guided": test.prediction, "guided-files-first": test.prediction,
                   "oracle": test.oracle}
    truth_files = {t.path for t in test.truth}
    for name in ("ranker-guided", "guided"):
        top = {f.path for f in predictions[name].files[:5]}
        result.file_recall.setdefault(name, []).append(len(top & truth_files) / min(5, len(truth_files)))
    with index:
        for mode in MODES:
            prediction = predictions.get(mode, Prediction(task))
            search_mode = "guided" if mode in predictions else mode
            hits = None

            def search(query, mode=search_mode, files=(), modules=()):
                nonlocal hits
                if hits is None:  # one search per mode; the smaller budget packs from the same hits
                    hits = index.search(query, mode=mode, files=files, modules=modules)
                return hits

            for budget in sorted(BUDGETS, reverse=True):
                if mode == "ranker-guided":  # the service's pack (index.pack), with its scorer when `chosen`
                    pack = service_pack(task, prediction, index.units_of, search, budget, embedder.count_tokens,
                                        index.cfg, test.scorer)
                    result.recall.setdefault((mode, budget), []).append(recall(pack, test.truth))
                    continue
                pack = build_context(task, prediction, index.units_of, search, budget, embedder.count_tokens,
                                     index.cfg.context_files, search_mode, index.cfg.predicted_share,
                                     files_first=mode == "guided-files-first")
                result.recall.setdefault((mode, budget), []).append(recall(pack, test.truth))
        files, modules, _ = predicted_parts(served, base.context_files)
        for k, weight in TUNING if tune else ():  # the ranker-guided search under other fusion settings
            index.cfg = dataclasses.replace(base, rrf_k=k, guided_weight=weight)
            hits = index.search(task, mode="guided", files=files, modules=modules)
            for budget in BUDGETS:
                pack = build_context(task, served, index.units_of, lambda *a, **kw: hits, budget,
                                     embedder.count_tokens, base.context_files, "guided", base.predicted_share)
                result.tuning.setdefault((k, weight, budget), []).append(recall(pack, test.truth))
        index.cfg = base
        bench_symbols.evaluate_packs(index, test, embedder.count_tokens, base.context_files, base.predicted_share,
                                     result.symbols, recall)
        if tune:  # the ranker-guided pack under other strategies, from the same hits
            found = {"guided": index.search(task, mode="guided", files=files, modules=modules),
                     "hybrid": index.search(task, mode="hybrid")}
            for name, options in PACKS.items():
                options = {"max_files": base.context_files, **options}
                hits = found[options.pop("hits", "guided")]
                for budget in BUDGETS:
                    pack = build_context(task, served, index.units_of, lambda *a, hits=hits, **kw: hits, budget,
                                         embedder.count_tokens, mode="guided", **options)
                    result.packs.setdefault((name, budget), []).append(recall(pack, test.truth))


def recall(pack, truth: list[Truth]) -> float:
    found = 0
    for symbol in truth:
        for entry in pack:
            if entry.path != symbol.path:
                continue
            if (entry.kind != "file" and entry.symbol == symbol.symbol) or (
                    entry.full and entry.start <= symbol.start and symbol.end <= entry.end):
                found += 1
                break
    return found / len(truth)


# ---------------------------------------------------------------- output


def print_results(results: list[HistoryResult], reference: float) -> None:
    print("\n| history | units | build wall / CPU (s) | build / reference | update after 20 first-parent commits "
          "| update between test commits, median (s) | answer with 4k pack median / p90 (ms) | the same, opening the index (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        q = sorted(r.query_ms)
        p90 = q[int(0.9 * (len(q) - 1))] if q else 0.0
        print(f"| {r.name} | {r.units} | {r.build_wall:.1f} / {r.build_cpu:.1f} | {r.build_wall / reference:.1f}x "
              f"| {r.update20_wall:.1f}s wall, {r.update20_cpu:.1f}s CPU ({r.update20_commits} commits, "
              f"{r.update20_embedded} units embedded) "
              f"| {statistics.median(r.updates) if r.updates else 0:.1f} wall, "
              f"{statistics.median(r.update_cpu) if r.update_cpu else 0:.1f} CPU "
              f"| {statistics.median(q) if q else 0:.0f} / {p90:.0f} "
              f"| {statistics.median(r.cold_ms) if r.cold_ms else 0:.0f} |")
    print("\nContext recall (share of each test commit's changed symbols whose code at the parent is in the pack):")
    header = " | ".join(f"{m} @{b // 1000}k" for b in BUDGETS for m in MODES)
    print(f"| history | commits | symbols | {header} |")
    print("|---|---|---|" + "---|" * (len(BUDGETS) * len(MODES)))
    for r in results:
        cells = " | ".join(f"{np.mean(r.recall[(m, b)]):.3f}" for b in BUDGETS for m in MODES)
        print(f"| {r.name} | {r.test_commits} | {r.truth_symbols} | {cells} |")
    print("Recall@5 of the files of those symbols: " + "; ".join(
        f"{r.name} ranker {np.mean(r.file_recall['ranker-guided']):.3f}, stand-in {np.mean(r.file_recall['guided']):.3f}"
        for r in results if r.file_recall))
    if any(r.tuning for r in results):
        print("\nGuided recall under other fusion settings (rrf_k, guided_weight) @2k / @4k:")
        for r in results:
            cells = ", ".join(f"k={k} w={w:g}: {np.mean(r.tuning[(k, w, 2000)]):.3f} / "
                              f"{np.mean(r.tuning[(k, w, 4000)]):.3f}" for k, w in TUNING if (k, w, 2000) in r.tuning)
            print(f"  {r.name}: {cells}")
    if any(r.packs for r in results):
        print("\nRanker-guided recall under other pack strategies @2k / @4k:")
        for r in results:
            cells = ", ".join(f"{name}: {np.mean(r.packs[(name, 2000)]):.3f} / {np.mean(r.packs[(name, 4000)]):.3f}"
                              for name in PACKS if (name, 2000) in r.packs)
            print(f"  {r.name}: {cells}")
    bench_symbols.print_symbol_results([(r.name, r.symbols) for r in results])
    sys.stdout.flush()


def result_dict(r: HistoryResult, reference: float) -> dict:
    return {"history": r.name, "units": r.units, "build_wall_s": r.build_wall, "build_cpu_s": r.build_cpu,
            "reference_s": reference, "update20_s": r.update20_wall, "update20_commits": r.update20_commits,
            "update20_embedded": r.update20_embedded, "updates_s": r.updates, "query_ms": r.query_ms,
            "cold_query_ms": r.cold_ms, "update_cpu_s": r.update_cpu, "update20_cpu_s": r.update20_cpu,
            "recall": {f"{m}@{b}": float(np.mean(v)) for (m, b), v in r.recall.items()},
            "tuning": {f"k={k},w={w}@{b}": float(np.mean(v)) for (k, w, b), v in r.tuning.items()},
            "file_recall@5": {name: float(np.mean(v)) for name, v in r.file_recall.items()},
            "packs": {f"{name}@{b}": float(np.mean(v)) for (name, b), v in r.packs.items()},
            "test_commits": r.test_commits, "truth_symbols": r.truth_symbols,
            "symbols": bench_symbols.result_dict(r.symbols)}


# ---------------------------------------------------------------- Qdrant Edge vs qdrant-client local mode


def compare_stores(index_dir: Path, cfg: IndexConfig) -> None:
    """The same points in a fresh Edge shard and a fresh local-mode store: build, open, query, update, size."""
    source = EdgeStore(index_dir / "shard", None, cfg.lock_wait_s)
    payloads = source.payloads()
    vectors = source.vectors(list(payloads))
    source.close()
    points = [StoredPoint(i, vectors[i][0], vectors[i][1], payloads[i]) for i in sorted(payloads)]
    files = sorted({p.payload["path"] for p in points})[:5]
    query_dense, query_sparse = points[0].dense, points[0].sparse
    hybrid = [Prefetch("dense"), Prefetch("bm25")]
    guided = [Prefetch("dense", tuple(files), (), 4.0), Prefetch("bm25", tuple(files), (), 4.0), *hybrid]
    print(f"\nStores: {len(points)} points (dense 384 + BM25 sparse, payload with code), "
          f"{os.getloadavg()[0]:.1f} load")
    print("| store | build (s) | open (ms) | hybrid query (ms) | guided query (ms) | 50 upserts + 20 deletes (ms) "
          "| disk (MB) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=index_dir.parent) as scratch:
        for name in ("edge", "local"):
            folder = Path(scratch) / name

            def open_store(dim):
                if name == "edge":
                    return EdgeStore(folder, dim, 5.0)
                return ClientStore.local(folder, "units", dim, 5.0)

            started = time.perf_counter()
            store = open_store(len(query_dense))
            store.upsert(points)
            store.close()
            build = time.perf_counter() - started
            started = time.perf_counter()
            store = open_store(None)
            opened = 1000 * (time.perf_counter() - started)
            times = {}
            for label, lists in (("hybrid", hybrid), ("guided", guided)):
                samples = []
                for _ in range(10):
                    started = time.perf_counter()
                    store.query(query_dense, query_sparse, lists, 100, cfg.rrf_k)
                    samples.append(1000 * (time.perf_counter() - started))
                times[label] = statistics.median(samples)
            started = time.perf_counter()
            store.upsert(points[:50])
            store.delete([p.id for p in points[50:70]])
            update = 1000 * (time.perf_counter() - started)
            store.close()
            size = sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file()) / 1e6
            print(f"| {name} | {build:.1f} | {opened:.0f} | {times['hybrid']:.1f} | {times['guided']:.1f} "
                  f"| {update:.0f} | {size:.1f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
