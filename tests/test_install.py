"""The install: pyproject.toml is the one list of requirements, every import the code makes is in it, the
README's install line installs the project with its console commands, every module imports in this environment,
and an older Python is refused in one line.

Run by .ci/run in a virtual environment built fresh from the README's install command, these tests are what
proves that command installs everything; anywhere else they check the same against the environment at hand.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "repo2model"
SCRIPTS = sorted(p for p in ROOT.glob("*.py"))
PYPROJECT = ROOT / "pyproject.toml"
# Imported only where the user asked for what needs them, and refused in one line when missing: in an extra.
OPTIONAL = {"bitsandbytes"}


def code_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + SCRIPTS


def third_party_imports(files: list[Path]) -> dict[str, set[str]]:
    """Top-level module names imported anywhere in `files` (module level or inside functions), but for the
    standard library and the project's own modules: name -> the files importing it."""
    local = {p.stem for p in SCRIPTS} | {"repo2model"}
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local and top != "__future__":
                    found.setdefault(top, set()).add(path.name)
    return found


def project(pyproject: Path = PYPROJECT) -> dict:
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]


def distribution_name(requirement: str) -> str:
    return normalize(re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0])


def required_distributions(pyproject: Path = PYPROJECT) -> set[str]:
    """The distributions pyproject.toml's dependencies name (normalized): what every install gets."""
    return {distribution_name(r) for r in project(pyproject)["dependencies"]}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def transitive(names: set[str]) -> set[str]:
    """`names` and every distribution they pull in, as installed here."""
    seen, pending = set(), list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" not in requirement:
                pending.append(normalize(re.split(r"[<>=!~;\[ (]", requirement, maxsplit=1)[0]))
    return seen


def unlisted_imports(files: list[Path], pyproject: Path = PYPROJECT) -> list[str]:
    """The third-party imports of `files` that no listed requirement (or what it pulls in) provides."""
    distributions = importlib.metadata.packages_distributions()
    installed = transitive(required_distributions(pyproject))
    missing = []
    for module, users in sorted(third_party_imports(files).items()):
        if module in OPTIONAL:
            continue
        providers = {normalize(d) for d in distributions.get(module, [])}
        if not providers:
            missing.append(f"{module} (not installed; imported by {', '.join(sorted(users))})")
        elif not providers & installed:
            missing.append(f"{module} (from {', '.join(sorted(providers))}, which the requirements do not pull in; "
                           f"imported by {', '.join(sorted(users))})")
    return missing


def test_every_import_is_a_requirement():
    missing = unlisted_imports(code_files())
    assert not missing, "imports without a requirement: " + "; ".join(missing)


def test_the_requirement_check_catches_an_unlisted_import(tmp_path):
    source = tmp_path / "compress.py"
    source.write_text("import json\nimport zstandard\n\ndef f():\n    import yaml\n", encoding="utf-8")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["PyYAML>=6.0"]\n', encoding="utf-8")
    assert [m.split()[0] for m in unlisted_imports([source], pyproject)] == ["zstandard"]
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["PyYAML>=6.0", "zstandard>=0.22"]\n', encoding="utf-8")
    assert unlisted_imports([source], pyproject) == []


def test_optional_imports_are_extras_and_the_test_extra_pulls_them_in():
    extras = {name: {distribution_name(r) for r in reqs} for name, reqs in project()["optional-dependencies"].items()}
    distributions = importlib.metadata.packages_distributions()
    for module in OPTIONAL:
        providers = {normalize(d) for d in distributions.get(module, [module])}
        assert providers & extras["gpu"], f"{module}: not in the gpu extra"
        assert not providers & required_distributions(), f"{module}: optional, yet a dependency of every install"
    assert {"repo2model", "pytest"} <= extras["dev"]  # dev = the gpu extra (the suite runs NF4 on the CPU) + tools
    assert "repo2model[gpu]" in project()["optional-dependencies"]["dev"]


def test_requirements_txt_installs_the_project_with_its_test_extras():
    """requirements.txt is the README's install line: the project itself (editable), nothing listed twice."""
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line] == ["-e .[dev]"]
    assert project()["requires-python"] == ">=3.11"


def test_console_commands_run_the_stage_mains():
    """Each command of pyproject.toml runs a stage module's main, every stage has one, and each is installed here."""
    commands = project()["scripts"]
    stage_modules = {f"repo2model.stages.{p.stem}" for p in SCRIPTS}
    targets = {}
    for command, target in commands.items():
        module, _, function = target.partition(":")
        assert command.startswith("repo2model-") and function == "main", (command, target)
        targets[module] = command
    assert set(targets) == stage_modules, "each top-level script's stage needs a command (and only those)"
    for module in stage_modules:  # read, not imported: importing every stage takes seconds
        source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text(encoding="utf-8")
        assert re.search(r"^def main\(", source, re.M), f"{module} has no main()"
    bin_dir = Path(sys.executable).parent
    missing = sorted(c for c in commands if not (bin_dir / c).is_file())
    assert not missing, f"not installed in {bin_dir}: {missing} (pip install -r requirements.txt installs them)"
    proc = subprocess.run([str(bin_dir / "repo2model-pipeline"), "--list-stages"], capture_output=True, text=True,
                          cwd=ROOT.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()][:2] == ["git_scraper", "semantic_chunker"]


def test_every_module_and_script_imports_in_this_environment():
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in sorted(PACKAGE.rglob("*.py"))]
    modules = [m.removesuffix(".__init__") for m in modules] + [p.stem for p in SCRIPTS]
    code = ("import importlib, sys\nfailed = []\nfor name in sys.argv[1:]:\n    try:\n        importlib.import_module(name)\n"
            "    except Exception as exc:\n        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
            "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def older_python() -> str | None:
    for name in ("python3.10", "python3.9"):
        path = shutil.which(name)
        if path and subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
            return path
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        for candidate in sorted(Path(root, "versions").glob("3.1[0]*/bin/python3")) if root else []:
            return str(candidate)
    return None


def test_an_older_python_is_refused_in_one_line():
    python = older_python()
    if python is None:
        pytest.skip("no Python older than 3.11 on this machine")
    proc = subprocess.run([python, "pipeline.py", "--list-stages"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs Python 3.11 or newer" in lines[0], proc.stderr


@pytest.mark.skipif(os.environ.get("REPO2MODEL_CI_FRESH_ENV") != "1", reason="only in .ci/run's fresh environment")
def test_ci_runs_in_a_fresh_environment():
    # .ci/run creates the environment in a temporary folder: this interpreter must be that one, not the machine's
    assert sys.prefix != sys.base_prefix
    assert "repo2model-ci." in sys.prefix
