"""Run the whole pipeline, git history -> trained model, as configured in `config.yaml`.

    python pipeline.py --config config.yaml              # every stage, in order
    python pipeline.py --config config.yaml --stage tokenizer
    python pipeline.py --list-stages
    python pipeline.py --config config.yaml --force      # rerun up-to-date stages too

Stages run in-process, in order, through each stage script's `run(cfg, paths, seed=...)`:

    git_scraper -> semantic_chunker -> index -> tokenizer -> dataset_builder -> train_model
                -> train_ranker -> evaluate

(`evaluate` scores the trained model and the ranker on the test split beside model-free baselines.)

Up to date means skipped: a stage whose inputs (files and, for the scraper, the
repository's refs), config section, seed and code are unchanged since its last
successful run is skipped with a message saying so (`--force` reruns it). The
fingerprints live in `<output_dir>/.pipeline_state.json`.

`pipeline.compress: true` writes commits.json.zst and chunks.jsonl.zst instead
of the plain files (every stage reads either). `pipeline.keep_intermediates:
false` removes commits, chunks and tokens.pt at the end of a run in which every
stage that reads them succeeded or was up to date; their digests stay in the
state file, so a later run with nothing changed still skips every stage, and a
stage that must rerun and needs a removed file first reruns the stage that
makes it (logged as "regenerating").

Update (`--update`, or `pipeline.update: true` for scheduled runs): learn the
commits that are new since the live model, in minutes, without a service gap:

    python pipeline.py --config config.yaml --update
    python pipeline.py --config config.yaml --rollback    # back to the model the last update replaced

The scraper and the chunker add only the new commits (`incremental`; commits a
force-push or rebase removed are reported and dropped), the code index
re-embeds only the units whose code changed, the tokenizer stays
frozen (ids stable; new authors and modules are spelled out, and counted), the
dataset builder moves the split forward (the newest commits never trained on
become val and test; train = the rest of them + a `replay_share` of earlier
examples), train_model continues the live model (`warm_start`: its weights, a
fresh short schedule: model_training.update_max_steps, update_learning_rate,
update_warmup_steps), then the ranker is refitted and the model evaluated
again. Everything that belongs to one model (model/,
ranker/, the splits, training_logs/, evaluation.*) is written under
`<output_dir>/next/` and switched in only when all of it is complete, the model
folder last (repo2model/stages/generations.py); the replaced generation is kept in
`<output_dir>/previous/` for `--rollback` (refused once a full run has trained
another model). A killed or failed update leaves the live model as it
was, and the next run continues it where it stopped (a kill during the switch
is finished by the next run of any kind). No new or removed commits: nothing
is done, and the log says so. The update runs the full pipeline instead, and
says why, when there is nothing it can continue: no trained model yet, no
training split or tokenizer, or settings the model cannot continue with (mode,
architecture, adapter shape: train_model.warm_start_refusal). A full run
discards an unfinished update. The summary line (and `update` in
pipeline_results.json) gives the new/removed commits, the authors and modules
spelled out, the steps trained and the validation loss before and after.

Each run takes a lock on the output folder (a second run on the same folder
stops with one line), removes the temporaries a killed run left there
(`.NAME.XXXXXXXX.tmp`), and writes `<output_dir>/pipeline.log` and
`<output_dir>/pipeline_results.json` (per stage: status, seconds, outputs with
sizes, summary, error).

Stage protocol (each stage script provides):
    SECTION                        its config section name
    Config                         the dataclass of that section
    run(cfg, paths, seed) -> dict  does the work, returns a JSON-able summary
    stage_inputs(cfg, paths)       files it reads
    stage_outputs(cfg, paths)      files it writes
    input_state(cfg, paths)        optional: a string for inputs that are not files
    USES_SECTIONS                  optional: {run() keyword: section} of other sections it reads
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from repo2model.core.artifacts import (
    atomic_path, compressed_twin, ensure_folder, file_sizes, remove_stale_temporaries, write_json,
)
from repo2model.core.cli import user_errors_to_exit
from repo2model.core.config import PipelineConfig, load_config, load_yaml, section_dict
from repo2model.core.errors import UserError
from repo2model.core.logs import quiet_noisy_libraries, setup_logging
from repo2model.core.paths import ArtifactPaths
from repo2model.stages.generations import Generations, Journal, describe_model, model_info, staged_paths

log = logging.getLogger("pipeline")
STAGES_DIR = Path(__file__).resolve().parent
LIBRARY = STAGES_DIR.parent

# (stage name, module) in run order.
STAGES = (
    ("git_scraper", "repo2model.stages.git_scraper"),
    ("semantic_chunker", "repo2model.stages.semantic_chunker"),
    ("index", "repo2model.stages.index"),
    ("tokenizer", "repo2model.stages.tokenizer"),
    ("dataset_builder", "repo2model.stages.dataset_builder"),
    ("train_model", "repo2model.stages.train_model"),
    ("train_ranker", "repo2model.stages.train_ranker"),
    ("evaluate", "repo2model.stages.evaluate"),
)
STAGE_NAMES = tuple(name for name, _ in STAGES)
# Tools that use the trained model have config sections too; validated here so
# that a typo in them surfaces before hours of training, not after.
TOOLS = ("repo2model.stages.predict", "repo2model.stages.serve")
STAGE_PROTOCOL = ("SECTION", "Config", "run", "stage_inputs", "stage_outputs")
TOOL_PROTOCOL = ("SECTION", "Config")
# Large files only the stages read (ArtifactPaths fields), removed with pipeline.keep_intermediates: false.
INTERMEDIATES = ("commits", "chunks", "tokens")
LOCK_NAME = ".pipeline.lock"


@dataclass
class Stage:
    name: str
    module: ModuleType

    @property
    def section(self) -> str:
        return self.module.SECTION


@dataclass
class RunState:
    """What `.pipeline_state.json` holds between runs."""

    fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)  # stage -> fingerprint of its last success
    input_states: dict[str, str] = dataclasses.field(default_factory=dict)  # stage -> its input_state() then
    removed: dict[str, str] = dataclasses.field(default_factory=dict)  # intermediate path -> digest when removed

    @classmethod
    def read(cls, path: Path) -> "RunState":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(dict(data["fingerprints"]), dict(data["input_states"]), dict(data["removed"]))
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or an older layout: every stage reruns once
            return cls()


def import_stage(module_name: str, needs: tuple[str, ...] = STAGE_PROTOCOL) -> ModuleType:
    """Import a stage (or tool) script by name and check that it has what the pipeline calls."""
    module = importlib.import_module(module_name)
    missing = [attr for attr in needs if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"{module_name} lacks {', '.join(missing)} (see pipeline.py's stage protocol)")
    return module


def section_classes(stages: list[Stage]) -> dict[str, type]:
    """Every config section the pipeline knows, by name: its own, each stage's and each tool's."""
    sections = {"pipeline": PipelineConfig}
    sections.update({stage.section: stage.module.Config for stage in stages})
    for tool in TOOLS:
        module = import_stage(tool, TOOL_PROTOCOL)
        sections[module.SECTION] = module.Config
    return sections


def extra_sections(stage: Stage, loaded: dict) -> dict:
    """The other config sections a stage reads, as keyword arguments of its run()."""
    return {keyword: loaded[section] for keyword, section in getattr(stage.module, "USES_SECTIONS", {}).items()}


# ---------------------------------------------------------------- fingerprints


def fingerprint(stage: Stage, cfg, paths: ArtifactPaths, seed: int, extras: dict, state: RunState) -> str:
    """A digest of everything a stage's result depends on: inputs, config, seed, code.

    An input removed by keep_intermediates: false counts with the digest it had
    when removed, and while one is missing the stage's input_state() (which may
    read it) counts as it was at the stage's last success.
    """
    digest = hashlib.blake2b(digest_size=16)
    settings = {"stage": stage.name, "config": section_dict(cfg), "seed": seed}
    settings.update({k: section_dict(v) for k, v in extras.items()})
    digest.update(json.dumps(settings, sort_keys=True).encode())
    inputs = sorted(Path(p) for p in stage.module.stage_inputs(cfg, paths))
    for path in inputs:
        digest.update(str(path).encode())
        digest.update((path_digest(path) if path.exists() else state.removed.get(str(path), "<missing>")).encode())
    for code in [Path(stage.module.__file__), *sorted(LIBRARY.rglob("*.py"))]:
        digest.update(code.read_bytes())
    if hasattr(stage.module, "input_state"):
        if any(not p.exists() and str(p) in state.removed for p in inputs):
            digest.update(state.input_states.get(stage.name, "<unknown>").encode())
        else:
            digest.update(input_state_digest(stage, cfg, paths).encode())
    return digest.hexdigest()


def input_state_digest(stage: Stage, cfg, paths: ArtifactPaths) -> str:
    return hashlib.blake2b(stage.module.input_state(cfg, paths).encode(), digest_size=16).hexdigest()


def path_digest(path: Path) -> str:
    """The content digest of a file or folder (names and contents of its files), or "<missing>"."""
    digest = hashlib.blake2b(digest_size=16)
    if path.is_file():
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                digest.update(str(child.relative_to(path)).encode())
                digest.update(path_digest(child).encode())
    else:
        return "<missing>"
    return digest.hexdigest()


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    """One pipeline run: the loaded config, the stages, and what happened so far."""

    config_path: Path
    stages: list[Stage]
    loaded: dict[str, Any]
    paths: ArtifactPaths
    state: RunState
    force: bool
    started: float = dataclasses.field(default_factory=time.perf_counter)
    results: dict[str, dict] = dataclasses.field(default_factory=dict)
    update: dict | None = None  # --update / --rollback: what it did (pipeline_results.json's `update`)

    @property
    def pipeline(self) -> PipelineConfig:
        return self.loaded["pipeline"]


def run_pipeline(config_path: Path, only: str | None = None, force: bool = False, continue_on_error: bool = False,
                 update: bool | None = None, rollback: bool = False) -> int:
    """Run the stages (all, or `only`); `update`: --update (None: pipeline.update decides, for whole runs);
    `rollback`: switch the previous model generation back in and run nothing."""
    load_yaml(config_path)  # a missing or unreadable file is reported before the stages' heavy imports
    stages = [Stage(name, import_stage(module)) for name, module in STAGES]
    # Not strict: a stage run alone validates only its sections, so the project's list of
    # section names (KNOWN_SECTIONS) is what refuses a misspelt one.
    loaded = load_config(config_path, section_classes(stages), strict_sections=False)
    pipeline: PipelineConfig = loaded["pipeline"]
    update = (pipeline.update if update is None else update) and only is None
    paths = ArtifactPaths.under(pipeline.output_dir, pipeline.log_file, pipeline.compress)
    ensure_folder(paths.output_dir)
    with output_folder_lock(paths.output_dir):
        setup_logging(paths.pipeline_log, pipeline.log_level)
        log.info("pipeline: config %s, outputs in %s%s", config_path, paths.output_dir,
                 " (rollback)" if rollback else " (update)" if update else "")
        clean_stale_temporaries(paths)
        clean_stale_temporaries(staged_paths(paths))
        run = Run(config_path, stages, loaded, paths, RunState.read(paths.state), force)
        generations = Generations(paths)
        if rollback:
            roll_back(run, generations)
            save_progress(run)
            return 0
        if update:
            exit_code = run_update(run, generations)
        else:
            settle_pending_update(generations, full_run=only is None)
            exit_code = run_stages(run, only, continue_on_error)
        if not pipeline.keep_intermediates:
            remove_intermediates(run)
        save_progress(run)
    counts: dict[str, int] = {}
    for result in run.results.values():
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    log.info(
        "pipeline: %s in %.1fs (results: %s)",
        ", ".join(f"{n} {s}" for s, n in counts.items()),
        time.perf_counter() - run.started,
        paths.pipeline_results,
    )
    return exit_code


def run_stages(run: Run, only: str | None = None, continue_on_error: bool = False) -> int:
    """Every stage in order (or just `only`), each skipped when up to date; the exit code."""
    exit_code = 0
    for stage in run.stages:
        if only and stage.name != only:
            continue
        if exit_code and not continue_on_error:
            run.results[stage.name] = {"status": "not_run", "reason": "an earlier stage failed"}
            continue
        run.results[stage.name] = run_stage(run, stage, run.force)
        if run.results[stage.name]["status"] == "failed":
            exit_code = 1
        save_progress(run)
    return exit_code


def run_stage(run: Run, stage: Stage, force: bool, why: str = "running") -> dict:
    """Run one stage unless it is up to date; returns its entry of pipeline_results.json."""
    cfg = run.loaded[stage.section]
    extras = extra_sections(stage, run.loaded)
    outputs = [Path(p) for p in stage.module.stage_outputs(cfg, run.paths)]
    seed = run.pipeline.seed
    started = time.perf_counter()
    try:
        before = fingerprint(stage, cfg, run.paths, seed, extras, run.state)
        present = all(p.exists() or str(p) in run.state.removed for p in outputs)
        if not force and run.state.fingerprints.get(stage.name) == before and present:
            log.info("%s: up to date (inputs, config and code unchanged since its last success): skipped", stage.name)
            return {"status": "skipped", "reason": "up to date", "outputs": file_sizes(outputs)}
        regenerate_inputs(run, stage, cfg)
        log.info("%s: %s", stage.name, why)
        summary = stage.module.run(cfg, run.paths, seed=seed, **extras)
        for path in outputs:
            run.state.removed.pop(str(path), None)
            remove_other_format(path)
        # Fingerprint again after the run: a stage may legitimately read inputs it also refreshed.
        run.state.fingerprints[stage.name] = fingerprint(stage, cfg, run.paths, seed, extras, run.state)
        if hasattr(stage.module, "input_state"):
            run.state.input_states[stage.name] = input_state_digest(stage, cfg, run.paths)
        seconds = time.perf_counter() - started
        log.info("%s: done in %.1fs", stage.name, seconds)
        return {"status": "ok", "seconds": round(seconds, 3), "outputs": file_sizes(outputs), "summary": summary}
    except UserError as exc:
        run.state.fingerprints.pop(stage.name, None)
        log.error("%s: error: %s", stage.name, exc)
        return {"status": "failed", "seconds": round(time.perf_counter() - started, 3), "error": str(exc)}
    except Exception as exc:  # a bug: keep the traceback in the log, go on if asked
        run.state.fingerprints.pop(stage.name, None)
        log.error("%s: crashed: %s: %s\n%s", stage.name, type(exc).__name__, exc, traceback.format_exc())
        return {"status": "failed", "seconds": round(time.perf_counter() - started, 3), "error": f"{type(exc).__name__}: {exc}"}


def regenerate_inputs(run: Run, stage: Stage, cfg) -> None:
    """Bring back the inputs of `stage` that keep_intermediates: false removed, by rerunning their stage."""
    for path in stage.module.stage_inputs(cfg, run.paths):
        path = Path(path)
        if path.exists() or str(path) not in run.state.removed:
            continue
        maker = next(
            (s for s in run.stages if path in map(Path, s.module.stage_outputs(run.loaded[s.section], run.paths))), None
        )
        if maker is None:
            raise UserError(f"{path}: removed by pipeline.keep_intermediates: false and no stage writes it: rerun with --force")
        result = run_stage(run, maker, force=True, why=f"regenerating {path.name} for {stage.name}")
        run.results[maker.name] = {**result, "reason": f"regenerated {path.name} for {stage.name}"}
        if result["status"] != "ok":
            raise UserError(f"{path}: could not be regenerated ({maker.name} failed: {result.get('error')})")


def remove_other_format(path: Path) -> None:
    """After a stage wrote `commits.json.zst`, an old `commits.json` (or the reverse) is stale: remove it."""
    twin = compressed_twin(path)
    if path.suffix in (".json", ".jsonl", ".zst") and twin.is_file() and path.exists():
        twin.unlink()
        log.info("removed %s (pipeline.compress changed: %s replaces it)", twin, path.name)


def remove_intermediates(run: Run) -> None:
    """keep_intermediates: false: remove each intermediate every stage reading it is done with in this run."""
    for field in INTERMEDIATES:
        path = getattr(run.paths, field)
        if not path.is_file():
            continue
        readers = [s.name for s in run.stages if path in map(Path, s.module.stage_inputs(run.loaded[s.section], run.paths))]
        if all(run.results.get(name, {}).get("status") in ("ok", "skipped") for name in readers):
            run.state.removed[str(path)] = path_digest(path)
            path.unlink()
            log.info("removed %s (pipeline.keep_intermediates: false; read by %s)", path, ", ".join(readers) or "no stage")


# ---------------------------------------------------------------- update (--update, --rollback)

# Each stage's part in an update: its config section with these keys set (the module docstring says why).
UPDATE_SETTINGS = {
    "git_scraper": {"incremental": True},
    "semantic_chunker": {"incremental": True},
    "tokenizer": {"frozen": True},
    "dataset_builder": {"update": True},
}


def run_update(run: Run, generations: Generations) -> int:
    """--update: the stages in update mode, the model generation written under next/, then switched in."""
    journal = generations.pending()
    if journal is not None and journal.state == "switching":
        finish_switch(generations, journal)
        journal = None
    resumed = journal is not None
    if str(run.paths.commits) in run.state.removed:
        log.warning("update: pipeline.keep_intermediates is false, so %s and %s are gone: the scraper and the chunker "
                    "start over (the model still learns only what it has not)", run.paths.commits.name, run.paths.chunks.name)
    if journal is None:
        reason = full_run_reason(run)
        if reason:
            log.warning("update: %s: running the full pipeline instead", reason)
            run.update = {"full_run": reason}
            return run_stages(run)
        journal = generations.begin(model_info(run.paths.model_dir))
    else:
        log.info("update: continuing the update started at %s (stopped before it finished; done then: %s)",
                 journal.started_at, ", ".join(journal.completed) or "nothing")
    updating = dataclasses.replace(run, loaded=update_sections(run), paths=staged_paths(run.paths))
    for position, stage in enumerate(run.stages):
        data_changed = any(run.results[s.name]["status"] == "ok" for s in run.stages[:position])
        if stage.name == "dataset_builder" and (stage.name not in journal.completed or data_changed):
            # the builder moves the live split forward (again, when commits arrived since it last did)
            place_split_to_move(run.paths.train_data, updating.paths.train_data)
        result = run.results[stage.name] = run_stage(updating, stage, run.force)
        save_progress(run)
        later = [s.name for s in run.stages[position + 1:]]
        if result["status"] == "failed":
            if not journal.completed:
                generations.discard()  # nothing done yet: the next update starts afresh
            log.error("update: stopped at %s; the live model is unchanged (%s); rerun --update to continue",
                      stage.name, run.paths.model_dir)
            return stop_update(run, later, "not_run", "an earlier stage failed", 1)
        record_stage(journal, stage.name, result)
        journal.save(generations.next)
        if stage.name == "git_scraper" and not resumed and not (journal.new_commits or journal.removed_commits):
            generations.discard()
            info = journal.base or {}
            log.info("update: nothing new: no commit added or removed since the last run (the model has learnt up to "
                     "%s, trained at %s): nothing to do", (info.get("last_commit") or "?")[:12], info.get("trained_at", "?"))
            run.update = {"nothing_new": True, "new_commits": 0, "removed_commits": 0}
            return stop_update(run, later, "skipped", "update: nothing new", 0)
        if stage.name == "git_scraper" and journal.removed_commits:
            log.warning("update: the history was rewritten (a force-push or rebase, or deleted branches): %d commits "
                        "the last run had are gone (e.g. %s): their chunks and examples are dropped, the model keeps "
                        "what it learnt from them", journal.removed_commits, ", ".join(h[:12] for h in journal.removed_sample[:3]))
        if stage.name == "dataset_builder" and (result.get("summary") or {}).get("update", {}).get("nothing_new"):
            generations.discard()
            log.info("update: %d new commits, too few to learn from beyond the validation and test commits the split "
                     "needs: the live model stays; a later update learns them", journal.new_commits)
            run.update = {"nothing_new": True, "new_commits": journal.new_commits, "removed_commits": journal.removed_commits}
            return stop_update(run, later, "skipped", "update: too few new commits to train on", 0)
    started = time.perf_counter()
    switched = generations.switch(journal)
    run.update = update_report(run, journal, switched, time.perf_counter() - started)
    return 0


def update_sections(run: Run) -> dict[str, Any]:
    """The config sections of an update: UPDATE_SETTINGS, and training continues the live model."""
    loaded = dict(run.loaded)
    for stage_name, settings in UPDATE_SETTINGS.items():
        section = next(s.section for s in run.stages if s.name == stage_name)
        loaded[section] = dataclasses.replace(loaded[section], **settings)
    live = run.paths.model_dir.resolve()
    trainer = next(s.section for s in run.stages if s.name == "train_model")
    loaded[trainer] = dataclasses.replace(loaded[trainer], warm_start=live)
    prediction = loaded.get("prediction")
    if prediction is not None and prediction.model_dir is not None and Path(prediction.model_dir).resolve() == live:
        loaded["prediction"] = dataclasses.replace(prediction, model_dir=None)  # the ranker and evaluation: next/'s model
    return loaded


def full_run_reason(run: Run) -> str | None:
    """Why an update cannot continue the live model (None: it can)."""
    paths = run.paths
    if model_info(paths.model_dir) is None:
        return f"no trained model to continue in {paths.model_dir}"
    for path, what in ((paths.train_data, "training split to move forward"), (paths.tokenizer_dir, "tokenizer to keep")):
        if not path.exists():
            return f"{path} is missing (the {what})"
    trainer = next(s for s in run.stages if s.name == "train_model")
    refusal = getattr(trainer.module, "warm_start_refusal", None)
    why = refusal(update_sections(run)[trainer.section], paths) if refusal else None
    return f"the live model cannot be continued with these settings ({why})" if why else None


def place_split_to_move(live: Path, staged: Path) -> None:
    """The update's dataset builder moves the live train split forward: it starts from a copy of it under next/
    (a hard link: the builder replaces its files, never edits them), refreshed until the builder has finished."""
    with atomic_path(staged) as tmp:
        try:
            os.link(live, tmp)
        except FileNotFoundError:
            raise UserError(f"{live}: not found: an update moves the live split forward; run the full pipeline "
                            "(without --update)") from None
        except OSError:
            shutil.copy2(live, tmp)


def record_stage(journal: Journal, name: str, result: dict) -> None:
    """What the update's report needs from a finished stage; the stage counts as done."""
    summary = result.get("summary") or {}
    if result["status"] == "ok" and name == "git_scraper":
        journal.new_commits += int(summary.get("new_commits", 0))
        journal.removed_commits += int(summary.get("removed_commits", 0))
        journal.removed_sample = (journal.removed_sample + list(summary.get("removed_sample", [])))[:10]
        journal.full_rescrape = summary.get("full_rescrape")
        if journal.full_rescrape:
            log.info("update: the scraper scraped every commit again (%s)", journal.full_rescrape)
    elif result["status"] == "ok":
        keys = {"tokenizer": ("spelled_out",), "dataset_builder": ("update", "examples"),
                "train_model": ("steps", "stop_reason", "initial_val_loss", "best_val_loss", "test_loss", "split"),
                "train_ranker": ("targets",)}.get(name, ())
        journal.figures[name] = {k: summary[k] for k in keys if k in summary}
    if name not in journal.completed:
        journal.completed.append(name)


def stop_update(run: Run, later: list[str], status: str, reason: str, exit_code: int) -> int:
    for name in later:
        run.results[name] = {"status": status, "reason": reason}
    return exit_code


def update_report(run: Run, journal: Journal, switched: list[str], switch_seconds: float) -> dict:
    """The update's summary line, and its entry in pipeline_results.json."""
    spelled = journal.figures.get("tokenizer", {}).get("spelled_out", {})
    trained = journal.figures.get("train_model", {})
    split = journal.figures.get("dataset_builder", {})
    report = {
        "new_commits": journal.new_commits, "removed_commits": journal.removed_commits,
        "removed_sample": journal.removed_sample, "full_rescrape": journal.full_rescrape,
        "spelled_out_authors": spelled.get("authors"), "spelled_out_modules": spelled.get("modules"),
        "steps": trained.get("steps"), "val_loss_before": trained.get("initial_val_loss"),
        "val_loss_after": trained.get("best_val_loss"), "test_loss": trained.get("test_loss"),
        "examples": split.get("examples"), "split_update": split.get("update"),
        "previous_model": describe_model(journal.base), "model": describe_model(model_info(run.paths.model_dir)),
        "switched": switched, "switch_seconds": round(switch_seconds, 3), "started_at": journal.started_at,
    }
    log.info("update: %d new commits, %d removed; %s authors and %s modules without a token spelled out; %s steps "
             "trained from the live model: validation loss %s -> %s (test %s) on the latest commits never trained on; "
             "switched in (previous model kept in %s: --rollback restores it)",
             journal.new_commits, journal.removed_commits, fmt(report["spelled_out_authors"]),
             fmt(report["spelled_out_modules"]), fmt(report["steps"]), fmt(report["val_loss_before"]),
             fmt(report["val_loss_after"]), fmt(report["test_loss"]), run.paths.output_dir / "previous")
    return report


def fmt(value: Any) -> str:
    return "?" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def finish_switch(generations: Generations, journal: Journal) -> None:
    switched = generations.switch(journal)
    log.info("%s: finished the switch a killed run had begun (started at %s): %s in place", journal.kind,
             journal.started_at, ", ".join(switched))


def settle_pending_update(generations: Generations, full_run: bool) -> None:
    """Before a run that is not an update: a switch a killed run began is finished (any run); an unfinished
    update is discarded by a full run (which replaces what it would have switched in)."""
    journal = generations.pending()
    if journal is None:
        return
    if journal.state == "switching":
        finish_switch(generations, journal)
    elif full_run:
        generations.discard()
        log.info("pipeline: discarded the unfinished update started at %s (a full run replaces it)", journal.started_at)


def roll_back(run: Run, generations: Generations) -> None:
    """--rollback: the generation the last switch replaced goes back in place (and the live one to previous/)."""
    settle_pending_update(generations, full_run=False)
    journal = generations.pending()
    if journal is not None:
        generations.discard()
        log.info("rollback: discarded the unfinished update started at %s", journal.started_at)
    restored, replaced, switched = generations.rollback()
    log.info("rollback: restored %s with %s from %s; %s is now in %s (--rollback again undoes this)",
             describe_model(restored), ", ".join(n for n in switched if n != run.paths.model_dir.name) or "nothing else",
             generations.previous, describe_model(replaced), generations.previous)
    run.update = {"rollback": {"restored": restored, "replaced": replaced, "switched": switched}}


def clean_stale_temporaries(paths: ArtifactPaths) -> None:
    """Remove what a killed run left in the output folder and the folders of its artifacts."""
    out = paths.output_dir.resolve()
    folders = {out, paths.checkpoints_dir.resolve()}
    folders.update(Path(value).resolve().parent for value in dataclasses.asdict(paths).values())
    for folder in sorted(f for f in folders if f == out or out in f.parents):
        removed = remove_stale_temporaries(folder)
        if removed:
            log.info("removed %d temporar%s left by an interrupted run in %s: %s", len(removed),
                     "y" if len(removed) == 1 else "ies", folder, ", ".join(p.name for p in removed))


class output_folder_lock:
    """An exclusive lock on `<output_dir>/.pipeline.lock` for the run: two runs on one folder would
    overwrite each other's artifacts (and each would take the other's temporaries for stale ones)."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / LOCK_NAME
        self.fh: IO | None = None

    def __enter__(self) -> "output_folder_lock":
        try:
            self.fh = open(self.path, "a+")
        except OSError as exc:
            raise UserError(f"{self.path}: cannot create the lock file ({exc.strerror})") from None
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise UserError(f"{self.path.parent}: another pipeline run is using this output folder: "
                            "wait for it to finish, or set another pipeline.output_dir") from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def save_progress(run: Run) -> None:
    write_json(run.paths.state, dataclasses.asdict(run.state))
    write_json(
        run.paths.pipeline_results,
        {
            "config": str(run.config_path),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - run.started, 3),
            "stages": run.results,
            **({"update": run.update} if run.update is not None else {}),
        },
    )


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default: config.yaml)")
    parser.add_argument("--stage", choices=STAGE_NAMES, help="run only this stage")
    parser.add_argument("--list-stages", action="store_true", help="list the stages in order and exit")
    parser.add_argument("--continue-on-error", action="store_true", help="run later stages after a failure")
    parser.add_argument("--force", action="store_true", help="rerun stages even when up to date")
    parser.add_argument("--update", action=argparse.BooleanOptionalAction, default=None,
                        help="learn only the commits new since the live model and switch the new model in when it is "
                        "complete (default: pipeline.update); --no-update: a full run")
    parser.add_argument("--rollback", action="store_true",
                        help="put back the model (and its ranker, splits, evaluation) the last update replaced")
    args = parser.parse_args(argv)
    if args.stage and args.update:
        parser.error("--update runs every stage: leave out --stage")
    if args.rollback and (args.stage or args.update or args.force):
        parser.error("--rollback runs no stage: leave out --stage, --update and --force")
    if args.list_stages:  # read from the scripts' source: importing every stage (torch, peft, ...) takes seconds
        for name, module_name in STAGES:
            source = (STAGES_DIR / f"{name}.py").read_text(encoding="utf-8")
            doc = (ast.get_docstring(ast.parse(source)) or "").strip().splitlines()
            print(f"{name:18} {doc[0] if doc else ''}")
        return 0
    quiet_noisy_libraries()  # before the stages import them
    return run_pipeline(args.config.expanduser().resolve(), args.stage, args.force, args.continue_on_error,
                        update=args.update, rollback=args.rollback)


if __name__ == "__main__":
    sys.exit(main())
