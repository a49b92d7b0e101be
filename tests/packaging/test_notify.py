"""The agent's side of systemd's notify protocol, against a socket standing in for systemd.

What ``Type=notify`` and ``WatchdogSec=`` in systemd/hostwatch.service rely on, checked on any
machine: READY=1 only once /ready answers 200, STATUS= text, WATCHDOG=1 at half the period
from the event loop, RELOADING=1 (with MONOTONIC_USEC) then READY=1 on SIGHUP, STOPPING=1 on
SIGTERM. The booted-systemd version of these checks is test_deb_nspawn.py.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import free_port, hostwatch_command

pytestmark = pytest.mark.e2e


class NotifySocket:
    """A datagram socket like systemd's ``$NOTIFY_SOCKET``; every message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, dict[str, str]]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields and key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout}s; got {[m for _, m in self.messages]}")

    def close(self) -> None:
        self.sock.close()


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def notified_agent(tmp_path: Path):
    port = free_port()
    config = tmp_path / "hostwatch.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\ninterval = "1s"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n[[collectors.cpu]]\n[[collectors.memory]]\n'
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    log = (tmp_path / "stderr.log").open("wb")
    proc = subprocess.Popen([*hostwatch_command(), "run", "--config", str(config)], env=env, stderr=log)
    try:
        yield proc, notify, f"http://127.0.0.1:{port}", config
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()
        notify.close()


def test_ready_status_watchdog_reload_and_stop(notified_agent) -> None:
    proc, notify, base, config = notified_agent

    ready = notify.wait_for("READY")
    # the agent sends READY=1 only after what /ready reports is true
    assert get(base + "/ready") == 200
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("running: 2 collectors, 0 outputs")

    # WATCHDOG=1 every half period (0.2 s of 0.4 s): about 5 in a second, none missing long
    start = time.monotonic()
    pings = []
    while time.monotonic() - start < 1.2:
        fields = notify.receive(0.5)
        if fields and fields.get("WATCHDOG") == "1":
            pings.append(time.monotonic())
    assert len(pings) >= 4, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 0.4, gaps

    # SIGHUP: RELOADING=1 with the monotonic time systemd asks for, then READY=1 again
    config.write_text(config.read_text() + "[[collectors.network]]\n")
    proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING")
    usec = int(reloading["MONOTONIC_USEC"])
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10
    again = notify.wait_for("READY")
    assert again["STATUS"] == "running"
    assert get(base + "/ready") == 200

    proc.send_signal(signal.SIGTERM)
    stopping = notify.wait_for("STOPPING")
    assert stopping["STOPPING"] == "1"
    assert proc.wait(30) == 0


def test_a_broken_config_exits_2_before_any_notification(tmp_path: Path) -> None:
    """What RestartPreventExitStatus=2 in the unit relies on: no READY, exit status 2."""
    config = tmp_path / "hostwatch.toml"
    config.write_text('[[outputs.loki]]\nurll = "http://127.0.0.1:1"\n')
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
        done = subprocess.run(
            [*hostwatch_command(), "run", "--config", str(config)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2
        assert "outputs.loki[0].urll: unknown key" in done.stderr
        assert notify.receive(0.2) is None
    finally:
        notify.close()
