"""Typed, strict loading of `config.yaml`.

Each stage declares its section as a dataclass (in its own script). The
loader turns the YAML mapping of that section into the dataclass and refuses
what it does not know, in one line that names the file, the key and what is
allowed:

    config.yaml: git_scraper.max_file_size: expected int, got str ('big')
    config.yaml: unknown key 'vocab_sise' in section 'tokenizer' (allowed: ...)

Supported field types: bool, int, float (an int is accepted), str, Path
(relative paths resolve against the config file's folder, `~` expands),
Optional[X], list[X], dict[str, X], Literal[...]. A field without a default is
required. A dataclass may check ranges in `__post_init__` by raising
`UserError` (or `ValueError`) with a message that starts with the key name.

Floats must be finite (`.nan`, `.inf` are refused) unless the field says
otherwise with `dataclasses.field(default=..., metadata=NONFINITE_OK)`.
A key given twice in one mapping is refused (YAML would keep the last one
silently), and so is a file that is not UTF-8.

Values given on the command line (`--set section.key=value`, repeatable, the
value read as YAML: 200, true, null, [a, b]) go on top of the file's and are
checked the same way (Override, ConfigSource); a relative path given there is
relative to the current folder.

Each stage's section is named like the stage. Four had other names before
(RENAMED_SECTIONS): a file that uses an old name still loads, with one warning
line naming the new one; a file that uses both names for one section is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin

import yaml

from repo2model.core.errors import UserError

log = logging.getLogger("config")

# Field metadata for a float field that may be `.inf` or `.nan` (every other float must be finite).
NONFINITE_OK = {"nonfinite_ok": True}
# YAML 1.1 (PyYAML) reads a float in exponent form without a dot (1e-4, 3E+2) as a string: a float field takes it.
EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclasses.dataclass
class PipelineConfig:
    """The `pipeline` section: where artifacts go, how the run is logged, how intermediates are kept."""

    output_dir: Path = Path("outputs")
    log_file: Path | None = None  # default: <output_dir>/pipeline.log
    log_level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"
    seed: int = 42
    compress: bool = False  # commits.json.zst / chunks.jsonl.zst instead of the plain files
    keep_intermediates: bool = True  # False: remove commits, chunks, tokens once every stage reading them is done
    update: bool = False  # True: every whole run is an update (pipeline.py --update; --no-update overrides)


def load_yaml(path: Path) -> dict:
    """Read the config file as a mapping of sections, or raise a one-line UserError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}): save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise UserError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


class NonFiniteError(UserError):
    """A float field given `.nan` or `.inf` (kept apart so that a union type does not swallow it)."""


def check_finite(value: Any, key: str) -> None:
    """Refuse nan/inf for `key` (a float field without NONFINITE_OK), in one line."""
    if isinstance(value, float) and not math.isfinite(value):
        raise NonFiniteError(f"{key}: expected a finite number, got {value!r}")


class DuplicateKeyError(yaml.YAMLError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (merge keys `<<` aside)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(f"key {key!r} appears twice (lines {seen[key]} and {line}): keep one")
                    seen[key] = line
                except TypeError:  # an unhashable key; SafeLoader reports it below
                    continue
        return super().construct_mapping(node, deep=deep)


@dataclasses.dataclass(frozen=True)
class Override:
    """One `--set section.key=value` of the command line, its value as YAML reads it."""

    section: str
    key: str
    value: Any
    text: str = dataclasses.field(default="", compare=False)  # as typed, for the log

    @classmethod
    def parse(cls, text: str) -> "Override":
        name, equals, raw = text.partition("=")
        section, dot, key = name.strip().partition(".")
        if not equals or not dot or not section or not key.isidentifier():
            raise UserError(f"--set {text}: expected section.key=value (e.g. train_model.max_steps=200)")
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise UserError(f"--set {text}: the value is not valid YAML ({problem})") from None
        if section in RENAMED_SECTIONS:
            log.warning("--set %s: section '%s' is now called '%s'", text, section, RENAMED_SECTIONS[section])
            section = RENAMED_SECTIONS[section]
        return cls(section, key, value, text)


@dataclasses.dataclass(frozen=True)
class ConfigSource:
    """Where a command's settings come from: a config file (None: the built-in defaults) and the `--set`
    overrides on top of it. load_config takes it wherever it takes a path."""

    file: Path | None
    overrides: tuple[Override, ...] = ()

    def __fspath__(self) -> str:  # for code that needs the file itself (POST /update runs the pipeline on it)
        if self.file is None:
            raise UserError("no config file to pass on: give --config (--set values apply to this command only)")
        return str(self.file)

    def __str__(self) -> str:
        shown = str(self.file) if self.file is not None else "the built-in defaults"
        return shown + "".join(f" --set {o.text}" for o in self.overrides)


def load_config(path: Path | str | ConfigSource, sections: Mapping[str, type],
                strict_sections: bool = True) -> dict[str, Any]:
    """Load `path` (a config file, or a ConfigSource: a file or none, and --set values) and build one
    dataclass instance per requested section.

    `sections` maps section name -> dataclass. Sections missing from the file
    get their defaults. With `strict_sections`, a section the project does not
    know is an error; a stage run on its own passes False and validates just
    the sections it uses (plus `pipeline`).
    """
    source = path if isinstance(path, ConfigSource) else ConfigSource(Path(path))
    file = Path(source.file).expanduser().resolve() if source.file is not None else None
    renamed = sorted(set(sections) & set(RENAMED_SECTIONS))
    if renamed:  # a caller's bug, not the user's: the code asks for a section by its former name
        raise TypeError(f"section {renamed[0]!r} is now called {RENAMED_SECTIONS[renamed[0]]!r}")
    data = new_section_names(load_yaml(file), file) if file is not None else {}
    known = set(sections) | set(KNOWN_SECTIONS)
    for name in data:
        if name not in known or (strict_sections and name not in sections):
            raise UserError(f"{file.name}: unknown section '{name}' (allowed: {', '.join(sorted(known))})")
    for override in source.overrides:
        if override.section not in known:
            raise UserError(f"--set {override.text}: unknown section '{override.section}' "
                            f"(allowed: {', '.join(sorted(known))})")
    name, base_dir = (file.name, file.parent) if file is not None else ("defaults", Path.cwd())
    return {
        section: build_section(cls, data.get(section) or {}, section, name, base_dir,
                               [o for o in source.overrides if o.section == section])
        for section, cls in sections.items()
    }


def new_section_names(data: dict, path: Path) -> dict:
    """The file's sections under their current names; a former name is warned about once per file."""
    for old, new in RENAMED_SECTIONS.items():
        if old not in data:
            continue
        if new in data:
            raise UserError(f"{path.name}: sections '{old}' and '{new}' are one section ('{old}' is its former name): "
                            f"merge them into '{new}'")
        if (path, old) not in _warned_renames:
            _warned_renames.add((path, old))
            log.warning("%s: section '%s' is now called '%s': rename it (the old name still works)",
                        path.name, old, new)
    return {RENAMED_SECTIONS.get(name, name): values for name, values in data.items()}


_warned_renames: set[tuple[Path, str]] = set()  # a command may load one file several times: one warning each


def build_section(cls: type, values: Any, section: str, source: str, base_dir: Path,
                  overrides: list[Override] = ()) -> Any:
    """Build dataclass `cls` from a mapping and the --set values of its section, validating every key and type."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: section '{section}' must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            raise UserError(
                f"{source}: unknown key '{key}' in section '{section}' (allowed: {', '.join(sorted(fields))})"
            )
    for override in overrides:
        if override.key not in fields:
            raise UserError(f"--set {override.text}: unknown key '{override.key}' in section '{section}' "
                            f"(allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        if name in values:
            finite = not field.metadata.get("nonfinite_ok", False)
            kwargs[name] = coerce(values[name], hints[name], f"{section}.{name}", source, base_dir, finite)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if any(o.key == name for o in overrides):
                continue
            raise UserError(f"{source}: missing required key '{section}.{name}' ({describe(hints[name])})")
        elif hints[name] is Path or _is_optional_path(hints[name]):
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            if default is not None:
                kwargs[name] = resolve_path(default, base_dir)
    for override in overrides:  # the command line's values win over the file's
        finite = not fields[override.key].metadata.get("nonfinite_ok", False)
        kwargs[override.key] = coerce(override.value, hints[override.key], f"{section}.{override.key}", "--set",
                                      Path.cwd(), finite)
    try:
        return cls(**kwargs)
    except (UserError, ValueError) as exc:
        where = f"{source} with --set" if overrides else source
        raise UserError(f"{where}: {section}.{exc}") from None


def resolve_path(value: Path | str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path)


def _is_optional_path(tp: Any) -> bool:
    return _is_union(tp) and Path in get_args(tp)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def coerce(value: Any, tp: Any, key: str, source: str, base_dir: Path, finite: bool = True) -> Any:
    """Check `value` against type `tp`; return it converted (paths resolved). `finite`: refuse nan/inf."""

    def fail() -> typing.NoReturn:
        shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        raise UserError(f"{source}: {key}: expected {describe(tp)}, got {type(value).__name__} ({shown})")

    if tp is Any:
        return value
    if _is_union(tp):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, source, base_dir, finite)
            except NonFiniteError:
                raise
            except UserError:
                continue
        fail()
    origin = get_origin(tp)
    if origin is Literal:
        # YAML 1.1 reads an unquoted off / on (and no / yes, false / true) as a boolean: the word, where it is a choice
        if isinstance(value, bool) and ("on" if value else "off") in get_args(tp):
            value = "on" if value else "off"
        if value in get_args(tp):
            return value
        fail()
    if origin is list:
        if not isinstance(value, list):
            fail()
        (item,) = get_args(tp) or (Any,)
        return [coerce(v, item, f"{key}[{i}]", source, base_dir, finite) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        _, item = get_args(tp) or (str, Any)
        return {str(k): coerce(v, item, f"{key}.{k}", source, base_dir, finite) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, str) and EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if finite:
                try:
                    check_finite(float(value), key)
                except NonFiniteError as exc:
                    raise NonFiniteError(f"{source}: {exc}") from None
            return float(value)
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if tp is Path:
        if isinstance(value, str) and value:
            return resolve_path(value, base_dir)
        fail()
    raise TypeError(f"config field {key} has unsupported type {tp!r}")


def describe(tp: Any) -> str:
    """A short human description of a field type, for error messages."""
    if _is_union(tp):
        parts = [describe(a) for a in get_args(tp) if a is not type(None)]
        nullable = type(None) in get_args(tp)
        return " or ".join(parts) + (" or null" if nullable else "")
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {describe(get_args(tp)[0])}" if get_args(tp) else "a list"
    if origin is dict:
        return f"a mapping of str to {describe(get_args(tp)[1])}" if get_args(tp) else "a mapping"
    if tp is Path:
        return "a path"
    return getattr(tp, "__name__", str(tp))


def section_dict(instance: Any) -> dict:
    """A JSON-friendly dict of a section (paths as strings), for fingerprints and logs."""
    out = {}
    for f in dataclasses.fields(instance):
        out[f.name] = _plain(getattr(instance, f.name))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# Every section the project knows, so that a stage run alone can tell a typo
# in another section's name from a section it simply does not use.
KNOWN_SECTIONS = (
    "pipeline",
    "git_scraper",
    "semantic_chunker",
    "index",
    "tokenizer",
    "dataset_builder",
    "train_model",
    "export",
    "train_ranker",
    "evaluate",
    "predict",
    "serve",
)
# Former section name -> its name now (the name of its stage, or tool for `predict`).
RENAMED_SECTIONS = {
    "model_training": "train_model",
    "ranker": "train_ranker",
    "evaluation": "evaluate",
    "prediction": "predict",
}
