"""A small application instrumented with the official OpenTelemetry Python SDK, for the receiver tests.

``send(endpoint, protocol)`` records a fixed set of metrics (counter, up-down counter, gauge, histogram),
logs and spans and exports them once with the SDK's own OTLP exporters (HTTP or gRPC), returning what
the exporters said. Run as a script it keeps sending numbered batches and prints each one the SDK was
told succeeded (the kill -9 test reads that).
"""

from __future__ import annotations

import logging
import sys
import time

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


def exporters(endpoint: str, protocol: str, timeout: float = 10.0):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        kw = {"endpoint": endpoint, "insecure": True, "timeout": timeout}
        return OTLPMetricExporter(**kw), OTLPLogExporter(**kw), OTLPSpanExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    kw = {"timeout": timeout, "compression": Compression.Gzip}
    return (
        OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", **kw),
        OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", **kw),
        OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", **kw),
    )


class Recording(SpanExporter):
    """Wraps an exporter and keeps the results it reported."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.results: list = []

    def export(self, batch):
        result = self.inner.export(batch)
        self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


RESOURCE = Resource.create({"service.name": "shop", "service.namespace": "acme", "deployment.environment": "test"})


def record_metrics(resource: Resource = RESOURCE):
    """The metrics data of one collection: counter, up-down counter, gauge, histogram (cumulative)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("shop.checkout", "1.2.3")
    requests = meter.create_counter("http.server.requests", unit="{request}", description="requests")
    active = meter.create_up_down_counter("http.server.active_requests", unit="{request}")
    duration = meter.create_histogram("http.server.duration", unit="ms")
    meter.create_observable_gauge("process.cpu.utilization", [lambda _options: _observations()], unit="1")
    for route, code, ms in (("/cart", "200", 12.0), ("/cart", "500", 250.0), ("/pay", "200", 40.0)):
        attributes = {"http.route": route, "http.status_code": code}
        requests.add(1, attributes)
        duration.record(ms, attributes)
    active.add(3)
    active.add(-1)
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def _observations():
    from opentelemetry.metrics import Observation

    return [Observation(0.25, {"cpu": "0"})]


def send(endpoint: str, protocol: str, *, spans: int = 3, logs: int = 3, tag: str = "t"):
    """Export metrics once, ``logs`` records and ``spans`` spans; (metric result, log results, span results)."""
    metric_exporter, log_exporter, span_exporter = exporters(endpoint, protocol)
    metric_result = metric_exporter.export(record_metrics())
    log_results = []
    logger_provider = LoggerProvider(resource=RESOURCE)

    class LogRecording:
        def export(self, batch):
            result = log_exporter.export(batch)
            log_results.append(result)
            return result

        def shutdown(self):
            log_exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(LogRecording()))
    app_log = logging.getLogger(f"shop.{tag}")
    app_log.propagate = False
    app_log.setLevel(logging.INFO)
    handler = LoggingHandler(logger_provider=logger_provider)
    app_log.addHandler(handler)
    tracer_provider = TracerProvider(resource=RESOURCE)
    recording = Recording(span_exporter)
    tracer_provider.add_span_processor(SimpleSpanProcessor(recording))
    tracer = tracer_provider.get_tracer("shop.checkout", "1.2.3")
    for n in range(spans):
        with tracer.start_as_current_span(f"checkout {tag} {n}") as span:
            span.set_attribute("db.statement", "SELECT * FROM users WHERE password = 'hunter2secret'")
            span.set_attribute("order.items", n)
            if n < logs:
                app_log.warning("order %s %d failed for card 4111111111111111", tag, n, extra={"order.id": n})
    for n in range(spans, logs):
        app_log.info("order %s %d done", tag, n)
    app_log.removeHandler(handler)
    tracer_provider.shutdown()
    logger_provider.shutdown()
    metric_exporter.shutdown()
    return metric_result, log_results, recording.results


def main() -> None:
    """Send numbered one-span batches until killed; print each number with what the SDK's exporter said."""
    endpoint, protocol = sys.argv[1], sys.argv[2]
    span_exporter = exporters(endpoint, protocol, timeout=5.0)[2]
    tracer = TracerProvider(resource=RESOURCE).get_tracer("load")
    n = 0
    while True:
        with tracer.start_as_current_span(f"seq {n}") as span:
            span.set_attribute("seq", n)
        ok = span_exporter.export([span]) == SpanExportResult.SUCCESS  # the ended span is a ReadableSpan
        print(f"{'ok' if ok else 'fail'} {n}", flush=True)
        n += 1
        time.sleep(0.005)


if __name__ == "__main__":
    main()
