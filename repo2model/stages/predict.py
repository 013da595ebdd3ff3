"""Predict the next change: given recent history and a task, which files change, how, and the code's shape.

    python predict.py --config config.yaml --repo . --task "Add a retry to the scraper"
    python predict.py --model outputs/model --commits outputs/commits.json --task "..." --decoding sample
    python predict.py --config config.yaml --repo . --working-tree      # the uncommitted changes as evidence
    python predict.py --config config.yaml --repo . --watch             # one JSON line per change, until Ctrl-C

Reads
    model/                  the trained model folder (scratch, LoRA/QLoRA adapter over its base, merged;
                            default: predict.model_dir, else <output_dir>/model), and the commit language
                            beside it or in <output_dir>/tokenizer
    the recent history      --repo: the repository's last N commits, scraped and chunked on the fly with the
                            config's git_scraper and semantic_chunker sections (as the pipeline did); or
                            --commits: the last N commits of a commits.json with their chunks from
                            chunks.jsonl beside it (--chunks), and every file of commits.json as a candidate
                            for the likelihood ranking
Writes
    JSON to stdout (or --output, atomically): files ranked with scores, change types and symbols per file,
    modules, symbols, a code sketch, and every generated candidate's raw text with its parse problems; `context`
    (the current code of the predicted symbols and files, then the units the code index finds, within
    predict.context_tokens; see repo2model/retrieval/context.py) and `prompt` (one text for a code-writing model:
    task, predicted change, code context, the --test-failures file); `authors` (the likely authors, top 3 with
    probabilities) and `when` (the expected time to the next commit touching the top files, with an interval).

The work in progress (--working-tree, with --repo): the repository's uncommitted changes (staged and unstaged
against HEAD, untracked files that .gitignore does not exclude, as new files; secrets redacted as the scraper does)
are chunked like a commit; their files are reported as `in_progress` with their change types, and `files` ranks the
remaining files of the change (the live ranker: repo2model/ranking/live.py). --task is optional then.
--watch follows the working tree and HEAD (repo2model/serving/watch.py): one prediction at once, then one JSON
line on stdout each time HEAD or the set of changed files changes; a new commit also updates the code index
incrementally. Ctrl-C (or SIGTERM) stops it with exit code 0.

How the prompt is built and the files are ranked: repo2model/serving/predictor.py; the JSON's keys:
repo2model/serving/prediction.py. The `predict` section's keys are documented in config.yaml; the flags below
override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from repo2model.core.artifacts import atomic_open, require
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.errors import UserError
from repo2model.code.chunking import ChunkerConfig
from repo2model.git.scraping import ScraperConfig
from repo2model.serving.history import History, history_from_artifacts, history_from_repo, load_history_sections
from repo2model.core.paths import ArtifactPaths
from repo2model.serving.prediction import Prediction
from repo2model.serving.predictor import CandidatePool, Predictor, pool_from_artifacts
from repo2model.serving.watch import Watch, update_index
from repo2model.serving.work_in_progress import read_work_in_progress
from repo2model.serving.settings import (
    MAX_TASK_CHARS,
    SECTION,
    PredictionConfig,
    add_decoding_arguments,
    config_from_args,
)
from repo2model.retrieval.index_config import load_index_config
from repo2model.retrieval.retriever import Retriever

log = logging.getLogger("predict")

Config = PredictionConfig  # the `predict` section, under the name every stage script uses


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    cfg, pipeline_cfg, paths = load_stage(args, SECTION, PredictionConfig)
    cfg = apply_overrides(config_from_args(cfg, args), SECTION, {"context_tokens": args.context_tokens})
    check_task(args.task, required=not (args.working_tree or args.watch))
    check_work_in_progress(args)
    scraper_cfg, chunker_cfg = load_history_sections(args.config)
    history, pool = read_history(args, cfg) if not args.watch else ([], None)
    retriever = Retriever(load_index_config(args.config), paths.index_dir)
    predictor = Predictor.load(cfg.model_dir or paths.model_dir, cfg, paths=paths, retriever=retriever)
    seed = args.seed if args.seed is not None else pipeline_cfg.seed
    if args.watch:
        return watch_repository(args, predictor, retriever, seed, scraper_cfg, chunker_cfg)
    work = read_work_in_progress(args.repo, scraper_cfg, chunker_cfg) if args.working_tree else None
    try:
        prediction = predictor.predict(history, args.task or "", seed=seed, pool=pool, repo=args.repo,
                                       test_failures=read_test_failures(args.test_failures), work=work)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    write_prediction(prediction, args.output)
    top = ", ".join(f"{f.path} ({f.score:.2f})" for f in prediction.files[:3]) or "no file"
    log.info("predicted %d files from %d candidates (%d malformed) in %.1fs: %s", len(prediction.files),
             len(prediction.candidates), prediction.malformed_candidates, prediction.seconds, top)
    return 0


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    add_decoding_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--repo", type=Path, help="scrape the recent history of this repository")
    source.add_argument("--commits", type=Path, help="take the recent history from this commits.json")
    parser.add_argument("--chunks", type=Path, help="chunks.jsonl for --commits (default: beside it)")
    parser.add_argument("--task", help="what the next change should do (its commit message); optional with "
                                       "--working-tree and --watch")
    parser.add_argument("--working-tree", action="store_true",
                        help="with --repo: the uncommitted changes are the change in progress (`in_progress`); "
                             "the remaining files are predicted")
    parser.add_argument("--watch", action="store_true",
                        help="with --repo: follow the working tree and HEAD, one JSON line per change (Ctrl-C stops)")
    parser.add_argument("--seed", type=int, help="override pipeline.seed (sampling)")
    parser.add_argument("--output", type=Path, help="write the JSON here instead of stdout")
    parser.add_argument("--test-failures", type=Path, help="a file with recent test failures for the prompt "
                                                          "(- reads stdin)")
    parser.add_argument("--context-tokens", type=int, help="override predict.context_tokens")
    return parser.parse_args(argv)


def read_test_failures(path: Path | None) -> str | None:
    if path is None:
        return None
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"--test-failures: cannot read {path} ({exc.strerror})") from None


def check_task(task: str | None, required: bool = True) -> None:
    if task is None and not required:
        return
    if task is None or not task.strip():
        raise UserError("--task: must not be empty (it may be left out with --working-tree or --watch)")
    if len(task) > MAX_TASK_CHARS:
        raise UserError(f"--task: longer than {MAX_TASK_CHARS} characters")


def check_work_in_progress(args: argparse.Namespace) -> None:
    """--working-tree and --watch read a repository's working tree: --repo is required, --output is a file."""
    for flag, given in (("--working-tree", args.working_tree), ("--watch", args.watch)):
        if given and args.repo is None:
            raise UserError(f"{flag}: needs --repo (the repository whose working tree is read)")
    if args.watch and args.output is not None:
        raise UserError("--watch writes one JSON line per prediction to stdout: leave --output out")


def watch_repository(args: argparse.Namespace, predictor: Predictor, retriever: Retriever, seed: int,
                     scraper_cfg: ScraperConfig | None, chunker_cfg: ChunkerConfig | None) -> int:
    """One JSON line per prediction until Ctrl-C or SIGTERM (exit code 0)."""
    watcher = Watch(predictor, args.repo, args.task or "", seed=seed, scraper_cfg=scraper_cfg,
                    chunker_cfg=chunker_cfg, on_new_head=update_index(retriever, scraper_cfg))
    signal.signal(signal.SIGTERM, _stop)
    try:
        for prediction in watcher.predictions():
            sys.stdout.write(json.dumps(prediction.to_json(), ensure_ascii=False) + "\n")
            sys.stdout.flush()
            log.info("watch: %d files in progress, next: %s", len(prediction.in_progress or []),
                     ", ".join(f.path for f in prediction.files[:3]) or "no file")
    except KeyboardInterrupt:
        log.info("watch: stopped after %d predictions", watcher.predictions_made)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return 0


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def read_history(args: argparse.Namespace, cfg: PredictionConfig) -> tuple[History, CandidatePool | None]:
    """The recent history, and the candidate files of the likelihood ranking (None: the history's own)."""
    if args.repo is not None:
        scraper_cfg, chunker_cfg = load_history_sections(args.config)
        return history_from_repo(args.repo, cfg.history_commits, scraper_cfg, chunker_cfg), None
    chunks = args.chunks or ArtifactPaths.under(args.commits.resolve().parent).chunks  # chunks.jsonl(.zst) beside it
    history = history_from_artifacts(require(args.commits, "git_scraper"), chunks, cfg.history_commits)
    if cfg.file_ranking == "generation":
        return history, None
    return history, pool_from_artifacts(args.commits, chunks)  # every file of commits.json, not only the history's


def write_prediction(prediction: Prediction, output: Path | None) -> None:
    text = json.dumps(prediction.to_json(), indent=2, ensure_ascii=False)
    if output:
        with atomic_open(output) as fh:
            fh.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
