"""What every stage's `main(argv)` shares: the config flags (--config, --output-dir, --set), loading, and error
reporting."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from repo2model.core.config import ConfigSource, Override, PipelineConfig, check_finite, load_config
from repo2model.core.errors import UserError
from repo2model.core.logs import setup_logging
from repo2model.core.paths import ArtifactPaths


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: built-in defaults; paths in it are relative to its folder)",
    )
    parser.add_argument("--output-dir", type=Path, default=None, help="override pipeline.output_dir")
    add_set_argument(parser)


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="set a config key for this command, on top of --config (repeatable; the value is read as "
                        "YAML: 200, true, null, [.rs, .toml]) and checked like one in the file")


def config_source(config: Path | None, settings: list[str]) -> Path | ConfigSource | None:
    """--config and --set as load_config takes them: the plain path (or None) when nothing is set."""
    if not settings:
        return config
    return ConfigSource(config, tuple(Override.parse(text) for text in settings))


def load_stage(args: argparse.Namespace, section: str, cls: type) -> tuple[Any, PipelineConfig, ArtifactPaths]:
    """The stage's section, the pipeline section and the artifact paths, from `--config` and `--set`, or defaults.

    With --set, `args.config` becomes a ConfigSource, so that the stage's other sections, loaded from it later,
    get the command line's values too; a --set for a section this command does not read is checked all the same.
    Sets up logging to the console (and to the pipeline log file when a config is given).
    """
    args.config = config_source(args.config, getattr(args, "set", None) or [])
    if args.config is not None:
        loaded = load_config(args.config, {"pipeline": PipelineConfig, section: cls}, strict_sections=False)
        pipeline, cfg = loaded["pipeline"], loaded[section]
        if isinstance(args.config, ConfigSource):
            check_overrides(args.config, loaded)
    else:
        pipeline, cfg = PipelineConfig(output_dir=Path("outputs").resolve()), cls()
    output_dir = args.output_dir.resolve() if getattr(args, "output_dir", None) else pipeline.output_dir
    has_file = args.config is not None and getattr(args.config, "file", args.config) is not None
    # Without a config file, the compressed or plain names are whichever the output folder holds.
    compress = pipeline.compress if has_file or sets(args.config, "pipeline", "compress") else None
    paths = ArtifactPaths.under(output_dir, pipeline.log_file, compress)
    setup_logging(paths.pipeline_log if has_file or pipeline.log_file else None, pipeline.log_level)
    return cfg, pipeline, paths


def sets(source: Path | ConfigSource | None, section: str, key: str) -> bool:
    """Whether the command line sets `section.key`."""
    return isinstance(source, ConfigSource) and any((o.section, o.key) == (section, key) for o in source.overrides)


def check_overrides(source: ConfigSource, loaded: dict[str, Any]) -> None:
    """Check each --set of a section not in `loaded` against that section's dataclass (a typo is one line, exit 2,
    as in the file). A section is named like the stage or tool module that owns it, imported here for its Config."""
    for section in sorted({o.section for o in source.overrides} - set(loaded)):
        owner = importlib.import_module(f"repo2model.stages.{section}")
        load_config(source, {section: owner.Config}, strict_sections=False)


def apply_overrides(cfg: Any, section: str, overrides: dict[str, Any]) -> Any:
    """`cfg` with command-line values replacing its own (None = flag not given).

    A value the section's `__post_init__` refuses becomes a UserError naming `section.key`.
    """
    values = {key: value for key, value in overrides.items() if value is not None}
    if not values:
        return cfg
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in values.items():
        if key in fields and not fields[key].metadata.get("nonfinite_ok", False):
            check_finite(value, f"{section}.{key}")
    try:
        return dataclasses.replace(cfg, **values)
    except ValueError as exc:
        raise UserError(f"{section}.{exc}") from None


def user_errors_to_exit(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorator for `main(argv)`: a UserError becomes one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except UserError as exc:
            logging.getLogger(main.__module__).debug("user error", exc_info=True)
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
