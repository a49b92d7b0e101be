"""Disk collector: node_exporter's ``filesystem`` and ``diskstats`` collectors.

* filesystem: the mount table of PID 1 (``<proc>/1/mounts``, else
  ``<proc>/mounts``), filtered like node_exporter, each mount point statvfs()ed
  under ``rootfs`` on a :class:`StatPool` so a hung mount costs at most
  ``mount_timeout`` once and is then reported as ``node_filesystem_device_error``
  until its call returns.
* diskstats: ``<proc>/diskstats`` plus udev's ``run/udev/data`` (under
  ``rootfs``) for ``node_disk_info`` and the other udev-derived info series.

Names, labels, values and types are those of prometheus-node-exporter 1.5.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from itertools import repeat
from operator import mul
from typing import Annotated, Any

import msgspec

from agent.model import Labels, Sample
from agent.plugin import CollectorContext, Duration, Emitter, PeriodicCollector, PluginConfig
from agent.procfiles import KeptFiles
from collectors.disk.stat_pool import StatPool

MOUNT_POINTS_EXCLUDE = r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
FS_TYPES_EXCLUDE = (
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs"
    r"|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$"
)
DEVICES_EXCLUDE = r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"


class Config(PluginConfig):
    mount_points_exclude: Annotated[
        str, msgspec.Meta(description="Mount points (regex, searched) not reported; node_exporter's default.")
    ] = MOUNT_POINTS_EXCLUDE
    fs_types_exclude: Annotated[
        str, msgspec.Meta(description="File system types (regex) not reported; node_exporter's default.")
    ] = FS_TYPES_EXCLUDE
    mount_timeout: Annotated[
        Duration, msgspec.Meta(description="How long statvfs() may take before the mount is marked stuck.")
    ] = Duration(5)
    stat_workers: Annotated[
        int,
        msgspec.Meta(
            description="Threads running statvfs(): one takes a run's calls in turn, the others join after 50 ms.",
            ge=1,
            le=64,
        ),
    ] = 4
    devices_exclude: Annotated[
        str, msgspec.Meta(description="Block devices (regex) left out of node_disk_*; node_exporter's default.")
    ] = DEVICES_EXCLUDE
    devices_include: Annotated[
        str, msgspec.Meta(description="If set, only block devices matching this regex are reported.")
    ] = ""

    def __post_init__(self) -> None:
        for key in ("mount_points_exclude", "fs_types_exclude", "devices_exclude", "devices_include"):
            try:
                re.compile(getattr(self, key))
            except re.error as exc:
                raise ValueError(f"{key}: invalid regex: {exc}") from None


class _Matcher:
    """A regex search whose answers are cached per name: steady-state runs do dict lookups only."""

    __slots__ = ("_cache", "_search")

    def __init__(self, pattern: str) -> None:
        self._search = re.compile(pattern).search if pattern else None
        self._cache: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        hit = self._cache.get(name)
        if hit is None:
            if len(self._cache) >= 4096:
                self._cache.clear()
            hit = self._cache[name] = self._search is not None and self._search(name) is not None
        return hit


def _read(path: str) -> str:
    with open(path, "rb", buffering=0) as f:
        return f.read().decode("utf-8", "replace")


def _unescape(field: str) -> str:
    r"""Decode the kernel's octal escapes in /proc/*/mounts (``\040`` space, ``\011`` tab, ``\134`` ...)."""
    out, i, n = [], 0, len(field)
    while i < n:
        c = field[i]
        if c == "\\" and i + 4 <= n and all("0" <= d <= "7" for d in field[i + 1 : i + 4]):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


_BY, _S, _1 = "By", "s", "1"
_NO_INFO: dict[str, str] = {}  # a device without udev data (never changed: its identity is the cache key)
_DISKSTATS_LINE = 512  # a /proc/diskstats line: a name and 17 to 20 numbers of up to 20 digits
# /proc/diskstats columns after major, minor, name: (metric, counter?, factor, unit).
_DISK_FIELDS = (
    ("node_disk_reads_completed_total", True, 1, _1),
    ("node_disk_reads_merged_total", True, 1, _1),
    ("node_disk_read_bytes_total", True, 512, _BY),
    ("node_disk_read_time_seconds_total", True, 0.001, _S),
    ("node_disk_writes_completed_total", True, 1, _1),
    ("node_disk_writes_merged_total", True, 1, _1),
    ("node_disk_written_bytes_total", True, 512, _BY),
    ("node_disk_write_time_seconds_total", True, 0.001, _S),
    ("node_disk_io_now", False, 1, _1),
    ("node_disk_io_time_seconds_total", True, 0.001, _S),
    ("node_disk_io_time_weighted_seconds_total", True, 0.001, _S),
    ("node_disk_discards_completed_total", True, 1, _1),
    ("node_disk_discards_merged_total", True, 1, _1),
    ("node_disk_discarded_sectors_total", True, 1, _1),
    ("node_disk_discard_time_seconds_total", True, 0.001, _S),
    ("node_disk_flush_requests_total", True, 1, _1),
    ("node_disk_flush_requests_time_seconds_total", True, 0.001, _S),
)
_DISK_NAMES = tuple(metric for metric, _, _, _ in _DISK_FIELDS)
_DISK_KINDS = tuple("counter" if is_counter else "gauge" for _, is_counter, _, _ in _DISK_FIELDS)
_DISK_FACTORS = tuple(factor for _, _, factor, _ in _DISK_FIELDS)
_DISK_UNITS = tuple(unit for _, _, _, unit in _DISK_FIELDS)
_ATA = (
    ("ID_ATA_WRITE_CACHE", "node_disk_ata_write_cache"),
    ("ID_ATA_WRITE_CACHE_ENABLED", "node_disk_ata_write_cache_enabled"),
    ("ID_ATA_ROTATION_RATE_RPM", "node_disk_ata_rotation_rate_rpm"),
)


class DiskCollector(PeriodicCollector):
    Config = Config

    def __init__(
        self, config: Config, context: CollectorContext, *, statvfs: Callable[[str], Any] = os.statvfs
    ) -> None:
        super().__init__(config, context)
        self._mp_excluded = _Matcher(config.mount_points_exclude)
        self._fs_excluded = _Matcher(config.fs_types_exclude)
        self._dev_excluded = _Matcher(config.devices_exclude)
        self._dev_included = _Matcher(config.devices_include) if config.devices_include else None
        self._statvfs = statvfs
        self._pool: StatPool | None = None  # made on first use, so close() then collect() still works
        root = str(context.rootfs).rstrip("/")
        self._rootfs = root  # "" for "/"
        self._udev_dir = f"{root}/run/udev/data"
        # label tuples kept between runs (each its own key): a run's samples then share their labels'
        # identity with the last run's, which makes the engine's comparison of the two runs cheaper
        self._labels: dict[Labels, Labels] = {}
        self._files = KeptFiles()  # the mount table and diskstats, read every run: opened once
        self._udev: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {}  # path -> (identity, info)
        # device -> (major, minor, udev info, its label tuple, its node_disk_info labels)
        self._devices: dict[str, tuple[str, str, dict[str, str], Labels, Labels]] = {}
        self._mounts_text = ""
        self._mounts: tuple[dict[Labels, bool], list[tuple[str, str]], list[str]] = ({}, [], [])

    async def collect(self, emit: Emitter) -> None:
        now = emit.time_ns  # the run's time, on the diskstats samples this collector makes itself
        for error in await self.context.run_blocking(self._collect, emit, now):
            emit.error(error)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        # on the worker thread, after any run still reading them: a descriptor closed under a
        # read could be reused by another open and read in its place
        if len(self._files):
            await self.context.run_blocking(self._files.close)

    @property
    def stuck_mount_points(self) -> frozenset[str]:
        """Mount points whose statvfs() timed out and has not returned yet."""
        return self._pool.stuck if self._pool is not None else frozenset()

    def _collect(self, emit: Emitter, now: int) -> list[str]:
        errors: list[str] = []
        if len(self._labels) > 4096:  # mounts and devices come and go: keep the cache bounded
            self._labels.clear()
        if len(self._devices) > 4096:
            self._devices.clear()
        try:
            self._filesystems(emit, errors)
        except OSError as exc:
            errors.append(f"cannot read the mount table: {exc}")
        try:
            diskstats = self._files.read(f"{self.context.proc_root}/diskstats", record=_DISKSTATS_LINE)
            self._diskstats(emit, diskstats.decode("utf-8", "replace"), errors, now)
        except OSError as exc:
            errors.append(f"cannot read diskstats: {exc}")
        self._files.sweep()
        return errors

    def _parse_mounts(self, text: str) -> tuple[dict[Labels, bool], list[tuple[str, str]], list[str]]:
        """(labels -> read-only) per distinct label set, (mount point, path to statvfs) once per mount
        point (the top mount answers), and the malformed lines."""
        root = self._rootfs
        mounts: dict[Labels, bool] = {}
        paths: dict[str, str] = {}
        malformed = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 4:
                malformed.append(f"malformed mount table line: {line!r}")
                continue
            device, mountpoint, fstype, options = parts[0], parts[1], parts[2], parts[3]
            if "\\" in mountpoint:
                mountpoint = _unescape(mountpoint)
            if root and (mountpoint == root or mountpoint.startswith(root + "/")):
                # Seen from inside a container: label the mount as the host sees it.
                mountpoint = mountpoint[len(root) :] or "/"
            if self._mp_excluded(mountpoint) or self._fs_excluded(fstype):
                continue
            if "\\" in device:
                device = _unescape(device)
            labels = (("device", device), ("fstype", fstype), ("mountpoint", mountpoint))
            labels = self._labels.setdefault(labels, labels)
            if labels not in mounts:
                mounts[labels] = "ro" in options.split(",")
                paths[mountpoint] = root + mountpoint if mountpoint != "/" else root or "/"
        return mounts, list(paths.items()), malformed

    def _mount_table(self) -> str:
        proc = self.context.proc_root
        try:
            return self._files.read(f"{proc}/1/mounts", 16384).decode("utf-8", "replace")
        except OSError:  # hidepid or no PID 1 in view: the process's own namespace
            return self._files.read(f"{proc}/mounts", 16384).decode("utf-8", "replace")

    def _filesystems(self, emit: Emitter, errors: list[str]) -> None:
        pool = self._pool
        if pool is None:
            pool = self._pool = StatPool(self._statvfs, self.config.stat_workers)
        text = self._mount_table()
        if text != self._mounts_text:  # the table rarely changes: its parse is kept until it does
            self._mounts = self._parse_mounts(text)
            self._mounts_text = text
        mounts, paths, malformed = self._mounts
        errors += malformed
        jobs = [(mountpoint, path) for mountpoint, path in paths if not pool.is_stuck(mountpoint)]
        timeout = self.config.mount_timeout
        results = pool.run(jobs, timeout)
        for mountpoint in results.timed_out:
            errors.append(f"statvfs({mountpoint}) did not return within {timeout:g}s; marked stuck until it does")
        if results.not_started:
            errors.append(f"statvfs not started for {len(results.not_started)} mount(s): every worker was busy")
        skipped = set(results.not_started)
        stats = results.stats
        gauge = emit.gauge
        for labels, read_only in mounts.items():
            mountpoint = labels[2][1]
            st = stats.get(mountpoint)
            if st is None:  # stuck, timed out or failed (EACCES, ENOENT ...): a device error, as node_exporter
                if mountpoint not in skipped:
                    gauge("node_filesystem_device_error", 1, labels, unit=_1)
                continue
            bsize = st.f_bsize
            gauge("node_filesystem_device_error", 0, labels, unit=_1)
            gauge("node_filesystem_size_bytes", st.f_blocks * bsize, labels, unit=_BY)
            gauge("node_filesystem_free_bytes", st.f_bfree * bsize, labels, unit=_BY)
            gauge("node_filesystem_avail_bytes", st.f_bavail * bsize, labels, unit=_BY)
            gauge("node_filesystem_files", st.f_files, labels, unit=_1)
            gauge("node_filesystem_files_free", st.f_ffree, labels, unit=_1)
            gauge("node_filesystem_readonly", 1 if read_only else 0, labels, unit=_1)

    def _diskstats(self, emit: Emitter, text: str, errors: list[str], now: int) -> None:
        udev = os.path.isdir(self._udev_dir)
        included = self._dev_included
        devices = self._devices
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 14:
                errors.append(f"malformed diskstats line: {line!r}")
                continue
            major, minor, name = parts[0], parts[1], parts[2]
            if self._dev_excluded(name) or (included is not None and not included(name)):
                continue
            try:
                values = list(map(int, parts[3:]))
            except ValueError:
                errors.append(f"malformed diskstats line: {line!r}")
                continue
            info = self._udev_info(major, minor) if udev else _NO_INFO
            known = devices.get(name)
            if known is None or known[0] != major or known[1] != minor or known[2] is not info:
                known = devices[name] = (major, minor, info, *self._device_labels(name, major, minor, info))
            device, info_labels = known[3], known[4]
            samples = [Sample("node_disk_info", 1.0, "gauge", info_labels, now, _1)]
            samples += map(
                Sample, _DISK_NAMES, map(float, map(mul, values, _DISK_FACTORS)), _DISK_KINDS, repeat(device),
                repeat(now), _DISK_UNITS,
            )  # fmt: skip
            emit.add(samples)
            if info:
                self._udev_series(emit, name, info, device)

    def _device_labels(self, name: str, major: str, minor: str, info: dict[str, str]) -> tuple[Labels, Labels]:
        """A device's label tuple and its node_disk_info labels, kept while its udev properties are the same."""
        kept = self._labels
        device: Labels = (("device", name),)
        serial = info.get("SCSI_IDENT_SERIAL") or info.get("ID_SERIAL_SHORT", "")
        info_labels = (
            ("device", name), ("major", major), ("minor", minor), ("model", info.get("ID_MODEL", "")),
            ("path", info.get("ID_PATH", "")), ("revision", info.get("ID_REVISION", "")),
            ("serial", serial), ("wwn", info.get("ID_WWN", "")),
        )  # fmt: skip
        return kept.setdefault(device, device), kept.setdefault(info_labels, info_labels)

    def _udev_info(self, major: str, minor: str) -> dict[str, str]:
        """udev's properties of a device; parsed again only when udev replaced its file (it writes a new
        one and renames it over the old: a new inode), kept while the file is the same."""
        path = f"{self._udev_dir}/b{major}:{minor}"
        try:
            st = os.stat(path)
        except OSError:
            self._udev.pop(path, None)
            return _NO_INFO
        identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        kept = self._udev.get(path)
        if kept is not None and kept[0] == identity:
            return kept[1]
        try:
            text = _read(path)
        except OSError:
            return _NO_INFO
        info = {}
        for line in text.splitlines():
            if line.startswith("E:"):
                key, sep, value = line[2:].partition("=")
                if sep:
                    info[key] = value
        if len(self._udev) >= 1024:  # devices come and go: keep the cache bounded
            self._udev.clear()
        self._udev[path] = (identity, info)
        return info

    def _udev_series(self, emit: Emitter, name: str, info: dict[str, str], device: Labels) -> None:
        kept = self._labels
        if fs_type := info.get("ID_FS_TYPE"):
            labels = (
                ("device", name), ("type", fs_type), ("usage", info.get("ID_FS_USAGE", "")),
                ("uuid", info.get("ID_FS_UUID", "")), ("version", info.get("ID_FS_VERSION", "")),
            )  # fmt: skip
            emit.gauge("node_disk_filesystem_info", 1, kept.setdefault(labels, labels), unit=_1)
        if dm_name := info.get("DM_NAME"):
            labels = (
                ("device", name), ("lv_layer", info.get("DM_LV_LAYER", "")), ("lv_name", info.get("DM_LV_NAME", "")),
                ("name", dm_name), ("uuid", info.get("DM_UUID", "")), ("vg_name", info.get("DM_VG_NAME", "")),
            )  # fmt: skip
            emit.gauge("node_disk_device_mapper_info", 1, kept.setdefault(labels, labels), unit=_1)
        if info.get("ID_ATA"):
            for key, metric in _ATA:
                try:
                    emit.gauge(metric, float(info[key]), device, unit=_1)
                except (KeyError, ValueError):
                    continue  # node_exporter skips absent or unparsable attributes too
