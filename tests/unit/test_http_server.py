"""The local HTTP server's bounds: connection limit, request-head, idle and write timeouts."""

from __future__ import annotations

import ast
import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.http import AgentStatus, HttpServer
from agent.telemetry import Telemetry
from tests.support import http_servers


def value(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def server():
    async with http_servers(SimpleNamespace(telemetry=Telemetry())) as make:
        yield make


async def get_health(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closes the connection (read returns EOF)."""
    started = time.monotonic()
    while await asyncio.wait_for(reader.read(1024), limit):
        pass
    return time.monotonic() - started


async def test_idle_connections_over_the_limit_evict_the_oldest_and_health_still_answers(server) -> None:
    http = await server(max_connections=4, head_timeout=30)
    telemetry = http.telemetry
    idle = [await asyncio.open_connection("127.0.0.1", http.port) for _ in range(10)]
    await asyncio.sleep(0.2)
    assert value(telemetry, "hostwatch_http_connections") <= 4
    assert value(telemetry, "hostwatch_http_connections_closed_total", reason="limit") == 6
    assert (await get_health(http.port)).startswith(b"HTTP/1.1 200")
    # the first ones were closed by the server, the newest still wait
    assert await asyncio.wait_for(idle[0][0].read(), 1) == b""
    for _, writer in idle:
        writer.close()
    await asyncio.sleep(0.1)
    assert value(telemetry, "hostwatch_http_connections") == 0


async def test_a_request_head_must_arrive_within_the_head_timeout(server) -> None:
    http = await server(head_timeout=0.5, idle_timeout=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", http.port)

    async def slowloris() -> None:
        for byte in b"GET /health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa":
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    trickle = asyncio.create_task(slowloris())
    took = await closed_after(reader, 5)
    trickle.cancel()
    writer.close()
    assert 0.4 <= took <= 1.5, took
    assert value(http.telemetry, "hostwatch_http_connections_closed_total", reason="head_timeout") == 1


async def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(server) -> None:
    http = await server(head_timeout=5, idle_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"Connection: keep-alive" in head
    await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    # a second request on the same connection within the idle timeout is answered
    writer.write(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    took = await closed_after(reader, 5)
    writer.close()
    assert 0.4 <= took <= 1.5, took
    assert value(http.telemetry, "hostwatch_http_connections_closed_total", reason="idle_timeout") == 1


# ------------------------------------------------------------------ the status interface


def project_imports(module: str) -> set[str]:
    """Every project module ``module`` imports, directly or not, counting imports made only
    for type checking or inside functions: the module graph as a reader sees it."""
    root = Path(__file__).resolve().parents[2]
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = root.joinpath(*name.split("."))
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if not source.exists():
            continue
        package = name if path.is_dir() else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base]).strip(".")
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            todo.extend(t for t in targets if t.split(".")[0] in ("agent", "collectors", "outputs"))
    return seen - {module}


def test_the_http_server_does_not_import_the_runtime() -> None:
    # the runtime builds the server; the server sees the agent only as an AgentStatus
    reached = project_imports("agent.http")
    assert "agent.runtime" not in reached
    assert "agent.config" in reached  # the walk does follow imports
    assert "agent.http" in project_imports("agent.runtime")


def test_the_agent_is_an_agent_status(tmp_path) -> None:
    from agent.config import load_config
    from agent.runtime import Agent

    config = tmp_path / "hostwatch.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n[http]\nlisten = "127.0.0.1:0"\n')
    assert isinstance(Agent(load_config(str(config))), AgentStatus)


class FakeStatus:
    """The least an HttpServer needs: an AgentStatus without an agent."""

    def __init__(self) -> None:
        self.telemetry = Telemetry()
        self.refreshed = 0
        self.pipeline = SimpleNamespace(refresh_gauges=self.refresh)
        self.latest = SimpleNamespace(page=lambda: b"node_load1 0.5\n")
        self.reasons = ["output loki: HTTP 503"]

    def refresh(self) -> None:
        self.refreshed += 1

    def readiness(self) -> tuple[bool, list[str]]:
        return not self.reasons, self.reasons

    def detailed(self) -> dict:
        return {"status": "ready" if not self.reasons else "not ready", "outputs": {}}

    async def status_document(self) -> dict:
        return {"status": "fake", "charts": {}}


async def get(port: int, path: str) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


async def test_every_endpoint_answers_from_a_fake_status() -> None:
    status = FakeStatus()
    assert isinstance(status, AgentStatus)
    http = HttpServer(status, "127.0.0.1:0")
    await http.start()
    try:
        assert http.telemetry is status.telemetry
        assert await get(http.port, "/health") == (b"HTTP/1.1 200 OK", b'{"status": "alive"}')
        line, body = await get(http.port, "/ready")
        assert line == b"HTTP/1.1 503 Service Unavailable"
        assert json.loads(body) == {"status": "not ready", "reasons": ["output loki: HTTP 503"]}
        status.reasons = []
        assert await get(http.port, "/ready") == (b"HTTP/1.1 200 OK", b'{"status": "ready"}')
        line, body = await get(http.port, "/health/detailed")
        assert json.loads(body) == {"status": "ready", "outputs": {}}
        line, body = await get(http.port, "/metrics")
        assert line == b"HTTP/1.1 200 OK" and status.refreshed == 1
        assert b"hostwatch_http_connections " in body and body.endswith(b"node_load1 0.5\n")
        line, body = await get(http.port, "/status.json")
        assert json.loads(body) == {"status": "fake", "charts": {}}
    finally:
        await http.stop()
