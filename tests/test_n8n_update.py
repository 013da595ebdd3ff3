"""The scheduled-update workflow (integrations/n8n/update-workflow.json): its shape against serve.py's routes
and settings, and a real run in n8n against a real serve.py with updates on, over a tiny project with new
commits: manual trigger -> POST /update (bearer token) -> poll GET /update -> report; then the service
serves the updated model without a restart.

The real run needs n8n, like tests/test_n8n.py (whose runner and versions it reuses): on the current n8n with
its defaults and on the last 1.x, each skipped where that version is not installed, unless
REPO2MODEL_REQUIRE_N8N=1. The token reaches n8n only as the credential the workflow names, never through
n8n's environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from repo2model.stages import serve
from conftest import ROOT
from helpers_update import add_commits, build_base
from test_n8n import n8n_versions, run_in_n8n, uses_the_token_credential

WORKFLOW = ROOT / "integrations" / "n8n" / "update-workflow.json"
SCHEDULE, MANUAL, SET, HTTP, CODE, WAIT, IF = (
    "n8n-nodes-base.scheduleTrigger", "n8n-nodes-base.manualTrigger", "n8n-nodes-base.set",
    "n8n-nodes-base.httpRequest", "n8n-nodes-base.code", "n8n-nodes-base.wait", "n8n-nodes-base.if")


def load() -> dict:
    return json.loads(WORKFLOW.read_text(encoding="utf-8"))


def targets(workflow: dict, name: str) -> list[list[str]]:
    """The nodes each output of `name` leads to."""
    return [[t["node"] for t in output] for output in workflow["connections"].get(name, {}).get("main", [])]


def by_type(workflow: dict, kind: str) -> dict:
    (node,) = [n for n in workflow["nodes"] if n["type"] == kind]
    return node


def settings(workflow: dict) -> dict:
    node = by_type(workflow, SET)
    return {a["name"]: a for a in node["parameters"]["assignments"]["assignments"]}


def test_schedule_and_manual_trigger_start_the_update_then_poll_and_report():
    workflow = load()
    assert workflow["id"] and workflow["name"] and not workflow["active"]  # scheduled once the user activates it
    names = {node["name"]: node for node in workflow["nodes"]}
    assert len(names) == len(workflow["nodes"])
    schedule, manual, config = by_type(workflow, SCHEDULE), by_type(workflow, MANUAL), by_type(workflow, SET)
    (rule,) = schedule["parameters"]["rule"]["interval"]
    assert rule["field"] == "cronExpression" and len(rule["expression"].split()) == 5
    assert targets(workflow, schedule["name"]) == targets(workflow, manual["name"]) == [[config["name"]]]
    (start,) = targets(workflow, config["name"])[0]
    (check,) = targets(workflow, start)[0]
    (wait,) = targets(workflow, check)[0]
    (poll,) = targets(workflow, wait)[0]
    (branch,) = targets(workflow, poll)[0]
    again, done = targets(workflow, branch)
    assert [names[n]["type"] for n in (start, check, wait, poll, branch)] == [HTTP, CODE, WAIT, HTTP, IF]
    assert again == [wait] and [names[n]["type"] for n in done] == [CODE]  # running: wait again; else report

    cfg = serve.Config()
    values = settings(workflow)
    assert values["service_url"]["value"] == f"http://{cfg.host}:{cfg.port}"
    assert 0 < values["poll_seconds"]["value"] < 65  # shorter waits stay in n8n's process (no database round trip)
    post, get = names[start]["parameters"], names[poll]["parameters"]
    assert post["method"] == "POST" and post["url"].endswith("/update") and get["url"].endswith("/update")
    assert get.get("method", "GET") == "GET"
    assert uses_the_token_credential(names[start]) and uses_the_token_credential(names[poll])
    assert post["options"]["response"]["response"]["neverError"] is True  # 409/403 reach the check node
    condition = names[branch]["parameters"]["conditions"]["conditions"][0]
    assert condition["leftValue"] == "={{ $json.state }}" and condition["rightValue"] == "running"
    report = names[done[0]]["parameters"]["jsCode"]
    assert "log_tail" in report and "succeeded" in report and "throw new Error" in report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            return json.loads(reply.read())
    except OSError:
        return None


def wait_for(check, what: str, timeout: float, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert process.poll() is None, f"serve.py ended before {what}: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("version", n8n_versions())
def test_update_workflow_runs_in_real_n8n_against_serve(version, tmp_path):
    project = build_base(tmp_path / "project", "serve:\n  allow_update: true\n  reload_poll_s: 1.0\n")
    before = project.marker()
    add_commits(project.repo, 8, 40)
    port = free_port()
    token = "nightly-secret"
    n8n_env = {k: v for k, v in os.environ.items() if k != "REPO2MODEL_SERVE_TOKEN"}
    server = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--config", str(project.config),
                               "--port", str(port)], cwd=project.folder,
                              env={**n8n_env, "REPO2MODEL_SERVE_TOKEN": token},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        served = wait_for(lambda: health(port), "a running service", 600, server)
        assert served["model"]["trained_at"] == before["trained_at"] and served["update"]["enabled"] is True

        workflow = load()
        values = settings(workflow)
        values["service_url"]["value"] = f"http://127.0.0.1:{port}"
        values["poll_seconds"]["value"] = 2
        execution = run_in_n8n(version, workflow, token, tmp_path, timeout=900, env=n8n_env)
        runs = execution["data"]["resultData"]["runData"]
        report = runs["Report"][0]["data"]["main"][0][0]["json"]
        assert report["state"] == "succeeded" and report["exit_code"] == 0 and not report["nothing_new"]
        assert report["summary"].startswith("update: 8 new commits, 0 removed"), report
        assert len(runs["Update state"]) >= 2  # polled while the update ran, then reported (n8n's CLI starts
        assert {"Every night at 03:00", "When clicking 'Execute workflow'"} & set(runs)  # from either trigger)

        # The service follows: the new model folder is loaded without a restart.
        after = project.marker()
        assert after["warm_start"]["trained_at"] == before["trained_at"]
        served = wait_for(lambda: (h := health(port)) and h["model"]["trained_at"] == after["trained_at"] and h,
                          "the updated model in /health", 300, server)
        assert served["model"]["last_commit"] == after["last_commit"] and served["update"]["state"] == "succeeded"
    finally:
        server.terminate()
        server.wait(timeout=60)
