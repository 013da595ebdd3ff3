"""The house rules, checked.

- A top-level script (`pipeline.py`, `train_model.py`, ...) is thin: its docstring, then
  `from repo2model.stages.<its name> import main` and the call; nothing else of the project.
- No script imports another, and the library (`repo2model/`) never imports a script.
- A stage or tool module of repo2model/stages/ never imports another one: what two of them share lives in a
  package (the pipeline's own helpers, fingerprint.py, update_run.py and generations.py, are the pipeline's).
- Each subpackage's `__init__` docstring says what it owns: it names every module of the package.
- A copy of repo2model/ alone, with no script or test beside it, imports every module.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "repo2model"
SCRIPTS = sorted(ROOT.glob("*.py"))
SCRIPT_NAMES = {p.stem for p in SCRIPTS}
MODULES = sorted(LIBRARY.rglob("*.py"))
PACKAGES = sorted(p.parent for p in LIBRARY.glob("*/__init__.py"))
PIPELINE_PARTS = {"pipeline", "fingerprint", "update_run", "generations"}


def imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(absolute module name, node) for every import in `tree`; relative imports as '.name'."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(("." * node.level + (node.module or ""), node))
    return found


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_each_script_is_its_stages_main_and_nothing_else(script):
    tree = parse(script)
    assert ast.get_docstring(tree), f"{script.name}: no docstring (its first line is the stage's summary)"
    assert (LIBRARY / "stages" / script.name).is_file(), f"{script.name}: no repo2model/stages/{script.name}"
    found = [(name, node) for name, node in imports(tree) if name != "sys"]
    assert len(found) == 1, f"{script.name} imports {[name for name, _ in found]}: only its stage's main"
    name, node = found[0]
    assert name == f"repo2model.stages.{script.stem}" and [a.name for a in node.names] == ["main"], ast.unparse(node)
    body = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))][1:]  # after the docstring
    assert [ast.unparse(n) for n in body] == ["if __name__ == '__main__':\n    sys.exit(main())"], script.name


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_never_import_each_other(script):
    others = sorted({name.split(".")[0] for name, _ in imports(parse(script))} & (SCRIPT_NAMES - {script.stem}))
    assert not others, f"{script.name} imports the scripts {others}: move what they share into repo2model/"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_the_library_never_imports_a_script(path):
    scripts = sorted({name.split(".")[0] for name, _ in imports(parse(path))} & SCRIPT_NAMES)
    assert not scripts, f"{path.relative_to(ROOT)} imports the scripts {scripts}"


@pytest.mark.parametrize("path", sorted((LIBRARY / "stages").glob("*.py")), ids=lambda p: p.name)
def test_stage_modules_never_import_each_other(path):
    allowed = PIPELINE_PARTS if path.stem in PIPELINE_PARTS else set()
    stages = sorted({name.rsplit(".", 1)[-1] for name, _ in imports(parse(path))
                     if name.startswith("repo2model.stages.")} - allowed - {path.stem})
    assert not stages, f"stages/{path.name} imports the stage modules {stages}: what they share belongs in a package"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_each_package_docstring_names_its_modules(package):
    doc = ast.get_docstring(parse(package / "__init__.py")) or ""
    assert doc.strip(), f"repo2model/{package.name}/__init__.py: no docstring saying what the package owns"
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    unnamed = [m for m in modules if not re.search(rf"(?<![\w.]){re.escape(m)}(\.py)?\b", doc)]
    assert not unnamed, f"repo2model/{package.name}/__init__.py's docstring does not name {unnamed}"


def test_the_rules_catch_a_fat_script_and_an_unnamed_module(tmp_path):
    """The checks above can fail: a script with logic of its own, a package module its docstring leaves out."""
    fat = tmp_path / "tokenizer.py"
    fat.write_text('"""Doc."""\nimport sys\n\nfrom repo2model.stages.tokenizer import main\nfrom repo2model.core '
                   'import paths\n\nif __name__ == "__main__":\n    sys.exit(main())\n')
    assert len([name for name, _ in imports(parse(fat)) if name != "sys"]) == 2
    doc = "The package.\n\n    units.py   the units\n"
    assert re.search(r"(?<![\w.])units(\.py)?\b", doc) and not re.search(r"(?<![\w.])chunking(\.py)?\b", doc)


def test_every_library_module_imports_cleanly_without_the_scripts(tmp_path):
    """A fresh interpreter that can see only a copy of repo2model/ imports every module of it."""
    shutil.copytree(LIBRARY, tmp_path / "repo2model", ignore=shutil.ignore_patterns("__pycache__"))
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in MODULES]
    code = "import importlib, sys\nfor n in sys.argv[1:]: importlib.import_module(n)\nprint(sys.modules['repo2model'].__file__)"
    proc = subprocess.run([sys.executable, "-c", code, *names], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(tmp_path / "repo2model" / "__init__.py")  # the copy, not an installed one
