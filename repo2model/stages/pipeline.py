"""Run the whole pipeline, git history -> trained model, as configured in `config.yaml`.

    python pipeline.py --config config.yaml              # every stage, in order
    python pipeline.py --config config.yaml --stage tokenizer
    python pipeline.py --config config.yaml --stage export    # GGUF for llama.cpp / Ollama (off in a whole run)
    python pipeline.py --config config.yaml --set train_model.max_steps=200 --set pipeline.seed=7
    python pipeline.py --list-stages
    python pipeline.py --config config.yaml --force      # rerun up-to-date stages too
    python pipeline.py --config config.yaml --update     # learn only the new commits (update_run.py)

Stages run in-process, in order, through each stage module's `run(cfg, paths, seed=...)`:

    git_scraper -> semantic_chunker -> index -> tokenizer -> dataset_builder -> train_model
                -> [export] -> train_ranker -> evaluate

(`evaluate` scores the trained model and the ranker on the test split beside model-free baselines.)
Optional stages (OPTIONAL_STAGES, in brackets) run in a whole run only when their section says `enabled: true`;
`--stage NAME` runs one regardless. `export` writes the model as GGUF files (llama.cpp, Ollama); it needs the
export extra (requirements-export.txt).

Up to date means skipped: a stage whose inputs (files and, for the scraper, the
repository's refs), config section, seed and code (its module and the packages
it declares in CODE) are unchanged since its last successful run is skipped
with a message saying so (`--force` reruns it). The fingerprints live in
`<output_dir>/.pipeline_state.json` (fingerprint.py).

`pipeline.compress: true` writes commits.json.zst and chunks.jsonl.zst instead
of the plain files (every stage reads either). `pipeline.keep_intermediates:
false` removes commits, chunks and tokens.pt at the end of a run in which every
stage that reads them succeeded or was up to date; their digests stay in the
state file, so a later run with nothing changed still skips every stage, and a
stage that must rerun and needs a removed file first reruns the stage that
makes it (logged as "regenerating").

Each run takes a lock on the output folder (a second run on the same folder
stops with one line), removes the temporaries a killed run left there
(`.NAME.XXXXXXXX.tmp`), and writes `<output_dir>/pipeline.log` and
`<output_dir>/pipeline_results.json` (per stage: status, seconds, outputs with
sizes, summary, error).

Stage protocol (each stage module provides):
    SECTION                        its config section name
    Config                         the dataclass of that section
    CODE                           the packages of repo2model it runs, e.g. ("core", "git")
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
import importlib
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from repo2model.core.artifacts import compressed_twin, ensure_folder, file_sizes, remove_stale_temporaries, write_json
from repo2model.core.cli import add_set_argument, config_source, user_errors_to_exit
from repo2model.core.config import ConfigSource, PipelineConfig, load_config, load_yaml
from repo2model.core.errors import UserError
from repo2model.core.logs import quiet_noisy_libraries, setup_logging
from repo2model.core.paths import ArtifactPaths
from repo2model.stages.fingerprint import RunState, check_code_declaration, fingerprint, input_state_digest, path_digest
from repo2model.stages.generations import Generations, staged_paths
from repo2model.stages.update_run import roll_back, run_update, settle_pending_update

log = logging.getLogger("pipeline")
STAGES_DIR = Path(__file__).resolve().parent

# (stage name, module) in run order.
STAGES = (
    ("git_scraper", "repo2model.stages.git_scraper"),
    ("semantic_chunker", "repo2model.stages.semantic_chunker"),
    ("index", "repo2model.stages.index"),
    ("tokenizer", "repo2model.stages.tokenizer"),
    ("dataset_builder", "repo2model.stages.dataset_builder"),
    ("train_model", "repo2model.stages.train_model"),
    ("export", "repo2model.stages.export"),
    ("train_ranker", "repo2model.stages.train_ranker"),
    ("evaluate", "repo2model.stages.evaluate"),
)
STAGE_NAMES = tuple(name for name, _ in STAGES)
# Left out of a whole run unless their section sets `enabled: true`; `--stage NAME` runs one regardless.
OPTIONAL_STAGES = ("export",)
RUN_BY_DEFAULT = tuple(name for name in STAGE_NAMES if name not in OPTIONAL_STAGES)
# Tools that use the trained model have config sections too; validated here so
# that a typo in them surfaces before hours of training, not after.
TOOLS = ("repo2model.stages.predict", "repo2model.stages.serve")
STAGE_PROTOCOL = ("SECTION", "Config", "CODE", "run", "stage_inputs", "stage_outputs")
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


def import_stage(module_name: str, needs: tuple[str, ...] = STAGE_PROTOCOL) -> ModuleType:
    """Import a stage (or tool) module by name and check that it has what the pipeline calls."""
    module = importlib.import_module(module_name)
    missing = [attr for attr in needs if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"{module_name} lacks {', '.join(missing)} (see pipeline.py's stage protocol)")
    if "CODE" in needs:
        check_code_declaration(module)
    return module


def section_classes(stages: list[Stage]) -> dict[str, type]:
    """Every config section the pipeline knows, by name: its own, each stage's and each tool's."""
    sections = {"pipeline": PipelineConfig}
    sections.update({stage.section: stage.module.Config for stage in stages})
    for tool in TOOLS:
        module = import_stage(tool, TOOL_PROTOCOL)
        sections[module.SECTION] = module.Config
    return sections


def stages_of_run(stages: list[Stage], loaded: dict, only: str | None) -> list[Stage]:
    """The stages this run may run: every stage but the optional ones whose section leaves them off, unless
    `only` names one."""
    chosen = []
    for stage in stages:
        if stage.name in OPTIONAL_STAGES and stage.name != only and not loaded[stage.section].enabled:
            if only is None:
                log.info("%s: off (%s.enabled: false; `--stage %s` runs it)", stage.name, stage.section, stage.name)
            continue
        chosen.append(stage)
    return chosen


def extra_sections(stage: Stage, loaded: dict) -> dict:
    """The other config sections a stage reads, as keyword arguments of its run()."""
    return {keyword: loaded[section] for keyword, section in getattr(stage.module, "USES_SECTIONS", {}).items()}


def run_pipeline(config_path: Path | ConfigSource, only: str | None = None, force: bool = False,
                 continue_on_error: bool = False, update: bool | None = None, rollback: bool = False) -> int:
    """Run the stages (all, or `only`) as `config_path` (a file, or a ConfigSource: a file and --set values) says;
    `update`: --update (None: pipeline.update decides, for whole runs); `rollback`: switch the previous model
    generation back in and run nothing."""
    load_yaml(Path(config_path))  # a missing or unreadable file is reported before the stages' heavy imports
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
        run = Run(Path(config_path), stages_of_run(stages, loaded, only), loaded, paths, RunState.read(paths.state),
                  force, overrides=[o.text for o in getattr(config_path, "overrides", ())])
        generations = Generations(paths)
        if rollback:
            roll_back(run, generations)
            run.save_progress()
            return 0
        if update:
            exit_code = run_update(run, generations)
        else:
            settle_pending_update(generations, full_run=only is None)
            exit_code = run.run_stages(only, continue_on_error)
        if not pipeline.keep_intermediates:
            run.remove_intermediates()
        run.save_progress()
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


@dataclass
class Run:
    """One pipeline run: the loaded config, the stages, and what happened so far.

    An update runs the stages through a copy of its Run (other sections, next/'s paths) that shares
    `results` and `state` with it.
    """

    config_path: Path
    stages: list[Stage]
    loaded: dict[str, Any]
    paths: ArtifactPaths
    state: RunState
    force: bool
    overrides: list[str] = dataclasses.field(default_factory=list)  # the command line's --set values
    started: float = dataclasses.field(default_factory=time.perf_counter)
    results: dict[str, dict] = dataclasses.field(default_factory=dict)
    update: dict | None = None  # --update / --rollback: what it did (pipeline_results.json's `update`)

    @property
    def pipeline(self) -> PipelineConfig:
        return self.loaded["pipeline"]

    def run_stages(self, only: str | None = None, continue_on_error: bool = False) -> int:
        """Every stage in order (or just `only`), each skipped when up to date; the exit code."""
        exit_code = 0
        for stage in self.stages:
            if only and stage.name != only:
                continue
            if exit_code and not continue_on_error:
                self.results[stage.name] = {"status": "not_run", "reason": "an earlier stage failed"}
                continue
            self.results[stage.name] = self.run_stage(stage, self.force)
            if self.results[stage.name]["status"] == "failed":
                exit_code = 1
            self.save_progress()
        return exit_code

    def fingerprint(self, stage: Stage) -> str:
        cfg = self.loaded[stage.section]
        if stage.name in OPTIONAL_STAGES:  # switching a stage on changes nothing it writes
            cfg = dataclasses.replace(cfg, enabled=False)
        return fingerprint(stage.name, stage.module, cfg, self.paths, self.pipeline.seed,
                           extra_sections(stage, self.loaded), self.state)

    def run_stage(self, stage: Stage, force: bool, why: str = "running") -> dict:
        """Run one stage unless it is up to date; returns its entry of pipeline_results.json."""
        cfg = self.loaded[stage.section]
        outputs = [Path(p) for p in stage.module.stage_outputs(cfg, self.paths)]
        started, cpu = time.perf_counter(), time.process_time()
        try:
            before = self.fingerprint(stage)
            present = all(p.exists() or str(p) in self.state.removed for p in outputs)
            if not force and self.state.fingerprints.get(stage.name) == before and present:
                log.info("%s: up to date (inputs, config and code unchanged since its last success): skipped", stage.name)
                return {"status": "skipped", "reason": "up to date", "outputs": file_sizes(outputs)}
            self.regenerate_inputs(stage, cfg)
            log.info("%s: %s", stage.name, why)
            summary = stage.module.run(cfg, self.paths, seed=self.pipeline.seed, **extra_sections(stage, self.loaded))
            for path in outputs:
                self.state.removed.pop(str(path), None)
                remove_other_format(path)
            # Fingerprint again after the run: a stage may legitimately read inputs it also refreshed.
            self.state.fingerprints[stage.name] = self.fingerprint(stage)
            if hasattr(stage.module, "input_state"):
                self.state.input_states[stage.name] = input_state_digest(stage.module, cfg, self.paths)
            seconds = time.perf_counter() - started
            log.info("%s: done in %.1fs", stage.name, seconds)
            return {"status": "ok", "seconds": round(seconds, 3), "cpu_seconds": round(time.process_time() - cpu, 3),
                    "outputs": file_sizes(outputs), "summary": summary}
        except UserError as exc:
            self.state.fingerprints.pop(stage.name, None)
            log.error("%s: error: %s", stage.name, exc)
            return {"status": "failed", "seconds": round(time.perf_counter() - started, 3), "error": str(exc)}
        except Exception as exc:  # a bug: keep the traceback in the log, go on if asked
            self.state.fingerprints.pop(stage.name, None)
            log.error("%s: crashed: %s: %s\n%s", stage.name, type(exc).__name__, exc, traceback.format_exc())
            return {"status": "failed", "seconds": round(time.perf_counter() - started, 3),
                    "error": f"{type(exc).__name__}: {exc}"}

    def regenerate_inputs(self, stage: Stage, cfg) -> None:
        """Bring back the inputs of `stage` that keep_intermediates: false removed, by rerunning their stage."""
        for path in stage.module.stage_inputs(cfg, self.paths):
            path = Path(path)
            if path.exists() or str(path) not in self.state.removed:
                continue
            maker = next((s for s in self.stages if path in self.outputs_of(s)), None)
            if maker is None:
                raise UserError(f"{path}: removed by pipeline.keep_intermediates: false and no stage writes it: "
                                "rerun with --force")
            result = self.run_stage(maker, force=True, why=f"regenerating {path.name} for {stage.name}")
            self.results[maker.name] = {**result, "reason": f"regenerated {path.name} for {stage.name}"}
            if result["status"] != "ok":
                raise UserError(f"{path}: could not be regenerated ({maker.name} failed: {result.get('error')})")

    def outputs_of(self, stage: Stage) -> list[Path]:
        return [Path(p) for p in stage.module.stage_outputs(self.loaded[stage.section], self.paths)]

    def inputs_of(self, stage: Stage) -> list[Path]:
        return [Path(p) for p in stage.module.stage_inputs(self.loaded[stage.section], self.paths)]

    def remove_intermediates(self) -> None:
        """keep_intermediates: false: remove each intermediate every stage reading it is done with in this run."""
        for field in INTERMEDIATES:
            path = getattr(self.paths, field)
            if not path.is_file():
                continue
            readers = [s.name for s in self.stages if path in self.inputs_of(s)]
            if all(self.results.get(name, {}).get("status") in ("ok", "skipped") for name in readers):
                self.state.removed[str(path)] = path_digest(path)
                path.unlink()
                log.info("removed %s (pipeline.keep_intermediates: false; read by %s)", path,
                         ", ".join(readers) or "no stage")

    def save_progress(self) -> None:
        write_json(self.paths.state, dataclasses.asdict(self.state))
        write_json(
            self.paths.pipeline_results,
            {
                "config": str(self.config_path),
                **({"set": self.overrides} if self.overrides else {}),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - self.started, 3),
                "stages": self.results,
                **({"update": self.update} if self.update is not None else {}),
            },
        )


def remove_other_format(path: Path) -> None:
    """After a stage wrote `commits.json.zst`, an old `commits.json` (or the reverse) is stale: remove it."""
    twin = compressed_twin(path)
    if path.suffix in (".json", ".jsonl", ".zst") and twin.is_file() and path.exists():
        twin.unlink()
        log.info("removed %s (pipeline.compress changed: %s replaces it)", twin, path.name)


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


def list_stages() -> None:
    """Each stage with the first line of its docstring, read from the source: importing every stage (torch,
    peft, ...) takes seconds."""
    for name, _ in STAGES:
        source = (STAGES_DIR / f"{name}.py").read_text(encoding="utf-8")
        doc = (ast.get_docstring(ast.parse(source)) or "").strip().splitlines()
        off = f" (off by default: {name}.enabled: true, or --stage {name})" if name in OPTIONAL_STAGES else ""
        print(f"{name:18} {doc[0] if doc else ''}{off}")


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default: config.yaml)")
    add_set_argument(parser)
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
    if args.list_stages:
        list_stages()
        return 0
    quiet_noisy_libraries()  # before the stages import them
    config = config_source(args.config.expanduser().resolve(), args.set)
    return run_pipeline(config, args.stage, args.force, args.continue_on_error, update=args.update,
                        rollback=args.rollback)


if __name__ == "__main__":
    sys.exit(main())
