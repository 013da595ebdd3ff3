"""The house rules, checked: scripts import only repo2model and third-party packages, at the top.

A top-level script (a stage, a tool) never imports another script: what several scripts share lives in
`repo2model/`. pipeline.py is the one exception by design: it loads the stage scripts by name.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in ROOT.glob("*.py"))
SCRIPT_NAMES = {p.stem for p in SCRIPTS}
LIBRARY = sorted((ROOT / "repo2model").glob("*.py"))
# Optional dependencies a script may import where it needs them: their absence is a one-line error for the
# settings that use them (bitsandbytes ships CUDA kernels and may not install everywhere; only qlora and the
# 8-bit optimizers need it).
OPTIONAL = {"bitsandbytes"}


def imported_modules(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(top-level module name, line, at module level?) for every import in `tree`."""
    found = []
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                continue
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        for name in names:
            found.append((name, node.lineno, id(node) in top_level))
    return found


def module_level_guarded(tree: ast.Module) -> set[int]:
    """Lines of imports inside a module-level try/if (optional dependencies): still at the top."""
    lines = set()
    for node in tree.body:
        if isinstance(node, (ast.Try, ast.If)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    lines.add(inner.lineno)
    return lines


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_never_import_each_other(script):
    tree = ast.parse(script.read_text(encoding="utf-8"))
    others = sorted({name for name, _, _ in imported_modules(tree) if name in SCRIPT_NAMES - {script.stem}})
    assert not others, f"{script.name} imports the scripts {others}: move what they share into repo2model/"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_scripts_import_at_the_top(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = module_level_guarded(tree)
    inside = [(name, line) for name, line, top in imported_modules(tree) if not top and line not in guarded and name not in OPTIONAL]
    assert not inside, f"{path.name}: imports inside functions: {inside}"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_the_library_never_imports_a_script(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    scripts = sorted({name for name, _, _ in imported_modules(tree) if name in SCRIPT_NAMES})
    assert not scripts, f"repo2model/{path.name} imports the scripts {scripts}"


def test_every_library_module_imports_cleanly_without_the_scripts(tmp_path):
    """A fresh interpreter that can see only a copy of repo2model/ imports every module of it."""
    shutil.copytree(ROOT / "repo2model", tmp_path / "repo2model", ignore=shutil.ignore_patterns("__pycache__"))
    names = [f"repo2model.{p.stem}" for p in LIBRARY if p.stem != "__init__"]
    code = "import importlib, sys\nfor n in sys.argv[1:]: importlib.import_module(n)\n"
    proc = subprocess.run([sys.executable, "-c", code, *names], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
