"""node_exporter's ``netclass`` from one rtnetlink dump, sysfs only for what netlink lacks.

The sysfs way (:func:`sysnet.netclass`) costs about twenty attribute reads per
interface, each an open, a read and a close. Here one ``RTM_GETLINK`` dump gives
every interface's mtu, carrier, operstate, addresses, alias, group, link mode and
carrier counters; sysfs is read only for ``speed``, ``duplex``, ``flags`` and
``addr_assign_type`` (through descriptors kept open between runs) and, once per
device, ``dev_id`` and ``name_assign_type``. The values are the kernel fields
sysfs prints, with sysfs' rules: ``carrier`` and ``dormant`` only while the device
is up, no ``iflink`` attribute meaning the device's own index. The unit tests
check the two ways give the same series on a real kernel.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Callable

from agent.model import Labels, Sample
from agent.plugin import Emitter
from agent.procfiles import KeptFiles
from agent.sysfs import ABSENT, GONE, read_attr

from . import rtnetlink as nl
from .sysnet import NUMERIC, Report, StaticCache, integer, netclass, raw_attr

# The socket is refused by policy (a seccomp or RestrictAddressFamilies filter, no
# netlink in this kernel): sysfs for good, said once.
_REFUSED = frozenset((errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EPERM, errno.EACCES))


class NetlinkNetclass:
    """The ``netclass`` part: ``part(emit, report)``; falls back to sysfs when netlink is refused."""

    def __init__(
        self,
        sys_root: str,
        ignored: re.Pattern[str],
        ignore_invalid_speed: bool,
        logger: logging.Logger,
        dump: Callable[[], list[nl.Link]] | None = None,
    ) -> None:
        self._base = f"{sys_root}/class/net"
        self._ignored = ignored
        self._ignore_invalid_speed = ignore_invalid_speed
        self._logger = logger
        self._dumper = nl.LinkDumper() if dump is None else None
        self._dump = dump or self._dumper.dump  # type: ignore[union-attr]
        self._files = KeptFiles()
        self._devices: dict[str, _Device] = {}  # by name, while its ifindex stays
        self._static: StaticCache = {}  # the sysfs way's lifetime attributes, when netlink cannot answer
        # label tuples kept between runs (each its own key): a run's samples then share their labels'
        # identity with the last run's, which makes the engine's comparison of the two runs cheaper
        self._labels: dict[Labels, Labels] = {}
        self._netlink = True
        self._matched: frozenset[tuple[str, int]] = frozenset()  # the interfaces last found in sysfs too
        self._mismatches = 0

    run_time = 0
    """The run's time (integer nanoseconds) on the samples this part makes itself; the collector sets
    it before each run (0: the time of the call)."""

    def __call__(self, emit: Emitter, report: Report) -> None:
        if self._netlink:
            try:
                links = self._dump()
            except OSError as exc:
                if exc.errno in _REFUSED:
                    self._netlink = False
                    self._logger.info("netclass: rtnetlink refused (%s), reading every attribute from sysfs", exc)
                    self.close()
                else:
                    report(f"rtnetlink dump failed, sysfs this run: {exc}")
            else:
                if self._same_namespace(links):
                    samples: list[Sample] = []
                    self._emit(links, samples, self.run_time or time.time_ns(), report)
                    emit.add(samples)
                    self._files.sweep()
                    return
        netclass(self._base[: -len("/class/net")], self._ignored, self._ignore_invalid_speed, emit, report,
                 self._static)  # fmt: skip

    def _same_namespace(self, links: list[nl.Link]) -> bool:
        """rtnetlink answers for this process' network namespace, /sys/class/net for the one sysfs was
        mounted in: a container that bind-mounts the host's /sys sees two different sets. Checked when
        the set of interfaces changes (names and ifindex alike in both); three misses in a row, one
        after the other (not an interface added between the dump and the check), and sysfs it is."""
        found = frozenset((link.name, link.index) for link in links)
        if found == self._matched:
            return True
        try:
            listed = {name for name in os.listdir(self._base) if os.path.isdir(f"{self._base}/{name}")}
            same = listed == {name for name, _ in found} and all(
                read_attr(f"{self._base}/{name}/ifindex") == str(index) for name, index in found
            )
        except OSError:
            same = False
        if same:
            self._matched, self._mismatches = found, 0
            return True
        self._mismatches += 1
        if self._mismatches >= 3:
            self._netlink = False
            self._logger.info("netclass: rtnetlink and %s list different interfaces, reading sysfs", self._base)
            self.close()
        return False

    @property
    def is_open(self) -> bool:
        """Holds a socket or descriptors that :meth:`close` releases."""
        return bool(len(self._files)) or (self._dumper is not None and self._dumper.is_open)

    def close(self) -> None:
        if self._dumper is not None:
            self._dumper.close()
        self._files.close()

    def _emit(self, links: list[nl.Link], out: list[Sample], now: int, report: Report) -> None:
        seen = set()
        devices = self._devices
        for link in sorted(links, key=_name):
            device = link.name
            if not device or self._ignored.search(device):
                continue
            seen.add(device)
            kept = devices.get(device)
            if kept is None or kept.index != link.index:  # new, or a new device took the name
                kept = devices[device] = _Device(self._base, device, link.index, self._labels)
            self._device(link, kept, out, now, report)
        for gone in devices.keys() - seen:
            del devices[gone]
        if len(self._labels) > 64 * len(seen) + 64:  # devices and addresses come and go: stay bounded
            self._labels.clear()

    def _device(self, link: nl.Link, kept: _Device, out: list[Sample], now: int, report: Report) -> None:
        attrs = link.attrs
        running = link.flags & nl.IFF_UP  # netif_running(), which sysfs' carrier and dormant require
        state = attrs.get(nl.IFLA_OPERSTATE)
        operstate = nl.OPERSTATES[state] if isinstance(state, int) and state < len(nl.OPERSTATES) else ""
        labels = kept.labels
        out.append(Sample("node_network_up", 1.0 if operstate == "up" else 0.0, "gauge", labels, now, "1"))
        duplex = self._raw(kept.duplex, report)
        alias = attrs.get(nl.IFLA_IFALIAS)
        shown = (attrs.get(nl.IFLA_ADDRESS), attrs.get(nl.IFLA_BROADCAST), duplex, alias, operstate)
        if shown != kept.shown:  # the info labels are made again only when something in them changed
            info: Labels = (
                ("address", _hardware_address(shown[0])),
                ("broadcast", _hardware_address(shown[1])),
                ("device", kept.name),
                ("duplex", "" if duplex is None else duplex.decode("utf-8", "replace").strip()),
                ("ifalias", alias.strip() if isinstance(alias, str) else ""),
                ("operstate", operstate),
            )
            kept.shown, kept.info = shown, self._labels.setdefault(info, info)
        out.append(Sample("node_network_info", 1.0, "gauge", kept.info, now, ""))
        # in NUMERIC's order
        values = (
            self._number(kept.addr_assign_type, report),
            attrs.get(nl.IFLA_CARRIER) if running else None,
            attrs.get(nl.IFLA_CARRIER_CHANGES),
            attrs.get(nl.IFLA_CARRIER_UP_COUNT),
            attrs.get(nl.IFLA_CARRIER_DOWN_COUNT),
            kept.lifetime("dev_id", report),
            (1 if link.flags & nl.IFF_DORMANT else 0) if running else None,
            self._number(kept.flags, report),
            link.index,
            attrs.get(nl.IFLA_LINK, link.index),  # absent: the device is its own link
            attrs.get(nl.IFLA_LINKMODE),
            attrs.get(nl.IFLA_MTU),
            kept.lifetime("name_assign_type", report),
            attrs.get(nl.IFLA_GROUP),
            attrs.get(nl.IFLA_TXQLEN),
            link.type,
        )
        out += [
            Sample(metric, float(value), kind, labels, now, unit)
            for (metric, kind, unit), value in zip(_NUMERIC, values, strict=True)
            if value is not None
        ]
        speed = self._number(kept.speed, report)
        # Drivers without a link speed report -1; node_exporter 1.5 exports that as
        # -125000 unless --collector.netclass.ignore-invalid-speed is set.
        if speed is not None and (speed >= 0 or not self._ignore_invalid_speed):
            out.append(Sample("node_network_speed_bytes", float(speed * 125_000), "gauge", labels, now, "By/s"))

    def _number(self, path: str, report: Report) -> int | None:
        raw = self._raw(path, report)
        return None if raw is None else integer(path, raw, report)

    def _raw(self, path: str, report: Report) -> bytes | None:
        try:
            return self._files.read_once(path).strip()
        except OSError as exc:
            if exc.errno not in ABSENT and exc.errno not in GONE:
                report(f"cannot read {path}: {exc.strerror}")
            return None


class _Device:
    """What one interface keeps between runs: its label tuples, its sysfs paths, the attributes fixed
    for its lifetime (read once, kept while its ifindex stays), the inputs of its info labels."""

    __slots__ = ("addr_assign_type", "duplex", "flags", "index", "info", "known", "labels", "name", "numbers",
                 "prefix", "shown", "speed")  # fmt: skip

    def __init__(self, base: str, name: str, index: int, kept_labels: dict[Labels, Labels]) -> None:
        self.name, self.index = name, index
        labels: Labels = (("device", name),)
        self.labels = kept_labels.setdefault(labels, labels)
        self.prefix = prefix = f"{base}/{name}/"
        self.duplex, self.speed = prefix + "duplex", prefix + "speed"
        self.addr_assign_type, self.flags = prefix + "addr_assign_type", prefix + "flags"  # may change any time
        self.known: dict[str, bytes | None] = {}
        self.numbers: dict[str, int] = {}
        self.shown: tuple | None = None
        self.info: Labels = ()

    def lifetime(self, attr: str, report: Report) -> int | None:
        """``dev_id`` or ``name_assign_type``: read once, kept unless the read failed oddly; its number
        kept too once it parsed (a value that does not is reported on every run, as any other)."""
        value = self.numbers.get(attr)
        if value is not None:
            return value
        known = self.known
        if attr not in known:
            raw_attr(self.prefix + attr, report, known, attr)
        raw = known.get(attr)
        value = None if raw is None else integer(self.prefix + attr, raw, report)
        if value is not None:
            self.numbers[attr] = value
        return value


# NUMERIC as the samples need it: (metric, kind, unit)
_NUMERIC = tuple((metric, "counter" if is_counter else "gauge", unit) for _, metric, is_counter, unit in NUMERIC)


def _name(link: nl.Link) -> str:
    return link.name


def _hardware_address(value: object) -> str:
    return nl.mac(value) if isinstance(value, bytes) else ""
