"""Stage `index`: the repository's code units at the current tree, embedded and searchable, in Qdrant.

Reads the repository (the one commits.json records, else git_scraper.repo; --repo overrides) at `index.rev`
(HEAD by default: the committed tree, not uncommitted edits), with the git_scraper section's exclude_globs,
file_filters and secret redaction. Writes

    <output_dir>/index/index_info.json   what the index holds: repository, commit, tree, model, units per kind
    <output_dir>/index/shard/            the embedded store (Qdrant Edge), or index/qdrant/ with
                                         `embedded: local` (qdrant-client's local mode); with `url` set the
                                         points go to that Qdrant server's collection instead

Units are described in repo2model/retrieval/units.py, vectors in embedding.py and sparse.py, the store and
search in unit_index.py (the package's __init__ lists its modules). The first run embeds every unit (a progress
bar); a later run (the pipeline reruns this stage whenever the tree at `rev` changed) re-embeds only the units
whose text changed and refreshes the rest's line numbers, so an update after a few commits takes seconds. The
index is rebuilt from scratch when its format, embedder (model, backend, weights), max_tokens, text_files,
whole_file_lines, store or repository changed (index_info.json says which), or with --rebuild.

Embedding runs in ONNX Runtime with int8 weights by default (`index.backend`; the first run exports the model
once into ~/.cache/repo2model, or $REPO2MODEL_CACHE: about 20 s), in torch on a CUDA GPU when there is one, or
in torch on the CPU with `backend: torch`. Each unit's first `max_tokens` (128) word pieces are embedded; BM25
counts all of its words.

A file whose blob the repository lacks (a partial clone, a pruned mirror: git is never let fetch it) gets no
unit; the summary counts them (`missing_objects`, with a few paths in `missing_sample`).

    python index.py --config config.yaml
    python index.py --repo ../other-repo --output-dir outputs-other
    python index.py --config config.yaml --rebuild

A Qdrant server instead of the embedded store (`index.url`; the API key from the environment variable named by
`index.api_key_env`, QDRANT_API_KEY by default):

    docker run -d --name qdrant -p 6333:6333 -v "$PWD/qdrant_storage:/qdrant/storage" \\
        -e QDRANT__SERVICE__API_KEY="$QDRANT_API_KEY" qdrant/qdrant
    python index.py --config config.yaml --url http://127.0.0.1:6333

Config keys: the `index` section of config.yaml, documented key by key there.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from repo2model.core.artifacts import read_commits_metadata
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.config import load_config
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.git.commands import git, open_repository
from repo2model.git.scraping import PathFilter, ScraperConfig
from repo2model.retrieval.index_config import SECTION, IndexConfig
from repo2model.retrieval.unit_index import UnitIndex, summary_dict, summary_line

log = logging.getLogger("index")

Config = IndexConfig
USES_SECTIONS = {"scraper": "git_scraper"}  # the repository, its filters and the secret redaction
CODE = ("core", "git", "code", "retrieval")  # the packages it runs (its fingerprint covers them)


def stage_inputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return []  # the repository's tree: see input_state


def stage_outputs(cfg: Config, paths: ArtifactPaths) -> list[Path]:
    return [paths.index_dir]


def input_state(cfg: Config, paths: ArtifactPaths) -> str:
    """The tree the index would be built from (its id), and where the points go: a new commit that changes
    the tree, or a new server, makes the stage run again."""
    repo = recorded_repository(paths)
    if repo is None:
        return f"repository unknown; url {cfg.url}"
    try:
        tree = git(open_repository(repo), "rev-parse", f"{cfg.rev}^{{tree}}", check=False).strip()
    except UserError as exc:
        tree = f"unavailable: {exc}"
    return f"{repo} {cfg.rev} {tree}; url {cfg.url}"


def recorded_repository(paths: ArtifactPaths) -> Path | None:
    """The repository commits.json was scraped from, else the one the index already holds (commits.json may
    be gone: pipeline.keep_intermediates: false)."""
    repo = None
    if Path(paths.commits).exists():
        repo = read_commits_metadata(paths.commits).get("repository")
    repo = repo or UnitIndex.read_info(paths.index_dir).get("repository")
    return Path(repo) if isinstance(repo, str) and repo else None


def run(cfg: Config, paths: ArtifactPaths, seed: int = 42, scraper: ScraperConfig | None = None,
        repo: Path | None = None, rebuild: bool = False) -> dict:
    """Build or update the index of `repo` (default: the repository commits.json records, else scraper.repo)."""
    scraper = scraper or ScraperConfig()
    repo = repo or recorded_repository(paths) or scraper.repo
    top = open_repository(repo)
    log.info("index: %s at %s -> %s", top, cfg.rev, cfg.url or paths.index_dir)
    index = UnitIndex(cfg, paths.index_dir)
    filters = PathFilter(scraper.file_filters, scraper.exclude_globs)
    summary = index.update(top, cfg.rev, redactor=scraper.redactor(), excluded=filters.excluded, rebuild=rebuild)
    (log.warning if summary.missing_objects else log.info)(summary_line(summary))
    return summary_dict(summary)


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--repo", type=Path, help="the repository to index (default: the one commits.json "
                                                  "records, else git_scraper.repo)")
    parser.add_argument("--rev", help="override index.rev (a branch, tag or commit; default HEAD)")
    parser.add_argument("--url", help="override index.url (a Qdrant server, e.g. http://127.0.0.1:6333)")
    parser.add_argument("--rebuild", action="store_true", help="embed every unit again, from an empty index")
    parser.add_argument("--threads", type=int, dest="num_threads", help="override index.num_threads")
    args = parser.parse_args(argv)
    cfg, pipeline, paths = load_stage(args, SECTION, Config)
    cfg = apply_overrides(cfg, SECTION, {"rev": args.rev, "url": args.url, "num_threads": args.num_threads})
    scraper = ScraperConfig()
    if args.config is not None:
        scraper = load_config(args.config, {"git_scraper": ScraperConfig}, strict_sections=False)["git_scraper"]
    if args.repo is not None:
        scraper = dataclasses.replace(scraper, repo=args.repo.expanduser().resolve())
    run(cfg, paths, seed=pipeline.seed, scraper=scraper, repo=args.repo, rebuild=args.rebuild)
    return 0


if __name__ == "__main__":
    sys.exit(main())
