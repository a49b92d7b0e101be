"""Golden payloads of the OTLP encoders, decoded with opentelemetry-proto."""

from __future__ import annotations

import math

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from agent.model import LogRecord, Sample, labels_from
from outputs.otlp.answers import partial_success, retry_delay, status_message
from outputs.otlp.encode import LogsEncoder, MetricsEncoder, resource_attributes
from tests.unit.outputs.protos import RetryInfo, Status

T0 = 1_700_000_000_000_000_000
START = T0 - 60 * 10**9
RESOURCE = resource_attributes(
    hostname="host-1", job="hostwatch", machine_id="0123abcd", os_type="linux", labels=labels_from({"env": "prod"})
)


def attrs(key_values) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in key_values}


def samples() -> list[Sample]:
    return [
        Sample("node_cpu_seconds_total", 10.5, "counter", labels_from({"cpu": "0", "mode": "idle"}), T0, "s"),
        Sample("node_memory_MemAvailable_bytes", 2048.0, "gauge", (), T0, "By"),
        Sample("node_cpu_seconds_total", 3.25, "counter", labels_from({"cpu": "0", "mode": "user"}), T0, "s"),
        Sample("node_load1", 0.5, "gauge", (), T0 + 1),
    ]


def test_resource_attributes_follow_semantic_conventions() -> None:
    assert dict(RESOURCE) == {
        "service.name": "hostwatch",
        "service.instance.id": "host-1",
        "host.name": "host-1",
        "host.id": "0123abcd",
        "os.type": "linux",
        "env": "prod",
    }
    without_id = resource_attributes(hostname="h", job="j", machine_id="", os_type="linux", labels=())
    assert "host.id" not in dict(without_id)


def test_metrics_protobuf() -> None:
    payload = MetricsEncoder(RESOURCE, scope_version="1.2.3", start_time_ns=START).encode(samples())
    request = ExportMetricsServiceRequest.FromString(payload)
    [resource_metrics] = request.resource_metrics
    assert attrs(resource_metrics.resource.attributes) == dict(RESOURCE)
    [scope_metrics] = resource_metrics.scope_metrics
    assert (scope_metrics.scope.name, scope_metrics.scope.version) == ("hostwatch", "1.2.3")
    metrics = {m.name: m for m in scope_metrics.metrics}
    assert list(metrics) == ["node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_load1"]

    cpu = metrics["node_cpu_seconds_total"]
    assert cpu.WhichOneof("data") == "sum" and cpu.unit == "s"
    assert cpu.sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    assert cpu.sum.is_monotonic
    points = [(attrs(p.attributes), p.start_time_unix_nano, p.time_unix_nano, p.as_double) for p in cpu.sum.data_points]
    assert points == [
        ({"cpu": "0", "mode": "idle"}, START, T0, 10.5),
        ({"cpu": "0", "mode": "user"}, START, T0, 3.25),
    ]

    memory = metrics["node_memory_MemAvailable_bytes"]
    assert memory.WhichOneof("data") == "gauge" and memory.unit == "By"
    [point] = memory.gauge.data_points
    assert (point.time_unix_nano, point.as_double, point.start_time_unix_nano, len(point.attributes)) == (
        T0,
        2048.0,
        0,
        0,
    )
    assert metrics["node_load1"].unit == "" and metrics["node_load1"].gauge.data_points[0].time_unix_nano == T0 + 1


def test_a_counter_older_than_the_start_time_starts_at_its_own_time() -> None:
    sample = Sample("c_total", 1, "counter", (), START - 5)
    payload = MetricsEncoder(RESOURCE, start_time_ns=START).encode([sample])
    point = ExportMetricsServiceRequest.FromString(payload).resource_metrics[0].scope_metrics[0].metrics[0]
    assert point.sum.data_points[0].start_time_unix_nano == START - 5


def test_same_name_with_two_kinds_or_units_stays_apart() -> None:
    batch = [Sample("x", 1, "gauge", (), T0), Sample("x", 2, "counter", (), T0), Sample("x", 3, "gauge", (), T0, "s")]
    payload = MetricsEncoder(RESOURCE).encode(batch)
    metrics = ExportMetricsServiceRequest.FromString(payload).resource_metrics[0].scope_metrics[0].metrics
    assert [(m.name, m.WhichOneof("data"), m.unit) for m in metrics] == [
        ("x", "gauge", ""),
        ("x", "sum", ""),
        ("x", "gauge", "s"),
    ]


def test_metrics_json_decodes_to_the_same_request() -> None:
    encoder = MetricsEncoder(RESOURCE, scope_version="1.2.3", start_time_ns=START)
    from_json = json_format.Parse(encoder.encode_json(samples()), ExportMetricsServiceRequest())
    assert from_json == ExportMetricsServiceRequest.FromString(encoder.encode(samples()))


def test_non_finite_values() -> None:
    batch = [Sample(f"m{i}", v, "gauge", (), T0) for i, v in enumerate([math.nan, math.inf, -math.inf])]
    encoder = MetricsEncoder(RESOURCE)
    for request in (
        ExportMetricsServiceRequest.FromString(encoder.encode(batch)),
        json_format.Parse(encoder.encode_json(batch), ExportMetricsServiceRequest()),
    ):
        values = [m.gauge.data_points[0].as_double for m in request.resource_metrics[0].scope_metrics[0].metrics]
        assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf]


def test_empty_batch_encodes_nothing() -> None:
    assert MetricsEncoder(RESOURCE).encode([]) == b""
    assert LogsEncoder(RESOURCE).encode([], T0) == b""


def log_records() -> list[LogRecord]:
    app = labels_from({"log.file.path": "/var/log/app.log", "job": "app"})
    return [
        LogRecord(T0, "started", app, "INFO"),
        LogRecord(T0 + 1, "db down", labels_from({"log.file.path": "/var/log/db.log"}), "ERROR", severity_number=0),
        LogRecord(T0 + 2, "custom", app, "weird", labels_from({"trace_id": "abc", "user": "u1"}), severity_number=11),
        LogRecord(T0 + 3, "no severity", app),
    ]


def test_logs_protobuf() -> None:
    observed = T0 + 10**9
    payload = LogsEncoder(RESOURCE, scope_version="1.2.3").encode(log_records(), observed)
    request = ExportLogsServiceRequest.FromString(payload)
    assert len(request.resource_logs) == 2  # one per label set
    by_file = {attrs(rl.resource.attributes)["log.file.path"]: rl for rl in request.resource_logs}
    app = by_file["/var/log/app.log"]
    assert attrs(app.resource.attributes) == {**dict(RESOURCE), "log.file.path": "/var/log/app.log", "job": "app"}
    [scope_logs] = app.scope_logs
    assert (scope_logs.scope.name, scope_logs.scope.version) == ("hostwatch", "1.2.3")
    got = [
        (
            r.time_unix_nano,
            r.observed_time_unix_nano,
            r.body.string_value,
            r.severity_text,
            r.severity_number,
            attrs(r.attributes),
        )
        for r in scope_logs.log_records
    ]
    assert got == [
        (T0, observed, "started", "INFO", 9, {}),
        (T0 + 2, observed, "custom", "weird", 11, {"trace_id": "abc", "user": "u1"}),
        (T0 + 3, observed, "no severity", "", 0, {}),
    ]
    db = by_file["/var/log/db.log"].scope_logs[0].log_records[0]
    assert (db.body.string_value, db.severity_text, db.severity_number) == ("db down", "ERROR", 17)


def test_logs_json_decodes_to_the_same_request() -> None:
    encoder = LogsEncoder(RESOURCE, scope_version="1.2.3")
    from_json = json_format.Parse(encoder.encode_json(log_records(), T0), ExportLogsServiceRequest())
    assert from_json == ExportLogsServiceRequest.FromString(encoder.encode(log_records(), T0))


# ------------------------------------------------------------------ responses


def test_partial_success_protobuf_and_json() -> None:
    metrics = ExportMetricsServiceResponse()
    metrics.partial_success.rejected_data_points = 7
    metrics.partial_success.error_message = "7 points had no name"
    assert partial_success(metrics.SerializeToString()) == (7, "7 points had no name")
    assert partial_success(json_format.MessageToJson(metrics).encode(), json=True) == (7, "7 points had no name")
    logs = ExportLogsServiceResponse()
    logs.partial_success.rejected_log_records = 2
    assert partial_success(logs.SerializeToString()) == (2, "")
    assert partial_success(json_format.MessageToJson(logs).encode(), json=True) == (2, "")
    assert partial_success(ExportMetricsServiceResponse().SerializeToString()) == (0, "")
    assert partial_success(b"{}", json=True) == (0, "")
    with pytest.raises(ValueError):
        partial_success(b"\x0a\x05\x08")  # truncated


def test_status_message_of_an_error_body() -> None:
    status = Status(code=3, message="invalid metric name")
    assert status_message(status.SerializeToString()) == "invalid metric name"
    assert status_message(b'{"code": 3, "message": "bad json"}', json=True) == "bad json"
    assert status_message(b"\xff\xff") == ""


def test_retry_delay_from_grpc_status_details() -> None:
    info = RetryInfo()
    info.retry_delay.seconds, info.retry_delay.nanos = 4, 250_000_000
    status = Status(code=8, message="slow down")
    status.details.add().Pack(info)
    assert retry_delay(status.SerializeToString()) == 4.25
    assert retry_delay(Status(code=8).SerializeToString()) is None
    assert retry_delay(b"\xff") is None
