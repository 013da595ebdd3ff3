"""The documentation cannot drift from the code: config.yaml is the key reference, the README's
test command is CI's.

config.yaml documents every key of every section the pipeline knows (found
through pipeline.py's stages and tools, so a new stage's section is checked
without touching this file): each key is there, with a comment on its line, and
its value is the built-in default unless the comment says `built-in default: ...`
(a deliberate override).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from repo2model.stages import pipeline
from conftest import ROOT
from repo2model.core.config import KNOWN_SECTIONS, build_section, load_config

OVERRIDE_MARK = "built-in default"


@pytest.fixture(scope="module")
def sections() -> dict[str, type]:
    stages = [pipeline.Stage(name, pipeline.import_stage(module)) for name, module in pipeline.STAGES]
    return pipeline.section_classes(stages)


def key_lines(path: Path) -> dict[tuple[str, str], str]:
    """{(section, key): the text of the line the key is on} for every key of every section."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = {}
    for section, body in yaml.compose(text).value:
        if isinstance(body, yaml.MappingNode):
            for key, _ in body.value:
                found[(section.value, key.value)] = lines[key.start_mark.line]
    return found


def test_every_known_section_belongs_to_a_stage_or_tool(sections):
    assert set(sections) == set(KNOWN_SECTIONS)


def config_problems(path: Path, sections: dict[str, type]) -> list[str]:
    """What config.yaml at `path` fails to say: missing keys, keys without a comment, silent overrides."""
    lines = key_lines(path)
    loaded = load_config(path, sections, strict_sections=True)
    problems = []
    for name, cls in sections.items():
        defaults = build_section(cls, {}, name, path.name, path.parent)
        for field in dataclasses.fields(cls):
            line = lines.get((name, field.name))
            if line is None:
                problems.append(f"{name}.{field.name}: not in config.yaml")
                continue
            comment = line.split("#", 1)[1].strip() if "#" in line else ""
            if not comment:
                problems.append(f"{name}.{field.name}: no comment on its line")
            shown, default = getattr(loaded[name], field.name), getattr(defaults, field.name)
            if shown != default and OVERRIDE_MARK not in comment:
                problems.append(f"{name}.{field.name}: config.yaml says {shown!r}, the default is {default!r} "
                                f"(make them equal, or say '{OVERRIDE_MARK}: ...' in its comment)")
    return problems


def test_config_yaml_documents_every_key_with_its_default(sections):
    problems = config_problems(ROOT / "config.yaml", sections)
    assert not problems, "\n".join(problems)


def test_drift_is_caught(tmp_path, sections):
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    text = re.sub(r"^(  seed: 42) +#.*$", r"\1", text, count=1, flags=re.M)  # comment gone
    text = re.sub(r"^  log_level: INFO", "  log_level: DEBUG", text, count=1, flags=re.M)  # silent override
    text = re.sub(r"^  compress: false.*\n", "", text, count=1, flags=re.M)  # key gone
    (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    problems = config_problems(tmp_path / "config.yaml", sections)
    assert [p.split(":")[0] for p in problems] == ["pipeline.log_level", "pipeline.seed", "pipeline.compress"]
    marked = text.replace("  log_level: DEBUG", "  log_level: DEBUG  # built-in default: INFO")
    (tmp_path / "config.yaml").write_text(marked, encoding="utf-8")
    assert [p.split(":")[0] for p in config_problems(tmp_path / "config.yaml", sections)] == [
        "pipeline.seed", "pipeline.compress"]


@pytest.mark.parametrize("profile", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_profile_loads(profile, sections):
    load_config(profile, sections, strict_sections=True)
    assert profile.read_text(encoding="utf-8").lstrip().startswith("#"), "a profile opens with the command that runs it"


def readme_block(tag: str) -> str:
    """The command block right after `<!-- ci:TAG -->` in the README, read as .ci/run reads it."""
    proc = subprocess.run(["bash", "-c", 'source <(sed -n "/^readme_block()/,/^}/p" .ci/run); readme_block "$1"',
                           "_", tag], cwd=ROOT, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_ci_runs_the_readmes_install_and_test_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("<!-- ci:install -->") == 1 and readme.count("<!-- ci:test -->") == 1
    install, test = readme_block("install"), readme_block("test")
    assert "pip install" in install and "requirements.txt" in install
    assert test == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert '-m venv "$WORK/venv"' in ci and 'bash -euo pipefail -c "$TEST"' in ci
    assert "pytest" not in ci.replace("$TEST", "")  # no second, hand-written test command
