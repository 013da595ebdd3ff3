"""Logging to the console and to the pipeline's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from repo2model.core.artifacts import ensure_folder
from repo2model.core.errors import UserError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log routine chatter at WARNING; "bitsandbytes" warns on every import on a CPU
# without the optional `kernels` package (a slower 4-bit CPU path we do not use), and `kernels`
# (which transformers >= 5.25 installs) warns on every bitsandbytes import offline that it skips a hub check.
NOISY_LOGGERS = ("urllib3", "filelock", "matplotlib", "PIL", "git", "bitsandbytes", "kernels")
QUIETEST = ("bitsandbytes", "kernels")


def quiet_noisy_libraries() -> None:
    """Raise the noisy libraries' log level; call before importing them (pipeline.py imports every stage)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if name in QUIETEST else logging.WARNING)


def setup_logging(log_file: Path | None = None, level: str = "INFO") -> None:
    """Console at `level` (message only), and the log file with timestamps if given."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        if getattr(handler, "_repo2model", False):
            root.removeHandler(handler)
            handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(message)s"))
    console._repo2model = True
    root.addHandler(console)
    if log_file is not None:
        ensure_folder(Path(log_file).parent)
        try:
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{log_file}: cannot write the log file ({exc.strerror}): check pipeline.log_file") from None
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(FORMAT))
        file_handler._repo2model = True
        root.addHandler(file_handler)
    quiet_noisy_libraries()
