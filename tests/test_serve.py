"""serve.py over real HTTP on a free localhost port, with a tiny real model trained in the test."""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import helpers_predict as H
from tests.conftest import ROOT
from repo2model.stages import serve
from repo2model.serving.reload import ModelReloader, PipelineUpdate
from repo2model.serving.service import Service, make_server
from repo2model.core.artifacts import atomic_path
from repo2model.core.errors import UserError
from repo2model.training.models import INFO_FILE
from repo2model.serving.predictor import Predictor
from repo2model.serving.settings import PredictionConfig

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learned")
    model, tokenizer, lang, _, _ = H.trained_predictor_parts(folder)
    return Predictor(model, tokenizer, lang, PredictionConfig(max_new_tokens=120), model_dir=folder)


def start(predictor, **cfg):
    service = Service(predictor, serve.Config(port=0, max_body_bytes=20_000, **cfg))
    server = make_server(service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def server(learned):
    server = start(learned)
    yield server
    server.shutdown()
    server.server_close()


def call(server, method, path, body=None, headers=None, raw: bytes | None = None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=hdrs)
    response = conn.getresponse()
    payload = json.loads(response.read().decode())
    conn.close()
    return response.status, payload, response


def records():
    return [{**c.to_dict(), "chunks": [ch.to_dict() for ch in chunks]} for c, chunks in H.fixture_history()]


def test_binds_localhost_by_default():
    assert serve.Config().host == "127.0.0.1"


def test_health(server):
    status, body, _ = call(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["model"]["parameters"] > 0 and body["model"]["defaults"]["decoding"] == "greedy"
    # A bare model folder: no ranker and no code index answer beside it, and /health says so.
    assert body["model"]["ranker"] is None and body["model"]["index"] is None


def test_predict_with_commit_records(server):
    status, body, _ = call(server, "POST", "/predict", {"task": H.TASK, "commits": records()})
    assert status == 200, body
    # the default ranking: the history's files by likelihood, then the new file only generation names
    assert [f["path"] for f in body["files"]] == ["pkg/parse.py", "tests/test_parse.py", "pkg/strip.py"]
    assert body["files"][2]["change_types"][0]["type"] == "NEW_FUNCTION" and "logprob" in body["files"][0]
    assert body["malformed_candidates"] == 0
    status, generated, _ = call(server, "POST", "/predict", {"task": H.TASK, "commits": records(),
                                                             "options": {"file_ranking": "generation"}})
    assert status == 200 and [f["path"] for f in generated["files"]] == ["pkg/parse.py", "pkg/strip.py"]
    status, sampled, _ = call(server, "POST", "/predict", {"task": H.TASK, "commits": records(), "seed": 3,
                                                           "options": {"decoding": "sample", "num_candidates": 3}})
    assert status == 200 and len(sampled["candidates"]) == 3


@pytest.mark.parametrize("body, status, word", [
    ({"commits": []}, 422, "task"),
    ({"task": "  ", "commits": []}, 422, "task"),
    ({"task": "x"}, 422, "exactly one"),
    ({"task": "x", "commits": [], "repo": "."}, 422, "exactly one"),
    ({"task": "x", "commits": "nope"}, 422, "commits"),
    ({"task": "x", "commits": [{"hash": "abc"}]}, 422, "commits[0]"),
    ({"task": "x", "commits": [], "options": {"max_new_tokens": 5000}}, 422, "options.max_new_tokens"),
    ({"task": "x", "commits": [], "options": {"num_candidates": 99}}, 422, "options.num_candidates"),
    ({"task": "x", "commits": [], "options": {"nope": 1}}, 422, "options.nope"),
    ({"task": "x", "commits": [], "seed": "1"}, 422, "seed"),
    ({"task": "x", "commits": [], "extra": 1}, 422, "extra"),
    ([1, 2], 422, "object"),
    ({"task": "x" * 5000, "commits": []}, 422, "task"),
    ({"task": "x", "repo": "/tmp/a\x00b"}, 400, "NUL byte"),
    ({"task": "x", "repo": "/" + "a" * 5000}, 422, "repo"),
])
def test_invalid_requests_get_clear_4xx(server, body, status, word):
    got, payload, _ = call(server, "POST", "/predict", body)
    assert got == status and word in payload["error"] and payload["status"] == status


def test_malformed_oversized_and_wrong_requests(server):
    status, payload, _ = call(server, "POST", "/predict", raw=b'{"task": ')
    assert status == 400 and "invalid JSON" in payload["error"]
    status, payload, _ = call(server, "POST", "/predict", raw=b"\xff\xfe")
    assert status == 400
    status, payload, response = call(server, "POST", "/predict", raw=b"x" * 30_000)
    assert status == 413 and "30000" in payload["error"]
    status, payload, _ = call(server, "POST", "/predict", raw=b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415
    assert call(server, "GET", "/nowhere")[0] == 404
    status, _, response = call(server, "GET", "/predict")
    assert status == 405 and response.getheader("Allow") == "POST"
    assert call(server, "PUT", "/predict", {})[0] == 405
    # The service still answers after all that.
    assert call(server, "GET", "/health")[0] == 200


def test_repository_checks(server, learned, tmp_path):
    status, payload, _ = call(server, "POST", "/predict", {"task": "x", "repo": str(tmp_path)})
    assert status == 422 and "not a git repository" in payload["error"]
    restricted = start(learned, allowed_repo_roots=[tmp_path / "allowed"])
    try:
        status, payload, _ = call(restricted, "POST", "/predict", {"task": "x", "repo": str(tmp_path / "other")})
        assert status == 403 and "outside" in payload["error"]
    finally:
        restricted.shutdown()
        restricted.server_close()


def test_bearer_token(learned, monkeypatch):
    monkeypatch.setenv("TEST_SERVE_TOKEN", TOKEN)
    secured = start(learned, token_env="TEST_SERVE_TOKEN")
    try:
        body = {"task": H.TASK, "commits": records()}
        status, payload, response = call(secured, "POST", "/predict", body)
        assert status == 401 and response.getheader("WWW-Authenticate").startswith("Bearer")
        assert call(secured, "POST", "/predict", body, {"Authorization": "Bearer wrong"})[0] == 401
        assert call(secured, "POST", "/predict", body, {"Authorization": f"Basic {TOKEN}"})[0] == 401
        status, payload, _ = call(secured, "POST", "/predict", body, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and payload["files"][0]["path"] == "pkg/parse.py"
        assert call(secured, "GET", "/health")[0] == 200  # health needs no token
    finally:
        secured.shutdown()
        secured.server_close()


def test_config_token_and_port_in_use(learned):
    assert serve.Config(token="abc", token_env="NO_SUCH_VARIABLE_X").bearer_token() == "abc"
    first = start(learned)
    try:
        with pytest.raises(UserError, match="choose another --port"):
            make_server(Service(learned, serve.Config(port=first.server_address[1])))
    finally:
        first.shutdown()
        first.server_close()


def test_cli_serves_reloads_on_sighup_and_stops_on_sigterm(learned, folders, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(folders["old"], folder)
    config = tmp_path / "config.yaml"
    config.write_text("serve:\n  reload_poll_s: 0\n")  # no polling: only SIGHUP reloads
    root = ROOT
    env = {**os.environ, "REPO2MODEL_SERVE_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, str(root / "serve.py"), "--config", str(config), "--model", str(folder),
                             "--port", "0", "--max-new-tokens", "120", "--output-dir", str(tmp_path / "out")],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "serve.py exited early"
            match = re.search(r"on http://127\.0\.0\.1:(\d+) .*bearer token required", line)
            port = int(match.group(1)) if match else None
        assert port
        server = type("Address", (), {"server_address": ("127.0.0.1", port)})
        status, body, _ = call(server, "GET", "/health")
        assert status == 200 and body["model"]["defaults"]["max_new_tokens"] == 120
        status, body, _ = call(server, "POST", "/predict", {"task": H.TASK, "commits": records()},
                               {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and [f["path"] for f in body["files"]] == ["pkg/parse.py", "tests/test_parse.py",
                                                                        "pkg/strip.py"]
        assert body["model"] == str(folder) and call(server, "GET", "/health")[1]["model"]["last_commit"] == "a" * 40

        def reloads():
            return call(server, "GET", "/health")[1]["reloads"]

        swap_folder(folder, folders["new"])
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads()["count"] == 1, "the reload on SIGHUP")
        assert reloads()["last"]["trigger"] == "SIGHUP"
        assert call(server, "GET", "/health")[1]["model"]["last_commit"] == "b" * 40
        swap_folder(folder, folders["damaged"])
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: (reloads()["last"] or {}).get("status") == "failed", "the failed reload")
        assert call(server, "GET", "/health")[1]["model"]["last_commit"] == "b" * 40  # still the loaded one
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read()
        assert "Traceback" not in rest and "reload (SIGHUP) failed, still serving the previous model: " in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    bad = subprocess.run([sys.executable, str(root / "serve.py"), "--model", str(tmp_path / "none")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error:")
    assert "run the train_model stage" in bad.stderr
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a cut-off copy
    damaged = subprocess.run([sys.executable, str(root / "serve.py"), "--model", str(folder)],
                             capture_output=True, text=True, cwd=tmp_path)
    assert damaged.returncode == 2 and "Traceback" not in damaged.stderr, damaged.stderr
    last = damaged.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {folder}: cannot load the model (SafetensorError") and "retrain" in last


def test_beyond_loopback_it_refuses_to_start_without_a_token_and_serves_with_one(folders, tmp_path):
    assert all(serve.is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(serve.is_loopback(h) for h in ("0.0.0.0", "::", "", "172.17.0.1", "host.docker.internal"))
    root = ROOT
    command = [sys.executable, str(root / "serve.py"), "--model", str(folders["old"]), "--host", "0.0.0.0",
               "--port", "0", "--output-dir", str(tmp_path / "out")]
    env = {k: v for k, v in os.environ.items() if k != "REPO2MODEL_SERVE_TOKEN"}
    refused = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: serve.host 0.0.0.0 can be reached beyond this machine") and \
        "REPO2MODEL_SERVE_TOKEN" in line

    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**env, "REPO2MODEL_SERVE_TOKEN": TOKEN})
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "serve.py exited early"
            match = re.search(r"on http://0\.0\.0\.0:(\d+) .*bearer token required", line)
            port = int(match.group(1)) if match else None
        assert port
        server = type("Address", (), {"server_address": ("127.0.0.1", port)})
        assert call(server, "GET", "/health")[0] == 200
        status, body, _ = call(server, "POST", "/predict", {"task": H.TASK, "commits": records()})
        assert status == 401 and "bearer token" in body["error"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_predict_from_a_real_repository(server, make_repo):
    repo = make_repo("project")
    first = repo.commit("Add the parser", {"pkg/parse.py": "def parse(s):\n    return s\n"})
    repo.commit("Add tests for the parser", {"tests/test_parse.py": "def test_parse():\n    assert parse('x') == 'x'\n"})
    repo.commit("Add notes", {"NOTES.md": "# notes\n"})
    status, body, _ = call(server, "POST", "/predict", {"task": H.TASK, "repo": str(repo.path),
                                                        "options": {"history_commits": 2}})
    assert status == 200, body
    assert [h["message"] for h in body["history"]] == ["Add tests for the parser", "Add notes"]
    assert first not in [h["hash"] for h in body["history"]]
    assert body["prompt_tokens"] > 0 and len(body["candidates"]) == 1


def test_a_stalled_body_gets_408_and_the_service_carries_on(learned):
    stalling = start(learned, socket_timeout_s=1.0)
    try:
        with socket.create_connection(stalling.server_address[:2], timeout=30) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"task\":")
            reply = sock.makefile("rb").read().decode()
        assert reply.startswith("HTTP/1.1 408") and "stopped after 8 of 100 bytes" in reply
        assert call(stalling, "GET", "/health")[0] == 200
    finally:
        stalling.shutdown()
        stalling.server_close()


def raw_exchange(server, data: bytes) -> tuple[int, dict, dict]:
    """Send raw bytes, read until the server closes: (status, headers, JSON body)."""
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(data)
        reply = sock.makefile("rb").read()
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    assert len(body) == int(headers["content-length"])
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.parametrize("request_bytes, status, word", [
    (b"GARBAGE\r\n\r\n", 400, "Bad request syntax"),
    (b"GET /health FOO/1.1\r\n\r\n", 400, "Bad request version"),
    (b"GET /health HTTP/9.9\r\n\r\n", 505, "HTTP version"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "Request-URI Too Long"),
    (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "Line too long"),
    (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", 431, "Too many headers"),
    (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501, "Unsupported method"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
     b"Content-Length: 36\r\n\r\n" + b'{"task": "x", "repo": "/tmp\\u0000a"}', 400, "NUL byte"),
])
def test_malformed_http_gets_json_not_html(server, request_bytes, status, word):
    got, headers, body = raw_exchange(server, request_bytes)
    assert got == status and body["status"] == status and word in body["error"], body
    assert headers["content-type"].startswith("application/json") and headers["connection"] == "close"
    assert call(server, "GET", "/health")[0] == 200  # the service carries on


# ---------------------------------------------------------------- a new model without a restart


def save_model(folder, model, tokenizer, language, last_commit: str | None):
    """A model folder as train_model leaves it: weights, tokenizer, commit language, training_info.json last."""
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    language.save(folder)
    if last_commit is not None:
        (folder / INFO_FILE).write_text(json.dumps({
            "last_commit": last_commit, "last_commit_time": "2024-02-02T10:00:00+00:00",
            "trained_at": f"2024-03-0{len(last_commit) % 9 + 1}T00:00:00+00:00"}))
    return folder


def swap_folder(model_dir, source) -> None:
    """Replace the model folder whole, as train_model does (atomic rename)."""
    with atomic_path(model_dir) as tmp:
        shutil.copytree(source, tmp)


def wait_for(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def folders(learned, tmp_path_factory):
    """Three model folders: the learned model (commit a...), an untrained one (commit b...), a damaged one."""
    root = tmp_path_factory.mktemp("folders")
    old = save_model(root / "old", learned.model, learned.tokenizer, learned.language, "a" * 40)
    new = save_model(root / "new", H.tiny_llama(learned.tokenizer, seed=3), learned.tokenizer, learned.language,
                     "b" * 40)
    damaged = save_model(root / "damaged", learned.model, learned.tokenizer, learned.language, "c" * 40)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return {"old": old, "new": new, "damaged": damaged}


def test_marker_change_reloads_and_an_in_flight_request_finishes_on_the_old_model(folders, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(folders["old"], model_dir)
    load = functools.partial(Predictor.load, model_dir, PredictionConfig(max_new_tokens=120, file_ranking="generation"))
    service = Service(load(), serve.Config(port=0, reload_poll_s=0.2))
    service.reloader = ModelReloader(service, load, model_dir / INFO_FILE, poll_s=0.2).start()
    server = make_server(service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        health = call(server, "GET", "/health")[1]
        assert health["model"]["last_commit"] == "a" * 40 and health["model"]["trained_at"].startswith("2024-03")
        assert health["model"]["last_commit_time"] == "2024-02-02T10:00:00+00:00"
        assert health["reloads"]["count"] == 0 and health["reloads"]["last"] is None

        replies = []
        with service.lock:  # the request takes its model, then waits for the generation lock
            worker = threading.Thread(target=lambda: replies.append(
                call(server, "POST", "/predict", {"task": H.TASK, "commits": records()})))
            worker.start()
            wait_for(lambda: service.in_flight == 1, "the request to start")
            swap_folder(model_dir, folders["new"])
            wait_for(lambda: call(server, "GET", "/health")[1]["model"]["last_commit"] == "b" * 40, "the reload")
        worker.join(timeout=300)
        status, old_reply, _ = replies[0]
        assert status == 200 and [f["path"] for f in old_reply["files"]] == ["pkg/parse.py", "pkg/strip.py"]
        status, new_reply, _ = call(server, "POST", "/predict", {"task": H.TASK, "commits": records()})
        assert status == 200 and new_reply["malformed_candidates"] == 1  # the untrained model answers now
        reloads = call(server, "GET", "/health")[1]["reloads"]
        assert reloads["count"] == 1 and reloads["last"]["status"] == "loaded"
        assert reloads["last"]["trigger"] == "marker changed"

        swap_folder(model_dir, folders["damaged"])  # a failed load keeps the model being served
        wait_for(lambda: (call(server, "GET", "/health")[1]["reloads"]["last"] or {}).get("status") == "failed",
                 "the failed reload")
        health = call(server, "GET", "/health")[1]
        assert health["model"]["last_commit"] == "b" * 40 and health["reloads"]["count"] == 1
        assert "cannot load the model (SafetensorError" in health["reloads"]["last"]["error"]
        assert call(server, "POST", "/predict", {"task": H.TASK, "commits": records()})[0] == 200
        time.sleep(1.0)  # several polls: the same damaged marker is not retried
        assert call(server, "GET", "/health")[1]["reloads"]["last"]["at"] == health["reloads"]["last"]["at"]
    finally:
        service.reloader.stop()
        server.shutdown()
        server.server_close()


def test_update_endpoint_is_off_by_default_needs_the_token_and_runs_one_pipeline_at_a_time(learned, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setenv("TEST_SERVE_TOKEN", TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    off = start(learned, token_env="TEST_SERVE_TOKEN")
    try:
        status, body, _ = call(off, "POST", "/update", headers=auth)
        assert status == 403 and "allow_update" in body["error"]
        assert call(off, "GET", "/health")[1]["update"] == {"enabled": False, "state": "never run"}
    finally:
        off.shutdown()
        off.server_close()

    config = tmp_path / "update.yaml"  # the update fails fast: its repository does not exist
    config.write_text("pipeline:\n  output_dir: out\ngit_scraper:\n  repo: no-such-repo\n")
    service = Service(learned, serve.Config(port=0, token_env="TEST_SERVE_TOKEN", allow_update=True))
    service.update = PipelineUpdate(config, timeout_s=600)
    server = make_server(service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert call(server, "GET", "/update")[0] == 401  # even GET needs the token
        assert call(server, "POST", "/update", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call(server, "GET", "/update", headers=auth)[1]["state"] == "never run"
        status, body, _ = call(server, "POST", "/update", headers=auth)
        assert status == 202 and body["state"] == "running" and body["pid"] > 0
        assert body["command"][1:] == ["-m", "repo2model.stages.pipeline", "--config", str(config),
                                       "--update"]
        status, busy, _ = call(server, "POST", "/update", headers=auth)
        assert status == 409 and str(body["pid"]) in busy["error"]
        done = wait_for(lambda: (lambda b: b if b["state"] != "running" else None)(
            call(server, "GET", "/update", headers=auth)[1]), "the update to finish")
        # pipeline.py's own answer, whichever it is: a failed stage (no such repository) or no --update yet
        assert done["state"] == "failed" and done["exit_code"] in (1, 2) and done["finished_at"], done
        tail = "\n".join(done["log_tail"])
        assert "no-such-repo: no such folder" in tail or "unrecognized arguments: --update" in tail, tail
        assert call(server, "GET", "/health")[1]["update"] == {"enabled": True, "state": "failed"}
    finally:
        service.update.stop()
        server.shutdown()
        server.server_close()
    tokenless = Service(learned, serve.Config(port=0, token_env="NO_SUCH_VARIABLE_X", allow_update=True))
    tokenless.update = PipelineUpdate(config, timeout_s=600)
    server = make_server(tokenless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, body, _ = call(server, "POST", "/update")
        assert status == 403 and "needs a bearer token" in body["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_update_settings_are_checked_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VARIABLE_X", raising=False)
    assert serve.check_update_settings(serve.Config(), None) is None  # off: nothing to check
    with pytest.raises(UserError, match="needs a bearer token"):
        serve.check_update_settings(serve.Config(allow_update=True, token_env="NO_SUCH_VARIABLE_X"), None)
    on = serve.Config(allow_update=True, token="t", token_env="NO_SUCH_VARIABLE_X")
    with pytest.raises(UserError, match="update_config"):
        serve.check_update_settings(on, None)
    with pytest.raises(UserError, match="not found"):
        serve.check_update_settings(on, tmp_path / "missing.yaml")
    config = tmp_path / "config.yaml"
    config.write_text("pipeline: {}\n")
    assert serve.check_update_settings(on, config) == config.resolve()
    with pytest.raises(ValueError, match="reload_poll_s"):
        serve.Config(reload_poll_s=-1)
