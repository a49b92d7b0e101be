"""The agent as a real process: readiness, endpoints, SIGHUP reloads, SIGTERM, and the CLI's exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import free_port, hostwatch_command

pytestmark = pytest.mark.e2e


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting for the agent")


def metric_value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


CONFIG = """
[agent]
interval = "1s"
state_dir = "{state}"
labels = {{ env = "{env}" }}
[http]
listen = "127.0.0.1:{port}"
[[collectors.cpu]]
[[collectors.memory]]
"""


@pytest.fixture
def agent(tmp_path):
    port = free_port()
    config = tmp_path / "hostwatch.toml"
    config.write_text(CONFIG.format(port=port, state=tmp_path / "state", env="test"))
    stderr = open(tmp_path / "stderr.log", "w+b")  # noqa: SIM115 - closed below
    started = time.monotonic()
    proc = subprocess.Popen([*hostwatch_command(), "run", "--config", str(config)], stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get(base + "/ready")[0] == 200)
        ready_after = time.monotonic() - started
        yield proc, base, config, port, ready_after, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()


def test_serves_every_endpoint_then_stops_cleanly_on_sigterm(agent) -> None:
    proc, base, _config, _port, ready_after, tmp_path = agent
    print(f"start to /ready: {ready_after:.3f}s (includes interpreter start-up)")
    assert get(base + "/health") == (200, '{"status": "alive"}')
    assert get(base + "/live")[0] == 200
    assert json.loads(get(base + "/ready")[1]) == {"status": "ready"}

    detailed = wait_until(
        lambda: (d := json.loads(get(base + "/health/detailed")[1]))["collectors"]["cpu"]["runs"] and d
    )
    assert set(detailed["collectors"]) == {"cpu", "memory"}
    assert detailed["version"] and detailed["uptime_seconds"] > 0
    assert detailed["collectors"]["memory"]["last_error"] is None

    status, text = get(base + "/metrics")
    assert status == 200
    assert 'node_cpu_seconds_total{cpu="0",env="test",mode="idle"}' in text
    assert metric_value(text, 'node_memory_MemTotal_bytes{env="test"}') > 0
    assert "hostwatch_build_info{" in text
    assert metric_value(text, 'hostwatch_collector_runs_total{collector="cpu"}') >= 1
    assert "process_resident_memory_bytes" in text

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    log = (tmp_path / "stderr.log").read_text()
    assert '"msg": "stopped"' in log  # JSON lines when stderr is not a terminal


def test_sighup_applies_a_good_config_and_rejects_a_broken_one(agent) -> None:
    proc, base, config, port, _ready_after, tmp_path = agent
    config.write_text(CONFIG.format(port=port, state=tmp_path / "state", env="reloaded"))
    proc.send_signal(signal.SIGHUP)
    text = wait_until(lambda: (t := get(base + "/metrics")[1]) and 'env="reloaded"' in t and t)
    assert metric_value(text, 'hostwatch_config_reloads_total{result="success"}') == 1

    config.write_text(CONFIG.format(port=port, state=tmp_path / "state", env="broken") + "\n[agent2]\n")
    proc.send_signal(signal.SIGHUP)
    text = wait_until(
        lambda: (
            (t := get(base + "/metrics")[1])
            and metric_value(t, 'hostwatch_config_reloads_total{result="failure"}') == 1
            and t
        )
    )
    assert metric_value(text, "hostwatch_config_last_reload_successful") == 0
    assert get(base + "/ready")[0] == 200, "the old configuration keeps running"
    time.sleep(1.2)
    assert 'env="reloaded"' in get(base + "/metrics")[1]
    assert proc.poll() is None
    log = (tmp_path / "stderr.log").read_text()
    assert "agent2: unknown key" in log

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


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
