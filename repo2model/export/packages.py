"""The optional packages an export needs, imported on first use with one line that says how to install them.

gguf (writes GGUF) and llama-cpp-python (quantizes and runs it) are not in requirements.txt: llama-cpp-python
has no wheel on the registry and builds from source (cmake and a C++ compiler; about 6 minutes on 2 cores).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from repo2model.core.errors import UserError

EXTRA = "requirements-export.txt"
INSTALL = f"pip install -r {EXTRA} (llama-cpp-python builds from source: cmake and a C++ compiler, a few minutes)"


def missing() -> list[str]:
    """The export packages that cannot be imported here (empty when the extra is installed)."""
    absent = []
    for module, package in (("gguf", "gguf"), ("llama_cpp", "llama-cpp-python")):
        try:
            importlib.import_module(module)
        except ImportError:
            absent.append(package)
    return absent


def gguf() -> ModuleType:
    module = _module("gguf", "gguf")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer logs the endianness and each file at INFO
    return module


def llama_cpp() -> ModuleType:
    module = _module("llama_cpp", "llama-cpp-python")
    quiet = logging.getLogger("llama-cpp-python")  # llama.cpp's own log (a line per tensor when quantizing)
    if quiet.level == logging.NOTSET:
        # llama-cpp-python maps ggml's levels one step up (ggml's INFO to WARNING, WARN to ERROR): at ERROR its
        # information is left out and its warnings stay (e.g. a K-quant falling back on narrow rows)
        quiet.setLevel(logging.ERROR)
    return module


def _module(name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"export needs the {package} package, which is not installed: {INSTALL}") from None
