"""Network device class information and kernel network tables, named as node_exporter names them.

One plugin stands for node_exporter's ``netclass``, ``softnet``, ``arp``,
``conntrack``, ``udp_queues``, ``tcpstat``, ``bonding``, ``ipvs``,
``infiniband`` and ``fibrechannel`` collectors; each is switched on or off like
node_exporter's ``--collector.<name>`` flags (tcpstat is off, as in 1.5). All
of them run in one worker call per interval; a failing part is reported and
the others still export.
"""

from __future__ import annotations

import os
import re
from functools import partial
from typing import Annotated

import msgspec

from agent.plugin import CollectorContext, Emitter, IdleParts, PeriodicCollector, PluginConfig, run_parts
from agent.procfiles import KeptFiles

from . import fabric, ipvs, procnet, sysnet, tcpstat
from .links import NetlinkNetclass


class Config(PluginConfig):
    netclass: Annotated[bool, msgspec.Meta(description="node_network_* from /sys/class/net.")] = True
    netclass_ignored_devices: Annotated[
        str, msgspec.Meta(description="Interfaces (regex) netclass leaves out; node_exporter's default '^$'.")
    ] = "^$"
    netclass_netlink: Annotated[
        bool,
        msgspec.Meta(
            description="Interface attributes from one rtnetlink dump (sysfs only for speed, duplex, flags, "
            "addr_assign_type) when sys_root is /sys; false: every attribute from sysfs."
        ),
    ] = True
    netclass_ignore_invalid_speed: Annotated[
        bool, msgspec.Meta(description="Leave out node_network_speed_bytes when the driver reports -1.")
    ] = False
    softnet: Annotated[bool, msgspec.Meta(description="node_softnet_* from /proc/net/softnet_stat.")] = True
    arp: Annotated[bool, msgspec.Meta(description="node_arp_entries from /proc/net/arp.")] = True
    arp_device_include: Annotated[str, msgspec.Meta(description="Only these ARP devices (regex).")] = ""
    arp_device_exclude: Annotated[str, msgspec.Meta(description="ARP devices (regex) left out.")] = ""
    conntrack: Annotated[bool, msgspec.Meta(description="node_nf_conntrack_* (when nf_conntrack is loaded).")] = True
    udp_queues: Annotated[bool, msgspec.Meta(description="node_udp_queues from /proc/net/udp and udp6.")] = True
    tcpstat: Annotated[
        bool, msgspec.Meta(description="node_tcp_connection_states from /proc/net/tcp and tcp6 (off, as in 1.5).")
    ] = False
    tcpstat_max_sockets: Annotated[
        int, msgspec.Meta(ge=0, description="Skip tcpstat (reported) above this many sockets; 0: no limit.")
    ] = 200_000
    bonding: Annotated[bool, msgspec.Meta(description="node_bonding_* for bonding masters.")] = True
    ipvs: Annotated[bool, msgspec.Meta(description="node_ipvs_* (when IPVS is loaded).")] = True
    ipvs_backend_labels: Annotated[
        list[str], msgspec.Meta(description="Labels of the node_ipvs_backend_* series, a subset of the default.")
    ] = msgspec.field(default_factory=lambda: list(ipvs.BACKEND_LABELS))
    infiniband: Annotated[bool, msgspec.Meta(description="node_infiniband_* from /sys/class/infiniband.")] = True
    fibrechannel: Annotated[bool, msgspec.Meta(description="node_fibrechannel_* from /sys/class/fc_host.")] = True

    def __post_init__(self) -> None:
        for key in ("netclass_ignored_devices", "arp_device_include", "arp_device_exclude"):
            try:
                re.compile(getattr(self, key))
            except re.error as exc:
                raise ValueError(f"{key}: invalid regex: {exc}") from None
        if self.arp_device_include and self.arp_device_exclude:
            raise ValueError("arp_device_include and arp_device_exclude are mutually exclusive")
        unknown = sorted(set(self.ipvs_backend_labels) - set(ipvs.BACKEND_LABELS))
        if unknown:
            raise ValueError(f"ipvs_backend_labels: unknown {unknown}; choose from {list(ipvs.BACKEND_LABELS)}")


class NetclassCollector(PeriodicCollector):
    shares_worker = True  # reads /proc and /sys only
    Config = Config

    def __init__(self, config: Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        proc, sys = str(context.proc_root), str(context.sys_root)
        self._files = KeptFiles()  # /proc/net files read every run, opened once

        def read(path: str) -> str:
            # softnet_stat, arp and stat/nf_conntrack: tables of lines well under 256 bytes
            return self._files.read(path, record=256).decode("utf-8", "replace")

        def read_value(path: str) -> str:  # a /proc/sys value: one read
            return self._files.read_once(path).decode("utf-8", "replace")

        wanted_labels = tuple(label for label in ipvs.BACKEND_LABELS if label in config.ipvs_backend_labels)
        ignored = re.compile(config.netclass_ignored_devices)
        # rtnetlink answers for this process' network namespace, which is /sys' only when
        # sys_root is the real /sys (not a fixture tree, not a host's /sys mounted elsewhere).
        self._links = (
            NetlinkNetclass(sys, ignored, config.netclass_ignore_invalid_speed, context.logger)
            if config.netclass and config.netclass_netlink and os.path.realpath(sys) == "/sys"
            else None
        )
        parts = {
            "netclass": self._links
            or partial(
                sysnet.netclass,
                sys,
                ignored,
                config.netclass_ignore_invalid_speed,
                static={},  # attributes fixed for a device's lifetime, per device
            ),
            "softnet": partial(procnet.softnet, proc, read=read),
            "arp": partial(
                procnet.arp,
                proc,
                procnet.device_filter(config.arp_device_include, config.arp_device_exclude),
                read=read,
            ),
            "conntrack": partial(procnet.conntrack, proc, read=read, read_value=read_value),
            "udp_queues": partial(procnet.udp_queues, proc, chunks=self._files.chunks),
            "tcpstat": partial(tcpstat.tcpstat, proc, config.tcpstat_max_sockets, chunks=self._files.chunks),
            "bonding": partial(sysnet.bonding, sys),
            "ipvs": partial(ipvs.ipvs, proc, wanted_labels),
            "infiniband": partial(fabric.infiniband, sys),
            "fibrechannel": partial(fabric.fibrechannel, sys),
        }
        self._parts = [(name, part) for name, part in parts.items() if getattr(config, name)]
        self._idle = IdleParts(context.clock)  # bonding, IPVS, fabrics a host lacks: looked for once a minute

    async def collect(self, emit: Emitter) -> None:
        if self._links is not None:
            self._links.run_time = emit.time_ns  # the run's time, on the samples it makes itself
        for error in await self.context.run_blocking(self._run, emit):
            emit.error(error)

    def _run(self, emit: Emitter) -> list[str]:
        errors = run_parts(self._parts, emit, self._idle)
        self._files.sweep()
        return errors

    async def close(self) -> None:
        # on the worker thread, after any run still reading them: a descriptor closed under a
        # read could be reused by another open and read in its place
        if len(self._files) or (self._links is not None and self._links.is_open):
            await self.context.run_blocking(self._close)

    def _close(self) -> None:
        if self._links is not None:
            self._links.close()
        self._files.close()
