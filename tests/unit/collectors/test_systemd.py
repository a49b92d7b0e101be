"""The systemd collector's mapping of D-Bus values to series, and what it does without a bus.

The real thing (systemd answering over D-Bus, beside node_exporter) is
tests/packaging/test_systemd_nspawn.py; here only what needs no systemd.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.config import ConfigError, parse_config
from agent.emitter import RunEmitter
from agent.registry import load_registry
from collectors.systemd.units import (
    NOT_SET,
    Options,
    Unit,
    UnitFilter,
    build_rows,
    parse_list_units,
    parse_version,
    plan_reads,
)
from tests.support import collector_context

REGISTRY = load_registry()
DEFAULT_EXCLUDE = r".+\.(automount|device|mount|scope|slice)"


def row(name: str, load: str = "loaded", active: str = "active") -> tuple:
    path = "/org/freedesktop/systemd1/unit/" + name.replace(".", "_2e")
    return (name, "description", load, active, "running", "", path, 0, "", "/")


def series(rows, metric: str) -> dict[tuple, float]:
    return {r.labels: r.value for r in rows if r.name == metric}


def test_list_units_rows_and_malformed_ones() -> None:
    units, bad = parse_list_units([row("a.service"), ("short",), row(""), [1, 2, 3, 4, 5, 6, 7]])
    assert units == [Unit("a.service", "loaded", "active", "/org/freedesktop/systemd1/unit/a_2eservice")]
    assert bad == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("252.39-1~deb12u2", (252.39, "252.39-1~deb12u2")),
        ("249", (249.0, "249")),
        ("v255.4-1-arch", (255.4, "v255.4-1-arch")),
        ("21", (0.0, "")),
        (None, (0.0, "")),
    ],
)
def test_version_like_node_exporter(text, expected) -> None:
    assert parse_version(text) == expected


def test_filter_is_anchored_and_needs_loaded() -> None:
    keep = UnitFilter(".+", DEFAULT_EXCLUDE).keep
    assert keep(Unit("ssh.service", "loaded", "active", "/p"))
    assert not keep(Unit("home.mount", "loaded", "active", "/p"))
    assert not keep(Unit("user.slice", "loaded", "active", "/p"))
    assert not keep(Unit("gone.service", "not-found", "inactive", "/p"))
    only = UnitFilter("ssh", "").keep  # anchored: "ssh" does not match "ssh.service"
    assert not only(Unit("ssh.service", "loaded", "active", "/p"))
    assert UnitFilter("ssh.+", "").keep(Unit("ssh.service", "loaded", "active", "/p"))


def test_reads_only_what_the_series_need() -> None:
    units = [Unit(n, "loaded", "active", f"/{n}") for n in ("a.service", "b.socket", "c.timer", "d.target")]
    plain = {(r.unit, r.prop) for r in plan_reads(units, 252, Options())}
    assert plain == {
        ("a.service", "Type"),
        ("b.socket", "NAccepted"),
        ("b.socket", "NConnections"),
        ("b.socket", "NRefused"),
        ("c.timer", "LastTriggerUSec"),
    }
    old = {(r.unit, r.prop) for r in plan_reads(units, 211, Options())}
    assert ("c.timer", "LastTriggerUSec") not in old  # LastTriggerUSec came with systemd 212
    full = {(r.unit, r.prop) for r in plan_reads(units, 252, Options(restarts=True, start_time=True, tasks=True))}
    assert {("a.service", "NRestarts"), ("a.service", "TasksMax"), ("d.target", "ActiveEnterTimestamp")} <= full


def test_rows_follow_node_exporter() -> None:
    all_units = [
        Unit("a.service", "loaded", "failed", "/a"),
        Unit("b.socket", "loaded", "active", "/b"),
        Unit("c.timer", "loaded", "active", "/c"),
        Unit("d.target", "loaded", "reloading", "/d"),
        Unit("e.mount", "loaded", "active", "/e"),  # counted in the summary, not exported per unit
    ]
    selected = all_units[:4]
    values = {
        ("a.service", "Type"): "simple",
        ("a.service", "NRestarts"): 3,
        ("a.service", "TasksCurrent"): NOT_SET,
        ("a.service", "TasksMax"): 4915,
        ("b.socket", "NAccepted"): 7,
        ("b.socket", "NConnections"): 1,  # NRefused missing: an older systemd
        ("c.timer", "LastTriggerUSec"): 1_700_000_000_500_000,
        ("b.socket", "ActiveEnterTimestamp"): 1_700_000_000_000_000,
    }
    options = Options(restarts=True, start_time=True, tasks=True)
    rows = build_rows(all_units, selected, (252.39, "252.39-1"), "degraded", values, options)
    state = series(rows, "node_systemd_unit_state")
    assert state[(("name", "a.service"), ("state", "failed"), ("type", "simple"))] == 1
    assert state[(("name", "a.service"), ("state", "active"), ("type", "simple"))] == 0
    assert len(state) == 4 * 5
    assert sum(state[(("name", "d.target"), ("state", s), ("type", ""))] for s in ("active", "inactive")) == 0
    assert series(rows, "node_systemd_units") == {
        (("state", "active"),): 3,
        (("state", "activating"),): 0,
        (("state", "deactivating"),): 0,
        (("state", "inactive"),): 0,
        (("state", "failed"),): 1,
        (("state", "reloading"),): 1,
    }
    assert series(rows, "node_systemd_system_running") == {(): 0}
    assert series(rows, "node_systemd_version") == {(("version", "252.39-1"),): 252.39}
    assert series(rows, "node_systemd_service_restart_total") == {(("name", "a.service"),): 3}
    assert series(rows, "node_systemd_unit_tasks_current") == {}  # systemd's "no value"
    assert series(rows, "node_systemd_unit_tasks_max") == {(("name", "a.service"),): 4915}
    assert series(rows, "node_systemd_socket_accepted_connections_total") == {(("name", "b.socket"),): 7}
    assert series(rows, "node_systemd_socket_current_connections") == {(("name", "b.socket"),): 1}
    assert series(rows, "node_systemd_socket_refused_connections_total") == {}
    assert series(rows, "node_systemd_timer_last_trigger_seconds") == {(("name", "c.timer"),): 1_700_000_000.5}
    started = series(rows, "node_systemd_unit_start_time_seconds")
    assert started[(("name", "a.service"),)] == 0  # not active: 0, as node_exporter
    assert started[(("name", "b.socket"),)] == 1_700_000_000
    assert (("name", "c.timer"),) not in started  # active but its timestamp unreadable: left out
    kinds = {r.name: r.kind for r in rows}
    assert kinds["node_systemd_service_restart_total"] == "counter"
    assert kinds["node_systemd_socket_accepted_connections_total"] == "counter"


def test_old_systemd_has_no_system_running() -> None:
    rows = build_rows([], [], (211.0, "211"), "running", {}, Options())
    assert series(rows, "node_systemd_system_running") == {}


def config(**table):
    return parse_config({"collectors": {"systemd": [table]}}, environ={}, registry=REGISTRY).collectors[0].config


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"unit_include": "(unclosed"}, "collectors.systemd[0].unit_include: not a valid RE2 pattern"),
        ({"unit_exclude": r"(?<=x)y"}, "collectors.systemd[0].unit_exclude: not a valid RE2 pattern"),
        ({"bus_address": "/run/dbus/system_bus_socket"}, "bus_address: expected a D-Bus address"),
        ({"bus_address": "unix:path=/run/systemd/private"}, "bus_address: systemd's private socket"),
    ],
)
def test_bad_options_are_config_errors(table, message) -> None:
    with pytest.raises(ConfigError) as info:
        config(**table)
    assert message in "\n".join(info.value.errors)


async def collect_twice(address: str, tmp_path) -> list[RunEmitter]:
    cls = REGISTRY["collectors"]["systemd"]
    collector = cls(config(bus_address=address), collector_context(tmp_path))
    runs = []
    for _ in range(2):
        emitter = RunEmitter(1)
        await asyncio.wait_for(collector.collect(emitter), 10)
        runs.append(emitter)
    await collector.close()
    await collector.close()
    return runs


async def test_no_bus_means_no_series_and_one_error_per_run(tmp_path) -> None:
    runs = await collect_twice(f"unix:path={tmp_path}/no-bus", tmp_path)
    for run in runs:
        assert run.samples == []
        assert len(run.errors) == 1
    # the same text every run: the engine counts each and logs it once
    assert runs[0].errors == runs[1].errors
    assert runs[0].errors[0].startswith(f"systemd over D-Bus at unix:path={tmp_path}/no-bus: FileNotFoundError")
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


async def test_a_socket_that_hangs_up_is_an_error_not_a_crash(tmp_path) -> None:
    path = tmp_path / "bus"

    async def hang_up(reader, writer):
        writer.close()

    server = await asyncio.start_unix_server(hang_up, path)
    try:
        runs = await collect_twice(f"unix:path={path}", tmp_path)
    finally:
        server.close()
        await server.wait_closed()
    for run in runs:
        assert run.samples == [] and len(run.errors) == 1, run.errors
