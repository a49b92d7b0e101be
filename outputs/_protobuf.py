"""Protobuf wire format both ways (varints out, fields in) and Prometheus name rules, shared
by the outputs: the encoders write messages by hand, and OTLP's answers are read back here."""

from __future__ import annotations

import re
from collections.abc import Iterator

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_INVALID_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")
_VARINT = [bytes((n,)) for n in range(0x80)]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint; negative numbers as 64-bit two's complement.

    Unrolled up to five bytes (lengths, nanoseconds, seconds): a loop with a
    bytearray costs twice as much per call, and this runs several times a line.
    """
    if n < 0x80:
        if n >= 0:
            return _VARINT[n]
    elif n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    elif n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    elif n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    elif n < 0x800000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21 & 0x7F | 0x80, n >> 28))
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Walk a protobuf message: ``(field number, wire type, int or bytes)``. Raises ValueError."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated message")
        yield number, wire, value


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def sanitize_label_name(name: str) -> str:
    if _LABEL_NAME.fullmatch(name):
        return name
    name = _INVALID_LABEL_CHAR.sub("_", name) or "_"
    return "_" + name if name[0].isdigit() else name
