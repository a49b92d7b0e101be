"""The local HTTP server: liveness, readiness, details, /metrics, and the status page.

A small HTTP/1.1 server on asyncio streams rather than aiohttp's: it answers
a handful of GET endpoints, and aiohttp's server would cost the agent about 12 MiB of
RSS and 150 ms of start-up at the embedded default, where no output (and so no
HTTP client) is loaded at all. Keep-alive is supported (Prometheus reuses its
scrape connection); request heads are bounded in size and time, bodies refused.

Connections are bounded too, so that idle or slow clients cannot take the
file descriptors the collectors need: at most ``max_connections`` are open; a
connection over the limit replaces the one that has waited longest for its
next request (an idle one), or is closed at once when every connection is busy
answering. A request head must arrive whole within ``HEAD_TIMEOUT`` of its
first byte (of the accept, on a new connection: slowloris clients are cut), a
kept-alive connection may wait ``IDLE_TIMEOUT`` for its next request, and a
client that does not read its answer is cut after ``WRITE_TIMEOUT``. Every
connection closed this way is counted in
``hostwatch_http_connections_closed_total{reason}``.

The server sees the agent only through :class:`AgentStatus`, the few things
its endpoints answer from; it never imports the runtime (which builds the
server), and a test can serve a small fake instead of a whole agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agent.config import values as config_values
from agent.status_assets import STATIC, PageAssets

if TYPE_CHECKING:
    from agent.telemetry import Telemetry

log = logging.getLogger("hostwatch.http")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"
MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0
WRITE_TIMEOUT = 30.0
# well under systemd's default soft limit of 1,024 descriptors, well over what local scrapers need
MAX_CONNECTIONS = 128
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# (status, content type, body) and, for the status page, extra headers
Response = tuple[int, str, bytes] | tuple[int, str, bytes, dict[str, str]]
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class GaugeSource(Protocol):
    def refresh_gauges(self) -> None:
        """Bring the gauges read at scrape time (buffer sizes, ...) up to date."""


class HostPage(Protocol):
    def page(self) -> bytes:
        """The latest host metrics in the Prometheus text format."""


@runtime_checkable
class AgentStatus(Protocol):
    """What the server answers from: :class:`agent.runtime.Agent`, or a test's fake.

    ``telemetry`` holds the connection counters and the registry ``/metrics``
    renders, ``pipeline`` and ``latest`` the rest of ``/metrics``.
    """

    telemetry: Telemetry
    pipeline: GaugeSource
    latest: HostPage

    def readiness(self) -> tuple[bool, list[str]]:
        """``/ready``: ready or not, and why not (already masked)."""
        ...

    def detailed(self) -> dict[str, Any]:
        """``/health/detailed`` (already masked)."""
        ...

    async def status_document(self) -> dict[str, Any]:
        """``/status.json``, the status page's data (already masked)."""
        ...


def parse_listen(listen: str) -> tuple[str, int]:
    """``[http] listen`` as validated by the config (an empty host binds every interface)."""
    host, port = config_values.parse_listen(listen)
    return host or "0.0.0.0", port


class HttpServer:
    def __init__(
        self,
        agent: AgentStatus,
        listen: str,
        *,
        telemetry: Telemetry | None = None,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self.agent = agent
        self.listen = listen
        self.port: int | None = None
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.telemetry = telemetry or agent.telemetry
        self._server: asyncio.Server | None = None
        # each connection's task -> since when it waits for a request (inf while it is answered)
        self._connections: dict[asyncio.Task, float] = {}
        self._logged: set[str] = set()
        self._assets: PageAssets | None = None
        self.routes: dict[str, Callable[[], Awaitable[Response]]] = {
            "/health": self.live,
            "/live": self.live,
            "/ready": self.ready,
            "/health/detailed": self.detailed,
            "/metrics": self.metrics,
            "/": self.page,
            "/status.json": self.status_json,
        }
        for path in STATIC:
            self.routes[path] = functools.partial(self.asset, path)

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        host, port = parse_listen(self.listen)
        try:
            self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True, limit=MAX_HEAD)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {self.listen}: {exc.strerror}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving health and metrics on http://%s:%d", host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()

    # ------------------------------------------------------------ connections

    def _admit(self, task: asyncio.Task) -> bool:
        """Make room for a new connection: evict the longest-waiting idle one, if any."""
        if len(self._connections) >= self.max_connections:
            waiting = [(since, id(t), t) for t, since in self._connections.items() if since != math.inf]
            if not waiting:
                self._closed("limit")
                return False
            _, _, oldest = min(waiting)
            del self._connections[oldest]
            oldest.cancel()
            self._closed("limit")
        self._connections[task] = time.monotonic()
        self.telemetry.http_connections.inc()
        return True

    def _closed(self, reason: str) -> None:
        self.telemetry.http_connections_closed.labels(reason).inc()
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning(
                "HTTP: closed a connection (%s; limit %d connections, request head %gs, idle %gs);"
                " further ones are only counted in hostwatch_http_connections_closed_total",
                reason,
                self.max_connections,
                self.head_timeout,
                self.idle_timeout,
            )

    async def _read_head(self, reader: asyncio.StreamReader, task: asyncio.Task, fresh: bool) -> bytes | None:
        """The next request head, or None when the client closed or was too slow (counted)."""
        self._connections[task] = time.monotonic()
        first = b""
        if not fresh:  # a kept-alive connection: the next request may be a while
            try:
                # asyncio.timeout, not wait_for: no extra task per request
                async with asyncio.timeout(self.idle_timeout):
                    first = await reader.readexactly(1)
            except TimeoutError:
                self._closed("idle_timeout")
                return None
        try:
            async with asyncio.timeout(self.head_timeout):
                return first + await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            self._closed("head_timeout")
            return None

    # ------------------------------------------------------------ protocol

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if not self._admit(task):
            writer.close()
            return
        try:
            fresh = True
            while True:
                try:
                    head = await self._read_head(reader, task, fresh)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, (413, "text/plain", b"request head too large\n"), keep_alive=False)
                    return
                if head is None:
                    return
                fresh = False
                self._connections[task] = math.inf  # answering: not to be evicted
                try:
                    async with asyncio.timeout(self.write_timeout):
                        keep_alive = await self._respond(head, writer)
                except TimeoutError:
                    self._closed("write_timeout")
                    return
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.pop(task, None)  # an evicted one is gone already
            self.telemetry.http_connections.dec()
            writer.close()

    async def _respond(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, (400, "text/plain", b"bad request line\n"), keep_alive=False)
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip().lower()
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            await self._send(writer, (400, "text/plain", b"request bodies are not accepted\n"), keep_alive=False)
            return False
        keep_alive = headers.get("connection") != "close" and (
            version == "HTTP/1.1" or "keep-alive" in headers.get("connection", "")
        )
        handler = self.routes.get(target.split("?", 1)[0])
        if method not in ("GET", "HEAD"):
            response: Response = (405, "text/plain", b"only GET\n")
        elif handler is None:
            response = (
                404,
                "text/plain",
                b"not found; try /, /status.json, /health, /ready, /health/detailed, /metrics\n",
            )
        else:
            try:
                response = await handler()
            except Exception:
                log.exception("HTTP handler for %s failed", target)
                response = (500, "text/plain", b"internal error\n")
        await self._send(writer, response, keep_alive=keep_alive, head_only=method == "HEAD")
        return keep_alive

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, response: Response, *, keep_alive: bool, head_only: bool = False
    ) -> None:
        status, content_type, body, *extra = response
        headers = "".join(f"{name}: {value}\r\n" for name, value in extra[0].items()) if extra else ""
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{headers}"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode("latin-1")
        if head_only:
            writer.write(head)
        else:
            # one send for head and page: a system call costs more than copying the page
            writer.writelines((head, body))
        await writer.drain()

    # ------------------------------------------------------------ endpoints

    async def live(self) -> Response:
        # answering at all proves the event loop is alive
        return 200, JSON, b'{"status": "alive"}'

    async def ready(self) -> Response:
        ok, reasons = self.agent.readiness()
        if ok:
            return 200, JSON, b'{"status": "ready"}'
        return 503, JSON, json.dumps({"status": "not ready", "reasons": reasons}).encode()

    async def detailed(self) -> Response:
        return 200, JSON, json.dumps(self.agent.detailed(), indent=2).encode()

    async def metrics(self) -> Response:
        # all on the loop: the own metrics re-format only what changed since the last scrape and
        # the process metrics read /proc/self (kernel memory), cheaper than a hop to a thread
        self.agent.pipeline.refresh_gauges()
        return 200, PROMETHEUS_TEXT, b"".join((self.agent.telemetry.page(), self.agent.latest.page()))

    # ------------------------------------------------------------ status page (built on request only)

    @property
    def assets(self) -> PageAssets:
        if self._assets is None:
            self._assets = PageAssets()
        return self._assets

    async def page(self) -> Response:
        return await self.assets.index()

    async def asset(self, path: str) -> Response:
        return await self.assets.static(path)

    async def status_json(self) -> Response:
        document = await self.agent.status_document()
        return 200, JSON, json.dumps(document, separators=(",", ":")).encode(), NO_STORE
