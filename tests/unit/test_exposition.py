"""/metrics text: the host samples' page kept between renders, and values written as Go writes them.

The agent's own metrics are tested in test_selfmetrics.py."""

from __future__ import annotations

import math

from agent.exposition import LatestSamples, go_float, render_samples
from agent.model import Sample


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


def test_the_compiled_page_takes_percent_signs_single_series_and_ints() -> None:
    """The page is rendered from one %-template: label values with % in them, a lone series and
    int values must come out as the per-series rendering has them."""
    latest = LatestSamples()
    assert latest.page() == b""
    latest.replace("a", [Sample("node_x", 1.5, "gauge", (("path", "/srv/100%s %r %%d"),), 1)])
    assert latest.page().decode() == render_samples(latest.samples())
    latest.replace("b", [Sample("node_y", 3, "counter", (), 1), Sample("node_x", 2.0, "gauge", (), 1)])
    latest.replace("a", [Sample("node_x", -0.0, "gauge", (("path", "/srv/100%s %r %%d"),), 1)])  # layout kept
    assert latest.page().decode() == render_samples(latest.samples())
    assert "/srv/100%s %r %%d" in latest.page().decode()


def test_a_value_equal_to_the_last_but_written_otherwise_is_written_again() -> None:
    """Values the last render wrote keep their text; 7 and 7.0, 0.0 and -0.0 are equal but
    written apart, so they are not taken for the last value."""
    latest = LatestSamples()
    labels = (("device", "eth0"),)
    for values in ([7.0, 0.0, 1.5], [7, -0.0, 1.5], [7.0, 0.0, 1.5], [7.0, 0.0, 2.5], [True, 0, 2.5]):
        latest.replace("a", [Sample(f"node_v{i}", v, "gauge", labels, 1) for i, v in enumerate(values)])
        page = latest.page().decode()
        assert page == render_samples(latest.samples()), values
        assert [line.split(" ")[-1] for line in page.splitlines()[1::2]] == [repr(v) for v in values]
