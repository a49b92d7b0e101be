"""An incremental parser of the journal export format (``journalctl --output=export``).

The format (systemd's "Journal Export Format"): an entry is a run of fields
ended by an empty line. A field is either text, ``NAME=value\\n``, or binary,
``NAME\\n`` then the value's size as a 64-bit little-endian integer, the value's
bytes (any bytes: newlines, NULs) and ``\\n``. journalctl writes a field in the
binary form whenever its value holds a control character, which is how a
multi-line message travels as one field.

:class:`ExportParser` takes the stream in chunks of any size (a field or its
size may be cut anywhere) and returns the entries completed so far. A value
longer than ``max_field_bytes`` is cut to that size and counted, and the rest
is skipped as it streams by, so a hostile entry never makes the parser hold
more than about ``max_field_bytes`` per field. Bytes that cannot be the format
raise :class:`ExportFormatError`; an entry cut off by the end of the stream is
simply never returned.
"""

from __future__ import annotations

import re

Entry = dict[str, bytes]

_SIZE_BYTES = 8
# journald's rule (plus the leading "__" of the fields journalctl adds): A-Z, 0-9 and "_", no leading digit
_NAME = re.compile(rb"[A-Z_][A-Z0-9_]{0,63}")


class ExportFormatError(ValueError):
    """The stream is not in the export format."""


class ExportParser:
    """Feed chunks, get whole entries; one instance per stream."""

    def __init__(self, max_field_bytes: int = 1 << 20) -> None:
        self.max_field_bytes = max_field_bytes
        self.truncated = 0
        """Field values cut at ``max_field_bytes`` so far."""
        self._buf = bytearray()
        self._entry: Entry = {}
        self._binary_name = ""  # a binary field whose size or value is still to come
        self._binary_left = 0  # value bytes still to read (-1: the size is still to come)
        self._binary_value = bytearray()
        self._skip_line = False  # the rest of an overlong text line is dropped

    @property
    def pending(self) -> bool:
        """True when an entry has started but not ended."""
        return bool(self._entry or self._binary_name or self._skip_line)

    def feed(self, data: bytes) -> list[Entry]:
        buf = self._buf
        buf += data
        entries: list[Entry] = []
        pos, end = 0, len(buf)
        limit = self.max_field_bytes
        while pos < end:
            if self._binary_name:
                pos = self._binary(buf, pos, end)
                if self._binary_name:
                    break  # needs more bytes
                continue
            newline = buf.find(b"\n", pos)
            if self._skip_line:
                if newline < 0:
                    pos = end
                    break
                self._skip_line = False
                pos = newline + 1
                continue
            if newline < 0:
                if end - pos > limit + 256:  # a text line longer than any field may be: cut it
                    self._text_field(bytes(buf[pos : pos + limit + 256]), cut=True)
                    self._skip_line = True
                    pos = end
                break
            if newline == pos:  # the empty line that ends an entry
                if self._entry:
                    entries.append(self._entry)
                    self._entry = {}
                pos += 1
                continue
            line = bytes(buf[pos:newline])
            pos = newline + 1
            if b"=" in line:
                self._text_field(line, cut=False)
            else:
                self._binary_name = _field_name(line)
                self._binary_left = -1
                self._binary_value = bytearray()
        del buf[:pos]
        return entries

    def _text_field(self, line: bytes, *, cut: bool) -> None:
        name, _, value = line.partition(b"=")
        if cut or len(value) > self.max_field_bytes:
            value = value[: self.max_field_bytes]
            self.truncated += 1
        self._entry.setdefault(_field_name(name), value)

    def _binary(self, buf: bytearray, pos: int, end: int) -> int:
        """Go on with a binary field; returns the new position (the field may still be open)."""
        if self._binary_left < 0:
            if end - pos < _SIZE_BYTES:
                return pos  # the size is cut: wait for the rest of it
            self._binary_left = int.from_bytes(buf[pos : pos + _SIZE_BYTES], "little")
            if self._binary_left > self.max_field_bytes:
                self.truncated += 1
            pos += _SIZE_BYTES
        if self._binary_left:
            take = min(self._binary_left, end - pos)
            room = self.max_field_bytes - len(self._binary_value)
            if room > 0:
                self._binary_value += buf[pos : pos + min(take, room)]
            self._binary_left -= take
            pos += take
            if self._binary_left:
                return pos
        if pos >= end:
            return pos  # the closing newline is still to come
        if buf[pos] != 0x0A:
            raise ExportFormatError(f"binary field {self._binary_name} does not end with a newline")
        self._entry.setdefault(self._binary_name, bytes(self._binary_value))
        self._binary_name = ""
        self._binary_value = bytearray()
        return pos + 1


def _field_name(raw: bytes) -> str:
    if _NAME.fullmatch(raw) is None:
        shown = raw[:40].decode("ascii", "backslashreplace")
        raise ExportFormatError(f"not a journal field name: {shown!r}")
    return raw.decode("ascii")
