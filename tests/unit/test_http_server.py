"""The local HTTP server's bounds: connection limit, request-head, idle and write timeouts."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from agent.http import HttpServer
from agent.telemetry import Telemetry


def value(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def server():
    telemetry = Telemetry()
    servers = []

    async def make(**bounds) -> HttpServer:
        http = HttpServer(SimpleNamespace(telemetry=telemetry), "127.0.0.1:0", **bounds)
        await http.start()
        servers.append(http)
        return http

    yield make
    for http in servers:
        await http.stop()


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
