"""The n8n workflow: validated against the service's URL and request fields, and run for real in n8n.

The real run needs n8n (../shared/tools/n8n/run-workflow.sh installs it on first use: minutes, about 1.8 GB).
It is skipped where n8n is not installed, unless REPO2MODEL_REQUIRE_N8N=1 (set by .ci/run): then a missing
runner fails, and the runner installs n8n on its first call.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

import helpers_predict as H
import serve
from repo2model.prediction import OPTION_KEYS, PredictionConfig, Predictor
from repo2model.retrieval import IndexConfig, Retriever, UnitIndex

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "integrations" / "n8n" / "workflow.json"
RUNNER = Path(os.environ.get("N8N_RUNNER", ROOT.parent / "shared" / "tools" / "n8n" / "run-workflow.sh"))
N8N_BIN = Path(os.environ.get("N8N_LOCAL", Path.home() / ".cache" / "n8n-local")) / "node_modules" / ".bin" / "n8n"
REQUIRED = os.environ.get("REPO2MODEL_REQUIRE_N8N") == "1"
TRIGGER, SET, HTTP, CODE = ("n8n-nodes-base.manualTrigger", "n8n-nodes-base.set", "n8n-nodes-base.httpRequest",
                            "n8n-nodes-base.code")


def load():
    return json.loads(WORKFLOW.read_text(encoding="utf-8"))


def chain(workflow) -> list[dict]:
    """The nodes from the trigger along the (single) main connections."""
    nodes = {node["name"]: node for node in workflow["nodes"]}
    (trigger,) = [n for n in workflow["nodes"] if n["type"] == TRIGGER]
    out = [trigger]
    while out[-1]["name"] in workflow["connections"]:
        (targets,) = workflow["connections"][out[-1]["name"]]["main"]
        (target,) = targets
        out.append(nodes[target["node"]])
    return out


def test_workflow_is_trigger_set_predict_code_then_a_disabled_llm():
    workflow = load()
    assert workflow["id"] and workflow["name"]
    names = [node["name"] for node in workflow["nodes"]]
    assert len(names) == len(set(names))
    nodes = chain(workflow)
    assert [n["type"] for n in nodes] == [TRIGGER, SET, HTTP, CODE, HTTP]
    assert len(nodes) == len(workflow["nodes"])
    predict_node, llm = nodes[2], nodes[4]
    assert not predict_node.get("disabled") and llm.get("disabled") is True  # the user fills it in first
    assert llm["parameters"]["url"].endswith("/v1/chat/completions")  # Ollama's / any OpenAI-compatible API
    assert llm["parameters"]["jsonBody"] == "={{ JSON.stringify($json.request) }}"
    assert "request" in nodes[3]["parameters"]["jsCode"] and "answer.prompt" in nodes[3]["parameters"]["jsCode"]


def test_http_request_matches_the_service():
    nodes = chain(load())
    http = nodes[2]["parameters"]
    cfg = serve.Config()
    assert http["method"] == "POST"
    assert http["url"] == f"http://{cfg.host}:{cfg.port}/predict"
    assert http["sendBody"] is True and http["specifyBody"] == "json"
    assert http["options"]["timeout"] >= 60_000  # generation on a CPU takes a while
    body = http["jsonBody"]
    top = set(re.findall(r"[{,]\s*(\w+):", body.split("options:")[0]))
    assert top <= {"task", "repo", "commits", "seed", "test_failures"} and {"task", "repo", "test_failures"} <= top
    options = set(re.findall(r"[{,]\s*(\w+):", body.split("options:")[1]))
    assert "context_tokens" in options and options <= set(OPTION_KEYS)
    header = http["headerParameters"]["parameters"][0]
    assert header["name"] == "Authorization" and "Bearer " in header["value"]
    fields = {a["name"] for a in nodes[1]["parameters"]["assignments"]["assignments"]}
    assert set(re.findall(r"\$json\.(\w+)", body)) <= fields
    assert set(re.findall(r"settings\.(\w+)", nodes[3]["parameters"]["jsCode"])) <= fields
    assert f"$('{nodes[1]['name']}')" in nodes[3]["parameters"]["jsCode"]


def n8n_ready() -> bool:
    return RUNNER.exists() and N8N_BIN.exists()


@pytest.mark.slow
@pytest.mark.skipif(not REQUIRED and not n8n_ready(),
                    reason="n8n is not installed (../shared/tools/n8n/run-workflow.sh installs it; "
                           "REPO2MODEL_REQUIRE_N8N=1 makes this test install it)")
def test_workflow_runs_in_real_n8n(tmp_path, make_repo):
    assert RUNNER.exists(), f"{RUNNER}: the n8n runner is missing (REPO2MODEL_REQUIRE_N8N=1 needs it)"
    repo = make_repo("project")
    repo.commit("add parser", {"pkg/parse.py": "def parse(s):\n    return s\n",
                               "pkg/other.py": "def unrelated():\n    return 0\n"})
    repo.commit("add tests", {"tests/test_parse.py": "def test_parse():\n    assert parse('x') == 'x'\n"})
    UnitIndex(IndexConfig(), tmp_path / "index").update(repo.path, progress=False)
    model, tokenizer, lang, _, _ = H.trained_predictor_parts(tmp_path / "model")
    predictor = Predictor(model, tokenizer, lang, PredictionConfig(max_new_tokens=120), model_dir=tmp_path)
    predictor.retriever = Retriever(IndexConfig(), tmp_path / "index")
    server = serve.make_server(serve.Service(predictor, serve.Config(port=0)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        workflow = load()
        nodes = chain(workflow)
        nodes[2]["parameters"]["url"] = f"http://127.0.0.1:{server.server_address[1]}/predict"
        values = {"repo": str(repo.path), "num_candidates": 2, "test_failures": "FAILED tests/test_parse.py"}
        for field in nodes[1]["parameters"]["assignments"]["assignments"]:
            field["value"] = values.get(field["name"], field["value"])
        path = tmp_path / "workflow.json"
        path.write_text(json.dumps(workflow), encoding="utf-8")
        # The first call installs n8n (minutes); later ones start in seconds.
        proc = subprocess.run([str(RUNNER), str(path)], capture_output=True, text=True,
                              timeout=300 if n8n_ready() else 3600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        execution = json.loads(proc.stdout[proc.stdout.index("{"):])
        assert execution["status"] == "success"
        runs = execution["data"]["resultData"]["runData"]
        reply = runs[nodes[2]["name"]][0]["data"]["main"][0][0]["json"]
        assert reply["task"] == "Add a retry with backoff to the scraper"
        assert [h["message"] for h in reply["history"]] == ["add parser", "add tests"]
        assert len(reply["candidates"]) == 2 and reply["files"]
        assert reply["context_source"]["index"]["commit"] == repo.head()
        assert any(c["path"] == "pkg/parse.py" and "def parse(s):" in c["code"] for c in reply["context"])
        prompt = runs[nodes[3]["name"]][0]["data"]["main"][0][0]["json"]
        assert prompt["prompt"] == reply["prompt"]
        assert "## Task\nAdd a retry with backoff to the scraper" in prompt["prompt"]
        assert "def parse(s):" in prompt["prompt"] and "FAILED tests/test_parse.py" in prompt["prompt"]
        assert prompt["request"]["messages"][1]["content"] == reply["prompt"]
        assert prompt["request"]["model"] == "qwen2.5-coder:7b"
        # The disabled LLM node passes its input through: nothing was sent anywhere.
        llm = runs[nodes[4]["name"]][0]["data"]["main"][0][0]["json"]
        assert llm == prompt
    finally:
        server.shutdown()
        server.server_close()
