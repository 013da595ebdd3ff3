"""Config loading: strict keys, types, required values, path resolution."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from repo2model.core.cli import apply_overrides
from repo2model.core.config import NONFINITE_OK, ConfigSource, Override, PipelineConfig, load_config
from repo2model.core.errors import UserError, first_line


@dataclasses.dataclass
class DemoConfig:
    name: str  # required
    size: int = 3
    ratio: float = 0.5
    enabled: bool = True
    mode: Literal["train", "extend"] = "train"
    extensions: list[str] = dataclasses.field(default_factory=lambda: [".rs"])
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    repo: Path = Path(".")
    base: Path | None = None
    limit: int | None = None

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size: must be at least 1, got {self.size}")


SECTIONS = {"pipeline": PipelineConfig, "tokenizer": DemoConfig}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_values_types_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(
        tmp_path,
        "pipeline:\n  output_dir: out\ntokenizer:\n  name: x\n  size: 7\n  ratio: 1\n  mode: extend\n"
        "  extensions: [.py]\n  weights: {a: 2}\n  repo: ../src\n  base: ~/models/llama\n  limit: null\n",
    )
    loaded = load_config(path, SECTIONS)
    cfg = loaded["tokenizer"]
    assert (cfg.name, cfg.size, cfg.ratio, cfg.mode) == ("x", 7, 1.0, "extend")
    assert isinstance(cfg.ratio, float)
    assert cfg.extensions == [".py"] and cfg.weights == {"a": 2.0}
    assert cfg.repo == tmp_path / "conf" / ".." / "src"
    assert cfg.base == tmp_path / "home" / "models" / "llama"
    assert cfg.limit is None
    assert loaded["pipeline"].output_dir == tmp_path / "conf" / "out"


def test_default_paths_resolve_against_config_folder(tmp_path):
    path = write(tmp_path, "tokenizer:\n  name: x\n")
    loaded = load_config(path, SECTIONS)
    assert loaded["pipeline"].output_dir == tmp_path / "conf" / "outputs"
    assert loaded["tokenizer"].repo == tmp_path / "conf"


@pytest.mark.parametrize(
    "body, expected",
    [
        ("tokenizer:\n  name: x\n  vocab_sise: 3\n", "unknown key 'vocab_sise' in section 'tokenizer' (allowed: base, enabled,"),
        ("tokenizer:\n  name: x\n  size: big\n", "tokenizer.size: expected int, got str ('big')"),
        ("tokenizer:\n  name: x\n  size: true\n", "tokenizer.size: expected int, got bool"),
        ("tokenizer:\n  name: x\n  mode: fancy\n", "tokenizer.mode: expected one of 'train', 'extend'"),
        ("tokenizer:\n  name: x\n  extensions: .rs\n", "tokenizer.extensions: expected a list of str"),
        ("tokenizer:\n  name: x\n  extensions: [.rs, 3]\n", "tokenizer.extensions[1]: expected str, got int"),
        ("tokenizer:\n  size: 2\n", "missing required key 'tokenizer.name' (str)"),
        ("tokenizer:\n  name: x\n  size: 0\n", "tokenizer.size: must be at least 1, got 0"),
        ("tokeniser:\n  name: x\n", "unknown section 'tokeniser'"),
        ("tokenizer: [1, 2]\n", "section 'tokenizer' must be a mapping"),
        ("tokenizer:\n  name: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping of sections"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, body, expected):
    path = write(tmp_path, body)
    with pytest.raises(UserError) as info:
        load_config(path, SECTIONS)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith("config.yaml") or message.startswith(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", SECTIONS)


def test_known_sections_of_other_stages_are_accepted_when_not_strict(tmp_path):
    path = write(tmp_path, "tokenizer:\n  name: x\ntrain_model:\n  anything: 1\n")
    with pytest.raises(UserError, match="unknown section 'train_model'"):
        load_config(path, SECTIONS)
    assert load_config(path, SECTIONS, strict_sections=False)["tokenizer"].name == "x"


def test_first_line_of_an_exception():
    assert first_line(ValueError("\n  cannot load x  \nsecond line")) == "cannot load x"
    assert first_line(OSError()) == "OSError"
    assert first_line(RuntimeError("y" * 300), 20) == "y" * 17 + "..."


@pytest.mark.parametrize(
    "body, expected",
    [
        ("tokenizer:\n  name: x\n  ratio: .nan\n", "tokenizer.ratio: expected a finite number, got nan"),
        ("tokenizer:\n  name: x\n  ratio: -.inf\n", "tokenizer.ratio: expected a finite number, got -inf"),
        ("tokenizer:\n  name: x\n  weights: {a: .inf}\n", "tokenizer.weights.a: expected a finite number, got inf"),
        ("tokenizer:\n  name: x\n  maybe: .NaN\n", "tokenizer.maybe: expected a finite number, got nan"),
    ],
)
def test_non_finite_floats_are_refused(tmp_path, body, expected):
    @dataclasses.dataclass
    class Floats(DemoConfig):
        maybe: float | None = None

    path = write(tmp_path, body)
    with pytest.raises(UserError) as info:
        load_config(path, {"tokenizer": Floats})
    assert str(info.value) == f"config.yaml: {expected}"


def test_a_field_may_allow_non_finite_floats(tmp_path):
    @dataclasses.dataclass
    class Limits:
        ceiling: float = dataclasses.field(default=1.0, metadata=NONFINITE_OK)

    path = write(tmp_path, "tokenizer:\n  ceiling: .inf\n")
    assert load_config(path, {"tokenizer": Limits})["tokenizer"].ceiling == float("inf")


def test_cli_overrides_refuse_non_finite_floats():
    cfg = DemoConfig(name="x")
    with pytest.raises(UserError, match=r"^tokenizer\.ratio: expected a finite number, got nan$"):
        apply_overrides(cfg, "tokenizer", {"ratio": float("nan")})
    assert apply_overrides(cfg, "tokenizer", {"ratio": 2.0, "size": None}).ratio == 2.0


@pytest.mark.parametrize(
    "body, lines",
    [
        ("tokenizer:\n  name: x\n  size: 4\n  ratio: 1\n  size: 5\n", (3, 5)),
        ("tokenizer:\n  name: x\npipeline:\n  seed: 1\ntokenizer:\n  name: y\n", (1, 5)),
        ("tokenizer: {name: x, name: y}\n", (1, 1)),
    ],
)
def test_duplicate_keys_are_refused_naming_both_lines(tmp_path, body, lines):
    path = write(tmp_path, body)
    with pytest.raises(UserError) as info:
        load_config(path, SECTIONS)
    message = str(info.value)
    assert f"appears twice (lines {lines[0]} and {lines[1]})" in message and "\n" not in message


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = write(tmp_path, "base: &base\n  name: x\n  size: 4\ntokenizer:\n  <<: *base\n  size: 5\n")
    @dataclasses.dataclass
    class Loose:
        name: str = ""
        size: int = 0
    data = load_config(path, {"tokenizer": Loose, "base": Loose})
    assert (data["tokenizer"].name, data["tokenizer"].size) == ("x", 5)


def test_non_utf8_config_is_one_line(tmp_path):
    path = write(tmp_path, "")
    path.write_bytes("tokenizer:\n  name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError) as info:
        load_config(path, SECTIONS)
    message = str(info.value)
    assert "not UTF-8 text (byte 0xe9 on line 2): save it as UTF-8" in message and "\n" not in message


# ------------------------------------------------------------------ sections named like their stages


@dataclasses.dataclass
class Decoding:
    max_new_tokens: int = 256
    device: str = "cpu"


def test_a_former_section_name_still_loads_with_one_warning(tmp_path, caplog):
    path = write(tmp_path, "prediction:\n  max_new_tokens: 16\n")
    for _ in range(3):  # a command may load its file several times: the user reads the warning once
        assert load_config(path, {"predict": Decoding})["predict"].max_new_tokens == 16
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "config.yaml: section 'prediction' is now called 'predict': rename it (the old name still works)"]


def test_both_names_of_one_section_are_refused_in_one_line(tmp_path):
    path = write(tmp_path, "evaluate:\n  device: cpu\nevaluation:\n  device: cuda\n")
    with pytest.raises(UserError) as info:
        load_config(path, {"evaluate": Decoding})
    assert str(info.value) == ("config.yaml: sections 'evaluation' and 'evaluate' are one section ('evaluation' is "
                               "its former name): merge them into 'evaluate'")


def test_a_former_name_is_refused_in_the_code_that_asks_for_it(tmp_path):
    path = write(tmp_path, "predict:\n  max_new_tokens: 16\n")
    with pytest.raises(TypeError, match="'prediction' is now called 'predict'"):
        load_config(path, {"prediction": Decoding})


def test_every_renamed_section_is_a_stage_section(tmp_path):
    from repo2model.core.config import KNOWN_SECTIONS, RENAMED_SECTIONS
    from repo2model.stages import pipeline

    stage_sections = {pipeline.import_stage(module).SECTION for _, module in pipeline.STAGES}
    assert stage_sections == {name for name, _ in pipeline.STAGES}  # each stage's section is named like it
    assert set(RENAMED_SECTIONS.values()) <= set(KNOWN_SECTIONS)
    assert not set(RENAMED_SECTIONS) & set(KNOWN_SECTIONS)


def test_a_users_config_with_the_former_names_runs(tmp_path, make_repo):
    """The whole command, as a user with an existing config.yaml runs it: one warning line per former name."""
    import subprocess
    import sys

    from conftest import ROOT

    repo = make_repo()
    repo.commit("first", {"a.py": "x = 1\n"})
    path = write(tmp_path, f"pipeline:\n  output_dir: out\ngit_scraper:\n  repo: {repo.path}\n"
                           "model_training:\n  max_steps: 3\nranker:\n  num_trees: 5\n")
    proc = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "--config", str(path), "--stage", "git_scraper"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    renamed = [line for line in proc.stderr.splitlines() if "is now called" in line]
    assert renamed == ["config.yaml: section 'model_training' is now called 'train_model': rename it (the old name "
                       "still works)", "config.yaml: section 'ranker' is now called 'train_ranker': rename it (the old "
                       "name still works)"]


# ------------------------------------------------------------------ --set section.key=value


def sets(*texts: str, file: Path | None = None):
    from repo2model.core.config import ConfigSource, Override

    return ConfigSource(file, tuple(Override.parse(text) for text in texts))


def test_set_values_go_on_top_of_the_file_typed_like_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "tokenizer:\n  name: x\n  size: 7\n  extensions: [.py]\n")
    source = sets("tokenizer.size=9", "tokenizer.extensions=[.rs, .toml]", "tokenizer.limit=null",
                  "tokenizer.base=models/base", "tokenizer.ratio=2", "pipeline.seed=5", file=path)
    loaded = load_config(source, SECTIONS)
    cfg = loaded["tokenizer"]
    assert (cfg.name, cfg.size, cfg.extensions, cfg.limit, cfg.ratio) == ("x", 9, [".rs", ".toml"], None, 2.0)
    assert cfg.base == tmp_path / "models" / "base"  # a path typed on the command line: from the current folder
    assert loaded["pipeline"].seed == 5
    assert load_config(path, SECTIONS)["tokenizer"].size == 7  # the file itself is unchanged


def test_set_without_a_file_sets_the_defaults_and_may_give_a_required_key(tmp_path):
    loaded = load_config(sets("tokenizer.name=y"), SECTIONS)
    assert (loaded["tokenizer"].name, loaded["tokenizer"].size) == ("y", 3)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tokenizer.size=big", "--set: tokenizer.size: expected int, got str ('big')"),
        ("tokenizer.enabled=maybe", "--set: tokenizer.enabled: expected bool, got str ('maybe')"),
        ("tokenizer.ratio=.nan", "--set: tokenizer.ratio: expected a finite number, got nan"),
        ("tokenizer.sise=4", "--set tokenizer.sise=4: unknown key 'sise' in section 'tokenizer' (allowed: base, "
                             "enabled, extensions, limit, mode, name, ratio, repo, size, weights)"),
        ("tokeniser.size=4", "--set tokeniser.size=4: unknown section 'tokeniser' (allowed: "),
        ("tokenizer.size=0", "config.yaml with --set: tokenizer.size: must be at least 1, got 0"),
        ("tokenizer.size", "--set tokenizer.size: expected section.key=value (e.g. train_model.max_steps=200)"),
        ("size=4", "--set size=4: expected section.key=value (e.g. train_model.max_steps=200)"),
        ("tokenizer.extensions=[a", "--set tokenizer.extensions=[a: the value is not valid YAML"),
    ],
)
def test_a_bad_set_is_one_line_naming_it(tmp_path, text, expected):
    path = write(tmp_path, "tokenizer:\n  name: x\n")
    with pytest.raises(UserError) as info:
        load_config(sets(text, file=path), SECTIONS)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_set_with_a_former_section_name_warns_and_applies(tmp_path, caplog):
    loaded = load_config(sets("prediction.max_new_tokens=8"), {"predict": Decoding})
    assert loaded["predict"].max_new_tokens == 8
    assert [r.getMessage() for r in caplog.records] == [
        "--set prediction.max_new_tokens=8: section 'prediction' is now called 'predict'"]


STAGE_SCRIPTS = ("git_scraper", "semantic_chunker", "index", "tokenizer", "dataset_builder", "train_model",
                 "train_ranker", "evaluate", "predict", "serve")


@pytest.mark.parametrize("name", STAGE_SCRIPTS)
def test_every_stage_script_checks_set_in_one_line_exit_2(name, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"repo2model.stages.{name}")
    required = ["--commits", "none.json", "--task", "t"] if name == "predict" else []
    section = module.SECTION
    assert module.main(["--set", f"{section}.no_such_key=1", *required]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --set {section}.no_such_key=1: unknown key 'no_such_key' "
                                               f"in section '{section}' (allowed: "), err
    # A section the script does not read is checked too (its stage module is imported for its Config).
    assert module.main(["--set", "train_model.max_steps=many", *required]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --set: train_model.max_steps: expected int, got str ('many')"]
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_a_stage_script_runs_with_the_set_values(tmp_path, make_repo, monkeypatch):
    """git_scraper.py --set: the file's repository and filters replaced from the command line."""
    import json

    from repo2model.stages import git_scraper

    repo = make_repo()
    repo.commit("first", {"src/lib.rs": "fn a() {}\n", "notes.txt": "hello\n"})
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path, "pipeline:\n  output_dir: out\ngit_scraper:\n  repo: /nonexistent\n")
    assert git_scraper.main(["--config", str(config), "--set", f"git_scraper.repo={repo.path}",
                             "--set", "git_scraper.file_filters=[.rs]", "--set", "pipeline.output_dir=elsewhere"]) == 0
    commits = json.loads((tmp_path / "elsewhere" / "commits.json").read_text())
    files = {f["path"]: f for c in commits["commits"] for f in c["files"]}
    assert files["src/lib.rs"]["patch"] and files["notes.txt"]["patch"] is None
    assert not (tmp_path / "conf" / "out").exists()


def test_a_float_in_exponent_form_without_a_dot_is_a_float(tmp_path):
    """YAML 1.1 reads 1e-4 as a string: a float field takes it (from the file and from --set), a string field keeps
    it, and a word is still refused."""
    from repo2model.stages.train_model import Config as TrainConfig

    config = tmp_path / "config.yaml"
    config.write_text("train_model:\n  learning_rate: 1e-4\n  update_learning_rate: 3E-5\n", encoding="utf-8")
    loaded = load_config(config, {"train_model": TrainConfig}, strict_sections=False)["train_model"]
    assert (loaded.learning_rate, loaded.update_learning_rate) == (1e-4, 3e-5)
    config.write_text("train_model:\n  learning_rate: one\n", encoding="utf-8")
    with pytest.raises(UserError, match="train_model.learning_rate: expected"):
        load_config(config, {"train_model": TrainConfig}, strict_sections=False)
    source = ConfigSource(None, (Override.parse("train_model.update_learning_rate=1e-4"),))
    loaded = load_config(source, {"train_model": TrainConfig}, strict_sections=False)["train_model"]
    assert loaded.update_learning_rate == 1e-4


def test_an_unquoted_off_is_the_word_where_it_is_a_choice(tmp_path):
    """YAML 1.1 reads `off` as false: a setting whose choices include off gets the word, others still refuse it."""
    from repo2model.ranking.config import RankerConfig

    config = tmp_path / "config.yaml"
    config.write_text("train_ranker:\n  language_model: off\n  prior: off\n", encoding="utf-8")
    loaded = load_config(config, {"train_ranker": RankerConfig}, strict_sections=False)["train_ranker"]
    assert (loaded.language_model, loaded.prior) == ("off", "off")
    config.write_text("train_ranker:\n  language_model: on\n", encoding="utf-8")  # on is not one of its choices
    with pytest.raises(UserError, match="train_ranker.language_model"):
        load_config(config, {"train_ranker": RankerConfig}, strict_sections=False)
