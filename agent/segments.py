"""The disk buffer's record format: framing, and damage-tolerant scanning of a segment.

A segment file is a series of records::

    magic "HWB1" | payload length u32 | crc32 u32 | item count u32 | created ms u64 | payload

with the CRC over everything after it. :func:`scan` indexes the intact records of a
segment and measures what is damaged between them: a damaged region runs from a
record that fails its check to the next record that passes. The items lost in it
are read from the headers found in the region (magic intact, item count plausible);
a stretch with no such header (its header is damaged too) is reported as unknown
bytes, which the queue turns into an item estimate.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

HEADER = struct.Struct("<4sIIIQ")
MAGIC = b"HWB1"
_CRC_FROM = 12  # the CRC covers item count, created time and payload


@dataclass(slots=True)
class Ref:
    """Where one intact record is."""

    segment: int
    offset: int
    length: int  # header + payload
    items: int
    created_ns: int


@dataclass(slots=True)
class Damage:
    """What a scan found damaged in one segment."""

    records: int = 0  # damaged records (one per readable header, one per headerless stretch)
    items: int = 0  # items in damaged records whose header could still be read
    unknown_records: int = 0  # stretches whose header is damaged too: item count unknown
    unknown_bytes: int = 0
    why: str = "has damaged records (a torn write or corruption)"

    def add(self, other: Damage) -> None:
        self.records += other.records
        self.items += other.items
        self.unknown_records += other.unknown_records
        self.unknown_bytes += other.unknown_bytes


def header(payload: bytes, items: int, created_ns: int) -> bytes:
    """The header of ``payload``'s record: written before it, the two need not be joined."""
    created_ms = created_ns // 1_000_000
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<IQ", items, created_ms)))
    return HEADER.pack(MAGIC, len(payload), crc, items, created_ms)


def encode(payload: bytes, items: int, created_ns: int) -> bytes:
    return header(payload, items, created_ns) + payload


def parse_at(data: bytes, pos: int, segment: int) -> Ref | None:
    """The intact record at ``pos``, or None."""
    if pos + HEADER.size > len(data):
        return None
    magic, length, crc, items, created_ms = HEADER.unpack_from(data, pos)
    total = HEADER.size + length
    if magic != MAGIC or pos + total > len(data):
        return None
    if zlib.crc32(memoryview(data)[pos + _CRC_FROM : pos + total]) != crc:
        return None
    return Ref(segment, pos, total, items, created_ms * 1_000_000)


def scan(data: bytes, start: int, segment: int) -> tuple[list[Ref], Damage, int]:
    """Intact records from ``start`` on, the damage between them, and where the last intact one ends."""
    refs: list[Ref] = []
    damage = Damage()
    pos, end, good_end = start, len(data), start
    while pos < end:
        ref = parse_at(data, pos, segment)
        if ref is not None:
            refs.append(ref)
            pos += ref.length
            good_end = pos
            continue
        following = _next_intact(data, pos + 1, segment)
        damage.add(_measure(data, pos, following))
        pos = following
    return refs, damage, good_end


def _next_intact(data: bytes, pos: int, segment: int) -> int:
    while (pos := data.find(MAGIC, pos)) >= 0:
        if parse_at(data, pos, segment) is not None:
            return pos
        pos += 1
    return len(data)


def _measure(data: bytes, pos: int, stop: int) -> Damage:
    """What the damaged region ``[pos, stop)`` held (``stop`` is an intact record or the end)."""
    damage = Damage()
    at_end = stop == len(data)
    while pos < stop:
        items, total = _readable_header(data, pos, stop, at_end)
        if total:
            damage.records += 1
            damage.items += items
            pos += total
            if pos < stop and data[pos : pos + 4] != MAGIC:  # a damaged length: on to the next header
                found = data.find(MAGIC, pos, stop)
                pos = stop if found < 0 else found
            continue
        found = data.find(MAGIC, pos + 1, stop)
        following = stop if found < 0 else found
        damage.records += 1
        damage.unknown_records += 1
        damage.unknown_bytes += following - pos
        pos = following
    return damage


def _readable_header(data: bytes, pos: int, stop: int, at_end: bool) -> tuple[int, int]:
    """(items, record length) of a header that still makes sense at ``pos``; (0, 0) if none.

    Sense: the magic, at least one item and no more items than payload bytes (an item is
    at least one byte of msgpack), and a record that ends inside the region, or past the
    end of the file (a torn tail).
    """
    if pos + HEADER.size > len(data):
        return 0, 0
    magic, length, _crc, items, _created = HEADER.unpack_from(data, pos)
    total = HEADER.size + length
    if magic != MAGIC or not 1 <= items <= length:
        return 0, 0
    if pos + total > stop and not at_end:
        return 0, 0
    return items, total
