"""OTLP receiver throughput on one core: decode + translate (+ redact) of SDK-shaped requests.

Run: ``python -m tests.bench.bench_otlp_receiver``. One line per signal: items/s for the work the
receiver does on its worker thread per request (inflate, parse with opentelemetry-proto, translate,
redact with the default rule sets). Requests are built with the OpenTelemetry SDK's own encoders.
Best of several rounds, so a busy machine shows in fewer rounds rather than a slower best.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.config import RedactionSection
from agent.redact import Redactor
from collectors.otlp_receiver.decode import decompress, parse
from collectors.otlp_receiver.logs import translate_logs, translate_traces
from collectors.otlp_receiver.metrics import translate_metrics

ROUNDS = 5


def best(fn, items: int) -> float:
    rates = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - started))
    return max(rates)


def metrics_body() -> tuple[bytes, int]:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("bench")
    histogram = meter.create_histogram("http.server.duration", unit="ms")
    counter = meter.create_counter("http.server.requests")
    for route in range(200):
        for code in ("200", "404", "500"):
            attributes = {"http.route": f"/r/{route}", "http.status_code": code}
            histogram.record(route % 97, attributes)
            counter.add(1, attributes)
    request = encode_metrics(reader.get_metrics_data())
    samples = len(translate_metrics(request, 1).items)
    return gzip.compress(request.SerializeToString()), samples


def logs_body() -> tuple[bytes, int]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("bench")
    from opentelemetry._logs import LogRecord as ApiLogRecord

    for n in range(2000):
        logger.emit(ApiLogRecord(body=f"GET /items/{n} 200 in {n % 50} ms user=u{n}", attributes={"n": n}))
    return gzip.compress(encode_logs(exporter.get_finished_logs()).SerializeToString()), 2000


def spans_body() -> tuple[bytes, int]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    for n in range(2000):
        with tracer.start_as_current_span("GET /items/{id}") as span:
            span.set_attribute("http.url", f"https://shop.example/items/{n}?page=2")
            span.set_attribute("db.statement", "SELECT id, name FROM items WHERE id = $1")
    return gzip.compress(encode_spans(exporter.get_finished_spans()).SerializeToString()), 2000


def main() -> None:
    import tempfile

    redactor = Redactor.from_config(RedactionSection(), state_dir=Path(tempfile.mkdtemp()))
    limit = 64 * 1024 * 1024
    body, samples = metrics_body()
    rate = best(lambda: translate_metrics(parse("metrics", decompress(body, "gzip", limit), json=False), 1), samples)
    print(f"metrics: {rate:,.0f} samples/s ({samples} samples per request, histograms and counters)")
    body, count = logs_body()
    rate = best(
        lambda: translate_logs(
            parse("logs", decompress(body, "gzip", limit), json=False),
            1,
            stream_labels=frozenset({"service.name"}),
            static=(),
            redact=redactor.redact_lines,
        ),
        count,
    )
    print(f"logs: {rate:,.0f} records/s (redacted)")
    body, count = spans_body()
    rate = best(
        lambda: translate_traces(
            parse("traces", decompress(body, "gzip", limit), json=False), redact=redactor.redact_lines
        ),
        count,
    )
    print(f"traces: {rate:,.0f} spans/s (string attributes redacted)")


if __name__ == "__main__":
    main()
