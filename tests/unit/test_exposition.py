"""/metrics text: the agent's own metrics rendered from cache, byte for byte as prometheus_client does."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary, generate_latest

from agent.exposition import LatestSamples, RegistryPage, go_float, render_samples
from agent.model import Sample
from agent.telemetry import Telemetry


def test_the_agents_own_page_is_generate_latests_page_byte_for_byte() -> None:
    telemetry = Telemetry()
    registry = telemetry.registry
    page = RegistryPage(registry)
    odd = Gauge("hostwatch_test_odd", "help with a \\ backslash\nand a newline", ["name"], registry=registry)
    Counter("hostwatch_test_events", "events", registry=registry).inc(3)
    Histogram("hostwatch_test_seconds", "latency", ["op"], registry=registry).labels("get").observe(0.2)
    Info("hostwatch_test_build", "build", registry=registry).info({"commit": "abc"})
    Summary("hostwatch_test_sizes", "sizes", registry=registry).observe(12)
    for run in range(3):  # the cache must follow values, new series and new label values
        for value in (0.0, 1.5, 1e6, 123456789.0, -2e7, math.inf, -math.inf, math.nan, 1e-9):
            odd.labels(f'v"{value}\\\n{run}').set(value)
        telemetry.collector_runs.labels(f"c{run}").inc()
        telemetry.collector_duration.labels(f"c{run}").observe(0.01 * run)
        assert steady(page.render()) == steady(generate_latest(registry))


def steady(page: bytes) -> list[bytes]:
    """The page less the process collector's values, which move between two reads (CPU time)."""
    return [line for line in page.split(b"\n") if not line.startswith(b"process_")]


def test_values_are_written_as_go_writes_them() -> None:
    assert [go_float(v) for v in (1.0, 1e6, 1234567.5, 0.5, math.inf, -math.inf, 1e21)] == [
        "1.0",
        "1e+06",
        "1.2345675e+06",
        "0.5",
        "+Inf",
        "-Inf",
        "1e+21",
    ]
    assert go_float(math.nan) == "NaN"


def test_an_empty_registry_renders_nothing() -> None:
    assert RegistryPage(CollectorRegistry()).render() == generate_latest(CollectorRegistry()) == b""


def run(values: list[float], devices: tuple[str, ...] = ("eth0", "eth1"), t: int = 1) -> list[Sample]:
    out = [
        Sample("node_network_up", v, "gauge", (("device", d), ("note", 'a "q"\\\n')), t)
        for d, v in zip(devices, values, strict=True)
    ]
    out.append(Sample("node_scrape_collector_success", 1.0, "gauge", (("collector", "network"),), t))
    return out


def test_the_metrics_page_is_the_same_whether_laid_out_anew_or_reused() -> None:
    """A run with the same series only reformats values; one with other series is laid out anew;
    a family spread over instances keeps one TYPE line."""
    latest = LatestSamples()
    scrape = [Sample("node_scrape_collector_success", 0.0, "gauge", (("collector", "cpu"),), 1)]
    steps = [
        ("network", run([1.0, 0.0])),
        ("cpu#scrape", scrape),
        ("network", run([math.nan, math.inf])),  # same series: the layout is reused
        ("network", run([-math.inf, 1e21])),
        ("network", run([2.0], devices=("eth1",))),  # a series went away
        ("network", run([2.5], devices=("eth9",))),  # as many series, another one
        ("network", run([3.0, 4.0, 5.0], devices=("eth0", "eth2", "eth1"))),  # new one, new order
        ("cpu#scrape", [*scrape, Sample("node_cpu_x", 7, "counter", (), 1)]),  # an int value
    ]
    for instance, samples in steps:
        latest.replace(instance, samples)
        page = latest.page().decode()
        assert page == render_samples(latest.samples()), instance
        assert page.count("# TYPE node_scrape_collector_success gauge") == 1
    assert "+Inf" in render_samples(run([math.inf, 0.0])) and "NaN" in render_samples(run([math.nan, 0.0]))
    latest.forget("network")
    assert latest.page().decode() == render_samples(latest.samples())
