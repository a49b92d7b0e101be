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
from collections.abc import Callable

from agent.model import Labels
from agent.plugin import Emitter
from agent.procfiles import KeptFiles
from agent.sysfs import ABSENT, GONE, read_attr

from . import rtnetlink as nl
from .sysnet import NUMERIC, Report, StaticCache, integer, netclass, raw_attr

# The socket is refused by policy (a seccomp or RestrictAddressFamilies filter, no
# netlink in this kernel): sysfs for good, said once.
_REFUSED = frozenset((errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EPERM, errno.EACCES))
_SYSFS_EACH_RUN = ("addr_assign_type", "flags")  # may change at any time, netlink lacks them


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
        self._static: StaticCache = {}
        # label tuples kept between runs (each its own key): a run's samples then share their labels'
        # identity with the last run's, which makes the engine's comparison of the two runs cheaper
        self._labels: dict[Labels, Labels] = {}
        self._netlink = True
        self._matched: frozenset[tuple[str, int]] = frozenset()  # the interfaces last found in sysfs too
        self._mismatches = 0

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
                    self._emit(links, emit, report)
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

    def _emit(self, links: list[nl.Link], emit: Emitter, report: Report) -> None:
        seen = set()
        for link in sorted(links, key=lambda link: link.name):
            device = link.name
            if not device or self._ignored.search(device):
                continue
            seen.add(device)
            self._device(link, device, emit, report)
        for gone in self._static.keys() - seen:
            del self._static[gone]
        if len(self._labels) > 64 * len(seen) + 64:  # devices and addresses come and go: stay bounded
            self._labels.clear()

    def _device(self, link: nl.Link, device: str, emit: Emitter, report: Report) -> None:
        attrs, prefix = link.attrs, f"{self._base}/{device}/"
        running = link.flags & nl.IFF_UP  # netif_running(), which sysfs' carrier and dormant require
        state = attrs.get(nl.IFLA_OPERSTATE)
        operstate = nl.OPERSTATES[state] if isinstance(state, int) and state < len(nl.OPERSTATES) else ""
        alias = attrs.get(nl.IFLA_IFALIAS)
        kept = self._labels
        labels: Labels = (("device", device),)
        labels = kept.setdefault(labels, labels)
        emit.gauge("node_network_up", 1.0 if operstate == "up" else 0.0, labels, unit="1")
        info: Labels = (
            ("address", _hardware_address(attrs.get(nl.IFLA_ADDRESS))),
            ("broadcast", _hardware_address(attrs.get(nl.IFLA_BROADCAST))),
            ("device", device),
            ("duplex", self._text(prefix + "duplex", report)),
            ("ifalias", alias.strip() if isinstance(alias, str) else ""),
            ("operstate", operstate),
        )
        emit.gauge("node_network_info", 1.0, kept.setdefault(info, info))
        values: dict[str, int | bytes | str | None] = {
            "carrier": attrs.get(nl.IFLA_CARRIER) if running else None,
            "carrier_changes": attrs.get(nl.IFLA_CARRIER_CHANGES),
            "carrier_up_count": attrs.get(nl.IFLA_CARRIER_UP_COUNT),
            "carrier_down_count": attrs.get(nl.IFLA_CARRIER_DOWN_COUNT),
            "dormant": (1 if link.flags & nl.IFF_DORMANT else 0) if running else None,
            "ifindex": link.index,
            "iflink": attrs.get(nl.IFLA_LINK, link.index),  # absent: the device is its own link
            "link_mode": attrs.get(nl.IFLA_LINKMODE),
            "mtu": attrs.get(nl.IFLA_MTU),
            "netdev_group": attrs.get(nl.IFLA_GROUP),
            "tx_queue_len": attrs.get(nl.IFLA_TXQLEN),
            "type": link.type,
        }
        for attr in _SYSFS_EACH_RUN:
            values[attr] = self._raw(prefix + attr, report)
        cached = self._static.get(device)
        if cached is None or cached[0] != link.index:  # a new device took the name: read them again
            cached = self._static[device] = (link.index, {})
        known = cached[1]
        for attr in ("dev_id", "name_assign_type"):  # fixed for the device's lifetime
            if attr not in known:
                raw_attr(prefix + attr, report, known, attr)  # kept unless the read failed oddly
            values[attr] = known.get(attr)
        gauge, counter = emit.gauge, emit.counter
        for attr, metric, is_counter, unit in NUMERIC:
            value = values[attr]
            if isinstance(value, bytes):
                value = integer(prefix + attr, value, report)
            if value is not None:
                (counter if is_counter else gauge)(metric, value, labels, unit=unit)
        raw = self._raw(prefix + "speed", report)
        speed = None if raw is None else integer(prefix + "speed", raw, report)
        # Drivers without a link speed report -1; node_exporter 1.5 exports that as
        # -125000 unless --collector.netclass.ignore-invalid-speed is set.
        if speed is not None and (speed >= 0 or not self._ignore_invalid_speed):
            emit.gauge("node_network_speed_bytes", speed * 125_000, labels, unit="By/s")

    def _raw(self, path: str, report: Report) -> bytes | None:
        try:
            return self._files.read_once(path).strip()
        except OSError as exc:
            if exc.errno not in ABSENT and exc.errno not in GONE:
                report(f"cannot read {path}: {exc.strerror}")
            return None

    def _text(self, path: str, report: Report) -> str:
        raw = self._raw(path, report)
        return "" if raw is None else raw.decode("utf-8", "replace").strip()


def _hardware_address(value: object) -> str:
    return nl.mac(value) if isinstance(value, bytes) else ""
