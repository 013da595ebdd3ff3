"""Watching a repository while its developer works: a new prediction each time HEAD or the set of changed files
changes (predict.py --watch prints one JSON line per prediction; serve.py's GET /watch sends server-sent events).

    watch = Watch(predictor, repo, task, scraper_cfg=..., chunker_cfg=..., on_new_head=update_index)
    for prediction in watch.predictions(stop_event):     # the first at once, then one per change
        print(json.dumps(prediction.to_json()))

The file system is followed with `watchfiles` (inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on
Windows: the process sleeps until something changes, no polling). Events are debounced (`debounce_ms`); a batch
that touches a file outside the ignored folders (.git's objects, the usual caches, the scraper's exclude_globs
folders such as target/ and node_modules/), or HEAD, a ref or packed-refs inside .git, makes the working tree be
read again (repo2model.serving.work_in_progress); a prediction is made only when its key (HEAD and the set of
changed files with their status) differs from the last one. Saving a file already changed again predicts
nothing new. When HEAD moves (a commit, a checkout), the recent history is scraped again (the ranker's statistics
take the new commits in) and `on_new_head(repo)` runs: the code index's incremental update (`update_index`).

`heartbeat_s`: the stream yields None after that long without a prediction (a server writes a keep-alive then,
which is also how it notices a client that left). `stop_event` (threading.Event) ends the loop: the watcher looks
at it every STEP_MS.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from watchfiles import Change, DefaultFilter
from watchfiles._rust_notify import RustNotify  # watchfiles' documented Rust backend (watch() is built on it)

from repo2model.code.chunking import ChunkerConfig
from repo2model.core.errors import UserError
from repo2model.git.commands import git, open_repository
from repo2model.git.scraping import PathFilter, ScraperConfig
from repo2model.serving.history import history_from_repo
from repo2model.serving.live_prediction import top_paths
from repo2model.serving.prediction import Prediction
from repo2model.serving.work_in_progress import WorkInProgress, read_work_in_progress

log = logging.getLogger("predict")

DEBOUNCE_MS = 200  # events closer than this are one batch (an editor's save is several events)
STEP_MS = 50  # how often the waiting watcher (in Rust) looks at the stop event and for Ctrl-C
GIT_PATHS = ("HEAD", "packed-refs")  # inside .git: what moves HEAD or a branch


class RepositoryFilter(DefaultFilter):
    """Changes worth reading the working tree again for: files outside .git and the ignored folders, and
    HEAD / refs / packed-refs inside the git folder."""

    def __init__(self, top: Path, git_dir: Path, scraper_cfg: ScraperConfig):
        super().__init__()
        self.top, self.git_dir = top, git_dir
        excluded = PathFilter([], scraper_cfg.exclude_globs)
        self.folders = set(excluded.folders)

    def __call__(self, change: Change, path: str) -> bool:
        where = Path(path)
        if where == self.git_dir or self.git_dir in where.parents:
            inside = where.relative_to(self.git_dir).as_posix()
            return inside in GIT_PATHS or inside.startswith("refs/")
        if not super().__call__(change, path):
            return False
        try:
            parts = where.relative_to(self.top).parts
        except ValueError:
            return False
        return not any(part in self.folders for part in parts[:-1])


def git_folder(top: Path) -> Path:
    return Path(git(top, "rev-parse", "--absolute-git-dir").strip())


class Watch:
    """Predictions that follow a repository's working tree and HEAD (see the module docstring)."""

    def __init__(self, predictor, repo: Path | str, task: str = "", options: dict | None = None, seed: int = 42,
                 scraper_cfg: ScraperConfig | None = None, chunker_cfg: ChunkerConfig | None = None,
                 on_new_head: Callable[[Path], None] | None = None, debounce_ms: int = DEBOUNCE_MS,
                 predict: Callable[..., Prediction] | None = None):
        self.predictor, self.task, self.options, self.seed = predictor, task, options, seed
        self.top = open_repository(repo)
        self.scraper_cfg, self.chunker_cfg = scraper_cfg or ScraperConfig(), chunker_cfg or ChunkerConfig()
        self.on_new_head, self.debounce_ms = on_new_head, debounce_ms
        self.predict_with = predict  # (history, work) -> Prediction; default: the predictor's, under the options
        self.history: list = []
        self.head: str | None = None
        self.key: tuple | None = None
        self.top_files: frozenset[str] | None = None
        self.events = 0  # event batches seen
        self.readings = 0  # working tree readings
        self.predictions_made = 0

    def predictions(self, stop_event: threading.Event | None = None,
                    heartbeat_s: float | None = None) -> Iterator[Prediction | None]:
        """The first prediction now, then one per change; None after `heartbeat_s` without one (when set).
        Ctrl-C while waiting raises KeyboardInterrupt."""
        watch_filter = RepositoryFilter(self.top, git_folder(self.top), self.scraper_cfg)
        paths = {self.top} if self.top in watch_filter.git_dir.parents else {self.top, watch_filter.git_dir}
        timeout_ms = int(heartbeat_s * 1000) if heartbeat_s else 0  # 0: wait for changes as long as it takes
        # The watcher is up before the first reading: a change made meanwhile is an event, not lost.
        with RustNotify(sorted(str(p) for p in paths), False, False, 300, True, False) as notify:
            yield self.predict(self.read())
            quiet_since = time.monotonic()
            while True:
                raw = notify.watch(self.debounce_ms, STEP_MS, timeout_ms, stop_event)
                if raw == "signal":
                    raise KeyboardInterrupt
                if raw == "stop" or (stop_event is not None and stop_event.is_set()):
                    return
                if raw != "timeout" and any(watch_filter(Change(change), path) for change, path in raw):
                    self.events += 1
                    work = self.read()
                    if work.key != self.key:
                        quiet_since = time.monotonic()
                        yield self.predict(work)
                        continue
                if heartbeat_s is not None and time.monotonic() - quiet_since >= heartbeat_s:
                    quiet_since = time.monotonic()
                    yield None

    def read(self) -> WorkInProgress:
        self.readings += 1
        return read_work_in_progress(self.top, self.scraper_cfg, self.chunker_cfg)

    def predict(self, work: WorkInProgress) -> Prediction:
        head = work.tree.head
        if head != self.head:
            moved = self.head is not None
            self.history = history_from_repo(self.top, self.history_commits(), self.scraper_cfg, self.chunker_cfg)
            self.head = head
            if moved and self.on_new_head is not None:
                try:
                    self.on_new_head(self.top)
                except UserError as exc:  # the index in use, a server down: the predictions go on
                    log.warning("watch: the code index was not updated: %s", exc)
        self.key = work.key
        if self.predict_with is not None:
            prediction = self.predict_with(self.history, work)
        else:
            prediction = self.predictor.predict(self.history, self.task, self.options, self.seed, repo=self.top,
                                                work=work)
        files = top_paths(prediction)
        if prediction.work_in_progress is not None:
            prediction.work_in_progress.changed = files != self.top_files
        self.top_files = files
        self.predictions_made += 1
        return prediction

    def history_commits(self) -> int:
        return int((self.options or {}).get("history_commits", self.predictor.cfg.history_commits))


def update_index(retriever, scraper_cfg: ScraperConfig | None = None) -> Callable[[Path], None]:
    """`on_new_head` for a Watch: the code index's incremental update to the new HEAD, when the index is of that
    repository (as the index stage runs it: the scraper's redaction and exclusions)."""
    from repo2model.retrieval.unit_index import UnitIndex  # the embedding stack loads only when an index is used

    scraper_cfg = scraper_cfg or ScraperConfig()

    def update(top: Path) -> None:
        if retriever is None:
            return
        index = UnitIndex(retriever.cfg, retriever.folder, retriever.embedder)
        if not index.exists() or index.info.get("repository") != str(top):
            return
        retriever.close()  # the embedded store opens in one place at a time
        filters = PathFilter(scraper_cfg.file_filters, scraper_cfg.exclude_globs)
        summary = index.update(top, "HEAD", redactor=scraper_cfg.redactor(), excluded=filters.excluded,
                               progress=False)
        log.info("watch: the code index follows HEAD (%s)", summary)

    return update
