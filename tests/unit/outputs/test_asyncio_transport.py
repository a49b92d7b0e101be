"""The outputs' HTTP/1.1 transport on the wire: framing of answers (length, chunks, until close,
interim 1xx), keep-alive and what ends it, answers cut short, the body limit, the deadline,
and TLS with the test CA.

A scripted loopback server answers each request with raw bytes chosen by the test, and records
what arrived on which connection. Each test runs on the plain asyncio loop and on uvloop (the
agent's loop in production): the transport works on the loops' transports directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from outputs._asyncio_transport import AsyncioTransport, parse_target, request_head
from outputs._transport import TransportError

Answer = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request):
    return asyncio.DefaultEventLoopPolicy() if request.param == "asyncio" else uvloop.EventLoopPolicy()


@dataclass
class Request:
    head: str
    body: bytes


@dataclass
class ScriptedServer:
    """Answers the n-th request with the n-th scripted answer (raw bytes written as they are, or a
    coroutine given the writer); ``close`` after an answer closes that connection."""

    url: str = ""
    answers: deque[tuple[Answer, bool]] = field(default_factory=deque)
    connections: list[list[Request]] = field(default_factory=list)

    def answer(self, raw: Answer, *, close: bool = False) -> None:
        self.answers.append((raw, close))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: list[Request] = []
        self.connections.append(seen)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                length = int(dict(fields(head)).get("content-length", "0"))
                seen.append(Request(head, await reader.readexactly(length)))
                raw, close = self.answers.popleft() if self.answers else (ok(), False)
                if callable(raw):
                    await raw(writer)
                else:
                    writer.write(raw)
                    await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def requests(self) -> list[Request]:
        return [request for seen in self.connections for request in seen]


def fields(head: str) -> list[tuple[str, str]]:
    lines = [line.partition(":") for line in head.split("\r\n")[1:] if line]
    return [(name.strip().lower(), value.strip()) for name, _, value in lines]


def ok(body: bytes = b"fine", *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\n" + head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


@contextlib.asynccontextmanager
async def scripted(tls: ssl.SSLContext | None = None) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/push?tenant=a"
    try:
        yield server
    finally:
        listener.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), 1)


@contextlib.asynccontextmanager
async def transport(timeout: float = 5.0, tls: ssl.SSLContext | bool = True, **options) -> AsyncIterator:
    client = AsyncioTransport(**options)
    await client.start(tls=tls, timeout=timeout)
    try:
        yield client
    finally:
        await client.close()
        await client.close()  # idempotent


async def post(client: AsyncioTransport, url: str, body: bytes = b"payload", limit: int = 64 * 1024, **headers):
    return await client.post(url, body, headers, server_hostname=None, limit=limit)


# ------------------------------------------------------------------ requests


async def test_the_request_carries_host_length_body_and_the_callers_headers() -> None:
    async with scripted() as server, transport() as client:
        answer = await post(client, server.url, b"\x00binary body", **{"Content-Type": "application/x-protobuf"})
        assert (answer.status, answer.body) == (200, b"fine")
        [request] = server.requests
        assert request.head.startswith("POST /push?tenant=a HTTP/1.1\r\n")
        sent = dict(fields(request.head))
        assert sent["host"] == server.url.split("/")[2]
        assert sent["content-length"] == "12" and request.body == b"\x00binary body"
        assert sent["content-type"] == "application/x-protobuf"
        assert sent["accept-encoding"] == "identity"  # answers are never compressed
        assert "transfer-encoding" not in sent


def test_the_head_frames_the_body_itself_and_refuses_line_breaks() -> None:
    target = parse_target("https://ann:p%40ss@Example.COM:443/v1/logs")
    head = request_head(target, {"Content-Length": "999", "Connection": "close", "X-Tenant": "t1"}, 5).decode()
    assert head.startswith("POST /v1/logs HTTP/1.1\r\nHost: example.com\r\n")
    assert "Authorization: Basic YW5uOnBAc3M=\r\n" in head  # the URL's user info, as aiohttp sent it
    assert "Content-Length: 5\r\n\r\n" in head and "999" not in head and "Connection" not in head
    assert "X-Tenant: t1\r\n" in head and head.endswith("\r\n\r\n")
    assert parse_target("http://[::1]:8080/x").host_header == "[::1]:8080"
    with pytest.raises(TransportError, match="Authorization holds a line break") as caught:
        request_head(target, {"Authorization": "Bearer one\r\nX-Evil: two"}, 0)
    assert "one" not in str(caught.value)  # the message never quotes the secret


# ------------------------------------------------------------------ framing of answers


async def test_a_chunked_answer_arriving_byte_by_byte_is_read_and_the_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )

    async def dribble(writer: asyncio.StreamWriter) -> None:
        for i in range(len(chunked)):
            writer.write(chunked[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)

    async with scripted() as server, transport() as client:
        server.answer(dribble)
        answer = await post(client, server.url)
        assert (answer.status, answer.body) == (400, b"hello, world")
        assert answer.headers["retry-after"] == answer.headers.get("Retry-After") == "7"  # any case
        assert (await post(client, server.url)).status == 200
        assert [len(seen) for seen in server.connections] == [2]  # both on one kept-alive connection


async def test_interim_answers_are_skipped_and_an_answer_without_length_is_read_until_close() -> None:
    async with scripted() as server, transport() as client:
        server.answer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after 100"))
        server.answer(b"HTTP/1.0 500 Oops\r\nContent-Type: text/plain\r\n\r\nno length here", close=True)
        server.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert (await post(client, server.url)).body == b"after 100"
        answer = await post(client, server.url)
        assert (answer.status, answer.body) == (500, b"no length here")
        assert (await post(client, server.url)).status == 204
        assert [len(seen) for seen in server.connections] == [2, 1]  # read until close: not kept


async def test_connection_close_in_the_answer_is_honoured() -> None:
    async with scripted() as server, transport() as client:
        server.answer(ok(b"bye", "Connection: close"))
        await post(client, server.url)
        await post(client, server.url)
        assert [len(seen) for seen in server.connections] == [1, 1]


# ------------------------------------------------------------------ keep-alive and its end


async def test_a_kept_alive_connection_the_server_closed_is_not_used_the_request_goes_once_on_a_new_one() -> None:
    async with scripted() as server, transport() as client:
        server.answer(ok(), close=True)  # the server closes its side right after its answer, no Connection: close
        assert (await post(client, server.url, b"first")).status == 200
        await asyncio.sleep(0.05)  # the close arrives while the connection is idle in the pool
        assert (await post(client, server.url, b"second")).status == 200
        assert [[r.body for r in seen] for seen in server.connections] == [[b"first"], [b"second"]]


async def test_idle_connections_older_than_the_idle_limit_are_closed_not_used() -> None:
    async with scripted() as server, transport(idle_seconds=0.05) as client:
        await post(client, server.url)
        await post(client, server.url)
        await asyncio.sleep(0.1)
        await post(client, server.url)
        assert [len(seen) for seen in server.connections] == [2, 1]


async def test_requests_in_flight_share_at_most_max_connections() -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(ok())

    async with scripted() as server, transport(max_connections=2) as client:
        for _ in range(6):
            server.answer(slow)
        answers = await asyncio.gather(*(post(client, server.url) for _ in range(6)))
        assert {a.status for a in answers} == {200}
        assert len(server.connections) == 2 and sum(len(seen) for seen in server.connections) == 6


# ------------------------------------------------------------------ answers cut short, limits, deadline


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "without answering"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", "in the middle of its answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", "in the middle of its answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "in the middle of its answer"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "Content-Length is not a number"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
    ],
)
async def test_an_answer_cut_short_or_malformed_fails_the_request(raw: bytes, message: str) -> None:
    async with scripted() as server, transport() as client:
        server.answer(raw, close=True)
        with pytest.raises(TransportError, match=message):
            await post(client, server.url)
        assert (await post(client, server.url)).status == 200  # on a new connection
        assert [len(seen) for seen in server.connections] == [1, 1]


async def test_a_huge_body_is_read_only_up_to_the_limit_and_its_connection_dropped() -> None:
    sent = []

    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
        with contextlib.suppress(ConnectionError):
            for _ in range(1 << 14):  # 1 GiB announced, sent in 64 KiB pieces until the client goes
                writer.write(b"e" * 65536)
                await writer.drain()
                sent.append(1)

    async with scripted() as server, transport() as client:
        server.answer(endless)
        started = time.monotonic()
        answer = await post(client, server.url, limit=1000)
        assert (answer.status, answer.body) == (500, b"e" * 1000)
        assert time.monotonic() - started < 2
        await asyncio.sleep(0.1)
        assert len(sent) < 1000  # the client went away: far from the gigabyte
        assert (await post(client, server.url)).status == 200
        assert len(server.connections) == 2


async def test_a_chunked_body_over_the_limit_is_cut_too() -> None:
    async with scripted() as server, transport() as client:
        server.answer(b"HTTP/1.1 502 Bad\r\nTransfer-Encoding: chunked\r\n\r\n" + b"a\r\n0123456789\r\n" * 50)
        answer = await post(client, server.url, limit=25)
        assert answer.body == b"0123456789" * 2 + b"01234"


async def test_a_silent_server_is_given_up_at_the_deadline_and_its_connection_dropped() -> None:
    async def never(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async with scripted() as server, transport(timeout=0.2) as client:
        server.answer(never)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await post(client, server.url)
        assert 0.15 < time.monotonic() - started < 2
        assert (await post(client, server.url)).status == 200
        assert len(server.connections) == 2


async def test_a_refused_connection_names_the_address() -> None:
    async with scripted() as server:
        url = server.url
    async with transport() as client:
        with pytest.raises(TransportError, match=r"cannot connect to 127\.0\.0\.1:\d+: ConnectionRefusedError"):
            await post(client, url)


async def test_a_reset_during_the_answer_is_an_os_error() -> None:
    async def reset(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        writer.transport.abort()

    async with scripted() as server, transport() as client:
        server.answer(reset)
        with pytest.raises((ConnectionResetError, TransportError)):
            await post(client, server.url)


# ------------------------------------------------------------------ TLS with the test CA


def server_tls(certs) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    return context


async def test_tls_with_the_test_ca_verifies_the_name_and_keeps_the_connection(certs) -> None:
    trusting = ssl.create_default_context(cafile=str(certs.ca))
    async with scripted(server_tls(certs)) as server:
        async with transport(tls=trusting) as client:
            for _ in range(2):
                answer = await client.post(server.url, b"x", {}, server_hostname=certs.server_name, limit=100)
                assert answer.status == 200
            with pytest.raises(TransportError, match="certificate verify failed"):  # the cert is not for 127.0.0.1
                await client.post(server.url, b"x", {}, server_hostname=None, limit=100)
        async with transport(tls=True) as client:  # the system's CAs do not know the test CA
            with pytest.raises(TransportError, match="certificate verify failed"):
                await client.post(server.url, b"x", {}, server_hostname=certs.server_name, limit=100)
        assert [len(seen) for seen in server.connections] == [2]
