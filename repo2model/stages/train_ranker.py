"""Train the file ranker: LightGBM lambdarank over the history's signals (and the language model's, if any).

Reads
    commits.json, chunks.jsonl          the history; each target's features come only from the commits before it
    training_data_{train,val,test}.pt   which commits are targets, and of which split (the dataset builder's
                                        split by time: every test commit is later than every val commit, ...)
    the repository                      (named in commits.json) for code search and the tree at each target's
                                        parent; without it those features are missing values
    model/                              optional: the language model's log-probability of each candidate file
    ranker/file_vectors.*               optional, with `dense`: the previous run's file embeddings (reused)
    ranker/row_cache.*                  optional: the previous fit's feature rows of every target (reused for
                                        the targets whose history is unchanged: repo2model.ranking.row_cache)
Writes
    ranker/                             ranker.txt (LightGBM text model), ranker_lm.txt (with the language
                                        model's features), change_types.txt, settings.json, metrics.json;
                                        history.json (the history's statistics at its last commit: what
                                        prediction needs, so commits.json and chunks.jsonl may go);
                                        test_rows.npy/.json (the test targets' feature rows, which evaluate.py
                                        reuses); row_cache.npy/.json (every target's rows, for the next fit);
                                        with `dense`: file_vectors.npy/.json (the files' embeddings);
                                        symbol_ranker.txt/.json and symbol_history.json (the symbol ranker)

Steps (run() reads as this list):
    1. targets: every train/val/test commit of the dataset (the latest `max_train_targets` train ones)
    2. one pass over the history: per target, the candidates (every baseline's top files, folder mates of the
       best ones) and their features (repo2model.ranking.features; with `dense`, the task's embedding similarity to
       each file as it is at the target's parent), the change-type examples of its files and, for val/test
       targets when a model exists, the model's log-probability of each candidate; the rows of a target the last
       fit saw, with the same history up to it, are reused (its LM columns computed again when the model changed)
    3. the ranker: lambdarank on the train targets, early-stopped on val (NDCG@5/10), boosted on from the prior
       (repo2model.ranking.prior: a ranker learned across histories, shipped with the project), so that its model
       holds the prior's trees, then its own; the task's features are hidden on the train and val targets whose
       message is uninformative (repo2model.ranking.messages: boilerplate, near-empty), whose counts metrics.json
       gives per split; with `dense`, also the same ranker without the dense features on the same rows, reported
       as ranker_without_dense (ablation); with a prior (not in an update), also the ranker fitted from nothing
       on the same rows, reported as ranker_without_prior (ablation: what the prior gained or lost on this
       history, which evaluation.md says)
    4. the language-model ranker (when a model exists): the model trained on the train targets, so its scores
       there are optimistic; this ranker is fitted on the val targets only (the model never trained on them),
       over the ranker's features, the model's and the first ranker's score; its number of trees is chosen by
       cross-fitting the two halves of val (fit on one, stop on the other, both ways); reported on test
    5. the change-type classifier: LightGBM multiclass on the train targets' files, early-stopped on val
    6. figures on the test targets beside every baseline: recall@1/5/10, MRR, candidate recall, per commit size
    7. the symbol ranker (repo2model.ranking.symbol_training): lambdarank over the units of the best files at each
       target's parent (features: the task against each unit's name, comments and code, the unit's own changes,
       similar past commits and co-change at symbol level, kind, size, its file's score, test links), fitted on
       the later half of the train targets as ranked by a file ranker fitted on the earlier half, early-stopped
       and calibrated on val; symbol recall@5/@10 on test beside the untrained fusion and each single signal
    8. the ranker folder, with the history's statistics after its last commit and the test targets' rows

Then, for predictions as you code (repo2model.ranking.live_training), beside them in the ranker folder: the live
ranker (live_ranker.txt, live.json: the ranker's features plus the in-progress ones and the ranker's score, fitted
on the train targets' simulated partial commits, their first 1, 2 and half of the files revealed, from the
ranker's score or from nothing, whichever does better on val's), the author model (authors.txt,
people.json) and who committed when (activity.json).

Config keys (section `train_ranker`; the baseline keys of the `evaluate` section set the signals):
    candidates_per_baseline  each baseline's top files that become candidates (30)
    sibling_sources          the best fused files whose folder mates become candidates too (5)
    siblings_per_folder      folder mates taken per folder, most recently changed first (10)
    dense                    the dense task-file similarity features (all-MiniLM-L6-v2 as the `index` section
                             sets it: model_dir, max_tokens, whole_file_lines) (false: on fd, axum and click it
                             did not raise recall@5/10 and cost 160-440 s of CPU, bench/bench_prediction.py --dense)
    dense_candidates         with dense: the N files of the parent's tree nearest the task join the candidates
                             (0; every file version of the history is then embedded, not only candidates)
    pool_per_commit_size     where commits are large, candidates are made at least this many x the typical commit
                             size (the mean files of the last 50 commits) by the best files of the tree by a
                             cheap pre-score (repo2model.ranking.pool), e.g. 15 (0 = off: on axum-agentic it raised
                             candidate recall 0.65 -> 0.94 but not recall@5, for 1.8x the feature time)
    pool_max                 but at most this many (1000)
    lm_candidates            the language model scores the best this many candidates by the fusion's rank (32;
                             0 = all): scoring about 100 per target was two thirds of axum's train_ranker stage
    prior                    auto: start from the shipped prior | off: from nothing | the folder of another
                             prior (prior.txt + prior.json, written by bench/train_prior.py) (auto)
    num_trees                boosting rounds at most; early stopping on val picks fewer (1000)
    early_stopping_rounds    rounds without improvement on val before stopping (50)
    learning_rate, num_leaves, min_data_in_leaf, feature_fraction   LightGBM's (0.05, 15, 20, 0.8)
    num_threads              LightGBM threads (1: on a busy machine more threads spin and slow it down)
    max_train_targets        train on the latest N train targets only (0 = all)
    change_types             also train the change-type classifier (true)
    language_model           auto: the model's features when <output_dir>/model (or predict.model_dir)
                             exists | off
    device                   where the language model scores files: cpu, cuda, cuda:0 ... (cpu)
    update                   refit as an update (pipeline.py --update sets it): the saved language-model columns
                             of the old val/test targets are kept (the model only continued), the symbol
                             ranker of the live ranker folder is kept with the whole history's symbols (false)
    update_refit_share       update: the symbol ranker is fitted again once the targets grew by this share since
                             it was fitted (0.25)

    python train_ranker.py --config config.yaml
    python train_ranker.py --output-dir outputs --no-language-model
    python train_ranker.py --config config.yaml --dense          # with the dense similarity features
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb

from repo2model.core.artifacts import require
from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.config import load_config, section_dict
from repo2model.core.errors import UserError
from repo2model.core.paths import ArtifactPaths
from repo2model.core.progress import progress
from repo2model.language.examples import ExampleSet
from repo2model.ranking.baselines import BASELINES
from repo2model.ranking.change_types import TypeExample, change_type_figures, fit_classifier, type_example
from repo2model.ranking.config import EvaluationConfig, RankerConfig
from repo2model.ranking.dense import dense_settings, file_embeddings, scorer_of
from repo2model.ranking.features import (
    FEATURES, LM_FEATURES, CandidateRows, FeatureConfig, LMScorer, candidate_rows, lm_scorer, task_hidden,
)
from repo2model.ranking.file_ranking import history_record
from repo2model.ranking.history import BaselineConfig, PastCommits
from repo2model.ranking.live import LiveRanker
from repo2model.ranking.live_training import LiveTraining
from repo2model.ranking.messages import uninformative_figures
from repo2model.ranking.metrics import (
    Prediction, Truth, aggregate, by_size, candidate_recall, candidate_recall_by_size, fmt, score,
)
from repo2model.ranking.prior import PRIOR_DIR, Prior, load_prior
from repo2model.ranking.ranker import (
    BASE_SCORE, CHANGE_TYPES_FILE, LMFit, Ranker, fit_lambdarank, fit_lm_ranker, importances, language_model_identity,
    ranked, rows_settings,
)
from repo2model.ranking.row_cache import RowCache, model_key, shaping_settings
from repo2model.ranking.symbol_features import SYMBOL_FEATURES
from repo2model.ranking.symbol_history import SymbolHistory
from repo2model.ranking.symbol_ranker import SymbolRanker
from repo2model.ranking.symbol_training import SymbolTraining, train_symbol_ranker
from repo2model.ranking.targets import repository_of, walk_targets
from repo2model.retrieval.embedding import FileEmbeddings
from repo2model.retrieval.index_config import IndexConfig, load_index_config
from repo2model.serving.predictor import Predictor
from repo2model.serving.settings import PredictionConfig

SECTION = "train_ranker"
# The packages it runs, which its fingerprint covers (export: llama.cpp scores with predict.backend llama_cpp).
CODE = ("core", "git", "code", "language", "training", "retrieval", "ranking", "serving", "export")
Config = RankerConfig
# The baselines' settings (evaluation) shape the features; the prediction section says where the model is; the
# index section, which embedding model and file texts the dense features use.
USES_SECTIONS = {"evaluation": "evaluate", "prediction": "predict", "index": "index"}
log = logging.getLogger("train_ranker")

SPLITS = ("train", "val", "test")


@dataclass
class Collected:
    """What one pass over the history gathers, per split."""

    rows: dict[str, list[CandidateRows]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    truths: dict[str, Truth] = field(default_factory=dict)  # val and test targets
    baselines: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)  # test: name -> top 10
    types: dict[str, list[TypeExample]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    code_search: bool = False
    tasks: dict[str, str] = field(default_factory=dict)  # each target's task (its message)
    uninformative: set[str] = field(default_factory=set)  # targets whose message says nothing (messages.py)
    history: dict | None = None  # history.json: the statistics after the last commit (file_ranking.history_record)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (the machine may be shared)
    dense_cpu_seconds: float = 0.0  # the part of it spent in the dense features (embedding files and tasks)
    rows_cache: dict = field(default_factory=dict)  # targets whose rows were reused from the last fit / computed


@dataclass
class Fitted:
    """The models fitted on the collected rows, and how long that took."""

    booster: lgb.Booster
    booster_lm: lgb.Booster | None  # with the language model's features
    lm_choice: dict | None  # whether predictions use booster_lm, and the held-out val figures that chose (lm_choice)
    without_dense: lgb.Booster | None  # the ablation (dense only)
    without_prior: lgb.Booster | None  # the ablation (with a prior only): fitted from nothing on the same rows
    classes: list[str]  # the change-type classes
    type_model: lgb.Booster | None
    seconds: float  # the two rankers (not the ablation)
    cpu_seconds: float
    types_seconds: float


class LanguageModelScores:
    """The language model's log-probability that a target starts with each candidate file, from the exact
    prompt the dataset builder made for that target (its example's ids up to the target)."""

    def __init__(self, predictor: Predictor, cfg: PredictionConfig, prompts: dict[str, list[int]], identity: dict):
        self.predictor, self.cfg, self.prompts = predictor, cfg, prompts
        self.identity = identity  # ranker.language_model_identity: saved with the test rows

    def for_target(self, commit: str, modules: dict[str, str]) -> LMScorer | None:
        prompt = self.prompts.get(commit)
        if prompt is None:
            return None
        return lm_scorer(lambda files: self.predictor.score_files(prompt, files, self.cfg), modules)


# ---------------------------------------------------------------- the run


def run(cfg: RankerConfig, paths: ArtifactPaths, seed: int = 42, evaluation: EvaluationConfig | None = None,
        prediction: PredictionConfig | None = None, index: IndexConfig | None = None) -> dict:
    started = time.monotonic()
    baselines = (evaluation or EvaluationConfig()).baselines()
    splits = load_splits(paths)
    targets = choose_targets(splits, cfg.max_train_targets)
    repo = repository_of(paths.commits)
    if repo is None:
        log.warning("the repository of %s is not there: code search, the tree and the dense features are left "
                    "out", paths.commits)
    scores = load_language_model(cfg, paths, prediction or PredictionConfig(), splits)
    dense_info = dense_settings(index or IndexConfig()) if cfg.dense else None
    embeddings = load_embeddings(dense_info, paths)
    cache = load_row_cache(paths, cfg, baselines, repo, dense_info)
    cache.keeps_lm_columns = cfg.update  # an update's model continued the last one: its columns are kept
    live = LiveTraining(cfg.candidates(), scorer_of(embeddings) if embeddings is not None else None)
    carried = carried_symbol_ranker(cfg, paths, len(targets)) if cfg.update and repo is not None else None
    symbol_history = SymbolHistory() if carried is not None else None
    collected = collect(paths, targets, baselines, cfg.candidates(), repo, scores, embeddings, live, cache=cache,
                        symbol_history=symbol_history)
    prior = load_prior(cfg.prior, cfg.candidates().names())
    fitted = fit(cfg, collected, seed, with_lm=scores is not None, prior=prior)
    if carried is not None:
        carried.history = symbol_history  # the whole history's symbols, the new commits included
        symbols = carried
    else:
        symbols = train_symbol_ranker(SymbolTraining(paths, targets, collected.rows, fitted.booster,
                                                     cfg.candidates().names(), cfg.fit(), seed, baselines, repo,
                                                     index or IndexConfig()))
        if symbols is not None:
            symbols.metrics["fitted_at_targets"] = len(targets)
    settings = ranker_settings(cfg, baselines, dense_info, collected, fitted, seed)
    settings["prior"] = prior.summary() if prior is not None else None
    shaped_by = rows_settings(baselines, repo, None, paths.commits, paths.chunks,
                              scores.identity if scores is not None else None)
    ranker = Ranker(fitted.booster, settings, fitted.booster_lm, fitted.type_model, file_embeddings=embeddings,
                    history=collected.history, test_rows=(shaped_by, collected.rows["test"]),
                    companions=[symbols] if symbols is not None else [])
    ranker.metrics = ranker_metrics(ranker, collected, fitted, embeddings)
    if symbols is not None:
        ranker.metrics["symbols"] = symbols.metrics
    ranker.save(paths.ranker_dir)
    cache.save(paths.ranker_dir)  # every target's rows, for the next refit
    previous = LiveRanker.load(ArtifactPaths.under(paths.output_dir).ranker_dir) if cfg.update else None
    extras = live.finish(ranker, paths.ranker_dir, cfg.fit(), seed,  # the live ranker, authors, activity
                         prior.booster if prior is not None else None, collected.uninformative, previous)
    return {**summarize(ranker.metrics, collected, fitted, paths, started), "work_in_progress": extras}


def load_splits(paths: ArtifactPaths) -> dict[str, ExampleSet]:
    sets = {split: ExampleSet.load(require(paths.split_data(split), "dataset_builder")) for split in SPLITS}
    if not len(sets["train"]):
        raise UserError(f"{paths.train_data}: has no examples: the history is too short to train a ranker")
    return sets


def choose_targets(splits: dict[str, ExampleSet], max_train: int) -> dict[str, str]:
    """commit -> split for every target (train: the latest `max_train` when > 0). After an update
    (pipeline.py --update) the train split holds the new examples and a replay sample only; the ranker,
    refitted from scratch, then learns from every commit trained on so far (the split's trained_commits)."""
    targets: dict[str, str] = {}
    for split, examples in splits.items():
        commits = list(examples.commits)
        if split == "train" and max_train:
            commits = commits[-max_train:]
        elif split == "train":
            commits = sorted(set(examples.meta.get("trained_commits") or ()) | set(commits))
        targets.update({commit: split for commit in commits})
    return targets


def load_language_model(cfg: RankerConfig, paths: ArtifactPaths, prediction: PredictionConfig,
                        splits: dict[str, ExampleSet]) -> LanguageModelScores | None:
    """The model's scorer when `language_model: auto` and a model folder is there; else None."""
    model_dir = prediction.model_dir or paths.model_dir
    if cfg.language_model == "off" or not Path(model_dir).is_dir():
        return None
    predictor = Predictor.load(model_dir, prediction, device=cfg.device, paths=paths, ranker=False)
    prompts = {}
    for split in ("val", "test"):  # targets the model did not train on
        examples = splits[split]
        for i, commit in enumerate(examples.commits):
            prompts[commit] = examples.ids(i)[: int(examples.target_starts[i])].tolist()
    log.info("ranker: the language model %s scores the candidates of %d val/test targets", model_dir, len(prompts))
    identity = language_model_identity(model_dir, cfg.device, section_dict(prediction))
    return LanguageModelScores(predictor, prediction, prompts, identity)


def load_embeddings(dense_info: dict | None, paths: ArtifactPaths) -> FileEmbeddings | None:
    """With `dense`: the file embeddings, holding the vectors of the last run's ranker folder. A refit (e.g. after
    an update) embeds only the file versions new since then (vectors are keyed by path and blob: the same text,
    no leakage)."""
    if dense_info is None:
        return None
    embeddings = file_embeddings(dense_info)
    embeddings.load(paths.ranker_dir)
    return embeddings


def carried_symbol_ranker(cfg: RankerConfig, paths: ArtifactPaths, targets: int) -> SymbolRanker | None:
    """In an update: the live ranker folder's symbol ranker, to keep (its history is rebuilt by the walk), unless
    the targets grew by more than `update_refit_share` since it was fitted (then None: it is fitted again). Its
    rows depend on the file ranker's ranking of every train target, so refitting it costs a second walk over the
    history; an update adds a few targets to hundreds."""
    live_folder = ArtifactPaths.under(paths.output_dir).ranker_dir
    try:
        carried = SymbolRanker.load(live_folder) if live_folder.is_dir() else None
    except UserError as exc:
        log.info("ranker: update: the live symbol ranker is not usable (%s): fitted again", exc)
        return None
    if carried is None or carried.booster.feature_name()[: len(SYMBOL_FEATURES)] != list(SYMBOL_FEATURES):
        return None  # none, or one of other features (another version of the code): fitted again
    fitted_at = int(carried.metrics.get("fitted_at_targets") or 0)
    if not fitted_at or targets > fitted_at * (1 + cfg.update_refit_share):
        log.info("ranker: update: the symbol ranker is fitted again (%d targets now, %s when it was fitted; "
                 "update_refit_share %.2f)", targets, fitted_at or "unknown", cfg.update_refit_share)
        return None
    carried.metrics = {**carried.metrics, "carried_over": {
        "from": str(live_folder), "fitted_at_targets": fitted_at, "targets_now": targets,
        "why": "an update keeps the symbol ranker until the targets grow by update_refit_share"}}
    log.info("ranker: update: the symbol ranker fitted at %d targets is kept (%d now; refitted beyond %.0f%% more)",
             fitted_at, targets, 100 * cfg.update_refit_share)
    return carried


def load_row_cache(paths: ArtifactPaths, cfg: RankerConfig, baselines: BaselineConfig, repo: Path | None,
                   dense_info: dict | None) -> RowCache:
    """The rows of the targets a previous fit computed: from this ranker folder, else from the live one (an update
    writes its ranker under next/)."""
    live_folder = ArtifactPaths.under(paths.output_dir).ranker_dir
    folders = [paths.ranker_dir] + ([live_folder] if live_folder != paths.ranker_dir else [])
    return RowCache.load(folders, shaping_settings(baselines, cfg.candidates(), cfg.candidates().names(), repo,
                                                   dense_info))


def collect(paths: ArtifactPaths, targets: dict[str, str], baselines: BaselineConfig, features: FeatureConfig,
            repo: Path | None, scores: LanguageModelScores | None, embeddings: FileEmbeddings | None,
            live: LiveTraining | None = None, cache: RowCache | None = None,
            symbol_history: SymbolHistory | None = None) -> Collected:
    """One pass over the history: each target's candidate rows, change-type examples, and (test) baselines;
    at the end, the statistics of the whole history. `live` gathers the partial commits and authors. `cache`: the
    rows a previous fit computed, reused where the history up to the target is the same (and kept for the next).
    `symbol_history` observes every commit (a symbol ranker carried over by an update needs the whole history's)."""
    started, cpu = time.monotonic(), time.process_time()
    out = Collected(code_search=repo is not None)
    cache = cache if cache is not None else RowCache({})
    lm_key = model_key(Path(scores.identity["model_dir"]), scores.identity) if scores is not None else None
    dense = scorer_of(embeddings) if embeddings is not None else None
    bar = progress(total=len(targets), desc="features", unit="targets")

    def timed_dense(task, code, paths):  # the dense features' share of the CPU time, for the record
        cpu = time.process_time()
        try:
            return dense(task, code, paths)
        finally:
            out.dense_cpu_seconds += time.process_time() - cpu

    past, commits = PastCommits(baselines), []

    def on_commit(commit, chunks):
        commits.append(commit["hash"])
        cache.observe(commit, chunks)
        if live is not None:
            live.on_commit(commit, chunks)
        if symbol_history is not None:
            symbol_history.observe(chunks)

    for state in walk_targets(paths.commits, paths.chunks, targets, baselines, repo, past=past, on_commit=on_commit):
        target = state.target
        lm = scores.for_target(target.commit, state.past.file_module) if scores else None
        rows = cache.rows_for(target, lambda: candidate_rows(state, features, lm=lm,
                                                             dense=timed_dense if dense is not None else None),
                              lm, lm_key)
        out.rows[target.split].append(rows)
        out.tasks[target.commit] = target.task
        out.types[target.split] += [type_example(state.past, path, state.task_words, state.in_tree(path),
                                                 target.chunks) for path in target.files]
        if target.split != "train":
            out.truths[target.commit] = Truth.of(target.commit, target.chunks)
        if target.split == "test":
            out.baselines[target.commit] = {name: ranking[:10] for name, ranking in state.rankings.items()}
        if live is not None:
            live.add(state, rows)
        bar.update()
    bar.close()
    out.history = history_record(past, commits, repo)
    # Judged against the whole history's messages: boilerplate is what repeats anywhere in it.
    out.uninformative = {c for c, task in out.tasks.items() if past.message_counts.uninformative(task)}
    out.seconds, out.cpu_seconds = time.monotonic() - started, time.process_time() - cpu
    out.rows_cache = cache.summary()
    log.info("ranker: rows of %d targets reused from the last fit (%d of them with the language model's columns "
             "computed again%s), %d computed", cache.reused, cache.lm_computed,
             f", {cache.lm_kept} with those of the model the update continued" if cache.lm_kept else "",
             cache.computed)
    return out


# ---------------------------------------------------------------- fitting


def fit(cfg: RankerConfig, collected: Collected, seed: int, with_lm: bool, prior: Prior | None = None) -> Fitted:
    """The ranker (and, with the language model, the LM ranker), the ablation without the dense features (not
    counted in the fit time), and the change-type classifier; both rankers boosted on from `prior`, the task's
    features hidden on the targets with uninformative messages."""
    names = cfg.candidates().names()
    train = task_hidden(collected.rows["train"], collected.uninformative)
    val = task_hidden(collected.rows["val"], collected.uninformative)
    start = prior.booster if prior is not None else None
    started, cpu = time.monotonic(), time.process_time()
    booster = fit_lambdarank(train, val, names, cfg.fit(), seed, init_model=start)
    lm_fit = fit_lm_ranker(booster, val, cfg.fit(), seed, names) if with_lm else None
    choice = lm_choice(lm_fit, collected.truths) if lm_fit is not None else None
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    without_dense = fit_lambdarank(train, val, list(FEATURES), cfg.fit(), seed, init_model=start) if cfg.dense else None
    # an update keeps to what is new (its figures are the refit's; the last full run's metrics.json has the ablation)
    without_prior = fit_lambdarank(train, val, names, cfg.fit(), seed) if start is not None and not cfg.update else None
    types_started = time.monotonic()
    classes, type_model = fit_classifier(collected.types, cfg.fit(), seed) if cfg.change_types else ([], None)
    return Fitted(booster, lm_fit.booster if lm_fit is not None else None, choice, without_dense, without_prior,
                  classes, type_model, seconds, cpu, time.monotonic() - types_started)


def lm_choice(lm_fit: LMFit, truths: dict[str, Truth]) -> dict:
    """Whether predictions should rank with the LM ranker: on the val targets, each scored by the LM ranker fitted
    on the other half of val, against ranker.txt's scores of the same rows. It is used when its recall@5 is
    higher (equal: when its MRR is), else ranker.txt ranks and the LM ranker stays an ablation. ranker.txt was
    early-stopped on these targets, so the comparison leans a little towards it."""
    figures: dict[str, list[dict]] = {"ranker": [], "ranker_lm": []}
    for rows, held_out in lm_fit.held_out:
        for name, values in (("ranker", rows.columns([BASE_SCORE])[:, 0]), ("ranker_lm", held_out)):
            figures[name].append(score(Prediction(ranked(rows.paths, values)[:10]), truths[rows.commit]))
    means = {name: aggregate(r) for name, r in figures.items()}
    key = {name: (round(m["recall@5"] or 0.0, 6), round(m["mrr"] or 0.0, 6)) for name, m in means.items()}
    used = key["ranker_lm"] > key["ranker"]
    log.info("ranker: on %d held-out val targets the language-model ranker's recall@5 is %.3f against %.3f: "
             "predictions use %s", len(lm_fit.held_out), key["ranker_lm"][0], key["ranker"][0],
             "it" if used else "ranker.txt")
    return {"used": used, "val_targets": len(lm_fit.held_out),
            **{name: {k: round(m[k], 4) for k in ("recall@1", "recall@5", "recall@10", "mrr") if m[k] is not None}
               for name, m in means.items()}}


def ranker_settings(cfg: RankerConfig, baselines: BaselineConfig, dense_info: dict | None, collected: Collected,
                    fitted: Fitted, seed: int) -> dict:
    """settings.json: what the features were computed with, for prediction to compute them the same way."""
    return {
        "features": cfg.candidates().names(),
        "lm_features": list(LM_FEATURES) + [BASE_SCORE] if fitted.booster_lm is not None else [],
        "lm_used": bool(fitted.lm_choice and fitted.lm_choice["used"]),
        "baselines": section_dict(baselines),
        "candidates": section_dict(cfg.candidates()),
        "dense": dense_info,
        "change_type_classes": fitted.classes,
        "code_search": collected.code_search,
        "lightgbm": {"version": lgb.__version__, **section_dict(cfg.fit()), "seed": seed},
    }


# ---------------------------------------------------------------- figures


def ranker_metrics(ranker: Ranker, collected: Collected, fitted: Fitted, embeddings: FileEmbeddings | None) -> dict:
    """metrics.json: the test figures beside every baseline (and the ablation), importances, times."""
    ablation = {}
    if fitted.without_dense is not None:
        ablation["ranker_without_dense"] = Ranker(fitted.without_dense, {**ranker.settings, "features": list(FEATURES)})
    if fitted.without_prior is not None:
        ablation["ranker_without_prior"] = Ranker(fitted.without_prior, {**ranker.settings, "prior": None})
    metrics = measure(ranker, collected, ablation)
    metrics["change_types"] = change_type_figures(ranker.change_type_model, ranker.classes, collected.types["test"])
    if metrics["change_types"]:
        metrics["change_types"]["model_file"] = CHANGE_TYPES_FILE
    without_dense, booster_lm = fitted.without_dense, fitted.booster_lm
    prior = ranker.settings.get("prior")
    prior_trees = prior["trees"] if prior else 0  # importances are of the trees after them: what this history taught
    metrics.update({
        "targets": {s: len(collected.rows[s]) for s in SPLITS},
        "messages": uninformative_figures({s: [r.commit for r in collected.rows[s]] for s in SPLITS},
                                          collected.uninformative),
        "prior": prior,
        "trees": fitted.booster.num_trees(),
        "own_trees": fitted.booster.num_trees() - prior_trees,
        "trees_lm": booster_lm.num_trees() if booster_lm is not None else None,
        "lm_choice": fitted.lm_choice,
        "prior_ablation": prior_ablation(metrics["test"]) if "ranker_without_prior" in metrics["test"] else None,
        "feature_importance": importances(fitted.booster, after=prior_trees),
        "feature_importance_lm": importances(booster_lm) if booster_lm is not None else None,
        "features_seconds": round(collected.seconds, 2),
        "rows": collected.rows_cache,
        "features_cpu_seconds": round(collected.cpu_seconds, 2),
        "dense_cpu_seconds": round(collected.dense_cpu_seconds, 2),
        "fit_seconds": round(fitted.seconds, 2),
        "fit_cpu_seconds": round(fitted.cpu_seconds, 2),
        "change_types_seconds": round(fitted.types_seconds, 2),
        "dense_files_embedded": embeddings.embedded if embeddings is not None else None,
        "feature_importance_without_dense": (importances(without_dense, after=prior_trees)
                                             if without_dense is not None else None),
    })
    return metrics


def prior_ablation(test: dict) -> dict:
    """The test figures of the ranker and of the same ranker fitted from nothing: what the prior did here."""
    return {"targets": test["ranker"]["commits"], **{
        name: {k: round(test[name][k], 4) for k in ("recall@1", "recall@5", "recall@10", "mrr")
               if test[name].get(k) is not None} for name in ("ranker", "ranker_without_prior")}}


def measure(ranker: Ranker, collected: Collected, others: dict[str, Ranker] | None = None) -> dict:
    """Test figures of the ranker(s) beside every baseline (and `others`: name -> ranker over the same rows,
    e.g. the ablation), candidate recall, per commit size; val for the record."""
    out: dict = {}
    for split in ("val", "test"):
        rows_by_name: dict[str, list[dict]] = {}
        recalls = []
        for rows in collected.rows[split]:
            truth = collected.truths[rows.commit]
            recalls.append(candidate_recall(rows.paths, truth.files))
            rankers = {"ranker": (ranker, False), **{name: (other, False) for name, other in (others or {}).items()}}
            if ranker.booster_lm is not None and split == "test":
                rankers["ranker_lm"] = (ranker, True)
            for name, (model, lm) in rankers.items():
                rows_by_name.setdefault(name, []).append(score(Prediction(model.rank(rows, lm=lm)[:10]), truth))
            if split == "test":
                for name, ranking in collected.baselines[rows.commit].items():
                    rows_by_name.setdefault(name, []).append(score(Prediction(ranking), truth))
        out[split] = {name: aggregate(r) for name, r in rows_by_name.items()}
        if split == "test":
            out["by_size"] = {name: by_size(r) for name, r in rows_by_name.items()}
            valid = [r for r in recalls if r is not None]
            out["candidate_recall"] = round(sum(valid) / len(valid), 4) if valid else None
            out["candidate_recall_by_size"] = candidate_recall_by_size(
                [(rows.paths, collected.truths[rows.commit].files) for rows in collected.rows[split]])
    return out


def summarize(metrics: dict, collected: Collected, fitted: Fitted, paths: ArtifactPaths, started: float) -> dict:
    """The stage's summary (and its log line)."""
    test = metrics["test"]
    summary = {
        "ranker": str(paths.ranker_dir),
        "targets": metrics["targets"],
        "test": {name: {k: test[name].get(k) for k in ("recall@1", "recall@5", "recall@10", "mrr")} for name in test},
        "candidate_recall": metrics["candidate_recall"],
        "messages": metrics["messages"],
        "seconds": round(time.monotonic() - started, 1),
    }
    best = max(BASELINES, key=lambda n: (test.get(n, {}).get("recall@5") or 0.0))
    log.info("ranker: %d train targets (%d with an uninformative message), %d trees (%d of them the prior's); test "
             "recall@5 %s (best baseline %s %s), recall@10 %s, candidate recall %s; features %.1fs, fit %.1fs -> %s",
             metrics["targets"]["train"], metrics["messages"]["train"]["uninformative"], fitted.booster.num_trees(),
             fitted.booster.num_trees() - metrics["own_trees"], fmt(test["ranker"]["recall@5"]), best,
             fmt(test.get(best, {}).get("recall@5")),
             fmt(test["ranker"]["recall@10"]), fmt(metrics["candidate_recall"]), collected.seconds, fitted.seconds,
             paths.ranker_dir)
    return summary


# ---------------------------------------------------------------- stage protocol


def stage_inputs(cfg: RankerConfig, paths: ArtifactPaths) -> list[Path]:
    inputs = [paths.commits, paths.chunks, paths.train_data, paths.val_data, paths.test_data]
    if cfg.language_model != "off" and paths.model_dir.is_dir():
        inputs.append(paths.model_dir)
    if cfg.prior != "off":  # not code: its files are no module of the fingerprint's
        inputs.append(PRIOR_DIR if cfg.prior == "auto" else Path(cfg.prior))
    return inputs


def stage_outputs(cfg: RankerConfig, paths: ArtifactPaths) -> list[Path]:
    return [paths.ranker_dir]


# ---------------------------------------------------------------- CLI


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    parser.add_argument("--commits", type=Path, help="commits.json (default: <output_dir>/commits.json)")
    parser.add_argument("--chunks", type=Path, help="chunks.jsonl (default: <output_dir>/chunks.jsonl)")
    parser.add_argument("--output", type=Path, help="the ranker folder to write (default: <output_dir>/ranker)")
    parser.add_argument("--no-language-model", action="store_true", help="leave the language model's features out")
    parser.add_argument("--dense", action=argparse.BooleanOptionalAction, default=None,
                        help="override train_ranker.dense (the dense task-file similarity features)")
    parser.add_argument("--max-train-targets", type=int, help="override train_ranker.max_train_targets")
    parser.add_argument("--threads", type=int, dest="num_threads", help="override train_ranker.num_threads")
    parser.add_argument("--seed", type=int, help="override pipeline.seed")
    args = parser.parse_args(argv)
    cfg, pipeline_cfg, paths = load_stage(args, SECTION, Config)
    cfg = apply_overrides(cfg, SECTION, {"max_train_targets": args.max_train_targets, "num_threads": args.num_threads,
                                         "language_model": "off" if args.no_language_model else None,
                                         "dense": args.dense})
    for name, attr in (("commits", "commits"), ("chunks", "chunks"), ("output", "ranker_dir")):
        if getattr(args, name) is not None:
            paths = dataclasses.replace(paths, **{attr: getattr(args, name).resolve()})
    evaluation, prediction = EvaluationConfig(), PredictionConfig()
    if args.config is not None:
        loaded = load_config(args.config, {"evaluate": EvaluationConfig, "predict": PredictionConfig},
                             strict_sections=False)
        evaluation, prediction = loaded["evaluate"], loaded["predict"]
    run(cfg, paths, seed=args.seed if args.seed is not None else pipeline_cfg.seed, evaluation=evaluation,
        prediction=prediction, index=load_index_config(args.config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
