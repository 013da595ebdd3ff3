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
                           "seed": int, "test_failures": str | [str], "working_tree": bool}
                    exactly one of `repo` (a local repository: its last commits are scraped and chunked
                    on the fly) and `commits` (commits.json records, oldest first, each optionally with
                    its "chunks"); reply: the prediction JSON (as predict.py prints it), with `context`
                    (the predicted code and what the code index finds) and `prompt` (the text for a
                    code-writing model, `test_failures` included), `authors` and `when` (who makes the
                    change, and when the next commit touching the top files is expected). With
                    "working_tree": true (and `repo`; `task` then optional) the repository's uncommitted
                    changes are the change in progress: `in_progress` lists them, `files` the remaining ones,
                    and `work_in_progress.changed` says whether the top 5 remaining files differ from this
                    service's previous working-tree answer for that repository (what a polling workflow
                    posts on).
    GET  /watch     ?repo=<path>[&task=...&seed=n] (token as for /predict): server-sent events; an
                    `event: prediction` (data: the prediction JSON, as with "working_tree": true) at once and
                    each time the repository's HEAD or set of changed files changes, a `: keep-alive` comment
                    after 15 s without one, an `event: error` before the stream ends on a failure. A new
                    commit also updates the code index incrementally (repo2model/serving/watch.py).
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
logs one line (also in /health `reloads.last`). The code: repo2model/serving/service.py (the requests and the
endpoints), repo2model/serving/reload.py (reloads and POST /update); the reply is a Prediction's to_json()
(repo2model/serving/prediction.py).

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
import ipaddress
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from repo2model.core.cli import add_config_argument, apply_overrides, load_stage, user_errors_to_exit
from repo2model.core.errors import UserError
from repo2model.retrieval.index_config import load_index_config
from repo2model.retrieval.retriever import Retriever
from repo2model.serving.history import load_history_sections
from repo2model.serving.predictor import Predictor
from repo2model.serving.reload import ModelReloader, PipelineUpdate
from repo2model.serving.service import Service, make_server
from repo2model.serving.settings import add_decoding_arguments, config_from_args, load_prediction_config
from repo2model.training.models import INFO_FILE

SECTION = "serve"
log = logging.getLogger("serve")


@dataclass
class Config:
    """The `serve` section (its keys above)."""

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
    log.info("serving %s on http://%s:%d (POST /predict, GET /watch, GET /health%s)%s", model_dir, host, port,
             ", POST /update" if update_config else "", ", bearer token required" if cfg.bearer_token() else "")
    signal.signal(signal.SIGTERM, _stop)  # `kill` (systemd, docker stop) shuts down like Ctrl-C
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: service.reloader.request("SIGHUP"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        service.stopping.set()  # GET /watch streams end
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
