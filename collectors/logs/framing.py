"""Splitting a file's bytes into lines: LF and CRLF, partial lines, overlong lines, encodings.

A :class:`Framer` belongs to one file. :meth:`Framer.feed` takes the next bytes
read from the file and returns the complete lines in them, decoded, plus the
file offset just past the last complete line (the point a checkpoint may
advance to). An incomplete last line stays in the framer until more data
arrives or :meth:`Framer.flush` is called (``partial_line_timeout``).

The hot path (UTF-8 or Latin-1, lines shorter than ``max_line_bytes``) decodes
the whole chunk at once and splits the resulting ``str``: no Python code runs
per line. Only a chunk with invalid bytes or an overlong line takes the slow
path, line by line. Lines longer than ``max_line_bytes`` are cut there (at a
character boundary) and the rest of the line is skipped; invalid bytes become
U+FFFD. Both are counted in ``stats`` (a :class:`LogStats`), never dropped silently.
"""

from __future__ import annotations

import codecs

from collectors.logs.stats import LogStats

TAIL_BYTES = 64
ENCODINGS = ("utf-8", "latin-1", "utf-16", "utf-16le", "utf-16be")


def resolve_encoding(encoding: str, head: bytes) -> str:
    """The codec to use: ``utf-16`` follows the file's byte order mark (little-endian without one)."""
    if encoding == "utf-16":
        return "utf-16be" if head.startswith(codecs.BOM_UTF16_BE) else "utf-16le"
    return encoding


class Framer:
    """Line framing state of one file."""

    __slots__ = (
        "_bom",
        "_bom_bytes",
        "_crlf",
        "_cut",
        "_fast",
        "_max",
        "_nl",
        "_unit",
        "block",
        "codec",
        "drop_newline",
        "ends",
        "pending",
        "pending_at",
        "skipping",
        "stats",
        "tail",
    )

    def __init__(self, encoding: str, max_line_bytes: int, stats: LogStats, offset: int, *, ends: bool) -> None:
        self.codec = encoding
        self._nl = "\n".encode(encoding)
        self._crlf = "\r\n".encode(encoding)
        self._unit = len(self._nl)
        self._fast = encoding in ("utf-8", "latin-1")
        self._cut = _utf8_cut if encoding == "utf-8" else (lambda b, n: n - n % self._unit)
        self._max = max(int(max_line_bytes), 16)
        # a byte order mark at the start of the file is no part of a line
        self._bom_bytes = b"" if encoding == "latin-1" else "\ufeff".encode(encoding)
        self._bom = offset == 0 and bool(self._bom_bytes)
        self.stats = stats
        self.ends = ends
        """Whether :meth:`feed` reports each line's end offset (multiline needs them)."""
        self.pending = b""
        self.pending_at = offset
        self.skipping = False
        self.drop_newline = False
        self.block: bytes | None = None
        """The bytes of the lines the last :meth:`feed` returned, when it framed them in one piece
        (the fast path), so level words can be searched in bytes; None otherwise."""
        self.tail = b""
        """The last bytes (at most :data:`TAIL_BYTES`) before :attr:`consumed`: what a copy must hold there."""

    @property
    def consumed(self) -> int:
        """File offset of the first byte not yet turned into a line."""
        return self.pending_at

    def feed(self, data: bytes) -> tuple[list[str], list[int] | None]:
        """Add bytes read right after the previous ones; return complete lines (and their end offsets)."""
        got = self.plain_lines(data)
        if got is not None:
            return got, None
        lines: list[str] = []
        ends: list[int] | None = [] if self.ends else None
        self.block = None
        start = 0
        if self.drop_newline and data:
            # the previous line went out at partial_line_timeout; its late newline ends nothing new
            self.drop_newline = False
            for sep in (self._nl, self._crlf):
                if data.startswith(sep):
                    start = len(sep)
                    break
        if self.skipping:
            nl = self._find_nl(data, start)
            if nl < 0:
                self.pending_at += len(data)
                self.tail = (self.tail + data)[-TAIL_BYTES:]
                return lines, ends
            self.skipping = False
            start = nl + self._unit
        if self._bom and data and not self.pending:
            self._bom = False
            if data.startswith(self._bom_bytes, start):
                start += len(self._bom_bytes)
        if self.pending:
            buf = self.pending + (data[start:] if start else data)
            base = self.pending_at
        else:
            if start:
                self.tail = (self.tail + data[:start])[-TAIL_BYTES:]
            buf = data[start:] if start else data
            base = self.pending_at + start
        last = self._rfind_nl(buf)
        if last < 0:
            self.pending = buf
            self.pending_at = base
            if len(buf) > self._max:
                self._overlong(buf, lines, ends, base)
            return lines, ends
        complete_len = last + self._unit
        self._split(buf, complete_len, base, lines, ends)
        cut = complete_len - TAIL_BYTES
        self.tail = buf[cut:complete_len] if cut >= 0 else (self.tail + buf[:complete_len])[-TAIL_BYTES:]
        self.pending = buf[complete_len:]
        self.pending_at = base + complete_len
        if len(self.pending) > self._max:
            self._overlong(self.pending, lines, ends, self.pending_at)
            self.block = None
        return lines, ends

    def plain_lines(self, data: bytes) -> list[str] | None:
        """The usual read at low rates, whole lines and nothing held: its lines, taken as :meth:`feed`
        takes them, without the checks of its general path (one read per file and round); None, and
        nothing taken, for any other read (:meth:`feed` frames it then)."""
        if (
            self._fast
            and data[-1:] == b"\n"
            and not (self.ends or self.pending or self.skipping or self.drop_newline or self._bom)
            and len(data) <= self._max
        ):
            got = self._whole_lines(data)
            if got is not None:  # else the general path finds the bad lines and counts them
                self.block = data
                n = len(data)
                self.tail = data[n - TAIL_BYTES :] if n >= TAIL_BYTES else (self.tail + data)[-TAIL_BYTES:]
                self.pending_at += n
                return got
        return None

    def flush(self) -> tuple[str, int] | None:
        """The held incomplete line as a line of its own (``partial_line_timeout``), and its end offset."""
        if not self.pending:
            return None
        raw = self.pending
        if raw.endswith(self._crlf[: self._unit]):  # a CR whose LF has not arrived
            raw = raw[: -self._unit]
        line = self._decode(raw)
        self.tail = (self.tail + self.pending)[-TAIL_BYTES:]
        self.pending_at += len(self.pending)
        self.pending = b""
        self.drop_newline = True
        return line, self.pending_at

    # ---------------------------------------------------------------- internals

    def _find_nl(self, data: bytes, start: int) -> int:
        nl, unit = self._nl, self._unit
        pos = data.find(nl, start)
        while unit > 1 and pos >= 0 and (pos - start) % unit:
            pos = data.find(nl, pos + 1)
        return pos

    def _rfind_nl(self, buf: bytes) -> int:
        nl, unit = self._nl, self._unit
        pos = buf.rfind(nl)
        while unit > 1 and pos >= 0 and pos % unit:
            pos = buf.rfind(nl, 0, pos + unit - 1)
        return pos

    def _split(self, buf: bytes, length: int, base: int, lines: list[str], ends: list[int] | None) -> None:
        if self._fast and ends is None:
            block = buf[:length] if length < len(buf) else buf
            got = self._whole_lines(block)
            if got is not None:  # else the slow path finds the bad lines and counts them
                self.block = block
                # a str of n characters holds at most 4n UTF-8 bytes: only longer ones need a look
                if length > self._max and max(map(len, got)) * 4 > self._max:
                    got = [self._limit(line) if len(line) * 4 > self._max else line for line in got]
                lines.extend(got)
                return
        self._split_slow(buf, length, base, lines, ends)

    def _whole_lines(self, block: bytes) -> list[str] | None:
        """The lines of ``block`` (whole lines, the last ending it) decoded in one call, CRLF as LF;
        None when a byte does not decode (the line-by-line path finds and counts those)."""
        try:
            text = block.decode(self.codec)
        except UnicodeDecodeError:
            return None
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        line, _, rest = text.partition("\n")
        if not rest:  # one line, as most reads at low rates bring: split's loop over every character is not needed
            return [line]
        lines = text.split("\n")
        lines.pop()  # the empty string after the final newline
        return lines

    def _split_slow(self, buf: bytes, length: int, base: int, lines: list[str], ends: list[int] | None) -> None:
        """Line by line: multiline offsets, invalid bytes, overlong lines, UTF-16."""
        nl, unit, cr = self._nl, self._unit, self._crlf[: self._unit]
        pos = 0
        while pos < length:
            end = buf.find(nl, pos)
            while unit > 1 and (end - pos) % unit:
                end = buf.find(nl, end + 1)
            raw = buf[pos:end]
            if raw.endswith(cr):
                raw = raw[:-unit]
            if len(raw) > self._max:
                raw = raw[: self._cut(raw, self._max)]
                self.stats.lines_truncated += 1
            lines.append(self._decode(raw))
            pos = end + unit
            if ends is not None:
                ends.append(base + pos)

    def _overlong(self, buf: bytes, lines: list[str], ends: list[int] | None, base: int) -> None:
        """An incomplete line already over the limit: emit its head now, skip the rest of it."""
        head = buf[: self._cut(buf, self._max)]
        lines.append(self._decode(head))
        self.stats.lines_truncated += 1
        self.tail = (self.tail + buf)[-TAIL_BYTES:] if base == self.pending_at else buf[-TAIL_BYTES:]
        self.pending = b""
        self.pending_at = base + len(buf)
        self.skipping = True
        if ends is not None:
            ends.append(self.pending_at)

    def _limit(self, line: str) -> str:
        raw = line.encode(self.codec)
        if len(raw) <= self._max:
            return line
        self.stats.lines_truncated += 1
        return raw[: self._cut(raw, self._max)].decode(self.codec)

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.codec)
        except UnicodeDecodeError:
            self.stats.lines_invalid += 1
            return raw.decode(self.codec, "replace")


def _utf8_cut(raw: bytes, limit: int) -> int:
    """The largest length <= limit that does not split a UTF-8 character."""
    cut = limit
    while cut > 0 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut or limit
