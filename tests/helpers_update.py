"""A tiny project for the update tests: a real repository built commit by commit, a config for a tiny model,
and the pipeline run in-process on it (tests/test_update.py, tests/test_n8n_update.py)."""

from __future__ import annotations

import json
from pathlib import Path

from repo2model.stages import pipeline
from conftest import GitRepo
from repo2model.language.examples import ExampleSet

ALICE = ("Alice Example", "alice@example.com")
BOB = ("Bob Builder", "bob@example.com")
CAROL = ("Carol Newcomer", "carol@example.com")  # joins after the first run: no author token for her

CONFIG = """\
pipeline:
  output_dir: out
git_scraper:
  repo: repo
semantic_chunker:
  workers: 1
tokenizer:
  vocab_size: 600
  min_frequency: 1
dataset_builder:
  context_window: 256
  target_window: 128
  history_commits: 2
train_model:
  hidden_size: 32
  num_layers: 1
  num_heads: 2
  intermediate_size: 64
  max_steps: 10
  warmup_steps: 2
  eval_every: 5
  save_every: 5
  update_max_steps: {update_steps}
  update_warmup_steps: 1
  device: cpu
  precision: fp32
  micro_batch_size: 4
  effective_batch_size: 4
  max_minutes: null
  num_threads: 1
  log_every: 1
train_ranker:
  num_trees: 20
evaluate:
  max_examples: 2
predict:
  max_new_tokens: 16
"""


class Project:
    """A copy of the base folder: the repository, the config and the pipeline's output folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.repo = ExistingRepo(folder / "repo")
        self.config = folder / "config.yaml"
        self.out = folder / "out"

    def update(self, *args: str) -> int:
        return pipeline.main(["--config", str(self.config), *args])

    def results(self) -> dict:
        return json.loads((self.out / "pipeline_results.json").read_text())

    def marker(self, folder: str = "model") -> dict:
        return json.loads((self.out / folder / "training_info.json").read_text())

    def split(self, name: str, folder: Path | None = None) -> ExampleSet:
        return ExampleSet.load((folder or self.out) / f"training_data_{name}.pt")

    def commits(self) -> list[str]:
        return self.repo.git("rev-list", "--reverse", "HEAD").split()


class ExistingRepo(GitRepo):
    """A GitRepo over a repository that already exists (a copy): commits go on from its latest date."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tick = int(self.git("rev-list", "--count", "HEAD"))


def add_commits(repo: GitRepo, count: int, start: int, authors=(ALICE, BOB), modules=("core", "net", "store")) -> list[str]:
    made = []
    for k in range(start, start + count):
        module = modules[k % len(modules)]
        body = "".join(f"def f{j}_{k % 5}(x):\n    return x + {j * k}\n\n" for j in range(k % 6 + 2))
        files = {f"{module}/m{k % 5}.py": body}
        if k % 4 == 0:
            files[f"tests/test_{module}.py"] = f"def test_{module}_{k}():\n    assert {k} == {k}\n"
        made.append(repo.commit(f"{module}: change number {k}", files, author=authors[k % len(authors)]))
    return made



def build_base(folder: Path, extra_config: str = "") -> "Project":
    """40 commits learnt by the full pipeline, reached by an --update that had no model to continue."""
    repo = GitRepo(folder / "repo")
    add_commits(repo, 40, 0)
    (folder / "config.yaml").write_text(CONFIG.format(update_steps=4) + extra_config, encoding="utf-8")
    project = Project(folder)
    assert project.update("--update") == 0
    return project
