"""The documentation cannot drift from the code: config.yaml is the key reference, the README's
test command is CI's, and the manual (README.md and docs/*.md) names only links, config keys and modules that
exist.

config.yaml documents every key of every section the pipeline knows (found
through pipeline.py's stages and tools, so a new stage's section is checked
without touching this file): each key is there, with a comment on its line, and
its value is the built-in default unless the comment says `built-in default: ...`
(a deliberate override).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from repo2model.stages import pipeline
from conftest import ROOT
from repo2model.core.config import KNOWN_SECTIONS, RENAMED_SECTIONS, build_section, load_config

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
    assert readme.count("<!-- ci:install-export -->") == 1
    install, export, test = readme_block("install"), readme_block("install-export"), readme_block("test")
    assert "pip install" in install and "requirements.txt" in install
    assert export == "pip install -r requirements-export.txt"
    assert test == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert '-m venv "$WORK/venv"' in ci and 'bash -euo pipefail -c "$TEST"' in ci
    # the export extra is installed after the project, and its tests may not skip
    assert ci.index('-c "$INSTALL"') < ci.index('-c "$INSTALL_EXPORT"') < ci.index('-c "$TEST"')
    assert "export REPO2MODEL_REQUIRE_EXPORT=1" in ci
    extra = (ROOT / "requirements-export.txt").read_text(encoding="utf-8")
    assert [line for line in extra.splitlines() if not line.startswith("#")] == ["-e .[export]"]
    assert "pytest" not in ci.replace("$TEST", "")  # no second, hand-written test command


# ------------------------------------------------------------------ the manual

MANUAL = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
# `pipeline.py`, `evaluation.json`, `tokenizer.json`, SentencePiece's `tokenizer.model`: file names, not section.key
FILE_SUFFIXES = {"py", "json", "jsonl", "md", "png", "log", "lock", "yaml", "txt", "zst", "pt", "npy", "model"}


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation (but - and _) dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text(encoding="utf-8")), re.M):
        base = slug(heading)
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(path: Path) -> list[str]:
    """The relative links of a Markdown file whose file or #anchor does not exist."""
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto: ...
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            problems.append(f"{path.name}: {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{path.name}: {target}: no heading #{anchor} in {resolved.name}")
    return problems


def unknown_keys(text: str, sections: dict[str, type]) -> list[str]:
    """Every `section.key` the text names that the config does not have (a former section name included)."""
    names = "|".join(sorted(set(sections) | set(RENAMED_SECTIONS), key=len, reverse=True))
    problems = []
    for section, key in re.findall(rf"(?<![\w./-])({names})\.([a-z_][a-z0-9_]*)\b", text):
        if key in FILE_SUFFIXES:
            continue
        if section in RENAMED_SECTIONS:
            problems.append(f"{section}.{key}: '{section}' is now '{RENAMED_SECTIONS[section]}'")
        elif key not in {f.name for f in dataclasses.fields(sections[section])}:
            problems.append(f"{section}.{key}: no such key")
    return problems


def test_the_readme_is_short_and_every_page_is_linked_from_it():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("\n") <= 300, "README.md: at most 300 lines; the rest belongs in docs/"
    unlinked = [p.name for p in MANUAL[1:] if f"(docs/{p.name})" not in readme]
    assert not unlinked, f"README.md links no {unlinked}"


@pytest.mark.parametrize("page", MANUAL, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", MANUAL, ids=lambda p: p.name)
def test_every_config_key_the_manual_names_exists(page, sections):
    problems = unknown_keys(page.read_text(encoding="utf-8"), sections)
    assert not problems, f"{page.name}: " + "; ".join(problems)


@pytest.mark.parametrize("page", MANUAL, ids=lambda p: p.name)
def test_every_module_the_manual_names_exists(page):
    text = page.read_text(encoding="utf-8")
    problems = [p for p in re.findall(r"repo2model/[\w/]*\w(?:\.py)?", text) if not (ROOT / p).exists()]
    for dotted in set(re.findall(r"repo2model(?:\.\w+)+", text)):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                target = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute, None)
        if target is None:
            problems.append(dotted)
    assert not problems, f"{page.name} names what does not exist: {sorted(set(problems))}"


def test_the_manual_checks_catch_drift(tmp_path, sections):
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    (tmp_path / "other.md").write_text("# Other\n\n## A `b.py` — c → `d.json`\n", encoding="utf-8")
    page.write_text("[ok](../other.md#a-bpy--c--djson) [gone](missing.md) [bad](../other.md#nowhere)\n"
                    "```\n[in code](not-checked.md)\n```\n", encoding="utf-8")
    assert broken_links(page) == ["page.md: missing.md: no such file",
                                  "page.md: ../other.md#nowhere: no heading #nowhere in other.md"]
    assert unknown_keys("`train_model.max_steps`, `pipeline.py`, `tokenizer.vocab_sise`, `prediction.top_k`",
                        sections) == ["tokenizer.vocab_sise: no such key", "prediction.top_k: 'prediction' is now 'predict'"]
