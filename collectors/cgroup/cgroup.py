"""Resource usage of cgroups (v2), named as cAdvisor names container metrics.

Two modes. ``single``: one cgroup, ``path`` or the agent's own (the ``0::`` line of
``{proc_root}/self/cgroup``, looked up every run because a service manager may move the
agent) — what a sidecar reports about its pod. ``units``: the cgroup of every systemd
unit (services and slices by default) under ``path``, each with its unit as ``name`` —
per-service resource use on a systemd host.

The cgroup v2 hierarchy is ``{sys_root}/fs/cgroup`` (unified mode) or
``{sys_root}/fs/cgroup/unified`` (systemd's hybrid mode, where v2 carries no memory, io
or pids controller: only CPU time, processes and pressure exist there).

Each run is one worker call. In ``units`` mode a cgroup's limits, the files it lacks
and its label sets are kept between runs (re-read every ``SPEC_REFRESH_RUNS`` runs and
whenever the cgroup is re-created, as on a restart); a unit that stops while being read
is dropped whole and counted, never half-reported.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig

from .convert import Pending, SeriesLabels, Spec, usage
from .files import CgroupFiles
from .walk import glob_matcher, list_units

SPEC_REFRESH_RUNS = 10
SKIPPED = "hostwatch_cgroup_skipped_total"


class CgroupError(Exception):
    """The cgroup cannot be located (no cgroup v2, unknown path)."""


class _Known:
    """What is kept about one unit's cgroup between runs."""

    __slots__ = ("absent", "inode", "labels", "refresh_at", "spec")

    def __init__(self, inode: int, labels: SeriesLabels, refresh_at: int) -> None:
        self.inode, self.labels, self.refresh_at = inode, labels, refresh_at
        self.absent: set[str] = set()
        self.spec: Spec | None = None


class CgroupCollector(PeriodicCollector):
    class Config(PluginConfig):
        mode: Annotated[
            Literal["single", "units"],
            msgspec.Meta(
                description='"single": one cgroup (`path`, or the agent\'s own). "units": the cgroup of every '
                "systemd unit under `path` whose name passes `include`/`exclude`, labelled with the unit as `name`."
            ),
        ] = "single"
        path: Annotated[
            str,
            msgspec.Meta(
                description="The cgroup to read (single) or to walk (units), as /proc/PID/cgroup shows it "
                "(e.g. /system.slice/nginx.service), relative to the cgroup v2 hierarchy. Empty: the agent's own "
                "cgroup (single), the whole hierarchy (units)."
            ),
        ] = ""
        name: Annotated[
            str,
            msgspec.Meta(description="single: value of the `name` label (cAdvisor's container name); empty: none."),
        ] = ""
        include: Annotated[list[str], msgspec.Meta(description="units: shell globs of the unit names to report.")] = (
            msgspec.field(default_factory=lambda: ["*.service", "*.slice"])
        )
        exclude: Annotated[list[str], msgspec.Meta(description="units: shell globs of unit names to leave out.")] = (
            msgspec.field(default_factory=list)
        )
        max_cgroups: Annotated[
            int,
            msgspec.Meta(
                ge=1, description="units: at most this many cgroups per run (in path order); the rest are counted."
            ),
        ] = 1000

        def __post_init__(self) -> None:
            if self.path and (not self.path.startswith("/") or ".." in self.path.split("/") or "\0" in self.path):
                raise ValueError(f"path: expected an absolute cgroup path like /system.slice/x.service: {self.path!r}")
            if self.mode == "units" and self.name:
                raise ValueError('name: only for mode = "single"; in "units" mode `name` is each unit\'s name')

    def __init__(self, config: CgroupCollector.Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._mount: Path | None = None
        self._include = glob_matcher(config.include)
        self._exclude = glob_matcher(config.exclude)
        self._known: dict[str, _Known] = {}
        self._devices: dict[str, str] = {}
        self._runs = 0
        self._skipped = {"vanished": 0, "over_limit": 0}
        self._told: set[str] = set()

    async def collect(self, emit: Emitter) -> None:
        await self.context.run_blocking(self._collect, emit)

    def _collect(self, emit: Emitter) -> None:
        try:
            mount = self._hierarchy()
            if self.config.mode == "units":
                self._units(mount, emit)
            else:
                self._single(mount, emit)
        except CgroupError as exc:
            emit.error(str(exc))

    def _hierarchy(self) -> Path:
        if self._mount is None:
            base = self.context.sys_root / "fs" / "cgroup"
            self._mount = next((d for d in (base, base / "unified") if (d / "cgroup.controllers").is_file()), None)
            if self._mount is None:
                raise CgroupError(
                    f"no cgroup v2 hierarchy at {base} or {base / 'unified'} (a cgroup v1-only host?): "
                    "the cgroup collector reads cgroup v2 only"
                )
            if self._mount.name == "unified":
                self._tell_once(
                    "hybrid",
                    f"cgroup v2 is mounted in systemd's hybrid mode ({self._mount}): it has no memory, io or pids "
                    "controller, so only CPU time, processes and pressure are reported (boot with "
                    "systemd.unified_cgroup_hierarchy=1 for the rest)",
                )
        return self._mount

    def _single(self, mount: Path, emit: Emitter) -> None:
        path = self.config.path or self._own_cgroup()
        directory = mount / path.lstrip("/")
        if not directory.is_dir():
            raise CgroupError(f"cgroup {path} not found: {directory} is not a directory")
        labels = SeriesLabels(path, self.config.name)
        try:
            files = CgroupFiles(str(directory), set())
        except OSError as exc:
            raise CgroupError(f"cannot open {directory}: {exc.strerror or exc}") from None
        try:
            out = self._read(files, labels, Spec(files, labels))
        finally:
            files.close()
        _emit(emit, out)
        for file, problem in files.problems:
            emit.error(_describe(str(directory / file), problem))

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

    def _units(self, mount: Path, emit: Emitter) -> None:
        start = self.config.path.rstrip("/") or "/"
        if not (mount / start.lstrip("/")).is_dir():
            raise CgroupError(f"cgroup {start} not found: {mount / start.lstrip('/')} is not a directory")
        self._runs += 1
        if self._runs % SPEC_REFRESH_RUNS == 0:
            self._devices.clear()  # major:minor numbers can be reused by another device
        root = str(mount)
        listing = list_units(root, start, self._include, self._exclude)
        for problem in listing.problems:
            emit.error(problem)
        found = listing.found
        if len(found) > self.config.max_cgroups:
            over = len(found) - self.config.max_cgroups
            self._skipped["over_limit"] += over
            emit.error(
                f"more unit cgroups under {start} than max_cgroups = {self.config.max_cgroups}: the last ones in "
                f'path order are not read (counted in {SKIPPED}{{reason="over_limit"}}); raise max_cgroups or '
                "narrow include/exclude"
            )
            found = found[: self.config.max_cgroups]
        vanished = listing.vanished
        trouble: dict[tuple[str, str], list] = {}  # (file, kind of problem) -> [count, first cgroup, message]
        known, self._known = self._known, {}
        for position, (cgroup, unit, inode) in enumerate(found):
            entry = known.get(cgroup)
            if entry is None or entry.inode != inode:  # new, or re-created (a restart): start afresh
                # later spec refreshes are spread over the runs rather than all in one
                refresh_at = self._runs + SPEC_REFRESH_RUNS + position % SPEC_REFRESH_RUNS
                entry = _Known(inode, SeriesLabels(cgroup, unit), refresh_at)
            out = self._read_unit(root + cgroup if cgroup != "/" else root, entry, trouble, cgroup)
            if out is None:
                vanished += 1
                continue
            self._known[cgroup] = entry
            _emit(emit, out)
        if vanished:
            self._skipped["vanished"] += vanished
            self._tell_once(
                "vanished",
                f"a unit's cgroup went away while being read (a unit stopping): its series are left out of that run "
                f'and counted in {SKIPPED}{{reason="vanished"}}',
                level=logging.INFO,  # units stop: worth a line, not a warning
            )
        for (file, _kind), (count, cgroup, problem) in sorted(trouble.items()):
            path = f"{root}{cgroup.rstrip('/')}/{file}".rstrip("/")
            emit.error(f"{file or 'a cgroup directory'} in {count} cgroup(s), e.g. {_describe(path, problem)}")
        collector = (("collector", self.context.instance),)
        for reason, count in self._skipped.items():
            if count:
                emit.counter(SKIPPED, count, (*collector, ("reason", reason)), unit="1")

    def _read_unit(self, directory: str, entry: _Known, trouble: dict, cgroup: str) -> list[Pending] | None:
        """One unit's samples; None when its cgroup went away (or was replaced) while being read."""
        refresh = entry.spec is None or self._runs >= entry.refresh_at
        if refresh and entry.spec is not None:
            entry.absent = set()  # a controller may have been enabled since
            entry.refresh_at = self._runs + SPEC_REFRESH_RUNS
        try:
            files = CgroupFiles(directory, entry.absent)
        except FileNotFoundError:
            return None
        except OSError as exc:
            trouble.setdefault(("", "open"), [0, cgroup, f"cannot read: {exc.strerror or exc}"])[0] += 1
            return None
        try:
            if refresh:
                entry.spec = Spec(files, entry.labels)
            out = self._read(files, entry.labels, entry.spec)
        finally:
            files.close()
        if files.missing and not _same_directory(directory, entry.inode):
            return None
        for file, problem in files.problems:
            kind = "unreadable" if problem.startswith("cannot read") else "malformed"
            trouble.setdefault((file, kind), [0, cgroup, problem])[0] += 1
        return out

    def _read(self, files: CgroupFiles, labels: SeriesLabels, spec: Spec) -> list[Pending]:
        out = list(spec.samples)
        usage(files, labels, spec, self._device_name, out)
        return out

    def _device_name(self, major_minor: str) -> str:
        """``/dev/NAME`` as cAdvisor labels devices, from sysfs; ``MAJOR:MINOR`` when sysfs does not know it."""
        if (name := self._devices.get(major_minor)) is None:
            name = self._devices[major_minor] = _device_from_sysfs(self.context.sys_root, major_minor)
        return name

    def _tell_once(self, key: str, message: str, level: int = logging.WARNING) -> None:
        if key not in self._told:
            self._told.add(key)
            self.context.logger.log(level, "collector %s: %s", self.context.instance, message)


def _emit(emit: Emitter, out: list[Pending]) -> None:
    gauge, counter = emit.gauge, emit.counter
    for is_counter, name, value, labels, unit in out:
        (counter if is_counter else gauge)(name, value, labels, unit=unit)


def _describe(path: str, problem: str) -> str:
    if problem.startswith("cannot read"):
        return f"cannot read {path}: {problem.split(': ', 1)[1]}"
    return f"{path}: {problem}"


def _same_directory(directory: str, inode: int) -> bool:
    try:
        return os.stat(directory).st_ino == inode
    except OSError:
        return False


def _device_from_sysfs(sys_root: Path, major_minor: str) -> str:
    try:
        uevent = (sys_root / "dev" / "block" / major_minor / "uevent").read_text(errors="replace")
    except OSError:
        return major_minor
    for line in uevent.splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line[8:]
    return major_minor
