"""The agent as a process under hostile conditions: reloads that cannot be applied, descriptor
exhaustion and slowloris clients on the HTTP server, and URL passwords in errors and logs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess
from tests.support import free_port, hostwatch_command

pytestmark = pytest.mark.e2e


def reloads(agent: AgentProcess, result: str) -> float:
    return agent.metric(f'hostwatch_config_reloads_total{{result="{result}"}}')


def sighup(agent: AgentProcess, result: str) -> None:
    """Send SIGHUP and wait until the reload counter for ``result`` has moved."""
    before = reloads(agent, result)
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait(lambda: reloads(agent, result) > before, 15, f"a reload counted as {result}")


def newest_sample_time(vm, series: str) -> float:
    """The time (seconds) of the newest raw sample of ``series`` in VictoriaMetrics, 0 when none."""
    vm.force_flush()
    query = urllib.parse.urlencode({"match[]": series})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{query}", timeout=10) as resp:
        rows = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    return max((t / 1000 for row in rows for t in row["timestamps"]), default=0.0)


# ------------------------------------------------------------------ item 3: all-or-nothing reloads


def test_reload_that_cannot_start_an_output_keeps_the_old_one_delivering(victoria_metrics, tmp_path) -> None:
    output = f"""
[[outputs.remote_write]]
url = "{victoria_metrics.remote_write_url}"
flush_interval = "200ms"
"""
    agent = AgentProcess(tmp_path, '[[collectors.memory]]\ninterval = "200ms"\n' + output)
    try:
        agent.start()
        agent.wait(lambda: newest_sample_time(victoria_metrics, "node_memory_MemTotal_bytes") > 0, 15, "delivery")
        # `check` accepts this (the CA file exists; it is only loaded when the output starts),
        # the apply fails
        bad_ca = tmp_path / "not-a-ca.pem"
        bad_ca.write_text("this is not a certificate\n")
        broken = output + f'tls_ca = "{bad_ca}"\n'
        agent.config.write_text(agent.config.read_text().replace(output, broken))
        check = subprocess.run([*hostwatch_command(), "check", "--config", str(agent.config)], capture_output=True)
        assert check.returncode == 0, check.stderr
        sighup(agent, "failure")
        reloaded_at = time.time()

        assert agent.get("/ready")[0] == 200
        detailed = agent.detailed()
        assert list(detailed["outputs"]) == ["remote_write"]
        assert detailed["last_reload"]["result"] == "failure"
        assert "remote_write" in detailed["last_reload"]["error"]
        assert agent.metric("hostwatch_config_last_reload_successful") == 0
        # the old instance still delivers to the real backend
        sent = agent.metric('hostwatch_output_sent_items_total{output="remote_write",signal="metrics"}')
        agent.wait(
            lambda: newest_sample_time(victoria_metrics, "node_memory_MemTotal_bytes") > reloaded_at + 0.5,
            15,
            "samples newer than the failed reload",
        )
        assert agent.metric('hostwatch_output_sent_items_total{output="remote_write",signal="metrics"}') > sent
        assert "reload failed, the running configuration stays" in agent.log_tail(20000)

        # a missing secret file fails the same way (`check` may also catch this one)
        agent.config.write_text(
            agent.config.read_text().replace(
                broken, output + f'basic_auth_user = "u"\nbasic_auth_password_file = "{tmp_path / "missing"}"\n'
            )
        )
        sighup(agent, "failure")
        assert list(agent.detailed()["outputs"]) == ["remote_write"]
        assert agent.get("/ready")[0] == 200

        # once the file exists the config applies
        (tmp_path / "missing").write_text("pw\n")
        sighup(agent, "success")
        assert agent.detailed()["last_reload"]["result"] == "success"
        assert list(agent.detailed()["outputs"]) == ["remote_write"]
    finally:
        agent.close()


def test_reload_to_a_busy_port_keeps_the_old_server(tmp_path) -> None:
    agent = AgentProcess(tmp_path, '[[collectors.memory]]\ninterval = "1s"\n')
    busy = socket.socket()
    try:
        agent.start()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        old_listen = f"127.0.0.1:{agent.port}"
        agent.config.write_text(agent.config.read_text().replace(old_listen, f"127.0.0.1:{busy_port}"))
        sighup(agent, "failure")  # read over the old port: it must still answer
        assert agent.get("/health")[0] == 200
        assert agent.get("/ready")[0] == 200
        assert f"127.0.0.1:{busy_port}" in agent.detailed()["last_reload"]["error"]

        # a free port: the server moves, the old port is closed
        new_port = free_port()
        agent.config.write_text(agent.config.read_text().replace(f"127.0.0.1:{busy_port}", f"127.0.0.1:{new_port}"))
        agent.proc.send_signal(signal.SIGHUP)
        old_base, agent.base = agent.base, f"http://127.0.0.1:{new_port}"
        agent.wait(lambda: agent.get("/health")[0] == 200, 15, "the server on the new port")
        with pytest.raises(OSError):
            urllib.request.urlopen(old_base + "/health", timeout=2)
    finally:
        busy.close()
        agent.close()


# ------------------------------------------------------------------ item 9: descriptors, slow clients


def test_1100_idle_connections_neither_exhaust_descriptors_nor_block_health(tmp_path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    agent = AgentProcess(
        tmp_path,
        f'[[collectors.logs]]\npaths = ["{logs}/*.log"]\nglob_interval = "200ms"\n',
    )
    idle: list[socket.socket] = []
    try:
        agent.start(nofile=1024)  # systemd's default soft limit when the unit sets none
        for _ in range(1100):
            conn = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
            idle.append(conn)
        time.sleep(0.5)  # let the agent accept them all
        assert agent.get("/health", timeout=5)[0] == 200
        # a collector that opens files still can: a new log file is found and read
        (logs / "app.log").write_text("".join(f"line {i}\n" for i in range(100)))
        agent.wait(lambda: agent.metric("hostwatch_log_lines_read_total") >= 100, 15, "the new file's lines")
        assert agent.metric('hostwatch_log_file_errors_total{reason="open"}') == 0
        assert agent.metric("hostwatch_http_connections") <= 128
        assert agent.metric('hostwatch_http_connections_closed_total{reason="limit"}') >= 1100 - 128
        assert sum(1 for _ in Path(f"/proc/{agent.proc.pid}/fd").iterdir()) < 300
    finally:
        for conn in idle:
            conn.close()
        agent.close()


def test_a_slowloris_client_is_cut_after_the_head_timeout(tmp_path) -> None:
    agent = AgentProcess(tmp_path, '[[collectors.memory]]\ninterval = "1s"\n')
    try:
        agent.start()
        conn = socket.create_connection(("127.0.0.1", agent.port), timeout=1)
        started = time.monotonic()
        head = b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 100
        cut_after = None
        for byte in head:  # one byte a second, never the blank line that ends the head
            try:
                conn.sendall(bytes([byte]))
                if conn.recv(1) == b"":
                    cut_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass  # nothing to read: still connected
            except OSError:
                cut_after = time.monotonic() - started
                break
            if time.monotonic() - started > 25:
                break
        conn.close()
        assert cut_after is not None, "the slow client was still connected after 25 s"
        assert 9 <= cut_after <= 13, cut_after  # HEAD_TIMEOUT is 10 s
        assert agent.metric('hostwatch_http_connections_closed_total{reason="head_timeout"}') == 1
        assert agent.get("/health")[0] == 200
    finally:
        agent.close()


# ------------------------------------------------------------------ item 13: URL passwords


def test_url_passwords_never_show_in_health_ready_logs_or_check(tmp_path) -> None:
    closed = free_port()

    def output(url: str) -> str:
        return f'[[outputs.remote_write]]\nurl = "{url}"\nflush_interval = "100ms"\ntimeout = "1s"\n'

    first = output(f"http://admin:s3cr3t@127.0.0.1:{closed}/api/v1/write")
    agent = AgentProcess(tmp_path, '[[collectors.memory]]\ninterval = "200ms"\n' + first)
    # the backend never answers: do not wait 10 s for it at the end
    agent.config.write_text(agent.config.read_text().replace("[http]", 'shutdown_timeout = "1s"\n[http]', 1))
    try:
        agent.start(wait_ready=False)
        agent.wait(agent.failing, 20, "/ready failing on the closed port")
        ready = agent.get("/ready")[1]
        detailed = agent.get("/health/detailed")[1]
        for text in (ready, detailed, agent.log_tail(100000)):
            assert "s3cr3t" not in text

        # a reload to a config that fails validation and quotes a URL with a new password
        rejected = output(f"ftp://admin:n3wpass@127.0.0.1:{closed}/api/v1/write")
        agent.config.write_text(agent.config.read_text().replace(first, rejected))
        check = subprocess.run(
            [*hostwatch_command(), "check", "--config", str(agent.config)], capture_output=True, text=True
        )
        assert check.returncode == 2
        assert "ftp://admin:***@" in check.stderr
        assert "n3wpass" not in check.stdout + check.stderr
        sighup(agent, "failure")
        assert "ftp://admin:***@" in agent.log_tail(100000)

        # a reload to a good config with another password: masked in the log and in every report
        second = output(f"http://admin:an0th3r@127.0.0.1:{closed}/api/v1/write")
        agent.config.write_text(agent.config.read_text().replace(rejected, second))
        sighup(agent, "success")
        time.sleep(1.5)  # a few failed attempts with the new URL
        texts = (agent.get("/ready")[1], agent.get("/health/detailed")[1], agent.get("/metrics")[1])
        agent.stop()
        for text in (*texts, agent.log_tail(1_000_000)):
            for password in ("s3cr3t", "n3wpass", "an0th3r"):
                assert password not in text
    finally:
        agent.close()
