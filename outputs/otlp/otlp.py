"""OTLP output: metrics, logs and traces over HTTP (protobuf or JSON, gzip) or gRPC.

Works with the OpenTelemetry Collector, VictoriaMetrics
(``endpoint = "http://HOST:8428/opentelemetry"``), VictoriaLogs
(``endpoint = "http://HOST:9428/insert/opentelemetry"``) and any OTLP receiver.
The resource describes the host (``host.name``, ``host.id`` from
/etc/machine-id, ``os.type``, ``service.name`` = the job,
``service.instance.id`` = the instance, and the ``[agent] labels``).
Counters are cumulative monotonic Sums; gauges are Gauges. The start time of
every Sum is the host's boot time (``btime`` in /proc/stat): the host
counters are totals the kernel keeps since boot, and unlike the agent's own
start it stays the same across agent restarts, so samples replayed from the
disk buffer after a restart do not look like counter resets. Where
/proc/stat cannot be read, the moment this output started is used. Traces
(from the OTLP receiver) keep the resource the application sent.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import grpc
import msgspec

from agent.model import Signal
from agent.plugin import Batch, ExportResult, Output, OutputContext
from outputs._http import (
    HttpClient,
    HttpClientConfig,
    check_url,
    compress_async,
    server_message,
    shorten,
)
from outputs.otlp.answers import partial_success, retry_delay, status_message
from outputs.otlp.encode import LogsEncoder, MetricsEncoder, resource_attributes
from outputs.otlp.encode_traces import encode_spans, encode_spans_json

Desc = msgspec.Meta
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
PROC_STAT = "/proc/stat"
GRPC_METHODS = {
    Signal.METRICS: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    Signal.LOGS: "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    Signal.TRACES: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
}
HTTP_PATHS = {Signal.METRICS: "/v1/metrics", Signal.LOGS: "/v1/logs", Signal.TRACES: "/v1/traces"}
# The OTLP specification's retryable gRPC codes; RESOURCE_EXHAUSTED only with RetryInfo.
GRPC_RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class OtlpConfig(HttpClientConfig, kw_only=True):
    endpoint: Annotated[
        str,
        Desc(
            description="Base URL http(s)://HOST:4318 (requests go to /v1/metrics, /v1/logs, /v1/traces); "
            "for grpc HOST:4317. "
            "Empty: the local default port of the protocol."
        ),
    ] = ""
    protocol: Annotated[Literal["http", "grpc"], Desc(description="http (OTLP/HTTP) or grpc.")] = "http"
    encoding: Annotated[Literal["protobuf", "json"], Desc(description="Body encoding over http.")] = "protobuf"
    signals: Annotated[
        list[Literal["metrics", "logs", "traces"]],
        Desc(description='What to send; a metrics-only backend takes ["metrics"].'),
    ] = msgspec.field(default_factory=lambda: ["metrics", "logs", "traces"])

    @property
    def target(self) -> str:
        """The endpoint, or the protocol's local default."""
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return "http://127.0.0.1:4318" if self.protocol == "http" else "127.0.0.1:4317"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protocol == "http":
            check_url(self.target, "endpoint")
        elif re.match(r"(https?://)?[^/\s]+$", self.target):
            check_url(self.target if "://" in self.target else f"http://{self.target}", "endpoint")
        else:
            raise ValueError(f"endpoint: must be HOST:PORT or http(s)://HOST:PORT for grpc, got {self.endpoint!r}")
        if self.compression == "snappy":
            raise ValueError('compression: OTLP takes "gzip" (the default) or "none"')
        if self.protocol == "grpc" and self.encoding == "json":
            raise ValueError("encoding json is for protocol http only")
        if self.protocol == "grpc" and self.tls_insecure_skip_verify:
            raise ValueError("tls_insecure_skip_verify is not available with grpc; set tls_ca instead")
        if not self.signals:
            raise ValueError("signals must name at least one of metrics, logs, traces")


class OtlpOutput(Output):
    """Sends each batch as one OTLP Export request."""

    Config: ClassVar[type] = OtlpConfig
    signals: frozenset[Signal] = frozenset(Signal)  # narrowed per instance by config

    def __init__(self, config: OtlpConfig, context: OutputContext) -> None:
        super().__init__(config, context)
        self.signals = frozenset(Signal(name) for name in config.signals)
        self.compression = config.compression or "gzip"
        self.json = config.encoding == "json"
        self.client = HttpClient(config, version=context.version)
        self._channel: grpc.aio.Channel | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self.metrics_encoder: MetricsEncoder | None = None
        self.logs_encoder: LogsEncoder | None = None

    async def start(self) -> None:
        if self.metrics_encoder is not None:
            return
        context = self.context
        machine_id, boot_time_ns = await asyncio.to_thread(read_host_facts, not context.machine_id)
        machine_id = context.machine_id or machine_id
        resource = resource_attributes(
            hostname=context.hostname,
            job=context.job,
            machine_id=machine_id,
            os_type="linux" if sys.platform.startswith("linux") else sys.platform,
            labels=context.agent_labels,
        )
        start_time_ns = boot_time_ns or context.clock()
        self.metrics_encoder = MetricsEncoder(resource, scope_version=context.version, start_time_ns=start_time_ns)
        self.logs_encoder = LogsEncoder(resource, scope_version=context.version)
        if self.config.protocol == "grpc":
            await self._start_grpc()
        else:
            await self.client.start()

    async def _start_grpc(self) -> None:
        config = self.config
        await self.client.read_credentials()  # the client masks them in reasons for both protocols
        self._metadata = self._grpc_metadata()
        target = re.sub(r"^https?://", "", config.target)
        options = [("grpc.primary_user_agent", f"hostwatch/{self.context.version}")]
        if config.target.startswith("https://") or config.tls_ca or config.tls_cert:
            files = await asyncio.to_thread(_read_tls_files, config)
            if config.tls_server_name:
                options.append(("grpc.ssl_target_name_override", config.tls_server_name))
            channel_credentials = grpc.ssl_channel_credentials(*files)
            self._channel = grpc.aio.secure_channel(target, channel_credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)

    def _grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        metadata = [(key.lower(), value) for key, value in self.config.headers.items()]
        if self.client.authorization:
            metadata.append(("authorization", self.client.authorization))
        return tuple(metadata)

    async def export(self, batch: Batch) -> ExportResult:
        if not batch.items:
            return ExportResult.ok()
        if batch.signal is Signal.METRICS:
            assert self.metrics_encoder is not None, "export before start"
            encode = self.metrics_encoder.encode_json if self.json else self.metrics_encoder.encode
            payload = encode(batch.items)  # type: ignore[arg-type]
        elif batch.signal is Signal.TRACES:
            payload = (encode_spans_json if self.json else encode_spans)(batch.items)  # type: ignore[arg-type]
        else:
            assert self.logs_encoder is not None, "export before start"
            encode = self.logs_encoder.encode_json if self.json else self.logs_encoder.encode
            payload = encode(batch.items, self.context.clock())  # type: ignore[arg-type]
        if self._channel is not None:
            return await self._export_grpc(batch.signal, payload)
        return await self._export_http(batch.signal, payload)

    async def _export_http(self, signal: Signal, payload: bytes) -> ExportResult:
        body = await compress_async(payload, self.compression)
        headers = {"Content-Type": "application/json" if self.json else "application/x-protobuf"}
        if self.compression != "none":
            headers["Content-Encoding"] = self.compression
        url = self.config.target + HTTP_PATHS[signal]
        response = await self.client.post(url, body, headers)
        if isinstance(response, ExportResult):
            return response
        kind = response.headers.get("Content-Type", "")
        if 200 <= response.status < 300:
            return self._partial(response.body, json="json" in kind)
        if "protobuf" in kind:
            message = status_message(response.body)
        elif "json" in kind:
            message = status_message(response.body, json=True) or server_message(response.body, self.client.mask)
        else:
            message = server_message(response.body, self.client.mask)
        return self.client.result(response, retry_5xx=False, message=message)

    def _partial(self, body: bytes, *, json: bool) -> ExportResult:
        """A success; a partial one when the server counted rejected items (never retried)."""
        try:
            rejected, message = partial_success(body, json=json) if body else (0, "")
        except (ValueError, msgspec.DecodeError):
            return ExportResult.ok()  # delivered; an unreadable answer body changes nothing
        if rejected > 0 or message:
            reason = shorten(self.client.mask(f"partial success: {message}"))
            return ExportResult.ok(rejected=max(rejected, 0), reason=reason)
        return ExportResult.ok()

    async def _export_grpc(self, signal: Signal, payload: bytes) -> ExportResult:
        assert self._channel is not None
        call = self._channel.unary_unary(GRPC_METHODS[signal])  # no serializers: bytes in, bytes out
        compression = grpc.Compression.Gzip if self.compression == "gzip" else grpc.Compression.NoCompression
        if await self.client.refresh_credentials():  # refused before: the token file may have been rotated
            self._metadata = self._grpc_metadata()
        try:
            answer = await call(
                payload, timeout=float(self.config.timeout), metadata=self._metadata, compression=compression
            )
        except grpc.aio.AioRpcError as exc:
            return self._grpc_result(exc)
        self.client.accepted()
        return self._partial(answer or b"", json=False)

    def _grpc_result(self, exc: grpc.aio.AioRpcError) -> ExportResult:
        code = exc.code()
        details = exc.details() or ""
        reason = shorten(self.client.mask(f"gRPC {code.name}: {details}"))
        status = b""
        for key, value in exc.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                status = value
        delay = retry_delay(status) if status else None
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            self.client.refused()  # as HTTP 401/403: retried for a while, the auth files read again
            return self.client.refusal_result(reason, delay)
        if code in GRPC_RETRYABLE:
            return ExportResult.retry(reason, delay)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            if delay is not None:
                return ExportResult.retry(reason, delay)
            if "larger than max" in details or "too large" in details:
                return ExportResult.too_large(reason)
        return ExportResult.drop(reason)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
        await self.client.close()


def read_host_facts(want_machine_id: bool) -> tuple[str, int]:
    """(machine id or "", boot time in ns or 0), from the files above (blocking: call on a thread)."""
    machine_id = ""
    for path in MACHINE_ID_FILES if want_machine_id else ():
        try:
            machine_id = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if machine_id:
            break
    boot_time_ns = 0
    try:
        with open(PROC_STAT, encoding="ascii") as stat:
            for line in stat:
                if line.startswith("btime "):
                    boot_time_ns = int(line.split()[1]) * 1_000_000_000
                    break
    except (OSError, UnicodeDecodeError, ValueError, IndexError):
        pass
    return machine_id, boot_time_ns


def _read_tls_files(config: OtlpConfig) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(root certificates, private key, certificate chain) for ``grpc.ssl_channel_credentials``."""

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return read(config.tls_ca), read(config.tls_key), read(config.tls_cert)
