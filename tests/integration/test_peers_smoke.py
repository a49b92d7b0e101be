"""Each peer fixture starts, takes one write in its own protocol and gives it back."""

from __future__ import annotations

import json
import struct
import time
import urllib.request
import uuid

import cramjam
import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

pytestmark = pytest.mark.peers

PROTOBUF = {"Content-Type": "application/x-protobuf"}
SCOPE = InstrumentationScope(name="hostwatch.smoke", version="1")


# --- a minimal remote-write 1.0 encoder (prometheus.WriteRequest), wire format by hand ---


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def remote_write_body(labels: dict[str, str], value: float, ts_ms: int) -> bytes:
    encoded_labels = b"".join(
        _field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in sorted(labels.items())
    )
    sample = _varint(1 << 3 | 1) + struct.pack("<d", value) + _varint(2 << 3) + _varint(ts_ms)
    series = encoded_labels + _field(2, sample)
    return bytes(cramjam.snappy.compress_raw(_field(1, series)))


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def remote_write(url: str, labels: dict[str, str], value: float, ts_ms: int) -> None:
    headers = {
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
    assert post(url, remote_write_body(labels, value, ts_ms), headers) in (200, 204)


def otlp_gauge(name: str, run: str, value: float, ts_ns: int) -> metrics_service_pb2.ExportMetricsServiceRequest:
    point = NumberDataPoint(
        time_unix_nano=ts_ns, as_double=value, attributes=[KeyValue(key="run", value=AnyValue(string_value=run))]
    )
    metric = Metric(name=name, gauge=Gauge(data_points=[point]))
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="hostwatch-smoke"))])
    return metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(resource=resource, scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=[metric])])
        ]
    )


def otlp_log(body: str, ts_ns: int) -> logs_service_pb2.ExportLogsServiceRequest:
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="hostwatch-smoke"))])
    record = LogRecord(time_unix_nano=ts_ns, severity_text="INFO", body=AnyValue(string_value=body))
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=[record])])]
    )


def fresh_value() -> float:
    """A value that differs per run and that VictoriaMetrics (12 significant digits) keeps exactly."""
    return (time.time_ns() // 1000) % 100_000 / 4


# --- the tests ---


@pytest.mark.parametrize("backend", ["prometheus", "victoria_metrics"])
def test_remote_write_is_queryable(backend: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue(backend)
    run, value, ts_ms = uuid.uuid4().hex, fresh_value(), int(time.time() * 1000)
    remote_write(server.remote_write_url, {"__name__": "hostwatch_smoke", "run": run}, value, ts_ms)

    [series] = server.wait_for(f'hostwatch_smoke{{run="{run}"}}[5m]')
    assert series.labels == {"__name__": "hostwatch_smoke", "run": run}
    assert series.points == [(ts_ms / 1000, value)]


def test_victoria_metrics_otlp_metrics(victoria_metrics_otlp) -> None:
    run, value, ts_ns = uuid.uuid4().hex, fresh_value(), time.time_ns() // 1_000_000 * 1_000_000
    message = otlp_gauge("hostwatch_smoke", run, value, ts_ns)
    assert post(victoria_metrics_otlp.otlp_metrics_url, message.SerializeToString(), PROTOBUF) in (200, 204)

    [series] = victoria_metrics_otlp.wait_for(f'hostwatch_smoke{{run="{run}"}}[5m]')
    assert series.labels["service.name"] == "hostwatch-smoke"
    assert [(round(t * 1000), v) for t, v in series.points] == [(ts_ns // 1_000_000, value)]
    [raw] = victoria_metrics_otlp.export(f'{{run="{run}"}}')
    assert raw["timestamps"] == [ts_ns // 1_000_000]


def test_victoria_logs_loki_json_push(victoria_logs) -> None:
    run, ts_ns = uuid.uuid4().hex, time.time_ns()
    push = {"streams": [{"stream": {"job": "smoke", "run": run}, "values": [[str(ts_ns), f"hello {run}"]]}]}
    status = post(victoria_logs.loki_push_url, json.dumps(push).encode(), {"Content-Type": "application/json"})
    assert status in (200, 204)

    [row] = victoria_logs.wait_for(f'run:="{run}"')
    assert row["_msg"] == f"hello {run}"
    assert row["job"] == "smoke"
    assert row["_stream"] == f'{{job="smoke",run="{run}"}}'


def test_victoria_logs_otlp_logs(victoria_logs) -> None:
    body = f"otlp {uuid.uuid4().hex}"
    message = otlp_log(body, time.time_ns())
    assert post(victoria_logs.otlp_logs_url, message.SerializeToString(), PROTOBUF) == 200

    [row] = victoria_logs.wait_for(f'"{body}"')
    assert row["_msg"] == body
    assert row["service.name"] == "hostwatch-smoke"


def test_otelcol_http_and_grpc(otelcol) -> None:
    run, value, ts_ns = uuid.uuid4().hex, fresh_value(), time.time_ns()
    sent = otlp_gauge("hostwatch_smoke", run, value, ts_ns)
    assert post(f"{otelcol.http_url}/v1/metrics", sent.SerializeToString(), PROTOBUF) == 200
    # no queue in the exporter: the collector answered after the capture server had it
    assert otelcol.requests("metrics") == [sent]

    body = f"grpc {run}"
    with grpc.insecure_channel(otelcol.grpc_endpoint) as channel:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(otlp_log(body, ts_ns), timeout=10)
    [got_logs] = otelcol.requests("logs")
    [record] = got_logs.resource_logs[0].scope_logs[0].log_records
    assert record.body.string_value == body
    assert record.time_unix_nano == ts_ns
