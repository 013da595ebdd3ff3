"""The work in progress as evidence: the remaining files of a change whose first files are already changed.

    sources = in_progress_sources(state, revealed)                 # candidates the revealed files point at
    rows = live_rows(state, revealed, candidates_cfg, dense)       # the ranker's rows + LIVE_FEATURES
    live = LiveRanker.load(ranker_folder)                          # None when train_ranker did not fit one
    ranked = live.rank(rows, ranker)                               # [(path, score)], revealed files left out

A developer who has changed some files (the working tree, repo2model.git.working_tree) has told the ranker
much about the rest of the change: what changes with those files, what sits beside them, their tests. The
live ranker is a LightGBM lambdarank over the ranker's own features (repo2model.ranking.features) plus the
in-progress features below and the ranker's score (BASE_SCORE), trained on simulated partial commits: for each
training target of at least two files, its first k files (k = 1, 2 and half of them) are revealed and the rest
are the files to find. It is boosted from the ranker's score (its trees learn what to add to it: with no tree of
its own it ranks as the ranker does) or from nothing, whichever ranks val's partial commits better, cross-fitted
(`choose_start`; live.json: "chosen", "choice", and "starts_from": BASE_SCORE or null; a live ranker saved
without it scores with its trees alone). Its candidates are the ranker's plus what the revealed files point at
(`in_progress_sources`), the revealed files left out.

In-progress features (LIVE_FEATURES; the revealed files R, the candidate p):
    wip_files, wip_new_files   |R|, and how many of R are not in the parent's tree (files being created)
    wip_conf, wip_support      the best co-change rule r -> p over R (confidence, support: history.rules_from)
    wip_conf_sum, wip_hits     the sum of the confidences of r -> p over R, and how many r ever changed with p
    wip_rank                   p's rank among the co-change consequents of R
    wip_folder_share           the share of R in p's folder; wip_top_share: in p's top-level folder (crate)
    wip_same_module            p's module is the module of one of R (NaN: p has none)
    wip_path_distance          the fewest folder steps from p to one of R
    wip_test_link              p is the test of one of R, or one of R is p's test (by name)
    wip_name_overlap           the largest share of path words p has in common with one of R

The files of the partial commits (`K_LABELS`): "1" and "2" reveal the first one and two files of a target with
more, "half" the first half (rounded down, at least one). Train, val and test targets are simulated alike; the
figures (`simulate`) compare, on the test targets, the live ranker with the ranker without the in-progress
features (its own candidates, the revealed files dropped) and with co-change from the revealed files alone.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import lightgbm as lgb
import numpy as np

from repo2model.core.artifacts import atomic_open, read_json, write_json
from repo2model.core.errors import UserError
from repo2model.ranking.config import FitSettings
from repo2model.ranking.features import (
    CandidateRows, DenseScorer, FeatureConfig, candidate_rows, candidates, file_kind, ranks_of,
)
from repo2model.ranking.history import PastCommits, folder_of
from repo2model.ranking.metrics import Prediction, Truth, aggregate, fmt, score
from repo2model.ranking.ranker import BASE_SCORE, Ranker, fit_lambdarank, importances, ranked
from repo2model.ranking.targets import TargetState
from repo2model.retrieval.bm25 import path_words

log = logging.getLogger("ranking")

LIVE_FEATURES = (
    "wip_files", "wip_new_files", "wip_conf", "wip_support", "wip_conf_sum", "wip_hits", "wip_rank",
    "wip_folder_share", "wip_top_share", "wip_same_module", "wip_path_distance", "wip_test_link",
    "wip_name_overlap",
)
K_LABELS = ("1", "2", "half")
LIVE_RANKER_FILE = "live_ranker.txt"
LIVE_SETTINGS_FILE = "live.json"
PARTNERS = 30  # the best co-change consequents of R that become candidates
FOLDER_MATES = 10  # files of each folder of R that become candidates, most recently changed first
NAN = float("nan")
TEST_STEMS = ("test", "tests", "spec")
FOLDER_STEMS = ("mod", "lib", "main", "__init__", "index")  # a file named for its folder


def revealed_counts(files: int) -> dict[str, int]:
    """K_LABELS -> how many of a target's `files` each reveals (only those that leave a file to find)."""
    ks = {"1": 1, "2": 2, "half": max(1, files // 2)}
    return {label: k for label, k in ks.items() if k < files}


# ---------------------------------------------------------------- what a path says about its test


@lru_cache(maxsize=1 << 16)
def link_key(path: str) -> tuple[str, bool]:
    """(the name a file and its test share, whether it is the test): `src/walk.rs` -> ("walk", False),
    `tests/test_walk.py` -> ("walk", True), `src/walk/tests.rs` -> ("walk", True)."""
    folder, name = posixpath.split(path)
    stem = name.split(".", 1)[0].lower()
    is_test = bool(file_kind(path)[0])
    if stem in TEST_STEMS or stem in FOLDER_STEMS:
        stem = posixpath.basename(folder).lower()
        if stem in TEST_STEMS:
            stem = posixpath.basename(posixpath.dirname(folder)).lower()
    for prefix in ("test_", "tests_"):
        stem = stem.removeprefix(prefix)
    for suffix in ("_test", "_tests", "_spec"):
        stem = stem.removesuffix(suffix)
    return stem, is_test


def linked_by_test(a: str, b: str) -> bool:
    (stem_a, test_a), (stem_b, test_b) = link_key(a), link_key(b)
    return bool(stem_a) and stem_a == stem_b and test_a != test_b


def path_distance(a: str, b: str) -> int:
    """Folder steps from a's folder to b's (0: the same folder)."""
    fa, fb = folder_of(a).split("/") if folder_of(a) else [], folder_of(b).split("/") if folder_of(b) else []
    common = 0
    for x, y in zip(fa, fb):
        if x != y:
            break
        common += 1
    return len(fa) + len(fb) - 2 * common


def top_folder(path: str) -> str:
    return path.split("/", 1)[0] if "/" in path else ""


# ---------------------------------------------------------------- candidates and features


def tree_files(state: TargetState) -> list[str]:
    """The files a prediction may name: the parent's tree, else every file the history knows."""
    pool = state.code.blobs.keys() if state.code is not None else state.past.last_seen.keys()
    return [p for p in pool if state.past.searchable(p)]


def in_progress_sources(state: TargetState, revealed: list[str], tree: list[str] | None = None) -> list[str]:
    """The files the revealed ones point at: their best co-change partners, their folder mates (most recently
    changed first) and their tests or tested files; in the parent's tree when it is known, R left out."""
    past, chosen = state.past, set(revealed)
    tree = tree_files(state) if tree is None else tree
    rules = past.rules_from(revealed)
    out: dict[str, None] = {}
    for path, _ in sorted(rules.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:PARTNERS]:
        out.setdefault(path, None)
    folders = {folder_of(r) for r in revealed}
    mates: dict[str, list[str]] = {}
    for path in tree:
        if folder_of(path) in folders:
            mates.setdefault(folder_of(path), []).append(path)
        if any(linked_by_test(path, r) for r in revealed):
            out.setdefault(path, None)
    for folder in sorted(mates):
        for path in sorted(mates[folder], key=lambda p: (-past.last_seen.get(p, -1), p))[:FOLDER_MATES + len(chosen)]:
            out.setdefault(path, None)
    known = set(tree) if state.code is not None else None
    return [p for p in out if p not in chosen and (known is None or p in known)]


def live_columns(past: PastCommits, revealed: list[str], paths: list[str], in_tree) -> dict[str, list[float]]:
    """LIVE_FEATURES of `paths` given the revealed files (`in_tree(path)`: 1.0 / 0.0 / NaN as TargetState.in_tree)."""
    rules = past.rules_from(revealed)
    ranks = ranks_of({p: c + s * 1e-6 for p, (c, s) in rules.items()}, paths)
    count = len(revealed)
    new_files = float(sum(in_tree(r) == 0.0 for r in revealed))
    modules = {past.file_module.get(r) for r in revealed} - {None}
    folders = [folder_of(r) for r in revealed]
    tops = [top_folder(r) for r in revealed]
    words = [set(path_words(r)) for r in revealed]
    supports = {r: past.file_commits.get(r, 0) for r in revealed}
    columns: dict[str, list[float]] = {name: [] for name in LIVE_FEATURES}
    for path in paths:
        confs, hits = [], 0
        for r in revealed:
            together = past.partners.get(r, {}).get(path, 0)
            hits += together > 0
            confs.append(together / supports[r] if supports[r] else 0.0)
        conf, support = rules.get(path, (0.0, 0))
        mine = set(path_words(path))
        module = past.file_module.get(path)
        columns["wip_files"].append(count)
        columns["wip_new_files"].append(new_files)
        columns["wip_conf"].append(conf)
        columns["wip_support"].append(support)
        columns["wip_conf_sum"].append(sum(confs))
        columns["wip_hits"].append(hits)
        columns["wip_rank"].append(ranks.get(path, NAN))
        columns["wip_folder_share"].append(folders.count(folder_of(path)) / count)
        columns["wip_top_share"].append(tops.count(top_folder(path)) / count)
        columns["wip_same_module"].append(float(module in modules) if module else NAN)
        columns["wip_path_distance"].append(min(path_distance(path, r) for r in revealed))
        columns["wip_test_link"].append(float(any(linked_by_test(path, r) for r in revealed)))
        columns["wip_name_overlap"].append(max((len(mine & w) / len(mine | w) if mine | w else 0.0) for w in words))
    return columns


def live_rows(state: TargetState, revealed: list[str], cfg: FeatureConfig,
              dense: DenseScorer | None = None) -> CandidateRows:
    """The rows the live ranker scores: the ranker's candidates and the in-progress sources, R left out, with
    the ranker's features and LIVE_FEATURES (labels: the target's files, when it has them)."""
    rows = candidate_rows(state, cfg, lm_extra=in_progress_sources(state, revealed), dense=dense)
    rows = subset(rows, [i for i, p in enumerate(rows.paths) if p not in revealed])
    return rows.with_columns(live_columns(state.past, revealed, rows.paths, state.in_tree))


def subset(rows: CandidateRows, keep: list[int]) -> CandidateRows:
    return CandidateRows(rows.commit, [rows.paths[i] for i in keep], list(rows.names), rows.features[keep],
                         rows.labels[keep])


# ---------------------------------------------------------------- the simulated partial commits


@dataclass
class PartialTarget:
    """One target with its first files revealed: the live rows and what the comparisons need."""

    commit: str
    label: str  # one of K_LABELS
    revealed: list[str]
    remaining: list[str]
    rows: CandidateRows  # live rows (labels: the remaining files)
    normal: np.ndarray  # bool per row: among the ranker's own candidates
    cochange: list[tuple[str, float]]  # co-change from the revealed files alone, best first


def partial_targets(state: TargetState, cfg: FeatureConfig, dense: DenseScorer | None = None) -> list[PartialTarget]:
    """Every simulated partial commit of one target (K_LABELS), its features computed once for all of them."""
    files = list(state.target.files or [])
    counts = revealed_counts(len(files))
    if not counts:
        return []
    tree = tree_files(state)
    sources = {label: in_progress_sources(state, files[:k], tree) for label, k in counts.items()}
    extra = list(dict.fromkeys(p for paths in sources.values() for p in paths))
    rows = candidate_rows(state, cfg, lm_extra=extra, dense=dense)
    normal_paths = own_candidates(state, cfg, rows.paths, extra)
    out = []
    for label, k in counts.items():
        revealed, remaining = files[:k], files[k:]
        wanted = normal_paths | set(sources[label])
        keep = [i for i, p in enumerate(rows.paths) if p in wanted and p not in revealed]
        chosen = subset(rows, keep)
        chosen.labels = np.array([p in remaining for p in chosen.paths], dtype=np.int8)
        chosen = chosen.with_columns(live_columns(state.past, revealed, chosen.paths, state.in_tree))
        rules = state.past.rules_from(revealed)
        cochange = [(p, c) for p, (c, _) in sorted(rules.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
                    if p not in revealed][:10]
        out.append(PartialTarget(state.target.commit, label, revealed, remaining, chosen,
                                 np.array([p in normal_paths for p in chosen.paths]), cochange))
    return out


def own_candidates(state: TargetState, cfg: FeatureConfig, paths: list[str], extra: list[str]) -> set[str]:
    """The ranker's own candidates among `paths` (rows computed with the `extra` sources added)."""
    own = set(candidates(state, cfg))
    return {p for p in paths if p in own or p not in extra}


# ---------------------------------------------------------------- the model


def with_base_score(rows: CandidateRows, booster: lgb.Booster, names: list[str]) -> CandidateRows:
    """The rows with a ranker's score (over its features `names`) as the column BASE_SCORE."""
    values = booster.predict(rows.columns(names)) if len(rows.paths) else np.zeros(0)
    return rows.with_columns({BASE_SCORE: values})


@dataclass
class LiveRanker:
    """The live ranker (see the module docstring): a booster over `features`, and its settings and figures."""

    booster: lgb.Booster
    features: list[str]
    info: dict = field(default_factory=dict)  # live.json: features, training counts, test figures

    def scores(self, rows: CandidateRows, ranker: Ranker | None = None) -> np.ndarray:
        """Each row's score; the ranker's score (BASE_SCORE) is computed when the rows lack it."""
        if not len(rows.paths):
            return np.zeros(0)
        if BASE_SCORE not in rows.names:
            rows = with_base_score(rows, ranker.booster, ranker.features)
        values = self.booster.predict(rows.columns(self.features))
        if self.info.get("starts_from") == BASE_SCORE:  # it learned what to add to the ranker's score
            values = values + rows.columns([BASE_SCORE])[:, 0]
        return values

    def rank(self, rows: CandidateRows, ranker: Ranker | None = None) -> list[tuple[str, float]]:
        return ranked(rows.paths, self.scores(rows, ranker))

    def save(self, folder: Path) -> None:
        with atomic_open(Path(folder) / LIVE_RANKER_FILE) as fh:
            fh.write(self.booster.model_to_string())
        write_json(Path(folder) / LIVE_SETTINGS_FILE, {**self.info, "features": self.features})

    @classmethod
    def load(cls, folder: Path | None) -> "LiveRanker | None":
        """The live ranker of a ranker folder; None when it has none (older folder, too little history)."""
        if folder is None or not (Path(folder) / LIVE_RANKER_FILE).is_file():
            return None
        try:
            info = read_json(Path(folder) / LIVE_SETTINGS_FILE)
            booster = lgb.Booster(model_str=(Path(folder) / LIVE_RANKER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, UserError, lgb.basic.LightGBMError) as exc:
            log.warning("%s: the live ranker is unreadable (%s): the work in progress ranks with the ranker alone",
                        folder, exc)
            return None
        if booster.feature_name() != list(info.get("features", [])):
            log.warning("%s: %s and %s disagree on the features: the live ranker is left out", folder,
                        LIVE_RANKER_FILE, LIVE_SETTINGS_FILE)
            return None
        return cls(booster, list(info["features"]), info)


STARTS = {"from the ranker's score": BASE_SCORE, "from nothing": None}  # how the live ranker may be boosted


def fit_live_ranker(train: list[PartialTarget], val: list[PartialTarget], base_names: list[str], fit: FitSettings,
                    seed: int, previous: LiveRanker | None = None) -> LiveRanker | None:
    """Lambdarank over the ranker's features, LIVE_FEATURES and the ranker's score on the train targets' partial
    commits (their rows carrying BASE_SCORE), early-stopped on val's; boosted from the ranker's score or from nothing
    (STARTS), whichever `choose_start` finds better, or as `previous` was (an update keeps the last full fit's
    choice: four fits fewer). None when there are too few training partial commits."""
    names = list(base_names) + list(LIVE_FEATURES) + [BASE_SCORE]
    groups = [p.rows for p in train]
    if sum(int(g.labels.any()) for g in groups) < 10:
        log.warning("live ranker: %d training partial commits with a remaining file among the candidates: left out",
                    sum(int(g.labels.any()) for g in groups))
        return None
    kept = previous.info.get("chosen") if previous is not None else None
    if kept in STARTS:
        label, choice = kept, {**previous.info.get("choice", {}), "kept_from": "the last full fit"}
    else:
        label, choice = choose_start(groups, val, names, fit, seed)
    booster = fit_lambdarank(groups, [p.rows for p in val], names, fit, seed, start_column=STARTS[label])
    info = {"partial_targets": {"train": len(train), "val": len(val)}, "trees": booster.num_trees(),
            "starts_from": STARTS[label], "chosen": label, "choice": choice, "feature_importance": importances(booster)}
    return LiveRanker(booster, names, info)


def choose_start(train: list[CandidateRows], val: list[PartialTarget], names: list[str], fit: FitSettings,
                 seed: int) -> tuple[str, dict]:
    """Which of STARTS ranks val's partial commits better (recall@5, then MRR; the first on a tie), cross-fitted:
    each half of val's targets is scored by a fit early-stopped on the other half, since the half a fit stopped on
    flatters it. From the ranker's score, early stopping keeps only the trees that improve on it; from nothing, it
    can follow strong in-progress evidence (a file that always changes with the revealed one) further than a few
    trees on top of the ranker's score reach. Which wins depends on the history. -> (the label, each one's figures)."""
    commits = list(dict.fromkeys(p.commit for p in val))
    if len(commits) < 4:
        return next(iter(STARTS)), {}
    first = set(commits[: len(commits) // 2])
    halves = [[p for p in val if p.commit in first], [p for p in val if p.commit not in first]]
    choice, ranked_by = {}, []
    for label, start in STARTS.items():
        found, trees = [], []
        for stop, scored in ((halves[0], halves[1]), (halves[1], halves[0])):
            booster = fit_lambdarank(train, [p.rows for p in stop], names, fit, seed, start_column=start)
            found += partial_scores(LiveRanker(booster, names, {"starts_from": start}), scored)
            trees.append(booster.num_trees())
        figures = slim(aggregate(found)) if found else {}
        choice[label] = {**figures, "trees": trees}
        ranked_by.append((figures.get("recall@5", 0.0), figures.get("mrr", 0.0), -len(ranked_by), label))
    return max(ranked_by)[-1], choice


def partial_scores(live: LiveRanker, partials: list[PartialTarget]) -> list[dict]:
    """The metrics of the remaining files of each partial commit (rows carrying BASE_SCORE), as `live` ranks them."""
    return [score(Prediction(live.rank(p.rows)[:10]), Truth(p.commit, p.remaining, {}, set(), set()))
            for p in partials if len(p.rows.paths)]


# ---------------------------------------------------------------- the figures


METHODS = ("live", "ranker", "cochange")


def simulate(partials: list[PartialTarget], ranker: Ranker, live: LiveRanker | None) -> dict:
    """Per K_LABELS: recall@1/5/10 and MRR of the remaining files for the live ranker, the ranker without the
    in-progress features (its own candidates, the revealed files dropped) and co-change from the revealed files
    alone; candidate recall of the live candidates."""
    rows: dict[str, dict[str, list[dict]]] = {label: {m: [] for m in METHODS} for label in K_LABELS}
    recall: dict[str, list[float]] = {label: [] for label in K_LABELS}
    for partial in partials:
        truth = Truth(partial.commit, partial.remaining, {}, set(), set())
        normal = subset(partial.rows, list(np.flatnonzero(partial.normal)))
        rankings = {"ranker": ranker.rank(normal)[:10], "cochange": partial.cochange}
        if live is not None:
            rankings["live"] = live.rank(partial.rows, ranker)[:10]
        for method, files in rankings.items():
            rows[partial.label][method].append(score(Prediction(files), truth))
        found = set(partial.rows.paths) & set(partial.remaining)
        recall[partial.label].append(len(found) / len(partial.remaining))
    out = {}
    for label in K_LABELS:
        figures = {m: slim(aggregate(r)) for m, r in rows[label].items() if r}
        if figures:
            figures["candidate_recall"] = round(sum(recall[label]) / len(recall[label]), 4)
            out[label] = figures
    return out


def slim(figures: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()
            if k.startswith("recall@") or k in ("mrr", "commits")}


class LiveSimulation:
    """The partial commits of the test targets of a walk (evaluate.py), scored once the walk is done."""

    def __init__(self, ranker: Ranker, live: LiveRanker | None):
        self.ranker, self.live = ranker, live
        self.cfg, self.dense = ranker.candidates(), ranker.dense_scorer()
        self.partials: list[PartialTarget] = []

    def add(self, state: TargetState) -> None:
        self.partials += partial_targets(state, self.cfg, self.dense)

    def figures(self) -> dict:
        fit = {key: self.live.info[key] for key in ("chosen", "choice") if key in self.live.info} if self.live else {}
        return {"ranker_folder": str(self.ranker.folder) if self.ranker.folder else None,
                "live_ranker": self.live is not None, "live_fit": fit or None,
                "by_revealed": simulate(self.partials, self.ranker, self.live)}


def simulation_table(figures: dict) -> list[str]:
    """Markdown lines: recall@5 / @10 of the remaining files per number of revealed files and method."""
    by = (figures or {}).get("by_revealed") or {}
    if not by:
        return []
    lines = ["", "## The work in progress: the remaining files once the first ones are changed", "",
             "recall@5 / recall@10 of the files left to change (commits in brackets); live: the live ranker, "
             "ranker: without the in-progress features, cochange: rules from the revealed files alone.", "",
             "| revealed | " + " | ".join(METHODS) + " | candidate recall |", "|---|" + "---|" * (len(METHODS) + 1)]
    for label, per in by.items():
        cells = [f"{fmt(per[m]['recall@5'])} / {fmt(per[m]['recall@10'])} ({per[m]['commits']})" if m in per else
                 "n/a" for m in METHODS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(per.get('candidate_recall'))} |")
    fit = figures.get("live_fit") or {}
    if fit.get("chosen") and fit.get("choice"):
        tried = "; ".join(f"{name} {fmt(f.get('recall@5'))}" for name, f in fit["choice"].items() if name in STARTS)
        kept = fit["choice"].get("kept_from")
        lines += ["", f"The live ranker was fitted {fit['chosen']}, the better on val's partial commits "
                      f"(recall@5, each half of val scored by a fit early-stopped on the other: {tried})"
                      + (f"; the choice of {kept}, kept by this update." if kept else ".")]
    return lines
