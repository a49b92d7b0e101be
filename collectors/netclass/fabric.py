"""``/sys/class/infiniband`` and ``/sys/class/fc_host``: node_exporter's ``infiniband`` and ``fibrechannel``."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import ABSENT, list_dir, parse_int, read_attr

Report = Callable[[str], None]

# counters/<file> (and counters_ext/<file>) -> node_infiniband_<metric>; data counters count 4-byte words
_IB_COUNTERS = {
    "excessive_buffer_overrun_errors": "excessive_buffer_overrun_errors_total",
    "link_downed": "link_downed_total",
    "link_error_recovery": "link_error_recovery_total",
    "local_link_integrity_errors": "local_link_integrity_errors_total",
    "multicast_rcv_packets": "multicast_packets_received_total",
    "multicast_xmit_packets": "multicast_packets_transmitted_total",
    "port_rcv_constraint_errors": "port_constraint_errors_received_total",
    "port_rcv_data": "port_data_received_bytes_total",
    "port_rcv_discards": "port_discards_received_total",
    "port_rcv_errors": "port_errors_received_total",
    "port_rcv_packets": "port_packets_received_total",
    "port_rcv_remote_physical_errors": "port_receive_remote_physical_errors_total",
    "port_rcv_switch_relay_errors": "port_receive_switch_relay_errors_total",
    "port_xmit_constraint_errors": "port_constraint_errors_transmitted_total",
    "port_xmit_data": "port_data_transmitted_bytes_total",
    "port_xmit_discards": "port_discards_transmitted_total",
    "port_xmit_packets": "port_packets_transmitted_total",
    "port_xmit_wait": "port_transmit_wait_total",
    "symbol_error": "symbol_error_total",
    "unicast_rcv_packets": "unicast_packets_received_total",
    "unicast_xmit_packets": "unicast_packets_transmitted_total",
    "VL15_dropped": "vl15_dropped_total",
}
_IB_COUNTERS_EXT = {
    "port_multicast_rcv_packets": "legacy_multicast_packets_received_total",
    "port_multicast_xmit_packets": "legacy_multicast_packets_transmitted_total",
    "port_rcv_data_64": "legacy_data_received_bytes_total",
    "port_rcv_packets_64": "legacy_packets_received_total",
    "port_unicast_rcv_packets": "legacy_unicast_packets_received_total",
    "port_unicast_xmit_packets": "legacy_unicast_packets_transmitted_total",
    "port_xmit_data_64": "legacy_data_transmitted_bytes_total",
    "port_xmit_packets_64": "legacy_packets_transmitted_total",
}
_WORDS = frozenset(("port_rcv_data", "port_xmit_data", "port_rcv_data_64", "port_xmit_data_64"))

_FC_INFO = ("speed", "port_state", "port_type", "port_id", "port_name", "fabric_name", "symbolic_name",
            "supported_classes", "supported_speeds", "dev_loss_tmo")  # fmt: skip
_FC_HEX_NAMES = frozenset(("node_name", "port_id", "port_name", "fabric_name"))  # "0x" prefix dropped
_FC_COUNTERS = {
    "dumped_frames": "dumped_frames_total",
    "error_frames": "error_frames_total",
    "invalid_crc_count": "invalid_crc_total",
    "rx_frames": "rx_frames_total",
    "rx_words": "rx_words_total",
    "tx_frames": "tx_frames_total",
    "tx_words": "tx_words_total",
    "seconds_since_last_reset": "seconds_since_last_reset_total",
    "invalid_tx_word_count": "invalid_tx_words_total",
    "link_failure_count": "link_failure_total",
    "loss_of_sync_count": "loss_of_sync_total",
    "loss_of_signal_count": "loss_of_signal_total",
    "nos_count": "nos_total",
    "fcp_packet_aborts": "fcp_packet_aborts_total",
}
_NOT_AVAILABLE = 2**64 - 1  # what fc_host drivers report for a counter they do not keep


def infiniband(sys_root: str, emit: Emitter, report: Report) -> None:
    base = f"{sys_root}/class/infiniband"
    try:
        devices = list_dir(base)
    except FileNotFoundError:
        return
    for device in devices:
        try:
            _ib_device(f"{base}/{device}", device, emit, report)
        except (OSError, ValueError) as exc:
            report(f"infiniband {device}: {getattr(exc, 'strerror', None) or exc}")


def _ib_device(path: str, device: str, emit: Emitter, report: Report) -> None:
    board_id, firmware = read_attr(f"{path}/board_id"), read_attr(f"{path}/fw_ver")
    try:
        hca_type = read_attr(f"{path}/hca_type")
    except FileNotFoundError:
        hca_type = ""
    ports = []
    for port in list_dir(f"{path}/ports"):
        port_path = f"{path}/ports/{port}"
        state, phys_state = _state_id(f"{port_path}/state"), _state_id(f"{port_path}/phys_state")
        ports.append((str(int(port)), port_path, state, phys_state, _rate(read_attr(f"{port_path}/rate"))))
    emit.gauge(
        "node_infiniband_info",
        1.0,
        (("board_id", board_id), ("device", device), ("firmware_version", firmware), ("hca_type", hca_type)),
    )
    for port, port_path, state, phys_state, rate in ports:
        labels = (("device", device), ("port", port))
        emit.gauge("node_infiniband_state_id", state, labels, unit="1")
        emit.gauge("node_infiniband_physical_state_id", phys_state, labels, unit="1")
        emit.gauge("node_infiniband_rate_bytes_per_second", rate, labels, unit="By/s")
        _ib_counters(f"{port_path}/counters", _IB_COUNTERS, labels, emit, report, required=True)
        _ib_counters(f"{port_path}/counters_ext", _IB_COUNTERS_EXT, labels, emit, report, required=False)


def _state_id(path: str) -> int:
    with open(path, "rb") as f:  # "4: ACTIVE"
        number, sep, _ = f.read().decode().partition(":")
    if not sep:
        raise ValueError(f"{path}: expected 'ID: NAME'")
    return int(number.strip())


def _rate(text: str) -> int:
    """``"100 Gb/sec (4X EDR)"`` -> bytes per second, computed as node_exporter does (a float32 of Gb/s)."""
    gbits = struct.unpack("f", struct.pack("f", float(text.split(" ", 1)[0])))[0]
    return int(gbits * 125_000_000)


def _ib_counters(path: str, names: dict[str, str], labels, emit: Emitter, report: Report, *, required: bool) -> None:
    try:
        files = list_dir(path)
    except FileNotFoundError:
        if required:
            raise
        return
    for name in files:
        metric = names.get(name)
        if metric is None:
            continue
        try:
            raw = read_attr(f"{path}/{name}")
        except OSError as exc:
            if exc.errno not in ABSENT:
                report(f"cannot read {path}/{name}: {exc.strerror}")
            continue
        try:
            value = int(raw, 0)
        except ValueError:
            if "N/A (no PMA)" not in raw:  # ports without a performance management agent
                report(f"{path}/{name}: not a counter: {raw[:40]!r}")
            continue
        if name in _WORDS:
            value *= 4
        unit = "By" if "bytes" in metric else "1"
        emit.counter(f"node_infiniband_{metric}", value, labels, unit=unit)


def fibrechannel(sys_root: str, emit: Emitter, report: Report) -> None:
    base = f"{sys_root}/class/fc_host"
    try:
        hosts = list_dir(base)
    except FileNotFoundError:
        return
    for host in hosts:
        try:
            _fc_host(f"{base}/{host}", host, emit, report)
        except (OSError, ValueError) as exc:
            report(f"fibrechannel {host}: {getattr(exc, 'strerror', None) or exc}")


def _fc_host(path: str, host: str, emit: Emitter, report: Report) -> None:
    info = {"fc_host": host}
    for name in (*_FC_INFO, "node_name"):
        value = read_attr(f"{path}/{name}")
        info[name] = value[2:] if name in _FC_HEX_NAMES and len(value) > 2 else value
    del info["node_name"]  # read (a host without it is broken), not a label in node_exporter 1.5
    counters = dict.fromkeys(_FC_COUNTERS, 0)  # a statistic the driver lacks reads as 0, as in node_exporter
    stats = f"{path}/statistics"
    for name in list_dir(stats):
        if name not in counters or not os.path.isfile(f"{stats}/{name}"):
            continue
        try:
            counters[name] = parse_int(read_attr(f"{stats}/{name}"))
        except OSError as exc:
            if exc.errno not in ABSENT:
                report(f"cannot read {stats}/{name}: {exc.strerror}")
        except ValueError:
            report(f"{stats}/{name}: not a counter")
            counters[name] = _NOT_AVAILABLE
    emit.gauge("node_fibrechannel_info", 1.0, tuple(sorted(info.items())))
    labels = (("fc_host", host),)
    for name, value in counters.items():
        if value != _NOT_AVAILABLE:
            emit.counter(f"node_fibrechannel_{_FC_COUNTERS[name]}", value, labels, unit="1")
