"""cgroup v2 files to cAdvisor's container metrics, converted as cAdvisor converts them.

The conversions follow ``container/libcontainer/handler.go`` and
``container/common/helpers.go`` in cAdvisor: microseconds to seconds, working set =
``memory.current`` minus ``inactive_file`` (never below 0), a limit of ``max`` (or above
2^62) exported as 0, ``cpu.weight`` mapped back to shares.

Results go into a list of :data:`Pending` tuples rather than straight to the emitter, so
that a cgroup which vanished half-way through its reads can be dropped whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.model import Labels

from .files import CgroupFiles

Pending = tuple[bool, str, float, Labels, str]
"""(is a counter, name, value, labels, unit) of one sample to emit."""

_MEMORY_STAT = (
    ("anon", "container_memory_rss"),
    ("file", "container_memory_cache"),
    ("file_mapped", "container_memory_mapped_file"),
)
_MEMORY_ONE = (
    ("memory.swap.current", "container_memory_swap"),
    ("memory.peak", "container_memory_max_usage_bytes"),
)
_MEMORY_LIMITS = (
    ("memory.max", "container_spec_memory_limit_bytes"),
    ("memory.swap.max", "container_spec_memory_swap_limit_bytes"),
    ("memory.min", "container_spec_memory_reservation_limit_bytes"),
)
_CFS = (
    ("nr_periods", "container_cpu_cfs_periods_total", 1, "1"),
    ("nr_throttled", "container_cpu_cfs_throttled_periods_total", 1, "1"),
    ("throttled_usec", "container_cpu_cfs_throttled_seconds_total", 1e-6, "s"),
)
_IO_STAT = (
    ("rbytes", "container_fs_reads_bytes_total", "By"),
    ("wbytes", "container_fs_writes_bytes_total", "By"),
    ("rios", "container_fs_reads_total", "1"),
    ("wios", "container_fs_writes_total", "1"),
)
_CPU_STAT = frozenset({"usage_usec", "user_usec", "system_usec", *(key for key, *_ in _CFS)})
_MEMORY_STAT_KEYS = frozenset({"inactive_file", "pgfault", "pgmajfault", *(key for key, _ in _MEMORY_STAT)})
_OOM_KILL = frozenset({"oom_kill"})
# the kernel's layouts, matched whole in one call per file (a line by line parse costs more than the read)
_IO_LINE = re.compile(r"^(\d+:\d+) rbytes=(\d+) wbytes=(\d+) rios=(\d+) wios=(\d+)\b[^\n]*\n", re.M)
_PSI_LINE = re.compile(r"^(some|full) [^\n]*\btotal=(\d+)\n", re.M)
# cAdvisor's names: the "some" line is waiting, the "full" line stalled
_PSI_METRIC = {
    (resource, kind): f"container_pressure_{resource}_{state}_seconds_total"
    for resource in ("cpu", "memory", "io")
    for kind, state in (("some", "waiting"), ("full", "stalled"))
}
_FAILURES = tuple((f, s) for f in ("pgfault", "pgmajfault") for s in ("container", "hierarchy"))


class SeriesLabels:
    """The label sets of one cgroup's series, built once (canonical: sorted by name)."""

    __slots__ = ("base", "by_device", "cpu_total", "failures")

    def __init__(self, cgroup_id: str, name: str) -> None:
        self.base: Labels = (("id", cgroup_id), ("name", name)) if name else (("id", cgroup_id),)
        self.cpu_total: Labels = (("cpu", "total"), *self.base)
        # v2 has one value per failure type; cAdvisor repeats it for both scopes
        self.failures = {
            key: tuple(sorted((*self.base, ("failure_type", key[0]), ("scope", key[1])))) for key in _FAILURES
        }
        self.by_device: dict[str, Labels] = {}

    def device(self, name: str) -> Labels:
        if (labels := self.by_device.get(name)) is None:
            labels = self.by_device[name] = (("device", name), *self.base)
        return labels


class Spec:
    """A cgroup's limits (cAdvisor's ``container_spec_*``): they change rarely, so a caller may keep them."""

    __slots__ = ("quota", "samples")

    def __init__(self, files: CgroupFiles, labels: SeriesLabels) -> None:
        base, out = labels.base, []
        self.quota: int | None = None
        text = files.text("cpu.max")
        if text is not None:
            parts = text.split()
            if len(parts) == 2 and (parts[0] == "max" or parts[0].isdigit()) and parts[1].isdigit():
                out.append((False, "container_spec_cpu_period", int(parts[1]), base, "us"))
                if parts[0] != "max":
                    self.quota = int(parts[0])
                    out.append((False, "container_spec_cpu_quota", self.quota, base, "us"))
            else:
                files.malformed("cpu.max", 1, text.strip())
        weight = files.number("cpu.weight")
        if weight is not None and 1 <= weight <= 10000:  # cAdvisor's convertCPUWeightToCPULimit
            out.append((False, "container_spec_cpu_shares", 2 + ((weight - 1) * 262142) // 9999, base, "1"))
        for file, name in _MEMORY_LIMITS:
            if (value := files.number(file, limit=True)) is not None:
                out.append((False, name, value, base, "By"))
        if (maximum := files.number("pids.max", limit=True)) is not None:
            out.append((False, "container_threads_max", maximum, base, "1"))
        self.samples: list[Pending] = out


def usage(
    files: CgroupFiles, labels: SeriesLabels, spec: Spec, device_name: Callable[[str], str], out: list[Pending]
) -> None:
    """Everything that changes between runs: CPU, memory, I/O, tasks, pressure, OOM kills."""
    base = labels.base
    stat = files.keyed("cpu.stat", _CPU_STAT)
    if "usage_usec" in stat:  # cAdvisor without per-CPU metrics: one series, cpu="total"
        out.append((True, "container_cpu_usage_seconds_total", stat["usage_usec"] / 1e6, labels.cpu_total, "s"))
    if "user_usec" in stat:
        out.append((True, "container_cpu_user_seconds_total", stat["user_usec"] / 1e6, base, "s"))
    if "system_usec" in stat:
        out.append((True, "container_cpu_system_seconds_total", stat["system_usec"] / 1e6, base, "s"))
    if spec.quota is not None:  # cAdvisor exports CFS statistics only for a cgroup with a quota
        for key, name, scale, unit in _CFS:
            if key in stat:
                out.append((True, name, stat[key] * scale, base, unit))
    _memory(files, labels, out)
    _io(files, labels, device_name, out)
    if (current := files.number("pids.current")) is not None:
        out.append((False, "container_threads", current, base, "1"))
    procs = files.text("cgroup.procs")
    if procs is not None:
        out.append((False, "container_processes", procs.count("\n"), base, "1"))
    _pressure(files, base, out)


def _memory(files: CgroupFiles, labels: SeriesLabels, out: list[Pending]) -> None:
    base = labels.base
    current = files.number("memory.current")
    stat = files.keyed("memory.stat", _MEMORY_STAT_KEYS)
    if current is not None:
        out.append((False, "container_memory_usage_bytes", current, base, "By"))
        working_set = max(0, current - stat.get("inactive_file", 0))
        out.append((False, "container_memory_working_set_bytes", working_set, base, "By"))
    for key, name in _MEMORY_STAT:
        if key in stat:
            out.append((False, name, stat[key], base, "By"))
    for key, failure_labels in labels.failures.items():
        if key[0] in stat:
            out.append((True, "container_memory_failures_total", stat[key[0]], failure_labels, "1"))
    for file, name in _MEMORY_ONE:
        if (value := files.number(file)) is not None:
            out.append((False, name, value, base, "By"))
    events = files.keyed("memory.events", _OOM_KILL)
    if "oom_kill" in events:
        out.append((True, "container_oom_events_total", events["oom_kill"], base, "1"))


def _io(files: CgroupFiles, labels: SeriesLabels, device_name: Callable[[str], str], out: list[Pending]) -> None:
    text = files.text("io.stat")
    if not text:
        return
    lines = _IO_LINE.findall(text)
    if len(lines) != text.count("\n"):  # not the kernel's usual layout: field by field
        lines = _io_lines(files, text)
    for device, *values in lines:
        device_labels = labels.device(device_name(device))
        for (_, name, unit), value in zip(_IO_STAT, values, strict=True):
            out.append((True, name, int(value), device_labels, unit))


def _io_lines(files: CgroupFiles, text: str) -> list[tuple[str, ...]]:
    lines, bad, first = [], 0, ""
    for line in text.splitlines():
        device, *fields = line.split() or [""]
        pairs = dict(field.split("=", 1) for field in fields if "=" in field)
        if ":" not in device or len(pairs) != len(fields) or not all(v.isdigit() for v in pairs.values()):
            bad, first = bad + 1, first or line
        elif all(key in pairs for key, *_ in _IO_STAT):
            lines.append((device, *(pairs[key] for key, *_ in _IO_STAT)))
    if bad:
        files.malformed("io.stat", bad, first)
    return lines


def _pressure(files: CgroupFiles, base: Labels, out: list[Pending]) -> None:
    for resource in ("cpu", "memory", "io"):
        name = f"{resource}.pressure"
        text = files.text(name)
        if not text:
            continue
        lines = _PSI_LINE.findall(text)
        if len(lines) != text.count("\n"):
            bad = [line for line in text.splitlines() if line.strip() and not _PSI_LINE.fullmatch(line + "\n")]
            files.malformed(name, len(bad), bad[0] if bad else text[:80])
        for kind, total in lines:
            out.append((True, _PSI_METRIC[resource, kind], int(total) / 1e6, base, "s"))
