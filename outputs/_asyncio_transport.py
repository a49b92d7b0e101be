"""The push outputs' HTTP transport: a small HTTP/1.1 client on asyncio's transports.

:class:`AsyncioTransport` is the :class:`outputs._transport.Transport` the agent uses: a pool
of kept-alive :class:`outputs._http_connection.ClientConnection` s, one per request in flight.
The outputs only POST a body of known length and read a short answer, which is what this does
(TLS from the context the client builds, ``Content-Length`` and chunked answers, the body
limit, one deadline per request) and all it does. aiohttp did the same before, but importing it
cost the agent about a third of its start-up, building its TLS contexts (loading the system's
CA bundle) included, for an agent that pushes plain http:// to a local backend as much as for
one that pushes https://. The README's dependencies section has the figures.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import NamedTuple

from outputs._http_connection import ClientConnection
from outputs._transport import Response, TransportError

# a kept-alive connection idle this long is closed rather than used: servers close theirs
# after a minute or more (VictoriaMetrics 1 min, nginx 75 s), so ours never races their close
IDLE_SECONDS = 30.0
MAX_CONNECTIONS = 8
# the transport frames the body itself: these never come from the caller's headers
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


class Target(NamedTuple):
    """Where a URL's requests go, parsed once per URL."""

    tls: bool
    host: str
    port: int
    host_header: str  # the Host field: the host, and the port unless it is the scheme's
    path: str  # with the query
    authorization: str  # Basic, from user:password in the URL; empty without


def parse_target(url: str) -> Target:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(f"not an http(s) URL with a host: {url!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise TransportError(f"{exc}: {url!r}") from None
    host = parts.hostname
    name = host.encode("idna").decode("ascii") if not host.isascii() else host
    name = f"[{name}]" if ":" in name else name
    default = port == (443 if scheme == "https" else 80)
    authorization = ""
    if parts.username is not None:  # as aiohttp did: a URL's user info is sent as basic auth
        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme == "https", host, port, name if default else f"{name}:{port}", path, authorization)


def request_head(target: Target, headers: Mapping[str, str], length: int) -> bytes:
    """The head of a POST of ``length`` bytes: the caller's fields, with Host and framing added."""
    given = {name.lower() for name in headers}
    lines = [f"POST {target.path} HTTP/1.1"]
    if "host" not in given:
        lines.append(f"Host: {target.host_header}")
    if target.authorization and "authorization" not in given:
        lines.append(f"Authorization: {target.authorization}")
    if "accept-encoding" not in given:
        lines.append("Accept-Encoding: identity")  # answers are short: never compressed
    for name, value in headers.items():
        if name.lower() in _FRAMING:
            continue
        if "\r" in value or "\n" in value:  # a secret file with two lines, say: never sent as two fields
            raise TransportError(f"the value of header {name} holds a line break")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    return "\r\n".join(lines).encode("utf-8")


class AsyncioTransport:
    """The default :class:`Transport`: keep-alive connections (at most ``MAX_CONNECTIONS``
    at a time), redirects not followed, one deadline over waiting for a connection,
    connecting, sending and reading the answer.

    A kept-alive connection the server has closed meanwhile is never written to: the
    request goes on a new connection instead. One that fails after the request went out
    fails the request (the engine retries it): whether the server acted on it cannot
    be known, so it is not sent again here.
    """

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS, idle_seconds: float = IDLE_SECONDS) -> None:
        self.max_connections = max_connections
        self.idle_seconds = idle_seconds
        self._tls: ssl.SSLContext | bool = True
        self._default_tls: ssl.SSLContext | None = None
        self._timeout = 0.0
        self._slots: asyncio.Semaphore | None = None
        self._targets: dict[str, Target] = {}
        self._idle: dict[tuple[Target, str | None], list[ClientConnection]] = {}
        self._open: set[ClientConnection] = set()

    async def start(self, *, tls: ssl.SSLContext | bool, timeout: float) -> None:
        self._tls, self._timeout = tls, timeout
        self._slots = asyncio.Semaphore(self.max_connections)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, server_hostname: str | None, limit: int
    ) -> Response:
        if self._slots is None:
            raise RuntimeError("AsyncioTransport.post before start() or after close()")
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = parse_target(url)
            if len(self._targets) > 64:  # URLs come from the config: a handful; bounded all the same
                self._targets.clear()
        head = request_head(target, headers, len(body))
        key = (target, server_hostname if target.tls else None)
        async with asyncio.timeout(self._timeout), self._slots:
            connection = self._take(key) or await self._connect(target, server_hostname)
            try:
                response = await connection.request(head, body, limit)
            except BaseException:
                connection.abort()
                self._open.discard(connection)
                raise
        if connection.usable:
            self._idle.setdefault(key, []).append(connection)
        else:
            self._open.discard(connection)
        return response

    def _take(self, key: tuple[Target, str | None]) -> ClientConnection | None:
        """The most recently used idle connection to ``key`` that can still carry a request;
        those the server closed meanwhile, and those idle too long, are let go."""
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = asyncio.get_running_loop().time() - self.idle_seconds
        while idle:
            connection = idle.pop()
            if connection.usable and connection.idle_since > oldest:
                for stale in [c for c in idle if c.idle_since <= oldest]:
                    idle.remove(stale)
                    self._let_go(stale)
                return connection
            self._let_go(connection)
        return None

    def _let_go(self, connection: ClientConnection) -> None:
        connection.close()
        self._open.discard(connection)

    async def _connect(self, target: Target, server_hostname: str | None) -> ClientConnection:
        context = None
        if target.tls:
            context = self._tls if isinstance(self._tls, ssl.SSLContext) else await self._default_context()
        loop = asyncio.get_running_loop()
        try:
            if context is None:
                _, connection = await loop.create_connection(ClientConnection, target.host, target.port)
            else:
                _, connection = await loop.create_connection(
                    ClientConnection, target.host, target.port, ssl=context, server_hostname=server_hostname
                )
        except OSError as exc:  # refused, unreachable, a name that does not resolve, a certificate refused
            raise TransportError(f"cannot connect to {target.host_header}: {type(exc).__name__}: {exc}") from exc
        self._open.add(connection)
        return connection

    async def _default_context(self) -> ssl.SSLContext:
        """The verifying default (the system's CAs), built on the first https request: loading
        the CA bundle reads files and costs ~30 ms of CPU, which an http:// output never needs."""
        if self._default_tls is None:
            self._default_tls = await asyncio.to_thread(ssl.create_default_context)
        return self._default_tls

    async def close(self) -> None:
        self._slots = None
        for connection in self._open:
            connection.abort()
        self._open.clear()
        self._idle.clear()
