"""Benchmark the semantic chunker against the parse-only floor, and an incremental update, in the same run.

    python bench/bench_chunker.py                                        # 2,000 generated commits
    python bench/bench_chunker.py ../shared/data/repos/click.bundle      # a real history (bundle or repository)
    python bench/bench_chunker.py --commits 5000 --workers 1 --keep /tmp/bench-repo

1. The history: a bundle is cloned into a temporary folder (every branch is then a
   remote-tracking one, which the scraper includes); a repository folder is used as it
   is; without one, a Rust + Python workspace history is generated with `git
   fast-import` (seeded, so every run sees the same history): 6 crates, files that grow
   to several hundred lines, commits that add, modify, delete and rename functions and
   tests, move functions between files, touch TOML and Markdown.
2. Scrapes it with the real `git_scraper.run` (not timed as part of the chunker).
3. Floor: every distinct changed file version (Rust/Python blobs of patched files)
   read into memory first, then parsed once with tree-sitter and nothing else, in
   one process.
4. The chunker stage (`semantic_chunker.run`), wall and CPU time (workers included).
5. Update (`--update N`, default 50): the history without its last N commits is
   chunked, then the whole history incrementally (`run(..., incremental=True)`); its
   chunks.jsonl must be byte-identical to step 4's.

Prints the figures, `ratio = chunker wall / floor` (target: at most 3 on 2 cores), the
same ratio in CPU seconds (the work done, whatever the machine's load), and the
incremental update's time as a share of the full run's.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from repo2model.stages import git_scraper  # noqa: E402
from repo2model.stages import semantic_chunker as sc  # noqa: E402
from repo2model.code import units as code_units  # noqa: E402
from repo2model.core.artifacts import CommitsWriter, iter_commit_dicts, iter_commits, read_commits_metadata  # noqa: E402
from repo2model.core.artifacts import read_json  # noqa: E402
from repo2model.git.objects import CatFile  # noqa: E402
from repo2model.core.paths import ArtifactPaths  # noqa: E402

CRATES = ["energy-market", "ledger", "consensus", "network", "storage", "rpc"]


class Workspace:
    """The generated repository's files, as lists of items (functions) per file."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.counter = 0
        self.files: dict[str, dict] = {}
        for crate in CRATES:
            for module in ("lib", "types", "engine", "service"):
                path = f"crates/{crate}/src/{module}.rs"
                self.files[path] = {"kind": "rust", "items": [self.rust_fn() for _ in range(rng.randint(8, 20))],
                                    "tests": [self.rust_test() for _ in range(rng.randint(1, 4))]}
        for module in ("cli", "report", "tools"):
            path = f"scripts/{module}.py"
            self.files[path] = {"kind": "python", "items": [self.py_fn() for _ in range(rng.randint(6, 14))], "tests": []}
        self.docs = ["# Workspace", ""]
        self.version = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def rust_fn(self) -> list[str]:
        name = self.name("compute")
        body = [f"    let v{i} = input.wrapping_mul({self.rng.randint(2, 99)}) + {i};" for i in range(self.rng.randint(3, 12))]
        return [f"/// Computes {name}.", f"pub fn {name}(input: u64) -> u64 {{", *body, "    input", "}"]

    def rust_test(self) -> list[str]:
        name = self.name("checks")
        return ["    #[test]", f"    fn {name}() {{", f"        assert_eq!({self.rng.randint(1, 9)}, {self.rng.randint(1, 9)});", "    }"]

    def py_fn(self) -> list[str]:
        name = self.name("step")
        body = [f"    total += value * {self.rng.randint(2, 99)}" for _ in range(self.rng.randint(2, 10))]
        return [f"def {name}(value):", "    total = 0", *body, "    return total"]

    def render(self, path: str) -> str:
        spec = self.files[path]
        if spec["kind"] == "python":
            return "import math\n\n\n" + "\n\n\n".join("\n".join(i) for i in spec["items"]) + "\n"
        out = "use std::collections::HashMap;\n\n" + "\n\n".join("\n".join(i) for i in spec["items"]) + "\n"
        if spec["tests"]:
            out += "\n#[cfg(test)]\nmod tests {\n    use super::*;\n\n" + "\n\n".join("\n".join(t) for t in spec["tests"]) + "\n}\n"
        return out

    def change(self) -> dict[str, str]:
        """Apply one random commit's worth of edits; returns {path: new content}."""
        rng = self.rng
        touched = {}
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            path = rng.choice(sorted(self.files))
            spec = self.files[path]
            op = rng.random()
            items = spec["items"]
            if op < 0.35 or len(items) < 3:
                items.insert(rng.randrange(len(items) + 1), self.rust_fn() if spec["kind"] == "rust" else self.py_fn())
            elif op < 0.70:
                item = rng.choice(items)
                line = rng.randrange(2, len(item) - 1)
                item[line] = item[line].replace("+", "^", 1) if "+" in item[line] else item[line] + "  // tweak"
            elif op < 0.78:
                items.pop(rng.randrange(len(items)))
            elif op < 0.84:
                item = rng.choice(items)
                old = item[1].split("(")[0].split()[-1] if spec["kind"] == "rust" else item[0][4:].split("(")[0]
                new = self.name("renamed")
                items[items.index(item)] = [l.replace(old, new) for l in item]
            elif op < 0.90 and spec["kind"] == "rust":
                spec["tests"].append(self.rust_test())
            else:
                other = rng.choice([p for p in self.files if self.files[p]["kind"] == spec["kind"] and p != path])
                self.files[other]["items"].append(items.pop(rng.randrange(len(items))))
                touched[other] = self.render(other)
            touched[path] = self.render(path)
        if rng.random() < 0.1:
            self.docs.append(f"- change {self.counter}")
            touched["README.md"] = "\n".join(self.docs) + "\n"
        if rng.random() < 0.05:
            self.version += 1
            crate = rng.choice(CRATES)
            touched[f"crates/{crate}/Cargo.toml"] = cargo_toml(crate, self.version)
        return touched


def cargo_toml(crate: str, version: int = 0) -> str:
    return f'[package]\nname = "{crate}"\nversion = "0.{version}.0"\nedition = "2021"\n'


def generate(repo: Path, commits: int, seed: int) -> None:
    """A history of `commits` commits written with one `git fast-import`."""
    rng = random.Random(seed)
    workspace = Workspace(rng)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    stream = []

    def blob_cmds(files: dict[str, str]) -> None:
        for path, content in sorted(files.items()):
            data = content.encode()
            stream.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")

    authors = [("Alice Example", "alice@example.com"), ("Bob Builder", "bob@example.com"), ("Carol Coder", "carol@example.com")]
    start = 1_700_000_000
    for index in range(commits):
        if index == 0:
            files = {path: workspace.render(path) for path in workspace.files}
            files.update({f"crates/{c}/Cargo.toml": cargo_toml(c) for c in CRATES})
            files["Cargo.toml"] = '[workspace]\nmembers = ["crates/*"]\n'
            files["README.md"] = "# Workspace\n"
        else:
            files = workspace.change()
        name, email = authors[index % len(authors)]
        when = start + index * 600
        message = f"commit {index}".encode()
        stream.append(
            f"commit refs/heads/main\nauthor {name} <{email}> {when} +0000\ncommitter {name} <{email}> {when} +0000\n"
            f"data {len(message)}\n".encode() + message + b"\n"
        )
        blob_cmds(files)
        stream.append(b"\n")
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input=b"".join(stream), check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], check=True)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the chunker's workers, their git)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_floor(paths: ArtifactPaths, repo: Path, languages) -> tuple[int, int, float, float, float]:
    """(versions, bytes, read seconds, parse seconds, parse CPU seconds): every distinct changed version parsed once."""
    blobs: dict[str, str] = {}
    for commit in iter_commits(paths.commits):
        for change in commit.files:
            language = code_units.language_of(change.path)
            if change.patch is None or language not in languages:
                continue
            for blob in (change.old_blob, change.new_blob):
                if blob:
                    blobs[blob] = language
    started = time.perf_counter()
    with CatFile(repo) as objects:
        sources = [(language, objects.read(blob)) for blob, language in blobs.items()]
    read_seconds = time.perf_counter() - started
    missing = sum(source is None for _, source in sources)
    if missing:  # a partial clone or pruned mirror: the chunker degrades those files too
        print(f"  {missing} file versions missing from the repository: left out of the floor")
        sources = [(language, source) for language, source in sources if source is not None]
    for language in set(blobs.values()):
        code_units.parse(language, b"")  # build the parsers outside the timing
    started, cpu = time.perf_counter(), time.process_time()
    for language, source in sources:
        code_units.parse(language, source)
    parse_seconds, parse_cpu = time.perf_counter() - started, time.process_time() - cpu
    return len(sources), sum(len(s) for _, s in sources), read_seconds, parse_seconds, parse_cpu


def prepare(history: Path | None, base: Path, commits: int, seed: int) -> Path:
    """The repository to benchmark: `history` (a bundle, cloned; or a repository), else a generated one."""
    repo = base / "repo"
    if history is not None and history.is_dir():
        return history
    if (repo / ".git").exists():
        return repo
    started = time.perf_counter()
    if history is not None:
        subprocess.run(["git", "clone", "-q", str(history), str(repo)], check=True)
        print(f"cloned {history.name} in {time.perf_counter() - started:.1f}s")
    else:
        generate(repo, commits, seed)
        print(f"generated {commits} commits in {time.perf_counter() - started:.1f}s")
    return repo


def measure_update(paths: ArtifactPaths, cfg: sc.Config, left_out: int, base: Path) -> tuple[int, float, float, bool]:
    """(commits added, wall, CPU) of an incremental run after the history without its last `left_out`
    commits was chunked, and whether its chunks.jsonl equals the full run's."""
    update = ArtifactPaths.under(base / "update", compress=False)
    update.output_dir.mkdir(parents=True, exist_ok=True)
    records = list(iter_commit_dicts(paths.commits))
    left_out = min(left_out, len(records) - 1)
    with CommitsWriter(update.commits) as writer:
        for record in records[: len(records) - left_out]:
            writer.add(record)
        writer.metadata = {**read_commits_metadata(paths.commits), "total_commits": len(records) - left_out}
    sc.run(cfg, update, incremental=True)
    shutil.copy(paths.commits, update.commits)
    started, cpu = time.perf_counter(), cpu_seconds()
    sc.run(cfg, update, incremental=True)
    wall, used = time.perf_counter() - started, cpu_seconds() - cpu
    return left_out, wall, used, filecmp.cmp(update.chunks, paths.chunks, shallow=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("history", nargs="?", type=Path,
                        help="a bundle or repository, e.g. ../shared/data/repos/click.bundle (default: generated)")
    parser.add_argument("--commits", type=int, default=2000, help="generated history: commits")
    parser.add_argument("--workers", type=int, default=0, help="chunker workers (0 = one per core)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--update", type=int, default=50, help="commits added by the incremental run (0: skip)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-chunker-") as tmp:
        base = args.keep or Path(tmp)
        repo = prepare(args.history.expanduser().resolve() if args.history else None, base, args.commits, args.seed)
        paths = ArtifactPaths.under(base / "outputs", compress=False)
        started = time.perf_counter()
        git_scraper.run(git_scraper.Config(repo=repo), paths)
        print(f"scraped in {time.perf_counter() - started:.1f}s")

        cfg = sc.Config(workers=args.workers)
        versions, size, read_s, parse_s, parse_cpu = measure_floor(paths, repo, cfg.parse_languages)
        started, cpu = time.perf_counter(), cpu_seconds()
        sc.run(cfg, paths)
        wall, chunker_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        load = os.getloadavg()[0]
        stats = read_json(paths.chunking_stats)
        update = measure_update(paths, cfg, args.update, base) if args.update else None

    print(f"commits                 {stats['commits']}")
    print(f"file changes            {stats['files']}  (parsed {stats['parsed_files']}, parse errors {stats['parse_error_files']})")
    print(f"distinct versions       {versions}  ({size / 1e6:.1f} MB)")
    print(f"chunks                  {stats['chunks']}  (uncovered lines {stats['uncovered_lines']})")
    print(f"floor: read blobs       {read_s:.2f}s")
    print(f"floor: parse once       {parse_s:.2f}s wall, {parse_cpu:.2f}s CPU  ({size / 1e6 / parse_s:.1f} MB/s, one process)")
    print(f"chunker ({stats['workers']} workers)     {wall:.2f}s wall, {chunker_cpu:.2f}s CPU  "
          f"({stats['chunks'] / wall:.0f} chunks/s, {stats['commits'] / wall:.0f} commits/s; "
          f"{stats['parsed_versions']} parses, {stats['parse_seconds']:.2f}s in them)")
    print(f"load average during the run: {load:.1f} on {os.cpu_count()} cores")
    print(f"ratio chunker wall / parse floor wall = {wall / parse_s:.2f}  (target <= 3)")
    print(f"ratio chunker CPU / parse floor CPU = {chunker_cpu / parse_cpu:.2f}  (work done, whatever the load)")
    if update is not None:
        added, update_wall, update_cpu, same = update
        print(f"incremental update (+{added} commits): {update_wall:.2f}s wall, {update_cpu:.2f}s CPU; "
              f"ratio to the full run: wall {update_wall / wall:.2f}, CPU {update_cpu / chunker_cpu:.2f}; "
              f"chunks.jsonl {'byte-identical to' if same else 'DIFFERENT from'} the full run's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
