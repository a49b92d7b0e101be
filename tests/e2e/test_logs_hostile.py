"""Log tailing in a hostile environment, end to end: a catastrophic multiline pattern, a corrupt
checkpoint, planted symlinks. The agent runs as a process and ships into a real VictoriaLogs."""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess
from tests.e2e.test_logs_rotation import logs_agent, wait_rows

pytestmark = [pytest.mark.e2e, pytest.mark.peers]

FORTY_WORDS = " ".join(f"word{i}" for i in range(40))


def messages(vl, limit: int = 10_000) -> collections.Counter:
    return collections.Counter(row.get("_msg", "") for row in vl.query("* | fields _msg", limit=limit))


def health_time(agent: AgentProcess) -> float:
    started = time.monotonic()
    assert agent.get("/health", timeout=5)[0] == 200
    return time.monotonic() - started


def test_a_catastrophic_multiline_pattern_leaves_the_agent_healthy(tmp_path: Path, victoria_logs) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    app = logs / "app.log"
    app.write_text("")
    collector = f"""
[[collectors.logs]]
paths = ["{app}"]
start_at = "beginning"  # the lines may be there before the first scan
multiline.start_pattern = '^(\\w+\\s?)+:'
multiline.flush_timeout = "300ms"
"""
    agent = logs_agent(tmp_path, collector, victoria_logs.loki_push_url)
    agent.start()
    try:
        with open(app, "a") as f:  # with Python's re, the first of these lines froze the process for good
            for i in range(20):
                f.write(f"record{i}: starts here\n{FORTY_WORDS}\n")
        for _ in range(10):
            assert health_time(agent) < 5
            time.sleep(0.2)
        wait_rows(victoria_logs, 20, timeout=30)
        got = messages(victoria_logs)
        assert got == collections.Counter({f"record{i}: starts here\n{FORTY_WORDS}": 1 for i in range(20)})
    finally:
        code = agent.stop()
    assert code == 0, "SIGTERM is obeyed"


def test_lines_written_while_down_arrive_after_a_corrupt_checkpoint(tmp_path: Path, victoria_logs) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    app = logs / "app.log"
    app.write_text("")
    collector = f"""
[[collectors.logs]]
paths = ["{logs / "*.log"}"]
start_at = "end"
"""
    agent = logs_agent(tmp_path, collector, victoria_logs.loki_push_url)
    agent.start()
    deadline = time.monotonic() + 15
    while 'hostwatch_log_files{collector="logs"} 1.0' not in agent.metrics():  # the first scan
        assert time.monotonic() < deadline, "the file was never opened"
        time.sleep(0.1)
    with open(app, "a") as f:
        f.write("".join(f"before {i}\n" for i in range(100)))
    wait_rows(victoria_logs, 100, timeout=30, settle=1.0)
    assert agent.stop() == 0
    with open(app, "a") as f:
        f.write("".join(f"while down {i}\n" for i in range(100)))
    checkpoints = agent.state_dir / "collectors" / "logs" / "checkpoints.json"
    json.loads(checkpoints.read_text())  # a real one was written
    checkpoints.write_bytes(checkpoints.read_bytes()[:25])  # torn

    agent.start()
    try:
        wait_rows(victoria_logs, 300, timeout=30)
        got = messages(victoria_logs)
        metrics = agent.metrics()
    finally:
        agent.stop()
    lost = [f"while down {i}" for i in range(100) if not got[f"while down {i}"]]
    assert lost == [], f"{len(lost)} lines written while the agent was down are missing"
    assert all(got[f"before {i}"] == 2 for i in range(100)), "read again from the start: duplicates, not loss"
    assert "hostwatch_log_checkpoint_corrupt_total 1.0" in metrics


def test_planted_symlinks_and_a_fifo_ship_nothing(tmp_path: Path, victoria_logs) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    token = tmp_path / "token"
    token.write_text("e2e-bearer-token-0123456789\n")
    (logs / "environ.log").symlink_to("/proc/self/environ")
    (logs / "token.log").symlink_to(token)
    (logs / "shadow.log").symlink_to("/etc/shadow")
    os.mkfifo(logs / "pipe.log")
    (logs / "app.log").write_text("the real log\n")
    collector = f"""
[[collectors.logs]]
paths = ["{logs / "*.log"}"]
start_at = "beginning"
"""
    agent = logs_agent(tmp_path, collector, victoria_logs.loki_push_url, extra=f'bearer_token_file = "{token}"')
    agent.start()
    try:
        wait_rows(victoria_logs, 1, timeout=30, settle=2.0)
        got = messages(victoria_logs)
        metrics = agent.metrics()
    finally:
        agent.stop()
    assert got == collections.Counter({"the real log": 1})
    for reason, count in (("system", 1), ("secret", 1), ("symlink_outside", 1), ("not_regular", 1)):
        assert f'hostwatch_log_files_refused_total{{reason="{reason}"}} {count:.1f}' in metrics, reason
