"""The working-tree workflow (integrations/n8n/watch-workflow.json): its shape against serve.py's POST /predict,
and real runs in n8n against a real service and a real working tree: a message is posted when the predicted
remaining files change, and not when they stay the same.

The real runs need n8n, like tests/test_n8n.py (whose runner and versions they reuse): on the current n8n with
its defaults and on the last 1.x, each skipped where that version is not installed, unless
REPO2MODEL_REQUIRE_N8N=1. The token reaches n8n only as the credential the workflow names.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import helpers_predict as H
from conftest import ROOT
from repo2model.serving.predictor import Predictor
from repo2model.serving.service import Service, make_server
from repo2model.serving.settings import OPTION_KEYS, PredictionConfig
from repo2model.stages import serve
from test_n8n import n8n_versions, run_in_n8n, uses_the_token_credential

WORKFLOW = ROOT / "integrations" / "n8n" / "watch-workflow.json"
SCHEDULE, MANUAL, SET, HTTP, CODE, IF = (
    "n8n-nodes-base.scheduleTrigger", "n8n-nodes-base.manualTrigger", "n8n-nodes-base.set",
    "n8n-nodes-base.httpRequest", "n8n-nodes-base.code", "n8n-nodes-base.if")


def load() -> dict:
    return json.loads(WORKFLOW.read_text(encoding="utf-8"))


def targets(workflow: dict, name: str) -> list[list[str]]:
    return [[t["node"] for t in output] for output in workflow["connections"].get(name, {}).get("main", [])]


def by_type(workflow: dict, kind: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == kind]


def settings(workflow: dict) -> dict:
    (node,) = by_type(workflow, SET)
    return {a["name"]: a for a in node["parameters"]["assignments"]["assignments"]}


def test_every_minute_predict_from_the_working_tree_and_post_only_when_the_files_change():
    workflow = load()
    assert workflow["id"] and workflow["name"] and not workflow["active"]
    names = {node["name"]: node for node in workflow["nodes"]}
    assert len(names) == len(workflow["nodes"])
    (schedule,), (manual,), (config,) = by_type(workflow, SCHEDULE), by_type(workflow, MANUAL), by_type(workflow, SET)
    assert schedule["parameters"]["rule"]["interval"] == [{"field": "minutes", "minutesInterval": 1}]
    assert targets(workflow, schedule["name"]) == targets(workflow, manual["name"]) == [[config["name"]]]
    ((predict,),) = targets(workflow, config["name"])
    ((branch,),) = targets(workflow, predict)
    changed, unchanged = targets(workflow, branch)
    assert unchanged == [] and len(changed) == 1  # nothing to say when the files stay the same
    ((post,),) = targets(workflow, changed[0])
    assert [names[n]["type"] for n in (predict, branch, changed[0], post)] == [HTTP, IF, CODE, HTTP]

    cfg = serve.Config()
    values = settings(workflow)
    assert values["service_url"]["value"] == f"http://{cfg.host}:{cfg.port}" and values["task"]["value"] == ""
    request = names[predict]["parameters"]
    assert request["method"] == "POST" and request["url"] == "={{ $json.service_url }}/predict"
    assert uses_the_token_credential(names[predict])
    body = request["jsonBody"]
    assert "working_tree: true" in body and "repo: $json.repo" in body and "task: $json.task" in body
    options = body.split("options:")[1]
    assert {"file_ranking", "max_files"} <= set(OPTION_KEYS) and "file_ranking: 'likelihood'" in options
    condition = names[branch]["parameters"]["conditions"]["conditions"][0]
    assert condition["leftValue"] == "={{ $json.work_in_progress.changed }}"
    assert condition["operator"] == {"type": "boolean", "operation": "true", "singleValue": True}
    message = names[changed[0]]["parameters"]["jsCode"]
    for key in ("in_progress", "files", "authors", "when", "work_in_progress"):
        assert f"answer.{key}" in message, key
    sender = names[post]
    assert sender.get("disabled") is True and "message_url" in sender["parameters"]["url"]  # set, then enable
    assert "credentials" not in sender  # the chat's webhook: serve.py's token never leaves for it


class Chat(BaseHTTPRequestHandler):
    """A chat's incoming webhook: records each posted message."""

    messages: list[dict] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.messages.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("version", n8n_versions())
def test_watch_workflow_posts_when_the_remaining_files_change_in_real_n8n(version, tmp_path, make_repo,
                                                                          monkeypatch):
    repo = make_repo("project")
    repo.commit("add parser", {"pkg/parse.py": "def parse(s):\n    return s\n",
                               "pkg/other.py": "def unrelated():\n    return 0\n"})
    repo.commit("add tests", {"tests/test_parse.py": "def test_parse():\n    assert parse('x') == 'x'\n"})
    repo.write("pkg/parse.py", "def parse(s):\n    return s.strip()\n")  # the change in progress
    model, tokenizer, lang, _, _ = H.trained_predictor_parts(tmp_path / "model")
    predictor = Predictor(model, tokenizer, lang, PredictionConfig(max_new_tokens=120))
    token = "n8n-watch-secret"
    monkeypatch.delenv("REPO2MODEL_SERVE_TOKEN", raising=False)
    service = make_server(Service(predictor, serve.Config(port=0, token=token)))
    chat = ThreadingHTTPServer(("127.0.0.1", 0), type("Recorder", (Chat,), {"messages": []}))
    for server in (service, chat):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        workflow = load()
        values = settings(workflow)
        values["service_url"]["value"] = f"http://127.0.0.1:{service.server_address[1]}"
        values["repo"]["value"] = str(repo.path)
        values["message_url"]["value"] = f"http://127.0.0.1:{chat.server_address[1]}/hook"
        for node in workflow["nodes"]:
            node.pop("disabled", None)  # the user enables the post once message_url is set
        messages = chat.RequestHandlerClass.messages

        first = run_in_n8n(version, workflow, token, tmp_path, timeout=300)["data"]["resultData"]["runData"]
        answer = first["Predict the remaining files"][0]["data"]["main"][0][0]["json"]
        assert [f["path"] for f in answer["in_progress"]] == ["pkg/parse.py"] and answer["work_in_progress"]["changed"]
        assert "pkg/parse.py" not in [f["path"] for f in answer["files"]]
        (message,) = messages
        assert message["text"] == message["content"]
        assert f"repo2model: {repo.path} at {repo.head()[:12]}" in message["text"]
        assert "In progress: pkg/parse.py (MODIFIED_FUNCTION)" in message["text"]
        assert "Likely next: " + ", ".join(f["path"] for f in answer["files"][:5]) in message["text"]

        second = run_in_n8n(version, workflow, token, tmp_path, timeout=300)["data"]["resultData"]["runData"]
        again = second["Predict the remaining files"][0]["data"]["main"][0][0]["json"]
        assert again["work_in_progress"]["changed"] is False and len(messages) == 1  # nothing new: no message
        assert "Post the message" not in second
    finally:
        for server in (service, chat):
            server.shutdown()
            server.server_close()
