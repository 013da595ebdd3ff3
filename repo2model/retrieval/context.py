"""The context pack: the current code a code-writing model is shown for a predicted change.

    pack = build_context(task, prediction, index.units_of, index.search, budget, embedder.count_tokens,
                         scorer=ranking.symbol_scorer(task, files))     # chosen by the symbol ranker
    [entry.to_dict() for entry in pack]      # path, symbol, kind, lines, why, code, tokens, score, ...

Each entry (path, symbol, kind, lines, why, code) holds whole units; `budget` counts tokens with the embedding
model's tokenizer, headers included.

With a scorer (the learned symbol ranker: units -> probability that the change touches each, and why) the pack
is chosen for recall per token (`chosen_pack`): the candidates are the units of the predicted files and of the
search's hits (and of small files the search found whole); each unit is worth its probability, a predicted
file's whole text (when short) the probabilities of the units it holds, and a long file's outline a share
(OUTLINE_VALUE) of the probability of its units that are too big to show (over half the budget); a greedy
knapsack takes the item worth most per token that still fits, again and again, counting each unit once. Each
entry says why it was chosen (the ranker's evidence, its probability) and carries the probability as its score.

The service builds its pack with `service_pack` (the `index` section's `pack`): the scorer is used only with
`pack: chosen`; the default, `fused`, is build_context's `fuse_weight` order below, and `ordered` the fixed
order. Which holds most of a change's code depends on the history (docs/benchmarks.md, "Which pack the service
builds").

Without one (no symbol ranker: an older ranker folder, or none), the order is fixed: the predicted symbols of
the predicted files (their current code) and the first predicted file itself (its `file` unit: whole text or
outline), within `predicted_share` of the budget; then the units the guided search finds; then the other
predicted files. Entries that do not fit are skipped (a later, smaller one may still fit); a unit already
shown in full inside an earlier entry is not repeated.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol

from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.stores import Hit
from repo2model.retrieval.units import IndexUnit, module_prefixes
from repo2model.serving.prediction import Prediction

Found = tuple[IndexUnit, str]  # a unit and why it is in the pack
OUTLINE_VALUE = 0.25  # an outline's worth: this share of the probability of the units too big to show
MIN_ENTRY_TOKENS = 16  # a pack with fewer tokens left takes no more entries


class UnitScorer(Protocol):
    """The symbol ranker for one task (repo2model.ranking.symbol_ranker.UnitScorer)."""

    files: list[str]  # the predicted files whose units are candidates, best first

    def __call__(self, units: list[IndexUnit]) -> list[tuple[float, str]]:
        """Each unit's probability of being changed, and why."""


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
                  files_first: bool = False, fuse_weight: float | None = None, fuse_k: int = 2,
                  scorer: UnitScorer | None = None) -> list[ContextEntry]:
    """The context pack. `units_of(paths)` gives the current units of files (from the index or the tree);
    `search(task, mode=, files=, modules=)` the index's hits (None: no index). With `scorer`: `chosen_pack`
    (unless `files_first` or `fuse_weight` asks for a fixed order).

    Order: the predicted symbols' code, then the first predicted file (its whole text, or its outline), both
    within `predicted_share` of the budget; then the search hits; then the other predicted files. (A wrong
    prediction so costs at most that share; with `files_first` every predicted file comes before the search,
    which the benchmark measured worse with model-free predictions.) With `fuse_weight` there is no reserved
    share: the predicted symbols' units (in prediction order) and the search hits are one ranking, by
    reciprocal-rank fusion (a unit scores weight / (fuse_k + rank) from each list it is in: `fuse_weight` for
    the predictions, 1 for the search), so a predicted symbol the search also finds comes first; then the first
    predicted file, then the others. A unit whose lines an entry already shows in full is not repeated."""
    if scorer is not None and not files_first and fuse_weight is None:
        return chosen_pack(task, prediction, units_of, search, budget, count_tokens, scorer, max_files, mode)
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


def service_pack(task: str, prediction: Prediction, units_of: Callable[[list[str]], list[IndexUnit]],
                 search: Callable[..., list[Hit]] | None, budget: int, count_tokens: Callable[[str], int],
                 cfg: IndexConfig, scorer: UnitScorer | None = None,
                 predicted_share: float | None = None) -> list[ContextEntry]:
    """The pack as the service builds it with the `index` section `cfg`: `pack: fused` (build_context's
    fuse_weight order), `ordered` (the fixed order) or `chosen` (the scorer's knapsack, when there is one)."""
    return build_context(task, prediction, units_of, search, budget, count_tokens, cfg.context_files,
                         predicted_share=cfg.predicted_share if predicted_share is None else predicted_share,
                         scorer=scorer if cfg.pack == "chosen" else None,
                         fuse_weight=cfg.fuse_weight if cfg.pack == "fused" else None)


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
            entry = make_entry(unit, why, score, self.count_tokens)
            if self.used + entry.tokens <= (self.budget if limit is None else limit):
                self.entries.append(entry)
                self.used += entry.tokens
        return self.budget - self.used >= MIN_ENTRY_TOKENS


def make_entry(unit: IndexUnit, why: str, score: float | None, count_tokens: Callable[[str], int]) -> ContextEntry:
    """The unit as an entry, its tokens counted as the prompt shows it (header, code, fences)."""
    entry = ContextEntry(unit.path, unit.symbol, unit.kind, unit.start, unit.end, why, unit.text, 0,
                         unit.language, None if score is None else round(score, 6), unit.full, unit.commit)
    entry.tokens = count_tokens(entry_header(entry)) + count_tokens(unit.text) + 4
    return entry


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


# ---------------------------------------------------------------- the pack chosen for recall per token


@dataclass
class Item:
    """Something the chosen pack may show: a unit, a whole file or a file's outline."""

    entry: ContextEntry
    covers: list[int]  # the candidates it shows (indices)
    weight: float = 1.0  # the share of their probability it is worth (an outline: OUTLINE_VALUE)
    taken: bool = False


@dataclass
class Candidates:
    """The units the chosen pack weighs, their probabilities and why, and what each file holds."""

    units: list[IndexUnit] = field(default_factory=list)
    p: list[float] = field(default_factory=list)
    why: list[str] = field(default_factory=list)
    files: dict[str, list[IndexUnit]] = field(default_factory=dict)  # every unit of each file looked at
    predicted: set[str] = field(default_factory=set)  # the files looked at because they were predicted
    searched: dict[tuple, int] = field(default_factory=dict)  # unit -> its rank among the search's hits


def unit_id(unit: IndexUnit) -> tuple:
    return unit.path, unit.kind, unit.symbol, unit.start


def chosen_pack(task: str, prediction: Prediction, units_of: Callable[[list[str]], list[IndexUnit]],
                search: Callable[..., list[Hit]] | None, budget: int, count_tokens: Callable[[str], int],
                scorer: UnitScorer, max_files: int = 5, mode: str = "guided") -> list[ContextEntry]:
    """The pack chosen for recall per token (see the module docstring), most likely first."""
    found = gather_candidates(task, prediction, units_of, search, scorer, max_files, mode)
    ranks = {path: rank for rank, path in enumerate([f.path for f in prediction.files if f.path], start=1)}
    units = unit_items(found, count_tokens)
    items = units + file_items(found, [u.entry.tokens for u in units], ranks, budget, count_tokens, max_files)
    chosen = knapsack(items, found.p, budget)
    return [item.entry for item in sorted(chosen, key=lambda i: -(i.entry.score or 0.0))]


def gather_candidates(task: str, prediction: Prediction, units_of: Callable[[list[str]], list[IndexUnit]],
                      search: Callable[..., list[Hit]] | None, scorer: UnitScorer, max_files: int,
                      mode: str) -> Candidates:
    """The units of the scorer's files and of the predicted files, the search's hits, and the units of the small
    files the search found whole; scored."""
    files, modules, _ = predicted_parts(prediction, max_files)
    paths = list(dict.fromkeys(list(scorer.files) + files))
    found = Candidates(files=units_by_file(units_of(paths)) if paths else {}, predicted=set(paths))
    hits = list(search_units(search, task, mode, files, modules)) if search is not None else []
    whole = [u.path for u, _, _ in hits if u.kind == "file" and u.full and u.path not in found.files]
    if whole:
        found.files.update(units_by_file(units_of(list(dict.fromkeys(whole)))))
    by_id: dict[tuple, IndexUnit] = {}
    for units in found.files.values():
        by_id.update((unit_id(u), u) for u in units if u.kind != "file")
    for rank, (unit, _, _) in enumerate(hits, start=1):
        if unit.kind != "file":
            by_id.setdefault(unit_id(unit), unit)
            found.searched.setdefault(unit_id(unit), rank)
    found.units = list(by_id.values())
    scored = scorer(found.units)
    found.p = [p for p, _ in scored]
    found.why = [why for _, why in scored]
    return found


def unit_items(found: Candidates, count_tokens: Callable[[str], int]) -> list[Item]:
    items = []
    for i, unit in enumerate(found.units):
        reasons = [found.why[i]] if found.why[i] else []
        rank = found.searched.get(unit_id(unit))
        if rank is not None and unit.path not in found.predicted:  # only the search brought it
            reasons.insert(0, f"search hit #{rank}")
        why = f"p {found.p[i]:.2f}" + (": " + "; ".join(reasons) if reasons else "")
        items.append(Item(make_entry(unit, why, found.p[i], count_tokens), [i]))
    return items


def file_items(found: Candidates, tokens: list[int], ranks: dict[str, int], budget: int,
               count_tokens: Callable[[str], int], max_files: int) -> list[Item]:
    """Each looked-at file's whole text (when short: it shows every unit it holds) and, for the predicted files,
    their outline (long files: worth a share of their units that are too big to show, over half the budget)."""
    index = {unit_id(u): i for i, u in enumerate(found.units)}
    items = []
    for path, units in found.files.items():
        held = [index[unit_id(u)] for u in units if unit_id(u) in index]
        mass = sum(found.p[i] for i in held)
        where = f"predicted file #{ranks[path]}" if path in ranks else "found by the search"
        for unit in units:
            if unit.kind != "file" or not held:
                continue
            if unit.full:
                inside = [i for i in held if unit.start <= found.units[i].start and found.units[i].end <= unit.end]
                why = f"p {mass:.2f}: {where}, whole: it holds {len(inside)} candidate units"
                items.append(Item(make_entry(unit, why, mass, count_tokens), inside))
            elif ranks.get(path, max_files + 1) <= max_files:
                big = [i for i in held if tokens[i] > budget / 2]
                if big:
                    names = ", ".join(dict.fromkeys(found.units[i].symbol for i in big[:3]))
                    why = f"{where}, outline: {names} too big to show whole"
                    items.append(Item(make_entry(unit, why, OUTLINE_VALUE * sum(found.p[i] for i in big),
                                                 count_tokens), big, OUTLINE_VALUE))
    return items


def knapsack(items: list[Item], p: list[float], budget: int) -> list[Item]:
    """Greedy by worth per token: take the item whose candidates not yet shown are worth most per token and
    that still fits, again and again. A candidate counts once: a whole file taken after some of its units
    replaces their entries (and costs only the tokens it adds); an outline only makes its units worth less."""
    shown: dict[int, Item | None] = {}  # candidate -> the unit entry showing it (None: a whole file does)

    def worth(item: Item) -> float:
        return item.weight * sum(p[i] for i in item.covers if i not in shown)

    def cost(item: Item) -> int:  # a whole file gives back the tokens of its units' own entries
        if item.weight < 1.0 or len(item.covers) == 1:
            return item.entry.tokens
        return item.entry.tokens - sum(shown[i].entry.tokens for i in item.covers if shown.get(i) is not None)

    files_of: dict[int, list[int]] = {}  # candidate -> the whole files that hold it
    for n, item in enumerate(items):
        if item.weight >= 1.0 and len(item.covers) > 1:
            for i in item.covers:
                files_of.setdefault(i, []).append(n)
    heap = [(-worth(item) / max(1, item.entry.tokens), n) for n, item in enumerate(items)
            if item.entry.tokens <= budget]
    heapq.heapify(heap)
    left = budget
    while heap and left >= MIN_ENTRY_TOKENS:
        ratio, n = heapq.heappop(heap)
        item = items[n]
        now = worth(item) / max(1, cost(item))
        if item.taken or now <= 0.0 or cost(item) > left:
            continue
        if now < -ratio - 1e-12:  # worth less since it was pushed: back in line
            heapq.heappush(heap, (-now, n))
            continue
        left -= cost(item)
        item.taken = True
        if item.weight < 1.0:
            continue
        for i in item.covers:
            if shown.get(i) is not None:
                shown[i].taken = False  # its whole file shows it now
            shown[i] = item if len(item.covers) == 1 else None
            for f in files_of.get(i, ()) if len(item.covers) == 1 else ():  # the file now costs less to add
                if not items[f].taken:
                    heapq.heappush(heap, (-worth(items[f]) / max(1, cost(items[f])), f))
    return [item for item in items if item.taken]
