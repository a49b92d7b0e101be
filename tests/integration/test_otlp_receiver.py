"""The OTLP receiver with real peers: the OpenTelemetry Python SDK sends, the agent runs as a process.

Side by side: the same SDK data (spans, log records and metric points recorded once) are exported
both to hostwatch and straight to the reference receivers; hostwatch forwards to the OpenTelemetry
Collector (traces, logs: read back from its capture), VictoriaMetrics (metrics, by remote-write) and
VictoriaLogs (logs, by Loki push). What arrives through hostwatch must be what arrived directly,
except for what redaction masks. And kill -9 while an application sends: nothing the SDK was told
succeeded is lost.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections import Counter

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.e2e.agentproc import AgentProcess
from tests.support import free_port
from tests.unit.collectors import otlp_app

pytestmark = pytest.mark.peers

KILLS = 5
SECRET_SQL = "SELECT * FROM users WHERE password = 'hunter2secret'"


def record_spans_and_logs(count: int):
    """``count`` spans, each with a log record inside it, recorded once in memory."""
    spans, records = InMemorySpanExporter(), InMemoryLogRecordExporter()
    tracer_provider = otlp_app.TracerProvider(resource=otlp_app.RESOURCE)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider = LoggerProvider(resource=otlp_app.RESOURCE)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(records))
    app_log = logging.getLogger("shop.side_by_side")
    app_log.propagate = False
    app_log.setLevel(logging.INFO)
    handler = LoggingHandler(logger_provider=logger_provider)
    app_log.addHandler(handler)
    tracer = tracer_provider.get_tracer("shop.checkout", "1.2.3")
    for n in range(count):
        with tracer.start_as_current_span(f"checkout {n}") as span:
            span.set_attribute("db.statement", SECRET_SQL)
            span.set_attribute("order.items", n)
            span.add_event("retry", {"attempt": n})
            app_log.error("order %d failed, token=abcdef0123456789abcdef", n, extra={"order.id": n})
    app_log.removeHandler(handler)
    return spans.get_finished_spans(), [data for data in records.get_finished_logs()]


def agent_config(http_port: int, grpc_port: int, outputs: str) -> str:
    return f"""
[[collectors.otlp]]
http_listen = "127.0.0.1:{http_port}"
grpc_listen = "127.0.0.1:{grpc_port}"
{outputs}
"""


def spans_by_id(requests) -> dict[bytes, list]:
    found: dict[bytes, list] = {}
    for request in requests:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.setdefault(span.span_id, []).append((resource_spans.resource, scope_spans.scope, span))
    return found


def attributes(kvs) -> dict:
    return {kv.key: kv.value for kv in kvs}


@pytest.mark.parametrize("victoria_metrics_otlp", [["-opentelemetry.usePrometheusNaming"]], indirect=True)
def test_side_by_side_with_the_collector_victoriametrics_and_victorialogs(
    otelcol, victoria_metrics, victoria_metrics_otlp, victoria_logs, tmp_path
) -> None:
    http_port, grpc_port = free_port(), free_port()
    outputs = f"""
[[outputs.otlp]]
endpoint = "{otelcol.http_url}"
signals = ["logs", "traces"]
flush_interval = "200ms"
[[outputs.remote_write]]
url = "{victoria_metrics.url}/api/v1/write"
flush_interval = "200ms"
[[outputs.loki]]
url = "{victoria_logs.loki_push_url}"
flush_interval = "200ms"
"""
    agent = AgentProcess(tmp_path, agent_config(http_port, grpc_port, outputs)).start()
    try:
        finished_spans, log_data = record_spans_and_logs(5)
        metrics_data = otlp_app.record_metrics()
        hostwatch = f"http://127.0.0.1:{http_port}"
        # the same recorded data, once to hostwatch and once straight to the reference receivers
        assert (
            OTLPSpanExporter(endpoint=f"{hostwatch}/v1/traces", compression=Compression.Gzip).export(finished_spans)
            is SpanExportResult.SUCCESS
        )
        assert (
            GrpcSpanExporter(endpoint=otelcol.grpc_endpoint, insecure=True).export(finished_spans)
            is SpanExportResult.SUCCESS
        )
        assert OTLPLogExporter(endpoint=f"{hostwatch}/v1/logs").export(log_data).name == "SUCCESS"
        assert OTLPLogExporter(endpoint=f"{otelcol.http_url}/v1/logs").export(log_data).name == "SUCCESS"
        assert OTLPMetricExporter(endpoint=f"{hostwatch}/v1/metrics").export(metrics_data) is MetricExportResult.SUCCESS
        assert (
            OTLPMetricExporter(endpoint=victoria_metrics_otlp.otlp_metrics_url).export(metrics_data)
            is MetricExportResult.SUCCESS
        )

        # --- traces: every span twice at the Collector, the copies equal but for the masked secret
        otelcol.wait_for("traces", 2, timeout=20)
        deadline = time.monotonic() + 20
        while (copies := spans_by_id(otelcol.requests("traces"))) and not (
            len(copies) == 5 and all(len(v) == 2 for v in copies.values())
        ):
            counts = {k.hex(): len(v) for k, v in copies.items()}
            assert time.monotonic() < deadline, f"spans at the collector: {counts}"
            time.sleep(0.2)
        for pair in copies.values():
            (resource_a, scope_a, span_a), (resource_b, scope_b, span_b) = pair
            assert resource_a == resource_b and scope_a == scope_b
            statements = {attributes(s.attributes)["db.statement"].string_value for s in (span_a, span_b)}
            assert statements == {SECRET_SQL, "SELECT * FROM users WHERE password = '[REDACTED:password]'"}
            for span in (span_a, span_b):
                del span.attributes[:]  # compared above; the rest must be identical
            assert span_a == span_b

        # --- logs at the Collector: same records (time, severity, trace link), the token masked
        otelcol.wait_for("logs", 2, timeout=20)
        direct, forwarded = {}, {}
        for request in otelcol.requests("logs"):
            for resource_logs in request.resource_logs:
                resource = attributes(resource_logs.resource.attributes)
                via_hostwatch = "host.name" in resource  # the agent's output adds the host
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        (forwarded if via_hostwatch else direct)[record.time_unix_nano] = (resource, record)
        assert len(direct) == len(forwarded) == 5
        for time_ns, (resource, record) in direct.items():
            resource_h, record_h = forwarded[time_ns]
            assert resource_h["service.name"].string_value == resource["service.name"].string_value == "shop"
            assert (record_h.severity_text, record_h.severity_number) == (record.severity_text, record.severity_number)
            masked = record.body.string_value.replace("abcdef0123456789abcdef", "[REDACTED:token]")
            assert record.body.string_value != masked, "the test's secret must be one the rules know"
            assert record_h.body.string_value == masked
            attrs = {k: v.string_value for k, v in attributes(record_h.attributes).items()}
            assert attrs["trace_id"] == record.trace_id.hex() and attrs["span_id"] == record.span_id.hex()
            assert attrs["order.id"] == str(attributes(record.attributes)["order.id"].int_value)

        # --- logs at VictoriaLogs through the Loki output
        rows = victoria_logs.wait_for('service_name:"shop"', 5, timeout=20)
        assert sorted(r["_msg"] for r in rows) == sorted(r.body.string_value for _, r in forwarded.values())
        assert all(r["trace_id"] and r["level"] == "ERROR" for r in rows)
        assert '"service_namespace":"acme"' in rows[0]["_stream"].replace(" ", "") or "acme" in rows[0]["_stream"]

        # --- metrics: the same points in both VictoriaMetrics, names by the same translation
        def points(vm, drop: set[str]) -> dict:
            found = {}
            for series in vm.query('{__name__=~"http_.*|process_.*"}'):
                labels = {k: v for k, v in series.labels.items() if k not in drop}
                found[tuple(sorted(labels.items()))] = series.value
            return found

        victoria_metrics.wait_for('{__name__="http_server_requests_total"}', timeout=20)
        victoria_metrics_otlp.wait_for('{__name__="http_server_requests_total"}', timeout=20)
        resource_labels = {"job", "instance", "service_name", "service_namespace", "service_instance_id",
                           "deployment_environment", "telemetry_sdk_language", "telemetry_sdk_name",
                           "telemetry_sdk_version"}  # fmt: skip
        ours, theirs = points(victoria_metrics, resource_labels), points(victoria_metrics_otlp, resource_labels)
        assert ours, "no OTLP metrics arrived through hostwatch"
        print(f"side by side: {len(ours)} series equal in name, point labels and value; e.g. {sorted(ours)[0]}")
        assert ours == theirs
        [info] = victoria_metrics.query("target_info")
        assert info.labels["job"] == "acme/shop" and info.labels["deployment_environment"] == "test"
        assert agent.metric('hostwatch_otlp_received_items_total{signal="traces"}') == 5
        assert agent.stop() == 0
    finally:
        agent.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_kill_9_while_an_application_sends_loses_nothing_it_was_told_succeeded(otelcol, tmp_path, protocol) -> None:
    http_port, grpc_port = free_port(), free_port()
    outputs = f"""
[[outputs.otlp]]
endpoint = "{otelcol.http_url}"
signals = ["traces"]
flush_interval = "100ms"
"""
    agent = AgentProcess(tmp_path, agent_config(http_port, grpc_port, outputs)).start()
    port = http_port if protocol == "http" else grpc_port
    app_log = tmp_path / "app.log"
    try:
        with open(app_log, "w") as out:
            app = subprocess.Popen(
                [sys.executable, "-m", "tests.unit.collectors.otlp_app", f"http://127.0.0.1:{port}", protocol],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        try:
            for _ in range(KILLS):
                time.sleep(3.0)
                agent.kill()  # while the application sends, with spans in flight and in the buffer
                time.sleep(0.5)
                agent.start()
            time.sleep(3.0)
        finally:
            app.terminate()
            app.wait(10)
        outcomes = [line.split() for line in app_log.read_text().splitlines() if line.strip()]
        succeeded = {int(n) for word, n in outcomes if word == "ok"}
        failed = {int(n) for word, n in outcomes if word == "fail"}
        assert len(succeeded) > 50, (len(succeeded), len(failed))

        def arrived() -> Counter:
            names: Counter = Counter()
            for resource_spans in (r for request in otelcol.requests("traces") for r in request.resource_spans):
                for scope_spans in resource_spans.scope_spans:
                    names.update(int(span.name.split()[1]) for span in scope_spans.spans)
            return names

        deadline = time.monotonic() + 60
        while not succeeded <= set(arrived()) and time.monotonic() < deadline:
            time.sleep(0.5)
        got = arrived()
        lost = sorted(succeeded - set(got))
        duplicates = sum(count - 1 for count in got.values() if count > 1)
        print(
            f"kill -9 x{KILLS} ({protocol}): {len(succeeded)} spans the SDK saw succeed,"
            f" {len(failed)} failed (agent down), {len(got)} arrived, {duplicates} duplicates, {len(lost)} lost"
        )
        assert not lost, f"spans the SDK was told succeeded but never arrived: {lost[:20]}"
        assert agent.stop() == 0
    finally:
        agent.close()


@pytest.mark.parametrize(
    "options",
    [{"protocol": "grpc"}, {"protocol": "http", "encoding": "json"}, {"protocol": "http"}],
    ids=["grpc", "http-json", "http-protobuf"],
)
async def test_the_otlp_output_forwards_spans_the_collector_takes(otelcol, options) -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from agent.model import Signal
    from agent.plugin import Batch, ResultKind
    from collectors.otlp_receiver.logs import translate_traces
    from outputs.otlp.otlp import OtlpConfig, OtlpOutput
    from tests.support import output_context

    finished, _ = record_spans_and_logs(3)
    request = encode_spans(finished)
    spans = translate_traces(type(request).FromString(request.SerializeToString()), redact=None).items
    endpoint = otelcol.grpc_endpoint if options["protocol"] == "grpc" else otelcol.http_url
    output = OtlpOutput(OtlpConfig(endpoint=endpoint, **options), output_context("otlp"))
    await output.start()
    try:
        result = await output.export(Batch(Signal.TRACES, spans))
    finally:
        await output.close()
    assert result.kind is ResultKind.OK, result
    [forwarded] = otelcol.wait_for("traces", 1)
    assert forwarded == request  # what the SDK encoded, span for span, resource and scope included
