"""An HTTP JSON service around the predictor (repo2model.prediction), for n8n's HTTP Request node (or curl).

    python serve.py --model outputs/model --port 8765
    curl -s localhost:8765/health
    curl -s -X POST localhost:8765/predict -H 'Content-Type: application/json' \\
         -d '{"task": "Add a retry to the scraper", "repo": "/path/to/repo"}'

Endpoints
    GET  /health    {"status": "ok", "model": {...}, "requests": n, "uptime_s": s}
    POST /predict   body: {"task": str, "repo": str | "commits": [commit records],
                           "options": {history_commits, decoding, num_candidates, max_new_tokens,
                                       temperature, top_p, top_k, max_files, file_ranking}, "seed": int}
                    exactly one of `repo` (a local repository: its last commits are scraped and chunked
                    on the fly) and `commits` (commits.json records, oldest first, each optionally with
                    its "chunks"); reply: the prediction JSON (as predict.py prints it).
Errors are JSON {"error": "...", "status": code}: 400 invalid JSON, an unreadable request line or a NUL
byte in `repo`, 401 missing/wrong bearer token, 403 repository outside allowed_repo_roots, 404, 405, 408
body shorter than its Content-Length (after socket_timeout_s), 411 no Content-Length, 413 body too large,
414 request line over 64 KiB, 415 not application/json, 422 a field is invalid (the message names it),
431 a header line over 64 KiB or over 100 headers, 501 unknown method, 505 HTTP version, 500 internal
error (logged).

The model is loaded once; requests are served by threads, generations one at a time (a lock).

Config keys (section `serve`):
    host                  interface to bind (127.0.0.1: this machine only)
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
Decoding defaults and the model folder come from the `prediction` section.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from repo2model.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.errors import UserError
from repo2model.history import history_from_records, history_from_repo, load_history_sections
from repo2model.prediction import (
    MAX_TASK_CHARS,
    Predictor,
    add_decoding_arguments,
    config_from_args,
    load_prediction_config,
    with_options,
)

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

    predictor: Any
    cfg: Config
    scraper_cfg: Any = None
    chunker_cfg: Any = None
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time
    _count_lock: threading.Lock = field(default_factory=threading.Lock)

    def count_request(self) -> None:
        with self._count_lock:
            self.requests += 1

    def handle_predict(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise RequestError(422, "body: must be a JSON object")
        allowed = {"task", "repo", "commits", "options", "seed"}
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
        options = self.check_options(body.get("options"))
        if ("repo" in body) == ("commits" in body):
            raise RequestError(422, "repo or commits: give exactly one (a repository path, or commit records)")
        history_commits = options.get("history_commits", self.predictor.cfg.history_commits)
        if "repo" in body:
            history = self.history_from_repo(body["repo"], history_commits)
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
                return self.predictor.predict(history, task, options, seed)
            except ValueError as exc:
                raise RequestError(422, str(exc)) from None

    def check_options(self, options: Any) -> dict:
        if options is None:
            return {}
        try:
            with_options(self.predictor.cfg, options)
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
                "uptime_s": round(time.monotonic() - self.started, 1)}


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
        else:
            self.error(404, f"{path}: not found (endpoints: GET /health, POST /predict)")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/predict":
            if path == "/health":
                return self.error(405, "use GET for /health", allow="GET")
            return self.error(404, f"{path}: not found (endpoints: GET /health, POST /predict)")
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
        self.error(405, "only GET /health and POST /predict", allow="GET, POST")

    do_DELETE = do_PATCH = do_PUT

    def check_token(self) -> None:
        token = self.service.cfg.bearer_token()
        if not token:
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


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


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
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.bearer_token():
        log.warning("listening on %s without a bearer token: anyone who can reach it can use the model "
                    "(set %s)", cfg.host, cfg.token_env)
    scraper_cfg, chunker_cfg = load_history_sections(args.config)
    predictor = Predictor.load(prediction.model_dir or paths.model_dir, prediction, paths=paths)
    server = make_server(Service(predictor, cfg, scraper_cfg, chunker_cfg))
    host, port = server.server_address[:2]
    log.info("serving %s on http://%s:%d (POST /predict, GET /health)%s", predictor.model_dir, host, port,
             ", bearer token required" if cfg.bearer_token() else "")
    signal.signal(signal.SIGTERM, _stop)  # `kill` (systemd, docker stop) shuts down like Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
