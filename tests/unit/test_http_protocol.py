"""The local HTTP server's protocol: methods, HEAD, keep-alive and pipelining, oversize heads,
bodies, a client that never reads, and the connection cap when every connection is busy.

Each test runs on the plain asyncio loop and on uvloop (the agent's loop in production):
the server works on the transports directly, and the two loops' transports differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from types import SimpleNamespace

import pytest
import uvloop

from agent.http import HttpServer
from agent.telemetry import Telemetry
from tests.support import http_servers

BIG_PAGE = b"node_big_series 1\n" * (2 * 1024 * 1024)  # 36 MiB: more than loopback's socket buffers hold


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request):
    return asyncio.DefaultEventLoopPolicy() if request.param == "asyncio" else uvloop.EventLoopPolicy()


class Status:
    """An AgentStatus whose host page the test chooses, and whose /status.json takes a while."""

    def __init__(self) -> None:
        self.telemetry = Telemetry()
        self.pipeline = SimpleNamespace(refresh_gauges=lambda: None)
        self.host_page = b"node_load1 0.5\n"
        self.latest = SimpleNamespace(page=lambda: self.host_page)

    def readiness(self) -> tuple[bool, list[str]]:
        return False, ["starting"]

    def detailed(self) -> dict:
        return {"status": "not ready"}

    async def status_document(self) -> dict:
        await asyncio.sleep(0.05)  # an answer that is not ready at once: later requests wait for it
        return {"status": "slow"}


@pytest.fixture
async def served():
    async with http_servers(Status()) as make:
        yield make


def value(http: HttpServer, name: str, **labels: str) -> float:
    return http.telemetry.registry.get_sample_value(name, labels) or 0.0


async def connect(http: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", http.port, limit=64 * 1024 * 1024)


async def response(reader: asyncio.StreamReader, *, head_only: bool = False) -> tuple[str, dict[str, str], bytes]:
    """One response off the connection: status line, headers (lower-case names), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = 0 if head_only else int(headers["content-length"])
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return lines[0], headers, body


async def at_eof(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def wait_for(check, limit: float = 5.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# ------------------------------------------------------------------ methods and answers


async def test_head_answers_the_get_headers_without_the_body(served) -> None:
    http = await served()
    reader, writer = await connect(http)
    # a GET right behind the HEAD: its status line must follow the HEAD's head directly
    writer.write(
        b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    line, headers, _ = await response(reader, head_only=True)
    assert line == "HTTP/1.1 200 OK"
    assert headers["content-length"] == str(len(b'{"status": "alive"}'))
    assert headers["content-type"] == "application/json" and headers["connection"] == "keep-alive"
    assert await response(reader) == (
        "HTTP/1.1 200 OK",
        {"content-type": "application/json", "content-length": "19", "connection": "close"},
        b'{"status": "alive"}',
    )
    assert await at_eof(reader)
    writer.close()


async def test_other_methods_get_405_and_the_connection_stays_usable(served) -> None:
    http = await served()
    reader, writer = await connect(http)
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        writer.write(f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        line, headers, body = await response(reader)
        assert (line, body) == ("HTTP/1.1 405 Method Not Allowed", b"only GET\n")
        assert headers["connection"] == "keep-alive"
    writer.write(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await response(reader))[0] == "HTTP/1.1 200 OK"
    writer.close()


async def test_unknown_paths_bad_request_lines_and_bodies_are_refused(served) -> None:
    http = await served()
    reader, writer = await connect(http)
    writer.write(b"GET /nope?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    line, _, body = await response(reader)
    assert line == "HTTP/1.1 404 Not Found" and body.startswith(b"not found; try /,")
    writer.write(b"GET /health?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")  # a query string is ignored
    assert (await response(reader))[0] == "HTTP/1.1 200 OK"
    writer.write(b"GET /health\r\n\r\n")
    line, headers, body = await response(reader)
    assert (line, body, headers["connection"]) == ("HTTP/1.1 400 Bad Request", b"bad request line\n", "close")
    assert await at_eof(reader)
    writer.close()
    for framing in (b"Content-Length: 5", b"Transfer-Encoding: chunked"):
        reader, writer = await connect(http)
        writer.write(b"POST /metrics HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\nhello")
        line, headers, body = await response(reader)
        assert (line, body) == ("HTTP/1.1 400 Bad Request", b"request bodies are not accepted\n")
        assert headers["connection"] == "close" and await at_eof(reader)
        writer.close()


@pytest.mark.parametrize("whole", [True, False], ids=["in-one-send", "trickled"])
async def test_a_request_head_over_16_kib_gets_413_and_the_connection_closes(served, whole) -> None:
    http = await served()
    reader, writer = await connect(http)
    head = b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * (17 * 1024)
    if whole:
        writer.write(head + b"\r\n\r\n")
    else:  # no end of head in sight: refused once it is too long, not when it ends
        for start in range(0, len(head), 4096):
            writer.write(head[start : start + 4096])
            await asyncio.sleep(0.01)
    line, headers, body = await response(reader)
    assert (line, body) == ("HTTP/1.1 413 Payload Too Large", b"request head too large\n")
    assert headers["connection"] == "close" and await at_eof(reader)
    writer.close()
    # a head just under the limit is answered
    reader, writer = await connect(http)
    writer.write(b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * (15 * 1024) + b"\r\nConnection: close\r\n\r\n")
    assert (await response(reader))[0] == "HTTP/1.1 200 OK"
    writer.close()


# ------------------------------------------------------------------ keep-alive and pipelining


async def test_pipelined_requests_are_answered_in_order_across_slow_and_quick_endpoints(served) -> None:
    http = await served()
    reader, writer = await connect(http)
    writer.write(
        b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n"  # answered after a while
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answers = [await response(reader) for _ in range(4)]
    assert [line for line, _, _ in answers] == [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 503 Service Unavailable",
        "HTTP/1.1 200 OK",
    ]
    assert answers[0][2] == b'{"status":"slow"}' and answers[0][1]["cache-control"] == "no-store"
    assert answers[1][2] == b'{"status": "alive"}'
    assert answers[2][2] == b'{"status": "not ready", "reasons": ["starting"]}'
    assert answers[3][1]["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert answers[3][2].endswith(b"node_load1 0.5\n") and answers[3][1]["connection"] == "close"
    assert [h["connection"] for _, h, _ in answers[:3]] == ["keep-alive"] * 3
    assert await at_eof(reader)
    writer.close()


async def test_a_request_split_across_sends_is_answered(served) -> None:
    http = await served()
    reader, writer = await connect(http)
    for part in (b"GET /hea", b"lth HTTP/1.1\r\nHo", b"st: x\r\n\r", b"\nGET /live HTTP/1.1\r\n", b"\r\n"):
        writer.write(part)
        await asyncio.sleep(0.02)
    assert (await response(reader))[2] == b'{"status": "alive"}'
    assert (await response(reader))[2] == b'{"status": "alive"}'
    writer.close()


@pytest.mark.parametrize(
    ("version", "connection", "kept"),
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Close", False),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "Keep-Alive", True),
    ],
)
async def test_keep_alive_follows_the_version_and_the_connection_header(served, version, connection, kept) -> None:
    http = await served()
    reader, writer = await connect(http)
    extra = f"Connection: {connection}\r\n" if connection else ""
    writer.write(f"GET /health {version}\r\nHost: x\r\n{extra}\r\n".encode())
    line, headers, _ = await response(reader)
    assert line == "HTTP/1.1 200 OK" and headers["connection"] == ("keep-alive" if kept else "close")
    if kept:
        writer.write(f"GET /live {version}\r\n{extra}\r\n".encode())
        assert (await response(reader))[0] == "HTTP/1.1 200 OK"
    else:
        assert await at_eof(reader)
    writer.close()


async def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(served) -> None:
    http = await served()
    for path in ("/health", "/status.json"):  # answered at once, and after a while
        reader, writer = await connect(http)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        writer.write_eof()
        line, _, _ = await response(reader)
        assert line == "HTTP/1.1 200 OK" and await at_eof(reader)
        writer.close()
    await wait_for(lambda: value(http, "hostwatch_http_connections") == 0)


# ------------------------------------------------------------------ clients that do not read


async def stuck_client(http: HttpServer) -> socket.socket:
    """A client that asks for the big page and never reads it."""
    sock = socket.create_connection(("127.0.0.1", http.port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


async def test_a_client_that_never_reads_is_cut_after_the_write_timeout(served) -> None:
    http = await served(write_timeout=0.5)
    http.agent.host_page = BIG_PAGE
    sock = await stuck_client(http)
    try:
        await wait_for(lambda: value(http, "hostwatch_http_connections") == 1)
        took = await wait_for(lambda: value(http, "hostwatch_http_connections_closed_total", reason="write_timeout"))
        assert 0.3 <= took <= 2.0, took
        await wait_for(lambda: value(http, "hostwatch_http_connections") == 0)
        # the server still answers others
        reader, writer = await connect(http)
        writer.write(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert (await response(reader))[0] == "HTTP/1.1 200 OK"
        writer.close()
    finally:
        sock.close()


async def test_a_connection_cut_for_the_write_timeout_is_really_closed(served) -> None:
    # not left to flush a page its client never reads: that would keep its descriptor for ever
    http = await served(write_timeout=0.3)
    http.agent.host_page = BIG_PAGE
    sock = await stuck_client(http)
    try:
        await wait_for(lambda: value(http, "hostwatch_http_connections_closed_total", reason="write_timeout"))
        await asyncio.sleep(0.2)
        sock.settimeout(5)

        def drain() -> int:
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            return received

        # the client gets what the kernel held already, then the end: not the rest of the page
        received = await asyncio.to_thread(drain)
        assert received < len(BIG_PAGE), f"the whole page ({received} bytes) was sent after the write timeout"
    finally:
        sock.close()


async def test_when_every_connection_is_busy_a_new_one_is_closed_at_once(served) -> None:
    http = await served(max_connections=2, write_timeout=30)
    http.agent.host_page = BIG_PAGE
    stuck = [await stuck_client(http) for _ in range(2)]
    try:
        await wait_for(lambda: value(http, "hostwatch_http_connections") == 2)
        await asyncio.sleep(0.2)  # both are answering: none may be evicted
        reader, writer = await connect(http)
        started = time.monotonic()
        assert await at_eof(reader)
        assert time.monotonic() - started < 1
        writer.close()
        assert value(http, "hostwatch_http_connections_closed_total", reason="limit") == 1
        assert value(http, "hostwatch_http_connections") == 2
    finally:
        for sock in stuck:
            sock.close()
    await wait_for(lambda: value(http, "hostwatch_http_connections") == 0, limit=35)


async def test_stop_closes_every_connection_and_counts_them_gone(served) -> None:
    http = await served()
    http.agent.host_page = BIG_PAGE
    idle = [await connect(http) for _ in range(3)]
    stuck = await stuck_client(http)
    await wait_for(lambda: value(http, "hostwatch_http_connections") == 4)
    await asyncio.wait_for(http.stop(), 5)
    assert value(http, "hostwatch_http_connections") == 0
    for reader, writer in idle:
        assert await at_eof(reader)
        writer.close()
    stuck.close()
    assert not http.serving


async def test_an_endpoint_that_fails_answers_500_and_the_connection_goes_on(served, caplog) -> None:
    http = await served()

    def broken() -> dict:
        raise RuntimeError("detailed broke")

    async def broken_later() -> dict:
        await asyncio.sleep(0.01)
        raise RuntimeError("status broke")

    http.agent.detailed, http.agent.status_document = broken, broken_later
    reader, writer = await connect(http)
    writer.write(b"GET /health/detailed HTTP/1.1\r\n\r\nGET /status.json HTTP/1.1\r\n\r\nGET /live HTTP/1.1\r\n\r\n")
    for expected in ("HTTP/1.1 500 Internal Server Error",) * 2 + ("HTTP/1.1 200 OK",):
        line, headers, body = await response(reader)
        assert line == expected and headers["connection"] == "keep-alive"
        assert body == (b"internal error\n" if expected.endswith("Error") else b'{"status": "alive"}')
    assert "HTTP handler for /health/detailed failed" in caplog.text
    assert "HTTP handler for /status.json failed" in caplog.text
    writer.close()
