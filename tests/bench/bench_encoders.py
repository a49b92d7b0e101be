"""Encoder throughput of the push outputs, on one core.

Run: ``python -m tests.bench.bench_encoders``. Prints one line per figure and
a PASS/FAIL line per target:

* remote-write encode + snappy >= 1,000,000 samples/s with the label bytes cached;
* OTLP metrics encode >= 5x the official exporter's path (``encode_metrics``
  of ``opentelemetry-exporter-otlp-proto-common`` then ``SerializeToString``)
  for the same points; needs ``opentelemetry-sdk`` and
  ``opentelemetry-exporter-otlp-proto-http`` (a bench-only dependency),
  skipped without them;
* Loki protobuf encode + snappy >= 500,000 lines/s (and, without a target, the same for a batch
  holding a line of each of many files, as at low rates).

Every figure is the best of several timed rounds, so a busy machine shows
in fewer rounds rather than in a slower best.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import cramjam

from agent.model import LogRecord, Sample, labels_from
from outputs._http import compress
from outputs.loki.encode import PushEncoder
from outputs.otlp.encode import MetricsEncoder, resource_attributes
from outputs.remote_write.encode import WriteRequestEncoder

BATCH = 10_000
NOW = time.time_ns()


def best_rate(fn: Callable[[], object], items: int, *, rounds: int = 7, min_time: float = 0.2) -> float:
    """Items per second of the fastest round; each round repeats ``fn`` for at least ``min_time``."""
    fn()
    best = 0.0
    for _ in range(rounds):
        count, start = 0, time.perf_counter()
        while True:
            fn()
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = max(best, count * items / elapsed)
    return best


def host_samples(n: int = BATCH, per_series: int = 1) -> list[Sample]:
    """``n`` samples shaped like a host collection: 50 metric names, a few labels each."""
    samples = []
    for i in range(n // per_series):
        labels = labels_from({"cpu": str(i % 64), "mode": f"mode{i // 3200}", "device": f"dev{i % 7}"})
        kind = "counter" if i % 2 else "gauge"
        for j in range(per_series):
            samples.append(Sample(f"node_metric_{i % 50}_total", float(i + j), kind, labels, NOW + j * 10**9, "s"))
    return samples


def bench_remote_write() -> float:
    encoder = WriteRequestEncoder(labels_from({"job": "hostwatch", "instance": "host-1", "env": "prod"}))
    results = {}
    for per_series in (1, 10):
        samples = host_samples(per_series=per_series)
        encoder.encode(samples)  # fill the label cache
        rate = best_rate(lambda s=samples: cramjam.snappy.compress_raw(encoder.encode(s).payload), len(samples))
        results[per_series] = rate
        size = len(bytes(cramjam.snappy.compress_raw(encoder.encode(samples).payload)))
        print(
            f"remote_write encode+snappy, {len(samples)} samples, {per_series} per series: "
            f"{rate:,.0f} samples/s ({size / len(samples):.1f} compressed bytes/sample)"
        )
    samples = host_samples()
    cold = best_rate(lambda: WriteRequestEncoder(encoder.base).encode(samples), BATCH, rounds=3)
    print(f"remote_write encode, label cache cold (every series new): {cold:,.0f} samples/s")
    return results[1]


def sdk_metrics_data(samples: list[Sample]):
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    grouped: dict[tuple[str, str, str], list] = {}
    for s in samples:
        start = NOW - 10**9 if s.kind == "counter" else 0
        point = NumberDataPoint(dict(s.labels), start, s.time_ns, s.value)
        grouped.setdefault((s.name, s.kind, s.unit), []).append(point)
    metrics = []
    for (name, kind, unit), points in grouped.items():
        data = Sum(points, AggregationTemporality.CUMULATIVE, True) if kind == "counter" else Gauge(points)
        metrics.append(Metric(name, None, unit, data))
    resource = Resource({"host.name": "host-1", "service.name": "hostwatch", "os.type": "linux"})
    scope = InstrumentationScope("hostwatch", "0.1.0")
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")])


def bench_otlp() -> float | None:
    samples = host_samples()
    resource = resource_attributes(hostname="host-1", job="hostwatch", machine_id="", os_type="linux", labels=())
    encoder = MetricsEncoder(resource, scope_version="0.1.0", start_time_ns=NOW - 10**9)
    ours = best_rate(lambda: encoder.encode(samples), len(samples))
    print(f"otlp metrics encode (hostwatch): {ours:,.0f} points/s")
    try:
        from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    except ImportError:
        print("otlp official exporter path: skipped (needs opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http)")
        return None
    data = sdk_metrics_data(samples)
    theirs = best_rate(lambda: encode_metrics(data).SerializeToString(), len(samples), rounds=3)
    print(f"otlp metrics encode (opentelemetry-exporter-otlp-proto-http path): {theirs:,.0f} points/s")
    print(f"otlp speed-up: {ours / theirs:.1f}x")
    return ours / theirs


def bench_loki() -> float:
    records = [
        LogRecord(
            NOW + i * 1000,
            f"2024-05-01T12:00:00.{i:06d}Z INFO request id={i} handled in 12ms path=/api/v1/items status=200",
            labels_from({"filename": f"/var/log/app/app{i % 4}.log", "job": "app"}),
            "INFO" if i % 10 else "",
        )
        for i in range(BATCH)
    ]
    encoder = PushEncoder(labels_from({"job": "hostwatch", "instance": "host-1"}))
    rate = best_rate(lambda: cramjam.snappy.compress_raw(encoder.encode_protobuf(records).payload), len(records))
    print(f"loki protobuf encode+snappy: {rate:,.0f} lines/s")
    json_rate = best_rate(lambda: compress(encoder.encode_json(records).payload, "gzip"), len(records))
    print(f"loki json encode+gzip: {json_rate:,.0f} lines/s")
    # a batch at low rates: a line of each of as many files (each its own stream), read in rounds of 250 whose
    # lines share the round's time
    files = [labels_from({"filename": f"/var/log/app/app{i:04d}.log", "job": "app"}) for i in range(BATCH)]
    spread = [LogRecord(NOW + i // 250 * 250_000_000, r.body, files[i], r.severity) for i, r in enumerate(records)]
    spread_rate = best_rate(lambda: cramjam.snappy.compress_raw(encoder.encode_protobuf(spread).payload), len(spread))
    print(f"loki protobuf encode+snappy, a line of each of {len(spread):,} files: {spread_rate:,.0f} lines/s")
    return rate


def main() -> int:
    failures = 0

    def check(name: str, ok: bool) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}")

    check("remote_write >= 1,000,000 samples/s", bench_remote_write() >= 1_000_000)
    speedup = bench_otlp()
    if speedup is not None:
        check("otlp >= 5x the official exporter path", speedup >= 5)
    check("loki >= 500,000 lines/s", bench_loki() >= 500_000)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
