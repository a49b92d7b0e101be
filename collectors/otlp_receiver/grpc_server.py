"""OTLP/gRPC: the MetricsService, LogsService and TraceService ``Export`` methods, on grpc.aio.

Requests arrive as bytes (no generated stubs: the intake decodes them with
``opentelemetry-proto``); gRPC inflates gzip itself and refuses a message over
``max_request_bytes`` with RESOURCE_EXHAUSTED before it reaches the receiver.
A refusal carries a ``google.rpc.Status`` in ``grpc-status-details-bin`` and,
when the sender should come back later, a ``RetryInfo`` both inside it (as the
Collector's exporters read it) and as ``google.rpc.retryinfo-bin`` (as the
OpenTelemetry Python SDK reads it).
"""

from __future__ import annotations

from typing import Any

import grpc

from collectors.otlp_receiver.answers import GRPC_CODES, retry_info, status, success_body
from collectors.otlp_receiver.intake import Intake

SERVICES = {
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
}


class GrpcReceiver:
    def __init__(self, intake: Intake, address: str) -> None:
        self.intake = intake
        self.address = address
        self._server: grpc.aio.Server | None = None
        self.bound_port = 0

    async def start(self) -> None:
        limit = self.intake.config.max_request_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.so_reuseport", 0),  # a second agent on the same port must fail, not share it
            ]
        )
        for signal, service in SERVICES.items():
            handler = grpc.unary_unary_rpc_method_handler(self._handler(signal))
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
        try:
            self.bound_port = server.add_insecure_port(self.address)
        except RuntimeError as exc:  # newer grpcio raises where older ones returned 0
            raise OSError(f"cannot listen on {self.address} for OTLP/gRPC: {exc}") from None
        if not self.bound_port:
            raise OSError(f"cannot listen on {self.address} for OTLP/gRPC")
        await server.start()
        self._server = server

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=1.0)

    def _handler(self, signal: str) -> Any:
        async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            intake = self.intake
            size = len(request)
            answer = intake.admit(size)
            if answer is None:
                try:
                    answer = await intake.process(signal, request)
                finally:
                    intake.release(size)
            intake.report("grpc", signal, answer)
            if answer.result in ("ok", "partial"):
                return success_body(signal, answer, json=False)
            metadata: list[tuple[str, bytes]] = [("grpc-status-details-bin", status(answer))]
            if answer.retry_after:
                metadata.append(("google.rpc.retryinfo-bin", retry_info(answer.retry_after)))
            code = _STATUS_CODES[GRPC_CODES[answer.result]]
            await context.abort(code, answer.message, trailing_metadata=tuple(metadata))
            raise AssertionError("unreachable: abort raises")

        return export


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
