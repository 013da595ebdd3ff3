"""The watch mode: real file writes and commits in a tmp_path repository give new predictions (the library,
predict.py --watch stopped with Ctrl-C, serve.py's GET /watch), and the working tree through POST /predict."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import helpers_predict as H
import pytest

from repo2model.serving.predictor import Predictor
from repo2model.serving.service import Service, make_server
from repo2model.serving.settings import PredictionConfig
from repo2model.serving.watch import Watch
from repo2model.stages import serve

ROOT = Path(__file__).resolve().parents[1]
WAIT = 60.0  # seconds a test waits for an event on a busy machine before failing


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learned")
    model, tokenizer, lang, _, _ = H.trained_predictor_parts(folder)
    return {"model": model, "tokenizer": tokenizer, "lang": lang}


def predictor(learned) -> Predictor:
    return Predictor(learned["model"], learned["tokenizer"], learned["lang"],
                     PredictionConfig(file_ranking="likelihood", history_commits=2))


@pytest.fixture
def repo(make_repo):
    repo = make_repo("watched")
    repo.write(".gitignore", "build/\n")
    repo.commit("add parser", {"pkg/parse.py": "def parse(s):\n    return s\n"})
    return repo


def in_progress(prediction: dict) -> list[str]:
    return [f["path"] for f in prediction["in_progress"]]


def next_item(items: queue.Queue, what: str):
    try:
        return items.get(timeout=WAIT)
    except queue.Empty:
        raise AssertionError(f"no {what} within {WAIT:.0f}s") from None


def test_a_file_write_and_a_commit_each_give_a_new_prediction(learned, repo):
    heads: list[Path] = []
    watch = Watch(predictor(learned), repo.path, "Make the parser strip spaces", on_new_head=heads.append)
    stop, items = threading.Event(), queue.Queue()
    thread = threading.Thread(target=lambda: [items.put(p.to_json()) for p in watch.predictions(stop)], daemon=True)
    thread.start()
    try:
        first = next_item(items, "first prediction")
        assert in_progress(first) == [] and first["work_in_progress"]["head"] == repo.head()
        repo.write("pkg/strip.py", "def strip(s):\n    return s.strip()\n")  # a new file: the set changes
        second = next_item(items, "prediction after a file write")
        assert in_progress(second) == ["pkg/strip.py"] and "pkg/strip.py" not in [f["path"] for f in second["files"]]
        assert second["in_progress"][0]["change_types"] == [{"type": "NEW_FUNCTION", "chunks": 1}]
        readings = watch.readings
        repo.write("pkg/strip.py", "def strip(s):\n    return s.strip(' ')\n")  # the same set: no prediction
        repo.write("build/out.py", "x = 1\n")  # ignored by .gitignore: no prediction either
        deadline = time.monotonic() + 30
        while watch.readings == readings and time.monotonic() < deadline:  # the write was seen and read
            time.sleep(0.1)
        assert watch.readings > readings
        time.sleep(1.0)
        assert items.empty()
        head = repo.commit("add strip", {})  # HEAD moves, the tree is clean again
        third = next_item(items, "prediction after a commit")
        assert third["work_in_progress"]["head"] == head and in_progress(third) == []
        assert [h["message"] for h in third["history"]][-1] == "add strip" and heads == [repo.path]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def save_model(learned, folder: Path) -> Path:
    learned["model"].save_pretrained(str(folder))
    learned["tokenizer"].save_pretrained(str(folder))
    learned["lang"].save(folder)
    return folder


def test_predict_watch_prints_a_line_per_change_and_stops_cleanly_on_ctrl_c(learned, repo, tmp_path):
    model = save_model(learned, tmp_path / "model")
    proc = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), "--model", str(model), "--repo", str(repo.path),
                             "--watch", "--file-ranking", "likelihood", "--history", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            # PYTHONFAULTHANDLER: a process that does not stop prints every thread's stack on SIGABRT
                            env={**os.environ, "TQDM_DISABLE": "1", "PYTHONFAULTHANDLER": "1"},
                            # Ctrl-C as in a terminal, even where this run inherited SIGINT ignored (a background job)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        first = json.loads(next_item(lines, "first JSON line"))
        assert in_progress(first) == [] and first["task"] == ""
        repo.write("pkg/parse.py", "def parse(s):\n    return s.strip()\n")
        second = json.loads(next_item(lines, "JSON line after a file write"))
        assert in_progress(second) == ["pkg/parse.py"] and second["in_progress"][0]["status"] == "M"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            raise AssertionError("predict --watch did not stop on Ctrl-C:\n" + proc.stderr.read()[-6000:]) from None
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = proc.stderr.read()
    assert code in (0, 130) and "Traceback" not in stderr, stderr[-2000:]
    assert "watch: stopped after 2 predictions" in stderr


def test_predict_refuses_watch_without_a_repository(learned, tmp_path, capsys):
    from repo2model.stages import predict

    model = save_model(learned, tmp_path / "model")
    assert predict.main(["--model", str(model), "--commits", str(tmp_path / "commits.json"), "--watch"]) == 2
    assert "--watch: needs --repo" in capsys.readouterr().err


def sse_events(response):
    """(event, data) pairs of a server-sent event stream, comments as ("comment", text)."""
    event, data = None, []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\n")
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and event:
            yield event, json.loads("\n".join(data))
            event, data = None, []


def test_serve_watch_streams_server_sent_events(learned, repo, monkeypatch):
    monkeypatch.delenv("REPO2MODEL_SERVE_TOKEN", raising=False)
    service = Service(predictor(learned), serve.Config(port=0, token="watch-token"))
    server = make_server(service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    url = f"/watch?repo={quote(str(repo.path))}&task={quote('Strip spaces')}"
    try:
        conn = http.client.HTTPConnection(host, port, timeout=WAIT)
        conn.request("GET", url)
        refused = conn.getresponse()
        assert refused.status == 401 and json.loads(refused.read())["status"] == 401
        conn = http.client.HTTPConnection(host, port, timeout=WAIT)
        conn.request("GET", url, headers={"Authorization": "Bearer watch-token"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
        events = sse_events(response)
        name, first = next(events)
        assert name == "prediction" and first["task"] == "Strip spaces" and in_progress(first) == []
        repo.write("pkg/new.py", "def new():\n    return 1\n")
        name, second = next(e for e in events if e[0] != "comment")
        assert name == "prediction" and in_progress(second) == ["pkg/new.py"]
        assert service.watchers == 1
        service.stopping.set()  # shutting down ends the stream
        assert [e for e in events if e[0] == "prediction"] == []
        conn.close()
    finally:
        service.stopping.set()
        server.shutdown()
        server.server_close()


def post(server, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=WAIT)
    conn.request("POST", "/predict", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def test_post_predict_with_the_working_tree_says_when_the_remaining_files_change(learned, repo, monkeypatch):
    monkeypatch.delenv("REPO2MODEL_SERVE_TOKEN", raising=False)
    server = make_server(Service(predictor(learned), serve.Config(port=0)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        repo.write("tests/test_parse.py", "def test_parse():\n    assert parse('x') == 'x'\n")
        status, first = post(server, {"repo": str(repo.path), "working_tree": True})
        assert status == 200 and first["task"] == "" and in_progress(first) == ["tests/test_parse.py"]
        assert first["work_in_progress"]["changed"] is True
        status, again = post(server, {"repo": str(repo.path), "working_tree": True})
        assert status == 200 and again["work_in_progress"]["changed"] is False
        assert [f["path"] for f in again["files"]] == [f["path"] for f in first["files"]]
        for body, word in (({"repo": str(repo.path)}, "task"), ({"working_tree": True, "commits": []}, "needs repo"),
                           ({"repo": str(repo.path), "working_tree": "yes"}, "working_tree")):
            status, answer = post(server, body)
            assert status == 422 and word in answer["error"], answer
    finally:
        server.shutdown()
        server.server_close()


def test_predict_working_tree_writes_the_in_progress_files(learned, repo, tmp_path, capsys):
    from repo2model.stages import predict

    model = save_model(learned, tmp_path / "model")
    repo.write("pkg/parse.py", "def parse(s):\n    return s.strip()\n")
    out = tmp_path / "prediction.json"
    assert predict.main(["--model", str(model), "--repo", str(repo.path), "--working-tree", "--file-ranking",
                         "likelihood", "--output", str(out)]) == 0
    prediction = json.loads(out.read_text(encoding="utf-8"))
    assert in_progress(prediction) == ["pkg/parse.py"] and prediction["task"] == ""
    assert prediction["in_progress"][0]["change_types"] == [{"type": "MODIFIED_FUNCTION", "chunks": 1}]
    assert "pkg/parse.py" not in [f["path"] for f in prediction["files"]]
    capsys.readouterr()
    assert predict.main(["--model", str(model), "--commits", str(tmp_path / "c.json"), "--working-tree"]) == 2
    assert "--working-tree: needs --repo" in capsys.readouterr().err
