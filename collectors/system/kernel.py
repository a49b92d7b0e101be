"""node_exporter's ``filefd``, ``entropy``, ``pressure``, ``schedstat`` and ``interrupts`` collectors.

Each reads one or a few /proc files per run under the agent's proc_root.
"""

from __future__ import annotations

import errno

from agent.plugin import Emitter
from agent.sysfs import read_bytes

from .base import Roots, Unavailable, read_uint

NS_PER_SECOND = 1e9
# /proc/pressure file -> ((line prefix, metric name), ...); node_exporter 1.5 reads cpu's "some" line only
PRESSURE = {
    "cpu": ((b"some", "node_pressure_cpu_waiting_seconds_total"),),
    "io": ((b"some", "node_pressure_io_waiting_seconds_total"), (b"full", "node_pressure_io_stalled_seconds_total")),
    "memory": (
        (b"some", "node_pressure_memory_waiting_seconds_total"),
        (b"full", "node_pressure_memory_stalled_seconds_total"),
    ),
}


class FilefdCollector:
    name = "filefd"

    def __init__(self, roots: Roots) -> None:
        self._path = str(roots.proc / "sys" / "fs" / "file-nr")
        self._files = roots.files

    def collect(self, emit: Emitter) -> None:
        parts = self._files.read_once(self._path).strip().split(b"\t")
        if len(parts) < 3:
            raise ValueError(f"{self._path}: unexpected number of file stats")
        # the second number (free handles) has been 0 since Linux 2.6
        emit.gauge("node_filefd_allocated", float(parts[0]), unit="1")
        emit.gauge("node_filefd_maximum", float(parts[2]), unit="1")


class EntropyCollector:
    name = "entropy"

    def __init__(self, roots: Roots) -> None:
        folder = roots.proc / "sys" / "kernel" / "random"
        self._available, self._size = str(folder / "entropy_avail"), str(folder / "poolsize")
        self._files = roots.files

    def collect(self, emit: Emitter) -> None:
        emit.gauge("node_entropy_available_bits", read_uint(self._available, self._files), unit="bit")
        emit.gauge("node_entropy_pool_size_bits", read_uint(self._size, self._files), unit="bit")


class PressureCollector:
    name = "pressure"

    def __init__(self, roots: Roots) -> None:
        self._paths = [(str(roots.proc / "pressure" / resource), wanted) for resource, wanted in PRESSURE.items()]
        self._files = roots.files

    def collect(self, emit: Emitter) -> None:
        for path, wanted in self._paths:
            try:
                data = self._files.read(path)
            except FileNotFoundError:
                raise Unavailable(f"{path} is absent: PSI needs Linux 4.20+ built with CONFIG_PSI") from None
            except OSError as exc:
                if exc.errno == errno.EOPNOTSUPP:
                    raise Unavailable(f"{path}: PSI is disabled (boot with psi=1 to enable it)") from None
                raise
            totals = _psi_totals(data, path)
            for prefix, name in wanted:
                if prefix not in totals:
                    raise ValueError(f"{path}: no {prefix.decode()!r} line")
                emit.counter(name, totals[prefix] / 1e6, unit="s")  # microseconds


def _psi_totals(data: bytes, path: object) -> dict[bytes, int]:
    """``some avg10=0.00 avg60=0.00 avg300=0.00 total=123`` lines -> {b"some": 123, ...}."""
    totals: dict[bytes, int] = {}
    for line in data.splitlines():
        kind, *fields = line.split()
        if kind not in (b"some", b"full"):
            continue
        if len(fields) != 4 or not fields[3].startswith(b"total="):
            raise ValueError(f"{path}: malformed line {line[:80]!r}")
        totals[kind] = int(fields[3][6:])
    return totals


class SchedstatCollector:
    name = "schedstat"

    def __init__(self, roots: Roots) -> None:
        self._path = str(roots.proc / "schedstat")
        self._files = roots.files

    def collect(self, emit: Emitter) -> None:
        try:
            data = self._files.read(self._path)
        except FileNotFoundError:
            raise Unavailable(f"{self._path} is absent: the kernel is built without CONFIG_SCHED_INFO") from None
        for line in data.splitlines():
            fields = line.split()
            # "cpuN" then nine numbers: the 7th to 9th are running ns, waiting ns and timeslices
            if len(fields) < 10 or not fields[0].startswith(b"cpu") or not fields[0][3:].isdigit():
                continue
            if not all(f.isdigit() for f in fields[7:10]):
                continue  # as node_exporter: a line it cannot read is skipped
            cpu = (("cpu", fields[0][3:].decode()),)
            emit.counter("node_schedstat_running_seconds_total", int(fields[7]) / NS_PER_SECOND, cpu, unit="s")
            emit.counter("node_schedstat_waiting_seconds_total", int(fields[8]) / NS_PER_SECOND, cpu, unit="s")
            emit.counter("node_schedstat_timeslices_total", int(fields[9]), cpu, unit="1")


class InterruptsCollector:
    """Per CPU column and interrupt line of /proc/interrupts; ``cpu`` is the column's position, as node_exporter."""

    name = "interrupts"

    def __init__(self, roots: Roots) -> None:
        self._path = roots.proc / "interrupts"

    def collect(self, emit: Emitter) -> None:
        lines = read_bytes(self._path).splitlines()
        if not lines:
            raise ValueError(f"{self._path}: empty")
        cpus = len(lines[0].split())
        cpu_labels = [("cpu", str(i)) for i in range(cpus)]
        seen: dict[str, int] = {}
        rows = []
        for line in lines[1:]:
            parts = line.split()
            if len(parts) < cpus + 2:
                continue  # ERR and MIS have one number and no description, node_exporter skips them too
            name = parts[0][:-1].decode(errors="replace")
            seen[name] = len(rows)  # a repeated name: the last line wins, as node_exporter's map
            rows.append((name, parts))
        for index in seen.values():
            name, parts = rows[index]
            if name.isdigit():
                info, devices = (
                    parts[cpus + 1].decode(errors="replace"),
                    b" ".join(parts[cpus + 2 :]).decode(errors="replace"),
                )
            else:
                info, devices = b" ".join(parts[cpus + 1 :]).decode(errors="replace"), ""
            base = (("devices", devices), ("info", info), ("type", name))
            for cpu in range(cpus):
                value = float(parts[1 + cpu])
                emit.counter("node_interrupts_total", value, (cpu_labels[cpu], *base), unit="1")
