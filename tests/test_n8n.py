"""The n8n workflows: validated against the service's URL, request fields and token, and run for real in n8n.

The real runs need n8n (../shared/tools/n8n/run-workflow.sh installs each version on first use: minutes,
2-3 GB). Each workflow runs on the current n8n (2.x, with its defaults: `$env` blocked in expressions) and on
the last 1.x. A version not installed is skipped, unless REPO2MODEL_REQUIRE_N8N=1 (set by .ci/run): then a
missing runner fails, and the runner installs that version on its first call.

The main workflow also runs with its last node, the code-writing LLM, enabled against llama-cpp-python's
OpenAI-compatible server (`python -m llama_cpp.server`) serving the tests' tiny model exported to GGUF: its code
is nonsense, but every node runs for real and the step-4 request is answered by a real chat-completions endpoint.
That run needs the export extra (requirements-export.txt) and is skipped without it, unless
REPO2MODEL_REQUIRE_EXPORT=1 (set by .ci/run).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import helpers_predict as H
from repo2model.core.paths import ArtifactPaths
from repo2model.export import packages
from repo2model.stages import export, serve
from repo2model.serving.service import Service, make_server
from repo2model.serving.predictor import Predictor
from repo2model.serving.settings import OPTION_KEYS, PredictionConfig
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.retriever import Retriever
from repo2model.retrieval.unit_index import UnitIndex

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "integrations" / "n8n" / "workflow.json"
RUNNER = Path(os.environ.get("N8N_RUNNER", ROOT.parent / "shared" / "tools" / "n8n" / "run-workflow.sh"))
N8N_LOCAL = Path(os.environ.get("N8N_LOCAL", Path.home() / ".cache" / "n8n-local"))
N8N_VERSIONS = ("2.40.4", "1.123.81")  # the current major, what users run, and the last 1.x
REQUIRED = os.environ.get("REPO2MODEL_REQUIRE_N8N") == "1"
TRIGGER, SET, HTTP, CODE, NOTE = ("n8n-nodes-base.manualTrigger", "n8n-nodes-base.set", "n8n-nodes-base.httpRequest",
                                  "n8n-nodes-base.code", "n8n-nodes-base.stickyNote")
# The credential both workflows name: n8n holds the token, the workflow files hold no secret.
CREDENTIAL = {"id": "r2mServeToken001", "name": "repo2model serve token"}
EXPORT_MISSING = packages.missing()  # the code-writing endpoint below needs the export extra
WITH_LLM = pytest.param(True, id="llm", marks=pytest.mark.skipif(
    bool(EXPORT_MISSING) and os.environ.get("REPO2MODEL_REQUIRE_EXPORT") != "1",
    reason=f"the export extra is not installed ({', '.join(EXPORT_MISSING)}): pip install -r requirements-export.txt "
           "(REPO2MODEL_REQUIRE_EXPORT=1 makes this a failure)"))


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
    assert len(nodes) == len([n for n in workflow["nodes"] if n["type"] != NOTE])
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
    assert uses_the_token_credential(nodes[2])
    fields = {a["name"] for a in nodes[1]["parameters"]["assignments"]["assignments"]}
    assert set(re.findall(r"\$json\.(\w+)", body)) <= fields
    assert set(re.findall(r"settings\.(\w+)", nodes[3]["parameters"]["jsCode"])) <= fields
    assert f"$('{nodes[1]['name']}')" in nodes[3]["parameters"]["jsCode"]


def uses_the_token_credential(node: dict) -> bool:
    """The HTTP Request node sends the bearer token of the n8n credential, and sets no header of its own."""
    params = node["parameters"]
    return (params.get("authentication") == "genericCredentialType"
            and params.get("genericAuthType") == "httpBearerAuth"
            and node.get("credentials") == {"httpBearerAuth": CREDENTIAL}
            and not params.get("sendHeaders") and "headerParameters" not in params)


def test_no_workflow_reads_the_environment():
    # n8n 2.x blocks $env in expressions by default (N8N_BLOCK_ENV_ACCESS_IN_NODE): the node would fail.
    files = sorted(WORKFLOW.parent.glob("*.json"))
    assert len(files) == 3
    for path in files:
        assert "$env" not in path.read_text(encoding="utf-8"), path.name


def test_sticky_note_says_how_to_create_the_credential():
    cfg = serve.Config()
    for path in sorted(WORKFLOW.parent.glob("*.json")):
        workflow = json.loads(path.read_text(encoding="utf-8"))
        (note,) = [n["parameters"]["content"] for n in workflow["nodes"] if n["type"] == NOTE]
        for words in ("Bearer Auth", CREDENTIAL["name"], "serve.token", cfg.token_env, "host.docker.internal",
                      "0.0.0.0"):
            assert words in note, (path.name, words)
        to_serve = [n for n in workflow["nodes"] if n["type"] == HTTP and not n.get("disabled")]
        assert to_serve and all(uses_the_token_credential(n) for n in to_serve), path.name


def n8n_bin(version: str) -> Path:
    return N8N_LOCAL / version / "node_modules" / ".bin" / "n8n"


def n8n_ready(version: str) -> bool:
    return RUNNER.exists() and n8n_bin(version).exists()


def n8n_versions() -> list:
    """One parameter per n8n version, skipped where that version is not installed (unless required)."""
    return [pytest.param(v, marks=pytest.mark.skipif(
        not REQUIRED and not n8n_ready(v),
        reason=f"n8n {v} is not installed (N8N_VERSION={v} ../shared/tools/n8n/run-workflow.sh installs it; "
               "REPO2MODEL_REQUIRE_N8N=1 makes this test install it)")) for v in N8N_VERSIONS]


def run_in_n8n(version: str, workflow: dict, token: str, tmp_path: Path, timeout: float,
               env: dict | None = None) -> dict:
    """Runs `workflow` once in n8n `version` with the token as the credential the workflow names; returns the
    execution. The first call for a version installs it (minutes); later ones start in seconds."""
    assert RUNNER.exists(), f"{RUNNER}: the n8n runner is missing (REPO2MODEL_REQUIRE_N8N=1 needs it)"
    path = tmp_path / f"workflow-{version}.json"
    path.write_text(json.dumps(workflow), encoding="utf-8")
    credentials = tmp_path / f"credentials-{version}.json"
    credentials.write_text(json.dumps([{**CREDENTIAL, "type": "httpBearerAuth", "data": {"token": token}}]),
                           encoding="utf-8")
    env = {**(os.environ if env is None else env), "N8N_VERSION": version, "N8N_CREDENTIALS": str(credentials)}
    proc = subprocess.run([str(RUNNER), str(path)], capture_output=True, text=True, env=env,
                          timeout=timeout if n8n_ready(version) else 3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    # The execution's JSON; n8n may print log lines after it (seen: 'Registered runner "JS Task Runner"').
    execution, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{"):])
    assert execution["status"] == "success"
    return execution


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def code_writing_endpoint(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server serving the tests' tiny model, exported to GGUF by the export
    stage: the base URL of a real chat-completions endpoint, up for the module."""
    assert not EXPORT_MISSING, f"REPO2MODEL_REQUIRE_EXPORT=1 but {', '.join(EXPORT_MISSING)} cannot be imported"
    folder = tmp_path_factory.mktemp("code-writer")
    model, tokenizer, _, _, _ = H.trained_predictor_parts(folder / "tokenizer")
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    export.run(export.Config(model_dir=folder / "model", output_dir=folder / "export", types=["f16"],
                             modelfile="f16"), ArtifactPaths.under(folder))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # n_ctx above the model's 512 positions: the step-4 prompt in a 600-token vocabulary is long
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(folder / "export" / "model-f16.gguf"),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"]
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, (folder / "server.log").read_text(errors="replace")[-3000:]
                try:
                    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    assert time.monotonic() < deadline, "llama_cpp.server did not answer within 120 s"
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("llm", [False, WITH_LLM])
@pytest.mark.parametrize("version", n8n_versions())
def test_workflow_runs_in_real_n8n(version, llm, tmp_path, make_repo, monkeypatch, request):
    """Every node for real: the service answers /predict, the Code node packs its prompt into a chat request, and
    the LLM node, disabled as the file ships, passes it through; enabled (llm), a real OpenAI-compatible endpoint
    answers it."""
    repo = make_repo("project")
    repo.commit("add parser", {"pkg/parse.py": "def parse(s):\n    return s\n",
                               "pkg/other.py": "def unrelated():\n    return 0\n"})
    repo.commit("add tests", {"tests/test_parse.py": "def test_parse():\n    assert parse('x') == 'x'\n"})
    UnitIndex(IndexConfig(), tmp_path / "index").update(repo.path, progress=False)
    model, tokenizer, lang, _, _ = H.trained_predictor_parts(tmp_path / "model")
    predictor = Predictor(model, tokenizer, lang, PredictionConfig(max_new_tokens=120), model_dir=tmp_path)
    predictor.retriever = Retriever(IndexConfig(), tmp_path / "index")
    token = "n8n-credential-secret"
    monkeypatch.delenv("REPO2MODEL_SERVE_TOKEN", raising=False)
    # A token is required: the reply below proves n8n sent the credential's token (401 otherwise).
    server = make_server(Service(predictor, serve.Config(port=0, token=token)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        workflow = load()
        nodes = chain(workflow)
        nodes[2]["parameters"]["url"] = f"http://127.0.0.1:{server.server_address[1]}/predict"
        if llm:  # a copy with the last node enabled, pointed at llama.cpp's server
            del nodes[4]["disabled"]
            nodes[4]["parameters"]["url"] = request.getfixturevalue("code_writing_endpoint") + "/v1/chat/completions"
        values = {"repo": str(repo.path), "num_candidates": 2, "test_failures": "FAILED tests/test_parse.py"}
        for field in nodes[1]["parameters"]["assignments"]["assignments"]:
            field["value"] = values.get(field["name"], field["value"])
        execution = run_in_n8n(version, workflow, token, tmp_path, timeout=300)
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
        answer = runs[nodes[4]["name"]][0]["data"]["main"][0][0]["json"]
        if not llm:  # the disabled LLM node passes its input through: nothing was sent anywhere
            assert answer == prompt
            return
        # llama.cpp's server answered the request n8n built: a chat completion over the whole step-4 prompt
        assert answer["object"] == "chat.completion" and len(answer["choices"]) == 1
        choice = answer["choices"][0]
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
        assert answer["usage"]["prompt_tokens"] > len(tokenizer(prompt["prompt"])["input_ids"])
        assert answer["usage"]["completion_tokens"] >= 1
    finally:
        server.shutdown()
        server.server_close()
