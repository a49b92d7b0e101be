"""Resource usage of one cgroup (v2 only), named as cAdvisor names container metrics.

A sidecar's psutil numbers describe the whole node; the files of its own cgroup
describe the container. Each run locates the cgroup, then reads its
``cpu.stat``, ``cpu.max``, ``cpu.weight``, ``memory.*``, ``io.stat``, ``pids.*``,
``cgroup.procs`` and pressure files in one worker call, and converts them the
way cAdvisor converts cgroup v2 files (``container/libcontainer/handler.go``,
``container/common/helpers.go``): microseconds to seconds, working set = usage
minus ``inactive_file``, a limit of ``max`` (or above 2^62) exported as 0.

The cgroup v2 hierarchy is ``{sys_root}/fs/cgroup`` (unified mode) or
``{sys_root}/fs/cgroup/unified`` (systemd's hybrid mode). Without ``path`` the
cgroup is the agent's own, the ``0::`` line of ``{proc_root}/self/cgroup``,
looked up every run because a service manager may move the agent.

A file that does not exist is not an error: interface files appear only for the
controllers enabled for the cgroup (and the root cgroup has few), so those
series are simply absent. A file that exists but cannot be read, or a malformed
line, is reported as a collector error naming the file.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Annotated

import msgspec

from agent.model import Labels, labels_from
from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig

_NO_LIMIT = 1 << 62  # cAdvisor's specMemoryValue: bigger limits mean "none" and export as 0
_ABSENT = frozenset({errno.ENOENT, errno.EOPNOTSUPP, errno.ENODEV})  # EOPNOTSUPP: PSI off (psi=0)
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
_IO_STAT = (
    ("rbytes", "container_fs_reads_bytes_total", "By"),
    ("wbytes", "container_fs_writes_bytes_total", "By"),
    ("rios", "container_fs_reads_total", "1"),
    ("wios", "container_fs_writes_total", "1"),
)


class CgroupError(Exception):
    """The cgroup cannot be located (no cgroup v2, unknown path)."""


class CgroupCollector(PeriodicCollector):
    class Config(PluginConfig):
        path: Annotated[
            str,
            msgspec.Meta(
                description="The cgroup to read, as /proc/PID/cgroup shows it (e.g. /system.slice/nginx.service), "
                "relative to the cgroup v2 hierarchy. Empty: the agent's own cgroup."
            ),
        ] = ""
        name: Annotated[
            str, msgspec.Meta(description="Value of the `name` label (cAdvisor's container name); empty: no label.")
        ] = ""

        def __post_init__(self) -> None:
            if self.path and (not self.path.startswith("/") or ".." in self.path.split("/") or "\0" in self.path):
                raise ValueError(f"path: expected an absolute cgroup path like /system.slice/x.service: {self.path!r}")

    def __init__(self, config: CgroupCollector.Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._mount: Path | None = None

    async def collect(self, emit: Emitter) -> None:
        await self.context.run_blocking(self._collect, emit)

    def _collect(self, emit: Emitter) -> None:
        try:
            cgroup_id, directory = self._locate()
        except CgroupError as exc:
            emit.error(str(exc))
            return
        labels = labels_from({"id": cgroup_id, "name": self.config.name} if self.config.name else {"id": cgroup_id})
        files = _Files(directory)
        _cpu(files, emit, labels)
        _memory(files, emit, labels)
        _io(files, emit, labels, self.context.sys_root / "dev" / "block")
        _pids(files, emit, labels)
        _pressure(files, emit, labels)
        for problem in files.problems:
            emit.error(problem)

    def _locate(self) -> tuple[str, Path]:
        if self._mount is None:
            base = self.context.sys_root / "fs" / "cgroup"
            self._mount = next((d for d in (base, base / "unified") if (d / "cgroup.controllers").is_file()), None)
            if self._mount is None:
                raise CgroupError(
                    f"no cgroup v2 hierarchy at {base} or {base / 'unified'} (a cgroup v1-only host?): "
                    "the cgroup collector reads cgroup v2 only"
                )
        path = self.config.path or self._own_cgroup()
        directory = self._mount / path.lstrip("/")
        if not directory.is_dir():
            raise CgroupError(f"cgroup {path} not found: {directory} is not a directory")
        return path, directory

    def _own_cgroup(self) -> str:
        source = self.context.proc_root / "self" / "cgroup"
        try:
            text = source.read_text(errors="replace")
        except OSError as exc:
            raise CgroupError(f"cannot read {source}: {exc.strerror}") from None
        for line in text.splitlines():
            if line.startswith("0::/"):
                return line[3:]
        raise CgroupError(f"{source} has no cgroup v2 (0::) line: the agent is in no cgroup v2 group; set `path`")


class _Files:
    """One cgroup directory's files: absent ones read as None, other problems are collected."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems: list[str] = []

    def text(self, name: str) -> str | None:
        try:
            return (self.directory / name).read_bytes().decode("ascii", "replace")
        except OSError as exc:
            if exc.errno not in _ABSENT:
                self.problems.append(f"cannot read {self.directory / name}: {exc.strerror or exc}")
            return None

    def malformed(self, name: str, bad: int, first: str) -> None:
        self.problems.append(f"{self.directory / name}: skipped {bad} malformed line(s), first: {first[:80]!r}")

    def number(self, name: str, *, limit: bool = False) -> int | None:
        """A one-value file; with ``limit``, ``max`` (no limit) reads as 0, as cAdvisor exports it."""
        text = self.text(name)
        if text is None:
            return None
        value = text.strip()
        if limit and value == "max":
            return 0
        if not value.isdigit():
            self.malformed(name, 1, value)
            return None
        return 0 if limit and int(value) > _NO_LIMIT else int(value)

    def keyed(self, name: str) -> dict[str, int]:
        """A flat-keyed file (``key value`` lines) such as cpu.stat, memory.stat, memory.events."""
        values: dict[str, int] = {}
        bad, first = 0, ""
        for line in (self.text(name) or "").splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].isdigit():
                values[fields[0]] = int(fields[1])
            elif fields:
                bad, first = bad + 1, first or line
        if bad:
            self.malformed(name, bad, first)
        return values


def _with(labels: Labels, **extra: str) -> Labels:
    return labels_from({**dict(labels), **extra})


def _cpu(files: _Files, emit: Emitter, labels: Labels) -> None:
    stat = files.keyed("cpu.stat")
    if "usage_usec" in stat:  # cAdvisor without per-CPU metrics: one series, cpu="total"
        emit.counter(
            "container_cpu_usage_seconds_total", stat["usage_usec"] / 1e6, _with(labels, cpu="total"), unit="s"
        )
    for key, name in (
        ("user_usec", "container_cpu_user_seconds_total"),
        ("system_usec", "container_cpu_system_seconds_total"),
    ):
        if key in stat:
            emit.counter(name, stat[key] / 1e6, labels, unit="s")
    quota = None
    text = files.text("cpu.max")
    if text is not None:
        parts = text.split()
        if len(parts) == 2 and (parts[0] == "max" or parts[0].isdigit()) and parts[1].isdigit():
            emit.gauge("container_spec_cpu_period", int(parts[1]), labels, unit="us")
            if parts[0] != "max":
                quota = int(parts[0])
                emit.gauge("container_spec_cpu_quota", quota, labels, unit="us")
        else:
            files.malformed("cpu.max", 1, text.strip())
    if quota is not None:  # cAdvisor exports CFS statistics only for a cgroup with a quota
        for key, name, scale, unit in (
            ("nr_periods", "container_cpu_cfs_periods_total", 1, "1"),
            ("nr_throttled", "container_cpu_cfs_throttled_periods_total", 1, "1"),
            ("throttled_usec", "container_cpu_cfs_throttled_seconds_total", 1e-6, "s"),
        ):
            if key in stat:
                emit.counter(name, stat[key] * scale, labels, unit=unit)
    weight = files.number("cpu.weight")
    if weight is not None and 1 <= weight <= 10000:  # cAdvisor's convertCPUWeightToCPULimit
        emit.gauge("container_spec_cpu_shares", 2 + ((weight - 1) * 262142) // 9999, labels, unit="1")


def _memory(files: _Files, emit: Emitter, labels: Labels) -> None:
    current = files.number("memory.current")
    stat = files.keyed("memory.stat")
    if current is not None:
        emit.gauge("container_memory_usage_bytes", current, labels, unit="By")
        working_set = max(0, current - stat.get("inactive_file", 0))
        emit.gauge("container_memory_working_set_bytes", working_set, labels, unit="By")
    for key, name in _MEMORY_STAT:
        if key in stat:
            emit.gauge(name, stat[key], labels, unit="By")
    for failure in ("pgfault", "pgmajfault"):  # v2 has one value; cAdvisor repeats it for both scopes
        if failure in stat:
            for scope in ("container", "hierarchy"):
                extra = _with(labels, failure_type=failure, scope=scope)
                emit.counter("container_memory_failures_total", stat[failure], extra, unit="1")
    for file, name in _MEMORY_ONE:
        if (value := files.number(file)) is not None:
            emit.gauge(name, value, labels, unit="By")
    for file, name in _MEMORY_LIMITS:
        if (value := files.number(file, limit=True)) is not None:
            emit.gauge(name, value, labels, unit="By")
    events = files.keyed("memory.events")
    if "oom_kill" in events:
        emit.counter("container_oom_events_total", events["oom_kill"], labels, unit="1")


def _io(files: _Files, emit: Emitter, labels: Labels, dev_block: Path) -> None:
    bad, first = 0, ""
    for line in (files.text("io.stat") or "").split("\n"):
        if not line.strip():
            continue
        device, _, rest = line.partition(" ")
        pairs = dict(field.partition("=")[::2] for field in rest.split())
        if ":" not in device or not all(value.isdigit() for value in pairs.values()):
            bad, first = bad + 1, first or line
            continue
        device_labels = _with(labels, device=_device_name(dev_block, device))
        for key, name, unit in _IO_STAT:
            if key in pairs:
                emit.counter(name, int(pairs[key]), device_labels, unit=unit)
    if bad:
        files.malformed("io.stat", bad, first)


def _device_name(dev_block: Path, major_minor: str) -> str:
    """``/dev/NAME`` as cAdvisor labels devices, from sysfs; ``MAJOR:MINOR`` when sysfs does not know it."""
    try:
        uevent = (dev_block / major_minor / "uevent").read_text(errors="replace")
    except OSError:
        return major_minor
    for line in uevent.splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line[8:]
    return major_minor


def _pids(files: _Files, emit: Emitter, labels: Labels) -> None:
    if (current := files.number("pids.current")) is not None:
        emit.gauge("container_threads", current, labels, unit="1")
    if (maximum := files.number("pids.max", limit=True)) is not None:
        emit.gauge("container_threads_max", maximum, labels, unit="1")
    procs = files.text("cgroup.procs")
    if procs is not None:
        emit.gauge("container_processes", sum(1 for line in procs.splitlines() if line.strip()), labels, unit="1")


def _pressure(files: _Files, emit: Emitter, labels: Labels) -> None:
    for resource in ("cpu", "memory", "io"):
        name = f"{resource}.pressure"
        bad, first = 0, ""
        for line in (files.text(name) or "").splitlines():
            if not line.strip():
                continue
            kind, *fields = line.split()
            total = next((f[6:] for f in fields if f.startswith("total=")), "")
            if kind not in ("some", "full") or not total.isdigit():
                bad, first = bad + 1, first or line
                continue
            state = "waiting" if kind == "some" else "stalled"  # cAdvisor: some = waiting, full = stalled
            emit.counter(f"container_pressure_{resource}_{state}_seconds_total", int(total) / 1e6, labels, unit="s")
        if bad:
            files.malformed(name, bad, first)
