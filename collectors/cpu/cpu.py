"""CPU time, load average and kernel activity, named as node_exporter names them.

One collector stands for node_exporter's ``cpu``, ``loadavg`` and ``stat``
collectors: each run reads ``/proc/stat`` and ``/proc/loadavg`` in one worker
call and splits them with plain ``bytes`` operations (no regexes, no psutil).
The only sysfs inputs, ``devices/system/cpu/isolated`` and the thermal throttle
counters, are located once in ``start()`` (CPU topology does not change while
the host runs); on hosts without them (most VMs) they cost nothing per run.

Per-CPU times can step backwards (a kernel accounting quirk of idle/iowait
on tickless kernels): like node_exporter we keep the previous value then, so a
counter never looks reset, unless idle fell by three seconds or more, which
means the CPU was unplugged and came back and its counters really restarted.
"""

from __future__ import annotations

import os
from itertools import repeat
from pathlib import Path
from typing import Annotated

import msgspec

from agent.model import Labels, Sample
from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig
from agent.procfiles import KeptFiles
from agent.sysfs import read_bytes

MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# a CPU's ten /proc/stat times in order: eight node_cpu_seconds_total, then guest and guest_nice
_CPU_NAMES = ("node_cpu_seconds_total",) * len(MODES) + ("node_cpu_guest_seconds_total",) * 2
JUMP_BACK_SECONDS = 3.0
IDLE = 3  # index of idle in MODES
# /proc/stat key -> (name, is a counter, unit); of "intr" only the first number, the total, is read
_STAT = {
    b"intr": ("node_intr_total", True, "1"),
    b"ctxt": ("node_context_switches_total", True, "1"),
    b"processes": ("node_forks_total", True, "1"),
    b"btime": ("node_boot_time_seconds", False, "s"),
    b"procs_running": ("node_procs_running", False, "1"),
    b"procs_blocked": ("node_procs_blocked", False, "1"),
}


class CpuCollector(PeriodicCollector):
    shares_worker = True  # reads /proc and /sys only

    class Config(PluginConfig):
        cpus: Annotated[
            list[int],
            msgspec.Meta(description="Export per-CPU time series only for these CPU numbers; empty: every online CPU."),
        ] = msgspec.field(default_factory=list)
        guest: Annotated[
            bool,
            msgspec.Meta(description="Export node_cpu_guest_seconds_total (node_exporter's --collector.cpu.guest)."),
        ] = True

    def __init__(self, config: CpuCollector.Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._hz = float(os.sysconf("SC_CLK_TCK"))
        self._stat = str(context.proc_root / "stat")
        self._loadavg = str(context.proc_root / "loadavg")
        self._files = KeptFiles()  # /proc/stat and /proc/loadavg, opened once
        self._only = frozenset(str(cpu).encode() for cpu in config.cpus)
        self._last: dict[bytes, list[float]] = {}
        self._labels: dict[bytes, tuple[Labels, ...]] = {}
        self._sys: tuple[tuple[str, ...], dict[tuple[str, str], Path], dict[str, Path]] | None = None

    async def start(self) -> None:
        if self._sys is None:
            self._sys = await self.context.run_blocking(self._discover_sys)

    async def collect(self, emit: Emitter) -> None:
        now = emit.time_ns  # the run's time, on the per-CPU samples this collector makes itself
        await self.context.run_blocking(self._collect, emit, now)

    async def close(self) -> None:
        # on the worker thread, after any run still reading them: a descriptor closed under a
        # read could be reused by another open and read in its place
        if len(self._files):
            await self.context.run_blocking(self._files.close)

    def _collect(self, emit: Emitter, now: int) -> None:
        self._collect_files(emit, now)
        self._files.sweep()

    def _collect_files(self, emit: Emitter, now: int) -> None:
        try:
            stat = self._files.read(self._stat, 16384, in_one_go=True)
        except OSError as exc:
            emit.error(f"cannot read {self._stat}: {exc}")
        else:
            self._parse_stat(stat, emit, now)
        try:
            fields = self._files.read(self._loadavg, in_one_go=True).split()
            loads = [float(fields[i]) for i in range(3)]
        except OSError as exc:
            emit.error(f"cannot read {self._loadavg}: {exc}")
        except (ValueError, IndexError):
            emit.error(f"{self._loadavg}: malformed content, no load averages this run")
        else:
            emit.gauge("node_load1", loads[0], unit="1")
            emit.gauge("node_load5", loads[1], unit="1")
            emit.gauge("node_load15", loads[2], unit="1")
        if self._sys is not None:
            self._emit_sys(emit, *self._sys)

    def _parse_stat(self, data: bytes, emit: Emitter, now: int) -> None:
        hz, only, last = self._hz, self._only, self._last
        names = _CPU_NAMES if self.config.guest else _CPU_NAMES[: len(MODES)]  # guest time also counts in user
        seen: dict[bytes, list[float]] = {}
        bad, first_bad = 0, b""
        for line in data.splitlines():
            try:
                if line.startswith(b"cpu"):
                    fields = line.split()
                    cpu = fields[0][3:]
                    if not cpu:
                        continue  # the all-CPU sum; node_exporter does not export it either
                    if not cpu.isdigit() or len(fields) < 9:
                        raise ValueError(line)
                    if only and cpu not in only:
                        continue
                    values = [int(v) / hz for v in fields[1:11]]
                    values += [0.0] * (10 - len(values))  # kernels before 2.6.33 have no guest_nice
                    prev = last.get(cpu)
                    if prev is not None and prev[IDLE] - values[IDLE] < JUMP_BACK_SECONDS:
                        values = [new if new >= old else old for new, old in zip(values, prev, strict=True)]
                    seen[cpu] = values
                    labels = self._labels.get(cpu) or self._cpu_labels(cpu)
                    emit.add(list(map(Sample, names, values, repeat("counter"), labels, repeat(now), repeat("s"))))
                    continue
                # partition, not split: the intr line holds a number per interrupt, thousands on big hosts
                key, _, rest = line.partition(b" ")
                known = _STAT.get(key)
                if known is not None:
                    name, is_counter, unit = known
                    value = int(rest.lstrip().partition(b" ")[0])
                    if is_counter:
                        emit.counter(name, value, unit=unit)
                    else:
                        emit.gauge(name, value, unit=unit)
            except (ValueError, IndexError):
                bad += 1
                first_bad = first_bad or line[:80]
        self._last = seen  # forget CPUs that went offline
        if bad:
            emit.error(f"{self._stat}: skipped {bad} malformed line(s), first: {first_bad.decode(errors='replace')!r}")

    def _cpu_labels(self, cpu: bytes) -> tuple[Labels, ...]:
        """The labels of a CPU's ten times: its eight modes, then user's and nice's again (guest, guest_nice)."""
        name = cpu.decode()
        labels = tuple((("cpu", name), ("mode", mode)) for mode in MODES)
        labels += labels[:2]
        self._labels[cpu] = labels
        return labels

    def _discover_sys(self) -> tuple[tuple[str, ...], dict[tuple[str, str], Path], dict[str, Path]]:
        """Isolated CPUs and the thermal throttle counter files, one per core and one per package."""
        base = self.context.sys_root / "devices" / "system" / "cpu"
        isolated: tuple[str, ...] = ()
        try:
            isolated = _parse_cpulist((base / "isolated").read_text())
        except FileNotFoundError:
            pass  # kernels before 4.2, or no sysfs in this container
        except (OSError, ValueError) as exc:
            self.context.logger.warning("cannot read isolated CPUs from %s: %s", base / "isolated", exc)
        cores: dict[tuple[str, str], Path] = {}
        packages: dict[str, Path] = {}
        for cpu_dir in sorted(base.glob("cpu[0-9]*")):
            throttle = cpu_dir / "thermal_throttle"
            if not throttle.is_dir():
                continue
            try:
                package = str(int((cpu_dir / "topology" / "physical_package_id").read_text()))
                core = str(int((cpu_dir / "topology" / "core_id").read_text()))
            except (OSError, ValueError):
                continue  # no topology: node_exporter skips such a CPU too
            if (throttle / "core_throttle_count").exists():
                cores.setdefault((package, core), throttle / "core_throttle_count")
            if (throttle / "package_throttle_count").exists():
                packages.setdefault(package, throttle / "package_throttle_count")
        return isolated, cores, packages

    def _emit_sys(
        self, emit: Emitter, isolated: tuple[str, ...], cores: dict[tuple[str, str], Path], packages: dict[str, Path]
    ) -> None:
        for cpu in isolated:
            emit.gauge("node_cpu_isolated", 1, (("cpu", cpu),), unit="1")
        for (package, core), path in cores.items():
            count = _read_int(path, emit)
            if count is not None:
                emit.counter("node_cpu_core_throttles_total", count, (("core", core), ("package", package)), unit="1")
        for package, path in packages.items():
            count = _read_int(path, emit)
            if count is not None:
                emit.counter("node_cpu_package_throttles_total", count, (("package", package),), unit="1")


def _read_int(path: Path, emit: Emitter) -> int | None:
    try:
        return int(read_bytes(path))
    except (OSError, ValueError) as exc:
        emit.error(f"cannot read {path}: {exc}")
        return None


def _parse_cpulist(text: str) -> tuple[str, ...]:
    """``"0-2,5"`` -> ``("0", "1", "2", "5")`` (the kernel's cpulist format)."""
    cpus: list[str] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(str(n) for n in range(int(low), int(high or low) + 1))
    return tuple(cpus)
