"""``/sys/fs/btrfs``: node_exporter's ``btrfs`` collector.

Allocation figures come from sysfs. Devices come from the filesystem itself
when it is mounted and answers the ioctls (``btrfs_ioctl``): then with their
error counters, unused bytes and ``btrfs_dev_uuid``; otherwise from sysfs,
with their size only, exactly as node_exporter does.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import entries, list_dir, parse_uint, read_attr

from . import btrfs_ioctl

Report = Callable[[str], None]

SECTOR = 512
_BLOCK_GROUPS = ("data", "metadata", "system")


def _ratio(layout: str, devices: int) -> float:
    if layout in ("single", "raid0"):
        return 1.0
    if layout in ("dup", "raid1", "raid10"):
        return 2.0
    if layout in ("raid5", "raid6"):
        data = devices - (1 if layout == "raid5" else 2)
        return devices / data if data else float("inf")  # Go's float division by zero
    return 0.0


class _Reader:
    """procfs' reader: a missing file reads as empty/0, a number that does not parse as 0."""

    def __init__(self, path: str) -> None:
        self.path = path

    def text(self, name: str) -> str:
        try:
            return read_attr(f"{self.path}/{name}")
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return ""
            raise

    def value(self, name: str) -> int:
        try:
            return parse_uint(self.text(name))
        except ValueError:
            return 0


_ERROR_TYPES = ("write", "read", "flush", "corruption", "generation")


def _filesystem(path: str, mounted: dict[str, list[btrfs_ioctl.Device]], emit: Emitter) -> None:
    fs = _Reader(path)
    devices = {name: SECTOR * fs.value(f"devices/{name}/size") for name in list_dir(f"{path}/devices")}
    label, uuid = fs.text("label"), fs.text("metadata_uuid") or os.path.basename(path)
    list_dir(f"{path}/features")  # procfs lists it; a filesystem without one fails there
    out: list[tuple[str, float, tuple, str]] = [
        ("node_btrfs_info", 1, (("label", label), ("uuid", uuid)), "1"),
        ("node_btrfs_global_rsv_size_bytes", fs.value("allocation/global_rsv_size"), (("uuid", uuid),), "By"),
    ]
    for group in _BLOCK_GROUPS:
        base = f"allocation/{group}"
        out.append(("node_btrfs_reserved_bytes", fs.value(f"{base}/bytes_reserved"),
                    (("block_group_type", group), ("uuid", uuid)), "By"))  # fmt: skip
        for layout in list_dir(f"{path}/{base}"):
            if not os.path.isdir(f"{path}/{base}/{layout}") or os.path.islink(f"{path}/{base}/{layout}"):
                continue
            labels = (("block_group_type", group), ("mode", layout), ("uuid", uuid))
            out.append(("node_btrfs_used_bytes", fs.value(f"{base}/{layout}/used_bytes"), labels, "By"))
            out.append(("node_btrfs_size_bytes", fs.value(f"{base}/{layout}/total_bytes"), labels, "By"))
            out.append(("node_btrfs_allocation_ratio", _ratio(layout, len(devices)), labels, "1"))
    if uuid.replace("-", "") in mounted:
        for dev in mounted[uuid.replace("-", "")]:
            labels = (("btrfs_dev_uuid", dev.uuid), ("device", os.path.basename(dev.path)), ("uuid", uuid))
            out.append(("node_btrfs_device_size_bytes", dev.total_bytes, labels, "By"))
            out.append(("node_btrfs_device_unused_bytes", dev.total_bytes - dev.bytes_used, labels, "By"))
            for kind, count in zip(_ERROR_TYPES, dev.errors, strict=True):
                out.append(("node_btrfs_device_errors_total", count, (*labels, ("type", kind)), "1"))
    else:
        for device, size in devices.items():
            out.append(("node_btrfs_device_size_bytes", size, (("device", device), ("uuid", uuid)), "By"))
    for name, value, labels, unit in out:
        kind = emit.counter if name.endswith("_total") else emit.gauge
        kind(name, value, labels, unit=unit)


def btrfs(proc_root: str, sys_root: str, rootfs: str, emit: Emitter, report: Report) -> None:
    filesystems = entries(f"{sys_root}/fs/btrfs", containing="-")
    mounted = btrfs_ioctl.device_stats(proc_root, rootfs) if filesystems else {}
    for path in filesystems:
        try:
            _filesystem(path, mounted, emit)
        except OSError as exc:
            report(f"filesystem {os.path.basename(path)}: {exc.strerror}: {exc.filename}")
