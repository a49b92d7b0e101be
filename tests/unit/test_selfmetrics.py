"""The agent's own metrics: typed objects whose page is prometheus_client's, byte for byte.

``/metrics`` is a contract (dashboards, alert rules, the ``internal`` collector): the
names, HELP and TYPE lines, labels and value formats must stay what
prometheus_client's ``generate_latest`` wrote before the agent rendered them itself.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics, generate_latest
from prometheus_client import Counter as ClientCounter
from prometheus_client import Gauge as ClientGauge
from prometheus_client import Summary as ClientSummary

from agent.exposition import go_float
from agent.selfmetrics import Counter, Gauge, MetricRegistry, ProcessMetrics, Summary, _head
from agent.telemetry import Telemetry

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests/fixtures/telemetry/page.txt"
ODD = ("", 'a "quoted"\\ value\nwith a newline', "é ✓")
VALUES = (0.0, -0.0, 1.5, 1e6, 123456789.0, -2e7, 1e21, 1e-9, math.inf, -math.inf, math.nan, 7)


def test_each_type_renders_as_generate_latest_through_changes_and_new_series() -> None:
    disable_created_metrics()  # what the agent's prometheus_client registry did before
    client = CollectorRegistry()
    ours = MetricRegistry()
    pairs = []
    for kind, client_kind in ((Counter, ClientCounter), (Gauge, ClientGauge), (Summary, ClientSummary)):
        doc = f"{kind.__name__} help with a \\ backslash\nand a newline"
        for labels in ((), ("b_label", "a_label")):
            name = f"hostwatch_test_{kind.__name__.lower()}{len(labels)}"
            pairs.append(
                (ours.register(kind(name, doc, labels)), client_kind(name, doc, list(labels), registry=client))
            )
    assert ours.render() == generate_latest(client)
    for step, value in enumerate(VALUES):  # the cache must follow values, new series and label values
        for mine, theirs in pairs:
            targets = [(mine, theirs)]
            if mine.labelnames:
                label = ODD[step % len(ODD)]
                targets = [(mine.labels(label, str(step)), theirs.labels(label, str(step)))]
                targets.append((mine.labels(b_label="x", a_label="y"), theirs.labels(b_label="x", a_label="y")))
            for a, b in targets:
                if isinstance(mine, Counter):
                    if value >= 0 and not math.isnan(value):
                        a.inc(value)
                        b.inc(value)
                elif isinstance(mine, Gauge):
                    a.set(value)
                    b.set(value)
                    a.inc(2)
                    b.inc(2)
                else:
                    a.observe(value)
                    b.observe(value)
        assert ours.render() == generate_latest(client), step


def test_the_telemetry_page_keeps_the_names_help_types_and_labels_it_had() -> None:
    """The page of a Telemetry with every core metric in use, against the page prometheus_client
    rendered for the same use before (tests/fixtures/telemetry/page.txt, values that move left out)."""
    telemetry = Telemetry()
    exercise(telemetry)
    page = telemetry.page().decode()
    moving = ("process_", "hostwatch_build_info{", "hostwatch_start_time_seconds ")
    assert "\n".join(line for line in page.split("\n") if not line.startswith(moving)) == GOLDEN.read_text()
    assert re.search(r'^hostwatch_build_info\{python="[0-9.]+",version="[^"]+"\} 1\.0$', page, re.M)


def exercise(telemetry: Telemetry) -> None:
    """Every core metric with a series or two, and odd label values and numbers."""
    t = telemetry
    t.config_reloads.labels("success").inc(2)
    t.config_reloads.labels("failure").inc()
    t.config_last_reload_success.set(0)
    t.http_connections.inc(3)
    t.http_connections.dec()
    t.http_connections_closed.labels("idle_timeout").inc()
    for name in ("cpu", 'odd "name"\\ with\nnewline'):
        t.collector_runs.labels(name).inc(1234567)
        t.collector_errors.labels(name).inc(0)
        t.collector_timeouts.labels(name).inc()
        t.collector_duration.labels(name).observe(0.0123)
        t.collector_duration.labels(name).observe(1e-9)
        t.collector_samples.labels(name).set(12345678.0)
    t.log_lines_redacted.labels("password").inc(5)
    t.otlp_requests.labels("http", "metrics", "ok").inc()
    t.otlp_received_items.labels("logs").inc(1e21)
    t.otlp_refused_items.labels("traces", "unavailable").inc(7)
    t.otlp_inflight_bytes.set(float("inf"))
    t.journal_entries_read.labels("journal").inc(3)
    t.journal_cursor_lost.labels("journal").inc()
    t.journal_restarts.labels("journal", "exited").inc()
    t.journal_fields_truncated.labels("journal").inc()
    t.unrouted_items.labels("traces").inc(4)
    t.output_sent_items.labels("vm", "metrics").inc(100)
    t.output_requests.labels("vm", "ok").inc()
    t.output_retries.labels("vm").inc()
    t.output_errors.labels("vm").inc()
    t.output_dropped_items.labels("vm", "buffer_full").inc(9)
    t.output_request_duration.labels("vm").observe(0.25)
    t.buffer_items.labels("vm").set(-0.0)
    t.buffer_bytes.labels("vm").set(float("nan"))
    t.buffer_max_bytes.labels("vm").set(2**28)
    t.buffer_corrupt_records.labels("vm").inc()
    t.buffer_oldest_age.labels("vm").set(-float("inf"))
    lines = t.counter("hostwatch_log_lines_read", "Log lines read from files.")
    lines.inc(3)
    t.counter("hostwatch_log_rotations", "Rotations, by kind.", ("kind",)).labels("rename").inc()
    t.gauge("hostwatch_log_files", "Log files open (tailed), by collector instance.", ("collector",)).labels("a")


def test_process_metrics_are_the_process_collectors() -> None:
    client = CollectorRegistry()
    ProcessCollector(registry=client)
    theirs = generate_latest(client).decode().split("\n")
    ours = ProcessMetrics().text().split("\n")
    assert [line for line in ours if line.startswith("#")] == [line for line in theirs if line.startswith("#")]
    values = {line.split()[0]: float(line.split()[1]) for line in ours if line and not line.startswith("#")}
    expected = {line.split()[0]: float(line.split()[1]) for line in theirs if line and not line.startswith("#")}
    assert values.keys() == expected.keys()
    for name in ("process_start_time_seconds", "process_max_fds"):
        assert values[name] == expected[name]
    assert values["process_cpu_seconds_total"] == pytest.approx(expected["process_cpu_seconds_total"], abs=0.05)
    assert values["process_open_fds"] == pytest.approx(expected["process_open_fds"], abs=2)
    assert values["process_resident_memory_bytes"] == pytest.approx(expected["process_resident_memory_bytes"], rel=0.1)


def stat_files_open() -> int:
    """Descriptors of this process open on its own /proc stat file."""
    own, count = f"/proc/{os.getpid()}/stat", 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == own
    return count


def test_process_metrics_read_their_kept_stat_file_afresh_and_close_it_when_dropped() -> None:
    gc.collect()
    open_before = stat_files_open()
    metrics = ProcessMetrics()
    assert stat_files_open() == open_before + 1, "/proc/self/stat kept open"
    cpu_before = metrics.values()[3]
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn CPU: the next read must show it
        pass
    assert metrics.values()[3] >= cpu_before + 0.1
    del metrics
    gc.collect()
    assert stat_files_open() == open_before


def test_without_proc_the_process_metrics_are_left_out(tmp_path) -> None:
    assert ProcessMetrics(proc=str(tmp_path)).text() == ""


def test_updates_from_threads_are_all_counted_and_shown() -> None:
    registry = MetricRegistry()
    counter = registry.register(Counter("hostwatch_test_events", "events", ("rule",)))
    gauge = registry.register(Gauge("hostwatch_test_level", "level"))

    def work() -> None:
        series = counter.labels("r")
        for _ in range(20_000):
            series.inc()
            gauge.inc()
            registry.render()  # renders interleaved with updates must not keep a stale page

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    page = registry.render().decode()
    assert 'hostwatch_test_events_total{rule="r"} 80000.0\n' in page
    assert "hostwatch_test_level 80000.0\n" in page


def test_misuse_is_refused_with_the_metrics_name() -> None:
    counter = Counter("hostwatch_test_x", "x", ("output",))
    with pytest.raises(ValueError, match="hostwatch_test_x"):
        counter.inc()  # a labelled family has no series of its own
    with pytest.raises(ValueError, match="hostwatch_test_x"):
        counter.labels("a", "b")
    with pytest.raises(ValueError, match="hostwatch_test_z"):
        Gauge("hostwatch_test_z", "z").labels()  # nor a family without labels any by name
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("a").inc(-1)
    telemetry = Telemetry()
    with pytest.raises(ValueError, match="hostwatch_collector_runs declared again"):
        telemetry.counter("hostwatch_collector_runs", "again", ())  # a core name, with other labels
    with pytest.raises(ValueError, match="declared already"):
        telemetry.registry.register(Gauge("hostwatch_http_connections", "twice"))
    assert telemetry.counter("hostwatch_test_y", "y", ("a",)) is telemetry.counter("hostwatch_test_y", "y", ("a",))
    with pytest.raises(ValueError, match="another type or labels"):
        telemetry.gauge("hostwatch_test_y", "y", ("a",))


def test_reads_and_the_internal_collectors_view() -> None:
    telemetry = Telemetry()
    telemetry.output_retries.labels("vm").inc(2)
    telemetry.collector_duration.labels("cpu").observe(0.5)
    value = telemetry.registry.get_sample_value
    assert value("hostwatch_output_retries_total", {"output": "vm"}) == 2
    assert value("hostwatch_collector_duration_seconds_count", {"collector": "cpu"}) == 1
    assert value("hostwatch_collector_duration_seconds_sum", {"collector": "cpu"}) == 0.5
    assert value("hostwatch_output_retries_total", {"output": "other"}) is None
    families = {family.name: family for family in telemetry.registry.collect()}
    assert families["hostwatch_output_retries"].type == "counter"
    assert families["process_cpu_seconds"].samples[0].name == "process_cpu_seconds_total"


def test_a_prometheus_client_registry_passed_in_shows_the_same_values() -> None:
    client = CollectorRegistry()
    telemetry = Telemetry(client)
    telemetry.unrouted_items.labels("traces").inc(3)
    assert client.get_sample_value("hostwatch_unrouted_items_total", {"signal": "traces"}) == 3
    own = [line for line in telemetry.page().split(b"\n") if not line.startswith(b"process_")]
    assert [line for line in generate_latest(client).split(b"\n") if not line.startswith(b"process_")] == own


def readme_self_metrics() -> set[str]:
    """The metric names in the README's self-metrics table (its first column)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Self-metrics", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_*]+)`", line.split("|")[1]))
    return names


def test_every_declared_metric_is_in_the_readme_and_counted_somewhere() -> None:
    """A metric the README does not list is one nobody looks at: hostwatch_output_sent_bytes was
    declared, never counted, and on every page at 0 (it is gone)."""
    documented = readme_self_metrics()
    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in Telemetry().registry.collect()
        if not family.name.startswith("process_")
    }
    assert "process_*" in documented
    assert exposed - documented == set()
    sources = "\n".join(p.read_text() for d in ("agent", "collectors", "outputs") for p in (ROOT / d).rglob("*.py"))
    telemetry = Telemetry()
    for attr, metric in vars(telemetry).items():
        # used as an attribute, or named for a getattr (the redactor's and journald's counters)
        uses = sources.replace(f"self.{attr} = add(", "")
        if attr != "registry" and f".{attr}" not in uses and f'"{attr}"' not in uses:
            pytest.fail(f"{metric.name} is declared as telemetry.{attr} and never used")


def test_journal_entries_with_invalid_utf8_are_counted_with_the_log_lines(tmp_path) -> None:
    """journald counts on telemetry.log_lines_invalid_encoding, which the logs plugin declares:
    without a logs instance the attribute was missing and the entries' conversion raised."""
    from agent.config import convert
    from collectors.journald.export import ExportParser
    from collectors.journald.journald import JournaldCollector
    from tests.support import collector_context

    export = (ROOT / "tests/fixtures/journald/export.bin").read_bytes()  # one entry has invalid UTF-8
    telemetry = Telemetry()
    collector = JournaldCollector(
        convert({}, JournaldCollector.Config), collector_context(tmp_path, telemetry=telemetry)
    )
    records, _, _ = collector._convert(ExportParser(), export, "")
    assert len(records) == 4
    assert telemetry.registry.get_sample_value("hostwatch_log_lines_invalid_encoding_total") == 1
    # a logs instance declaring it too gets the same counter, not a refusal
    assert (
        telemetry.counter(
            "hostwatch_log_lines_invalid_encoding",
            "Log lines with bytes invalid in their encoding, replaced by U+FFFD.",
        )
        is telemetry.log_lines_invalid_encoding
    )


def test_a_gauge_set_to_its_value_again_keeps_its_familys_text_and_any_change_shows() -> None:
    samples = Gauge("hostwatch_collector_samples", "Samples.", ("collector",))
    samples.labels("cpu").set(29)
    text = samples.text()
    samples.labels("cpu").set(29.0)  # every run of an unchanged collector
    assert samples.text() is text, "not formatted again"
    for value, shown in ((30, "30.0"), (0.0, "0.0"), (-0.0, "-0.0"), (float("nan"), "NaN"), (float("nan"), "NaN")):
        samples.labels("cpu").set(value)
        assert samples.text().endswith(f'hostwatch_collector_samples{{collector="cpu"}} {shown}\n'), value
    for value, shown in ((0.0, "0.0"), (0, "0.0"), (-0.0, "-0.0"), (0.0, "0.0")):
        samples.labels("cpu").set(value)
        assert samples.text().endswith(f'hostwatch_collector_samples{{collector="cpu"}} {shown}\n'), value


def test_a_gauge_set_to_zero_again_keeps_its_familys_text() -> None:
    """A collector with nothing to report (no such hardware) sets its sample count to 0 every run."""
    samples = Gauge("hostwatch_collector_samples", "Samples.", ("collector",))
    samples.labels("hardware").set(0)
    text = samples.text()
    samples.labels("hardware").set(0)
    assert samples.text() is text, "not formatted again"
    samples.labels("hardware").set(-0.0)
    assert samples.text().endswith('hostwatch_collector_samples{collector="hardware"} -0.0\n')


def test_open_fds_count_the_descriptors_a_listing_of_proc_self_fd_counts() -> None:
    """The count from the directory's size (Linux >= 6.2) is the listing's, whatever is open."""
    metrics = ProcessMetrics()
    opened: list[int] = []
    try:
        for extra in (0, 1, 40):
            while len(opened) < extra:
                opened.append(os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC))
            assert metrics.values()[4] == len(os.listdir("/proc/self/fd")), extra
    finally:
        for fd in opened:
            os.close(fd)


def test_open_fds_are_listed_where_the_directory_size_is_no_count(monkeypatch) -> None:
    """Kernels before 6.2 give /proc/self/fd a size of 0: the directory is listed instead."""
    import agent.selfmetrics as selfmetrics

    metrics = ProcessMetrics()
    real_fstat = os.fstat
    sizes = []

    def fstat(fd, *args, **kwargs):  # the size of the kept /proc/self/fd descriptor
        result = real_fstat(fd, *args, **kwargs)
        if fd == metrics._fd_dir:
            sizes.append(result.st_size)
            return os.stat_result((*result[:6], 0, *result[7:]))  # st_size 0, as older kernels
        return result

    monkeypatch.setattr(selfmetrics.os, "fstat", fstat)
    assert metrics.values()[4] == len(os.listdir("/proc/self/fd"))
    assert metrics.values()[4] == len(os.listdir("/proc/self/fd"))
    assert len(sizes) == 1  # tried once, then listed


def test_open_fds_take_no_path_lookup_per_read(monkeypatch) -> None:
    """The count comes from the kept /proc/self/fd descriptor: no walk of the path on each scrape
    (about 30 µs once the caches went cold between two scrapes, against 4 for an fstat)."""
    import agent.selfmetrics as selfmetrics

    metrics = ProcessMetrics()
    real_stat, looked_up = os.stat, []

    def stat(path, *args, **kwargs):
        looked_up.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(selfmetrics.os, "stat", stat)
    for _ in range(3):
        assert metrics.values()[4] == len(os.listdir("/proc/self/fd"))
    assert looked_up == []


def test_process_text_writes_each_value_as_a_fresh_render_would(monkeypatch) -> None:
    """Lines of values that held are kept from the last render; every other value is written anew
    (zeros always: 0.0 and -0.0 are equal, written apart)."""
    metrics = ProcessMetrics()
    runs = [
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [1.0, 2.5, 3.0, 0.0, 5.0, 6.0],
        [1.0, 2.5, 3.0, -0.0, 5.0, 1e21],
        [float("nan"), 2.5, float("inf"), -0.0, 5.0],  # fewer values: /proc/self/fd unreadable
        [float("nan"), 2.5, float("inf"), -0.0, 5.0, 6.0],
    ]
    for run in runs:
        monkeypatch.setattr(metrics, "values", lambda run=run: list(run))
        expected = "".join(  # the whole page written afresh, as it was before lines were kept
            f"{_head(name, kind, doc)}{name} {go_float(value)}\n"
            for (name, kind, doc), value in zip(metrics._FIXED, run, strict=False)
        )
        assert metrics.text() == expected, run
