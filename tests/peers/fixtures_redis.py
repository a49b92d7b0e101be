"""A private redis-server (Debian's) per test, on a free loopback port.

``redis_server()`` starts one and returns a :class:`RedisServer`; ``stop()`` and
``start()`` take it away and bring it back on the same port (an outage between
scrapes). Everything started is stopped at teardown. Tests skip with a reason
when the binary is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI): ``(ca, cert, key)``."""

    def openssl(command: str, *args: str) -> None:
        subprocess.run(["openssl", *command.split(), *args], cwd=workdir, check=True, capture_output=True)

    (workdir / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    openssl("req -x509 -newkey rsa:2048 -nodes -days 2 -keyout ca.key -out ca.pem", "-subj", "/CN=hostwatch test CA")
    openssl("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr", "-subj", "/CN=127.0.0.1")
    sign = "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf"
    openssl(sign, "-out", "server.pem")
    return workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"


class RedisServer:
    def __init__(self, binary: str, workdir: Path, password: str | None = None, tls: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.tls = make_tls_files(workdir) if tls else None
        self.port = free_port()
        self.unix_socket = workdir / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:  # TLS only: the plain port is off
            ca, cert, key = self.tls
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-ca-cert-file", str(ca), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            args += ["--tls-auth-clients", "no"]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            if self._answers():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer within 10 s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as conn:
                if self.tls:
                    context = ssl.create_default_context(cafile=str(self.tls[0]))
                    conn = context.wrap_socket(conn, server_hostname="127.0.0.1")
                conn.sendall(b"PING\r\n")
                return conn.recv(64)[:1] in (b"+", b"-")  # +PONG, or -NOAUTH with a password
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Factory: ``redis_server(password=None, tls=False)`` starts a server and returns it."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (Debian package redis-server)"
        if os.environ.get("HOSTWATCH_REQUIRE_PEERS"):
            pytest.fail(reason)
        pytest.skip(reason)
    started: list[RedisServer] = []

    def start(password: str | None = None, tls: bool = False) -> RedisServer:
        if tls and shutil.which("openssl") is None:
            pytest.skip("openssl is needed to make test certificates")
        server = RedisServer(binary, tmp_path_factory.mktemp("redis"), password, tls)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
