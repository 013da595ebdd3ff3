"""The watch mode on a real repository: how soon a prediction follows a file save, and what it costs while idle.

    python bench/bench_watch.py                       # axum, from bench_live.py's work folder (run that first)
    python bench/bench_watch.py --repo axum --saves 9 --idle 30

Uses the clone, the pipeline's tokenizer and the ranker (with its live ranker) that bench/bench_live.py left in
--work/<repo>/; the language model is an untrained 2-layer LLaMA over that tokenizer (its quality is not what
is measured here: the service's work is), files ranked by likelihood then by the ranker, no code index (the
context is read from HEAD). It starts `predict.py --watch` as a user would, waits for the first line, then saves
--saves files of the repository one after another (each a file not yet changed, so that the set of changed files
grows: a new prediction is due) and times each save -> JSON line; then measures the process's CPU time over
--idle seconds of quiet (psutil: user + system, all threads) and stops it with SIGINT. The saves are undone at
the end (git checkout of those files).

Printed: the start-up time, each save's latency, the median (target: <= 2 s on axum), and the idle CPU as a
share of one core (target: < 1%), beside the same process's CPU while predicting (the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default="axum", help="a history bench_live.py prepared (default axum)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-live"), help="bench_live.py's work folder")
    parser.add_argument("--saves", type=int, default=9, help="file saves to time")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of quiet whose CPU is measured")
    args = parser.parse_args()
    work = args.work.resolve() / args.repo
    repo, out = work / "repo", work / "out"
    if not (out / "ranker" / "ranker.txt").is_file():
        raise SystemExit(f"{out / 'ranker'}: no ranker: run bench/bench_live.py --repos {args.repo} first")
    model = tiny_model(work, out)
    files = files_to_save(repo, args.saves)
    proc = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), "--model", str(model), "--repo", str(repo),
                             "--watch", "--file-ranking", "likelihood"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=work, env={**os.environ, "TQDM_DISABLE": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put((time.monotonic(), line)) for line in proc.stdout], daemon=True).start()
    process = psutil.Process(proc.pid)
    try:
        started = time.monotonic()
        first_at, first = lines.get(timeout=600)
        startup = first_at - started
        busy_cpu, busy_wall = cpu_seconds(process), time.monotonic()
        latencies = []
        for path in files:
            time.sleep(1.0)  # one save at a time, as a person saves
            with open(repo / path, "a", encoding="utf-8") as fh:
                fh.write("\n// edited\n")
            saved = time.monotonic()
            arrived, line = lines.get(timeout=120)
            prediction = json.loads(line)
            assert path in [f["path"] for f in prediction["in_progress"]], (path, prediction["in_progress"])
            latencies.append(arrived - saved)
        busy = (cpu_seconds(process) - busy_cpu) / (time.monotonic() - busy_wall)
        time.sleep(2.0)  # the last prediction's aftermath
        idle_cpu, idle_wall = cpu_seconds(process), time.monotonic()
        time.sleep(args.idle)
        idle = (cpu_seconds(process) - idle_cpu) / (time.monotonic() - idle_wall)
        extra = lines.qsize()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        subprocess.run(["git", "-C", str(repo), "checkout", "--", *files], check=True)
    print(f"\n## predict.py --watch on {args.repo} ({len(json.loads(first)['files'])} files per prediction, "
          f"ranking {json.loads(first)['ranking']}; load average {os.getloadavg()[0]:.1f})\n")
    print(f"start-up to the first line: {startup:.1f}s")
    print("save -> prediction (s): " + ", ".join(f"{s:.2f}" for s in latencies))
    median = statistics.median(latencies)
    print(f"median {median:.2f}s (target <= 2 s: {'met' if median <= 2.0 else 'NOT met'}), max {max(latencies):.2f}s")
    print(f"CPU while predicting: {busy:.1%} of a core; idle for {args.idle:.0f}s: {idle:.2%} of a core "
          f"(target < 1%: {'met' if idle < 0.01 else 'NOT met'}); lines during the idle time: {extra}; "
          f"exit code after SIGINT: {code}")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def files_to_save(repo: Path, count: int) -> list[str]:
    """`count` tracked Rust files of the repository's src folders, spread over it (none changed yet)."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "*.rs"], capture_output=True, text=True,
                            check=True).stdout.split()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                           check=True).stdout
    if dirty.strip():
        raise SystemExit(f"{repo}: the working tree is not clean; clean it first")
    sources = [p for p in listed if "/src/" in p]
    step = max(1, len(sources) // count)
    return sources[::step][:count]


def tiny_model(work: Path, out: Path) -> Path:
    """An untrained 2-layer LLaMA over the pipeline's tokenizer in <work>/tiny/model, the ranker linked beside."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = work / "tiny" / "model"
    if not folder.is_dir():
        shutil.copytree(out / "tokenizer", folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        LlamaForCausalLM(config).save_pretrained(str(folder))
    link = folder.parent / "ranker"
    if not link.exists():
        link.symlink_to(out / "ranker")
    return folder


if __name__ == "__main__":
    main()
