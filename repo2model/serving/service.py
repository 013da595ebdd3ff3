"""The HTTP JSON service that serve.py runs: its requests, its handler and its server.

    Service        what the handler threads share: the predictor (swapped whole by a reload), the serve section's
                   limits, how a request's history is read; `handle_predict` checks a /predict body and predicts
    Handler        the endpoints (GET /health, POST /predict, GET /watch, POST and GET /update), bearer token, body
                   limits, every error as JSON {"error", "status"}
    make_server    a threading HTTP server bound to the serve section's host and port
    RequestError   a client error: HTTP status and one line

The endpoints, the errors and the `serve` section's keys are documented in repo2model/stages/serve.py; a new model
without a restart and POST /update: repo2model.serving.reload; GET /watch's stream: repo2model.serving.watch.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from repo2model.core.errors import UserError
from repo2model.serving.history import history_from_records, history_from_repo
from repo2model.serving.live_prediction import top_paths
from repo2model.serving.prediction import Prediction
from repo2model.serving.settings import MAX_TASK_CHARS, with_options
from repo2model.serving.watch import Watch, update_index
from repo2model.serving.work_in_progress import read_work_in_progress

if TYPE_CHECKING:  # annotations only: reload.py and serve.py import this module
    from repo2model.code.chunking import ChunkerConfig
    from repo2model.git.scraping import ScraperConfig
    from repo2model.serving.predictor import Predictor
    from repo2model.serving.reload import ModelReloader, PipelineUpdate
    from repo2model.stages.serve import Config

log = logging.getLogger("serve")


class RequestError(Exception):
    """A client error: HTTP status + one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Service:
    """What the handler threads share: the predictor, the limits, and how history is read."""

    predictor: Predictor  # swapped whole by a reload: read it once per request
    cfg: Config
    scraper_cfg: ScraperConfig | None = None  # a repo's history is scraped and chunked as the pipeline did
    chunker_cfg: ChunkerConfig | None = None
    reloader: ModelReloader | None = None
    update: PipelineUpdate | None = None
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time
    _count_lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)  # set on shutdown: GET /watch streams end
    watchers: int = 0  # GET /watch streams open
    last_top: dict[str, frozenset] = field(default_factory=dict)  # repository -> its last working tree's top files

    def count_request(self) -> None:
        with self._count_lock:
            self.requests += 1

    def handle_predict(self, body: Any) -> Prediction:
        predictor = self.predictor  # this request's model to its end, whatever a reload swaps in meanwhile
        with self._count_lock:
            self.in_flight += 1
        try:
            return self.predict_with(predictor, body)
        finally:
            with self._count_lock:
                self.in_flight -= 1

    def predict_with(self, predictor: Predictor, body: Any) -> Prediction:
        if not isinstance(body, dict):
            raise RequestError(422, "body: must be a JSON object")
        allowed = {"task", "repo", "commits", "options", "seed", "test_failures", "working_tree"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise RequestError(422, f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")
        working_tree = body.get("working_tree", False)
        if not isinstance(working_tree, bool):
            raise RequestError(422, "working_tree: must be true or false")
        if working_tree and "repo" not in body:
            raise RequestError(422, "working_tree: needs repo (the repository whose uncommitted changes are read)")
        task = check_task(body.get("task", "" if working_tree else None), required=not working_tree)
        seed = body.get("seed", 42)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise RequestError(422, "seed: must be an integer in [0, 2^32)")
        options = self.check_options(predictor, body.get("options"))
        failures = check_test_failures(body.get("test_failures"))
        if ("repo" in body) == ("commits" in body):
            raise RequestError(422, "repo or commits: give exactly one (a repository path, or commit records)")
        history_commits = options.get("history_commits", predictor.cfg.history_commits)
        repo = None  # the repository whose code goes into the context (None: the index's own)
        work = None
        if "repo" in body:
            history = self.history_from_repo(body["repo"], history_commits)
            repo = Path(body["repo"]).expanduser().resolve()
            work = self.work_in_progress(repo) if working_tree else None
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
                prediction = predictor.predict(history, task, options, seed, repo=repo, test_failures=failures,
                                               work=work)
            except ValueError as exc:
                raise RequestError(422, str(exc)) from None
            if prediction.work_in_progress is not None:  # did the top remaining files change since last time?
                top = top_paths(prediction)
                prediction.work_in_progress.changed = top != self.last_top.get(str(repo))
                self.last_top[str(repo)] = top
            return prediction

    def work_in_progress(self, repo: Path):
        try:
            return read_work_in_progress(repo, self.scraper_cfg, self.chunker_cfg)
        except UserError as exc:
            raise RequestError(422, f"repo: {exc}") from None

    def check_options(self, predictor: Predictor, options: Any) -> dict:
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
        path = self.check_repo(repo)
        try:
            return history_from_repo(path, count, self.scraper_cfg, self.chunker_cfg)
        except UserError as exc:
            raise RequestError(422, f"repo: {exc}") from None

    def check_repo(self, repo: Any) -> Path:
        """A request's `repo`: a path under the allowed repository roots (RequestError otherwise)."""
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
        return path

    def watch(self, repo: Path, task: str, seed: int) -> Watch:
        """GET /watch's stream over `repo`: each prediction made by the predictor served at that moment, one
        generation at a time with the requests."""

        def predict(history, work):
            with self.lock:
                return self.predictor.predict(history, task, None, seed, repo=repo, work=work)

        try:
            return Watch(self.predictor, repo, task, seed=seed, scraper_cfg=self.scraper_cfg,
                         chunker_cfg=self.chunker_cfg, predict=predict,
                         on_new_head=update_index(self.predictor.retriever, self.scraper_cfg))
        except UserError as exc:
            raise RequestError(422, f"repo: {exc}") from None

    def health(self) -> dict:
        return {"status": "ok", "model": self.predictor.info(), "requests": self.requests,
                "in_flight": self.in_flight, "watchers": self.watchers,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "reloads": self.reloader.status() if self.reloader else None,
                "update": {"enabled": self.cfg.allow_update,
                           "state": self.update.state if self.update else "never run"}}


MAX_TEST_FAILURE_CHARS = 100_000
WATCH_HEARTBEAT_S = 15.0  # GET /watch writes a keep-alive comment after this long without a prediction


def check_task(value: Any, required: bool = True) -> str:
    """`task`: a string; empty only where it is not required (a working tree's prediction)."""
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise RequestError(422, "task: required, a non-empty string" if required else "task: must be a string")
    if len(value) > MAX_TASK_CHARS:
        raise RequestError(422, f"task: longer than {MAX_TASK_CHARS} characters")
    return value


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
        elif path == "/watch":
            self.handle_watch()
        else:
            self.error(404, f"{path}: not found ({ENDPOINTS})")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/update":
            return self.handle_update(start=True)
        if path != "/predict":
            if path in ("/health", "/watch"):
                return self.error(405, f"use GET for {path}", allow="GET")
            return self.error(404, f"{path}: not found ({ENDPOINTS})")
        try:
            self.check_token()
            body = self.read_json()
            self.service.count_request()
            started = time.monotonic()
            prediction = self.service.handle_predict(body)
            answer = prediction.to_json()
        except RequestError as exc:
            return self.error(exc.status, str(exc))
        except Exception:
            log.exception("POST /predict failed")
            return self.error(500, "internal error (see the service's log)")
        log.info("POST /predict: %d files in %.1fs", len(prediction.files), time.monotonic() - started)
        self.reply(200, answer)

    def handle_watch(self) -> None:
        """GET /watch?repo=...[&task=...&seed=...]: server-sent events, one `prediction` event per change of the
        repository's HEAD or set of changed files (the first at once), a keep-alive comment when quiet."""
        try:
            self.check_token()
            query = parse_qs(urlsplit(self.path).query)
            repo = self.service.check_repo((query.get("repo") or [""])[0])
            task = check_task((query.get("task") or [""])[0], required=False)
            seed = (query.get("seed") or ["42"])[0]
            if not seed.isdigit() or int(seed) >= 2**32:
                raise RequestError(422, "seed: must be an integer in [0, 2^32)")
            watch = self.service.watch(repo, task, int(seed))
        except RequestError as exc:
            return self.error(exc.status, str(exc))
        self.close_connection = True  # the stream ends when either side stops
        self.send_response(200, "OK")
        for key, value in (("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
                           ("Connection", "close"), ("X-Accel-Buffering", "no")):
            self.send_header(key, value)
        self.end_headers()
        with self.service._count_lock:
            self.service.watchers += 1
        try:
            self.stream(watch)
        finally:
            with self.service._count_lock:
                self.service.watchers -= 1

    def stream(self, watch: Watch) -> None:
        try:
            for prediction in watch.predictions(self.service.stopping, heartbeat_s=WATCH_HEARTBEAT_S):
                if prediction is None:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    data = json.dumps(prediction.to_json(), ensure_ascii=False)
                    self.wfile.write(f"event: prediction\ndata: {data}\n\n".encode("utf-8"))
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.info("GET /watch: the client left")
        except (UserError, ValueError) as exc:  # the repository went away, a bad task: the last event says why
            self.write_event("error", {"error": str(exc), "status": 422})
        except Exception:
            log.exception("GET /watch failed")
            self.write_event("error", {"error": "internal error (see the service's log)", "status": 500})

    def write_event(self, name: str, payload: dict) -> None:
        try:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode("utf-8"))
            self.wfile.flush()
        except OSError:
            pass

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


ENDPOINTS = "endpoints: GET /health, POST /predict, GET /watch, POST /update, GET /update"
