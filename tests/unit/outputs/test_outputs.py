"""The three outputs against fake servers: what they send, and how answers map to results.

Real backends (tests/integration/test_outputs_roundtrip.py) show that what is
sent is understood; these fakes show what no real server does on demand:
chosen status codes, Retry-After, partial success, gRPC error details.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gzip
import json

import cramjam
import grpc
import msgspec
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from agent.model import LogRecord, Sample, Signal, labels_from
from agent.plugin import Batch, Duration, ResultKind
from outputs.loki.loki import LokiConfig, LokiOutput
from outputs.otlp import otlp as otlp_module
from outputs.otlp.otlp import OtlpConfig, OtlpOutput
from outputs.remote_write.remote_write import RemoteWriteConfig, RemoteWriteOutput
from tests.support import output_context
from tests.unit.outputs.fakes import closed_port, fake_backend
from tests.unit.outputs.protos import PushRequest, RetryInfo, Status, WriteRequest

T0 = 1_700_000_000_000_000_000
CLOCK = T0 + 5 * 10**9


def context(**extra):
    extra.setdefault("version", "1.2.3")
    extra.setdefault("agent_labels", labels_from({"env": "prod"}))
    extra.setdefault("machine_id", "feedc0de")
    return dataclasses.replace(output_context("out", hostname="host-1", **extra), clock=lambda: CLOCK)


def metrics_batch() -> Batch:
    return Batch(
        Signal.METRICS,
        [
            Sample("node_cpu_seconds_total", 1.5, "counter", labels_from({"cpu": "0", "mode": "idle"}), T0, "s"),
            Sample("node_load1", 0.5, "gauge", (), T0),
        ],
    )


def logs_batch() -> Batch:
    return Batch(
        Signal.LOGS,
        [
            LogRecord(T0, "hello", labels_from({"filename": "/var/log/a.log"}), "INFO"),
            LogRecord(T0 + 1, "world", labels_from({"filename": "/var/log/a.log"}), attributes=labels_from({"k": "v"})),
        ],
    )


async def running(output):
    await output.start()
    return output


# ------------------------------------------------------------------ remote-write


async def test_remote_write_request() -> None:
    async with fake_backend() as backend:
        output = await running(RemoteWriteOutput(RemoteWriteConfig(url=backend.url("/api/v1/write")), context()))
        try:
            result = await output.export(metrics_batch())
        finally:
            await output.close()
    assert result.kind is ResultKind.OK and result.rejected == 0
    [seen] = backend.requests
    assert seen.path == "/api/v1/write"
    assert seen.headers["Content-Encoding"] == "snappy"
    assert seen.headers["Content-Type"] == "application/x-protobuf"
    assert seen.headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert seen.headers["User-Agent"] == "hostwatch/1.2.3"
    request = WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(seen.body)))
    labels = [{label.name: label.value for label in ts.labels} for ts in request.timeseries]
    assert labels == [
        {
            "__name__": "node_cpu_seconds_total",
            "cpu": "0",
            "mode": "idle",
            "env": "prod",
            "instance": "host-1",
            "job": "hostwatch",
        },
        {"__name__": "node_load1", "env": "prod", "instance": "host-1", "job": "hostwatch"},
    ]
    assert [(ts.samples[0].timestamp, ts.samples[0].value) for ts in request.timeseries] == [
        (T0 // 10**6, 1.5),
        (T0 // 10**6, 0.5),
    ]


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "after"),
    [
        (400, "out of order sample", {}, ResultKind.DROP, None),
        (413, "too big", {}, ResultKind.TOO_LARGE, None),
        (429, "slow down", {"Retry-After": "12"}, ResultKind.RETRY, 12.0),
        (500, "duplicate label names", {}, ResultKind.RETRY, None),  # remote-write retries every 5xx
        (503, "", {}, ResultKind.RETRY, None),
    ],
)
async def test_remote_write_status_mapping(status, body, headers, kind, after) -> None:
    async with fake_backend() as backend:
        backend.reply(status, body, headers)
        output = await running(RemoteWriteOutput(RemoteWriteConfig(url=backend.url()), context()))
        try:
            result = await output.export(metrics_batch())
        finally:
            await output.close()
    assert result.kind is kind and result.after == after
    assert result.reason == (f"HTTP {status}: {body}" if body else f"HTTP {status}")


async def test_remote_write_counts_refused_series_as_rejected() -> None:
    bad = Sample("m", 1, "gauge", labels_from({"a.b": "1", "a_b": "2"}), T0)
    batch = Batch(Signal.METRICS, [*metrics_batch().items, bad])
    async with fake_backend() as backend:
        output = await running(RemoteWriteOutput(RemoteWriteConfig(url=backend.url()), context()))
        try:
            result = await output.export(batch)
            only_bad = await output.export(Batch(Signal.METRICS, [bad]))
        finally:
            await output.close()
    assert result.kind is ResultKind.OK and result.rejected == 1 and "a_b" in result.reason
    assert only_bad.kind is ResultKind.OK and only_bad.rejected == 1
    assert len(backend.requests) == 1  # nothing left to send: no request


async def test_remote_write_connection_refused_is_retried() -> None:
    config = RemoteWriteConfig(url=f"http://127.0.0.1:{closed_port()}/api/v1/write")
    output = await running(RemoteWriteOutput(config, context()))
    try:
        assert (await output.export(metrics_batch())).kind is ResultKind.RETRY
    finally:
        await output.close()


def test_remote_write_config_checks() -> None:
    with pytest.raises(msgspec.ValidationError, match="http:// or https://"):
        msgspec.convert({"url": "localhost:9090"}, RemoteWriteConfig)
    with pytest.raises(msgspec.ValidationError, match="always snappy"):
        msgspec.convert({"url": "http://x/api/v1/write", "compression": "gzip"}, RemoteWriteConfig)


# ------------------------------------------------------------------ Loki


async def test_loki_protobuf_request_with_tenant() -> None:
    async with fake_backend() as backend:
        output = await running(LokiOutput(LokiConfig(url=backend.url("/loki/api/v1/push"), tenant="team-a"), context()))
        try:
            result = await output.export(logs_batch())
        finally:
            await output.close()
    assert result.kind is ResultKind.OK
    [seen] = backend.requests
    assert seen.headers["X-Scope-OrgID"] == "team-a"
    assert (seen.headers["Content-Type"], seen.headers["Content-Encoding"]) == ("application/x-protobuf", "snappy")
    [stream] = PushRequest.FromString(bytes(cramjam.snappy.decompress_raw(seen.body))).streams
    assert stream.labels == '{env="prod", filename="/var/log/a.log", instance="host-1", job="hostwatch"}'
    assert [e.line for e in stream.entries] == ["hello", "world"]
    assert [{m.name: m.value for m in e.structuredMetadata} for e in stream.entries] == [{"level": "INFO"}, {"k": "v"}]


@pytest.mark.parametrize(("compression", "encoding"), [("", "gzip"), ("none", None)])
async def test_loki_json_request(compression, encoding) -> None:
    async with fake_backend() as backend:
        config = LokiConfig(url=backend.url(), encoding="json", compression=compression)
        output = await running(LokiOutput(config, context()))
        try:
            assert (await output.export(logs_batch())).kind is ResultKind.OK
        finally:
            await output.close()
    [seen] = backend.requests
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers.get("Content-Encoding") == encoding
    assert "X-Scope-OrgID" not in seen.headers
    body = json.loads(gzip.decompress(seen.body) if encoding else seen.body)
    [stream] = body["streams"]
    assert stream["stream"]["filename"] == "/var/log/a.log"
    assert stream["values"] == [[str(T0), "hello", {"level": "INFO"}], [str(T0 + 1), "world", {"k": "v"}]]


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, ResultKind.DROP), (429, ResultKind.RETRY), (500, ResultKind.RETRY), (413, ResultKind.TOO_LARGE)],
)
async def test_loki_status_mapping(status, kind) -> None:
    async with fake_backend() as backend:
        backend.reply(status, "entry too far behind")
        output = await running(LokiOutput(LokiConfig(url=backend.url()), context()))
        try:
            result = await output.export(logs_batch())
        finally:
            await output.close()
    assert result.kind is kind and result.reason == f"HTTP {status}: entry too far behind"


def test_loki_config_checks() -> None:
    with pytest.raises(msgspec.ValidationError, match="always snappy"):
        msgspec.convert({"url": "http://x", "compression": "gzip"}, LokiConfig)
    with pytest.raises(msgspec.ValidationError, match="gzip"):
        msgspec.convert({"url": "http://x", "encoding": "json", "compression": "snappy"}, LokiConfig)


# ------------------------------------------------------------------ OTLP over HTTP


async def test_otlp_http_metrics_and_logs() -> None:
    async with fake_backend() as backend:
        output = await running(OtlpOutput(OtlpConfig(endpoint=backend.url("/otlp/")), context()))
        try:
            assert (await output.export(metrics_batch())).kind is ResultKind.OK
            assert (await output.export(logs_batch())).kind is ResultKind.OK
        finally:
            await output.close()
    metrics_seen, logs_seen = backend.requests
    assert (metrics_seen.path, logs_seen.path) == ("/otlp/v1/metrics", "/otlp/v1/logs")
    for seen in backend.requests:
        assert seen.headers["Content-Type"] == "application/x-protobuf"
        assert seen.headers["Content-Encoding"] == "gzip"
    metrics = ExportMetricsServiceRequest.FromString(gzip.decompress(metrics_seen.body))
    resource = {kv.key: kv.value.string_value for kv in metrics.resource_metrics[0].resource.attributes}
    assert resource == {
        "service.name": "hostwatch",
        "service.instance.id": "host-1",
        "host.name": "host-1",
        "host.id": "feedc0de",
        "os.type": "linux",
        "env": "prod",
    }
    [cpu, load] = metrics.resource_metrics[0].scope_metrics[0].metrics
    assert 0 < cpu.sum.data_points[0].start_time_unix_nano <= T0  # see test_otlp_counter_start_time_is_the_boot_time
    assert cpu.sum.is_monotonic and load.gauge.data_points[0].as_double == 0.5
    logs = ExportLogsServiceRequest.FromString(gzip.decompress(logs_seen.body))
    records = logs.resource_logs[0].scope_logs[0].log_records
    assert [r.body.string_value for r in records] == ["hello", "world"]
    assert all(r.observed_time_unix_nano == CLOCK for r in records)


@pytest.mark.parametrize("stat", ["cpu  1 2 3\nbtime 1600000000\nprocesses 5\n", None, "btime x\n"])
async def test_otlp_counter_start_time_is_the_boot_time(tmp_path, monkeypatch, stat) -> None:
    """Boot time when /proc/stat tells it (stable across agent restarts), else when the output started."""
    if stat is not None:
        (tmp_path / "stat").write_text(stat)
    monkeypatch.setattr(otlp_module, "PROC_STAT", str(tmp_path / "stat"))
    later = Sample("c_total", 2.0, "counter", (), CLOCK + 10**9)
    async with fake_backend() as backend:
        output = await running(OtlpOutput(OtlpConfig(endpoint=backend.url()), context()))
        try:
            await output.export(Batch(Signal.METRICS, [later]))
        finally:
            await output.close()
    request = ExportMetricsServiceRequest.FromString(gzip.decompress(backend.requests[0].body))
    point = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    expected = 1_600_000_000 * 10**9 if stat and "btime 16" in stat else CLOCK
    assert (point.start_time_unix_nano, point.time_unix_nano) == (expected, CLOCK + 10**9)


async def test_otlp_json_encoding_without_compression() -> None:
    async with fake_backend() as backend:
        config = OtlpConfig(endpoint=backend.url(), encoding="json", compression="none")
        output = await running(OtlpOutput(config, context()))
        try:
            assert (await output.export(metrics_batch())).kind is ResultKind.OK
        finally:
            await output.close()
    [seen] = backend.requests
    assert seen.headers["Content-Type"] == "application/json" and "Content-Encoding" not in seen.headers
    names = [m["name"] for m in json.loads(seen.body)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]]
    assert names == ["node_cpu_seconds_total", "node_load1"]


async def test_otlp_partial_success_is_ok_with_rejected_count() -> None:
    answer = ExportMetricsServiceResponse()
    answer.partial_success.rejected_data_points = 1
    answer.partial_success.error_message = "metric node_load1 has no unit"
    async with fake_backend() as backend:
        backend.reply(200, answer.SerializeToString(), {"Content-Type": "application/x-protobuf"})
        backend.reply(200, b'{"partialSuccess": {"rejectedDataPoints": "2"}}', {"Content-Type": "application/json"})
        backend.reply(200, b"", {"Content-Type": "application/x-protobuf"})
        output = await running(OtlpOutput(OtlpConfig(endpoint=backend.url()), context()))
        try:
            first = await output.export(metrics_batch())
            second = await output.export(metrics_batch())
            third = await output.export(metrics_batch())
        finally:
            await output.close()
    assert (first.kind, first.rejected, first.reason) == (
        ResultKind.OK,
        1,
        "partial success: metric node_load1 has no unit",
    )
    assert (second.kind, second.rejected) == (ResultKind.OK, 2)
    assert (third.kind, third.rejected) == (ResultKind.OK, 0)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ResultKind.DROP),
        (413, ResultKind.TOO_LARGE),
        (429, ResultKind.RETRY),
        (500, ResultKind.DROP),  # OTLP/HTTP retries only 429, 502, 503, 504
        (502, ResultKind.RETRY),
        (503, ResultKind.RETRY),
        (504, ResultKind.RETRY),
    ],
)
async def test_otlp_http_status_mapping_reads_the_status_message(status, kind) -> None:
    body = Status(code=3, message="bad data point").SerializeToString()
    async with fake_backend() as backend:
        backend.reply(status, body, {"Content-Type": "application/x-protobuf", "Retry-After": "3"})
        output = await running(OtlpOutput(OtlpConfig(endpoint=backend.url()), context()))
        try:
            result = await output.export(logs_batch())
        finally:
            await output.close()
    assert result.kind is kind and result.reason == f"HTTP {status}: bad data point"
    assert result.after == (3.0 if kind is ResultKind.RETRY else None)


async def test_otlp_plain_text_errors_are_quoted() -> None:
    async with fake_backend() as backend:
        backend.reply(400, "unsupported path", {"Content-Type": "text/plain"})
        output = await running(OtlpOutput(OtlpConfig(endpoint=backend.url()), context()))
        try:
            result = await output.export(metrics_batch())
        finally:
            await output.close()
    assert result.kind is ResultKind.DROP and result.reason == "HTTP 400: unsupported path"


async def test_otlp_reads_the_machine_id_when_the_context_has_none(tmp_path, monkeypatch) -> None:
    (tmp_path / "machine-id").write_text("abc123\n")
    monkeypatch.setattr(otlp_module, "MACHINE_ID_FILES", (str(tmp_path / "missing"), str(tmp_path / "machine-id")))
    async with fake_backend() as backend:
        output = await running(OtlpOutput(OtlpConfig(endpoint=backend.url()), context(machine_id="")))
        try:
            await output.export(metrics_batch())
        finally:
            await output.close()
    request = ExportMetricsServiceRequest.FromString(gzip.decompress(backend.requests[0].body))
    resource = {kv.key: kv.value.string_value for kv in request.resource_metrics[0].resource.attributes}
    assert resource["host.id"] == "abc123"


def test_otlp_signals_narrow_what_the_instance_takes() -> None:
    output = OtlpOutput(OtlpConfig(signals=["metrics"]), context())
    assert output.signals == frozenset({Signal.METRICS})
    assert OtlpOutput(OtlpConfig(), context()).signals == frozenset({Signal.METRICS, Signal.LOGS, Signal.TRACES})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"protocol": "grpc", "encoding": "json"}, "http only"),
        ({"compression": "snappy"}, "gzip"),
        ({"protocol": "grpc", "tls_insecure_skip_verify": True}, "not available with grpc"),
        ({"endpoint": "127.0.0.1:4318"}, "http:// or https://"),
        ({"protocol": "grpc", "endpoint": "http://h:4317/v1/metrics"}, "HOST:PORT"),
        ({"signals": []}, "signals"),
    ],
)
def test_otlp_config_checks(table, message) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(table, OtlpConfig)


# ------------------------------------------------------------------ OTLP over gRPC


class FakeCollector:
    """A grpc.aio server answering every Export with the next scripted (code, details, status) or success."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes]] = []
        self.script: list[tuple[grpc.StatusCode, str, bytes] | bytes] = []

    async def handle(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls.append((method, dict(context.invocation_metadata()), request))
        step = self.script.pop(0) if self.script else b""
        if isinstance(step, float):  # answer too late
            await asyncio.sleep(step)
            return b""
        if isinstance(step, bytes):
            return step
        code, details, status = step
        trailing = (("grpc-status-details-bin", status),) if status else ()
        await context.abort(code, details, trailing_metadata=trailing)
        raise AssertionError("unreachable")


@pytest.fixture
async def fake_collector():
    collector = FakeCollector()

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(functools.partial(collector.handle, details.method))

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    collector.endpoint = f"127.0.0.1:{port}"
    yield collector
    await server.stop(None)


async def test_otlp_grpc_sends_both_signals_with_metadata(fake_collector, tmp_path) -> None:
    (tmp_path / "token").write_text("grpc-token")
    config = OtlpConfig(
        endpoint=f"http://{fake_collector.endpoint}",
        protocol="grpc",
        headers={"X-Tenant": "t1"},
        bearer_token_file=str(tmp_path / "token"),
    )
    output = await running(OtlpOutput(config, context()))
    try:
        assert (await output.export(metrics_batch())).kind is ResultKind.OK
        assert (await output.export(logs_batch())).kind is ResultKind.OK
    finally:
        await output.close()
        await output.close()
    (metrics_method, metadata, metrics_body), (logs_method, _, logs_body) = fake_collector.calls
    assert metrics_method == "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
    assert logs_method == "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
    assert metadata["authorization"] == "Bearer grpc-token" and metadata["x-tenant"] == "t1"
    assert metadata["user-agent"].startswith("hostwatch/1.2.3")
    metrics = ExportMetricsServiceRequest.FromString(metrics_body)
    assert [m.name for m in metrics.resource_metrics[0].scope_metrics[0].metrics] == [
        "node_cpu_seconds_total",
        "node_load1",
    ]
    logs = ExportLogsServiceRequest.FromString(logs_body)
    assert [r.body.string_value for r in logs.resource_logs[0].scope_logs[0].log_records] == ["hello", "world"]


def retry_info_status(seconds: int) -> bytes:
    info = RetryInfo()
    info.retry_delay.seconds = seconds
    status = Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="busy")
    status.details.add().Pack(info)
    return status.SerializeToString()


@pytest.mark.parametrize(
    ("step", "kind", "after"),
    [
        ((grpc.StatusCode.UNAVAILABLE, "restarting", b""), ResultKind.RETRY, None),
        ((grpc.StatusCode.ABORTED, "aborted", b""), ResultKind.RETRY, None),
        ((grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", retry_info_status(6)), ResultKind.RETRY, 6.0),
        ((grpc.StatusCode.RESOURCE_EXHAUSTED, "quota exceeded", b""), ResultKind.DROP, None),
        ((grpc.StatusCode.INVALID_ARGUMENT, "bad point", b""), ResultKind.DROP, None),
        ((grpc.StatusCode.UNAUTHENTICATED, "who are you", b""), ResultKind.RETRY, None),
        ((grpc.StatusCode.PERMISSION_DENIED, "not yours", b""), ResultKind.RETRY, None),
    ],
)
async def test_otlp_grpc_status_mapping(fake_collector, step, kind, after) -> None:
    fake_collector.script.append(step)
    output = await running(OtlpOutput(OtlpConfig(endpoint=fake_collector.endpoint, protocol="grpc"), context()))
    try:
        result = await output.export(metrics_batch())
    finally:
        await output.close()
    assert result.kind is kind and result.after == after
    assert result.reason.startswith(f"gRPC {step[0].name}: {step[1]}")


async def test_otlp_grpc_reads_a_rotated_token_file_after_unauthenticated(fake_collector, tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("old")
    fake_collector.script.append((grpc.StatusCode.UNAUTHENTICATED, "token expired", b""))
    config = OtlpConfig(endpoint=fake_collector.endpoint, protocol="grpc", bearer_token_file=str(token))
    output = await running(OtlpOutput(config, context()))
    try:
        first = await output.export(metrics_batch())
        token.write_text("new")  # a secret manager rotates it
        second = await output.export(metrics_batch())
    finally:
        await output.close()
    assert first.kind is ResultKind.RETRY and "credentials refused" in first.reason
    assert second.kind is ResultKind.OK
    assert [metadata["authorization"] for _, metadata, _ in fake_collector.calls] == ["Bearer old", "Bearer new"]


async def test_otlp_grpc_partial_success(fake_collector) -> None:
    answer = ExportMetricsServiceResponse()
    answer.partial_success.rejected_data_points = 1
    answer.partial_success.error_message = "dropped one"
    fake_collector.script.append(answer.SerializeToString())
    output = await running(OtlpOutput(OtlpConfig(endpoint=fake_collector.endpoint, protocol="grpc"), context()))
    try:
        result = await output.export(metrics_batch())
    finally:
        await output.close()
    assert (result.kind, result.rejected, result.reason) == (ResultKind.OK, 1, "partial success: dropped one")


async def test_otlp_grpc_unreachable_is_retried() -> None:
    config = OtlpConfig(endpoint=f"127.0.0.1:{closed_port()}", protocol="grpc", timeout=Duration(1))
    output = await running(OtlpOutput(config, context()))
    try:
        result = await output.export(metrics_batch())
    finally:
        await output.close()
    assert result.kind is ResultKind.RETRY and result.reason.startswith("gRPC UNAVAILABLE")


async def test_otlp_grpc_deadline_is_retried(fake_collector) -> None:
    fake_collector.script.append(2.0)
    config = OtlpConfig(endpoint=fake_collector.endpoint, protocol="grpc", timeout=Duration(0.3))
    output = await running(OtlpOutput(config, context()))
    try:
        result = await output.export(metrics_batch())
    finally:
        await output.close()
    assert result.kind is ResultKind.RETRY and result.reason.startswith("gRPC DEADLINE_EXCEEDED")
