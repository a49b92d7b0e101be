"""The local HTTP server: liveness, readiness, details, and /metrics.

A small HTTP/1.1 server on asyncio streams rather than aiohttp's: it answers
five GET endpoints, and aiohttp's server would cost the agent about 12 MiB of
RSS and 150 ms of start-up at the embedded default, where no output (and so no
HTTP client) is loaded at all. Keep-alive is supported (Prometheus reuses its
scrape connection); request heads are bounded in size and time, bodies refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import generate_latest

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger("hostwatch.http")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"
MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Response = tuple[int, str, bytes]


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen must be host:port, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class HttpServer:
    def __init__(self, agent: Agent, listen: str) -> None:
        self.agent = agent
        self.listen = listen
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self.routes: dict[str, Callable[[], Awaitable[Response]]] = {
            "/health": self.live,
            "/live": self.live,
            "/ready": self.ready,
            "/health/detailed": self.detailed,
            "/metrics": self.metrics,
        }

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
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()

    # ------------------------------------------------------------ protocol

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, (413, "text/plain", b"request head too large\n"), keep_alive=False)
                    return
                keep_alive = await self._respond(head, writer)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
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
            response = (404, "text/plain", b"not found; try /health, /ready, /health/detailed, /metrics\n")
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
        status, content_type, body = response
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode("latin-1")
        writer.write(head if head_only else head + body)
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
        self.agent.pipeline.refresh_gauges()
        # the process collector reads /proc/self: keep even that off the loop
        own = await asyncio.to_thread(generate_latest, self.agent.telemetry.registry)
        return 200, PROMETHEUS_TEXT, own + self.agent.latest.page()
