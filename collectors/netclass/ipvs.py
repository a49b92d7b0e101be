"""``/proc/net/ip_vs_stats`` and ``/proc/net/ip_vs``: node_exporter's ``ipvs`` collector."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import read_text

Report = Callable[[str], None]

BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark")
_TOTALS = (
    ("node_ipvs_connections_total", "1"),
    ("node_ipvs_incoming_packets_total", "1"),
    ("node_ipvs_outgoing_packets_total", "1"),
    ("node_ipvs_incoming_bytes_total", "By"),
    ("node_ipvs_outgoing_bytes_total", "By"),
)


def ipvs(proc_root: str, labels: tuple[str, ...], emit: Emitter, report: Report) -> None:
    path = f"{proc_root}/net/ip_vs_stats"
    try:
        lines = read_text(path).split("\n", 3)
    except FileNotFoundError:
        return  # IPVS not loaded
    except OSError as exc:
        report(f"cannot read {path}: {exc.strerror}")
        return
    try:
        fields = lines[2].split() if len(lines) == 4 else []
        if len(fields) != 5:
            raise ValueError("unexpected layout")
        totals = [int(field, 16) for field in fields]
    except ValueError as exc:
        report(f"{path}: {exc}")
        return
    for (metric, unit), value in zip(_TOTALS, totals, strict=True):
        emit.counter(metric, value, unit=unit)
    path = f"{proc_root}/net/ip_vs"
    try:
        backends = parse_backends(read_text(path))
    except (OSError, ValueError) as exc:
        report(f"{path}: {getattr(exc, 'strerror', None) or exc}")
        return
    sums: dict[tuple[str, ...], list[int]] = {}
    for backend, counts in backends:
        key = tuple(backend[label] for label in labels)
        total = sums.setdefault(key, [0, 0, 0])
        for i in range(3):
            total[i] += counts[i]
    for key, (active, inactive, weight) in sums.items():
        series = tuple(sorted(zip(labels, key, strict=True)))
        emit.gauge("node_ipvs_backend_connections_active", active, series, unit="1")
        emit.gauge("node_ipvs_backend_connections_inactive", inactive, series, unit="1")
        emit.gauge("node_ipvs_backend_weight", weight, series, unit="1")


def parse_backends(text: str) -> list[tuple[dict[str, str], tuple[int, int, int]]]:
    """Each real server with its virtual service's labels and (active, inactive, weight)."""
    out = []
    service = {"proto": "", "local_mark": "", "local_address": "", "local_port": "0"}
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] in ("IP", "Prot") or (len(fields) > 1 and fields[1] == "RemoteAddress:Port"):
            continue
        if fields[0] in ("TCP", "UDP") and len(fields) >= 2:
            address, port = _address_port(fields[1])
            service = {"proto": fields[0], "local_mark": "", "local_address": address, "local_port": port}
        elif fields[0] == "FWM" and len(fields) >= 2:
            service = {"proto": "FWM", "local_mark": fields[1], "local_address": "", "local_port": "0"}
        elif fields[0] == "->" and len(fields) >= 6:
            address, port = _address_port(fields[1])
            weight, active, inactive = int(fields[3]), int(fields[4]), int(fields[5])
            out.append(({**service, "remote_address": address, "remote_port": port}, (active, inactive, weight)))
    return out


def _address_port(text: str) -> tuple[str, str]:
    """``0A000001:0050`` or ``[2620:0:...]:0050`` -> ("10.0.0.1", "80")."""
    if len(text) == 13:
        address = str(ipaddress.IPv4Address(bytes.fromhex(text[:8])))
    elif len(text) == 46:
        ip6 = ipaddress.IPv6Address(text[1:40])
        address = str(ip6.ipv4_mapped or ip6)  # Go prints a v4-mapped address as plain IPv4
    else:
        raise ValueError(f"unexpected IP:Port {text!r}")
    return address, str(int(text[-4:], 16))
