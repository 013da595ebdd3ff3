"""Candidate units and their named features for one target: which code a change for the task is likely to touch.

    context = SymbolContext(task_words, position, symbol_history, similar, files)   # what the target may know
    rows = symbol_rows(context, units, truth)        # a features.CandidateRows: one row per unit, by name
    why = reasons(rows, i)                           # the features that speak for unit i, in words

The candidates are index units (repo2model.retrieval.units: functions, methods, tests, types, impls, doc
sections, imports; not `file` units, which the context pack treats as coverage of the units they hold) of the
file ranker's best files at the target's parent, and of the files or units a search finds. Features (NaN =
unknown, LightGBM's missing value), each computed under its name by one family:
    text        name_bm25 (the task against the unit's name words), name_overlap (task words in the name),
                name_overlap_frac, name_in_task (every name word is in the task), doc_bm25 (its comments and
                docstrings), body_bm25 / _rank / _ratio (its code; ratio: score / the best candidate's),
                unit_bm25 / _rank (name words three times, then the code: the untrained fusion's document)
    history     sym_changes (commits before the target that changed it), sym_changes_50 (of the last 50),
                sym_since (commits since its last change), sym_age (since its first), sym_share (its share of
                its file's symbol changes)
    similar     similar_score, similar_hits, similar_best_rank: the commits whose messages are most like the task
                (PastCommits.similar_files) that changed this very symbol
    co-change   cochange_conf, cochange_support: the best rule from a symbol the last 3 commits changed
    kind        kind_test, kind_function, kind_method, kind_type (struct, enum, trait, type, class),
                kind_container (impl, module), kind_doc (a Markdown section), kind_import, kind_other
    size        lines, log_chars, full (0 for an outline: a container whose inner units are their own candidates)
    file        file_rank (1 = the file ranker's best file; NaN for a file outside its top files), file_score,
                file_gap (score less the best file's), file_units (candidates of the same file), unit_position
                (its first line / the file's last candidate line), test_file (the path says tests)
    tests       tested_by (candidate tests that name the unit), test_names_task (for a test: the largest
                name_overlap_frac of the code units it names)
    the target  candidates, task_words
With dense similarity (the index's vectors: SymbolContext.dense), SYMBOL_DENSE_FEATURES follow: dense_score,
dense_rank, dense_gap.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from repo2model.ranking.features import CandidateRows, Columns, feature_matrix, file_kind, ranks_of
from repo2model.ranking.symbol_history import Key, SymbolHistory
from repo2model.retrieval.bm25 import K1, B, code_words
from repo2model.retrieval.units import IndexUnit

SYMBOL_FEATURES = (
    "name_bm25", "name_overlap", "name_overlap_frac", "name_in_task", "doc_bm25",
    "body_bm25", "body_bm25_rank", "body_bm25_ratio", "unit_bm25", "unit_bm25_rank",
    "sym_changes", "sym_changes_50", "sym_since", "sym_age", "sym_share",
    "similar_score", "similar_hits", "similar_best_rank",
    "cochange_conf", "cochange_support",
    "kind_test", "kind_function", "kind_method", "kind_type", "kind_container", "kind_doc", "kind_import",
    "kind_other",
    "lines", "log_chars", "full",
    "file_rank", "file_score", "file_gap", "file_units", "unit_position", "test_file",
    "tested_by", "test_names_task",
    "candidates", "task_words",
)
SYMBOL_DENSE_FEATURES = ("dense_score", "dense_rank", "dense_gap")
KIND_GROUPS = {"test": "kind_test", "function": "kind_function", "method": "kind_method", "struct": "kind_type",
               "enum": "kind_type", "trait": "kind_type", "type": "kind_type", "class": "kind_type",
               "impl": "kind_container", "module": "kind_container", "doc": "kind_doc", "import": "kind_import"}
NAN = float("nan")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMMENT = re.compile(r"^\s*(?:///?!?|#(?!\[)|/?\*+|--)\s?(.*)$")
# units -> cosine of the task's embedding and each unit's (the index's vectors), for the dense features
DenseUnits = Callable[[list[IndexUnit]], list[float]]


@dataclass
class SymbolContext:
    """What one target's symbol features may know: the task, and the history before `position`."""

    task_words: list[str]
    position: int  # commits before the target (the symbol history answers as of here)
    history: SymbolHistory
    similar: list[tuple[int, float]]  # the commits most similar to the task: (position, similarity), best first
    files: dict[str, tuple[int, float]]  # the file ranker's top files: path -> (rank, 1 = best; score)
    dense: DenseUnits | None = None
    recent: int = 3  # commits whose symbols are the co-change antecedents


def unit_key(unit: IndexUnit) -> Key:
    return unit.path, unit.symbol


def row_id(unit: IndexUnit) -> str:
    """A candidate's name in its rows: path, symbol and first line (two units may share a symbol)."""
    return f"{unit.path}\0{unit.symbol}\0{unit.start}"


def symbol_rows(context: SymbolContext, units: list[IndexUnit], truth: set[Key] | None = None,
                commit: str = "", dense: bool = False) -> CandidateRows:
    """The feature rows of one target's candidate units (SYMBOL_FEATURES, then SYMBOL_DENSE_FEATURES with
    `dense`: missing values unless the context can compute them); labels: the unit's (path, symbol) is in
    `truth`."""
    columns: Columns = {}
    text = text_features(context, units)
    columns.update(text)
    for family in (history_features, similar_features, cochange_features, kind_features, file_features):
        columns.update(family(context, units))
    columns.update(test_link_features(units, text["name_overlap_frac"]))
    columns["candidates"] = [len(units)] * len(units)
    columns["task_words"] = [len(context.task_words)] * len(units)
    names = list(SYMBOL_FEATURES)
    if dense:
        names += SYMBOL_DENSE_FEATURES
        columns.update(dense_features(context, units))
    labels = np.array([unit_key(u) in (truth or ()) for u in units], dtype=np.int8)
    return CandidateRows(commit, [row_id(u) for u in units], names, feature_matrix(columns, names, len(units)), labels)


# ---------------------------------------------------------------- text


@lru_cache(maxsize=1 << 16)
def unit_texts(text: str) -> tuple[Counter, Counter]:
    """(the words of a unit's code, the words of its comments and docstrings), cached by text."""
    body = Counter(code_words(text[:20_000]))
    doc_lines = [m.group(1) for m in map(_COMMENT.match, text[:20_000].splitlines()) if m]
    for quoted in re.findall(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', text[:20_000], flags=re.DOTALL):
        doc_lines.append(quoted[0] or quoted[1])
    return body, Counter(code_words("\n".join(doc_lines)))


@lru_cache(maxsize=1 << 16)
def name_words(symbol: str) -> Counter:
    return Counter(code_words(symbol))


def short_name(symbol: str) -> str:
    """`Market::settle` -> settle, `Parser.parse` -> parse, `<Foo as Display>::fmt` -> fmt."""
    return re.split(r"::|\.", symbol)[-1]


def bm25(query: set[str], documents: list[Counter]) -> np.ndarray:
    """BM25 (Lucene's idf, bm25s' k1 and b) of the query words, each counted once, against each document."""
    out = np.zeros(len(documents))
    if not documents or not query:
        return out
    lengths = np.array([sum(d.values()) for d in documents], dtype=np.float64)
    norm = K1 * (1 - B + B * lengths / (lengths.mean() or 1.0))
    n = len(documents)
    for word in query:
        tf = np.array([d.get(word, 0) for d in documents], dtype=np.float64)
        df = int((tf > 0).sum())
        if df:
            out += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf * (K1 + 1) / (tf + norm)
    return out


def text_features(context: SymbolContext, units: list[IndexUnit]) -> Columns:
    task = set(context.task_words)
    names = [name_words(u.symbol) for u in units]
    texts = [unit_texts(u.text) for u in units]
    bodies = [body for body, _ in texts]
    name_scores = bm25(task, names)
    body_scores = bm25(task, bodies)
    unit_scores = bm25(task, [name + name + name + body for name, body in zip(names, bodies)])
    best = float(body_scores.max()) if len(units) else 0.0
    ids = [str(i) for i in range(len(units))]
    body_rank = ranks_of({i: float(s) for i, s in zip(ids, body_scores) if s > 0}, ids)
    unit_rank = ranks_of({i: float(s) for i, s in zip(ids, unit_scores) if s > 0}, ids)
    overlap = [len(task & set(words)) for words in names]
    return {
        "name_bm25": name_scores.tolist(),
        "name_overlap": overlap,
        "name_overlap_frac": [n / len(words) if words else 0.0 for n, words in zip(overlap, names)],
        "name_in_task": [float(bool(words) and set(words) <= task) for words in names],
        "doc_bm25": bm25(task, [doc for _, doc in texts]).tolist(),
        "body_bm25": body_scores.tolist(),
        "body_bm25_rank": [body_rank.get(i, NAN) for i in ids],
        "body_bm25_ratio": [s / best if best > 0 else 0.0 for s in body_scores],
        "unit_bm25": unit_scores.tolist(),
        "unit_bm25_rank": [unit_rank.get(i, NAN) for i in ids],
    }


# ---------------------------------------------------------------- the history


def history_features(context: SymbolContext, units: list[IndexUnit]) -> Columns:
    history, position = context.history, context.position
    file_totals: dict[str, int] = {}
    columns: Columns = {name: [] for name in ("sym_changes", "sym_changes_50", "sym_since", "sym_age", "sym_share")}
    for unit in units:
        key = unit_key(unit)
        count = history.changes_before(key, position)
        last, first = history.last_change(key, position), history.first_change(key, position)
        if unit.path not in file_totals:
            file_totals[unit.path] = history.file_changes_before(unit.path, position)
        total = file_totals[unit.path]
        columns["sym_changes"].append(count)
        columns["sym_changes_50"].append(history.changes_before(key, position, 50))
        columns["sym_since"].append(position - last if last is not None else NAN)
        columns["sym_age"].append(position - first if first is not None else NAN)
        columns["sym_share"].append(count / total if total else NAN)
    return columns


def similar_features(context: SymbolContext, units: list[IndexUnit]) -> Columns:
    evidence = context.history.similar_evidence(context.similar, context.position)
    found = [evidence.get(unit_key(u)) for u in units]
    return {"similar_score": [e.score if e else 0.0 for e in found],
            "similar_hits": [e.hits if e else 0.0 for e in found],
            "similar_best_rank": [e.best_rank if e else NAN for e in found]}


def cochange_features(context: SymbolContext, units: list[IndexUnit]) -> Columns:
    rules = context.history.cochange([unit_key(u) for u in units], context.position, context.recent)
    found = [rules.get(unit_key(u)) for u in units]
    return {"cochange_conf": [r[0] if r else 0.0 for r in found],
            "cochange_support": [r[1] if r else 0.0 for r in found]}


# ---------------------------------------------------------------- the unit and its file


def kind_features(context: SymbolContext, units: list[IndexUnit]) -> Columns:
    groups = [KIND_GROUPS.get(u.kind, "kind_other") for u in units]
    columns: Columns = {name: [float(g == name) for g in groups]
                        for name in SYMBOL_FEATURES if name.startswith("kind_")}
    columns["lines"] = [u.end - u.start + 1 for u in units]
    columns["log_chars"] = [math.log1p(len(u.text)) for u in units]
    columns["full"] = [float(u.full) for u in units]
    return columns


def file_features(context: SymbolContext, units: list[IndexUnit]) -> Columns:
    best = max((score for _, score in context.files.values()), default=NAN)
    per_file = Counter(u.path for u in units)
    last_line: dict[str, int] = {}
    for unit in units:
        last_line[unit.path] = max(last_line.get(unit.path, 1), unit.end)
    ranked = [context.files.get(u.path) for u in units]
    return {
        "file_rank": [r[0] if r else NAN for r in ranked],
        "file_score": [r[1] if r else NAN for r in ranked],
        "file_gap": [r[1] - best if r else NAN for r in ranked],
        "file_units": [per_file[u.path] for u in units],
        "unit_position": [u.start / last_line[u.path] for u in units],
        "test_file": [file_kind(u.path)[0] for u in units],
    }


def is_test(unit: IndexUnit) -> bool:
    return unit.kind == "test" or file_kind(unit.path)[0] > 0


def test_link_features(units: list[IndexUnit], name_fit: list[float]) -> Columns:
    """tested_by and test_names_task: a test names a unit when its code holds the unit's short name (three
    characters or more) as an identifier."""
    code: dict[str, list[int]] = {}
    for i, unit in enumerate(units):
        name = short_name(unit.symbol)
        if not is_test(unit) and len(name) >= 3 and unit.kind != "doc":
            code.setdefault(name, []).append(i)
    tested_by = [0.0] * len(units)
    names_task = [0.0] * len(units)
    for i, unit in enumerate(units):
        if not is_test(unit):
            continue
        for word in set(_IDENTIFIER.findall(unit.text[:20_000])) & code.keys():
            for j in code[word]:
                tested_by[j] += 1
                names_task[i] = max(names_task[i], name_fit[j])
    return {"tested_by": tested_by, "test_names_task": names_task}


def dense_features(context: SymbolContext, units: list[IndexUnit]) -> Columns:
    if context.dense is None or not units:
        return {name: [NAN] * len(units) for name in SYMBOL_DENSE_FEATURES}
    scores = context.dense(units)
    ids = [str(i) for i in range(len(units))]
    rank = ranks_of(dict(zip(ids, scores)), ids)
    best = max(scores)
    return {"dense_score": list(scores), "dense_rank": [rank[i] for i in ids],
            "dense_gap": [s - best for s in scores]}


# ---------------------------------------------------------------- why a unit scores


def reasons(rows: CandidateRows, i: int, limit: int = 3) -> list[str]:
    """The evidence for candidate `i` in words, strongest first (at most `limit`)."""
    value = dict(zip(rows.names, rows.features[i].tolist()))
    out = []
    if value["name_in_task"] or value["name_overlap"] >= 2:
        out.append("its name is in the task")
    elif value["name_overlap"]:
        out.append("its name shares task words")
    if value["unit_bm25_rank"] <= 3 or value.get("dense_rank", NAN) <= 3:
        out.append("its code matches the task")
    if value["test_names_task"] > 0:
        out.append("tests code the task names")
    if value["similar_hits"]:
        out.append(f"changed by {value['similar_hits']:.0f} similar past commit"
                   + ("s" if value["similar_hits"] > 1 else ""))
    if value["cochange_conf"] >= 0.3:
        out.append("changes with recently changed symbols")
    if value["sym_since"] <= 10:
        out.append(f"changed {value['sym_since']:.0f} commit{'s' if value['sym_since'] > 1 else ''} ago")
    if value["file_rank"] <= 10:
        out.append(f"in predicted file #{value['file_rank']:.0f}")
    return out[:limit]
