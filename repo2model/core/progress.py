"""Progress of long steps: a bar on a terminal, a plain line every few seconds anywhere else.

    for commit in progress(commits, total=n, desc="chunking", unit="commit"):
        ...
    bar = progress(total=steps, desc="train", unit="step"); bar.update(); bar.set_postfix(loss="1.23"); bar.close()

A carriage-return redraw is unreadable in a CI log, a pipeline log file or n8n's Execute Command output
(hundreds of half-drawn bars in one captured line), so where standard error is not a terminal the step
writes `chunking: 1,200/3,335 commits (36%), 41.2/s, about 52 s left` every
`REPO2MODEL_PROGRESS_SECONDS` seconds (10 by default) and a last line when it ends, if it ran long
enough to write one. `TQDM_DISABLE=1` silences both kinds.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator

from tqdm import tqdm

DEFAULT_SECONDS = 10.0


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, leave: bool = False, stream=None):
    """A tqdm bar on a terminal, a `PlainProgress` elsewhere; `disable`: neither."""
    stream = stream if stream is not None else sys.stderr
    disable = disable or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    if not disable and _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream,
                    mininterval=0.5)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, stream=stream)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """tqdm's interface (iterate, update, set_postfix, close, with) writing whole lines at an interval."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, disable: bool = False, stream=None, seconds: float | None = None):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit.strip(), disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.initial = total, initial, initial
        self.stream = stream if stream is not None else sys.stderr
        self.seconds = seconds if seconds is not None else _interval()
        self.started = self.last = time.monotonic()
        self.postfix = ""
        self.lines = 0
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last >= self.seconds:
            self.last = now
            self._write(self.line(now))

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.lines and not self.disable:  # a step short enough to print nothing stays silent
            self._write(self.line(time.monotonic(), done=True))

    def line(self, now: float, done: bool = False) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = (self.n - self.initial) / elapsed
        count = f"{self.n:,}/{self.total:,} {self.unit}" if self.total else f"{self.n:,} {self.unit}"
        parts = [count + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if done:
            parts.append(f"done in {_duration(elapsed)}")
        else:
            parts.append(f"{rate:,.1f}/s" if rate >= 1 else f"{1 / rate:,.1f} s/{self.unit}" if rate > 0 else "starting")
            if self.total and rate > 0 and self.n < self.total:
                parts.append(f"about {_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc or 'progress'}: " + ", ".join(parts)

    def _write(self, text: str) -> None:
        self.lines += 1
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the work it reports on
            self.disable = True


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("REPO2MODEL_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
