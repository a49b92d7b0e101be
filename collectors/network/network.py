"""Network collector: node_exporter's ``netdev``, ``netstat`` and ``sockstat`` collectors.

Reads ``<proc>/net/{dev,netstat,snmp,snmp6,sockstat,sockstat6}`` and, for
``node_network_receive_nohandler_total`` (which node_exporter 1.5 gets from
netlink and /proc/net/dev lacks), ``<sys>/class/net/<dev>/statistics/rx_nohandler``.
Names, labels, values and types are those of prometheus-node-exporter 1.5;
node_exporter exports netstat values untyped, they are gauges here.

Parsing is cheap on purpose. The netstat and snmp field selection is computed once per
distinct header line and kept, with the names and units of its samples. snmp6 and the
two sockstat files keep their layout while the kernel runs: a file laid out as at its
last read (the same words at the same places, :class:`agent.procfiles.TokenLayout`) has
its numbers picked by position and its samples made with one ``map``; the line parser
runs on a first read and whenever the layout moved.
"""

from __future__ import annotations

import errno
import os
import re
from itertools import repeat
from operator import itemgetter
from typing import Annotated

import msgspec

from agent.model import Labels, Sample
from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig
from agent.procfiles import KeptFiles, TokenLayout

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
_NETDEV_NAMES = tuple(name for name, _ in _NETDEV)
_NETDEV_UNITS = tuple(unit for _, unit in _NETDEV)
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
        self._headers: dict[str, _Header] = {}  # a netstat/snmp header line -> its selected fields
        self._snmp6: dict[str, tuple[str, str] | None] = {}  # Ip6InOctets -> (metric, unit)
        self._page_size = os.sysconf("SC_PAGESIZE")
        self._net = f"{context.proc_root}/net"
        self._sys_net = f"{context.sys_root}/class/net"
        self._files = KeptFiles()  # the same files every run: opened once
        self._layouts: dict[str, _Layout] = {}  # file -> where its exported numbers were at its last read

    async def collect(self, emit: Emitter) -> None:
        now = emit.time_ns  # the run's time, on the samples this collector makes itself
        for error in await self.context.run_blocking(self._collect, emit, now):
            emit.error(error)

    async def close(self) -> None:
        # on the worker thread, after any run still reading them: a descriptor closed under a
        # read could be reused by another open and read in its place
        if len(self._files):
            await self.context.run_blocking(self._files.close)

    def _read(self, path: str, name: str = "") -> str:
        # dev: a table of a line per interface (well under 256 bytes); the others are printed in one go
        if name == "dev":
            return self._files.read(path, 16384, record=256).decode("ascii", "replace")
        return self._files.read(path, 16384, in_one_go=True).decode("ascii", "replace")

    def _collect(self, emit: Emitter, now: int) -> list[str]:
        out = _Out(now)
        errors = self._collect_files(out)
        emit.add(out.samples)
        self._files.sweep()
        return errors

    def _collect_files(self, emit: _Out) -> list[str]:
        errors: list[str] = []
        files: dict[str, str] = {}
        for name in ("dev", "netstat", "snmp", "snmp6", "sockstat", "sockstat6"):
            try:
                files[name] = self._read(f"{self._net}/{name}", name)
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
        for name in ("snmp6", "sockstat", "sockstat6"):
            if name not in files:
                continue
            text = files[name]
            tokens, lines = text.split(), text.count("\n")
            kept = self._layouts.get(name)
            if kept is not None and kept.emit(tokens, lines, emit):
                continue
            emit.begin()
            before = len(errors)
            if name == "snmp6":
                self._netstat6(emit, text, errors)
            else:
                self._sockstat(emit, text, errors, ipv6=name == "sockstat6")
            # laid out anew from what the line parser read; a file it found fault with is parsed each run
            layout = emit.end(tokens, lines) if len(errors) == before else None
            if layout is None:
                self._layouts.pop(name, None)
            else:
                self._layouts[name] = layout
        return errors

    def _wanted(self, iface: str) -> bool:
        ok = self._iface_ok.get(iface)
        if ok is None:
            if len(self._iface_ok) >= 4096:  # interfaces come and go (containers): keep the cache bounded
                self._iface_ok.clear()
            ok = not (self._exclude and self._exclude(iface)) and not (self._include and not self._include(iface))
            self._iface_ok[iface] = ok
        return ok

    def _netdev(self, emit: _Out, text: str, errors: list[str]) -> None:
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
            emit.samples += map(
                Sample, _NETDEV_NAMES, map(float, values), repeat("counter"), repeat(labels), repeat(emit.now),
                _NETDEV_UNITS,
            )  # fmt: skip
            try:
                path = f"{self._sys_net}/{name}/statistics/rx_nohandler"
                nohandler = self._files.read_once(path).decode("ascii", "replace")
            except OSError as exc:
                if exc.errno not in _GONE:
                    errors.append(f"cannot read rx_nohandler of {name}: {exc}")
                continue
            try:
                value = float(int(nohandler))
            except ValueError:
                errors.append(f"malformed rx_nohandler of {name}: {nohandler!r}")
                continue
            emit.samples.append(Sample("node_network_receive_nohandler_total", value, "counter", labels, emit.now, "1"))

    def _select(self, header: str) -> _Header:
        """The fields of one ``Proto: A B C`` header line that netstat_fields selects."""
        names = header.split()
        proto = names[0][:-1]
        picked = []
        for index, field in enumerate(names[1:], 1):
            key = f"{proto}_{field}"
            if self._field(key):
                picked.append((index, f"node_netstat_{key}", "By" if field.endswith("Octets") else "1"))
        return _Header(len(names), picked)

    def _netstat(self, emit: _Out, text: str, source: str, errors: list[str]) -> None:
        # line by line: the long header lines are looked up whole, never split again
        lines = text.splitlines()
        for header, values_line in zip(lines[0::2], lines[1::2], strict=False):
            selected = self._headers.get(header)
            if selected is None:
                if len(self._headers) >= 64:
                    self._headers.clear()
                selected = self._headers[header] = self._select(header)
            values = values_line.split()
            if len(values) != selected.count or not header.startswith(values[0]):
                errors.append(f"field count mismatch in {source}: {header.split(' ', 1)[0]}")
                continue
            try:
                numbers = list(map(float, map(int, selected.pick(values))))
            except ValueError:
                errors.append(f"malformed values in {source}: {values_line!r}")
                continue
            emit.samples += map(
                Sample, selected.names, numbers, repeat("gauge"), repeat(()), repeat(emit.now), selected.units
            )

    def _netstat6(self, emit: _Out, text: str, errors: list[str]) -> None:
        cache = self._snmp6
        tokens = text.split()  # "Ip6InReceives 1 Ip6InHdrErrors 0 ...": names and values alternate
        for at, (name, raw) in enumerate(zip(tokens[0::2], tokens[1::2], strict=False)):
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
                    emit.gauge(hit[0], int(raw), hit[1], 2 * at + 1)
                except ValueError:
                    errors.append(f"malformed value in snmp6: {name} {raw!r}")

    def _sockstat(self, emit: _Out, text: str, errors: list[str], *, ipv6: bool) -> None:
        at = 0  # the position of the line's first token in the whole file's tokens
        for line in text.splitlines():
            parts = line.split()
            start, at = at, at + len(parts)
            if not parts:
                continue
            proto = parts[0][:-1]
            try:
                pairs = [(field, int(raw)) for field, raw in zip(parts[1::2], parts[2::2], strict=False)]
            except ValueError:
                errors.append(f"malformed line in sockstat: {line!r}")
                continue
            for index in range(len(pairs)):  # every value must be a number, exported or not
                emit.read(start + 2 + 2 * index)
            if proto == "sockets":  # only IPv4's file has it, node_exporter reads it only there
                if pairs and pairs[0][0] == "used" and not ipv6:
                    emit.gauge("node_sockstat_sockets_used", pairs[0][1], "1", start + 2)
                continue
            for index, (field, value) in enumerate(pairs):
                if field not in _SOCKSTAT_FIELDS:
                    continue
                at_value = start + 2 + 2 * index
                emit.gauge(f"node_sockstat_{proto}_{field}", value, "By" if field == "memory" else "1", at_value)
                if field == "mem":  # in pages
                    emit.gauge(
                        f"node_sockstat_{proto}_mem_bytes", value * self._page_size, "By", at_value, self._page_size
                    )


class _Header:
    """What one netstat/snmp header line selects: the field count, where, and under which names."""

    __slots__ = ("count", "names", "pick", "units")

    def __init__(self, count: int, picked: list[tuple[int, str, str]]) -> None:
        self.count = count
        indices = [index for index, _, _ in picked]
        self.pick = itemgetter(*indices) if len(indices) > 1 else lambda values: tuple(values[i] for i in indices)
        self.names = tuple(name for _, name, _ in picked)
        self.units = tuple(unit for _, _, unit in picked)


class _Out:
    """The samples of one run, made here (the run's time, no labels but netdev's), and while a file
    is parsed line by line, where in its tokens each exported number was: its next layout."""

    __slots__ = ("_exports", "_read", "now", "samples")

    def __init__(self, now: int) -> None:
        self.now = now
        self.samples: list[Sample] = []
        self._read: dict[int, int] = {}  # token position -> index among the numbers read
        self._exports: list[tuple[int, str, str, int]] = []  # (number index, metric, unit, factor)

    def gauge(self, name: str, value: float, unit: str, at: int = -1, factor: int = 1) -> None:
        """A gauge without labels; ``at``: where its number was in the file's tokens."""
        self.samples.append(Sample(name, float(value), "gauge", (), self.now, unit))
        if at >= 0:
            self._exports.append((self.read(at), name, unit, factor))

    def read(self, at: int) -> int:
        """The token at ``at`` is a number the parser reads: its index among them."""
        return self._read.setdefault(at, len(self._read))

    def begin(self) -> None:
        self._read, self._exports = {}, []

    def end(self, tokens: list[str], lines: int) -> _Layout | None:
        if not self._read:
            return None
        return _Layout(TokenLayout(tokens, lines, list(self._read)), self._exports)


class _Layout:
    """A file's :class:`TokenLayout` and the samples its numbers make."""

    __slots__ = ("_factors", "_layout", "_names", "_pick", "_units")

    def __init__(self, layout: TokenLayout, exports: list[tuple[int, str, str, int]]) -> None:
        self._layout = layout
        indices = [index for index, _, _, _ in exports]
        self._pick = itemgetter(*indices) if len(indices) > 1 else lambda numbers: tuple(numbers[i] for i in indices)
        self._names = tuple(name for _, name, _, _ in exports)
        self._units = tuple(unit for _, _, unit, _ in exports)
        factors = tuple(factor for _, _, _, factor in exports)
        self._factors = factors if any(factor != 1 for factor in factors) else None

    def emit(self, tokens: list[str], lines: int, out: _Out) -> bool:
        """Samples for a read laid out as this one; False (nothing made) when it is not."""
        numbers = self._layout.numbers(tokens, lines)
        if numbers is None:
            return False
        values = self._pick(numbers)
        if self._factors is not None:
            values = map(int.__mul__, values, self._factors)
        out.samples += map(
            Sample, self._names, map(float, values), repeat("gauge"), repeat(()), repeat(out.now), self._units
        )
        return True
