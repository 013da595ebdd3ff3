"""Measure what secret redaction removes from real histories: counts per type and a sample of values.

    python bench/bench_redaction.py                                  # ../shared/data/repos/{fd,axum,click}.bundle
    python bench/bench_redaction.py --samples 10 ../shared/data/repos/axum.bundle

For each history (a bundle is cloned into a temporary folder):
1. stages 1-2 as a user runs them (`git_scraper.py`, `semantic_chunker.py`, default settings):
   the redactions per type in commits.json's metadata, and the placeholders per type in
   chunks.jsonl (the file versions the chunker shows in `before`/`after`);
2. the same history scraped without redaction, then every commit message, file path and
   patch (and every changed Rust/Python file version, as the chunker reads them) passed
   through the Redactor with a callback that records each value it would replace: a sample
   of those values per type, with the file they came from, to judge false positives
   (git hashes, UUIDs and test vectors in code should mostly survive).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from repo2model.git.objects import CatFile  # noqa: E402
from repo2model.git.redact import Redactor  # noqa: E402
from repo2model.git.refs import BranchGraph, Repository, list_commits, select_refs  # noqa: E402
from repo2model.git.scraping import Scraper, ScraperConfig  # noqa: E402

DEFAULT_HISTORIES = [ROOT.parent / "shared" / "data" / "repos" / f"{name}.bundle" for name in ("fd", "axum", "click")]
PLACEHOLDER = re.compile(r"<REDACTED:([a-z0-9_]+)>")
PARSED = (".rs", ".py")


def stages_1_2(repo: Path, work: Path) -> tuple[dict, Counter]:
    out = work / f"out-{repo.name}"
    config = work / f"{repo.name}.yaml"
    config.write_text(f"pipeline:\n  output_dir: {out}\ngit_scraper:\n  repo: {repo}\n", encoding="utf-8")
    for stage in ("git_scraper", "semantic_chunker"):
        proc = subprocess.run([sys.executable, str(ROOT / f"{stage}.py"), "--config", str(config)],
                              capture_output=True, text=True, cwd=work)
        if proc.returncode != 0:
            raise SystemExit(f"{stage} failed on {repo}:\n{proc.stderr[-2000:]}")
    with open(out / "commits.json", encoding="utf-8") as fh:
        scraped = json.loads(fh.readline()[len('{"metadata": '):].rstrip().rstrip(","))["redactions"]
    in_chunks: Counter = Counter()
    with open(out / "chunks.jsonl", encoding="utf-8") as fh:
        for line in fh:
            chunk = json.loads(line)
            for side in ("before", "after"):
                if chunk[side]:
                    in_chunks.update(PLACEHOLDER.findall(chunk[side]))
    return scraped, in_chunks


def found_values(repo: Path) -> dict[str, list[tuple[str, str]]]:
    """Every value the default Redactor would replace, by type: (where, value)."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    where = [""]
    redactor = Redactor(on_redact=lambda kind, value: found[kind].append((where[0], value)))
    cfg = ScraperConfig(repo=repo, redact_secrets=False)
    repository = Repository.open(repo)
    refs = select_refs(repository, cfg)
    hashes = list_commits(repository, refs.scrape, cfg)
    BranchGraph.build(repository, refs)
    blobs: dict[str, str] = {}
    for commit in Scraper(repository, cfg).commits(hashes):
        where[0] = f"{commit.hash[:10]} message"
        redactor.redact(commit.message)
        for change in commit.files:
            where[0] = f"{commit.hash[:10]} path"
            redactor.redact_path(change.path)
            if change.patch:
                where[0] = f"{commit.hash[:10]} {change.path}"
                redactor.redact(change.patch, path=change.path)
            if change.new_blob and change.path.endswith(PARSED) and change.patch_skipped is None:
                blobs.setdefault(change.new_blob, change.path)
    with CatFile(repo) as objects:
        for blob, path in blobs.items():
            data = objects.read(blob)
            if data is not None:
                where[0] = f"file version {blob[:10]} {path}"
                redactor.redact(data.decode("utf-8", "replace"), path=path)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("histories", nargs="*", type=Path, default=DEFAULT_HISTORIES)
    parser.add_argument("--samples", type=int, default=6, help="values shown per type and history")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-redaction-"))
    try:
        for history in args.histories:
            history = history.expanduser().resolve()
            repo = history if history.is_dir() else work / history.stem
            if not repo.exists():
                subprocess.run(["git", "clone", "-q", str(history), str(repo)], check=True)
            scraped, in_chunks = stages_1_2(repo, work)
            found = found_values(repo)
            print(f"== {history.stem}: commits.json redactions {dict(scraped)}; "
                  f"placeholders in chunk before/after {dict(sorted(in_chunks.items()))}")
            rng = random.Random(0)
            for kind, values in sorted(found.items()):
                first_place = {}
                for where, value in values:
                    first_place.setdefault(value, where)
                distinct = sorted(first_place)
                print(f"   {kind}: {len(values)} found ({len(distinct)} distinct values, in patches, messages, "
                      f"paths and changed file versions)")
                for value in rng.sample(distinct, min(args.samples, len(distinct))):
                    print(f"      {value[:48]!r:52} {first_place[value][:90]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
