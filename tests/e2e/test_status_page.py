"""The status page and ``hostwatch status`` against the agent as a process, shipping to a real Prometheus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess
from tests.support import free_port, hostwatch_command

pytestmark = pytest.mark.e2e

SECRET = "hunter22-status"
HOSTILE_NAME = 'x<img src=y onerror="alert(1)">.log'


def status_agent(tmp_path: Path, remote_write_url: str, *, threshold: int = 1000) -> AgentProcess:
    """Host collectors every 0.5 s, one tailed log file with a hostile name, an output that delivers
    and one that cannot (its URL holds a password the page must not show)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / HOSTILE_NAME).write_text("".join(f"line {i}\n" for i in range(100)))
    body = f"""
[[collectors.cpu]]
[[collectors.memory]]
[[collectors.disk]]
[[collectors.network]]
[[collectors.logs]]
paths = ["{logs}/*.log"]
start_at = "beginning"
[[outputs.remote_write]]
alias = "prometheus"
url = "{remote_write_url}"
flush_interval = "500ms"
[[outputs.remote_write]]
alias = "unreachable"
url = "http://user:{SECRET}@127.0.0.1:{free_port()}/api/v1/write"
ready_failure_threshold = {threshold}
"""
    return AgentProcess(tmp_path, body, agent_table='interval = "500ms"')


def wait_for_history(agent: AgentProcess, points: int = 4) -> dict:
    def enough():
        document = json.loads(agent.get("/status.json")[1])
        charts = document["charts"]
        outputs = {o["name"]: o for o in document["outputs"]}
        full = all(len(charts[name]["data"][0]) >= points for name in charts)
        sent = outputs.get("prometheus", {}).get("history", {}).get("data", [[], []])[1]
        return document if full and any(sent) and document["log_files"] else None

    return agent.wait(enough, 30, f"{points} points in every chart and a sending output")


def status_cli(*args: str, env: dict | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*hostwatch_command(), "status", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_status_json_page_and_cli_show_the_running_agent(tmp_path: Path, prometheus) -> None:
    agent = status_agent(tmp_path, prometheus.remote_write_url).start()
    try:
        document = wait_for_history(agent)
        assert document["status"] == "ready"
        cpu = document["charts"]["cpu"]
        assert all(0 <= v <= 100 for series in cpu["data"][1:] for v in series if v is not None)
        assert document["charts"]["memory"]["data"][1][-1] > 0  # used memory
        outputs = {o["name"]: o for o in document["outputs"]}
        assert outputs["prometheus"]["sent_items"] > 0 and outputs["prometheus"]["last_error"] is None
        assert outputs["unreachable"]["last_error"] and outputs["unreachable"]["queued_items"] > 0
        (log_file,) = document["log_files"]
        assert log_file["path"].endswith(HOSTILE_NAME)
        assert log_file["size_bytes"] == log_file["offset"] == 790 and log_file["behind_bytes"] == 0
        assert {c["name"] for c in document["collectors"]} == {"cpu", "memory", "disk", "network", "logs"}

        code, page = agent.get("/")
        assert code == 200 and "static/status.js" in page
        for path in ("/", "/status.json", "/health/detailed"):
            assert SECRET not in agent.get(path)[1], path

        plain = status_cli("--config", str(agent.config))
        assert plain.returncode == 0, plain.stderr
        assert "READY" in plain.stdout and "\x1b" not in plain.stdout  # not a terminal: no colour
        assert "prometheus" in plain.stdout and "unreachable" in plain.stdout
        assert HOSTILE_NAME in plain.stdout and SECRET not in plain.stdout

        raw = status_cli("--url", agent.base, "--json")
        assert raw.returncode == 0 and json.loads(raw.stdout)["hostname"] == document["hostname"]

        # --watch: one report per period until Ctrl-C, then the last report's exit code
        watch = subprocess.Popen(
            [*hostwatch_command(), "status", "--url", agent.base, "--watch", "0.3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=10)
        assert watch.returncode == 0, err
        assert out.count("OUTPUTS") >= 3 and "Ctrl-C to stop" in out
    finally:
        agent.stop()


def test_status_cli_exits_non_zero_when_the_agent_is_not_ready_or_gone(tmp_path: Path) -> None:
    # the only output can never deliver, and one failed attempt makes the agent not ready
    agent = status_agent(tmp_path, f"http://127.0.0.1:{free_port()}/api/v1/write", threshold=1).start(wait_ready=False)
    try:
        agent.wait(agent.failing, 20, "not ready: the output failing")
        result = status_cli("--config", str(agent.config))
        assert result.returncode == 3, result.stdout + result.stderr
        assert "NOT READY" in result.stdout and SECRET not in result.stdout
    finally:
        agent.stop()
    gone = status_cli("--config", str(agent.config))
    assert gone.returncode == 1 and "cannot reach the agent" in gone.stderr
