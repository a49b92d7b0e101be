"""Golden payloads of the remote-write encoder, decoded with the prompb WriteRequest definition."""

from __future__ import annotations

import math

import pytest

from agent.model import Sample, labels_from
from outputs.remote_write import encode as rw
from outputs.remote_write.encode import WriteRequestEncoder, sanitize_label_name, sanitize_metric_name
from tests.unit.outputs.protos import WriteRequest

T0 = 1_700_000_000_123_456_789  # ns; 1_700_000_000_123 ms
BASE = labels_from({"job": "hostwatch", "instance": "host-1", "env": "prod"})


def decode(payload: bytes) -> list[tuple[dict[str, str], list[str], list[tuple[int, float]]]]:
    """(labels, label names in wire order, [(ms, value)]) per TimeSeries."""
    request = WriteRequest.FromString(payload)
    return [
        (
            {label.name: label.value for label in ts.labels},
            [label.name for label in ts.labels],
            [(s.timestamp, s.value) for s in ts.samples],
        )
        for ts in request.timeseries
    ]


def test_one_sample_per_series_with_job_instance_and_agent_labels() -> None:
    samples = [
        Sample("node_cpu_seconds_total", 12.5, "counter", labels_from({"cpu": "0", "mode": "idle"}), T0, "s"),
        Sample("node_load1", 0.25, "gauge", (), T0 + 5_000_000),
    ]
    encoded = WriteRequestEncoder(BASE).encode(samples)
    assert (encoded.series, encoded.samples, encoded.rejected) == (2, 2, 0)
    series = decode(encoded.payload)
    assert series[0][0] == {
        "__name__": "node_cpu_seconds_total",
        "cpu": "0",
        "mode": "idle",
        "job": "hostwatch",
        "instance": "host-1",
        "env": "prod",
    }
    assert series[0][1] == sorted(series[0][1])  # labels sorted by name, as remote-write 1.0 requires
    assert series[0][2] == [(T0 // 1_000_000, 12.5)]
    assert series[1][0] == {"__name__": "node_load1", "job": "hostwatch", "instance": "host-1", "env": "prod"}
    assert series[1][2] == [(T0 // 1_000_000 + 5, 0.25)]


def test_a_samples_own_label_wins_over_the_base_labels() -> None:
    sample = Sample("queue_messages", 3, "gauge", labels_from({"job": "celery", "queue": "q1"}), T0)
    labels = decode(WriteRequestEncoder(BASE).encode([sample]).payload)[0][0]
    assert labels["job"] == "celery" and labels["instance"] == "host-1" and labels["queue"] == "q1"


def test_invalid_names_are_sanitised() -> None:
    assert sanitize_metric_name("node.cpu-seconds total") == "node_cpu_seconds_total"
    assert sanitize_metric_name("1st:metric") == "_1st:metric"
    assert sanitize_label_name("k8s.pod/name") == "k8s_pod_name"
    assert sanitize_label_name("9lives") == "_9lives"
    assert sanitize_label_name("a:b") == "a_b"  # colons are for metric names only
    sample = Sample("http.requests-total", 1, "counter", labels_from({"http.method": "GET", "0x": "1"}), T0)
    labels = decode(WriteRequestEncoder().encode([sample]).payload)[0][0]
    assert labels == {"__name__": "http_requests_total", "http_method": "GET", "_0x": "1"}


def test_colliding_names_refuse_only_that_series_and_count_it() -> None:
    bad = labels_from({"a.b": "1", "a_b": "2"})
    samples = [
        Sample("good", 1, "gauge", (), T0),
        Sample("bad", 2, "gauge", bad, T0),
        Sample("bad", 3, "gauge", bad, T0 + 10**9),
        Sample("also_good", 4, "gauge", labels_from({"a.b": "1"}), T0),
    ]
    encoded = WriteRequestEncoder().encode(samples)
    assert encoded.rejected == 2 and encoded.series == 2
    assert [s[0]["__name__"] for s in decode(encoded.payload)] == ["good", "also_good"]
    assert encoded.problems == ["labels 'a.b' and 'a_b' of bad are both 'a_b' once sanitised"]


def test_a_label_that_would_become_the_metric_name_is_refused() -> None:
    encoded = WriteRequestEncoder().encode([Sample("m", 1, "gauge", labels_from({"__name__": "x"}), T0)])
    assert encoded.rejected == 1 and encoded.payload == b""


def test_empty_label_values_are_left_out() -> None:
    sample = Sample("m", 1, "gauge", labels_from({"device": "", "mode": "idle"}), T0)
    assert decode(WriteRequestEncoder().encode([sample]).payload)[0][0] == {"__name__": "m", "mode": "idle"}


def test_samples_of_one_series_are_grouped_in_time_order_one_per_millisecond() -> None:
    labels = labels_from({"cpu": "1"})
    samples = [
        Sample("c_total", 3.0, "counter", labels, T0 + 2 * 10**9),
        Sample("other", 9.0, "gauge", (), T0),
        Sample("c_total", 1.0, "counter", labels, T0),
        Sample("c_total", 2.0, "counter", labels, T0 + 10**9),
        Sample("c_total", 2.5, "counter", labels, T0 + 10**9 + 1000),  # same millisecond: the later one wins
    ]
    encoded = WriteRequestEncoder().encode(samples)
    series = {s[0]["__name__"]: s[2] for s in decode(encoded.payload)}
    ms = T0 // 1_000_000
    assert series["c_total"] == [(ms, 1.0), (ms + 1000, 2.5), (ms + 2000, 3.0)]
    assert series["other"] == [(ms, 9.0)]
    assert (encoded.series, encoded.samples, encoded.rejected) == (2, 4, 1)
    assert len(decode(encoded.payload)) == 2  # one TimeSeries per series


@pytest.mark.parametrize("time_ns", [0, 1_000_000, 5_000_000_000_000_000_000])
def test_timestamps_outside_the_fast_path_range(time_ns: int) -> None:
    encoded = WriteRequestEncoder().encode([Sample("m", 1.5, "gauge", (), time_ns)])
    assert decode(encoded.payload)[0][2] == [(time_ns // 1_000_000, 1.5)]


def test_special_values_round_trip() -> None:
    samples = [Sample(f"m{i}", v, "gauge", (), T0) for i, v in enumerate([math.nan, math.inf, -math.inf, -0.0, 1e308])]
    values = [s[2][0][1] for s in decode(WriteRequestEncoder().encode(samples).payload)]
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, -0.0, 1e308]


def test_unicode_label_values_round_trip() -> None:
    sample = Sample("m", 1, "gauge", labels_from({"path": "/srv/données/日本", "bad": "x\udcff"}), T0)
    labels = decode(WriteRequestEncoder().encode([sample]).payload)[0][0]
    assert labels["path"] == "/srv/données/日本" and labels["bad"] == "x?"


def test_labels_are_encoded_once_per_series(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = rw.encode_labels
    monkeypatch.setattr(rw, "encode_labels", lambda *a: calls.append(a) or real(*a))
    series = [labels_from({"cpu": str(i)}) for i in range(100)]
    batch = [
        Sample("node_x_total", float(i), "counter", series[i % 100], T0 + (i // 100) * 10**9) for i in range(10_000)
    ]
    encoder = WriteRequestEncoder(BASE)
    first = encoder.encode(batch)
    assert len(calls) == 100 and first.samples == 10_000
    second = encoder.encode(batch)
    assert len(calls) == 100 and second.payload == first.payload
    one_each = encoder.encode(batch[:100])  # the single-sample fast path uses the same cache
    assert len(calls) == 100 and one_each.samples == 100
    assert [s[2] for s in decode(one_each.payload)] == [[(T0 // 1_000_000, float(i))] for i in range(100)]


def test_the_cache_is_bounded_between_batches() -> None:
    encoder = WriteRequestEncoder(max_series=50)
    for round_ in range(3):
        batch = [Sample(f"m{round_}_{i}", 1, "gauge", (), T0) for i in range(40)]
        assert encoder.encode(batch).series == 40
    assert len(encoder._cache) <= 80  # emptied before a batch once it held 50


def test_fast_and_grouped_paths_encode_the_same_series() -> None:
    encoder = WriteRequestEncoder(BASE)
    samples = [Sample("m", float(i), "gauge", labels_from({"i": str(i)}), T0) for i in range(20)]
    fast = decode(encoder.encode(samples).payload)
    grouped = decode(encoder._encode_grouped(samples).payload)
    assert fast == grouped and len(fast) == 20
