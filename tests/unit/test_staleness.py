"""Staleness markers: the tracker, and how each encoder carries a marker."""

from __future__ import annotations

import math
import struct

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from agent.exposition import LatestSamples
from agent.model import STALE_NAN, Sample, is_stale, labels_from
from agent.pipeline import Pipeline
from agent.staleness import SeriesTracker
from agent.telemetry import Telemetry
from outputs.otlp.encode import MetricsEncoder
from outputs.remote_write.encode import WriteRequestEncoder
from tests.unit.outputs.protos import WriteRequest

T0 = 1_700_000_000_000_000_000
ETH0 = labels_from({"device": "eth0"})
ETH1 = labels_from({"device": "eth1"})


def rx(labels, value: float = 1.0, t: int = T0) -> Sample:
    return Sample("node_network_receive_bytes_total", value, "counter", labels, t, "By")


def test_only_the_exact_marker_bits_are_stale() -> None:
    assert is_stale(STALE_NAN)
    assert not is_stale(math.nan)  # a sensor reading NaN is a value, not the end of a series
    assert not is_stale(0.0) and not is_stale(math.inf)
    assert struct.pack("<d", STALE_NAN) == bytes.fromhex("0200000000 00f07f".replace(" ", ""))


def test_a_vanished_series_gets_one_marker_with_its_kind_and_unit() -> None:
    tracker = SeriesTracker()
    assert tracker.update("network", [rx(ETH0), rx(ETH1)], T0) == []
    [marker] = tracker.update("network", [rx(ETH0, 2.0)], T0 + 10)
    assert (marker.name, marker.labels, marker.kind, marker.unit, marker.time_ns) == (
        "node_network_receive_bytes_total",
        ETH1,
        "counter",
        "By",
        T0 + 10,
    )
    assert is_stale(marker.value)
    assert tracker.update("network", [rx(ETH0, 3.0)], T0 + 20) == []  # ended once, not every run


def test_a_series_replaced_by_another_in_a_run_of_the_same_size_ends() -> None:
    """The usual run is compared pairwise with the last (no set built): a swap must still be seen."""
    tracker = SeriesTracker()
    eth2 = labels_from({"device": "eth2"})
    assert tracker.update("network", [rx(ETH0), rx(ETH1)], T0) == []
    assert tracker.update("network", [rx(ETH0, 2.0), rx(ETH1, 2.0)], T0 + 1) == []
    [marker] = tracker.update("network", [rx(ETH0, 3.0), rx(eth2)], T0 + 2)
    assert marker.labels == ETH1 and is_stale(marker.value)
    assert tracker.update("network", [rx(eth2, 2.0), rx(ETH0, 4.0)], T0 + 3) == [], "only the order changed"
    assert tracker.update("network", [rx(eth2, 3.0), rx(ETH0, 5.0)], T0 + 4) == []
    [marker] = tracker.update("network", [rx(eth2, 4.0), rx(eth2, 4.0)], T0 + 5)
    assert marker.labels == ETH0
    assert {m.labels for m in tracker.end("network", T0 + 6)} == {eth2}


def test_instances_are_tracked_apart_and_end_all_ends_every_series() -> None:
    tracker = SeriesTracker()
    tracker.update("a", [rx(ETH0)], T0)
    tracker.update("b", [rx(ETH0), rx(ETH1)], T0)
    assert tracker.update("a", [], T0 + 1) != []  # "a" lost its series; "b" untouched
    assert tracker.series_count() == 2
    ended = tracker.end_all(T0 + 2)
    assert sorted(m.labels for m in ended) == [ETH0, ETH1] and all(is_stale(m.value) for m in ended)
    assert tracker.series_count() == 0 and tracker.end_all(T0 + 3) == []


def test_the_pipeline_pushes_markers_but_metrics_page_never_shows_them() -> None:
    class Lane:
        def __init__(self) -> None:
            self.items: list[Sample] = []

        def offer(self, items, token=None) -> None:
            self.items.extend(items)

    latest = LatestSamples()
    pipeline = Pipeline(Telemetry(), latest, clock=lambda: T0 + 5)
    lane = Lane()
    pipeline._metric_lanes = [lane]
    pipeline.publish_samples("network", [rx(ETH0), rx(ETH1)])
    pipeline.publish_samples("network", [rx(ETH0)])
    assert [is_stale(s.value) for s in lane.items] == [False, False, False, True]
    assert lane.items[-1].labels == ETH1
    assert "nan" not in latest.page().decode().lower()
    pipeline.end_instance("network")
    assert is_stale(lane.items[-1].value) and lane.items[-1].labels == ETH0


def test_remote_write_sends_the_marker_bit_for_bit() -> None:
    payload = WriteRequestEncoder().encode([rx(ETH0, 5.0), rx(ETH1, STALE_NAN)]).payload
    values = {ts.labels[-1].value: ts.samples[0].value for ts in WriteRequest.FromString(payload).timeseries}
    assert values["eth0"] == 5.0
    assert struct.pack("<d", values["eth1"]) == struct.pack("<d", STALE_NAN)


def test_otlp_marks_an_ended_stream_with_no_recorded_value() -> None:
    gauge = Sample("node_load1", STALE_NAN, "gauge", (), T0)
    encoder = MetricsEncoder((), start_time_ns=T0 - 10)
    request = ExportMetricsServiceRequest.FromString(encoder.encode([rx(ETH0, 5.0), rx(ETH1, STALE_NAN), gauge]))
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    live, ended = metrics["node_network_receive_bytes_total"].sum.data_points
    assert (live.as_double, live.flags) == (5.0, 0)
    assert ended.flags == 1 and ended.WhichOneof("value") is None
    assert (ended.start_time_unix_nano, ended.time_unix_nano) == (T0 - 10, T0)
    assert {a.key: a.value.string_value for a in ended.attributes} == {"device": "eth1"}
    [load] = metrics["node_load1"].gauge.data_points
    assert load.flags == 1 and load.WhichOneof("value") is None

    as_json = json_format.Parse(encoder.encode_json([rx(ETH1, STALE_NAN)]), ExportMetricsServiceRequest())
    [point] = as_json.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points
    assert point.flags == 1 and point.WhichOneof("value") is None


def test_samples_not_served_go_to_outputs_only() -> None:
    """The internal collector's samples are the agent's own metrics, which /metrics serves already."""

    class Lane:
        items: list[Sample] = []

        def offer(self, items, token=None) -> None:
            self.items = [*self.items, *items]

    latest = LatestSamples()
    pipeline = Pipeline(Telemetry(), latest, clock=lambda: T0)
    lane = Lane()
    pipeline._metric_lanes = [lane]
    pipeline.publish_samples("internal", [rx(ETH0)], served=False)
    assert lane.items == [rx(ETH0)]
    assert latest.samples() == []


def test_same_series_compares_labels_by_value_when_the_tuples_are_not_the_same_object() -> None:
    from agent.model import same_series

    kept = [rx(ETH0), rx(ETH1)]
    assert same_series(kept, [rx(ETH0, 2.0), rx(ETH1, 3.0)])  # the very label tuples
    rebuilt = [rx((("device", "eth" + "0"),)), rx((("device", "".join(("et", "h1"))),))]
    assert rebuilt[0].labels is not ETH0 and same_series(kept, rebuilt)  # equal tuples, other objects
    assert not same_series(kept, [rx(ETH0), rx((("device", "eth2"),))])
    assert not same_series(kept, [rx(ETH1), rx(ETH0)])  # same series, other order
    assert not same_series(kept, [rx(ETH0), Sample("node_network_receive_bytes_total", 1.0, "gauge", ETH1, T0, "By")])
    assert not same_series(kept, [rx(ETH0), Sample("node_network_receive_bytes_total", 1.0, "counter", ETH1, T0)])
    assert not same_series(kept, [rx(ETH0)])
