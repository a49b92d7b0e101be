"""``/sys/class/net``: node_exporter's ``netclass`` and ``bonding`` collectors."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import ABSENT, GONE, list_dir, parse_int, read_attr, read_raw

Report = Callable[[str], None]

# sysfs attribute -> (metric, is a counter, unit); all labelled {device}
NUMERIC = (
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


# Attributes fixed for a device's lifetime (the kernel sets them when the device registers),
# read again only when the device's ifindex changes, i.e. it was removed and another took
# its name. Everything else (flags, MTU, carrier, speed ...) can change at any time.
_STATIC = frozenset(("dev_id", "name_assign_type", "type"))
StaticCache = dict[str, tuple[bytes, dict[str, bytes | None]]]


def netclass(
    sys_root: str,
    ignored: re.Pattern[str],
    ignore_invalid_speed: bool,
    emit: Emitter,
    report: Report,
    static: StaticCache | None = None,
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
        _device(device, path, ignore_invalid_speed, emit, report, static)
    if static is not None:
        for gone in static.keys() - set(devices):
            del static[gone]


def _device(
    device: str, path: str, ignore_invalid_speed: bool, emit: Emitter, report: Report, static: StaticCache | None
) -> None:
    labels = (("device", device),)
    prefix = path + "/"
    text = {name: _attr(prefix + name, report) or "" for name in _TEXT}
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
    known: dict[str, bytes | None] | None = None
    ifindex = raw_attr(prefix + "ifindex", report)  # also the device's identity for the static cache
    if static is not None and ifindex is not None:
        cached = static.get(device)
        if cached is None or cached[0] != ifindex:
            cached = static[device] = (ifindex, {})
        known = cached[1]
    gauge, counter = emit.gauge, emit.counter
    for attr, metric, is_counter, unit in NUMERIC:
        if attr == "ifindex":
            raw = ifindex
        elif known is not None and attr in _STATIC:
            raw = known[attr] if attr in known else raw_attr(prefix + attr, report, known, attr)
        else:
            raw = raw_attr(prefix + attr, report)
        if raw is None:
            continue
        value = integer(prefix + attr, raw, report)
        if value is not None:
            (counter if is_counter else gauge)(metric, value, labels, unit=unit)
    raw = raw_attr(prefix + "speed", report)
    speed = None if raw is None else integer(prefix + "speed", raw, report)
    # Drivers without a link speed report -1; node_exporter 1.5 exports that as
    # -125000 unless --collector.netclass.ignore-invalid-speed is set.
    if speed is not None and (speed >= 0 or not ignore_invalid_speed):
        emit.gauge("node_network_speed_bytes", speed * 125_000, labels, unit="By/s")


def raw_attr(path: str, report: Report, keep: dict[str, bytes | None] | None = None, key: str = "") -> bytes | None:
    """An attribute's bytes, whitespace trimmed; None when the driver does not provide it.
    ``keep`` remembers the answer, unless it was an error worth reporting."""
    try:
        raw = read_raw(path)
    except OSError as exc:
        if exc.errno not in ABSENT and exc.errno not in GONE:
            report(f"cannot read {path}: {exc.strerror}")
            return None
        raw = None
    if keep is not None:
        keep[key] = raw
    return raw


def integer(path: str, raw: bytes, report: Report) -> int | None:
    # plain decimal digits (the usual case) without decoding; anything else as Go's ParseInt base 0
    if raw.isdigit() and (raw[0] != 48 or len(raw) == 1):  # 48: "0", a leading 0 means octal
        return int(raw)
    text = raw.decode("utf-8", "replace")
    try:
        return parse_int(text)
    except ValueError:
        report(f"{path}: not an integer: {text[:40]!r}")
        return None


def _attr(path: str, report: Report) -> str | None:
    """The attribute's text; None when the driver does not provide it (or it vanished)."""
    try:
        return read_attr(path)
    except OSError as exc:
        if exc.errno not in ABSENT and exc.errno not in GONE:
            report(f"cannot read {path}: {exc.strerror}")
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
