"""The context pack: the current code a code-writing model is shown for a predicted change.

    pack = build_context(task, prediction, index.units_of, index.search, budget, embedder.count_tokens)
    [entry.to_dict() for entry in pack]      # path, symbol, kind, lines, why, code, tokens, ...

Filled in this order within `budget` tokens (counted with the embedding model's tokenizer), each entry with
path, symbol, kind, lines, why and its code: the predicted symbols of the predicted files (their current code)
and the first predicted file itself (its `file` unit: whole text or outline), within `predicted_share` of the
budget; then the units the guided search finds; then the other predicted files. Entries that do not fit are
skipped (a later, smaller one may still fit); a unit already shown in full inside an earlier entry is not
repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

from repo2model.retrieval.stores import Hit
from repo2model.retrieval.units import IndexUnit, module_prefixes
from repo2model.serving.prediction import Prediction

Found = tuple[IndexUnit, str]  # a unit and why it is in the pack


@dataclass
class ContextEntry:
    path: str
    symbol: str
    kind: str
    start: int
    end: int
    why: str
    text: str
    tokens: int
    language: str
    score: float | None = None
    full: bool = True
    commit: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lines"] = [out.pop("start"), out.pop("end")]
        out["code"] = out.pop("text")
        return out


def predicted_parts(prediction: Prediction, max_files: int) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(files, modules, symbols per file) of a prediction, best first."""
    files = [f.path for f in prediction.files if f.path][:max_files]
    modules = list(dict.fromkeys([m for m in prediction.modules if m]
                                 + [f.module for f in prediction.files[:max_files] if f.module]))
    symbols = {f.path: [s for s in f.symbols if s] for f in prediction.files[:max_files]}
    return files, modules, symbols


def build_context(task: str, prediction: Prediction, units_of: Callable[[list[str]], list[IndexUnit]],
                  search: Callable[..., list[Hit]] | None, budget: int, count_tokens: Callable[[str], int],
                  max_files: int = 5, mode: str = "guided", predicted_share: float = 0.5,
                  files_first: bool = False, fuse_weight: float | None = None, fuse_k: int = 2) -> list[ContextEntry]:
    """The context pack. `units_of(paths)` gives the current units of files (from the index or the tree);
    `search(task, mode=, files=, modules=)` the index's hits (None: no index).

    Order: the predicted symbols' code, then the first predicted file (its whole text, or its outline), both
    within `predicted_share` of the budget; then the search hits; then the other predicted files. (A wrong
    prediction so costs at most that share; with `files_first` every predicted file comes before the search,
    which the benchmark measured worse with model-free predictions.) With `fuse_weight` there is no reserved
    share: the predicted symbols' units (in prediction order) and the search hits are one ranking, by
    reciprocal-rank fusion (a unit scores weight / (fuse_k + rank) from each list it is in: `fuse_weight` for
    the predictions, 1 for the search), so a predicted symbol the search also finds comes first; then the first
    predicted file, then the others. A unit whose lines an entry already shows in full is not repeated."""
    files, modules, symbols = predicted_parts(prediction, max_files)
    by_file = units_by_file(units_of(files) if files else [])
    predicted = predicted_symbol_units(files, symbols, by_file)
    pack = ContextPack(budget, count_tokens)
    hits = search_units(search, task, mode, files, modules) if search is not None else iter(())
    if fuse_weight is not None and search is not None and not files_first:
        for score, unit, why in fuse(predicted, [(unit, why) for unit, why, _ in hits], fuse_weight, fuse_k):
            if not pack.offer(unit, why, score):
                break
        offer_files(pack, by_file, files, range(1, len(files) + 1))
        return pack.entries
    share = budget if files_first else int(budget * predicted_share)
    for unit, why in predicted:
        pack.offer(unit, why, limit=share)
    offer_files(pack, by_file, files, range(1, (len(files) if files_first else min(1, len(files))) + 1), share)
    for unit, why, score in hits:
        if not pack.offer(unit, why, score):
            break
    offer_files(pack, by_file, files, range(2, len(files) + 1))
    return pack.entries


class ContextPack:
    """The entries chosen so far, in order, and the tokens they use."""

    def __init__(self, budget: int, count_tokens: Callable[[str], int]):
        self.budget, self.count_tokens = budget, count_tokens
        self.entries: list[ContextEntry] = []
        self.used = 0

    def shows(self, unit: IndexUnit) -> bool:
        """Whether an entry already shows this unit: the same unit, or a full entry whose lines hold it."""
        return any(entry.path == unit.path and ((entry.symbol, entry.start) == (unit.symbol, unit.start) or (
            entry.full and entry.start <= unit.start and unit.end <= entry.end)) for entry in self.entries)

    def offer(self, unit: IndexUnit, why: str, score: float | None = None, limit: int | None = None) -> bool:
        """Add the unit unless it is shown already or the pack would pass `limit` tokens (default: the budget).
        Returns whether there is still room for another entry (fewer than 16 tokens left: none)."""
        if not self.shows(unit):
            entry = ContextEntry(unit.path, unit.symbol, unit.kind, unit.start, unit.end, why, unit.text, 0,
                                 unit.language, None if score is None else round(score, 6), unit.full, unit.commit)
            entry.tokens = self.count_tokens(entry_header(entry)) + self.count_tokens(unit.text) + 4
            if self.used + entry.tokens <= (self.budget if limit is None else limit):
                self.entries.append(entry)
                self.used += entry.tokens
        return self.budget - self.used >= 16


def units_by_file(units: Iterable[IndexUnit]) -> dict[str, list[IndexUnit]]:
    by_file: dict[str, list[IndexUnit]] = {}
    for unit in units:
        by_file.setdefault(unit.path, []).append(unit)
    return by_file


def predicted_symbol_units(files: list[str], symbols: dict[str, list[str]],
                           by_file: dict[str, list[IndexUnit]]) -> list[Found]:
    """The units of the predicted symbols, in prediction order (file by file, symbol by symbol)."""
    out: list[Found] = []
    for rank, path in enumerate(files, start=1):
        for symbol in symbols.get(path, []):
            for unit in by_file.get(path, []):
                if unit.kind != "file" and symbol_matches(unit.symbol, symbol):
                    out.append((unit, f"predicted symbol {symbol} of predicted file #{rank}"))
    return out


def search_units(search: Callable[..., list[Hit]], task: str, mode: str, files: list[str],
                 modules: list[str]) -> Iterator[tuple[IndexUnit, str, float]]:
    """The search's hits as units, each with why it was found and its score (searched when first read)."""
    for hit in search(task, mode=mode, files=files, modules=modules):
        unit = IndexUnit.from_payload(hit.payload)
        if unit.path in files:
            why = "search: in a predicted file"
        elif set(module_prefixes(unit.module)) & set(modules):
            why = "search: in a predicted module"
        else:
            why = "search"
        yield unit, (f"{why} ({mode})" if mode != "guided" else why), hit.score


def fuse(predicted: list[Found], found: list[Found], fuse_weight: float,
         fuse_k: int) -> list[tuple[float, IndexUnit, str]]:
    """One ranking of the predicted units and the search's by reciprocal-rank fusion: (score, unit, why), best
    first; a unit in both lists keeps the why of the predictions."""
    ranking: dict[tuple[str, str, int], list] = {}  # unit -> [score, unit, why]
    for weight, items in ((fuse_weight, predicted), (1.0, found)):
        for rank, (unit, why) in enumerate(items, start=1):
            slot = ranking.setdefault((unit.path, unit.symbol, unit.start), [0.0, unit, why])
            slot[0] += weight / (fuse_k + rank)
    return [tuple(slot) for slot in sorted(ranking.values(), key=lambda s: -s[0])]


def offer_files(pack: ContextPack, by_file: dict[str, list[IndexUnit]], files: list[str], ranks: range,
                limit: int | None = None) -> None:
    """Offer the `file` unit (whole text, or outline) of the predicted files of these ranks (1 = first)."""
    for rank in ranks:
        for unit in by_file.get(files[rank - 1], []):
            if unit.kind == "file":
                pack.offer(unit, f"predicted file #{rank}" + ("" if unit.full else " (outline)"), limit=limit)


def symbol_matches(unit_symbol: str, predicted: str) -> bool:
    """`Router::route` matches Router::route, route; `<Foo as Display>::fmt` matches fmt; Python `A.m` matches m."""
    if unit_symbol == predicted:
        return True
    for separator in ("::", "."):
        if unit_symbol.endswith(separator + predicted):
            return True
    return False


def entry_header(entry: ContextEntry) -> str:
    return f"### {entry.path}:{entry.start}-{entry.end} {entry.kind} {entry.symbol} ({entry.why})"
