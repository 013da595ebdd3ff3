"""What every stage's `main(argv)` shares: the config flag, loading, and error reporting."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from repo2model.core.config import PipelineConfig, check_finite, load_config
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


def load_stage(args: argparse.Namespace, section: str, cls: type) -> tuple[Any, PipelineConfig, ArtifactPaths]:
    """The stage's section, the pipeline section and the artifact paths, from `--config` or defaults.

    Sets up logging to the console (and to the pipeline log file when a config is given).
    """
    if args.config is not None:
        loaded = load_config(args.config, {"pipeline": PipelineConfig, section: cls}, strict_sections=False)
        pipeline, cfg = loaded["pipeline"], loaded[section]
    else:
        pipeline, cfg = PipelineConfig(output_dir=Path("outputs").resolve()), cls()
    output_dir = args.output_dir.resolve() if getattr(args, "output_dir", None) else pipeline.output_dir
    # Without a config, the compressed or plain names are whichever the output folder holds.
    compress = pipeline.compress if args.config is not None else None
    paths = ArtifactPaths.under(output_dir, pipeline.log_file if args.config is not None else None, compress)
    setup_logging(paths.pipeline_log if args.config is not None else None, pipeline.log_level)
    return cfg, pipeline, paths


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
