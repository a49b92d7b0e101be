"""SELinux's state: node_exporter's ``selinux`` collector (``node_selinux_*``).

node_exporter asks go-selinux, which looks at the real /sys/fs/selinux,
/proc/self/attr/current and /etc/selinux/config whatever ``--path.*`` says;
here the three are read under sys_root, proc_root and rootfs, so the
collector works in a container with the host mounted and on fixture trees.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import read_attr, read_text

Report = Callable[[str], None]

# /etc/selinux/config SELINUX= value -> node_exporter's number
_MODES = {"enforcing": 1, "permissive": 0, "disabled": -1}


def _config_mode(rootfs: str) -> int:
    try:
        text = read_text(f"{rootfs}/etc/selinux/config")
    except OSError:
        return -1
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "SELINUX":
            return _MODES.get(value.strip().strip("\"'"), -1)
    return -1


def selinux(proc_root: str, sys_root: str, rootfs: str, emit: Emitter, report: Report) -> None:
    """Enabled when selinuxfs is there and this process has a label other than ``kernel`` (go-selinux's test)."""
    try:
        enforce = read_attr(f"{sys_root}/fs/selinux/enforce")
        label = read_text(f"{proc_root}/self/attr/current").rstrip("\x00\n")
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL, errno.EACCES, errno.ENOTDIR):
            report(f"selinux: {exc.strerror}: {exc.filename}")
        emit.gauge("node_selinux_enabled", 0, unit="1")
        return
    if label in ("", "kernel") or not os.path.isdir(f"{sys_root}/fs/selinux"):
        emit.gauge("node_selinux_enabled", 0, unit="1")
        return
    emit.gauge("node_selinux_enabled", 1, unit="1")
    emit.gauge("node_selinux_config_mode", _config_mode(rootfs), unit="1")
    emit.gauge("node_selinux_current_mode", 1 if enforce == "1" else 0 if enforce == "0" else -1, unit="1")
