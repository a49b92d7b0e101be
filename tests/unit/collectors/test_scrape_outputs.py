"""What the outputs make of scraped histograms and summaries (README: "What it produces").

Remote-write carries every part as the series Prometheus would store; OTLP gets each part as
a metric of its own: bucket, sum and count as cumulative monotonic Sums (``le`` an attribute),
quantiles as Gauges; not as one OTLP Histogram or Summary.
"""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from collectors.scrape.exposition import parse_series, scan
from outputs.otlp.encode import MetricsEncoder
from outputs.remote_write.encode import WriteRequestEncoder
from tests.unit.outputs.protos import WriteRequest

T = 1_700_000_000_000_000_000
BODY = """# TYPE lat_seconds histogram
lat_seconds_bucket{le="0.1"} 1
lat_seconds_bucket{le="+Inf"} 3
lat_seconds_sum 2.5
lat_seconds_count 3
# TYPE rpc_seconds summary
rpc_seconds{quantile="0.99"} 0.7
rpc_seconds_sum 9
rpc_seconds_count 12
"""


def samples():
    def resolve(series: str):
        name, pairs = parse_series(series)
        return name, name, tuple(sorted([*pairs, ("job", "app")]))

    return scan(BODY, openmetrics=False, resolve=resolve, previous={}, current={}, time_ns=T).rows


def test_remote_write_carries_the_series_as_scraped() -> None:
    request = WriteRequest.FromString(WriteRequestEncoder().encode(samples()).payload)
    got = {tuple((lb.name, lb.value) for lb in ts.labels): ts.samples[0].value for ts in request.timeseries}
    assert got[(("__name__", "lat_seconds_bucket"), ("job", "app"), ("le", "+Inf"))] == 3.0
    assert got[(("__name__", "rpc_seconds"), ("job", "app"), ("quantile", "0.99"))] == 0.7
    assert len(got) == 7


def test_otlp_sends_each_part_as_a_metric_of_its_own() -> None:
    request = ExportMetricsServiceRequest.FromString(MetricsEncoder((), start_time_ns=T - 1).encode(samples()))
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    assert set(metrics) == {
        "lat_seconds_bucket",
        "lat_seconds_sum",
        "lat_seconds_count",
        "rpc_seconds",
        "rpc_seconds_sum",
        "rpc_seconds_count",
    }
    buckets = metrics["lat_seconds_bucket"].sum
    assert buckets.is_monotonic and buckets.aggregation_temporality == 2
    le = {next(a.value.string_value for a in p.attributes if a.key == "le"): p.as_double for p in buckets.data_points}
    assert le == {"0.1": 1.0, "+Inf": 3.0}
    assert metrics["rpc_seconds"].WhichOneof("data") == "gauge"
    assert metrics["rpc_seconds_count"].sum.is_monotonic
