"""The OTLP receiver against the official OpenTelemetry Python SDK's exporters, and hand-made bad input.

The receiver runs in-process with a scripted emitter (it acknowledges at once, later, or never, as
an output's buffer would); the engine side of the hand-off is covered by test_traces_signal.py and
the peer tests. What the SDK is told is read from its exporters' own results.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from agent.config import RedactionSection, parse_config
from agent.model import is_stale
from agent.redact import Redactor
from agent.registry import load_registry
from agent.telemetry import Telemetry
from collectors.otlp_receiver.metrics import bound_text, metric_name, translate_metrics
from collectors.otlp_receiver.otlp import OtlpReceiver, OtlpReceiverConfig
from tests.support import collector_context, free_port
from tests.unit.collectors import otlp_app

REGISTRY = load_registry()


class ScriptedEmitter:
    """Takes what the receiver hands on; ``ack`` says whether (and when) it is durable."""

    def __init__(self, ack: str = "now") -> None:
        self.ack = ack  # now | never | block
        self.items: dict[str, list] = {"metrics": [], "logs": [], "traces": []}
        self.flushes: list[bool] = []

    async def _take(self, signal, items, on_durable, flush=False):
        self.flushes.append(flush)
        if self.ack == "block":  # a full buffer with when_full = "block": the call itself waits
            await asyncio.Event().wait()
        self.items[signal] += items
        if self.ack == "now" and on_durable is not None:
            on_durable()

    async def publish(self, samples, *, on_durable=None, flush=False):
        await self._take("metrics", list(samples), on_durable, flush)

    async def logs(self, records, *, on_durable=None, flush=False):
        await self._take("logs", list(records), on_durable, flush)

    async def spans(self, spans, *, on_durable=None, flush=False):
        await self._take("traces", list(spans), on_durable, flush)

    def error(self, error):
        raise AssertionError(error)


class Running:
    def __init__(self, receiver, emitter, task, telemetry, http_port, grpc_port) -> None:
        self.receiver, self.emitter, self.task, self.telemetry = receiver, emitter, task, telemetry
        self.http = f"http://127.0.0.1:{http_port}"
        self.grpc = f"127.0.0.1:{grpc_port}"

    def count(self, name: str, **labels) -> float:
        return self.telemetry.registry.get_sample_value(name, labels) or 0.0


async def start(tmp_path: Path, ack: str = "now", redact: bool = True, **options) -> Running:
    http_port, grpc_port = free_port(), free_port()
    table = {"http_listen": f"127.0.0.1:{http_port}", "grpc_listen": f"127.0.0.1:{grpc_port}", **options}
    config = parse_config({"collectors": {"otlp": [table]}}, environ={}, registry=REGISTRY).collectors[0].config
    telemetry = Telemetry()
    redactor = Redactor.from_config(RedactionSection(), state_dir=tmp_path) if redact else None
    receiver = OtlpReceiver(config, collector_context(tmp_path, telemetry=telemetry, redactor=redactor))
    emitter = ScriptedEmitter(ack)
    task = asyncio.create_task(receiver.run(emitter))
    for _ in range(100):
        if receiver.grpc is not None and receiver.grpc.bound_port:
            break
        await asyncio.sleep(0.02)
    return Running(receiver, emitter, task, telemetry, http_port, grpc_port)


async def stop(running: Running) -> None:
    running.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running.task
    await running.receiver.close()  # idempotent


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    request.add_header("Content-Type", (headers or {}).get("Content-Type", "application/x-protobuf"))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# ------------------------------------------------------------------ translation


def test_metric_names_follow_prometheus_otlp_translation() -> None:
    assert metric_name("http.server.duration", "ms", "histogram", False) == "http_server_duration_milliseconds"
    assert metric_name("http.server.requests", "{request}", "sum", True) == "http_server_requests_total"
    assert metric_name("requests_total", "", "sum", True) == "requests_total"
    assert metric_name("process.cpu.utilization", "1", "gauge", False) == "process_cpu_utilization_ratio"
    assert metric_name("net.io", "By/s", "gauge", False) == "net_io_bytes_per_second"
    assert metric_name("queue.size.bytes", "By", "gauge", False) == "queue_size_bytes"
    assert metric_name("2xx.count", "", "gauge", False) == "_2xx_count"
    assert metric_name("http.server.duration", "ms", "histogram", False, suffixes=False) == "http_server_duration"
    assert [bound_text(v) for v in (0.005, 1000.0, 1e6, 1e-7, math.inf)] == [
        "0.005",
        "1000",
        "1000000",
        "0.0000001",
        "+Inf",
    ]


def test_sdk_metrics_become_samples_with_job_instance_and_target_info() -> None:
    request = encode_metrics(otlp_app.record_metrics())
    out = translate_metrics(request, 1)
    assert out.rejected == 0
    by = {(s.name, tuple((k, v) for k, v in s.labels if k not in ("job", "instance"))): s for s in out.items}
    counter = by[("http_server_requests_total", (("http_route", "/cart"), ("http_status_code", "500")))]
    assert (counter.value, counter.kind) == (1.0, "counter")
    assert dict(counter.labels)["job"] == "acme/shop"
    assert dict(counter.labels)["instance"]  # the SDK's service.instance.id
    up_down = by[("http_server_active_requests", ())]  # non-monotonic sum: a gauge, no _total
    assert (up_down.value, up_down.kind) == (2.0, "gauge")
    gauge = by[("process_cpu_utilization_ratio", (("cpu", "0"),))]
    assert (gauge.value, gauge.kind) == (0.25, "gauge")
    route = (("http_route", "/cart"), ("http_status_code", "500"))
    buckets = {
        dict(s.labels)["le"]: s.value
        for s in out.items
        if s.name == "http_server_duration_milliseconds_bucket" and s.labels[:2] == route
    }
    assert buckets["100"] == 0.0 and buckets["250"] == 1.0 and buckets["+Inf"] == 1.0  # cumulative
    assert list(buckets)[-1] == "+Inf"
    assert by[("http_server_duration_milliseconds_sum", route)].value == 250.0
    assert by[("http_server_duration_milliseconds_count", route)].value == 1.0
    [info] = [s for s in out.items if s.name == "target_info"]
    info_labels = dict(info.labels)
    assert info_labels["deployment_environment"] == "test"
    assert info_labels["telemetry_sdk_language"] == "python"
    assert "service_name" not in info_labels and info_labels["job"] == "acme/shop"


def _request(metric_json: dict) -> ExportMetricsServiceRequest:
    from google.protobuf import json_format

    document = {
        "resourceMetrics": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "app"}}]},
                "scopeMetrics": [{"metrics": [metric_json]}],
            }
        ]
    }
    return json_format.ParseDict(document, ExportMetricsServiceRequest())


def test_summary_delta_exponential_and_no_recorded_value() -> None:
    summary = _request(
        {
            "name": "rpc.latency",
            "unit": "s",
            "summary": {
                "dataPoints": [
                    {
                        "timeUnixNano": "5",
                        "count": "4",
                        "sum": 2.5,
                        "quantileValues": [{"quantile": 0.5, "value": 0.4}, {"quantile": 0.99, "value": 1.2}],
                    }
                ]
            },
        }
    )
    out = translate_metrics(summary, 1)
    got = {(s.name, dict(s.labels).get("quantile")): s.value for s in out.items}
    assert got == {
        ("rpc_latency_seconds", "0.5"): 0.4,
        ("rpc_latency_seconds", "0.99"): 1.2,
        ("rpc_latency_seconds_sum", None): 2.5,
        ("rpc_latency_seconds_count", None): 4.0,
    }
    delta = _request(
        {
            "name": "jobs",
            "sum": {
                "aggregationTemporality": 1,
                "isMonotonic": True,
                "dataPoints": [{"timeUnixNano": "5", "asInt": "3"}, {"timeUnixNano": "6", "flags": 1}],
            },
        }
    )
    out = translate_metrics(delta, 1)
    assert [(s.name, s.kind) for s in out.items] == [("jobs_total", "gauge")] * 2
    assert out.items[0].value == 3.0 and is_stale(out.items[1].value)
    exponential = _request(
        {"name": "size", "exponentialHistogram": {"aggregationTemporality": 2, "dataPoints": [{}, {}]}}
    )
    out = translate_metrics(exponential, 1)
    assert (out.items, out.rejected) == ([], 2)
    assert "exponential histogram" in out.message


def test_hostile_attribute_names_cannot_rename_series() -> None:
    request = _request(
        {
            "name": "g",
            "gauge": {
                "dataPoints": [
                    {
                        "asDouble": 1,
                        "attributes": [
                            {"key": "__name__", "value": {"stringValue": "other"}},
                            {"key": "job", "value": {"stringValue": "spoofed"}},
                            {"key": "a.b", "value": {"stringValue": "1"}},
                            {"key": "a_b", "value": {"stringValue": "2"}},
                        ],
                    }
                ]
            },
        }
    )
    [sample] = translate_metrics(request, 1).items
    assert sample.name == "g"
    assert dict(sample.labels) == {"key__name__": "other", "job": "app", "a_b": "1;2"}


# ------------------------------------------------------------------ the SDK over HTTP and gRPC


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_sdk_exports_succeed_and_arrive_translated_and_redacted(tmp_path, protocol) -> None:
    running = await start(tmp_path)
    try:
        endpoint = running.http if protocol == "http" else f"http://{running.grpc}"
        metric_result, log_results, span_results = await asyncio.to_thread(otlp_app.send, endpoint, protocol)
        assert metric_result is MetricExportResult.SUCCESS
        assert all(r.name == "SUCCESS" for r in log_results) and len(log_results) == 3
        assert span_results == [SpanExportResult.SUCCESS] * 3
        items = running.emitter.items
        assert {s.name for s in items["metrics"]} >= {"http_server_requests_total", "target_info"}
        records = items["logs"]
        assert [r.severity for r in records] == ["WARN"] * 3
        assert records[0].body == "order t 0 failed for card [REDACTED:credit-card]"
        assert dict(records[0].labels) == {"deployment.environment": "test", "service.name": "shop",
                                           "service.namespace": "acme"}  # fmt: skip
        attributes = dict(records[0].attributes)
        assert attributes["order.id"] == "0" and len(attributes["trace_id"]) == 32 and len(attributes["span_id"]) == 16
        assert attributes["telemetry.sdk.language"] == "python"  # resource attributes not labelling the stream
        spans = [SpanProto.FromString(s.span) for s in items["traces"]]
        assert [s.name for s in spans] == ["checkout t 0", "checkout t 1", "checkout t 2"]
        statement = {kv.key: kv.value for kv in spans[0].attributes}["db.statement"].string_value
        assert statement == "SELECT * FROM users WHERE password = '[REDACTED:password]'"
        assert attributes["trace_id"] == spans[0].trace_id.hex()  # the log record links to its span
        assert running.count("hostwatch_otlp_received_items_total", signal="traces") == 3
        assert set(running.emitter.flushes) == {True}  # the SDK waits: every hand-off asks for a seal now
        assert running.count("hostwatch_otlp_requests_total", transport=protocol, signal="logs", result="ok") == 3
    finally:
        await stop(running)


async def test_json_with_hex_ids_and_gzip(tmp_path) -> None:
    running = await start(tmp_path)
    try:
        document = {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": "5b8efff798038103d269b633813fc60c",
                                    "spanId": "eee19b7ec3c1b174",
                                    "name": "GET /",
                                    "kind": 2,
                                    "startTimeUnixNano": "1544712660000000000",
                                    "endTimeUnixNano": "1544712661000000000",
                                }
                            ]
                        }
                    ],
                }
            ]
        }
        body = gzip.compress(json.dumps(document).encode())
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        status, answer_headers, answer = await asyncio.to_thread(post, running.http + "/v1/traces", body, headers)
        assert (status, json.loads(answer)) == (200, {})
        assert answer_headers["Content-Type"].startswith("application/json")
        [span] = [SpanProto.FromString(s.span) for s in running.emitter.items["traces"]]
        assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c" and span.kind == 2
    finally:
        await stop(running)


# ------------------------------------------------------------------ bad input


async def test_malformed_requests_get_400_with_a_clear_message(tmp_path) -> None:
    running = await start(tmp_path)
    try:
        cases = [
            (b"\xff\xff\xff\xff", {}, "not a protobuf ExportLogsServiceRequest"),
            (b"{not json", {"Content-Type": "application/json"}, "not valid JSON"),
            (b'{"resourceLogs": 3}', {"Content-Type": "application/json"}, "not an OTLP/JSON"),
            (
                b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}',
                {"Content-Type": "application/json"},
                "traceId 'xyz' is not hex",
            ),
            (b"not gzip", {"Content-Encoding": "gzip"}, "not valid gzip"),
            (gzip.compress(b"x" * 100)[:20], {"Content-Encoding": "gzip"}, "truncated"),
        ]
        for body, headers, message in cases:
            status, _, answer = await asyncio.to_thread(post, running.http + "/v1/logs", body, headers)
            assert status == 400, (body, status, answer)
            assert message in answer.decode("utf-8", "replace"), (message, answer)
        status, _, _ = await asyncio.to_thread(post, running.http + "/v1/logs", b"x", {"Content-Type": "text/plain"})
        assert status == 415
        status, _, _ = await asyncio.to_thread(post, running.http + "/v1/profiles", b"")
        assert status == 404
        assert running.count("hostwatch_otlp_requests_total", transport="http", signal="logs", result="malformed") == 7
        assert running.emitter.items["logs"] == []
        channel = grpc.aio.insecure_channel(running.grpc)
        call = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\xff\xff\xff\xff", timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not a protobuf" in info.value.details()
        await channel.close()
    finally:
        await stop(running)


async def test_a_50mb_body_and_a_zip_bomb_get_413_and_memory_stays_bounded(tmp_path) -> None:
    running = await start(tmp_path, max_request_bytes="4MiB", max_inflight_bytes="8MiB")
    try:
        huge = b"\x00" * (50 * 1024 * 1024)
        status, _, answer = await asyncio.to_thread(post, running.http + "/v1/metrics", huge)
        assert status == 413 and b"max_request_bytes" in answer
        bomb = gzip.compress(huge)  # 50 KB on the wire, 50 MB inflated
        status, _, answer = await asyncio.to_thread(
            post, running.http + "/v1/metrics", bomb, {"Content-Encoding": "gzip"}
        )
        assert status == 413 and b"inflates to more than" in answer
        assert running.receiver.http.intake.inflight_bytes == 0  # every reservation released
        assert (
            running.count("hostwatch_otlp_requests_total", transport="http", signal="metrics", result="too_large") == 2
        )
        channel = grpc.aio.insecure_channel(running.grpc)
        call = channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\x0a" + b"\x00" * (5 * 1024 * 1024), timeout=10)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await channel.close()
    finally:
        await stop(running)


async def test_partial_success_reports_exponential_histograms(tmp_path) -> None:
    running = await start(tmp_path)
    try:
        request = _request(
            {
                "name": "size",
                "exponentialHistogram": {"aggregationTemporality": 2, "dataPoints": [{"count": "1"}]},
            }
        )
        request.resource_metrics[0].scope_metrics[0].metrics.append(
            _request({"name": "up", "gauge": {"dataPoints": [{"asDouble": 1}]}})
            .resource_metrics[0]
            .scope_metrics[0]
            .metrics[0]
        )
        status, _, answer = await asyncio.to_thread(post, running.http + "/v1/metrics", request.SerializeToString())
        assert status == 200
        partial = ExportMetricsServiceResponse.FromString(answer).partial_success
        assert partial.rejected_data_points == 1 and "exponential histogram" in partial.error_message
        assert [s.name for s in running.emitter.items["metrics"]] == ["up"]
        assert running.count("hostwatch_otlp_refused_items_total", signal="metrics", reason="unsupported") == 1
    finally:
        await stop(running)


@pytest.mark.parametrize("ack", ["never", "block"])
async def test_full_buffers_answer_503_with_retry_after_and_the_sdk_backs_off(tmp_path, ack) -> None:
    running = await start(tmp_path, ack=ack, handoff_timeout="300ms", retry_after="2s")
    try:
        body = ExportLogsServiceRequest().SerializeToString()
        logs = _request({"name": "up", "gauge": {"dataPoints": [{"asDouble": 1}]}}).SerializeToString()
        status, headers, answer = await asyncio.to_thread(post, running.http + "/v1/metrics", logs)
        assert (status, headers["Retry-After"]) == (503, "2"), answer
        assert b"did not take the metrics within 0.3s" in answer
        # an empty request holds nothing, so it needs no buffer
        assert (await asyncio.to_thread(post, running.http + "/v1/logs", body))[0] == 200
        channel = grpc.aio.insecure_channel(running.grpc)
        call = channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(logs, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        metadata = dict(info.value.trailing_metadata())
        assert metadata["google.rpc.retryinfo-bin"] == b"\x0a\x02\x08\x02"  # RetryInfo{retry_delay: 2s}
        assert b"type.googleapis.com/google.rpc.RetryInfo" in metadata["grpc-status-details-bin"]
        await channel.close()
        assert running.count("hostwatch_otlp_refused_items_total", signal="metrics", reason="unavailable") == 2
        assert running.receiver.http.intake.requests == 0
    finally:
        await stop(running)


async def test_a_flood_gets_429_beyond_the_bound_and_the_rest_is_served(tmp_path) -> None:
    running = await start(tmp_path, ack="never", handoff_timeout="2s", max_concurrent_requests=4)
    try:
        body = _request({"name": "up", "gauge": {"dataPoints": [{"asDouble": 1}]}}).SerializeToString()
        results = await asyncio.gather(
            *(asyncio.to_thread(post, running.http + "/v1/metrics", body) for _ in range(12))
        )
        statuses = sorted(status for status, _, _ in results)
        assert statuses.count(429) >= 8 and set(statuses) <= {429, 503}, statuses
        assert all(headers.get("Retry-After") == "5" for status, headers, _ in results if status == 429)
        busy = running.count("hostwatch_otlp_requests_total", transport="http", signal="metrics", result="busy")
        assert busy == statuses.count(429)
        running.emitter.ack = "now"  # the buffers drain: the next request is served
        status, _, _ = await asyncio.to_thread(post, running.http + "/v1/metrics", body)
        assert status == 200
    finally:
        await stop(running)


async def test_signals_option_turns_a_signal_away(tmp_path) -> None:
    running = await start(tmp_path, signals=["metrics"])
    try:
        status, _, answer = await asyncio.to_thread(post, running.http + "/v1/traces", b"")
        assert status == 404 and b"does not take traces" in answer
    finally:
        await stop(running)


def test_config_rejects_no_listener_and_a_bad_address() -> None:
    with pytest.raises(ValueError, match="set at least one"):
        OtlpReceiverConfig(http_listen="", grpc_listen="")
    with pytest.raises(ValueError, match="http_listen: expected HOST:PORT"):
        OtlpReceiverConfig(http_listen="localhost")


async def test_a_replacing_instance_waits_for_the_ports_of_the_one_it_replaces(tmp_path) -> None:
    """A reload starts the new instance while the old one still closes its servers."""
    old = await start(tmp_path / "old")
    table = {"http_listen": old.http.removeprefix("http://"), "grpc_listen": old.grpc}
    config = parse_config({"collectors": {"otlp": [table]}}, environ={}, registry=REGISTRY).collectors[0].config
    new = OtlpReceiver(config, collector_context(tmp_path / "new", telemetry=Telemetry()))
    emitter = ScriptedEmitter()
    task = asyncio.create_task(new.run(emitter))
    await asyncio.sleep(0.5)
    assert not task.done(), task.exception() if task.done() else None
    await stop(old)  # the old instance lets go of the ports
    for _ in range(100):
        if new.grpc is not None and new.grpc.bound_port:
            break
        await asyncio.sleep(0.05)
    body = _request({"name": "up", "gauge": {"dataPoints": [{"asDouble": 1}]}}).SerializeToString()
    status, _, _ = await asyncio.to_thread(post, old.http + "/v1/metrics", body)
    assert status == 200 and [s.name for s in emitter.items["metrics"]] == ["up"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_small_body_of_many_points_is_judged_by_what_it_becomes(tmp_path) -> None:
    """Histogram buckets and gauge points cost ~23 bytes on the wire and ~550 as samples."""
    running = await start(tmp_path, max_request_bytes="8MiB", max_inflight_bytes="16MiB")
    try:
        request = _request({"name": "g", "gauge": {"dataPoints": [{"asDouble": 1}]}})
        points = request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points
        template = points[0]
        for n in range(200_000):
            point = points.add()
            point.CopyFrom(template)
            point.time_unix_nano = n + 1
        body = request.SerializeToString()
        assert len(body) < 8 * 1024 * 1024
        status, _, answer = await asyncio.to_thread(post, running.http + "/v1/metrics", gzip.compress(body),
                                                    {"Content-Encoding": "gzip"})  # fmt: skip
        assert status == 413, answer
        assert b"200002 metrics items" in answer and b"send smaller batches" in answer
        assert running.emitter.items["metrics"] == []
        assert running.receiver.http.intake.inflight_bytes == 0
        channel = grpc.aio.insecure_channel(running.grpc)
        call = channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(body, timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # never retried by SDKs
        assert "send smaller batches" in info.value.details()
        await channel.close()
    finally:
        await stop(running)
