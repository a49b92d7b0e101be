"""``/proc/net`` and ``/proc/sys/net``: node_exporter's ``softnet``, ``arp``, ``conntrack`` and ``udp_queues``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from agent.plugin import Emitter
from agent.sysfs import read_text

Report = Callable[[str], None]
Read = Callable[[str], str]  # a file's text: read_text, or through descriptors kept open
Chunks = Callable[[str, int], Iterable[bytes]]  # a table in pieces: read_chunks, or KeptFiles.chunks
# The longest row of /proc/net/{tcp,udp}[6]: IPv4 rows are padded to 128 (udp) and 150 (tcp)
# bytes, IPv6 rows are about 170.
SOCKET_ROW = 256

_SOFTNET = (
    "node_softnet_processed_total",
    "node_softnet_dropped_total",
    "node_softnet_times_squeezed_total",
)
_CONNTRACK_FILES = (
    ("nf_conntrack_count", "node_nf_conntrack_entries"),
    ("nf_conntrack_max", "node_nf_conntrack_entries_limit"),
)
# /proc/net/stat/nf_conntrack column -> metric (node_exporter sums the per-CPU rows)
_CONNTRACK_STAT = (
    (2, "node_nf_conntrack_stat_found"),
    (4, "node_nf_conntrack_stat_invalid"),
    (5, "node_nf_conntrack_stat_ignore"),
    (8, "node_nf_conntrack_stat_insert"),
    (9, "node_nf_conntrack_stat_insert_failed"),
    (10, "node_nf_conntrack_stat_drop"),
    (11, "node_nf_conntrack_stat_early_drop"),
    (16, "node_nf_conntrack_stat_search_restart"),
)


def read_chunks(path: str, record: int = 0) -> Iterator[bytes]:
    """A file in pieces of 64 KiB, opened for this read."""
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(65536):
            yield chunk


def softnet(proc_root: str, emit: Emitter, report: Report, read: Read = read_text) -> None:
    path = f"{proc_root}/net/softnet_stat"
    try:
        text = read(path)
    except OSError as exc:
        report(f"cannot read {path}: {exc.strerror}")
        return
    # One row per possible CPU, in order: node_exporter 1.5 labels them by row number.
    for cpu, line in enumerate(text.splitlines()):
        columns = line.split()
        try:
            if len(columns) < 9:
                raise ValueError
            values = [int(column, 16) for column in columns[:3]]
        except ValueError:
            report(f"{path}: malformed row {cpu}: {line[:60]!r}")
            continue
        labels = (("cpu", str(cpu)),)
        for metric, value in zip(_SOFTNET, values, strict=True):
            emit.counter(metric, value, labels, unit="1")


def arp(proc_root: str, wanted: Callable[[str], bool], emit: Emitter, report: Report, read: Read = read_text) -> None:
    path = f"{proc_root}/net/arp"
    try:
        text = read(path)
    except FileNotFoundError:
        return  # no IPv4
    except OSError as exc:
        report(f"cannot read {path}: {exc.strerror}")
        return
    entries: dict[str, int] = {}
    for line in text.splitlines():
        columns = line.split()
        if len(columns) < 6:
            report(f"{path}: unexpected ARP table format: {line[:60]!r}")
            return
        if columns[0] != "IP":  # the header
            entries[columns[-1]] = entries.get(columns[-1], 0) + 1
    for device, count in entries.items():
        if wanted(device):
            emit.gauge("node_arp_entries", count, (("device", device),), unit="1")


def conntrack(
    proc_root: str, emit: Emitter, report: Report, read: Read = read_text, read_value: Read = read_text
) -> None:
    """``read_value`` reads a /proc/sys value (one read: a sysctl answers whole, and a second read to
    find the end costs it as much again)."""
    base = f"{proc_root}/sys/net/netfilter"
    for name, metric in _CONNTRACK_FILES:
        try:
            value = int(read_value(f"{base}/{name}").strip())
        except FileNotFoundError:
            return  # nf_conntrack not loaded: nothing to report
        except (OSError, ValueError) as exc:
            report(f"cannot read {base}/{name}: {getattr(exc, 'strerror', None) or exc}")
            return
        emit.gauge(metric, value, unit="1")
    path = f"{proc_root}/net/stat/nf_conntrack"
    try:
        rows = read(path).splitlines()[1:]  # the first line names the columns
    except FileNotFoundError:
        return
    except OSError as exc:
        report(f"cannot read {path}: {exc.strerror}")
        return
    sums = [0] * len(_CONNTRACK_STAT)
    for row in rows:
        fields = row.split()
        try:
            if len(fields) != 17:
                raise ValueError
            for i, (column, _) in enumerate(_CONNTRACK_STAT):
                sums[i] += int(fields[column], 16)
        except ValueError:
            report(f"{path}: malformed row: {row[:60]!r}")
            return
    for (_, metric), value in zip(_CONNTRACK_STAT, sums, strict=True):
        emit.gauge(metric, value, unit="1")  # node_exporter types these as gauges


def udp_queues(proc_root: str, emit: Emitter, report: Report, chunks: Chunks = read_chunks) -> None:
    for name, ip in (("udp", "v4"), ("udp6", "v6")):
        path = f"{proc_root}/net/{name}"
        try:
            tx, rx, _ = socket_table_sums(chunks(path, SOCKET_ROW), None)
        except FileNotFoundError:
            continue  # no IPv6 (or no IPv4)
        except (OSError, ValueError) as exc:
            report(f"{path}: {getattr(exc, 'strerror', None) or exc}")
            continue
        emit.gauge("node_udp_queues", tx, (("ip", ip), ("queue", "tx")), unit="By")
        emit.gauge("node_udp_queues", rx, (("ip", ip), ("queue", "rx")), unit="By")


def socket_table_sums(chunks: Iterable[bytes], states: dict[int, int] | None, limit: int = 0) -> tuple[int, int, int]:
    """Sum tx_queue and rx_queue of a /proc/net/{tcp,udp}[6] table, count rows per state.

    Parsed piece by piece as read (the table can be megabytes on a busy host); ``limit``
    > 0 stops with an error after that many rows instead of reading on.
    """
    tx = rx = rows = 0
    for line in _rows(chunks):
        fields = line.split()
        if len(fields) < 10:
            raise ValueError(f"malformed row: {line[:60]!r}")
        txq, _, rxq = fields[4].partition(b":")
        tx += int(txq, 16)
        rx += int(rxq, 16)
        rows += 1
        if states is not None:
            state = int(fields[3], 16)
            states[state] = states.get(state, 0) + 1
        if limit and rows > limit:
            raise OverflowError(f"more than {limit} sockets")
    return tx, rx, rows


def _rows(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines after the header of a table read in pieces (a line may be cut between two)."""
    header, rest = True, b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = lines.pop()  # the start of a line the next piece ends, or b"" after the last
        if header and lines:
            del lines[0]
            header = False
        yield from lines
    if rest and not header:  # no final newline
        yield rest


def device_filter(include: str, exclude: str) -> Callable[[str], bool]:
    if exclude:
        pattern = re.compile(exclude)
        return lambda device: not pattern.search(device)
    if include:
        pattern = re.compile(include)
        return lambda device: bool(pattern.search(device))
    return lambda device: True
