"""/metrics text: the agent's own metrics rendered from cache, byte for byte as prometheus_client does."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary, generate_latest

from agent.exposition import RegistryPage, go_float
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
