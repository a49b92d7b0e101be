"""``/sys/class/power_supply`` and ``/sys/class/powercap``: node_exporter's ``powersupplyclass`` and ``rapl``."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import list_dir, parse_int, read_attr

Report = Callable[[str], None]

# sysfs file -> (metric suffix, divisor, unit): µA, µV, µWh, µW are divided by 1e6, tenths of °C by 10
_NUMBERS = {
    "authentic": ("authentic", 1, "1"),
    "calibrate": ("calibrate", 1, "1"),
    "capacity": ("capacity", 1, "%"),
    "capacity_alert_max": ("capacity_alert_max", 1, "%"),
    "capacity_alert_min": ("capacity_alert_min", 1, "%"),
    "cycle_count": ("cyclecount", 1, "1"),
    "online": ("online", 1, "1"),
    "present": ("present", 1, "1"),
    "time_to_empty_now": ("time_to_empty_seconds", 1, "s"),
    "time_to_full_now": ("time_to_full_seconds", 1, "s"),
    **{f: (f, 1e6, u) for f, u in (
        ("current_boot", "A"), ("current_max", "A"), ("energy_empty", "Wh"), ("energy_empty_design", "Wh"),
        ("energy_full", "Wh"), ("energy_full_design", "Wh"), ("voltage_boot", "V"), ("voltage_max", "V"),
        ("voltage_max_design", "V"), ("voltage_min", "V"), ("voltage_min_design", "V"), ("voltage_ocv", "V"),
        ("charge_control_limit", "A"), ("charge_control_limit_max", "A"), ("charge_counter", "Ah"),
        ("charge_empty", "Ah"), ("charge_empty_design", "Ah"), ("charge_full", "Ah"), ("charge_full_design", "Ah"),
        ("charge_term_current", "A"), ("constant_charge_current", "A"), ("constant_charge_current_max", "A"),
        ("constant_charge_voltage", "V"), ("constant_charge_voltage_max", "V"), ("precharge_current", "A"),
        ("input_current_limit", "A"))},
    "current_now": ("current_ampere", 1e6, "A"),
    "energy_now": ("energy_watthour", 1e6, "Wh"),
    "voltage_now": ("voltage_volt", 1e6, "V"),
    "charge_now": ("charge_ampere", 1e6, "Ah"),
    "power_now": ("power_watt", 1e6, "W"),
    **{f: (f"{f}_celsius", 10, "Cel") for f in (
        "temp", "temp_alert_max", "temp_alert_min", "temp_ambient", "temp_ambient_max", "temp_ambient_min",
        "temp_max", "temp_min")},
}  # fmt: skip
INFO_LABELS = ("capacity_level", "charge_type", "health", "manufacturer", "model_name", "serial_number", "status",
               "technology", "type", "usb_type", "scope")  # fmt: skip
# A value the supply cannot give right now (a battery's time to empty while charging): left out silently.
_UNAVAILABLE = frozenset((errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL, errno.ENODATA, errno.ENODEV, errno.EACCES))
_METRIC_NAME = re.compile(r"_*[^0-9A-Za-z_]+_*")


def powersupplyclass(sys_root: str, ignored: re.Pattern[str], emit: Emitter, report: Report) -> None:
    base = f"{sys_root}/class/power_supply"
    try:
        supplies = list_dir(base)
    except FileNotFoundError:
        return
    for supply in supplies:
        if ignored.search(supply):
            continue
        try:
            files = list_dir(f"{base}/{supply}")
        except OSError as exc:
            report(f"power supply {supply}: {exc.strerror}")
            continue
        labels = (("power_supply", supply),)
        info = {"power_supply": supply}
        for name in files:
            number = _NUMBERS.get(name)
            if number is None and name not in INFO_LABELS:
                continue
            path = f"{base}/{supply}/{name}"
            try:
                text = read_attr(path)
            except OSError as exc:
                if exc.errno not in _UNAVAILABLE:
                    report(f"cannot read {path}: {exc.strerror}")
                continue
            if number is None:
                if text:
                    info[name] = text
                continue
            try:
                value = parse_int(text)
            except ValueError:
                report(f"{path}: not an integer: {text[:40]!r}")
                continue
            metric, divisor, unit = number
            emit.gauge(f"node_power_supply_{metric}", value / divisor if divisor != 1 else value, labels, unit=unit)
        emit.gauge("node_power_supply_info", 1.0, tuple(sorted(info.items())))


class Rapl:
    """RAPL energy counters; remembers having said once that they are root-only."""

    def __init__(self, sys_root: str, zone_label: bool, log_once: Callable[[str], None]) -> None:
        self._base = f"{sys_root}/class/powercap"
        self._zone_label = zone_label
        self._log_once = log_once

    def __call__(self, emit: Emitter, report: Report) -> None:
        try:
            entries = list_dir(self._base)
        except FileNotFoundError:
            return  # no powercap (VMs, non-Intel/AMD)
        uses: dict[str, int] = {}
        for entry in entries:
            path = f"{self._base}/{entry}"
            try:
                name = read_attr(f"{path}/name")
            except OSError:
                continue  # the control type directory ("intel-rapl") has no name: not a zone
            index, name = _index_and_name(uses, name)
            uses[name] = index + 1
            try:
                int(read_attr(f"{path}/max_energy_range_uj"))
                microjoules = int(read_attr(f"{path}/energy_uj"))
            except PermissionError:
                # root-only since Linux 5.10 (the PLATYPUS side channel): as node_exporter, no data, no failure
                self._log_once(f"rapl: {path}/energy_uj is readable by root only; no node_rapl_* series")
                return
            except (OSError, ValueError) as exc:
                report(f"rapl zone {entry}: {getattr(exc, 'strerror', None) or exc}")
                continue
            joules = microjoules / 1e6
            if self._zone_label:
                emit.counter(
                    "node_rapl_joules_total",
                    joules,
                    (("index", str(index)), ("path", path), ("rapl_zone", name)),
                    unit="J",
                )
            else:
                metric = f"node_rapl_{_METRIC_NAME.sub('_', name)}_joules_total"
                emit.counter(metric, joules, (("index", str(index)), ("path", path)), unit="J")


def _index_and_name(uses: dict[str, int], name: str) -> tuple[int, str]:
    """``package-0`` -> (0, "package"); ``core`` -> (times seen before, "core")."""
    parts = name.split("-")
    if len(parts) == 2 and parts[1].lstrip("+-").isdigit():
        return int(parts[1]), parts[0]
    return uses.get(name, 0), name
