"""A stage's fingerprint covers its own module and the packages it declares in CODE, and nothing else:
the declarations are complete (every module a stage imports lies in them) and editing a package reruns
exactly the stages that import it."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repo2model.stages import pipeline
from conftest import ROOT, GitRepo
from helpers_update import CONFIG, add_commits

LIBRARY = ROOT / "repo2model"
# The package __init__s around every stage module: docstrings (and the Python version check), no behaviour.
CONTAINERS = {"repo2model", "repo2model.stages"}


def module_file(library: Path, name: str) -> Path | None:
    path = library.parent.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(library: Path, name: str) -> set[str]:
    """The repo2model modules `name` imports (anywhere in it, at import time or inside functions)."""
    path = module_file(library, name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if module_file(library, f"{base}.{alias.name}")}
    modules = {m for m in found if m.split(".")[0] == "repo2model" and module_file(library, m)}
    for module in list(modules):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = module.split(".")
        modules |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return modules


def import_closure(library: Path, name: str) -> set[str]:
    """`name`, the packages that contain it, and every repo2model module they import, transitively."""
    parts = name.split(".")
    seen, todo = set(), [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imported_modules(library, module)
    return seen


def declared_code(library: Path, stage_module: str) -> tuple[str, ...]:
    """A stage module's CODE, read from its source."""
    tree = ast.parse(module_file(library, stage_module).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CODE" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{stage_module} declares no CODE")


def stages_importing(library: Path, package: str) -> set[str]:
    return {name for name, module in pipeline.STAGES
            if any(m.split(".")[:2] == ["repo2model", package] for m in import_closure(library, module))}


@pytest.mark.parametrize("name,module", pipeline.STAGES)
def test_each_stage_declares_every_package_it_imports(name, module):
    closure = import_closure(LIBRARY, module)
    code = declared_code(LIBRARY, module)
    outside = sorted(m for m in closure - CONTAINERS - {module} if m.split(".")[1] not in code)
    assert not outside, f"{name} imports {outside} but CODE = {code}: add the packages (or stop importing them)"
    unused = sorted(p for p in code if not any(m.split(".")[1:2] == [p] for m in closure))
    assert not unused, f"{name} declares {unused} in CODE but imports nothing from them"


def test_the_closure_follows_imports_through_packages(tmp_path):
    """The checker itself: a chain a -> b -> c across packages, relative and absolute, is followed to the end."""
    lib = tmp_path / "repo2model"
    for package in ("stages", "one", "two"):
        (lib / package).mkdir(parents=True)
        (lib / package / "__init__.py").write_text('"""p"""\n')
    (lib / "__init__.py").write_text("")
    (lib / "stages" / "s.py").write_text("def f():\n    from repo2model.one import a\n")
    (lib / "one" / "a.py").write_text("from ..two.b import thing\n")
    (lib / "two" / "b.py").write_text("import json\nthing = 1\n")
    assert import_closure(lib, "repo2model.stages.s") == {
        "repo2model", "repo2model.stages", "repo2model.stages.s", "repo2model.one", "repo2model.one.a",
        "repo2model.two", "repo2model.two.b"}


def test_a_code_declaration_naming_no_package_is_refused(tmp_path):
    from types import ModuleType

    from repo2model.stages.fingerprint import check_code_declaration

    module = ModuleType("repo2model.stages.fake")
    module.__file__ = str(LIBRARY / "stages" / "fake.py")
    module.CODE = ("core", "gits")
    with pytest.raises(TypeError, match="gits"):
        check_code_declaration(module)
    module.CODE = ("core", "git")
    check_code_declaration(module)


# ------------------------------------------------------------------ a real run on a copy of the project


def run_copy(project: Path) -> dict[str, str]:
    """pipeline.py of the copy (its own repo2model first on the path); each stage's status."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    proc = subprocess.run([sys.executable, "-m", "repo2model.stages.pipeline", "--config", "config.yaml"],
                          cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((project / "out" / "pipeline_results.json").read_text())
    assert Path(results["config"]).parent == project
    return {name: stage["status"] for name, stage in results["stages"].items()}


def edit(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n# an edit that changes no behaviour\n", encoding="utf-8")


@pytest.mark.slow
def test_editing_a_package_reruns_exactly_the_stages_that_import_it(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(LIBRARY, project / "repo2model", ignore=shutil.ignore_patterns("__pycache__"))
    add_commits(GitRepo(project / "repo"), 30, 0)
    (project / "config.yaml").write_text(CONFIG.format(update_steps=2), encoding="utf-8")
    library = project / "repo2model"
    assert set(run_copy(project).values()) == {"ok"}

    # The prediction code: the stages that score with it rerun; the data and training stages never do.
    serving = stages_importing(library, "serving")
    assert "evaluate" in serving
    assert not serving & {"git_scraper", "semantic_chunker", "index", "tokenizer", "dataset_builder", "train_model"}
    edit(sorted((library / "serving").glob("*.py"))[-1])
    statuses = run_copy(project)
    assert {name for name, status in statuses.items() if status == "ok"} == serving, statuses
    assert {name for name, status in statuses.items() if status == "skipped"} == set(pipeline.RUN_BY_DEFAULT) - serving

    # The chunking code: the chunker reruns, and so do the stages that import code/; its output is the same
    # bytes, so the stages after it that import no code/ module find their inputs unchanged.
    chunking = stages_importing(library, "code")
    assert {"semantic_chunker", "index"} <= chunking and not chunking & {"git_scraper", "tokenizer", "train_model"}
    edit(library / "code" / "chunking.py")
    statuses = run_copy(project)
    assert {name for name, status in statuses.items() if status == "ok"} == chunking, statuses

    # Nothing changed: every stage is up to date.
    assert set(run_copy(project).values()) == {"skipped"}
