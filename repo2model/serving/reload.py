"""A new model without a restart: the model folder watched and reloaded, and the pipeline's update run for POST /update.

    ModelReloader   loads the model folder again in a background thread (on SIGHUP, or when its marker
                    `<model>/training_info.json`, written last by train_model, changes) and swaps the new predictor
                    into the service whole; a failed load keeps the served model
    PipelineUpdate  one `python pipeline.py --config <config> --update` at a time, in its own process group, with
                    its state, exit code and the tail of its output (GET /update)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from repo2model.core.errors import UserError, first_line
from repo2model.serving.service import RequestError

if TYPE_CHECKING:
    from repo2model.serving.service import Service

log = logging.getLogger("serve")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def marker_state(marker: Path) -> tuple | None:
    """What identifies the marker file's version (a replaced folder has a new inode); None while it is absent."""
    try:
        st = os.stat(marker)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class ModelReloader:
    """Loads the model folder again in a background thread and swaps the new predictor into the service.

    `request(trigger)` (SIGHUP: safe from a signal handler, it only sets an event) reloads unconditionally;
    every `poll_s` seconds, and on `request(trigger, force=False)`, the marker is compared with the one of
    the model being served and a changed marker reloads. A failed load keeps the served model, logs one line,
    and is not retried until the marker changes again (or a SIGHUP).
    """

    def __init__(self, service: Service, load: Callable[[], Any], marker: Path, poll_s: float):
        self.service, self.load, self.marker, self.poll_s = service, load, Path(marker), poll_s
        self.loaded_marker = marker_state(self.marker)  # the served model's
        self.failed_marker: tuple | None = None
        self.count = 0
        self.last: dict | None = None
        self._wake = threading.Event()
        self._trigger, self._force = "request", False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "ModelReloader":
        self._thread = threading.Thread(target=self._run, name="model-reloader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def request(self, trigger: str, force: bool = True) -> None:
        self._trigger, self._force = trigger, self._force or force
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.poll_s if self.poll_s > 0 else None)
            if self._stop.is_set():
                return
            self._wake.clear()
            force, self._force = self._force, False
            if force or self.marker_changed():
                self.reload(self._trigger if woken else "marker changed")

    def marker_changed(self) -> bool:
        state = marker_state(self.marker)
        return state is not None and state != self.loaded_marker and state != self.failed_marker

    def reload(self, trigger: str) -> bool:
        """Load the folder now (in the calling thread) and swap it in; False (and the old model kept) if it fails."""
        state = marker_state(self.marker)
        started = time.monotonic()
        try:
            predictor = self.load()
        except Exception as exc:  # a bad folder (UserError) or anything else: the service keeps serving
            self.failed_marker = state
            error = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {first_line(exc)}"
            self.last = {"trigger": trigger, "status": "failed", "at": now_iso(), "error": error}
            log.error("reload (%s) failed, still serving the previous model: %s", trigger, error)
            log.debug("reload failure", exc_info=True)
            return False
        self.service.predictor = predictor  # one reference swap: requests hold the predictor they started with
        self.loaded_marker, self.failed_marker = state, None
        self.count += 1
        info = getattr(predictor, "training", {}) or {}
        self.last = {"trigger": trigger, "status": "loaded", "at": now_iso(), "error": None,
                     "seconds": round(time.monotonic() - started, 1)}
        log.info("reloaded the model (%s) in %.1fs: last commit %s, trained at %s", trigger,
                 time.monotonic() - started, (info.get("last_commit") or "?")[:12], info.get("trained_at") or "?")
        return True

    def status(self) -> dict:
        return {"count": self.count, "last": self.last, "marker": str(self.marker), "poll_s": self.poll_s}


# ---------------------------------------------------------------- POST /update


PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding repo2model/
LOG_TAIL_LINES = 40


class PipelineUpdate:
    """One `python pipeline.py --config <config> --update` at a time, in its own process group; its state,
    exit code and the tail of its output for GET /update."""

    def __init__(self, config_path: Path, timeout_s: float, on_success: Callable[[], None] | None = None):
        self.config_path, self.timeout_s, self.on_success = Path(config_path), timeout_s, on_success
        self.state = "never run"
        self.process: subprocess.Popen | None = None
        self.run: dict = {}
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._lock = threading.Lock()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "repo2model.stages.pipeline", "--config", str(self.config_path), "--update"]

    def start(self) -> dict:
        with self._lock:
            if self.state == "running":
                raise RequestError(409, f"an update is running (pid {self.process.pid}, since "
                                        f"{self.run['started_at']}): GET /update for its state")
            if not self.config_path.is_file():
                raise RequestError(422, f"serve.update_config: {self.config_path} not found")
            self.tail.clear()
            self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, text=True, errors="replace",
                                            cwd=self.config_path.parent, start_new_session=True,
                                            env=package_environment())
            self.state = "running"
            self.run = {"command": self.command(), "pid": self.process.pid, "started_at": now_iso(),
                        "finished_at": None, "seconds": None, "exit_code": None, "timed_out": False}
            threading.Thread(target=self._follow, args=(self.process, time.monotonic()), name="pipeline-update",
                             daemon=True).start()
        log.info("update started: %s (pid %d)", " ".join(self.command()), self.process.pid)
        return self.status()

    def _follow(self, process: subprocess.Popen, started: float) -> None:
        timer = threading.Timer(self.timeout_s, self._time_out, args=(process,))
        timer.daemon = True
        timer.start()
        for line in process.stdout:
            self.tail.append(line.rstrip("\n"))
        code = process.wait()
        timer.cancel()
        with self._lock:
            self.run.update(finished_at=now_iso(), seconds=round(time.monotonic() - started, 1), exit_code=code)
            self.state = "succeeded" if code == 0 else "failed"
        log_line = log.info if code == 0 else log.error
        log_line("update %s (exit code %d in %.0fs)%s", self.state, code, time.monotonic() - started,
                 "" if code == 0 else f": {self.tail[-1] if self.tail else 'no output'}")
        if code == 0 and self.on_success is not None:
            self.on_success()

    def _time_out(self, process: subprocess.Popen) -> None:
        self.run["timed_out"] = True
        self.tail.append(f"[serve] stopped after update_timeout_s = {self.timeout_s:g}s")
        stop_process_group(process)

    def stop(self) -> None:
        """On shutdown: stop a running update (the pipeline is safe to interrupt; a rerun completes it)."""
        if self.process is not None and self.process.poll() is None:
            stop_process_group(self.process)

    def status(self) -> dict:
        with self._lock:
            return {"state": self.state, **self.run, "log_tail": list(self.tail)}


def package_environment() -> dict[str, str]:
    """This process's environment, with the folder holding repo2model/ first on PYTHONPATH: `python -m
    repo2model.stages.pipeline` then runs this code, installed or not, from any working folder."""
    paths = [str(PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def stop_process_group(process: subprocess.Popen) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGTERM)  # the pipeline and the workers it started
        else:
            process.terminate()
    except (ProcessLookupError, PermissionError):
        pass
