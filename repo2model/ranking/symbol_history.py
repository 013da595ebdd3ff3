"""What the history says about each symbol (a named unit of one file): when it changed, and with what.

    symbols = SymbolHistory()
    for commit, chunks in history:                  # oldest first, in step with PastCommits.observe
        symbols.observe(chunks)
    symbols.changes_before(("src/walk.rs", "spawn_senders"), position)   # only what came before `position`
    state = symbols.to_state()                      # JSON: saved with the ranker (symbol_history.json)

A symbol is a (file, symbol) pair as the chunker names it (`Market::settle`); every chunk with a symbol counts,
hunks do not. Each symbol keeps the positions (in commits.json's order) of the commits that changed it, so
every query answers "as of" a position: the features of a target use the commits before it and nothing after,
even when the history has been read further (the benchmark scores its test commits after replaying them all).

Queries (each as of a position, exclusive):
    changes_before, last_change, first_change    the symbol's own change counts and times
    similar_evidence    for the commits most similar to the task (PastCommits.similar_files' list): which of
                        their symbols each changed, weighted by similarity (the similar-commits signal per symbol)
    cochange            association rules between symbols: from the symbols the last `recent` commits changed to
                        each candidate, (confidence, support), as ROSE mines them for files
Commits that change more than MAX_COMMIT_SYMBOLS symbols are no co-change evidence (like ROSE's large commits).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass

STATE_FORMAT = 1
MAX_COMMIT_SYMBOLS = 60
Key = tuple[str, str]  # (path, symbol)


def changed_symbols(chunks: list[dict]) -> list[Key]:
    """The (file, symbol) pairs a commit's chunks changed (hunks have no symbol), in order."""
    return list(dict.fromkeys((c["file"], c["symbol"]) for c in chunks
                              if c.get("symbol") and c.get("kind") != "hunk"))


@dataclass
class SimilarSymbol:
    """The similar commits' evidence for one symbol."""

    score: float = 0.0  # sum of similarity / symbols of each similar commit that changed it
    hits: int = 0  # how many of the similar commits changed it
    best_rank: int = 0  # rank (1 = most similar) of the most similar such commit


class SymbolHistory:
    """Per-symbol change positions of the commits observed so far (see the module docstring)."""

    def __init__(self):
        self.position = 0  # commits observed
        self.changes: dict[Key, list[int]] = {}  # ascending positions
        self.commit_symbols: dict[int, list[Key]] = {}  # position -> the symbols that commit changed
        self.file_symbols: dict[str, list[str]] = {}  # path -> its symbols, in the order they first changed

    def observe(self, chunks: list[dict]) -> None:
        """Take in the next commit (call once per commit, in the order PastCommits observes them)."""
        keys = changed_symbols(chunks)
        for key in keys:
            if key not in self.changes:
                self.changes[key] = []
                self.file_symbols.setdefault(key[0], []).append(key[1])
            self.changes[key].append(self.position)
        if keys:
            self.commit_symbols[self.position] = keys
        self.position += 1

    # ------------------------------------------------------------ one symbol, as of a position

    def changes_before(self, key: Key, position: int, window: int | None = None) -> int:
        """Commits before `position` (within its last `window` commits, when given) that changed the symbol."""
        seen = self.changes.get(key)
        if not seen:
            return 0
        count = bisect_left(seen, position)
        return count - bisect_left(seen, position - window) if window is not None else count

    def last_change(self, key: Key, position: int) -> int | None:
        seen = self.changes.get(key)
        count = bisect_left(seen, position) if seen else 0
        return seen[count - 1] if count else None

    def first_change(self, key: Key, position: int) -> int | None:
        seen = self.changes.get(key)
        return seen[0] if seen and seen[0] < position else None

    def file_changes_before(self, path: str, position: int) -> int:
        """Symbol changes of the file before `position` (all its symbols together)."""
        return sum(self.changes_before((path, symbol), position) for symbol in self.file_symbols.get(path, ()))

    # ------------------------------------------------------------ evidence from other commits

    def similar_evidence(self, similar: list[tuple[int, float]], position: int) -> dict[Key, SimilarSymbol]:
        """Per symbol: what the similar commits ((position, similarity), best first) that changed it say."""
        out: dict[Key, SimilarSymbol] = {}
        for rank, (where, similarity) in enumerate(similar, start=1):
            keys = self.commit_symbols.get(where) if where < position else None
            for key in keys or ():
                entry = out.setdefault(key, SimilarSymbol(best_rank=rank))
                entry.score += similarity / len(keys)
                entry.hits += 1
        return out

    def recent_symbols(self, position: int, commits: int) -> set[Key]:
        """The symbols the last `commits` commits before `position` changed (large commits left out)."""
        out: set[Key] = set()
        for where in range(max(0, position - commits), position):
            keys = self.commit_symbols.get(where) or ()
            if len(keys) <= MAX_COMMIT_SYMBOLS:
                out.update(keys)
        return out

    def cochange(self, candidates: list[Key], position: int, recent: int = 3) -> dict[Key, tuple[float, int]]:
        """Each candidate's best rule x -> candidate from the symbols x of the last `recent` commits before
        `position`: (confidence = commits that changed x and it / commits that changed x, support)."""
        antecedents = self.recent_symbols(position, recent)
        at: dict[int, list[Key]] = {}  # position -> antecedents changed there (small commits only)
        totals: Counter[Key] = Counter()
        for x in antecedents:
            for where in self.changes.get(x, ())[: bisect_left(self.changes[x], position)]:
                if len(self.commit_symbols[where]) <= MAX_COMMIT_SYMBOLS:
                    at.setdefault(where, []).append(x)
                    totals[x] += 1
        best: dict[Key, tuple[float, int]] = {}
        for y in dict.fromkeys(candidates):
            seen = self.changes.get(y)
            if not seen:
                continue
            support: Counter[Key] = Counter()
            for where in seen[: bisect_left(seen, position)]:
                support.update(x for x in at.get(where, ()) if x != y)
            for x, n in support.items():
                rule = (n / totals[x], n)
                if rule > best.get(y, (-1.0, -1)):
                    best[y] = rule
        return best

    # ------------------------------------------------------------ saving and restoring

    def to_state(self) -> dict:
        """Every change position as plain JSON ({path: {symbol: [positions]}}), for `from_state`."""
        changes: dict[str, dict[str, list[int]]] = {}
        for (path, symbol), seen in self.changes.items():
            changes.setdefault(path, {})[symbol] = seen
        return {"format": STATE_FORMAT, "position": self.position, "changes": changes}

    @classmethod
    def from_state(cls, state: dict) -> SymbolHistory:
        """The history `to_state` saved; ValueError when the state is not one."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"symbol history of format {state.get('format') if isinstance(state, dict) else None!r}, "
                             f"not {STATE_FORMAT}")
        history = cls()
        history.position = int(state["position"])
        by_commit: dict[int, list[Key]] = {}
        for path, symbols in state["changes"].items():
            for symbol, seen in symbols.items():
                history.changes[(path, symbol)] = [int(p) for p in seen]
                history.file_symbols.setdefault(path, []).append(symbol)
                for where in seen:
                    by_commit.setdefault(int(where), []).append((path, symbol))
        history.commit_symbols = dict(sorted(by_commit.items()))
        return history
