"""Storage and kernel subsystems, named as node_exporter names them.

One plugin stands for node_exporter's ``mdadm``, ``bcache``, ``btrfs``,
``xfs``, ``zfs``, ``nfs``, ``nfsd``, ``tapestats`` and ``selinux`` collectors;
each is switched on or off like node_exporter's ``--collector.<name>`` flags
(all on, as in 1.5). They run in one worker call per interval; a failing part
is reported and the others still export.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated

import msgspec

from agent.plugin import CollectorContext, Emitter, IdleParts, PeriodicCollector, PluginConfig, run_parts

from . import bcache, btrfs, mdadm, nfs, selinux, tape, xfs, zfs


class Config(PluginConfig):
    mdadm: Annotated[bool, msgspec.Meta(description="node_md_* from /proc/mdstat.")] = True
    bcache: Annotated[bool, msgspec.Meta(description="node_bcache_* from /sys/fs/bcache.")] = True
    bcache_priority_stats: Annotated[
        bool, msgspec.Meta(description="Also node_bcache_priority_stats_* (expensive for the kernel to compute).")
    ] = False
    btrfs: Annotated[bool, msgspec.Meta(description="node_btrfs_* from /sys/fs/btrfs.")] = True
    xfs: Annotated[bool, msgspec.Meta(description="node_xfs_* from /sys/fs/xfs/*/stats/stats.")] = True
    zfs: Annotated[bool, msgspec.Meta(description="node_zfs_* from /proc/spl/kstat/zfs.")] = True
    nfs: Annotated[bool, msgspec.Meta(description="node_nfs_* (client) from /proc/net/rpc/nfs.")] = True
    nfsd: Annotated[bool, msgspec.Meta(description="node_nfsd_* (server) from /proc/net/rpc/nfsd.")] = True
    tapestats: Annotated[bool, msgspec.Meta(description="node_tape_* from /sys/class/scsi_tape.")] = True
    tapestats_ignored_devices: Annotated[
        str, msgspec.Meta(description="Tape devices (regex) tapestats leaves out; node_exporter's default '^$'.")
    ] = "^$"
    selinux: Annotated[bool, msgspec.Meta(description="node_selinux_enabled, _config_mode, _current_mode.")] = True

    def __post_init__(self) -> None:
        try:
            re.compile(self.tapestats_ignored_devices)
        except re.error as exc:
            raise ValueError(f"tapestats_ignored_devices: invalid regex: {exc}") from None


PARTS = ("mdadm", "bcache", "btrfs", "xfs", "zfs", "nfs", "nfsd", "tapestats", "selinux")


class StorageCollector(PeriodicCollector):
    # /proc and /sys, and the Btrfs ioctls, which answer from the mounted filesystem's memory: the
    # shared thread, not one of its own (a thread hop per interval). Should a call ever get stuck,
    # the engine moves this instance to a thread of its own.
    shares_worker = True
    Config = Config

    def __init__(self, config: Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        proc, sys, rootfs = str(context.proc_root), str(context.sys_root), str(context.rootfs)
        parts = {
            "mdadm": partial(mdadm.mdadm, proc),
            "bcache": partial(bcache.bcache, sys, config.bcache_priority_stats),
            "btrfs": partial(btrfs.btrfs, proc, sys, rootfs),
            "xfs": partial(xfs.xfs, sys),
            "zfs": partial(zfs.zfs, proc),
            "nfs": partial(nfs.nfs, proc),
            "nfsd": partial(nfs.nfsd, proc),
            "tapestats": partial(tape.tapestats, sys, re.compile(config.tapestats_ignored_devices)),
            "selinux": partial(selinux.selinux, proc, sys, rootfs),
        }
        self._parts = [(name, parts[name]) for name in PARTS if getattr(config, name)]
        self._idle = IdleParts(context.clock)  # most hosts have none of these: looked for once a minute

    async def collect(self, emit: Emitter) -> None:
        for error in await self.context.run_blocking(run_parts, self._parts, emit, self._idle):
            emit.error(error)
