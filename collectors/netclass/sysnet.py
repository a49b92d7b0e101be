"""``/sys/class/net``: node_exporter's ``netclass`` and ``bonding`` collectors."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from agent.plugin import Emitter

from ._read import ABSENT, GONE, list_dir, parse_int, read_attr

Report = Callable[[str], None]

# sysfs attribute -> (metric, is a counter, unit); all labelled {device}
_NUMERIC = (
    ("addr_assign_type", "node_network_address_assign_type", False, "1"),
    ("carrier", "node_network_carrier", False, "1"),
    ("carrier_changes", "node_network_carrier_changes_total", True, "1"),
    ("carrier_up_count", "node_network_carrier_up_changes_total", True, "1"),
    ("carrier_down_count", "node_network_carrier_down_changes_total", True, "1"),
    ("dev_id", "node_network_device_id", False, "1"),
    ("dormant", "node_network_dormant", False, "1"),
    ("flags", "node_network_flags", False, "1"),
    ("ifindex", "node_network_iface_id", False, "1"),
    ("iflink", "node_network_iface_link", False, "1"),
    ("link_mode", "node_network_iface_link_mode", False, "1"),
    ("mtu", "node_network_mtu_bytes", False, "By"),
    ("name_assign_type", "node_network_name_assign_type", False, "1"),
    ("netdev_group", "node_network_net_dev_group", False, "1"),
    ("tx_queue_len", "node_network_transmit_queue_length", False, "1"),
    ("type", "node_network_protocol_type", False, "1"),
)
_TEXT = ("address", "broadcast", "duplex", "ifalias", "operstate")


def _attr(path: str, report: Report) -> str | None:
    """The attribute's text; None when the driver does not provide it (or it vanished)."""
    try:
        return read_attr(path)
    except OSError as exc:
        if exc.errno not in ABSENT and exc.errno not in GONE:
            report(f"cannot read {path}: {exc.strerror}")
        return None


def netclass(
    sys_root: str, ignored: re.Pattern[str], ignore_invalid_speed: bool, emit: Emitter, report: Report
) -> None:
    base = f"{sys_root}/class/net"
    try:
        devices = list_dir(base)
    except FileNotFoundError:
        return  # no sysfs (a container without /sys): nothing to report, as node_exporter
    for device in devices:
        path = f"{base}/{device}"
        if ignored.search(device) or not os.path.isdir(path):  # bonding_masters is a file here
            continue
        _device(device, path, ignore_invalid_speed, emit, report)


def _device(device: str, path: str, ignore_invalid_speed: bool, emit: Emitter, report: Report) -> None:
    labels = (("device", device),)
    text = {name: _attr(f"{path}/{name}", report) or "" for name in _TEXT}
    if not os.path.isdir(path):
        return  # removed while we read it: its series simply end
    emit.gauge("node_network_up", 1.0 if text["operstate"] == "up" else 0.0, labels, unit="1")
    emit.gauge(
        "node_network_info",
        1.0,
        (
            ("address", text["address"]),
            ("broadcast", text["broadcast"]),
            ("device", device),
            ("duplex", text["duplex"]),
            ("ifalias", text["ifalias"]),
            ("operstate", text["operstate"]),
        ),
    )
    for attr, metric, is_counter, unit in _NUMERIC:
        value = _number(f"{path}/{attr}", report)
        if value is not None:
            (emit.counter if is_counter else emit.gauge)(metric, value, labels, unit=unit)
    speed = _number(f"{path}/speed", report)
    # Drivers without a link speed report -1; node_exporter 1.5 exports that as
    # -125000 unless --collector.netclass.ignore-invalid-speed is set.
    if speed is not None and (speed >= 0 or not ignore_invalid_speed):
        emit.gauge("node_network_speed_bytes", speed * 125_000, labels, unit="By/s")


def _number(path: str, report: Report) -> int | None:
    raw = _attr(path, report)
    if raw is None:
        return None
    try:
        return parse_int(raw)
    except ValueError:
        report(f"{path}: not an integer: {raw[:40]!r}")
        return None


def bonding(sys_root: str, emit: Emitter, report: Report) -> None:
    base = f"{sys_root}/class/net"
    try:
        with open(f"{base}/bonding_masters", "rb") as f:
            masters = f.read().decode("utf-8", "replace").split()
    except FileNotFoundError:
        return  # the bonding module is not loaded
    except OSError as exc:
        report(f"cannot read {base}/bonding_masters: {exc.strerror}")
        return
    for master in masters:
        try:
            with open(f"{base}/{master}/bonding/slaves", "rb") as f:
                slaves = f.read().decode("utf-8", "replace").split()
            active = sum(_mii_up(base, master, slave) for slave in slaves)
        except OSError as exc:
            report(f"bonding {master}: {exc.strerror}: {exc.filename}")
            continue
        labels = (("master", master),)
        emit.gauge("node_bonding_slaves", len(slaves), labels, unit="1")
        emit.gauge("node_bonding_active", active, labels, unit="1")


def _mii_up(base: str, master: str, slave: str) -> bool:
    # lower_<slave> since kernel 4.x; slave_<slave> before
    try:
        state = read_attr(f"{base}/{master}/lower_{slave}/bonding_slave/mii_status")
    except FileNotFoundError:
        state = read_attr(f"{base}/{master}/slave_{slave}/bonding_slave/mii_status")
    return state == "up"
