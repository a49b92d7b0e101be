"""Protobuf wire helpers and Prometheus name rules shared by the output encoders."""

from __future__ import annotations

import re

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


def sanitize_label_name(name: str) -> str:
    if _LABEL_NAME.fullmatch(name):
        return name
    name = _INVALID_LABEL_CHAR.sub("_", name) or "_"
    return "_" + name if name[0].isdigit() else name
