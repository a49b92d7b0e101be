"""The agent as a real process: readiness, endpoints, SIGHUP reloads, SIGTERM, and the CLI's exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess
from tests.support import hostwatch_command

pytestmark = pytest.mark.e2e


COLLECTORS = """
[[collectors.cpu]]
[[collectors.memory]]
"""


def agent_table(env: str) -> str:
    return f'interval = "1s"\nlabels = {{ env = "{env}" }}'


def metric_value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def agent(tmp_path):
    agent = AgentProcess(tmp_path, COLLECTORS, agent_table=agent_table("test"))
    try:
        yield agent.start(timeout=10)
    finally:
        agent.close()


def test_serves_every_endpoint_then_stops_cleanly_on_sigterm(agent: AgentProcess) -> None:
    print(f"start to /ready: {agent.ready_after:.3f}s (includes interpreter start-up)")
    assert agent.get("/health") == (200, '{"status": "alive"}')
    assert agent.get("/live")[0] == 200
    assert json.loads(agent.get("/ready")[1]) == {"status": "ready"}

    # last_success, not runs: a run is counted when it starts, and its samples are published when it ends
    def published(details: dict) -> bool:
        return all(details["collectors"][name]["last_success"] for name in ("cpu", "memory"))

    detailed = agent.wait(lambda: published(d := agent.detailed()) and d, 10)
    assert set(detailed["collectors"]) == {"cpu", "memory"}
    assert detailed["version"] and detailed["uptime_seconds"] > 0
    assert detailed["collectors"]["memory"]["last_error"] is None

    status, text = agent.get("/metrics")
    assert status == 200
    assert 'node_cpu_seconds_total{cpu="0",env="test",mode="idle"}' in text
    assert metric_value(text, 'node_memory_MemTotal_bytes{env="test"}') > 0
    assert "hostwatch_build_info{" in text
    assert metric_value(text, 'hostwatch_collector_runs_total{collector="cpu"}') >= 1
    assert "process_resident_memory_bytes" in text

    assert agent.stop(timeout=10) == 0
    assert '"msg": "stopped"' in agent.stderr()  # JSON lines when stderr is not a terminal


def test_sighup_applies_a_good_config_and_rejects_a_broken_one(agent: AgentProcess) -> None:
    agent.configure(COLLECTORS, agent_table("reloaded"))
    agent.proc.send_signal(signal.SIGHUP)
    text = agent.wait(lambda: (t := agent.metrics()) and 'env="reloaded"' in t and t, 10)
    assert metric_value(text, 'hostwatch_config_reloads_total{result="success"}') == 1

    agent.configure(COLLECTORS + "\n[agent2]\n", agent_table("broken"))
    agent.proc.send_signal(signal.SIGHUP)
    text = agent.wait(
        lambda: (
            (t := agent.metrics()) and metric_value(t, 'hostwatch_config_reloads_total{result="failure"}') == 1 and t
        ),
        10,
    )
    assert metric_value(text, "hostwatch_config_last_reload_successful") == 0
    assert agent.get("/ready")[0] == 200, "the old configuration keeps running"
    time.sleep(1.2)
    assert 'env="reloaded"' in agent.metrics()
    assert agent.proc.poll() is None
    assert "agent2: unknown key" in agent.stderr()

    assert agent.stop(timeout=10) == 0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*hostwatch_command(), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[[collectors.cpu]]\n")
    result = run_cli("check", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert "configuration OK: 1 collector(s)" in result.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nintervall = '1s'\n[[collectors.cpu]]\ninterval = 'often'\n[[outputs.nope]]\n")
    result = run_cli("check", "--config", str(bad))
    assert result.returncode == 2
    assert "agent.intervall: unknown key; did you mean interval?" in result.stderr
    assert "collectors.cpu[0].interval: invalid duration 'often'" in result.stderr
    assert "outputs.nope: unknown output" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("check", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "no such config file" in result.stderr
    result = run_cli("check", env={"HOSTWATCH_CONFIG": str(bad)})
    assert result.returncode == 2


def test_once_prints_one_round(tmp_path: Path) -> None:
    config = tmp_path / "once.toml"
    config.write_text("[[collectors.memory]]\n[[collectors.cpu]]\n")
    result = run_cli("once", "--config", str(config), "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    names = {row["name"] for row in rows}
    assert {"node_memory_MemTotal_bytes", "node_cpu_seconds_total", "node_load1"} <= names
    assert {row["collector"] for row in rows} == {"memory", "cpu"}

    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0
    assert "# TYPE node_cpu_seconds_total counter" in result.stdout


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.startswith("hostwatch ")


def test_port_in_use_is_a_runtime_failure(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "busy.toml"
        config.write_text(f"[agent]\nstate_dir = '{tmp_path}'\n[http]\nlisten = '127.0.0.1:{port}'\n")
        result = run_cli("run", "--config", str(config))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
