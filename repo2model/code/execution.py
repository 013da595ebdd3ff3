"""Chunking a whole history in order: the plan (batches of commits to chunk and, between them, commits
whose previous chunks are reused) and its execution, in this process or in a pool of workers.

Pool tasks carry line numbers of commits.json and answers carry a spool file's
name, never the data itself: a pipe never holds megabytes, so stopping the pool
(Ctrl-C) cannot hang on one. At most twice as many batches as workers are in flight:
the reader never runs far ahead of the writer.

Workers start from a fork server (a clean process), never by forking this one: a process that has
loaded torch, ONNX Runtime or Qdrant has threads, and a child forked while one of them holds a lock
can wait on it forever. A worker that dies (killed, out of memory) stops the stage with one line
instead of leaving its batch unanswered.
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import shutil
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from repo2model.code.chunking import Chunker, ChunkerConfig, ChunkingStats
from repo2model.code.previous import PreviousChunks
from repo2model.core.artifacts import open_text
from repo2model.core.errors import UserError
from repo2model.core.records import Commit
from repo2model.git.objects import CatFile
from repo2model.git.redact import Redactor


@dataclass
class Batch:
    """Commits to chunk: their line numbers in commits.json (pool workers read the records
    themselves) and the records (chunked in-process when there is one worker)."""

    lines: list[int] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def make_plan(records: Iterator[tuple[int, dict]], previous: PreviousChunks | None, size: int) -> Iterator[Batch | str]:
    """Batches of commits to chunk and, between them in commits.json's order, reused commits (their hash)."""
    batch = Batch()
    for line, record in records:
        if previous is not None and previous.has(record["hash"]):
            if batch.lines:
                yield batch
                batch = Batch()
            yield record["hash"]
            continue
        batch.lines.append(line)
        batch.records.append(record)
        if len(batch.lines) == size:
            yield batch
            batch = Batch()
    if batch.lines:
        yield batch


@dataclass
class Part:
    """One piece of chunks.jsonl, in order: a reused commit, or a chunked batch (text or spool file)."""

    commits: int
    reused: str | None = None
    stats: ChunkingStats | None = None
    text: str | None = None
    spool_file: Path | None = None

    def write_to(self, out: IO[str]) -> None:
        if self.text is not None:
            out.write(self.text)
            return
        with open(self.spool_file, encoding="utf-8", newline="") as fh:
            shutil.copyfileobj(fh, out, 1 << 20)
        self.spool_file.unlink()


def execute_plan(plan: Iterator[Batch | str], commits_path: Path, cfg: ChunkerConfig, repo: Path | None,
                 workers: int, redactor: Redactor | None, spool: Path) -> Iterator[Part]:
    """The plan's parts in order; batches chunked in-process (one worker) or by a pool (see the module
    docstring), their chunks in `spool` until written."""
    if workers <= 1:
        worker = _Worker(Chunker(CatFile(repo) if repo is not None else None, cfg, redactor))
        try:
            for item in plan:
                if isinstance(item, str):
                    yield Part(1, reused=item)
                else:
                    text, stats = worker.chunk(item.records)
                    yield Part(len(item.records), stats=stats, text=text)
        finally:
            worker.close()
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=_init_pool_worker, initargs=(commits_path, repo, cfg, redactor))
    try:
        in_flight: collections.deque = collections.deque()
        limit = workers * 2  # bounded: the reader never runs far ahead of the writer
        for number, item in enumerate(plan):
            if isinstance(item, str):
                in_flight.append(Part(1, reused=item))
            else:
                spool_file = spool / f"{number}.jsonl"
                with _interrupts_deferred():  # workers start on a submit: from their start on, not only from
                    future = pool.submit(_chunk_lines, item.lines, str(spool_file))  # the initializer on
                in_flight.append((future, spool_file))
            while len(in_flight) > limit:
                yield _resolve(in_flight.popleft())
        while in_flight:
            yield _resolve(in_flight.popleft())
    except BrokenProcessPool:
        raise UserError(f"semantic_chunker: a worker process stopped (killed, out of memory, or it could not start: "
                        f"see above); fewer workers (semantic_chunker.workers, now {workers}) use less memory") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """SIGINT held back while the block runs, then handled as if it came after the block.

    Processes started in the block inherit SIGINT blocked (fork and exec keep the signal mask): a fork
    server or worker starting up never sees Ctrl-C, and the initializer then ignores it for good. This
    process does not lose it: ignoring SIGINT here instead (SIG_IGN) would drop a Ctrl-C that arrives
    during the block, and the stage would run to its end. Only the main thread handles signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one held back is handled here, by the recorder
        signal.signal(signal.SIGINT, previous)  # or, if its handler runs later, by this one
        if received:
            signal.raise_signal(signal.SIGINT)  # now as Ctrl-C would be: KeyboardInterrupt, or nothing if ignored


def _resolve(entry) -> Part:
    if isinstance(entry, Part):
        return entry
    answer, spool_file = entry
    stats, count = answer.result()
    return Part(count, stats=stats, spool_file=spool_file)


@dataclass
class _Worker:
    """What one process chunks with; pool workers also read their records from commits.json."""

    chunker: Chunker
    commits: _CommitLines | None = None

    def chunk(self, records: list[dict]) -> tuple[str, ChunkingStats]:
        stats = ChunkingStats()
        commits = [Commit.from_dict(record) for record in records]
        text = "".join(
            json.dumps(vars(chunk), ensure_ascii=False) + "\n"  # flat: no asdict copy
            for chunks in self.chunker.chunk_commits(commits, stats) for chunk in chunks
        )
        return text, stats

    def close(self) -> None:
        if self.chunker.objects is not None:
            self.chunker.objects.close()
        if self.commits is not None:
            self.commits.close()


class _CommitLines:
    """Commit records of commits.json by line number, reading forward (a worker's tasks come in
    increasing order; it reopens the file if one does not)."""

    def __init__(self, path: Path):
        self.path = path
        self._stack = contextlib.ExitStack()
        self._lines: Iterator[str] | None = None
        self._position = 0  # lines read so far

    def records(self, numbers: list[int]) -> list[dict]:
        if self._lines is None or numbers[0] <= self._position:
            self.close()
            self._lines, self._position = iter(self._stack.enter_context(open_text(self.path))), 0
        records = []
        for number in numbers:
            line = ""
            while self._position < number:
                line = next(self._lines, None)
                if line is None:
                    raise UserError(f"{self.path}: ends before line {number}: it changed while being chunked")
                self._position += 1
            records.append(json.loads(line.rstrip("\n").rstrip(",")))  # CommitsWriter: one commit a line
        return records

    def close(self) -> None:
        self._stack.close()


_worker: _Worker | None = None  # in each pool process


def _init_pool_worker(commits_path: Path, repo: Path | None, cfg: ChunkerConfig, redactor: Redactor | None) -> None:
    global _worker
    # Ctrl-C reaches the whole process group: the parent stops the pool; workers (and the git
    # processes they start, which inherit this) must not die mid-batch printing tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker = _Worker(Chunker(CatFile(repo) if repo is not None else None, cfg, redactor), _CommitLines(commits_path))


def _chunk_lines(lines: list[int], spool_file: str) -> tuple[ChunkingStats, int]:
    text, stats = _worker.chunk(_worker.commits.records(lines))
    with open(spool_file, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    return stats, len(lines)
