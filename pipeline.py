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

Each run writes `<output_dir>/pipeline.log` and `<output_dir>/pipeline_results.json`
(per stage: status, seconds, outputs with sizes, summary, error).

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

from repo2model.artifacts import file_sizes, write_json
from repo2model.cli import user_errors_to_exit
from repo2model.config import PipelineConfig, load_config, section_dict
from repo2model.errors import UserError
from repo2model.logs import setup_logging
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
SHARED_CODE = sorted((ROOT / "repo2model").glob("*.py"))


@dataclass
class Stage:
    name: str
    module: ModuleType | None  # None: not implemented yet
    why_missing: str = ""

    @property
    def section(self) -> str:
        return self.module.SECTION


def load_stage(name: str, module_name: str, needs=("SECTION", "Config", "run", "stage_inputs", "stage_outputs")) -> Stage:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return Stage(name, None, f"{module_name}.py does not exist yet")
        raise
    missing = [attr for attr in needs if not hasattr(module, attr)]
    if missing:
        return Stage(name, None, f"{module_name}.py lacks {', '.join(missing)}")
    return Stage(name, module)


def extra_sections(stage: Stage, loaded: dict) -> dict:
    """The other config sections a stage reads, as keyword arguments of its run()."""
    return {keyword: loaded[section] for keyword, section in getattr(stage.module, "USES_SECTIONS", {}).items()}


def fingerprint(stage: Stage, cfg, paths: ArtifactPaths, seed: int, extras: dict) -> str:
    """A digest of everything a stage's result depends on: inputs, config, seed, code."""
    digest = hashlib.blake2b(digest_size=16)
    settings = {"stage": stage.name, "config": section_dict(cfg), "seed": seed}
    settings.update({k: section_dict(v) for k, v in extras.items()})
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in sorted(Path(p) for p in stage.module.stage_inputs(cfg, paths)):
        digest.update(str(path).encode())
        hash_path(path, digest)
    for code in [Path(stage.module.__file__), *SHARED_CODE]:
        digest.update(code.read_bytes())
    if hasattr(stage.module, "input_state"):
        digest.update(stage.module.input_state(cfg, paths).encode())
    return digest.hexdigest()


def hash_path(path: Path, digest) -> None:
    if path.is_file():
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                digest.update(str(child.relative_to(path)).encode())
                hash_path(child, digest)
    else:
        digest.update(b"<missing>")


def run_pipeline(config_path: Path, only: str | None = None, force: bool = False, continue_on_error: bool = False) -> int:
    stages = [load_stage(name, module) for name, module in STAGES]
    sections = {"pipeline": PipelineConfig}
    sections.update({s.section: s.module.Config for s in stages if s.module})
    for tool in TOOLS:
        module = load_stage(tool, tool, needs=("SECTION", "Config")).module
        if module is not None:
            sections[module.SECTION] = module.Config
    # Not strict: a section of a tool not built yet is accepted unvalidated; a
    # section name the project does not know is still refused.
    loaded = load_config(config_path, sections, strict_sections=False)
    pipeline: PipelineConfig = loaded["pipeline"]
    paths = ArtifactPaths.under(pipeline.output_dir, pipeline.log_file)
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(paths.pipeline_log, pipeline.log_level)
    log.info("pipeline: config %s, outputs in %s", config_path, paths.output_dir)

    state = _read_state(paths.state)
    results: dict[str, dict] = {}
    exit_code = 0
    started = time.perf_counter()
    for stage in stages:
        if only and stage.name != only:
            continue
        if exit_code and not continue_on_error:
            results[stage.name] = {"status": "not_run", "reason": "an earlier stage failed"}
            continue
        result = run_stage(stage, loaded, paths, pipeline.seed, state, force)
        results[stage.name] = result
        if result["status"] == "failed":
            exit_code = 1
        _write_results(paths, config_path, results, started)
        write_json(paths.state, state)
    _write_results(paths, config_path, results, started)
    counts = {}
    for result in results.values():
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    log.info(
        "pipeline: %s in %.1fs (results: %s)",
        ", ".join(f"{n} {s}" for s, n in counts.items()),
        time.perf_counter() - started,
        paths.pipeline_results,
    )
    return exit_code


def run_stage(stage: Stage, loaded: dict, paths: ArtifactPaths, seed: int, state: dict, force: bool) -> dict:
    if stage.module is None:
        log.warning("%s: not implemented yet (%s)", stage.name, stage.why_missing)
        return {"status": "not_implemented", "reason": stage.why_missing}
    cfg = loaded[stage.section]
    extras = extra_sections(stage, loaded)
    outputs = [Path(p) for p in stage.module.stage_outputs(cfg, paths)]
    started = time.perf_counter()
    try:
        print_ = fingerprint(stage, cfg, paths, seed, extras)
        if not force and state.get(stage.name) == print_ and all(p.exists() for p in outputs):
            log.info("%s: up to date (inputs, config and code unchanged since its last success): skipped", stage.name)
            return {"status": "skipped", "reason": "up to date", "outputs": file_sizes(outputs)}
        log.info("%s: running", stage.name)
        summary = stage.module.run(cfg, paths, seed=seed, **extras)
        # Fingerprint again after the run: a stage may legitimately read inputs it also refreshed.
        state[stage.name] = fingerprint(stage, cfg, paths, seed, extras)
        seconds = time.perf_counter() - started
        log.info("%s: done in %.1fs", stage.name, seconds)
        return {"status": "ok", "seconds": round(seconds, 3), "outputs": file_sizes(outputs), "summary": summary}
    except UserError as exc:
        state.pop(stage.name, None)
        log.error("%s: error: %s", stage.name, exc)
        return {"status": "failed", "seconds": round(time.perf_counter() - started, 3), "error": str(exc)}
    except Exception as exc:  # a bug: keep the traceback in the log, go on if asked
        state.pop(stage.name, None)
        log.error("%s: crashed: %s: %s\n%s", stage.name, type(exc).__name__, exc, traceback.format_exc())
        return {"status": "failed", "seconds": round(time.perf_counter() - started, 3), "error": f"{type(exc).__name__}: {exc}"}


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _write_results(paths: ArtifactPaths, config_path: Path, results: dict, started: float) -> None:
    write_json(
        paths.pipeline_results,
        {
            "config": str(config_path),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - started, 3),
            "stages": results,
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
    if args.list_stages:
        for name, module_name in STAGES:
            stage = load_stage(name, module_name)
            doc = (stage.module.__doc__ or "").strip().splitlines()[0] if stage.module else "not implemented yet"
            print(f"{name:18} {doc}")
        return 0
    return run_pipeline(args.config.expanduser().resolve(), args.stage, args.force, args.continue_on_error)


if __name__ == "__main__":
    sys.exit(main())
