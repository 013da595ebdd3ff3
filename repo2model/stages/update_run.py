"""`pipeline.py --update` and `--rollback`: learn the commits that are new since the live model, without a
service gap, and put the previous model back.

    python pipeline.py --config config.yaml --update
    python pipeline.py --config config.yaml --rollback    # back to the model the last update replaced

The scraper and the chunker add only the new commits (`incremental`; commits a
force-push or rebase removed are reported and dropped), the code index
re-embeds only the units whose code changed, the tokenizer stays
frozen (ids stable; new authors and modules are spelled out, and counted), the
dataset builder moves the split forward (the newest commits never trained on
become val and test; train = the rest of them + a `replay_share` of earlier
examples), train_model continues the live model (`warm_start`: its weights, a
fresh short schedule: train_model.update_epochs passes over the update's examples (at
most update_max_steps steps), update_learning_rate,
update_warmup_steps), then the ranker is refitted (`train_ranker.update`: the old
targets' rows, with the language-model columns the continued model gave them,
and the symbol ranker are reused) and the model evaluated on the targets new
since the live evaluation (`evaluate.update`: the others' figures carried). Everything that belongs to one model (model/,
ranker/, the splits, training_logs/, evaluation.*) is written under
`<output_dir>/next/` and switched in only when all of it is complete, the model
folder last (generations.py); the replaced generation is kept in
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
spelled out, the steps trained and the validation loss before and after, and
where the time went (`time_split`: each stage's wall and CPU seconds and its
share of the run).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repo2model.core.artifacts import atomic_path
from repo2model.core.errors import UserError
from repo2model.stages.generations import Generations, Journal, describe_model, model_info, staged_paths

if TYPE_CHECKING:  # pipeline.py imports this module; a Run is only passed in
    from repo2model.stages.pipeline import Run

log = logging.getLogger("pipeline")

# Each stage's part in an update: its config section with these keys set (the module docstring says why).
UPDATE_SETTINGS = {
    "git_scraper": {"incremental": True},
    "semantic_chunker": {"incremental": True},
    "tokenizer": {"frozen": True},
    "dataset_builder": {"update": True},
    "train_ranker": {"update": True},
    "evaluate": {"update": True},
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
            return run.run_stages()
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
        result = run.results[stage.name] = updating.run_stage(stage, run.force)
        run.save_progress()
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
    prediction = loaded.get("predict")
    if prediction is not None and prediction.model_dir is not None and Path(prediction.model_dir).resolve() == live:
        loaded["predict"] = dataclasses.replace(prediction, model_dir=None)  # the ranker and evaluation: next/'s model
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
                "train_model": ("steps", "epochs", "train_examples", "stop_reason", "initial_val_loss",
                                "best_val_loss", "test_loss", "split"),
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
        "steps": trained.get("steps"), "epochs": trained.get("epochs"), "train_examples": trained.get("train_examples"),
        "val_loss_before": trained.get("initial_val_loss"),
        "val_loss_after": trained.get("best_val_loss"), "test_loss": trained.get("test_loss"),
        "examples": split.get("examples"), "split_update": split.get("update"),
        "previous_model": describe_model(journal.base), "model": describe_model(model_info(run.paths.model_dir)),
        "switched": switched, "switch_seconds": round(switch_seconds, 3), "started_at": journal.started_at,
        "time_split": time_split(run, switch_seconds),
    }
    log.info("update: %d new commits, %d removed; %s authors and %s modules without a token spelled out; %s steps "
             "trained from the live model: validation loss %s -> %s (test %s) on the latest commits never trained on; "
             "switched in (previous model kept in %s: --rollback restores it)",
             journal.new_commits, journal.removed_commits, fmt(report["spelled_out_authors"]),
             fmt(report["spelled_out_modules"]), fmt(report["steps"]), fmt(report["val_loss_before"]),
             fmt(report["val_loss_after"]), fmt(report["test_loss"]), run.paths.output_dir / "previous")
    return report


def time_split(run: Run, switch_seconds: float) -> dict:
    """Where this run's time went: each stage's wall and CPU seconds (0 for a stage done by an earlier, interrupted
    attempt or up to date), the switch, and the rest (locking, journal, logs); each stage's share of the total."""
    total = time.perf_counter() - run.started
    wall = {name: float(result.get("seconds", 0.0)) for name, result in run.results.items()}
    wall["switch"] = switch_seconds
    wall["other"] = max(0.0, total - sum(wall.values()))
    cpu = {name: float(result.get("cpu_seconds", 0.0)) for name, result in run.results.items()}
    split = {"seconds": {k: round(v, 2) for k, v in wall.items()},
             "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
             "share": {k: round(v / total, 3) if total else None for k, v in wall.items()},
             "total_seconds": round(total, 2)}
    log.info("update: %.1fs in all: %s", total, ", ".join(
        f"{name} {seconds:.1f}s ({seconds / total:.0%})" for name, seconds in wall.items() if total and seconds >= 0.05))
    return split


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
