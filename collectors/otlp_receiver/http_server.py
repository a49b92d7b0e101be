"""OTLP/HTTP: ``POST /v1/metrics``, ``/v1/logs``, ``/v1/traces``, protobuf or JSON, gzip or not.

aiohttp's server: heavier than the agent's own small HTTP server, but it is
only loaded when the receiver is configured. Bodies are inflated by the
receiver itself (``auto_decompress`` off), so the size limit bounds the
inflated body as well and a zip bomb stops at the limit.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from aiohttp import web

from collectors.otlp_receiver.answers import status, status_json, success_body
from collectors.otlp_receiver.intake import Answer, Intake

SIGNALS = ("metrics", "logs", "traces")
HTTP_STATUS = {
    "ok": 200,
    "partial": 200,
    "malformed": 400,
    "unsupported": 404,
    "too_large": 413,
    "busy": 429,
    "unavailable": 503,
}
MEDIA_TYPES = {"application/x-protobuf": False, "application/protobuf": False, "application/json": True}


class HttpReceiver:
    def __init__(self, intake: Intake, host: str, port: int, *, read_timeout: float) -> None:
        self.intake = intake
        self.host, self.port = host, port
        self.read_timeout = read_timeout
        self._runner: web.AppRunner | None = None
        self.bound_port = 0

    async def start(self) -> None:
        app = web.Application(client_max_size=self.intake.config.max_request_bytes)
        app.router.add_post("/v1/{signal}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.bound_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        signal = request.match_info["signal"]
        json = MEDIA_TYPES.get(request.content_type)
        if signal not in SIGNALS:
            return web.Response(status=404, text=f"no such OTLP path; POST to /v1/{{{','.join(SIGNALS)}}}\n")
        if json is None:
            answer = Answer(
                "malformed",
                f"unsupported Content-Type {request.content_type!r}: send application/x-protobuf or application/json",
            )
            self.intake.report("http", signal, answer)
            return self._respond(signal, answer, False, status_code=415)
        if signal not in self.intake.signals:  # refused before the body is read
            answer = Answer("unsupported", f"this receiver does not take {signal} (see its signals option)")
            self.intake.report("http", signal, answer)
            return self._respond(signal, answer, json)
        declared = request.content_length
        reserved = declared if declared is not None else self.intake.config.max_request_bytes
        refusal = self.intake.admit(reserved)
        if refusal is not None:
            self.intake.report("http", signal, refusal)
            return self._respond(signal, refusal, json)
        try:
            answer = await self._receive(request, signal, json)
        finally:
            self.intake.release(reserved)
        self.intake.report("http", signal, answer)
        return self._respond(signal, answer, json)

    async def _receive(self, request: web.Request, signal: str, json: bool) -> Answer:
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.intake.config.max_request_bytes
            return Answer("too_large", f"request body is over max_request_bytes ({limit})")
        except TimeoutError:
            return Answer("malformed", f"request body not received within {self.read_timeout:g}s")
        encoding = request.headers.get("Content-Encoding", "")
        return await self.intake.process(signal, body, encoding=encoding, json=json)

    @staticmethod
    def _respond(signal: str, answer: Answer, json: bool, *, status_code: int | None = None) -> web.Response:
        code = status_code or HTTP_STATUS[answer.result]
        content_type = "application/json" if json else "application/x-protobuf"
        headers: dict[str, Any] = {}
        if answer.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(answer.retry_after)))
        if code == 200:
            body = success_body(signal, answer, json=json)
        else:
            body = status_json(answer) if json else status(answer)
        return web.Response(status=code, body=body, content_type=content_type, headers=headers)
