"""A private rabbitmq-server (Debian's) with the management and prometheus plugins, once per test session.

The broker runs from the package's scripts with everything of its own in a temp
directory: node name, AMQP, distribution and management ports (free loopback
ports), mnesia, logs, enabled-plugins file and Erlang cookie (``HOME``). Only epmd
(port 4369) is shared with any other Erlang node on the machine. Statistics are
emitted every 500 ms so tests see new numbers quickly. Tests share the broker,
so each creates its own vhosts (``broker.new_vhost()``).

Skips with a reason when the binary is missing, fails instead when
``HOSTWATCH_REQUIRE_PEERS`` is set (CI).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the package's own script; /usr/sbin's wraps it in su
START_TIMEOUT = 60.0
USER, PASSWORD = "hostwatch", "test-pass-9f3"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.amqp_port, self.http_port, dist_port = _free_port(), _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.prometheus_port = _free_port()  # rabbitmq_prometheus' /metrics, a scrape target
        self.user, self.password = USER, PASSWORD
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.http_port}\n"
            f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {self.prometheus_port}\n"
            f"default_user = {USER}\ndefault_pass = {PASSWORD}\ndefault_user_tags.administrator = true\n"
            "loopback_users = none\ncollect_statistics_interval = 500\n"
            "log.console = false\nlog.file.level = warning\n"
        )
        (workdir / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env |= {
            "HOME": str(workdir),  # the Erlang cookie goes here, not into root's home
            "RABBITMQ_CONF_ENV_FILE": "/dev/null",
            "RABBITMQ_NODENAME": f"hostwatch-test-{uuid.uuid4().hex[:8]}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
        }
        self._log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        # A session of its own: stop() signals the script and the Erlang VM together.
        self.process = subprocess.Popen(
            [SERVER],
            env=env,
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self) -> float:
        started = time.monotonic()
        while time.monotonic() - started < START_TIMEOUT:
            if self.process.poll() is not None:
                break
            try:
                self.api("GET", "/api/overview")
                return time.monotonic() - started
            except (OSError, ValueError):
                time.sleep(0.2)
        self.stop()
        tail = (self.workdir / "server.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"rabbitmq-server did not serve its management API within {START_TIMEOUT:.0f} s:\n{tail}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()

    def api(self, method: str, path: str, body: object = None) -> object:
        request = urllib.request.Request(self.url + path, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, data, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    def new_vhost(self, prefix: str = "test") -> str:
        """A fresh vhost with full permissions for the test user."""
        vhost = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.api("PUT", f"/api/vhosts/{quote(vhost, safe='')}")
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        self.api("PUT", f"/api/permissions/{quote(vhost, safe='')}/{USER}", permissions)
        return vhost

    def declare(self, vhost: str, queue: str, **arguments: object) -> None:
        path = f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}"
        self.api("PUT", path, {"durable": False, "auto_delete": False, "arguments": arguments})

    def publish(self, vhost: str, queue: str, count: int, timestamp: int | None = None) -> None:
        """``count`` messages through the default exchange; ``timestamp`` sets their AMQP timestamp property."""
        properties = {} if timestamp is None else {"timestamp": timestamp}
        body = {"properties": properties, "routing_key": queue, "payload": "x", "payload_encoding": "string"}
        for _ in range(count):
            reply = self.api("POST", f"/api/exchanges/{quote(vhost, safe='')}/amq.default/publish", body)
            assert reply == {"routed": True}, reply


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The session's broker (started on first use, about 7 s)."""
    if not os.path.exists(SERVER) or shutil.which("erl") is None:
        reason = "rabbitmq-server is not installed (Debian package rabbitmq-server)"
        if os.environ.get("HOSTWATCH_REQUIRE_PEERS"):
            pytest.fail(reason)
        pytest.skip(reason)
    broker = Broker(tmp_path_factory.mktemp("rabbitmq"))
    broker.wait_ready()
    yield broker
    broker.stop()


@pytest.fixture
def amqp_consumer(rabbitmq: Broker) -> Iterator:
    """``amqp_consumer(vhost, queue, prefetch)``: a consumer that takes ``prefetch`` messages and never acks them.

    The messages stay unacknowledged until the test ends and the connection closes.
    """
    pika = pytest.importorskip("pika", reason="pika (test dependency) is needed for a consumer that does not ack")
    connections = []

    def consume(vhost: str, queue: str, prefetch: int) -> None:
        credentials = pika.PlainCredentials(rabbitmq.user, rabbitmq.password)
        params = pika.ConnectionParameters(
            host="127.0.0.1", port=rabbitmq.amqp_port, virtual_host=vhost, credentials=credentials, heartbeat=0
        )
        connection = pika.BlockingConnection(params)
        connections.append(connection)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        channel.basic_consume(queue, lambda *_: None, auto_ack=False)
        connection.process_data_events(time_limit=0.2)  # let the deliveries arrive

    yield consume
    for connection in connections:
        if connection.is_open:
            connection.close()
