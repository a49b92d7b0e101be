"""The exposition parser: text format 0.0.4 and OpenMetrics, kinds, timestamps, errors, the series cache."""

from __future__ import annotations

import math

import pytest

from collectors.scrape.exposition import ExpositionError, kind_of, parse_series, scan

T = 1_700_000_000_000_000_000


def resolve(series: str):
    name, pairs = parse_series(series)
    return name, name, tuple(sorted(pairs))


def parse(text: str, *, openmetrics: bool = False, previous: dict | None = None, **options):
    current: dict = {}
    result = scan(
        text, openmetrics=openmetrics, resolve=resolve, previous=previous or {}, current=current, time_ns=T, **options
    )
    return result, current


def rows(text: str, **options) -> list[tuple]:
    result, _ = parse(text, **options)
    return [(s.name, dict(s.labels), s.value, s.kind, s.time_ns) for s in result.rows]


def test_text_format_kinds_follow_the_type_lines() -> None:
    text = """# HELP req_total Requests.
# TYPE req_total counter
req_total{code="200"} 3
# TYPE temp gauge
temp -1.5e3
# TYPE lat histogram
lat_bucket{le="0.1"} 1
lat_bucket{le="+Inf"} 2
lat_sum 0.3
lat_count 2
# TYPE rpc summary
rpc{quantile="0.5"} 0.2
rpc_sum 10
rpc_count 4
mystery 7
"""
    got = rows(text)
    assert [(n, k) for n, _, _, k, _ in got] == [
        ("req_total", "counter"),
        ("temp", "gauge"),
        ("lat_bucket", "counter"),
        ("lat_bucket", "counter"),
        ("lat_sum", "counter"),
        ("lat_count", "counter"),
        ("rpc", "gauge"),
        ("rpc_sum", "counter"),
        ("rpc_count", "counter"),
        ("mystery", "gauge"),  # untyped
    ]
    assert got[1][2] == -1500.0 and got[3][1] == {"le": "+Inf"}


def test_special_values_escapes_and_odd_label_values() -> None:
    text = (
        'a{path="/x,y}z",q="say \\"hi\\"\\n",b="back\\\\slash"} NaN\n'
        "b +Inf\n"
        "c -Inf\n"
        'd{e="=",f=""} 1\n'
        'e{ x = "1" , y="2", } 2\n'
    )
    got = rows(text)
    assert got[0][1] == {"path": "/x,y}z", "q": 'say "hi"\n', "b": "back\\slash"} and math.isnan(got[0][2])
    assert got[1][2] == math.inf and got[2][2] == -math.inf
    assert got[3][1] == {"e": "=", "f": ""}
    assert got[4][1] == {"x": "1", "y": "2"}


def test_text_timestamps_are_milliseconds_and_honoured_only_when_asked() -> None:
    assert rows("a 1 1700000000123\n")[0][4] == 1_700_000_000_123_000_000
    assert rows("a 1 1700000000123\n", honor_timestamps=False)[0][4] == T
    assert rows("a 1\n")[0][4] == T


def test_openmetrics_counters_created_exemplars_and_second_timestamps() -> None:
    text = """# TYPE req counter
# UNIT req requests
req_total{code="200"} 3 # {trace_id="abc} # x"} 1.0 1700000000.5
req_created{code="200"} 1.7e9
# TYPE lat histogram
lat_bucket{le="1.0"} 2 # {span_id="1"} 0.7
lat_bucket{le="+Inf"} 2
lat_sum 0.9
lat_count 2
lat_created 1.7e9
# TYPE g gaugehistogram
g_bucket{le="+Inf"} 4
g_gsum 2
g_gcount 4
# TYPE build info
build_info{version="1 # 2"} 1
# TYPE state stateset
state{state="a"} 1
x 5 1700000000.25
# EOF
"""
    result, _ = parse(text, openmetrics=True)
    got = [(s.name, s.kind, s.value) for s in result.rows]
    assert ("req_total", "counter", 3.0) in got
    assert not [n for n, _, _ in got if n.endswith("_created")]
    assert result.created == 2
    assert [k for n, k, _ in got if n.startswith("g_")] == ["gauge"] * 3
    assert ("build_info", "gauge", 1.0) in got
    assert dict(result.rows[[s.name for s in result.rows].index("build_info")].labels) == {"version": "1 # 2"}
    assert result.rows[-1].time_ns == 1_700_000_000_250_000_000


def test_text_format_created_gauges_of_prometheus_client_are_skipped() -> None:
    text = """# TYPE req_total counter
req_total 1.0
# TYPE req_created gauge
req_created 1.7e9
# TYPE lat_seconds histogram
lat_seconds_count 1.0
# TYPE lat_seconds_created gauge
lat_seconds_created 1.7e9
# TYPE cert_created gauge
cert_created 1.6e9
"""
    result, _ = parse(text)
    assert [s.name for s in result.rows] == ["req_total", "lat_seconds_count", "cert_created"]
    assert result.created == 2 and result.samples == 3


@pytest.mark.parametrize(
    ("text", "openmetrics", "message"),
    [
        ("a 1\n# EOF\nb 2\n", True, "does not end with # EOF"),
        ("a 1\n", True, "does not end with # EOF"),
        ("a 1\nb{c=d} 2\n", False, "line 2: "),
        ("a 1\nb x\n", False, "line 2: bad value"),
        ("a 1 2 3\n", False, "line 1: bad value"),
        ("# TYPE a bogus\na 1\n", False, "line 1: unknown metric type"),
        ("<html><body>Login</body></html>\n", False, "line 1: "),
        ('a{b="1",b="2"} 1\n', False, "appears twice"),
    ],
)
def test_malformed_bodies_name_the_line(text: str, openmetrics: bool, message: str) -> None:
    with pytest.raises(ExpositionError) as info:
        current: dict = {}
        from collectors.scrape.relabel import Relabeler
        from collectors.scrape.series import Resolver

        resolver = Resolver((), honor_labels=False, relabeler=Relabeler([]))
        scan(text, openmetrics=openmetrics, resolve=resolver.resolve, previous={}, current=current, time_ns=T)
    assert message in str(info.value)


def test_the_cache_carries_series_to_the_next_scrape_and_forgets_vanished_ones() -> None:
    first, cache = parse('a{x="1"} 1\na{x="2"} 2\n')
    assert first.new_series == 2
    calls: list[str] = []

    def counting(series: str):
        calls.append(series)
        return resolve(series)

    current: dict = {}
    second = scan('a{x="1"} 5\nb 1\n', openmetrics=False, resolve=counting, previous=cache, current=current, time_ns=T)
    assert calls == ["b"] and second.new_series == 1
    assert set(current) == {'a{x="1"}', "b"}  # a{x="2"} is gone from the next cache


def test_duplicates_are_counted_and_the_first_kept() -> None:
    result, _ = parse("a 1\na 2\n")
    assert [s.value for s in result.rows] == [1.0] and result.duplicates == 1


def test_max_samples_stops_the_parse() -> None:
    result, _ = parse("".join(f"m{i} 1\n" for i in range(10)), max_samples=5)
    assert result.truncated and len(result.rows) == 6


def test_kind_of_without_type_lines_is_gauge() -> None:
    assert kind_of("anything_total", {}) == "gauge"  # untyped, as Prometheus stores it
    assert kind_of("x_total", {"x": "counter"}) == "counter"
    assert kind_of("x_bucket", {"x": "summary"}) == "gauge"  # not a summary suffix: untyped
