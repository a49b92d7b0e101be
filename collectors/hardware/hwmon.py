"""``/sys/class/hwmon``: node_exporter's ``hwmon`` collector.

Metric names are built from the sensor files the chip offers, exactly as
node_exporter 1.5 builds them: ``temp1_input`` -> ``node_hwmon_temp_celsius``,
``fan2_min`` -> ``node_hwmon_fan_min_rpm``, ``in0_input`` -> ``node_hwmon_in_volts``...
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import list_dir

Report = Callable[[str], None]

_FILE = re.compile(r"^(?P<type>[^0-9]+)(?P<id>[0-9]*)?(_(?P<property>.+))?$")
_INVALID = re.compile(r"[^a-z0-9:_]")
SENSOR_TYPES = frozenset(
    ("vrm", "beep_enable", "update_interval", "in", "cpu", "fan", "pwm", "temp", "curr", "power", "energy", "humidity",
     "intrusion")
)  # fmt: skip
_POWER_INTERVALS = frozenset(("average_interval", "average_interval_min", "average_interval_max"))
_FAN_RPM = frozenset(("input", "min", "max", "target"))
CHIP = ("chip", "sensor")


def clean(name: str) -> str:
    return _INVALID.sub("_", name.lower()).strip("_")


def hwmon(sys_root: str, emit: Emitter, report: Report) -> None:
    base = f"{sys_root}/class/hwmon"
    try:
        entries = list_dir(base)
    except FileNotFoundError:
        return  # no sensors exposed (most VMs)
    for entry in entries:
        path = f"{base}/{entry}"
        if os.path.isdir(path):
            try:
                _chip(path, emit)
            except OSError as exc:
                report(f"{path}: {exc.strerror}")


def _chip(path: str, emit: Emitter) -> None:
    chip = chip_name(path)
    sensors: dict[str, dict[str, str]] = {}
    _sensor_files(path, sensors)
    if os.path.isdir(f"{path}/device"):  # older drivers keep their files on the device
        _sensor_files(f"{path}/device", sensors)
    human = _human_name(path)
    if human:
        emit.gauge("node_hwmon_chip_names", 1.0, (("chip", chip), ("chip_name", human)))
    for sensor, values in sensors.items():
        _sensor(chip, sensor, values, emit)


def chip_name(path: str) -> str:
    """node_exporter's chip label: ``<bus>_<device>`` of the device link, else the ``name`` file, else the dir."""
    try:
        device = os.path.realpath(f"{path}/device", strict=True)
    except OSError:
        device = ""
    if device:
        parent, name = os.path.split(device)
        bus, name = clean(os.path.basename(parent)), clean(name)
        if bus and name:
            return f"{bus}_{name}"
        if name:
            return name
    human = _human_name(path)
    if human:
        return human
    return clean(os.path.basename(os.path.realpath(path)))


def _human_name(path: str) -> str:
    try:
        with open(f"{path}/name", "rb") as f:
            return clean(f.read().decode("utf-8", "replace"))
    except OSError:
        return ""


def _sensor_files(path: str, sensors: dict[str, dict[str, str]]) -> None:
    for name in list_dir(path):
        match = _FILE.match(name)
        if not match or match["type"] not in SENSOR_TYPES:
            continue
        try:
            # one read of up to 128 bytes, like node_exporter: some drivers answer EAGAIN to a retrying reader
            fd = os.open(f"{path}/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                raw = os.read(fd, 128)
            finally:
                os.close(fd)
        except OSError:
            continue  # directories ("power"), write-only and unsupported attributes: node_exporter skips them too
        sensor = f"{match['type']}{int(match['id'] or 0)}"
        sensors.setdefault(sensor, {})[match["property"] or ""] = raw.decode("utf-8", "replace").strip("\n")


def _float(text: str) -> float | None:
    """Go's ParseFloat: no surrounding spaces, no digit separators (Python's float() takes both)."""
    if "_" in text or text != text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _sensor(chip: str, sensor: str, values: dict[str, str], emit: Emitter) -> None:
    kind = _FILE.match(sensor)["type"]
    labels = (("chip", chip), ("sensor", sensor))
    if "label" in values:
        emit.gauge("node_hwmon_sensor_label", 1.0, (("chip", chip), ("label", values["label"]), ("sensor", sensor)))
    if kind == "beep_enable":
        emit.gauge("node_hwmon_beep_enabled", 1.0 if values.get("") == "1" else 0.0, labels)
        return
    if kind in ("vrm", "update_interval"):
        value = _float(values.get("", ""))
        if value is not None:
            if kind == "vrm":
                emit.gauge("node_hwmon_voltage_regulator_version", value, labels)
            else:
                emit.gauge("node_hwmon_update_interval_seconds", value * 0.001, labels, unit="s")
        return
    for element, text in values.items():
        if element == "label":
            continue
        value = _float(text)
        if value is None:
            continue
        name = f"node_hwmon_{kind}"
        if element == "input":
            if "" in values:
                name += "_input"
        elif element:
            name += "_" + clean(element)
        _emit_element(name, kind, element, value, labels, emit)


def _emit_element(name: str, kind: str, element: str, value: float, labels, emit: Emitter) -> None:
    if element in ("fault", "alarm"):
        emit.gauge(name, value, labels)
    elif element == "beep":
        emit.gauge(name + "_enabled", value, labels)
    elif kind in ("in", "cpu"):
        emit.gauge(name + "_volts", value * 0.001, labels, unit="V")
    elif kind == "temp" and element != "type":
        emit.gauge(name + "_celsius", value * 0.001, labels, unit="Cel")
    elif kind == "curr":
        emit.gauge(name + "_amps", value * 0.001, labels, unit="A")
    elif kind == "energy":
        emit.counter(name + "_joule_total", value / 1e6, labels, unit="J")
    elif kind == "power" and element == "accuracy":
        emit.gauge(name, value / 1e6, labels, unit="1")
    elif kind == "power" and element in _POWER_INTERVALS:
        emit.gauge(name + "_seconds", value * 0.001, labels, unit="s")
    elif kind == "power":
        emit.gauge(name + "_watt", value / 1e6, labels, unit="W")
    elif kind == "humidity":
        emit.gauge(name, value / 1e6, labels, unit="1")
    elif kind == "fan" and element in _FAN_RPM:
        emit.gauge(name + "_rpm", value, labels, unit="{rpm}")
    else:
        emit.gauge(name, value, labels)
