"""Every network interface's attributes from one rtnetlink ``RTM_GETLINK`` dump.

One dump answers, for all interfaces at once, what ``/sys/class/net/<dev>/`` would
answer in about twenty reads per interface (mtu, carrier, operstate, address ...):
the same kernel fields, read under the same lock. :func:`parse_dump` is pure (tests
feed it captured bytes); :class:`LinkDumper` owns the socket.

An interface's message has the same attributes at the same places from one dump to the
next (about forty, a dozen wanted), unless something about it changed. Walking them is
most of the cost, so the walk is remembered as a :class:`Layout` (two compiled structs:
every attribute header, and the wanted values) and the next dump's message of that
interface is read with one ``unpack_from`` once its headers are found the same.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_ADDRESS, IFLA_BROADCAST, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 2, 3, 4, 5
IFLA_TXQLEN, IFLA_OPERSTATE, IFLA_LINKMODE, IFLA_IFALIAS = 13, 16, 17, 20
IFLA_GROUP, IFLA_EXT_MASK, IFLA_CARRIER, IFLA_CARRIER_CHANGES = 27, 29, 33, 35
IFLA_CARRIER_UP_COUNT, IFLA_CARRIER_DOWN_COUNT = 47, 48
RTEXT_FILTER_SKIP_STATS = 1 << 3  # no per-VF statistics (SR-IOV): netclass needs none
IFF_UP, IFF_DORMANT = 0x1, 0x20000
# rfc2863 operational states, as /sys/class/net/<dev>/operstate names them
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")

_U32 = frozenset((IFLA_MTU, IFLA_LINK, IFLA_TXQLEN, IFLA_GROUP, IFLA_CARRIER_CHANGES))
_U32 |= {IFLA_CARRIER_UP_COUNT, IFLA_CARRIER_DOWN_COUNT}
_U8 = frozenset((IFLA_OPERSTATE, IFLA_LINKMODE, IFLA_CARRIER))
_BYTES = frozenset((IFLA_ADDRESS, IFLA_BROADCAST))
_STRING = frozenset((IFLA_IFNAME, IFLA_IFALIAS))
_WANTED = _U32 | _U8 | _BYTES | _STRING

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_ATTR = struct.Struct("=HH")  # rtattr: len, type
_U32_VALUE = struct.Struct("=I")


class NetlinkError(OSError):
    """The kernel refused the dump, or answered something that is not one."""


@dataclass(slots=True)
class Link:
    """One interface of the dump: ``ifinfomsg`` plus the attributes netclass uses, by IFLA_* number."""

    index: int
    type: int
    flags: int
    attrs: dict[int, int | bytes | str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.attrs.get(IFLA_IFNAME, ""))


def request(seq: int) -> bytes:
    """``RTM_GETLINK`` dump of every interface, statistics left out."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _ATTR.pack(8, IFLA_EXT_MASK)
    body += _U32_VALUE.pack(RTEXT_FILTER_SKIP_STATS)
    return _HEADER.pack(_HEADER.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_dump(
    chunks: list[bytes], seq: int, layouts: dict[tuple[int, int], Layout | None] | None = None
) -> tuple[list[Link], bool]:
    """The links in the messages of ``chunks`` that answer ``seq``; True once NLMSG_DONE is seen.

    ``layouts`` (kept by the caller between dumps, by interface index and message length)
    lets a message laid out as last time be read without walking its attributes.
    Raises :class:`NetlinkError` on an NLMSG_ERROR or a message that does not fit its buffer.
    """
    links: list[Link] = []
    header, ifinfo = _HEADER.unpack_from, _IFINFO.unpack_from
    for buf in chunks:
        offset, end = 0, len(buf)
        while offset + 16 <= end:
            length, kind, _flags, msg_seq, _pid = header(buf, offset)
            if length < 16 or offset + length > end:
                raise NetlinkError(f"rtnetlink: truncated message ({length} bytes at {offset} of {end})")
            if msg_seq == seq:
                if kind == NLMSG_DONE:
                    return links, True
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", buf, offset + 16)[0]
                    raise NetlinkError(code, f"rtnetlink dump refused: {os.strerror(code)}")
                if kind == RTM_NEWLINK and length >= 32:
                    _family, if_type, index, flags, _change = ifinfo(buf, offset + 16)
                    link = Link(index, if_type, flags)
                    if layouts is None:
                        _attributes(buf, offset + 32, offset + length, link.attrs)
                    else:
                        _read_attributes(buf, offset, length, link.attrs, layouts, (index, length))
                    links.append(link)
            offset += (length + 3) & ~3
    return links, False


def _attributes(
    buf: bytes,
    offset: int,
    end: int,
    into: dict,
    attr=_ATTR.unpack_from,
    u32=_U32_VALUE.unpack_from,
    wanted=_WANTED,
    u32_kinds=_U32,
    u8_kinds=_U8,
    string_kinds=_STRING,
) -> None:
    # About forty attributes per interface, a dozen wanted: the loop is the cost, kept bare
    # (names bound as defaults). A value cut short by ``end`` is refused, not read past.
    while offset < end:
        length, kind = attr(buf, offset)
        if length < 4 or offset + length > end:
            raise NetlinkError(f"rtnetlink: malformed attribute {kind} ({length} bytes)")
        kind &= 0x3FFF  # NLA_F_NESTED, NLA_F_NET_BYTEORDER
        if kind in wanted:
            if kind in u32_kinds:
                into[kind] = u32(buf, offset + 4)[0] if length == 8 else None
            elif kind in u8_kinds:
                into[kind] = buf[offset + 4] if length > 4 else None
            elif kind in string_kinds:
                into[kind] = buf[offset + 4 : offset + length].split(b"\0", 1)[0].decode("utf-8", "replace")
            else:
                into[kind] = buf[offset + 4 : offset + length]
        offset += (length + 3) & ~3


class Layout:
    """Where one interface's message holds its attributes: the headers to find again, the wanted values."""

    __slots__ = ("headers", "kinds", "read_headers", "read_values", "strings")

    def __init__(self, places: list[tuple[int, int, int]]) -> None:
        """``places``: (offset in the message, length, type) of every attribute, in order."""
        headers, header_format, at = [], ["=32x"], 32
        for place, length, kind in places:
            header_format.append(f"{place - at}xHH")
            headers += (length, kind)
            at = place + 4
        values_format, kinds, at = ["="], [], 0
        for place, length, kind in places:
            kind &= 0x3FFF
            if kind not in _WANTED:
                continue
            if kind in _U32:
                code = "I"
            elif kind in _U8:
                code = "B"
            else:
                code = f"{length - 4}s"
            values_format.append(f"{place + 4 - at}x{code}")
            kinds.append(kind)
            at = place + 4 + struct.calcsize("=" + code)
        self.read_headers = struct.Struct("".join(header_format)).unpack_from
        self.headers = tuple(headers)
        self.read_values = struct.Struct("".join(values_format)).unpack_from
        self.kinds = tuple(kinds)
        self.strings = tuple(kind for kind in dict.fromkeys(kinds) if kind in _STRING)

    @classmethod
    def of(cls, buf: bytes, start: int, end: int) -> Layout | None:
        """The layout of the message at ``start``; None when a wanted value has an odd length (read by walking)."""
        places, offset = [], start + 32
        while offset < end:
            length, kind = _ATTR.unpack_from(buf, offset)
            masked = kind & 0x3FFF
            if (masked in _U32 and length != 8) or (masked in _U8 and length <= 4):
                return None
            places.append((offset - start, length, kind))
            offset += (length + 3) & ~3
        return cls(places)


_NEW = Layout([])  # not met yet (a placeholder no message matches: its headers are never compared)


def _read_attributes(
    buf: bytes, start: int, length: int, into: dict, layouts: dict[tuple[int, int], Layout | None], key: tuple[int, int]
) -> None:
    layout = layouts.get(key, _NEW)
    if layout is None:  # an odd one: walked every time
        _attributes(buf, start + 32, start + length, into)
        return
    if layout is _NEW or layout.read_headers(buf, start) != layout.headers:
        _attributes(buf, start + 32, start + length, into)  # validates the message before its layout is kept
        if len(layouts) >= 4096:  # interfaces come and go: keep the cache bounded
            layouts.clear()
        layouts[key] = Layout.of(buf, start, start + length)
        return
    into.update(zip(layout.kinds, layout.read_values(buf, start), strict=True))
    for kind in layout.strings:
        into[kind] = into[kind].split(b"\0", 1)[0].decode("utf-8", "replace")


def mac(value: bytes) -> str:
    """A hardware address as sysfs prints it: lower-case hex pairs joined by ':'."""
    return value.hex(":")


class LinkDumper:
    """Asks the kernel for every interface; the socket stays open from one run to the next."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self._layouts: dict[tuple[int, int], Layout | None] = {}

    def dump(self) -> list[Link]:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
            sock.bind((0, 0))
            self._sock = sock
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            return self._exchange(self._sock, self._seq)
        except OSError:
            self.close()  # a half-read answer would mix with the next one: start clean
            raise

    def _exchange(self, sock: socket.socket, seq: int) -> list[Link]:
        sock.send(request(seq))
        links: list[Link] = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise NetlinkError("rtnetlink: socket closed during the dump")
            found, done = parse_dump([chunk], seq, self._layouts)
            links += found
            if done:
                return links

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
