"""Benchmark: git_scraper's wall time against raw `git log --all -p --numstat`, and its peak memory
as history grows.

    python bench/bench_scraper.py                  # 10,000-commit synthetic repository
    python bench/bench_scraper.py --commits 3000
    python bench/bench_scraper.py --repo ~/projects/the-block   # an existing repository (timing only)

Generates (with `git fast-import`, seconds) a Rust-workspace-like history: several crates,
1-4 files edited per commit, new files, renames, feature branches merged with --no-ff.
Then, each in its own subprocess (so that peak RSS is measured per run with
resource.getrusage(RUSAGE_SELF/RUSAGE_CHILDREN)):

  reference  git log --all -p --numstat > /dev/null
  scraper    python git_scraper.py --repo R --output X (all branches)
  memory     the scraper on the first 1,000 commits (a branch at commit 1,000) and on all of them

and prints the wall times, their ratio (target <= 2.0), and peak RSS of the scraper's Python
process (VmHWM) and of its git children (getrusage) at both sizes (target: flat), and of one
giant commit (3,000 files, 73 MB of patches) with its files filtered out and kept. The repository is kept under
bench/_work/ (git-ignored) and reused when it already has the requested size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work"

CRATES = ["consensus", "ledger", "network", "storage", "rpc", "vm", "crypto", "cli"]
WORDS = ["block", "tx", "state", "peer", "hash", "sig", "fee", "slot", "epoch", "vote", "root", "proof"]


# ---------------------------------------------------------------- synthetic history


def rust_function(rng: random.Random) -> list[str]:
    name = f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{rng.randrange(10_000)}"
    body = [f"    let {rng.choice(WORDS)} = {rng.choice(WORDS)}.{rng.choice(WORDS)}({rng.randrange(100)});"
            for _ in range(rng.randrange(2, 9))]
    return [f"pub fn {name}(x: u64) -> u64 {{", *body, "    x", "}", ""]


def new_file(rng: random.Random) -> list[str]:
    lines = ["use std::collections::HashMap;", ""]
    for _ in range(rng.randrange(3, 12)):
        lines += rust_function(rng)
    return lines


def edit(rng: random.Random, lines: list[str]) -> list[str]:
    lines = list(lines)
    for _ in range(rng.randrange(1, 4)):
        roll = rng.random()
        at = rng.randrange(len(lines) + 1)
        if roll < 0.5:
            lines[at:at] = rust_function(rng)
        elif roll < 0.8 and lines:
            at = min(at, len(lines) - 1)
            lines[at] = f"    // {rng.choice(WORDS)} {rng.choice(WORDS)} {rng.randrange(1000)}"
        elif len(lines) > 20:
            del lines[at:at + rng.randrange(1, 6)]
    return lines


def fast_import_stream(commits: int, seed: int = 7):
    """Yields the bytes of a fast-import stream; marks :1..:N are commits."""
    rng = random.Random(seed)
    files: dict[str, list[str]] = {}
    for crate in CRATES:
        files[f"crates/{crate}/Cargo.toml"] = [f'[package]\nname = "{crate}"\nversion = "0.1.0"', ""]
        for i in range(4):
            files[f"crates/{crate}/src/mod_{i}.rs"] = new_file(rng)
    t0 = 1_600_000_000
    authors = [("Alice", "alice@example.com"), ("Bob", "bob@example.com"), ("Carol", "carol@example.com")]
    mark = 0
    main_tip = None

    def commit(ref, changes, parent, merge=None, deletes=()):
        nonlocal mark
        mark += 1
        name, email = authors[mark % len(authors)]
        when = t0 + mark * 3600
        msg = f"{rng.choice(WORDS)}: update {rng.choice(WORDS)} handling ({mark})\n".encode()
        out = [f"commit {ref}\nmark :{mark}\n".encode(),
               f"author {name} <{email}> {when} +0000\ncommitter {name} <{email}> {when} +0000\n".encode(),
               f"data {len(msg)}\n".encode(), msg]
        if parent:
            out.append(f"from :{parent}\n".encode())
        if merge:
            out.append(f"merge :{merge}\n".encode())
        for path in deletes:
            out.append(f"D {path}\n".encode())
        for path, lines in changes.items():
            data = ("\n".join(lines) + "\n").encode()
            out.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
        return b"".join(out), mark

    chunk, main_tip = commit("refs/heads/main", files, None)
    yield chunk
    while mark < commits:
        if mark % 50 == 25 and commits - mark > 8:  # a feature branch: 3 commits, 2 on main, a merge
            feature_paths = rng.sample(sorted(p for p in files if p.endswith(".rs")), 2)
            tip = main_tip
            branch = f"refs/heads/feature-{mark}"
            for _ in range(3):
                path = rng.choice(feature_paths)
                files[path] = edit(rng, files[path])
                chunk, tip = commit(branch, {path: files[path]}, tip)
                yield chunk
            others = [p for p in files if p.endswith(".rs") and p not in feature_paths]
            for _ in range(2):
                path = rng.choice(others)
                files[path] = edit(rng, files[path])
                chunk, main_tip = commit("refs/heads/main", {path: files[path]}, main_tip)
                yield chunk
            chunk, main_tip = commit("refs/heads/main", {p: files[p] for p in feature_paths}, main_tip, merge=tip)
            yield chunk
            continue
        changes, deletes = {}, []
        roll = rng.random()
        if roll < 0.05:
            crate = rng.choice(CRATES)
            path = f"crates/{crate}/src/new_{mark}.rs"
            files[path] = new_file(rng)
            changes[path] = files[path]
        elif roll < 0.08:
            old = rng.choice(sorted(p for p in files if p.endswith(".rs")))
            new = old.replace(".rs", f"_r{mark}.rs")
            files[new] = edit(rng, files.pop(old))
            changes[new] = files[new]
            deletes.append(old)
        else:
            for path in rng.sample(sorted(p for p in files if p.endswith(".rs")), rng.randrange(1, 5)):
                files[path] = edit(rng, files[path])
                changes[path] = files[path]
        chunk, main_tip = commit("refs/heads/main", changes, main_tip, deletes=deletes)
        yield chunk
        if mark == 1000:
            yield f"reset refs/heads/at-1000\nfrom :{mark}\n\n".encode()


def generate(path: Path, commits: int) -> None:
    if path.exists():
        shutil.rmtree(path)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    proc = subprocess.Popen(["git", "-C", str(path), "fast-import", "--quiet"], stdin=subprocess.PIPE)
    for chunk in fast_import_stream(commits):
        proc.stdin.write(chunk)
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit("git fast-import failed")
    subprocess.run(["git", "-C", str(path), "gc", "-q"], check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "main"], check=True)


def generate_giant(path: Path, folder: str, files: int = 3000, lines: int = 600) -> int:
    """One commit adding `files` vendored files (about 36 kB each); returns the patch bytes."""
    if path.exists():
        shutil.rmtree(path)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    rng = random.Random(3)
    total = 0
    proc = subprocess.Popen(["git", "-C", str(path), "fast-import", "--quiet"], stdin=subprocess.PIPE)
    proc.stdin.write(b"commit refs/heads/main\nauthor A <a@example.com> 1600000000 +0000\n"
                     b"committer A <a@example.com> 1600000000 +0000\ndata 6\nvendor\n")
    for i in range(files):
        data = "".join(f"pub fn f{i}_{j}() -> u64 {{ {rng.randrange(10**9)} }}\n" for j in range(lines)).encode()
        total += len(data) + lines
        proc.stdin.write(f"M 100644 inline {folder}/f{i}.rs\ndata {len(data)}\n".encode() + data + b"\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit("git fast-import failed")
    return total


def commit_count(path: Path, ref: str = "--all") -> int:
    out = subprocess.run(["git", "-C", str(path), "rev-list", "--count", ref], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


# ---------------------------------------------------------------- measurements (each in a subprocess)

MEASURE = r"""
import json, resource, subprocess, sys, time
kind, repo, out = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
if kind == "git":
    with open("/dev/null", "wb") as null:
        subprocess.run(["git", "-C", repo, "log", "--all", "-p", "--numstat"], stdout=null, check=True)
else:
    from repo2model.stages import git_scraper
    args = ["--repo", repo, "--output", out] + (["--branches", kind] if kind != "all" else [])
    assert git_scraper.main(args) == 0
seconds = time.perf_counter() - start
own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
# ru_maxrss survives exec (it would count the parent's memory at fork): VmHWM is this image's own peak
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
self_rss_mb = int(hwm[0].split()[1]) / 1024 if hwm else own.ru_maxrss / 1024
print(json.dumps({"seconds": seconds,
                  "cpu_seconds": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
                  "self_rss_mb": self_rss_mb,
                  "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measure(kind: str, repo: Path, out: Path) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", MEASURE, kind, str(repo), str(out)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=10_000, help="size of the synthetic history (>= 3000)")
    parser.add_argument("--repo", type=Path, help="benchmark this repository instead (timing only)")
    parser.add_argument("--repeat", type=int, default=2, help="timing runs each (the best is kept)")
    args = parser.parse_args()

    if args.repo:
        repo = args.repo.expanduser().resolve()
    else:
        repo = WORK / f"synthetic-{args.commits}"
        if commit_count(repo) != args.commits if repo.exists() else True:
            started = time.perf_counter()
            generate(repo, args.commits)
            print(f"generated {commit_count(repo)} commits in {time.perf_counter() - started:.1f}s: {repo}")
    out = WORK / "commits.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    n = commit_count(repo)

    git_runs = [measure("git", repo, out) for _ in range(args.repeat)]
    scraper_runs = [measure("all", repo, out) for _ in range(args.repeat)]
    git_best = min(r["seconds"] for r in git_runs)
    scraper_best = min(r["seconds"] for r in scraper_runs)
    git_cpu = min(r["cpu_seconds"] for r in git_runs)
    scraper_cpu = min(r["cpu_seconds"] for r in scraper_runs)
    size_mb = out.stat().st_size / 1e6
    print(f"repository: {repo} ({n} commits)")
    print(f"git log --all -p --numstat > /dev/null : {git_best:7.2f} s")
    print(f"git_scraper (all branches)             : {scraper_best:7.2f} s  ({n / scraper_best:,.0f} commits/s, "
          f"commits.json {size_mb:.1f} MB)")
    print(f"ratio scraper / git (wall)             : {scraper_best / git_best:7.2f}  (target <= 2.0)")
    print(f"CPU seconds (user+sys, with children)  : git {git_cpu:.2f}, scraper {scraper_cpu:.2f}, "
          f"ratio {scraper_cpu / git_cpu:.2f}  (the wall ratio is noisy when other jobs share the cores)")

    if not args.repo and n >= 1000 and commit_count(repo, "at-1000") == 1000:
        small = measure("at-1000", repo, out)
        large = min(scraper_runs, key=lambda r: r["seconds"])
        print("peak RSS (MB)      python   git children")
        print(f"  1,000 commits   {small['self_rss_mb']:7.1f}   {small['children_rss_mb']:7.1f}")
        print(f"  {n:,} commits  {large['self_rss_mb']:7.1f}   {large['children_rss_mb']:7.1f}")
        giant_commit()
        print(f"python RSS growth 1k -> {n // 1000}k commits: {large['self_rss_mb'] / small['self_rss_mb']:.2f}x; "
              f"for comparison, git log --all -p --numstat itself peaks at "
              f"{min(r['children_rss_mb'] for r in git_runs):.1f} MB on {n:,} commits")


def giant_commit() -> None:
    """Peak memory is set by the largest record, not by the largest commit git prints."""
    for folder, what in (("vendor/lib", "under vendor/ (filtered: no patch kept)"),
                         ("third_party/lib", "kept (each file's patch in the record)")):
        repo = WORK / "giant-commit"
        patch_bytes = generate_giant(repo, folder)
        result = measure("all", repo, WORK / "giant.json")
        print(f"one commit, 3,000 files, {patch_bytes / 1e6:.0f} MB of patches {what}: "
              f"{result['seconds']:.1f} s, peak RSS python {result['self_rss_mb']:.1f} MB, "
              f"git {result['children_rss_mb']:.1f} MB, commits.json {(WORK / 'giant.json').stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
