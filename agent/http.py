"""The local HTTP server: liveness, readiness, details, and /metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import generate_latest

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger("hostwatch.http")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen must be host:port, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class HttpServer:
    def __init__(self, agent: Agent, listen: str) -> None:
        self.agent = agent
        self.listen = listen
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.live)
        app.router.add_get("/live", self.live)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/health/detailed", self.detailed)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> None:
        host, port = parse_listen(self.listen)
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(exc.errno, f"cannot listen on {self.listen}: {exc.strerror}") from None
        sockets = site._server.sockets if site._server else []  # the real port when listen used :0
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("serving health and metrics on http://%s:%d", host, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def live(self, request: web.Request) -> web.Response:
        # answering at all proves the event loop is alive
        return web.json_response({"status": "alive"})

    async def ready(self, request: web.Request) -> web.Response:
        ok, reasons = self.agent.readiness()
        if ok:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reasons": reasons}, status=503)

    async def detailed(self, request: web.Request) -> web.Response:
        return web.json_response(self.agent.detailed(), dumps=_dumps)

    async def metrics(self, request: web.Request) -> web.Response:
        # the process collector reads /proc/self: keep even that off the loop
        self.agent.pipeline.refresh_gauges()
        own = await asyncio.to_thread(generate_latest, self.agent.telemetry.registry)
        body = own + self.agent.latest.page()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TEXT})


def _dumps(value: object) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=False)
