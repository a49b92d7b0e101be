"""From systemd's D-Bus answers to node_exporter's series: no I/O here, so tests feed plain values.

The rules are node_exporter 1.5's ``collector/systemd_linux.go``:

* ``node_systemd_units{state}`` counts *every* unit ListUnits returns (before
  filtering), by ActiveState, the five usual states always present;
* the per-unit series cover only units that are ``loaded`` and whose name
  matches ``unit_include`` and not ``unit_exclude`` (both anchored);
* ``node_systemd_unit_state`` has one series per usual state, 1 for the
  current one; its ``type`` label is the service's or mount's ``Type``
  property, empty for other units;
* ``system_running`` and the timers need systemd >= 212 (SystemState and
  LastTriggerUSec appeared then);
* a property that cannot be read leaves its series out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import re2

from agent.model import Labels, labels_from

UNIT_STATES = ("active", "activating", "deactivating", "inactive", "failed")
MIN_VERSION_SYSTEM_STATE = 212
NOT_SET = (1 << 64) - 1  # systemd's "no value" for 64-bit counts (TasksCurrent without accounting)
_VERSION = re.compile(r"[0-9]{3,}(\.[0-9]+)?")  # node_exporter's systemdVersionRE

SERVICE = "org.freedesktop.systemd1.Service"
SOCKET = "org.freedesktop.systemd1.Socket"
TIMER = "org.freedesktop.systemd1.Timer"
MOUNT = "org.freedesktop.systemd1.Mount"
UNIT = "org.freedesktop.systemd1.Unit"

GAUGE, COUNTER = "gauge", "counter"


class Unit(NamedTuple):
    """The fields of one ListUnits row this collector uses."""

    name: str
    load_state: str
    active_state: str
    path: str  # the unit's D-Bus object path


class Options(NamedTuple):
    restarts: bool = False
    start_time: bool = False
    tasks: bool = False


class Read(NamedTuple):
    """One property to Get: from which unit object, which interface, which property."""

    unit: str
    path: str
    interface: str
    prop: str


class Row(NamedTuple):
    kind: str
    name: str
    value: float
    labels: Labels
    unit: str


def parse_list_units(body: Iterable[Any]) -> tuple[list[Unit], int]:
    """ListUnits' ``a(ssssssouso)`` rows as :class:`Unit`; also how many rows were malformed."""
    units: list[Unit] = []
    bad = 0
    for row in body:
        if (
            isinstance(row, (list, tuple))
            and len(row) >= 7
            and all(isinstance(row[i], str) for i in (0, 2, 3, 6))
            and row[0]
        ):
            units.append(Unit(row[0], row[2], row[3], row[6]))
        else:
            bad += 1
    return units, bad


def parse_version(text: Any) -> tuple[float, str]:
    """systemd's Version property (``252.39-1~deb12u2``) as (252.39, the full text); (0, "") if unparsable."""
    if not isinstance(text, str):
        return 0.0, ""
    found = _VERSION.search(text)
    return (float(found.group(0)), text) if found else (0.0, "")


def summarize(units: Iterable[Unit]) -> dict[str, int]:
    counts = dict.fromkeys(UNIT_STATES, 0)
    for unit in units:
        counts[unit.active_state] = counts.get(unit.active_state, 0) + 1
    return counts


class UnitFilter:
    """node_exporter's include/exclude rule, on RE2 (linear time whatever the user writes)."""

    def __init__(self, include: str, exclude: str) -> None:
        self._include = compile_anchored(include)
        self._exclude = compile_anchored(exclude)

    def keep(self, unit: Unit) -> bool:
        return (
            unit.load_state == "loaded"
            and self._include.fullmatch(unit.name) is not None
            and self._exclude.fullmatch(unit.name) is None
        )


def compile_anchored(pattern: str) -> Any:
    """The pattern as an RE2 program; raises ValueError with RE2's message when it does not compile."""
    options = re2.Options()
    options.log_errors = False  # a bad pattern is a config error, not a line on stderr
    options.never_capture = True
    try:
        return re2.compile(f"(?:{pattern})", options)
    except re2.error as exc:
        message = exc.args[0] if exc.args else exc
        raise ValueError(message.decode() if isinstance(message, bytes) else str(message)) from None


def plan_reads(units: Iterable[Unit], version: float, options: Options) -> list[Read]:
    """The unit properties one run needs, and no more: most units need none."""
    reads: list[Read] = []
    for unit in units:
        name, path = unit.name, unit.path
        if name.endswith(".service"):
            reads.append(Read(name, path, SERVICE, "Type"))
            if options.restarts:
                reads.append(Read(name, path, SERVICE, "NRestarts"))
            if options.tasks:
                reads.append(Read(name, path, SERVICE, "TasksCurrent"))
                reads.append(Read(name, path, SERVICE, "TasksMax"))
        elif name.endswith(".mount"):
            reads.append(Read(name, path, MOUNT, "Type"))
        elif name.endswith(".socket"):
            reads.extend(Read(name, path, SOCKET, prop) for prop in ("NAccepted", "NConnections", "NRefused"))
        elif name.endswith(".timer") and version >= MIN_VERSION_SYSTEM_STATE:
            reads.append(Read(name, path, TIMER, "LastTriggerUSec"))
        if options.start_time and unit.active_state == "active":
            reads.append(Read(name, path, UNIT, "ActiveEnterTimestamp"))
    return reads


def _number(value: Any) -> float | None:
    # bool is an int too, but no property read here is a boolean
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else None


def build_rows(
    all_units: list[Unit],
    selected: list[Unit],
    version: tuple[float, str],
    system_state: Any,
    values: dict[tuple[str, str], Any],
    options: Options,
) -> list[Row]:
    """Every series of one run. ``values`` maps (unit name, property) to what Get returned;
    a property missing from it (read failed) leaves its series out."""
    rows = [Row(GAUGE, "node_systemd_version", version[0], labels_from({"version": version[1]}), "1")]
    for state, count in summarize(all_units).items():
        rows.append(Row(GAUGE, "node_systemd_units", count, labels_from({"state": state}), "{unit}"))
    if version[0] >= MIN_VERSION_SYSTEM_STATE and isinstance(system_state, str):
        rows.append(Row(GAUGE, "node_systemd_system_running", float(system_state == "running"), (), "1"))
    for unit in selected:
        name = unit.name
        kind = values.get((name, "Type"))
        kind = kind if isinstance(kind, str) else ""
        for state in UNIT_STATES:
            labels = labels_from({"name": name, "state": state, "type": kind})
            rows.append(Row(GAUGE, "node_systemd_unit_state", float(state == unit.active_state), labels, "1"))
        named = labels_from({"name": name})
        if name.endswith(".service"):
            _add(rows, COUNTER, "node_systemd_service_restart_total", values.get((name, "NRestarts")), named, "1")
            for prop, metric in (("TasksCurrent", "node_systemd_unit_tasks_current"),
                                 ("TasksMax", "node_systemd_unit_tasks_max")):  # fmt: skip
                value = values.get((name, prop))
                if value != NOT_SET:
                    _add(rows, GAUGE, metric, value, named, "{task}")
        elif name.endswith(".socket"):
            accepted = values.get((name, "NAccepted"))
            # node_exporter 1.5 types the refused count as a gauge despite its _total name: kept as is
            _add(rows, COUNTER, "node_systemd_socket_accepted_connections_total", accepted, named, "{connection}")
            if accepted is not None:  # like node_exporter, the others only after the first one read
                current = values.get((name, "NConnections"))
                _add(rows, GAUGE, "node_systemd_socket_current_connections", current, named, "{connection}")
                if current is not None:
                    refused = values.get((name, "NRefused"))
                    _add(rows, GAUGE, "node_systemd_socket_refused_connections_total", refused, named, "{connection}")
        elif name.endswith(".timer"):
            last = _number(values.get((name, "LastTriggerUSec")))
            if last is not None:
                rows.append(Row(GAUGE, "node_systemd_timer_last_trigger_seconds", last / 1e6, named, "s"))
        if options.start_time:
            if unit.active_state != "active":
                rows.append(Row(GAUGE, "node_systemd_unit_start_time_seconds", 0.0, named, "s"))
            elif (started := _number(values.get((name, "ActiveEnterTimestamp")))) is not None:
                rows.append(Row(GAUGE, "node_systemd_unit_start_time_seconds", started / 1e6, named, "s"))
    return rows


def _add(rows: list[Row], kind: str, metric: str, value: Any, labels: Labels, unit: str) -> None:
    number = _number(value)
    if number is not None:
        rows.append(Row(kind, metric, number, labels, unit))
