"""A real prometheus-node-exporter on a free loopback port: the naming and value reference.

``node_exporter_factory(collectors)`` starts one with ``--collector.disable-defaults``
plus exactly ``collectors`` and returns its ``/metrics`` URL; one process per
distinct list is started per session and stopped at its end. ``node_exporter``
is that URL for the host collectors hostwatch mirrors (or for the list given
with indirect parametrisation). Both skip when the binary is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence

import pytest

HOST_COLLECTORS = (
    "cpu",
    "loadavg",
    "stat",
    "meminfo",
    "vmstat",
    "filesystem",
    "diskstats",
    "netdev",
    "netstat",
    "sockstat",
)
BINARIES = ("prometheus-node-exporter", "node_exporter")
START_TIMEOUT = 10.0


def _binary() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(binary: str, collectors: Sequence[str], extra: Sequence[str]) -> tuple[subprocess.Popen, str]:
    """Start and wait until /metrics answers; a port taken in the meantime gets another try."""
    problem = ""
    for _ in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        args = [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.disable-exporter-metrics",
            "--collector.disable-defaults",
            *(f"--collector.{name}" for name in collectors),
            *extra,
        ]
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if _wait_ready(proc, url):
                return proc, url
            _stop(proc)
            log.seek(0)
            problem = log.read().decode(errors="replace")[-2000:]
        if "address already in use" not in problem:
            break
    raise RuntimeError(f"node_exporter did not start ({' '.join(args)}):\n{problem}")


def _wait_ready(proc: subprocess.Popen, url: str) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def node_exporter_factory() -> Iterator[Callable[..., str]]:
    """``start(collectors, *extra_args) -> url``; the same arguments return the same process."""
    binary = os.environ.get("HOSTWATCH_NODE_EXPORTER") or _binary()
    if not binary:
        why = "prometheus-node-exporter is not installed (run tests/peers/install.sh)"
        if os.environ.get("HOSTWATCH_REQUIRE_PEERS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    running: dict[tuple[str, ...], tuple[subprocess.Popen, str]] = {}

    def start(collectors: Sequence[str] = HOST_COLLECTORS, *extra: str) -> str:
        key = (*collectors, "--", *extra)
        if key not in running or running[key][0].poll() is not None:
            running[key] = _start(binary, collectors, extra)
        return running[key][1]

    try:
        yield start
    finally:
        for proc, _ in running.values():
            _stop(proc)


@pytest.fixture
def node_exporter(request: pytest.FixtureRequest, node_exporter_factory: Callable[..., str]) -> str:
    """URL of a node_exporter running the collectors in ``request.param`` (default: HOST_COLLECTORS)."""
    return node_exporter_factory(tuple(getattr(request, "param", HOST_COLLECTORS)))


def scrape(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()
