"""Network collector: node_exporter's ``netdev``, ``netstat`` and ``sockstat`` collectors.

Reads ``<proc>/net/{dev,netstat,snmp,snmp6,sockstat,sockstat6}`` and, for
``node_network_receive_nohandler_total`` (which node_exporter 1.5 gets from
netlink and /proc/net/dev lacks), ``<sys>/class/net/<dev>/statistics/rx_nohandler``.
Names, labels, values and types are those of prometheus-node-exporter 1.5;
node_exporter exports netstat values untyped, they are gauges here.

Parsing is cheap on purpose: the netstat field selection is computed once per
distinct header line and cached, so a steady-state run only splits lines and
converts the selected numbers.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Annotated

import msgspec

from agent.model import Labels
from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig
from agent.procfiles import KeptFiles

NETSTAT_FIELDS = (
    r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)"
    r"|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)"
    r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)"
    r"|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$"
)


class Config(PluginConfig):
    interfaces_include: Annotated[
        str, msgspec.Meta(description="If set, only interfaces matching this regex are reported.")
    ] = ""
    interfaces_exclude: Annotated[str, msgspec.Meta(description="Interfaces (regex) not reported.")] = ""
    netstat_fields: Annotated[
        str,
        msgspec.Meta(description="<Proto>_<Field> names (regex) exported as node_netstat_*; node_exporter's default."),
    ] = NETSTAT_FIELDS

    def __post_init__(self) -> None:
        for key in ("interfaces_include", "interfaces_exclude", "netstat_fields"):
            try:
                re.compile(getattr(self, key))
            except re.error as exc:
                raise ValueError(f"{key}: invalid regex: {exc}") from None


_NETDEV = tuple(
    (f"node_network_{direction}_{field}_total", "By" if field == "bytes" else "1")
    for direction, fields in (
        ("receive", ("bytes", "packets", "errs", "drop", "fifo", "frame", "compressed", "multicast")),
        ("transmit", ("bytes", "packets", "errs", "drop", "fifo", "colls", "carrier", "compressed")),
    )
    for field in fields
)
_SOCKSTAT_FIELDS = frozenset(("inuse", "orphan", "tw", "alloc", "mem", "memory"))
_OPTIONAL = ("snmp6", "sockstat6")  # absent when IPv6 is disabled
# The interface went away after net/dev was read (or there is no sysfs): nothing to report, no error.
_GONE = frozenset((errno.ENOENT, errno.ENODEV, errno.ENXIO))


class NetworkCollector(PeriodicCollector):
    shares_worker = True  # reads /proc and /sys only
    Config = Config

    def __init__(self, config: Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._include = re.compile(config.interfaces_include).search if config.interfaces_include else None
        self._exclude = re.compile(config.interfaces_exclude).search if config.interfaces_exclude else None
        self._field = re.compile(config.netstat_fields).search
        self._iface_ok: dict[str, bool] = {}
        # one label tuple per interface, kept between runs: a run's samples then share their labels'
        # identity with the last run's, which makes the engine's comparison of the two runs cheaper
        self._device_labels: dict[str, Labels] = {}
        self._headers: dict[str, tuple[int, tuple[tuple[int, str, str], ...]]] = {}  # header -> (count, selected)
        self._snmp6: dict[str, tuple[str, str] | None] = {}  # Ip6InOctets -> (metric, unit)
        self._page_size = os.sysconf("SC_PAGESIZE")
        self._net = f"{context.proc_root}/net"
        self._sys_net = f"{context.sys_root}/class/net"
        self._files = KeptFiles()  # the same files every run: opened once

    async def collect(self, emit: Emitter) -> None:
        for error in await self.context.run_blocking(self._collect, emit):
            emit.error(error)

    async def close(self) -> None:
        # on the worker thread, after any run still reading them: a descriptor closed under a
        # read could be reused by another open and read in its place
        if len(self._files):
            await self.context.run_blocking(self._files.close)

    def _read(self, path: str) -> str:
        return self._files.read(path, 16384).decode("ascii", "replace")

    def _collect(self, emit: Emitter) -> list[str]:
        errors = self._collect_files(emit)
        self._files.sweep()
        return errors

    def _collect_files(self, emit: Emitter) -> list[str]:
        errors: list[str] = []
        files: dict[str, str] = {}
        for name in ("dev", "netstat", "snmp", "snmp6", "sockstat", "sockstat6"):
            try:
                files[name] = self._read(f"{self._net}/{name}")
            except FileNotFoundError:
                if name not in _OPTIONAL:
                    errors.append(f"cannot read {self._net}/{name}: no such file")
            except OSError as exc:
                errors.append(f"cannot read {self._net}/{name}: {exc}")
        if "dev" in files:
            self._netdev(emit, files["dev"], errors)
        for name in ("netstat", "snmp"):
            if name in files:
                self._netstat(emit, files[name], name, errors)
        if "snmp6" in files:
            self._netstat6(emit, files["snmp6"], errors)
        for name in ("sockstat", "sockstat6"):
            if name in files:
                self._sockstat(emit, files[name], errors, ipv6=name == "sockstat6")
        return errors

    def _wanted(self, iface: str) -> bool:
        ok = self._iface_ok.get(iface)
        if ok is None:
            if len(self._iface_ok) >= 4096:  # interfaces come and go (containers): keep the cache bounded
                self._iface_ok.clear()
            ok = not (self._exclude and self._exclude(iface)) and not (self._include and not self._include(iface))
            self._iface_ok[iface] = ok
        return ok

    def _netdev(self, emit: Emitter, text: str, errors: list[str]) -> None:
        counter = emit.counter
        for line in text.splitlines()[2:]:
            name, sep, rest = line.partition(":")
            name = name.strip()
            if sep and not self._wanted(name):
                continue
            try:
                values = [int(v) for v in rest.split()]
            except ValueError:
                values = []
            if not sep or len(values) != 16:
                errors.append(f"malformed line in net/dev: {line!r}")
                continue
            labels = self._device_labels.get(name)
            if labels is None:
                if len(self._device_labels) >= 4096:  # interfaces come and go: keep the cache bounded
                    self._device_labels.clear()
                labels = self._device_labels[name] = (("device", name),)
            for (metric, unit), value in zip(_NETDEV, values, strict=True):
                counter(metric, value, labels, unit=unit)
            try:
                nohandler = self._read(f"{self._sys_net}/{name}/statistics/rx_nohandler")
            except OSError as exc:
                if exc.errno not in _GONE:
                    errors.append(f"cannot read rx_nohandler of {name}: {exc}")
                continue
            try:
                counter("node_network_receive_nohandler_total", int(nohandler), labels, unit="1")
            except ValueError:
                errors.append(f"malformed rx_nohandler of {name}: {nohandler!r}")

    def _select(self, header: str) -> tuple[int, tuple[tuple[int, str, str], ...]]:
        """Field count and the fields of one ``Proto: A B C`` header line that netstat_fields selects."""
        names = header.split()
        proto = names[0][:-1]
        picked = []
        for index, field in enumerate(names[1:], 1):
            key = f"{proto}_{field}"
            if self._field(key):
                picked.append((index, f"node_netstat_{key}", "By" if field.endswith("Octets") else "1"))
        return len(names), tuple(picked)

    def _netstat(self, emit: Emitter, text: str, source: str, errors: list[str]) -> None:
        lines = text.splitlines()
        for header, values_line in zip(lines[0::2], lines[1::2], strict=False):
            cached = self._headers.get(header)
            if cached is None:
                if len(self._headers) >= 64:
                    self._headers.clear()
                cached = self._headers[header] = self._select(header)
            count, selected = cached
            values = values_line.split()
            if len(values) != count or not header.startswith(values[0]):
                errors.append(f"field count mismatch in {source}: {header.split(' ', 1)[0]}")
                continue
            try:
                picked = [(metric, int(values[index]), unit) for index, metric, unit in selected]
            except ValueError:
                errors.append(f"malformed values in {source}: {values_line!r}")
                continue
            for metric, value, unit in picked:
                emit.gauge(metric, value, unit=unit)

    def _netstat6(self, emit: Emitter, text: str, errors: list[str]) -> None:
        cache = self._snmp6
        tokens = text.split()  # "Ip6InReceives 1 Ip6InHdrErrors 0 ...": names and values alternate
        for name, raw in zip(tokens[0::2], tokens[1::2], strict=False):
            hit = cache.get(name, False)
            if hit is False:
                if len(cache) >= 4096:
                    cache.clear()
                six = name.find("6")  # Ip6InOctets -> Ip6_InOctets, as node_exporter splits them
                key = f"{name[: six + 1]}_{name[six + 1 :]}"
                selected = six > 0 and self._field(key)
                hit = cache[name] = (
                    (f"node_netstat_{key}", "By" if key.endswith("Octets") else "1") if selected else None
                )
            if hit is not None:
                try:
                    emit.gauge(hit[0], int(raw), unit=hit[1])
                except ValueError:
                    errors.append(f"malformed value in snmp6: {name} {raw!r}")

    def _sockstat(self, emit: Emitter, text: str, errors: list[str], *, ipv6: bool) -> None:
        for line in text.splitlines():
            parts = line.split()
            if not parts:
                continue
            proto = parts[0][:-1]
            try:
                pairs = [(field, int(raw)) for field, raw in zip(parts[1::2], parts[2::2], strict=False)]
            except ValueError:
                errors.append(f"malformed line in sockstat: {line!r}")
                continue
            if proto == "sockets":  # only IPv4's file has it, node_exporter reads it only there
                if pairs and pairs[0][0] == "used" and not ipv6:
                    emit.gauge("node_sockstat_sockets_used", pairs[0][1], unit="1")
                continue
            for field, value in pairs:
                if field not in _SOCKSTAT_FIELDS:
                    continue
                emit.gauge(f"node_sockstat_{proto}_{field}", value, unit="By" if field == "memory" else "1")
                if field == "mem":  # in pages
                    emit.gauge(f"node_sockstat_{proto}_mem_bytes", value * self._page_size, unit="By")
