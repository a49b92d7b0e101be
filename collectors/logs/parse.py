"""Turning lines into LogRecords: raw, JSON or logfmt, with timestamp and severity.

``raw``: the line is the body; its severity is recognised from a level word
(``ERROR``, ``WARN``, ``[error]`` ...) near the start of the line. To keep the
per-line cost near zero on lines without one (access logs), a chunk is first
searched for the level words with ``str.find`` (C speed, a few passes over the
chunk); only lines holding a candidate are looked at with a regex.

``json`` and ``logfmt``: timestamp, severity and message are taken from the
usual field names (below); the message becomes the body and the other fields
become attributes (OTLP log attributes, Loki structured metadata, never stream
labels). Without a message field the whole line is the body, and the fields
stay in it rather than being sent twice. A line that does not parse is kept as
a raw line and counted (``parse_failures``).

Level words and their severity numbers are the project's one table,
:data:`agent.model.SEVERITY_WORDS` (the OpenTelemetry log data model: TRACE 1,
DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21; syslog's NOTICE INFO2 = 10,
CRITICAL ERROR2 = 18, ALERT ERROR3 = 19, EMERGENCY FATAL = 21). Numeric levels of
pino and bunyan (10 ... 60) are understood too.
"""

from __future__ import annotations

import bisect
import datetime
import itertools
import re
from collections.abc import Callable, Sequence

import msgspec
import re2

from agent.model import SEVERITY_WORDS, Labels, LogRecord
from collectors.logs.stats import LogStats

TIME_FIELDS = ("@timestamp", "timestamp", "time", "ts", "t", "datetime")
LEVEL_FIELDS = ("level", "severity", "lvl", "loglevel", "log.level", "levelname", "severity_text")
MESSAGE_FIELDS = ("message", "msg", "log", "@message", "text")
MAX_ATTRIBUTES = 64  # a record with more fields keeps the first ones; the line itself is never cut

# pino's and bunyan's numeric levels (60 fatal ... 10 trace)
_NUMERIC = tuple(
    (floor, *SEVERITY_WORDS[word])
    for floor, word in ((60, "fatal"), (50, "error"), (40, "warn"), (30, "info"), (20, "debug"), (10, "trace"))
)

# raw lines: an upper-case level word, or a bracketed lower-case one (Apache, nginx error logs)
_RAW_WORDS = ("ERR", "WARN", "INFO", "DEBUG", "TRACE", "FATAL", "CRIT", "NOTICE", "ALERT", "EMERG", "PANIC")
_RAW_BRACKETED = ("[error]", "[warn", "[notice]", "[info]", "[debug]", "[crit]", "[alert]", "[emerg]", "[trace]")
_RAW_LEVEL = re.compile(
    r"(?<![A-Za-z0-9_])(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRIT|CRITICAL|FATAL|ALERT|EMERG|PANIC)"
    r"(?![A-Za-z0-9_])|\[(trace|debug|info|notice|warn|warning|error|crit|alert|emerg)\]"
)
RAW_LEVEL_WITHIN = 200  # characters (bytes) from the start of a line where a level word counts
# the same on bytes, with RE2: one linear pass over a whole chunk, no Python code per line
LEVEL_WORDS = _RAW_LEVEL.pattern.replace("(?<![A-Za-z0-9_])", r"\b").replace("(?![A-Za-z0-9_])", r"\b")
"""The level words as an RE2 pattern (for a redaction pass that finds them too, see ``records.py``)."""
_RAW_LEVEL_BYTES = re2.compile(LEVEL_WORDS.encode())


def severity_of(value: object) -> tuple[str, int]:
    """OpenTelemetry severity text and number of a level value; ("", 0) when unknown."""
    if isinstance(value, str):
        found = SEVERITY_WORDS.get(value.strip().lower())
        if found:
            return found
        if value.isdigit():
            value = int(value)
        else:
            return value.upper()[:32], 0
    if isinstance(value, int | float) and not isinstance(value, bool):
        for floor, text, number in _NUMERIC:
            if value >= floor:
                return text, number
    return "", 0


def parse_time(value: object) -> int | None:
    """Nanoseconds since the epoch from RFC 3339 text or an epoch number (s, ms, µs or ns by magnitude)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.replace(".", "", 1).isdigit():
            value = float(text) if "." in text else int(text)
        else:
            try:
                stamp = datetime.datetime.fromisoformat(text)
            except ValueError:
                return None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=datetime.UTC)
            delta = stamp - _EPOCH
            return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value <= 0:
        return None
    for limit, scale in ((1e11, 1_000_000_000), (1e14, 1_000_000), (1e17, 1_000)):
        if value < limit:
            whole = int(value)  # split off the fraction: a float has no room for 19 digits
            return whole * scale + round((value - whole) * scale)
    return int(value)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class Parser:
    """Builds the records of a round's lines (of one file, or of many in one pass)."""

    def __init__(self, fmt: str, detect_severity: bool, stats: LogStats) -> None:
        self.stats = stats
        self._detect = detect_severity
        self._fields: Callable[[str], dict[str, object] | None] | None = {
            "json": _json_fields,
            "logfmt": logfmt_fields,
        }.get(fmt)

    @property
    def raw_levels(self) -> bool:
        """Level words are searched in the raw lines (the raw format, with ``detect_severity``)."""
        return self._detect and self._fields is None

    def records(
        self,
        lines: list[str],
        labels: Labels,
        now_ns: int,
        blocks: list[tuple[int, bytes]] | None = None,
        changed: list[int] | None = None,
    ) -> list[LogRecord]:
        """One record per line; lines without a timestamp get ``now_ns`` + their index (order kept).

        ``blocks`` (raw format): the lines' bytes as read, ``(index of the first line, bytes)``
        per piece, covering every line; then level words are searched in bytes. ``changed``:
        indices of lines whose text no longer matches those bytes (redaction rewrote them);
        their level words are searched in the text instead.
        """
        count = len(lines)
        return self.batch(lines, [labels] * count, range(now_ns, now_ns + count), blocks, changed)

    def batch(
        self,
        lines: list[str],
        labels: list[Labels],
        times: Sequence[int],
        blocks: list[tuple[int, bytes]] | None = None,
        changed: list[int] | None = None,
        candidates: list[int] | None = None,
    ) -> list[LogRecord]:
        """:meth:`records` for the lines of many files in one pass: ``labels[i]`` and ``times[i]``
        (the time when the line has none) are line ``i``'s. ``candidates``: the only lines that may
        hold a level word (every one that does, perhaps others), in order; they alone are searched."""
        if not lines:
            return []
        if self._fields is not None:
            return list(map(self._structured, lines, labels, times))
        records = list(map(LogRecord, times, lines, labels))
        if self._detect:
            if candidates is not None:
                found = _severities_at(lines, candidates) if candidates else []
            elif blocks is None:
                found = raw_severities(lines)
            else:
                found = raw_severities_bytes(blocks)
                if changed:
                    rewritten = set(changed)
                    found = [hit for hit in found if hit[0] not in rewritten]
                    found += _severities_at(lines, changed)
            for index, text, number in found:
                records[index] = LogRecord(times[index], lines[index], labels[index], text, (), number)
        return records

    def _structured(self, line: str, labels: Labels, default_ns: int) -> LogRecord:
        fields = self._fields(line) if line else None  # type: ignore[misc]
        if fields is None:
            self.stats.parse_failures += 1
            return LogRecord(default_ns, line, labels)
        time_ns = None
        for name in TIME_FIELDS:
            if name in fields:
                time_ns = parse_time(fields[name])
                if time_ns is not None:
                    del fields[name]
                    break
        severity, number = "", 0
        for name in LEVEL_FIELDS:
            if name in fields:
                severity, number = severity_of(fields.pop(name))
                break
        body = None
        for name in MESSAGE_FIELDS:
            value = fields.get(name)
            if isinstance(value, str):
                body = value
                del fields[name]
                break
        attributes: Labels = ()
        if body is None:
            body = line  # no message field: the line itself, its fields not repeated as attributes
        elif fields:
            attributes = tuple(
                sorted(
                    (str(k), v if isinstance(v, str) else _json_text(v))
                    for k, v in itertools.islice(fields.items(), MAX_ATTRIBUTES)
                )
            )
        return LogRecord(default_ns if time_ns is None else time_ns, body, labels, severity, attributes, number)


def raw_severities(lines: list[str]) -> list[tuple[int, str, int]]:
    """(line index, severity text, number) of the lines that carry a level word near their start."""
    text = "\n".join(lines) if len(lines) > 1 else lines[0]
    positions: list[int] = []
    for word in _RAW_WORDS:
        pos = text.find(word)
        while pos >= 0:
            positions.append(pos)
            pos = text.find(word, pos + 1)
    if "[" in text:
        for word in _RAW_BRACKETED:
            pos = text.find(word)
            while pos >= 0:
                positions.append(pos)
                pos = text.find(word, pos + 1)
    if not positions:
        return []
    # start offset of each line in the joined text, to map a hit to its line
    starts = [0, *itertools.accumulate(len(line) + 1 for line in lines)]
    return _severities_of(lines, sorted({bisect.bisect_right(starts, pos) - 1 for pos in positions}))


def _severities_at(lines: list[str], indices: list[int]) -> list[tuple[int, str, int]]:
    """Level words of the lines at ``indices``, searched as :func:`raw_severities_bytes` does."""
    block = "\n".join([lines[i] for i in indices]).encode("utf-8", "surrogatepass") + b"\n"
    if block.count(b"\n") != len(indices):  # a line holding a newline: the indices would not map
        return _severities_of(lines, indices)
    return [(indices[i], text, number) for i, text, number in raw_severities_bytes([(0, block)])]


def _severities_of(lines: list[str], indices: list[int]) -> list[tuple[int, str, int]]:
    """:func:`raw_severities` of the lines at ``indices`` only."""
    found = []
    search = _RAW_LEVEL.search
    for index in indices:
        match = search(lines[index], 0, RAW_LEVEL_WITHIN)
        if match is not None:
            text, number = SEVERITY_WORDS[(match.group(1) or match.group(2)).lower()]
            found.append((index, text, number))
    return found


def raw_severities_bytes(blocks: list[tuple[int, bytes]]) -> list[tuple[int, str, int]]:
    """:func:`raw_severities` on the raw bytes of the lines: RE2 finds the words, newlines count the lines."""
    found: list[tuple[int, str, int]] = []
    finditer = _RAW_LEVEL_BYTES.finditer
    for first, block in blocks:
        index, counted, last = first, 0, -1
        for match in finditer(block):
            pos = match.start()
            index += block.count(b"\n", counted, pos)
            counted = pos
            if index == last or pos - (block.rfind(b"\n", 0, pos) + 1) > RAW_LEVEL_WITHIN:
                continue
            last = index
            text, number = SEVERITY_WORDS[(match.group(1) or match.group(2)).decode().lower()]
            found.append((index, text, number))
    return found


_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


def _json_fields(line: str) -> dict[str, object] | None:
    try:
        value = _json_decode(line)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _json_text(value: object) -> str:
    return _json_encode(value).decode()


def logfmt_fields(line: str) -> dict[str, object] | None:
    """``key=value key2="quoted \\"value\\"" flag`` into a dict; None when the line is not logfmt."""
    fields: dict[str, object] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and line[i] not in "= ":
            i += 1
        key = line[start:i]
        if not key or '"' in key:
            return None
        if i >= n or line[i] == " ":
            fields[key] = "true"
            continue
        i += 1  # past "="
        if i < n and line[i] == '"':
            i += 1
            chunk: list[str] = []
            while True:
                end = line.find('"', i)
                if end < 0:
                    return None
                backslashes = 0
                while end - 1 - backslashes >= i and line[end - 1 - backslashes] == "\\":
                    backslashes += 1
                chunk.append(line[i:end])
                i = end + 1
                if backslashes % 2 == 0:
                    break
                chunk.append('"')
            value = "".join(chunk)
            if "\\" in value:
                value = _unescape(value)
            fields[key] = value
        else:
            end = line.find(" ", i)
            end = n if end < 0 else end
            fields[key] = line[i:end]
            i = end
    return fields or None


def _unescape(value: str) -> str:
    return re.sub(r'\\(["\\nt])', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), value)
