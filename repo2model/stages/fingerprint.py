"""When a stage is up to date: its fingerprint, and the run state that keeps the last successful one.

A stage's fingerprint is a digest of everything its result depends on:

    its config section (and the other sections it reads), the seed,
    its input files (and, for a stage with input_state(), what is not a file: the repository's refs),
    its code: the stage module and every module of the packages it declares in CODE.

Each stage module declares the packages of repo2model it runs, e.g. `CODE = ("core", "git")` in
git_scraper.py, so that editing the prediction code (serving/) reruns the stages that import it and never
the scraper. tests/test_fingerprint.py checks every declaration against the modules the stage imports.

`<output_dir>/.pipeline_state.json` keeps, per stage, the fingerprint of its last success (and for the
intermediates that `pipeline.keep_intermediates: false` removed, the digest they had).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from types import ModuleType

from repo2model.core.config import section_dict
from repo2model.core.paths import ArtifactPaths


@dataclasses.dataclass
class RunState:
    """What `.pipeline_state.json` holds between runs."""

    fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)  # stage -> fingerprint of its last success
    input_states: dict[str, str] = dataclasses.field(default_factory=dict)  # stage -> its input_state() then
    removed: dict[str, str] = dataclasses.field(default_factory=dict)  # intermediate path -> digest when removed

    @classmethod
    def read(cls, path: Path) -> "RunState":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(dict(data["fingerprints"]), dict(data["input_states"]), dict(data["removed"]))
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or an older layout: every stage reruns once
            return cls()


def code_files(module: ModuleType) -> list[Path]:
    """The source a stage's result depends on: its module, then every module of the packages in its CODE."""
    library = Path(module.__file__).resolve().parents[1]
    files = [Path(module.__file__).resolve()]
    for package in sorted(module.CODE):
        files += sorted((library / package).rglob("*.py"))
    return files


def check_code_declaration(module: ModuleType) -> None:
    """A stage's CODE must name packages of the library (a typo would leave that code out of its fingerprint)."""
    library = Path(module.__file__).resolve().parents[1]
    code = getattr(module, "CODE", None)
    if not isinstance(code, tuple) or not all(isinstance(p, str) for p in code):
        raise TypeError(f"{module.__name__}.CODE must be a tuple of package names, e.g. ('core', 'git')")
    unknown = [p for p in code if not (library / p / "__init__.py").is_file()]
    if unknown:
        raise TypeError(f"{module.__name__}.CODE names {', '.join(unknown)}: not a package of {library}")


def fingerprint(name: str, module: ModuleType, cfg, paths: ArtifactPaths, seed: int, extras: dict,
                state: RunState) -> str:
    """A digest of everything stage `name` (its `module`) depends on: inputs, config, seed, code.

    An input removed by keep_intermediates: false counts with the digest it had
    when removed, and while one is missing the stage's input_state() (which may
    read it) counts as it was at the stage's last success.
    """
    digest = hashlib.blake2b(digest_size=16)
    settings = {"stage": name, "config": section_dict(cfg), "seed": seed}
    settings.update({k: section_dict(v) for k, v in extras.items()})
    digest.update(json.dumps(settings, sort_keys=True).encode())
    inputs = sorted(Path(p) for p in module.stage_inputs(cfg, paths))
    for path in inputs:
        digest.update(str(path).encode())
        digest.update((path_digest(path) if path.exists() else state.removed.get(str(path), "<missing>")).encode())
    library = Path(module.__file__).resolve().parents[1]
    for code in code_files(module):
        digest.update(str(code.relative_to(library)).encode())
        digest.update(code.read_bytes())
    if hasattr(module, "input_state"):
        if any(not p.exists() and str(p) in state.removed for p in inputs):
            digest.update(state.input_states.get(name, "<unknown>").encode())
        else:
            digest.update(input_state_digest(module, cfg, paths).encode())
    return digest.hexdigest()


def input_state_digest(module: ModuleType, cfg, paths: ArtifactPaths) -> str:
    return hashlib.blake2b(module.input_state(cfg, paths).encode(), digest_size=16).hexdigest()


def path_digest(path: Path) -> str:
    """The content digest of a file or folder (names and contents of its files), or "<missing>"."""
    digest = hashlib.blake2b(digest_size=16)
    if path.is_file():
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file():
                digest.update(str(child.relative_to(path)).encode())
                digest.update(path_digest(child).encode())
    else:
        return "<missing>"
    return digest.hexdigest()
