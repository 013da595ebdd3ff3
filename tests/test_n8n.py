"""The n8n workflow: validated against the service's URL and request fields; run for real in n8n when installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

import predict
import serve

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "integrations" / "n8n" / "workflow.json"
RUNNER = Path(os.environ.get("N8N_RUNNER", "/work/shared/tools/n8n/run-workflow.sh"))
N8N_BIN = Path(os.environ.get("N8N_LOCAL", Path.home() / ".cache" / "n8n-local")) / "node_modules" / ".bin" / "n8n"


def load():
    return json.loads(WORKFLOW.read_text(encoding="utf-8"))


def nodes_by_type(workflow):
    return {node["type"]: node for node in workflow["nodes"]}


def test_workflow_is_importable_json_with_an_id_and_a_chain():
    workflow = load()
    assert workflow["id"] and workflow["name"]
    names = [node["name"] for node in workflow["nodes"]]
    assert len(names) == len(set(names))
    types = nodes_by_type(workflow)
    assert {"n8n-nodes-base.manualTrigger", "n8n-nodes-base.set", "n8n-nodes-base.httpRequest"} <= set(types)
    # Trigger -> Set -> HTTP Request, every connection naming an existing node.
    chain = [types["n8n-nodes-base.manualTrigger"]["name"]]
    while chain[-1] in workflow["connections"]:
        (targets,) = workflow["connections"][chain[-1]]["main"]
        assert all(t["node"] in names for t in targets)
        chain.append(targets[0]["node"])
    assert chain[-1] == types["n8n-nodes-base.httpRequest"]["name"] and len(chain) == 3


def test_http_request_matches_the_service():
    http = nodes_by_type(load())["n8n-nodes-base.httpRequest"]["parameters"]
    cfg = serve.Config()
    assert http["method"] == "POST"
    assert http["url"] == f"http://{cfg.host}:{cfg.port}/predict"
    assert http["sendBody"] is True and http["specifyBody"] == "json"
    assert http["options"]["timeout"] >= 60_000  # generation on a CPU takes a while
    body = http["jsonBody"]
    top = set(re.findall(r"[{,]\s*(\w+):", body.split("options:")[0]))
    assert top <= {"task", "repo", "commits", "seed"} and "task" in top and "repo" in top
    options = set(re.findall(r"[{,]\s*(\w+):", body.split("options:")[1]))
    assert options and options <= set(predict.OPTION_KEYS)
    header = http["headerParameters"]["parameters"][0]
    assert header["name"] == "Authorization" and "Bearer " in header["value"]
    fields = {a["name"] for a in nodes_by_type(load())["n8n-nodes-base.set"]["parameters"]["assignments"]["assignments"]}
    assert set(re.findall(r"\$json\.(\w+)", body)) <= fields


@pytest.mark.slow
@pytest.mark.skipif(not (N8N_BIN.exists() and RUNNER.exists()), reason="n8n is not installed (see run-workflow.sh)")
def test_workflow_runs_in_real_n8n(tmp_path, make_repo):
    import helpers_predict as H

    model, tokenizer, lang, _, _ = H.trained_predictor_parts(tmp_path / "model")
    predictor = predict.Predictor(model, tokenizer, lang, predict.Config(max_new_tokens=40), model_dir=tmp_path)
    server = serve.make_server(serve.Service(predictor, serve.Config(port=0)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    repo = make_repo("project")
    repo.commit("add parser", {"pkg/parse.py": "def parse(s):\n    return s\n"})
    repo.commit("add tests", {"tests/test_parse.py": "def test_parse():\n    assert True\n"})
    try:
        workflow = load()
        port = server.server_address[1]
        for node in workflow["nodes"]:
            if node["type"] == "n8n-nodes-base.httpRequest":
                node["parameters"]["url"] = f"http://127.0.0.1:{port}/predict"
            if node["type"] == "n8n-nodes-base.set":
                for field in node["parameters"]["assignments"]["assignments"]:
                    if field["name"] == "repo":
                        field["value"] = str(repo.path)
                    if field["name"] == "num_candidates":
                        field["value"] = 2
        path = tmp_path / "workflow.json"
        path.write_text(json.dumps(workflow), encoding="utf-8")
        proc = subprocess.run([str(RUNNER), str(path)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        execution = json.loads(proc.stdout[proc.stdout.index("{"):])
        (run,) = execution["data"]["resultData"]["runData"]["Predict next change"]
        reply = run["data"]["main"][0][0]["json"]
        assert reply["task"] == "Add a retry with backoff to the scraper"
        assert [h["message"] for h in reply["history"]] == ["add parser", "add tests"]
        assert len(reply["candidates"]) == 2 and "files" in reply
    finally:
        server.shutdown()
        server.server_close()
