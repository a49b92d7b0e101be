"""OTLP receiver: local applications' metrics, logs and traces, handed on durably.

Listens on ``127.0.0.1:4318`` (OTLP/HTTP) and ``127.0.0.1:4317`` (OTLP/gRPC)
by default, loopback only. A request is answered success only once every
output that takes its signal durably holds the data (see ``intake.py``);
buffers that stay full turn into 503/UNAVAILABLE with a retry delay, a flood
into 429/RESOURCE_EXHAUSTED, a bad body into 400/INVALID_ARGUMENT, an
oversized one into 413, and points that cannot become samples into an OTLP
partial success. Translation rules: ``metrics.py`` (Prometheus' OTLP
translation) and ``logs.py`` (log records, spans, redaction).

The samples go to the outputs only, not to ``/metrics``: many applications
push there, each request a slice of its own series, which the agent's
``/metrics`` page (the latest run of each collector) cannot show faithfully.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from agent.plugin import CollectorContext, Duration, Emitter, PluginConfig, Size, StreamingCollector
from collectors.otlp_receiver.grpc_server import GrpcReceiver
from collectors.otlp_receiver.http_server import HttpReceiver
from collectors.otlp_receiver.intake import Intake

Meta = msgspec.Meta
BIND_PATIENCE = 10.0  # seconds a port still held by the instance a reload replaces is waited for
# Loki's default OTLP index labels less service.instance.id (one per process: a gunicorn or Celery
# worker pool would make a stream per worker and new ones at every restart)
LOKI_STREAM_LABELS = [
    "service.name", "service.namespace", "deployment.environment",
    "deployment.environment.name", "cloud.region", "cloud.availability_zone", "container.name",
    "k8s.cluster.name", "k8s.namespace.name", "k8s.pod.name", "k8s.container.name", "k8s.deployment.name",
    "k8s.statefulset.name", "k8s.daemonset.name", "k8s.replicaset.name", "k8s.job.name", "k8s.cronjob.name",
]  # fmt: skip


def split_listen(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{key}: expected HOST:PORT like 127.0.0.1:4318, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class OtlpReceiverConfig(PluginConfig):
    http_listen: Annotated[str, Meta(description="HOST:PORT for OTLP/HTTP; empty: off.")] = "127.0.0.1:4318"
    grpc_listen: Annotated[str, Meta(description="HOST:PORT for OTLP/gRPC; empty: off.")] = "127.0.0.1:4317"
    signals: Annotated[
        list[Literal["metrics", "logs", "traces"]], Meta(description="What to take; others are answered 404.")
    ] = msgspec.field(default_factory=lambda: ["metrics", "logs", "traces"])
    max_request_bytes: Annotated[Size, Meta(description="Largest request, as sent and inflated; more: 413.")] = Size(
        16 * 1024 * 1024
    )
    max_inflight_bytes: Annotated[
        Size, Meta(description="Bytes of requests held at once (reading, decoding, waiting); more: 429.")
    ] = Size(64 * 1024 * 1024)
    max_concurrent_requests: Annotated[int, Meta(description="Requests held at once; more: 429.", ge=1)] = 64
    handoff_timeout: Annotated[
        Duration, Meta(description="Longest wait for the outputs' buffers to take a request; then 503.")
    ] = Duration(5)
    retry_after: Annotated[Duration, Meta(description="Retry delay told to senders refused for load.")] = Duration(5)
    read_timeout: Annotated[Duration, Meta(description="Longest wait for a request body over HTTP.")] = Duration(30)
    metric_suffixes: Annotated[
        bool, Meta(description="Unit and _total/_ratio suffixes on metric names, as Prometheus adds them.")
    ] = True
    promote_resource_attributes: Annotated[
        list[str], Meta(description="Resource attributes put on every sample as labels (besides job, instance).")
    ] = msgspec.field(default_factory=list)
    stream_labels: Annotated[
        list[str], Meta(description="Resource attributes that label log streams; the rest are record attributes.")
    ] = msgspec.field(default_factory=lambda: list(LOKI_STREAM_LABELS))

    def __post_init__(self) -> None:
        if not self.http_listen and not self.grpc_listen:
            raise ValueError("http_listen, grpc_listen: set at least one")
        for key in ("http_listen", "grpc_listen"):
            if getattr(self, key):
                split_listen(getattr(self, key), key)
        if not self.signals:
            raise ValueError("signals: name at least one of metrics, logs, traces")
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ValueError("max_inflight_bytes: must be at least max_request_bytes (one request must fit)")


class OtlpReceiver(StreamingCollector):
    Config: ClassVar[type] = OtlpReceiverConfig
    needs_redactor = True
    served_on_metrics = False

    def __init__(self, config: OtlpReceiverConfig, context: CollectorContext) -> None:
        super().__init__(config, context)
        self.http: HttpReceiver | None = None
        self.grpc: GrpcReceiver | None = None

    async def run(self, emit: Emitter) -> None:
        config: OtlpReceiverConfig = self.config
        intake = Intake(config, self.context, emit)
        try:
            if config.http_listen:
                host, port = split_listen(config.http_listen, "http_listen")
                self.http = HttpReceiver(intake, host, port, read_timeout=float(config.read_timeout))
                await _listen(self.http)
            if config.grpc_listen:
                self.grpc = GrpcReceiver(intake, config.grpc_listen)
                await _listen(self.grpc)
            self.context.logger.info(
                "collector %s: receiving OTLP %s on %s",
                self.context.instance,
                "/".join(config.signals),
                ", ".join(
                    f"{kind} {address}"
                    for kind, address in (("http", config.http_listen), ("grpc", config.grpc_listen))
                    if address
                ),
            )
            await asyncio.Event().wait()  # the servers work on their own until cancelled
        finally:
            await self.close()

    async def close(self) -> None:
        receivers: list[Any] = [self.http, self.grpc]
        self.http = self.grpc = None
        for receiver in receivers:
            if receiver is not None:
                with contextlib.suppress(Exception):
                    await receiver.close()


async def _listen(receiver: Any, patience: float = BIND_PATIENCE) -> None:
    """Start listening; while the port is still held, try again for ``patience`` seconds.

    A reload that changes this instance's options starts the new instance while
    the old one is still closing its servers: without the wait the new one would
    fail to bind and stay down for an interval.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            await receiver.start()
            return
        except OSError:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.2)
