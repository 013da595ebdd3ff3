"""Run the whole pipeline, git history -> trained model, as configured in `config.yaml`.

    python pipeline.py --config config.yaml              # every stage, in order
    python pipeline.py --config config.yaml --stage tokenizer
    python pipeline.py --list-stages
    python pipeline.py --config config.yaml --force      # rerun up-to-date stages too

Stages run in-process, in order, through each stage script's `run(cfg, paths, seed=...)`:

    git_scraper -> semantic_chunker -> tokenizer -> dataset_builder -> train_model -> evaluate

(`evaluate` scores the trained model on the test split beside model-free baselines.)

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
import dataclasses
import fcntl
import hashlib
import importlib
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from repo2model.artifacts import compressed_twin, ensure_folder, file_sizes, remove_stale_temporaries, write_json
from repo2model.cli import user_errors_to_exit
from repo2model.config import PipelineConfig, load_config, load_yaml, section_dict
from repo2model.errors import UserError
from repo2model.logs import quiet_noisy_libraries, setup_logging
from repo2model.paths import ArtifactPaths

log = logging.getLogger("pipeline")
ROOT = Path(__file__).resolve().parent

# (stage name, module) in run order.
STAGES = (
    ("git_scraper", "git_scraper"),
    ("semantic_chunker", "semantic_chunker"),
    ("index", "index"),
    ("tokenizer", "tokenizer"),
    ("dataset_builder", "dataset_builder"),
    ("train_model", "train_model"),
    ("train_ranker", "train_ranker"),
    ("evaluate", "evaluate"),
)
STAGE_NAMES = tuple(name for name, _ in STAGES)
# Tools that use the trained model have config sections too; validated here so
# that a typo in them surfaces before hours of training, not after.
TOOLS = ("predict", "serve")
SHARED_CODE = ROOT / "repo2model"  # every stage's fingerprint includes this library's code
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
        raise TypeError(f"{module_name}.py lacks {', '.join(missing)} (see pipeline.py's stage protocol)")
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
    for code in [Path(stage.module.__file__), *sorted(SHARED_CODE.glob("*.py"))]:
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

    @property
    def pipeline(self) -> PipelineConfig:
        return self.loaded["pipeline"]


def run_pipeline(config_path: Path, only: str | None = None, force: bool = False, continue_on_error: bool = False) -> int:
    load_yaml(config_path)  # a missing or unreadable file is reported before the stages' heavy imports
    stages = [Stage(name, import_stage(module)) for name, module in STAGES]
    # Not strict: a stage run alone validates only its sections, so the project's list of
    # section names (KNOWN_SECTIONS) is what refuses a misspelt one.
    loaded = load_config(config_path, section_classes(stages), strict_sections=False)
    pipeline: PipelineConfig = loaded["pipeline"]
    paths = ArtifactPaths.under(pipeline.output_dir, pipeline.log_file, pipeline.compress)
    ensure_folder(paths.output_dir)
    with output_folder_lock(paths.output_dir):
        setup_logging(paths.pipeline_log, pipeline.log_level)
        log.info("pipeline: config %s, outputs in %s", config_path, paths.output_dir)
        clean_stale_temporaries(paths)
        run = Run(config_path, stages, loaded, paths, RunState.read(paths.state), force)
        exit_code = 0
        for stage in stages:
            if only and stage.name != only:
                continue
            if exit_code and not continue_on_error:
                run.results[stage.name] = {"status": "not_run", "reason": "an earlier stage failed"}
                continue
            run.results[stage.name] = run_stage(run, stage, force)
            if run.results[stage.name]["status"] == "failed":
                exit_code = 1
            save_progress(run)
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
    args = parser.parse_args(argv)
    quiet_noisy_libraries()  # before the stages import them
    if args.list_stages:
        for name, module_name in STAGES:
            doc = (import_stage(module_name).__doc__ or "").strip().splitlines()
            print(f"{name:18} {doc[0] if doc else ''}")
        return 0
    return run_pipeline(args.config.expanduser().resolve(), args.stage, args.force, args.continue_on_error)


if __name__ == "__main__":
    sys.exit(main())
