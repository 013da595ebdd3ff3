"""Commit messages that say nothing about their change: boilerplate that a tool repeats, or almost no words.

    counts = MessageCounts()
    for commit in history:
        counts.add(commit["message"])
    counts.uninformative("codex cli local changes")     # the rule, against the messages counted so far
    counts.informative_share()                          # share of the counted messages that pass it (NaN: none)

A message is uninformative when its normalised first line (lower case; "(#123)", hashes and numbers become
"#") is repeated at least max(3, 2% of the messages counted) times, or holds fewer than two words of two or
more letters. Coding agents' "codex cli local changes" is; "Fix the parser on empty input" is not. A history
of such messages teaches a ranker that the task text carries no signal; the ranker's training therefore
hides the task's features on those targets (repo2model.ranking.features.TASK_FEATURES), so that a real task
at prediction time is still used.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

MIN_REPEATS = 3  # a first line repeated this often (or MIN_SHARE of the messages, if more) is boilerplate
MIN_SHARE = 0.02
MIN_WORDS = 2
NAN = float("nan")

_NUMBERS = re.compile(r"\(#\d+\)|[0-9a-f]{7,}|\d+")
_WORDS = re.compile(r"[a-z]{2,}")


@lru_cache(maxsize=1 << 14)
def normalized(message: str) -> str:
    """The message's first line, lower case, with pull-request numbers, hashes and numbers as "#"."""
    text = (message or "").strip()
    first = text.splitlines()[0].lower() if text else ""
    return _NUMBERS.sub("#", first).strip()


def too_short(line: str) -> bool:
    """Fewer than MIN_WORDS words of two or more letters (a normalised line)."""
    return len(_WORDS.findall(line)) < MIN_WORDS


class MessageCounts:
    """How often each normalised first line was seen; the rule above and the informative share, updated per
    message in constant time (the share is read at every target of a walk)."""

    def __init__(self, counts: dict[str, int] | None = None):
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.short = 0  # messages (with repeats) too short to say anything
        self.lines_by_count: Counter[int] = Counter()  # long enough lines: how many were seen c times
        for line, n in (counts or {}).items():
            self._add_line(line, n)

    def add(self, message: str) -> None:
        self._add_line(normalized(message), 1)

    def _add_line(self, line: str, n: int) -> None:
        before = self.counts[line]
        self.counts[line] = before + n
        self.total += n
        if too_short(line):
            self.short += n
            return
        if before:
            self.lines_by_count[before] -= 1
            if not self.lines_by_count[before]:
                del self.lines_by_count[before]
        self.lines_by_count[before + n] += 1

    def threshold(self) -> float:
        return max(MIN_REPEATS, MIN_SHARE * self.total)

    def uninformative(self, message: str) -> bool:
        """Whether `message` is boilerplate or near-empty, judged against the messages counted (its own
        occurrences included when it was counted)."""
        line = normalized(message)
        return too_short(line) or self.counts.get(line, 0) >= self.threshold()

    def informative_share(self) -> float:
        """The share of the counted messages that the rule keeps; NaN before any message."""
        if not self.total:
            return NAN
        limit = self.threshold()
        repeated = sum(c * lines for c, lines in self.lines_by_count.items() if c >= limit)
        return 1.0 - (self.short + repeated) / self.total

    def to_state(self) -> dict[str, int]:
        return dict(self.counts)


def uninformative_figures(commits: dict[str, list[str]], uninformative: set[str]) -> dict[str, dict]:
    """Per split ({split: its target commits}): its targets, how many of their messages are uninformative,
    and that share (None without targets)."""
    out = {}
    for split, chosen in commits.items():
        judged = sum(commit in uninformative for commit in chosen)
        out[split] = {"targets": len(chosen), "uninformative": judged,
                      "share": round(judged / len(chosen), 4) if chosen else None}
    return out
