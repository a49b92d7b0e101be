"""Small fake servers for what no real backend can show on demand: chosen status codes,
Retry-After, resets, silence. Each binds to 127.0.0.1 on a free port and stops with the test.
:class:`ScriptedTransport` is no server at all: the HTTP client's injected transport, for tests
where only the answer matters, not the wire."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.test_utils import TestServer

from outputs._http import Response


@dataclass
class Seen:
    """One request the fake received; ``body`` as sent (still compressed)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple = ()
    """The client's (address, port): one value for requests over one kept-alive connection."""


@dataclass
class Reply:
    status: int = 204
    body: bytes = b""
    headers: dict[str, str] | None = None


class FakeBackend:
    """Answers each request with the next scripted :class:`Reply` (204 once they run out)."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.replies: deque[Reply] = deque()
        self.server: TestServer | None = None

    def reply(self, status: int, body: bytes | str = b"", headers: dict[str, str] | None = None) -> None:
        self.replies.append(Reply(status, body.encode() if isinstance(body, str) else body, headers))

    def url(self, path: str = "/") -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else ()
        self.requests.append(Seen(request.method, request.path, dict(request.headers), body, tuple(peer or ())))
        reply = self.replies.popleft() if self.replies else Reply()
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


class ScriptedTransport:
    """An ``HttpClient`` transport that answers each POST with the next scripted :class:`Reply`,
    or raises the next scripted exception (204 once the script runs out). No socket is opened."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.script: deque[Reply | BaseException] = deque()
        self.started: dict | None = None  # what start() was given
        self.closed = 0
        self.seen_options: list[dict] = []  # each post's server_hostname and limit

    def reply(self, status: int, body: bytes | str = b"", headers: dict[str, str] | None = None) -> None:
        self.script.append(Reply(status, body.encode() if isinstance(body, str) else body, headers))

    def fail(self, exc: BaseException) -> None:
        self.script.append(exc)

    async def start(self, *, tls: ssl.SSLContext | bool, timeout: float) -> None:
        self.started = {"tls": tls, "timeout": timeout}

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, server_hostname: str | None, limit: int
    ) -> Response:
        self.requests.append(Seen("POST", urllib.parse.urlsplit(url).path or "/", dict(headers), body))
        self.seen_options.append({"server_hostname": server_hostname, "limit": limit})
        item = self.script.popleft() if self.script else Reply()
        if isinstance(item, BaseException):
            raise item
        return Response(item.status, item.headers or {}, item.body[:limit])

    async def close(self) -> None:
        self.closed += 1


@contextlib.asynccontextmanager
async def fake_backend(tls: ssl.SSLContext | None = None) -> AsyncIterator[FakeBackend]:
    backend = FakeBackend()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", backend._handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=tls, auto_decompress=False)  # keep bodies as the client sent them
    backend.server = server
    try:
        yield backend
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def raw_server(behaviour: str) -> AsyncIterator[str]:
    """A TCP server that misbehaves: ``reset`` (reads the request, then RST) or ``silent`` (never answers).

    Yields its ``http://127.0.0.1:PORT`` URL.
    """
    hold: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        if behaviour == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            hold.append(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in hold:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
