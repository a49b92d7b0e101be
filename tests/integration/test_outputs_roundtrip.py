"""The push outputs against the real backends: what is sent is read back through their own APIs.

Each test starts an empty server (tests/peers/fixtures_backends.py), exports
batches through the output class exactly as the engine does (start, export,
close) and reads the data back by name, labels and value.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest

from agent.model import LogRecord, Sample, Signal, labels_from
from agent.plugin import Batch, ResultKind
from outputs.loki.loki import LokiConfig, LokiOutput
from outputs.otlp.otlp import OtlpConfig, OtlpOutput
from outputs.remote_write.remote_write import RemoteWriteConfig, RemoteWriteOutput
from tests.support import output_context

pytestmark = pytest.mark.peers

HOST = "rt-host"


def context():
    ctx = output_context("roundtrip", hostname=HOST, version="0.0.1", agent_labels=labels_from({"env": "test"}))
    return dataclasses.replace(ctx, machine_id="0123456789abcdef")


async def export(output, *batches: Batch):
    await output.start()
    try:
        return [await output.export(batch) for batch in batches]
    finally:
        await output.close()


def now_ms() -> int:
    """Now, whole milliseconds (as nanoseconds): every backend here keeps milliseconds exactly."""
    return time.time_ns() // 1_000_000 * 1_000_000


async def read_back(server, promql: str, t: int):
    """Series of ``promql`` once queryable, read at ``t`` + 1 s so the newest sample is in range."""
    await server.wait_for_async(promql)
    return await server.query_async(promql, at=t / 1e9 + 1)


def metric_samples(run: str, t: int) -> list[Sample]:
    labels = labels_from({"run": run, "cpu": "0", "mode": "idle"})
    return [
        Sample("hostwatch_rt_seconds_total", 10.5, "counter", labels, t - 2_000_000_000, "s"),
        Sample("hostwatch_rt_seconds_total", 11.25, "counter", labels, t - 1_000_000_000, "s"),
        Sample("hostwatch_rt_seconds_total", 12.75, "counter", labels, t, "s"),
        Sample("hostwatch_rt_bytes", 4096.0, "gauge", labels_from({"run": run, "k8s.pod": "web-1"}), t, "By"),
    ]


# ------------------------------------------------------------------ remote-write


@pytest.mark.parametrize("backend", ["prometheus", "victoria_metrics"])
async def test_remote_write_round_trip(backend: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue(backend)
    run, t = uuid.uuid4().hex, now_ms()
    output = RemoteWriteOutput(RemoteWriteConfig(url=server.remote_write_url), context())
    [result] = await export(output, Batch(Signal.METRICS, metric_samples(run, t)))
    assert (result.kind, result.rejected) == (ResultKind.OK, 0), result.reason

    [counter] = await read_back(server, f'hostwatch_rt_seconds_total{{run="{run}"}}[5m]', t)
    assert counter.labels == {
        "__name__": "hostwatch_rt_seconds_total",
        "run": run,
        "cpu": "0",
        "mode": "idle",
        "job": "hostwatch",
        "instance": HOST,
        "env": "test",
    }
    ms = t // 1_000_000
    assert [(round(ts * 1000), v) for ts, v in counter.points] == [(ms - 2000, 10.5), (ms - 1000, 11.25), (ms, 12.75)]
    [gauge] = await server.wait_for_async(f'hostwatch_rt_bytes{{run="{run}"}}')
    assert gauge.labels["k8s_pod"] == "web-1" and gauge.value == 4096.0


async def test_prometheus_never_sees_colliding_label_names(prometheus) -> None:
    """Prometheus answers 500 to duplicate label names; the encoder refuses such a series itself."""
    run, t = uuid.uuid4().hex, now_ms()
    bad = Sample("hostwatch_rt_dup", 1.0, "gauge", labels_from({"run": run, "a.b": "1", "a_b": "2"}), t)
    good = Sample("hostwatch_rt_ok", 2.0, "gauge", labels_from({"run": run}), t)
    output = RemoteWriteOutput(RemoteWriteConfig(url=prometheus.remote_write_url), context())
    [result] = await export(output, Batch(Signal.METRICS, [bad, good]))
    assert (result.kind, result.rejected) == (ResultKind.OK, 1)
    assert "a_b" in result.reason
    [series] = await prometheus.wait_for_async(f'{{run="{run}"}}')
    assert series.labels["__name__"] == "hostwatch_rt_ok"


async def test_prometheus_refusal_is_dropped_with_its_message(prometheus) -> None:
    """An out-of-order sample makes Prometheus answer 400: the batch is dropped, its reason quoted."""
    run, t = uuid.uuid4().hex, now_ms()
    labels = labels_from({"run": run})
    output = RemoteWriteOutput(RemoteWriteConfig(url=prometheus.remote_write_url), context())
    first, second = await export(
        output,
        Batch(Signal.METRICS, [Sample("hostwatch_rt_order", 1.0, "gauge", labels, t)]),
        Batch(Signal.METRICS, [Sample("hostwatch_rt_order", 2.0, "gauge", labels, t - 60_000_000_000)]),
    )
    assert first.kind is ResultKind.OK
    assert second.kind is ResultKind.DROP
    assert second.reason.startswith("HTTP 400:") and "out of order" in second.reason


# ------------------------------------------------------------------ OTLP metrics


async def test_otlp_metrics_to_victoria_metrics(victoria_metrics_otlp) -> None:
    run, t = uuid.uuid4().hex, now_ms()
    endpoint = victoria_metrics_otlp.otlp_metrics_url.removesuffix("/v1/metrics")
    output = OtlpOutput(OtlpConfig(endpoint=endpoint, signals=["metrics"]), context())
    [result] = await export(output, Batch(Signal.METRICS, metric_samples(run, t)))
    assert (result.kind, result.rejected) == (ResultKind.OK, 0), result.reason

    [counter] = await read_back(victoria_metrics_otlp, f'hostwatch_rt_seconds_total{{run="{run}"}}[5m]', t)
    ms = t // 1_000_000
    assert [(round(ts * 1000), v) for ts, v in counter.points] == [(ms - 2000, 10.5), (ms - 1000, 11.25), (ms, 12.75)]
    labels = counter.labels
    assert (labels["cpu"], labels["mode"], labels["env"]) == ("0", "idle", "test")
    assert labels["service.name"] == "hostwatch" and labels["host.name"] == HOST
    assert labels["host.id"] == "0123456789abcdef" and labels["os.type"] == "linux"
    [gauge] = await victoria_metrics_otlp.wait_for_async(f'hostwatch_rt_bytes{{run="{run}"}}')
    assert gauge.value == 4096.0 and gauge.labels["k8s.pod"] == "web-1"


def metric_points(requests) -> dict[tuple[str, str], list[tuple[int, int, float]]]:
    """(name, data kind) -> [(start, time, value)] over every request the collector forwarded."""
    out: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    for request in requests:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for p in getattr(metric, kind).data_points:
                        out.setdefault((metric.name, kind), []).append(
                            (p.start_time_unix_nano, p.time_unix_nano, p.as_double)
                        )
    return out


@pytest.mark.parametrize(
    "table",
    [{"protocol": "http"}, {"protocol": "http", "encoding": "json"}, {"protocol": "grpc"}],
    ids=["http-protobuf", "http-json", "grpc"],
)
async def test_otlp_to_the_collector(otelcol, table) -> None:
    run, t = uuid.uuid4().hex, now_ms()
    endpoint = otelcol.grpc_endpoint if table["protocol"] == "grpc" else otelcol.http_url
    output = OtlpOutput(OtlpConfig(endpoint=endpoint, **table), context())
    logs = [
        LogRecord(t, f"hello {run}", labels_from({"log.file.path": "/var/log/app.log"}), "WARN"),
        LogRecord(t + 1, f"bye {run}", labels_from({"log.file.path": "/var/log/app.log"}), attributes=(("k", "v"),)),
    ]
    results = await export(output, Batch(Signal.METRICS, metric_samples(run, t)), Batch(Signal.LOGS, logs))
    assert [(r.kind, r.rejected) for r in results] == [(ResultKind.OK, 0)] * 2, [r.reason for r in results]

    metrics_requests = otelcol.wait_for("metrics")
    points = metric_points(metrics_requests)
    assert [(time_, value) for _, time_, value in points[("hostwatch_rt_seconds_total", "sum")]] == [
        (t - 2_000_000_000, 10.5),
        (t - 1_000_000_000, 11.25),
        (t, 12.75),
    ]
    starts = {start for start, _, _ in points[("hostwatch_rt_seconds_total", "sum")]}
    assert len(starts) == 1 and 0 < next(iter(starts)) <= t - 2_000_000_000
    assert points[("hostwatch_rt_bytes", "gauge")] == [(0, t, 4096.0)]
    [resource_metrics] = metrics_requests[0].resource_metrics
    resource = {kv.key: kv.value.string_value for kv in resource_metrics.resource.attributes}
    assert resource["host.name"] == HOST and resource["service.instance.id"] == HOST and resource["env"] == "test"
    metric = next(m for m in resource_metrics.scope_metrics[0].metrics if m.name == "hostwatch_rt_seconds_total")
    assert metric.unit == "s" and metric.sum.is_monotonic and metric.sum.aggregation_temporality == 2

    [logs_request] = otelcol.wait_for("logs")
    [resource_logs] = logs_request.resource_logs
    assert {kv.key: kv.value.string_value for kv in resource_logs.resource.attributes}["log.file.path"] == (
        "/var/log/app.log"
    )
    records = resource_logs.scope_logs[0].log_records
    assert [(r.time_unix_nano, r.body.string_value, r.severity_text, r.severity_number) for r in records] == [
        (t, f"hello {run}", "WARN", 13),
        (t + 1, f"bye {run}", "", 0),
    ]
    assert records[1].attributes[0].key == "k" and records[1].attributes[0].value.string_value == "v"


# ------------------------------------------------------------------ logs to VictoriaLogs


def log_records(run: str, t: int) -> list[LogRecord]:
    app = labels_from({"filename": "/var/log/app.log", "job": "app", "run": run})
    return [
        LogRecord(t + 2_000_000, f"third {run}", app, "ERROR", labels_from({"trace_id": "abc123"})),
        LogRecord(t, f"first {run}", app, "INFO"),
        LogRecord(t + 1_000_000, f"second {run}", app),
        LogRecord(t, f"other stream {run}", labels_from({"filename": "/var/log/db.log", "run": run})),
    ]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_loki_push_to_victoria_logs(victoria_logs, encoding: str) -> None:
    run, t = uuid.uuid4().hex, now_ms()
    output = LokiOutput(LokiConfig(url=victoria_logs.loki_push_url, encoding=encoding), context())
    [result] = await export(output, Batch(Signal.LOGS, log_records(run, t)))
    assert result.kind is ResultKind.OK, result.reason

    rows = await victoria_logs.wait_for_async(f'run:="{run}" | sort by (_time)', count=4)
    by_msg = {row["_msg"]: row for row in rows}
    assert set(by_msg) == {f"first {run}", f"second {run}", f"third {run}", f"other stream {run}"}
    third = by_msg[f"third {run}"]
    assert third["_stream"] == f'{{env="test",filename="/var/log/app.log",instance="{HOST}",job="app",run="{run}"}}'
    assert (third["trace_id"], third["level"]) == ("abc123", "ERROR")  # structured metadata, not stream labels
    assert by_msg[f"first {run}"]["level"] == "INFO" and "level" not in by_msg[f"second {run}"]
    other = by_msg[f"other stream {run}"]
    assert other["job"] == "hostwatch" and other["filename"] == "/var/log/db.log"
    app_rows = [row["_msg"] for row in rows if row.get("filename") == "/var/log/app.log"]
    assert app_rows == [f"first {run}", f"second {run}", f"third {run}"]


async def test_otlp_logs_to_victoria_logs(victoria_logs) -> None:
    run, t = uuid.uuid4().hex, now_ms()
    endpoint = victoria_logs.otlp_logs_url.removesuffix("/v1/logs")
    output = OtlpOutput(OtlpConfig(endpoint=endpoint, signals=["logs"]), context())
    [result] = await export(output, Batch(Signal.LOGS, log_records(run, t)))
    assert (result.kind, result.rejected) == (ResultKind.OK, 0), result.reason

    rows = await victoria_logs.wait_for_async(f'run:="{run}"', count=4)
    by_msg = {row["_msg"]: row for row in rows}
    assert set(by_msg) == {f"first {run}", f"second {run}", f"third {run}", f"other stream {run}"}
    third = by_msg[f"third {run}"]
    assert third["host.name"] == HOST and third["service.name"] == "hostwatch" and third["job"] == "app"
    assert third["trace_id"] == "abc123" and third["filename"] == "/var/log/app.log"
