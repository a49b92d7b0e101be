"""Per-device statistics of mounted Btrfs filesystems, over the ioctls node_exporter uses.

node_exporter lists Btrfs mounts from ``<proc_root>/1/mounts`` (``mounts`` when
hidepid hides it), opens each mount point under rootfs and asks
``BTRFS_IOC_FS_INFO``, ``BTRFS_IOC_DEV_INFO`` and ``BTRFS_IOC_GET_DEV_STATS``.
Whatever fails there (not root, a bind mount of a subdirectory, a mount gone
meanwhile) only leaves that filesystem to the sysfs figures, silently, as in
node_exporter: it is an expected state, not an error.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass


def _iowr(nr: int, size: int, read_only: bool = False) -> int:
    direction = 2 if read_only else 3  # _IOR / _IOWR
    return direction << 30 | size << 16 | 0x94 << 8 | nr  # 0x94: BTRFS_IOCTL_MAGIC


FS_INFO = _iowr(31, 1024, read_only=True)
DEV_INFO = _iowr(30, 4096)
GET_DEV_STATS = _iowr(52, 1032)
_SUBVOLUME_ROOT_INODE = 256  # BTRFS_FIRST_FREE_OBJECTID: a mount point that is a subvolume's root
_DEV_STAT_VALUES = 5  # write, read, flush, corruption, generation


@dataclass(frozen=True, slots=True)
class Device:
    path: str
    uuid: str
    bytes_used: int
    total_bytes: int
    errors: tuple[int, ...]  # write, read, flush, corruption, generation


def _uuid(raw: bytes) -> str:
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def btrfs_mounts(proc_root: str) -> list[tuple[str, str]]:
    """(device, mount point) of btrfs mounts, the mount point with fstab's octal escapes undone."""
    try:
        with open(f"{proc_root}/1/mounts", "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        with open(f"{proc_root}/mounts", "rb") as f:
            text = f.read().decode("utf-8", "replace")
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "btrfs":
            mounts.append((parts[0], parts[1].replace("\\040", " ").replace("\\011", "\t")))
    return mounts


def _devices(fd: int) -> tuple[str, list[Device]]:
    info = bytearray(1024)
    fcntl.ioctl(fd, FS_INFO, info, True)
    max_id, num_devices = struct.unpack_from("=QQ", info)
    fsid = bytes(info[16:32]).hex()
    devices: list[Device] = []
    for devid in range(max_id + 1):
        dev = bytearray(4096)
        struct.pack_into("=Q", dev, 0, devid)
        try:
            fcntl.ioctl(fd, DEV_INFO, dev, True)
        except OSError as exc:
            if exc.errno == errno.ENODEV:  # a gap in the device ids
                continue
            raise
        bytes_used, total_bytes = struct.unpack_from("=QQ", dev, 24)
        path = bytes(dev[3072:]).split(b"\0", 1)[0].decode("utf-8", "replace")
        stats = bytearray(1032)
        struct.pack_into("=QQQ", stats, 0, devid, _DEV_STAT_VALUES, 0)
        fcntl.ioctl(fd, GET_DEV_STATS, stats, True)
        errors = struct.unpack_from(f"={_DEV_STAT_VALUES}Q", stats, 24)
        devices.append(Device(path, _uuid(bytes(dev[8:24])), bytes_used, total_bytes, errors))
        if len(devices) == num_devices:
            break
    return fsid, devices


def device_stats(proc_root: str, rootfs: str) -> dict[str, list[Device]]:
    """fsid (hex, no dashes) -> its devices, for every btrfs mount that answers."""
    try:
        mounts = btrfs_mounts(proc_root)
    except OSError:
        return {}
    found: dict[str, list[Device]] = {}
    done: set[str] = set()
    for device, mount_point in mounts:
        if device in done:
            continue
        path = os.path.join(rootfs, mount_point.lstrip("/"))
        try:
            st = os.stat(path)
            if st.st_ino != _SUBVOLUME_ROOT_INODE or not stat.S_ISDIR(st.st_mode):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_CLOEXEC)
            except PermissionError:  # O_NOATIME needs ownership of the directory
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fsid, devices = _devices(fd)
            finally:
                os.close(fd)
        except OSError:
            continue
        if fsid in found:
            continue
        done.add(device)
        found[fsid] = devices
    return found
