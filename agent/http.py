"""The local HTTP server: liveness, readiness, details, /metrics, and the status page.

A small HTTP/1.1 server on asyncio's transports (each connection an
``asyncio.Protocol``, :mod:`agent.http_connection`) rather than aiohttp's: it answers
a handful of GET endpoints, and aiohttp's server would cost the agent about 12 MiB of
RSS and 150 ms of start-up at the embedded default, where no output (and so no
HTTP client) is loaded at all. Keep-alive and pipelining are supported (Prometheus reuses its
scrape connection); request heads are bounded in size and time, bodies refused.

Connections are bounded too, so that idle or slow clients cannot take the
file descriptors the collectors need: at most ``max_connections`` are open; a
connection over the limit replaces the one that has waited longest for its
next request (an idle one), or is closed at once when every connection is busy
answering. A request head must arrive whole within ``HEAD_TIMEOUT`` of its
first byte (of the accept, on a new connection: slowloris clients are cut), a
kept-alive connection may wait ``IDLE_TIMEOUT`` for its next request, and a
client that does not read its answer is cut after ``WRITE_TIMEOUT`` (what it did
not read is dropped, not flushed for as long as it lingers). Every
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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agent.config import values as config_values
from agent.http_connection import ANSWERING, Connection
from agent.status_assets import STATIC, PageAssets

if TYPE_CHECKING:
    from agent.telemetry import Telemetry

log = logging.getLogger("hostwatch.http")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0
WRITE_TIMEOUT = 30.0
# well under systemd's default soft limit of 1,024 descriptors, well over what local scrapers need
MAX_CONNECTIONS = 128

# (status, content type, body) and, for the status page, extra headers
Response = tuple[int, str, bytes] | tuple[int, str, bytes, dict[str, str]]
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
INTERNAL_ERROR: Response = (500, "text/plain", b"internal error\n")


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
        self._connections: set[Connection] = set()
        self._logged: set[str] = set()
        self._assets: PageAssets | None = None
        # an endpoint answers at once (a Response) or after a wait (an awaitable of one)
        self.routes: dict[str, Callable[[], Response | Awaitable[Response]]] = {
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
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: Connection(self), host, port, reuse_address=True)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {self.listen}: {exc.strerror}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving health and metrics on http://%s:%d", host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            # one still answering may have a client that does not read: drop what is left
            connection.close(None, abort=connection.state == ANSWERING)
        with contextlib.suppress(Exception):
            await server.wait_closed()

    # ------------------------------------------------------------ connections (called by Connection)

    def admit(self, connection: Connection) -> bool:
        """Make room for a new connection: evict the longest-waiting idle one, if any."""
        if len(self._connections) >= self.max_connections:
            waiting = [(c.waiting_since, id(c), c) for c in self._connections if c.state != ANSWERING]
            if not waiting:
                self.closed("limit")
                return False
            min(waiting)[2].close("limit")
        self._connections.add(connection)
        self.telemetry.http_connections.inc()
        return True

    def forget(self, connection: Connection) -> None:
        self._connections.discard(connection)
        self.telemetry.http_connections.dec()

    def closed(self, reason: str) -> None:
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

    def answer(self, method: str, target: str) -> Response | Awaitable[Response]:
        """The response to a request, or an awaitable of it for an endpoint that has to wait."""
        handler = self.routes.get(target.split("?", 1)[0])
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if handler is None:
            return 404, "text/plain", b"not found; try /, /status.json, /health, /ready, /health/detailed, /metrics\n"
        try:
            response = handler()
        except Exception:
            log.exception("HTTP handler for %s failed", target)
            return INTERNAL_ERROR
        if type(response) is tuple:
            return response
        return self._guarded(response, target)  # type: ignore[arg-type]

    @staticmethod
    async def _guarded(answer: Awaitable[Response], target: str) -> Response:
        try:
            return await answer
        except Exception:
            log.exception("HTTP handler for %s failed", target)
            return INTERNAL_ERROR

    # ------------------------------------------------------------ endpoints

    def live(self) -> Response:
        # answering at all proves the event loop is alive
        return 200, JSON, b'{"status": "alive"}'

    def ready(self) -> Response:
        ok, reasons = self.agent.readiness()
        if ok:
            return 200, JSON, b'{"status": "ready"}'
        return 503, JSON, json.dumps({"status": "not ready", "reasons": reasons}).encode()

    def detailed(self) -> Response:
        return 200, JSON, json.dumps(self.agent.detailed(), indent=2).encode()

    def metrics(self) -> Response:
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
