"""An HTTP JSON service around the predictor (repo2model.serving.predictor), for n8n's HTTP Request node (or curl).

    python serve.py --model outputs/model --port 8765
    curl -s localhost:8765/health
    curl -s -X POST localhost:8765/predict -H 'Content-Type: application/json' \\
         -d '{"task": "Add a retry to the scraper", "repo": "/path/to/repo"}'

Endpoints
    GET  /health    {"status": "ok", "model": {..., "last_commit", "last_commit_time", "trained_at"},
                     "requests": n, "in_flight": n, "uptime_s": s, "reloads": {...}, "update": {...}}
                    (no token needed; the model's last trained commit and time come from its
                    training_info.json, null for a folder without them)
    POST /predict   body: {"task": str, "repo": str | "commits": [commit records],
                           "options": {history_commits, decoding, num_candidates, max_new_tokens,
                                       temperature, top_p, top_k, max_files, file_ranking, context_tokens},
                           "seed": int, "test_failures": str | [str]}
                    exactly one of `repo` (a local repository: its last commits are scraped and chunked
                    on the fly) and `commits` (commits.json records, oldest first, each optionally with
                    its "chunks"); reply: the prediction JSON (as predict.py prints it), with `context`
                    (the predicted code and what the code index finds) and `prompt` (the text for a
                    code-writing model, `test_failures` included).
    POST /update    (off unless serve.allow_update; always needs the bearer token) starts
                    `python pipeline.py --config <serve.update_config> --update` in the background:
                    202 with its status, 409 while one runs. When it succeeds the new model is picked up.
    GET  /update    (same conditions) the last update's state, exit code and the tail of its output.
Errors are JSON {"error": "...", "status": code}: 400 invalid JSON, an unreadable request line or a NUL
byte in `repo`, 401 missing/wrong bearer token, 403 repository outside allowed_repo_roots, 404, 405, 408
body shorter than its Content-Length (after socket_timeout_s), 411 no Content-Length, 413 body too large,
414 request line over 64 KiB, 415 not application/json, 422 a field is invalid (the message names it),
431 a header line over 64 KiB or over 100 headers, 501 unknown method, 505 HTTP version, 500 internal
error (logged).

Requests are served by threads, generations one at a time (a lock). A new model folder is picked up without a
restart: on SIGHUP, and when the folder's marker `<model>/training_info.json` (written last by train_model)
changes, checked every reload_poll_s. The new model is loaded in the background and swapped in whole: a
request already running finishes on the model it started with. A failed load keeps the model being served and
logs one line (also in /health `reloads.last`).

Config keys (section `serve`):
    host                  interface to bind (127.0.0.1: this machine only; anything beyond loopback, e.g.
                          0.0.0.0 for n8n in Docker, needs a bearer token or the service refuses to start)
    port                  TCP port (8765)
    token                 bearer token required on /predict (null: none); the environment variable named
                          by token_env overrides it, so the secret need not be in the file
    token_env             REPO2MODEL_SERVE_TOKEN
    max_body_bytes        larger request bodies get 413 (1000000)
    max_history_commits   limit on `commits` entries and options.history_commits (64)
    max_new_tokens_limit  limit on options.max_new_tokens (1024)
    max_candidates_limit  limit on options.num_candidates (16)
    allowed_repo_roots    `repo` must lie under one of these folders ([]: any local repository)
    socket_timeout_s      a client that stalls while sending is dropped after this long (30)
    reload_poll_s         seconds between checks of the model folder's marker (5; 0: reload on SIGHUP only)
    allow_update          POST/GET /update on (false); needs a bearer token
    update_config         the config file POST /update runs pipeline.py with (null: serve's own --config)
    update_timeout_s      an update running longer is stopped (7200)
Decoding defaults and the model folder come from the `predict` section.
"""

from __future__ import annotations

import argparse
import functools
import hmac
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.errors import UserError, first_line
from repo2model.serving.history import history_from_records, history_from_repo, load_history_sections
from repo2model.serving.predictor import (
    MAX_TASK_CHARS,
    Predictor,
    add_decoding_arguments,
    config_from_args,
    load_prediction_config,
    with_options,
)
from repo2model.training.models import INFO_FILE
from repo2model.retrieval.index_config import load_index_config
from repo2model.retrieval.retriever import Retriever

SECTION = "serve"
log = logging.getLogger("serve")


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    token_env: str = "REPO2MODEL_SERVE_TOKEN"
    max_body_bytes: int = 1_000_000
    max_history_commits: int = 64
    max_new_tokens_limit: int = 1024
    max_candidates_limit: int = 16
    allowed_repo_roots: list[Path] = field(default_factory=list)
    socket_timeout_s: float = 30.0
    reload_poll_s: float = 5.0
    allow_update: bool = False
    update_config: Path | None = None
    update_timeout_s: float = 7200.0

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError("port: must be between 0 and 65535")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes: must be >= 1024")
        for name in ("max_history_commits", "max_new_tokens_limit", "max_candidates_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.socket_timeout_s <= 0:
            raise ValueError("socket_timeout_s: must be > 0")
        if self.reload_poll_s < 0:
            raise ValueError("reload_poll_s: must be >= 0 (0: reload on SIGHUP only)")
        if self.update_timeout_s <= 0:
            raise ValueError("update_timeout_s: must be > 0")

    def bearer_token(self) -> str | None:
        return os.environ.get(self.token_env) or self.token


class RequestError(Exception):
    """A client error: HTTP status + one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Service:
    """What the handler threads share: the predictor (anything with `info()` and
    `predict(history, task, options, seed)`), the limits, and how history is read."""

    predictor: Any  # swapped whole by a reload: read it once per request
    cfg: Config
    scraper_cfg: Any = None
    chunker_cfg: Any = None
    reloader: ModelReloader | None = None
    update: PipelineUpdate | None = None
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time
    _count_lock: threading.Lock = field(default_factory=threading.Lock)

    def count_request(self) -> None:
        with self._count_lock:
            self.requests += 1

    def handle_predict(self, body: Any) -> dict:
        predictor = self.predictor  # this request's model to its end, whatever a reload swaps in meanwhile
        with self._count_lock:
            self.in_flight += 1
        try:
            return self.predict_with(predictor, body)
        finally:
            with self._count_lock:
                self.in_flight -= 1

    def predict_with(self, predictor: Any, body: Any) -> dict:
        if not isinstance(body, dict):
            raise RequestError(422, "body: must be a JSON object")
        allowed = {"task", "repo", "commits", "options", "seed", "test_failures"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise RequestError(422, f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")
        task = body.get("task")
        if not isinstance(task, str) or not task.strip():
            raise RequestError(422, "task: required, a non-empty string")
        if len(task) > MAX_TASK_CHARS:
            raise RequestError(422, f"task: longer than {MAX_TASK_CHARS} characters")
        seed = body.get("seed", 42)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise RequestError(422, "seed: must be an integer in [0, 2^32)")
        options = self.check_options(predictor, body.get("options"))
        failures = check_test_failures(body.get("test_failures"))
        if ("repo" in body) == ("commits" in body):
            raise RequestError(422, "repo or commits: give exactly one (a repository path, or commit records)")
        history_commits = options.get("history_commits", predictor.cfg.history_commits)
        repo = None  # the repository whose code goes into the context (None: the index's own)
        if "repo" in body:
            history = self.history_from_repo(body["repo"], history_commits)
            repo = Path(body["repo"]).expanduser().resolve()
        else:
            commits = body["commits"]
            if not isinstance(commits, list):
                raise RequestError(422, "commits: must be a list of commit records (oldest first)")
            if len(commits) > self.cfg.max_history_commits:
                raise RequestError(422, f"commits: more than {self.cfg.max_history_commits} records")
            try:
                history = history_from_records(commits)
            except ValueError as exc:
                raise RequestError(422, str(exc)) from None
        with self.lock:
            try:
                return predictor.predict(history, task, options, seed, repo=repo, test_failures=failures)
            except ValueError as exc:
                raise RequestError(422, str(exc)) from None

    def check_options(self, predictor: Any, options: Any) -> dict:
        if options is None:
            return {}
        try:
            with_options(predictor.cfg, options)
        except ValueError as exc:
            raise RequestError(422, str(exc)) from None
        limits = {"max_new_tokens": self.cfg.max_new_tokens_limit, "num_candidates": self.cfg.max_candidates_limit,
                  "history_commits": self.cfg.max_history_commits}
        for key, limit in limits.items():
            if key in options and options[key] > limit:
                raise RequestError(422, f"options.{key}: at most {limit} on this service")
        return options

    def history_from_repo(self, repo: Any, count: int):
        if not isinstance(repo, str) or not repo:
            raise RequestError(422, "repo: must be a path to a local git repository")
        if "\x00" in repo:
            raise RequestError(400, "repo: contains a NUL byte")
        try:
            path = Path(repo).expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # a path too long, ~nosuchuser
            raise RequestError(422, f"repo: not a usable path ({exc})") from None
        roots = [Path(r).resolve() for r in self.cfg.allowed_repo_roots]
        if roots and not any(path == r or r in path.parents for r in roots):
            raise RequestError(403, f"repo: {path} is outside the allowed repository roots")
        try:
            return history_from_repo(path, count, self.scraper_cfg, self.chunker_cfg)
        except UserError as exc:
            raise RequestError(422, f"repo: {exc}") from None

    def health(self) -> dict:
        return {"status": "ok", "model": self.predictor.info(), "requests": self.requests,
                "in_flight": self.in_flight, "uptime_s": round(time.monotonic() - self.started, 1),
                "reloads": self.reloader.status() if self.reloader else None,
                "update": {"enabled": self.cfg.allow_update,
                           "state": self.update.state if self.update else "never run"}}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- a new model without a restart


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


class Handler(BaseHTTPRequestHandler):
    server_version = "repo2model"
    protocol_version = "HTTP/1.1"
    service: Service  # set on the subclass made by make_server

    def setup(self) -> None:
        self.timeout = self.service.cfg.socket_timeout_s
        super().setup()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self.reply(200, self.service.health())
        elif path == "/predict":
            self.error(405, "use POST for /predict", allow="POST")
        elif path == "/update":
            self.handle_update(start=False)
        else:
            self.error(404, f"{path}: not found ({ENDPOINTS})")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/update":
            return self.handle_update(start=True)
        if path != "/predict":
            if path == "/health":
                return self.error(405, "use GET for /health", allow="GET")
            return self.error(404, f"{path}: not found ({ENDPOINTS})")
        try:
            self.check_token()
            body = self.read_json()
            self.service.count_request()
            started = time.monotonic()
            result = self.service.handle_predict(body)
        except RequestError as exc:
            return self.error(exc.status, str(exc))
        except Exception:
            log.exception("POST /predict failed")
            return self.error(500, "internal error (see the service's log)")
        log.info("POST /predict: %d files in %.1fs", len(result.get("files", [])), time.monotonic() - started)
        self.reply(200, result)

    def do_PUT(self) -> None:
        self.error(405, ENDPOINTS, allow="GET, POST")

    do_DELETE = do_PATCH = do_PUT

    def handle_update(self, start: bool) -> None:
        """POST /update starts the pipeline's update, GET /update reports it: off by default, token always."""
        try:
            if not self.service.cfg.allow_update or self.service.update is None:
                raise RequestError(403, "updates are off on this service (serve.allow_update: false)")
            self.check_token(required=True)
            if start:
                self.discard_body()
                self.reply(202, self.service.update.start())
            else:
                self.reply(200, self.service.update.status())
        except RequestError as exc:
            self.error(exc.status, str(exc))

    def discard_body(self) -> None:
        """Read a body nobody needs (POST /update takes none), so that the connection can carry the next request."""
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            size = -1
        if not 0 <= size <= self.service.cfg.max_body_bytes:
            self.close_connection = True
        elif size:
            self.rfile.read(size)  # a client that stalls here is dropped after socket_timeout_s

    def check_token(self, required: bool = False) -> None:
        token = self.service.cfg.bearer_token()
        if not token:
            if required:
                raise RequestError(403, "this endpoint needs a bearer token: set serve.token or "
                                        f"${self.service.cfg.token_env}")
            return
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise RequestError(401, "missing or wrong bearer token (header: Authorization: Bearer <token>)")

    def read_json(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "send the body with a Content-Length (chunked encoding is not accepted)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "Content-Length required")
        try:
            size = int(length)
        except ValueError:
            raise RequestError(400, "Content-Length: not a number") from None
        if size < 0:
            raise RequestError(400, "Content-Length: negative")
        if size > self.service.cfg.max_body_bytes:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise RequestError(413, f"body of {size} bytes is over the limit of {self.service.cfg.max_body_bytes}")
        ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        data = bytearray()
        try:
            while len(data) < size:
                piece = self.rfile.read1(size - len(data))
                if not piece:
                    break
                data += piece
        except (TimeoutError, ConnectionError):
            pass
        if len(data) < size:
            self.close_connection = True
            raise RequestError(408, f"the body stopped after {len(data)} of {size} bytes")
        if ctype != "application/json":
            raise RequestError(415, f"Content-Type: expected application/json, got {ctype or 'none'}")
        try:
            return json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"body: invalid JSON ({getattr(exc, 'msg', exc)})") from None

    def error(self, status: int, message: str, allow: str | None = None) -> None:
        headers = {"Allow": allow} if allow else {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="repo2model"'
        self.reply(status, {"error": message, "status": status}, headers)

    def reply(self, status: int, obj: Any, headers: dict | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line 400, 414, 431 headers too large, 501, 505) as JSON like
        every other error, instead of its HTML page; the connection is closed (the request was not understood)."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unreadable request line: answer with a status line anyway
            self.request_version = self.protocol_version
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.reply(code, {"error": message or phrase, "status": code})

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_server(service: Service) -> ThreadingHTTPServer:
    """A server bound to service.cfg.host:port (port 0: a free one, see server.server_address)."""
    handler = type("BoundHandler", (Handler,), {"service": service})
    try:
        server = ThreadingHTTPServer((service.cfg.host, service.cfg.port), handler)
    except OSError as exc:
        raise UserError(f"cannot listen on {service.cfg.host}:{service.cfg.port} ({exc.strerror}): "
                        "choose another --port") from None
    server.daemon_threads = True
    return server


ENDPOINTS = "endpoints: GET /health, POST /predict, POST /update, GET /update"


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


MAX_TEST_FAILURE_CHARS = 100_000


def check_test_failures(value: Any) -> str | None:
    """`test_failures`: a text, or a list of texts (joined by blank lines), for the prompt."""
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = "\n\n".join(value)
    if not isinstance(value, str):
        raise RequestError(422, "test_failures: must be a string or a list of strings")
    if len(value) > MAX_TEST_FAILURE_CHARS:
        raise RequestError(422, f"test_failures: longer than {MAX_TEST_FAILURE_CHARS} characters")
    return value


@user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    add_decoding_arguments(parser)
    parser.add_argument("--host", help="override serve.host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="override serve.port (default 8765)")
    args = parser.parse_args(argv)
    cfg, _, paths = load_stage(args, SECTION, Config)
    prediction = config_from_args(load_prediction_config(args.config), args)
    overrides = {k: getattr(args, k) for k in ("host", "port") if getattr(args, k) is not None}
    cfg = apply_overrides(cfg, SECTION, overrides)
    check_exposure(cfg)
    update_config = check_update_settings(cfg, args.config)
    scraper_cfg, chunker_cfg = load_history_sections(args.config)
    model_dir = Path(prediction.model_dir or paths.model_dir)
    retriever = Retriever(load_index_config(args.config), paths.index_dir)  # the code context, in every reply
    load = functools.partial(Predictor.load, model_dir, prediction, paths=paths, retriever=retriever)
    service = Service(load(), cfg, scraper_cfg, chunker_cfg)
    service.reloader = ModelReloader(service, load, model_dir / INFO_FILE, cfg.reload_poll_s).start()
    if update_config is not None:
        service.update = PipelineUpdate(update_config, cfg.update_timeout_s,
                                        on_success=lambda: service.reloader.request("update", force=False))
    server = make_server(service)
    host, port = server.server_address[:2]
    log.info("serving %s on http://%s:%d (POST /predict, GET /health%s)%s", model_dir, host, port,
             ", POST /update" if update_config else "", ", bearer token required" if cfg.bearer_token() else "")
    signal.signal(signal.SIGTERM, _stop)  # `kill` (systemd, docker stop) shuts down like Ctrl-C
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: service.reloader.request("SIGHUP"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        service.reloader.stop()
        if service.update is not None:
            service.update.stop()
        server.server_close()
    return 0


def is_loopback(host: str) -> bool:
    """Whether a service bound to `host` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def check_exposure(cfg: Config) -> None:
    """Refused in one line: a service that other machines (or containers) can reach, with no token. Anyone who
    reaches it could read the code of every repository it may open (the reply's context) and keep its CPU busy."""
    if not is_loopback(cfg.host) and not cfg.bearer_token():
        raise UserError(f"serve.host {cfg.host or '(every interface)'} can be reached beyond this machine: set a "
                        f"bearer token (serve.token or ${cfg.token_env}), or bind 127.0.0.1")


def check_update_settings(cfg: Config, config_path: Path | None) -> Path | None:
    """The config file POST /update runs the pipeline with (None: updates are off); refused in one line when
    updates are on without a token or without a config."""
    if not cfg.allow_update:
        return None
    if not cfg.bearer_token():
        raise UserError(f"serve.allow_update: true needs a bearer token (serve.token or ${cfg.token_env})")
    update_config = cfg.update_config or config_path
    if update_config is None:
        raise UserError("serve.allow_update: true needs serve.update_config (or serve.py --config)")
    if not Path(update_config).is_file():
        raise UserError(f"serve.update_config: {update_config} not found")
    return Path(update_config).resolve()


if __name__ == "__main__":
    raise SystemExit(main())
