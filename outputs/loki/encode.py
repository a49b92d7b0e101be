"""Loki push request encoding (protobuf and JSON), by hand and with no I/O.

The protobuf wire format (``pkg/push/push.proto``)::

    PushRequest   { repeated StreamAdapter streams = 1; }
    StreamAdapter { string labels = 1; repeated EntryAdapter entries = 2; }
    EntryAdapter  { google.protobuf.Timestamp timestamp = 1; string line = 2;
                    repeated LabelPairAdapter structuredMetadata = 3; }
    LabelPairAdapter { string name = 1; string value = 2; }
    Timestamp     { int64 seconds = 1; int32 nanos = 2; }

The JSON form is ``{"streams": [{"stream": {name: value}, "values":
[["<ns>", "line", {metadata}]]}]}``.

Records are grouped into streams by their label set (the ``base`` labels
plus the record's ``labels``, which win); within a stream entries are sent in
time order. A record's ``attributes`` become structured metadata, never stream
labels (they may be high-cardinality), and so does its severity, as ``level``. The encoded stream header of every
label set is cached.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from agent.model import Labels, LogRecord
from outputs._protobuf import sanitize_label_name, varint

_NO_HEADS: tuple[bytes, ...] = ()
_json_encode = msgspec.json.Encoder().encode


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def stream_selector(labels: Labels) -> str:
    """Loki's text form of a label set: ``{job="app", instance="h1"}`` (sorted)."""
    return "{" + ", ".join(f"{name}={_quote(value)}" for name, value in labels) + "}"


def stream_labels(base: Labels, labels: Labels) -> Labels:
    """The stream's label set: names sanitised, empty values dropped, ``labels`` win."""
    merged: dict[str, str] = {}
    for source in (base, labels):
        for name, value in source:
            merged[sanitize_label_name(name)] = value
    return tuple(sorted((k, v) for k, v in merged.items() if v != ""))


@dataclass(slots=True)
class Encoded:
    payload: bytes
    streams: int
    entries: int


class PushEncoder:
    """Turns log records into a Loki ``PushRequest`` (protobuf) or its JSON form."""

    def __init__(self, base: Labels = (), *, structured_metadata: bool = True, max_streams: int = 20_000) -> None:
        self.base = base
        self.structured_metadata = structured_metadata
        self.max_streams = max_streams
        self._selectors: dict[Labels, tuple[bytes, Labels]] = {}
        # (attributes, severity) -> encoded fields; the severity alone when there are no attributes
        self._metadata_cache: dict[tuple[Labels, str] | str, bytes] = {}

    def _stream(self, labels: Labels) -> tuple[bytes, Labels]:
        """(encoded ``labels`` field, final label set) of a record label set, cached."""
        entry = self._selectors.get(labels)
        if entry is None:
            if len(self._selectors) >= self.max_streams:
                self._selectors.clear()
            final = stream_labels(self.base, labels)
            text = stream_selector(final).encode("utf-8", "replace")
            entry = self._selectors[labels] = (b"\x0a" + varint(len(text)) + text, final)
        return entry

    def _metadata(self, record: LogRecord, key: tuple[Labels, str] | str) -> bytes:
        """Encoded structured metadata fields of a record, cached under ``key``."""
        encoded = self._metadata_cache.get(key)
        if encoded is None:
            if len(self._metadata_cache) >= 50_000:
                self._metadata_cache.clear()
            out = []
            for name, value in _metadata_of(record):
                name_bytes = name.encode("utf-8", "replace")
                value_bytes = value.encode("utf-8", "replace")
                inner = (
                    b"\x0a" + varint(len(name_bytes)) + name_bytes + b"\x12" + varint(len(value_bytes)) + value_bytes
                )
                out.append(b"\x1a" + varint(len(inner)) + inner)
            encoded = self._metadata_cache[key] = b"".join(out)
        return encoded

    def _groups(self, records: Sequence[LogRecord]) -> dict[Labels, list[LogRecord]]:
        groups: dict[Labels, list[LogRecord]] = {}
        last: Labels | None = None  # a file's lines share one labels object: look a run of them up once
        group: list[LogRecord] = []
        for record in records:
            labels = record.labels
            if labels is not last:
                last = labels
                group = groups.get(labels)  # type: ignore[assignment]
                if group is None:
                    group = groups[labels] = []
            group.append(record)
        for labels, group in groups.items():
            last = -1
            for record in group:
                if record.time_ns < last:
                    groups[labels] = sorted(group, key=_time_of)
                    break
                last = record.time_ns
        return groups

    def _streams(self, records: Sequence[LogRecord]) -> list[tuple[Labels, Sequence[LogRecord]]]:
        """:meth:`_groups`' streams, as (label set, records) pairs, mostly found without regrouping.

        Most batches come in order: one label set in time order (a file read in bulk), or each label
        set in one run of records sharing its object, in time order (a line of each of many files at
        low rates: as many streams as records). Others are grouped and sorted by :meth:`_groups`."""
        if not records:
            return []
        first = records[0].labels
        if records[-1].labels == first:
            labels = [r.labels for r in records]
            if labels.count(first) == len(labels):
                times = [r.time_ns for r in records]
                if times == sorted(times):
                    return [(first, records)]
        runs: list[tuple[Labels, list[LogRecord]]] = []
        seen: set[Labels] = set()
        last: Labels | None = None
        last_ns = 0
        run: list[LogRecord] = []
        for record in records:
            labels = record.labels
            if labels is last:
                if record.time_ns < last_ns:
                    break  # out of time order
                run.append(record)
            else:
                seen.add(labels)
                if len(seen) == len(runs):
                    break  # the label set came before, in another run (or as another equal object)
                last, run = labels, [record]
                runs.append((labels, run))
            last_ns = record.time_ns
        else:
            return runs
        return list(self._groups(records).items())

    def encode_protobuf(self, records: Sequence[LogRecord]) -> Encoded:
        """A ``PushRequest``, uncompressed (send it snappy-compressed).

        The hot loop appends an entry's pieces to one list and keeps each
        stream's size as it goes. Varints come from tables: lengths below
        16 KiB are one lookup (a stream's too: a batch of a line of each of many
        files is as many streams as records), and a timestamp's nanoseconds are
        the low 14 bits from a table plus the higher bits, which stay the same for
        16 µs of consecutive records and are encoded once per change; a record
        with the time of the one before (the lines of one round) reuses its pieces.
        """
        parts: list[bytes] = []
        metadata = self.structured_metadata
        metadata_get = self._metadata_cache.get
        selector_get = self._selectors.get
        low14, head12, head10, small = _tables()
        sec_ns, ts_heads = -(1 << 63), _NO_HEADS  # the current second, in ns, and its Timestamp heads
        last_high, high, ts_head, fixed = -1, b"", b"", 0  # fixed: the Timestamp field's size
        last_ns, low = None, b""  # the time of the record before, and its nanos' low bytes
        streams = self._streams(records)
        for labels, group in streams:
            header = (selector_get(labels) or self._stream(labels))[0]
            head_index = len(parts)
            parts += (b"", header)  # the stream's key (PushRequest.streams = 1) and size, once known
            total = 0
            for record in group:
                time_ns = record.time_ns
                if time_ns != last_ns:
                    last_ns = time_ns
                    nanos = time_ns - sec_ns
                    if nanos >= 1_000_000_000 or nanos < 0:
                        sec, nanos = divmod(time_ns, 1_000_000_000)
                        sec_ns = time_ns - nanos
                        ts_heads, last_high = _timestamp_heads(sec), -1
                    if nanos >= 0x4000:
                        low = low14[nanos & 0x3FFF]
                        if nanos >> 14 != last_high:
                            last_high = nanos >> 14
                            high = varint(last_high)
                            ts_head = ts_heads[2 + len(high)]
                            fixed = len(ts_head) + 2 + len(high)
                    else:  # the first 16 µs of a second: every record of a time with whole seconds
                        low, high, last_high = small[nanos], b"", -1
                        ts_head = ts_heads[len(low)]
                        fixed = len(ts_head) + len(low)
                try:
                    line = record.body.encode()
                except UnicodeEncodeError:  # lone surrogates from undecodable input
                    line = record.body.encode("utf-8", "replace")
                n = len(line)
                if metadata and (record.attributes or record.severity):
                    key = (record.attributes, record.severity) if record.attributes else record.severity
                    meta = metadata_get(key) or self._metadata(record, key)
                    size = fixed + n + len(meta)
                else:
                    meta = b""
                    size = fixed + n
                # the line's key and length; then the entry's (EntryAdapter is StreamAdapter.entries = 2;
                # in it timestamp = 1, line = 2, structuredMetadata = 3)
                if n < 0x4000:
                    line_head = head12[n]
                    size += 2 if n < 0x80 else 3
                else:
                    line_head = b"\x12" + varint(n)
                    size += len(line_head)
                if size < 0x4000:
                    parts += (head12[size], ts_head, low, high, line_head, line, meta)
                    total += size + (2 if size < 0x80 else 3)
                else:
                    entry_head = b"\x12" + varint(size)
                    parts += (entry_head, ts_head, low, high, line_head, line, meta)
                    total += size + len(entry_head)
            total += len(header)
            parts[head_index] = head10[total] if total < 0x4000 else b"\x0a" + varint(total)
        return Encoded(b"".join(parts), len(streams), len(records))

    def encode_json(self, records: Sequence[LogRecord]) -> Encoded:
        """The JSON push body, uncompressed."""
        streams = []
        metadata = self.structured_metadata
        groups = self._groups(records)
        for labels, group in groups.items():
            values = [
                [str(r.time_ns), r.body, dict(_metadata_of(r))]
                if metadata and (r.attributes or r.severity)
                else [str(r.time_ns), r.body]
                for r in group
            ]
            streams.append({"stream": dict(self._stream(labels)[1]), "values": values})
        return Encoded(_json_encode({"streams": streams}), len(groups), len(records))


@functools.cache
def _tables() -> tuple[list[bytes], list[bytes], list[bytes], list[bytes]]:
    """(the low 14 bits of a varint of 3+ bytes, as its first two bytes; the key of a field 2
    of type length-delimited, 0x12, followed by each length below 16 KiB; the same for field 1,
    0x0a; the varint of each number below 16 Ki), built on first use."""
    continued = [bytes((n | 0x80,)) for n in range(0x80)]  # a 7-bit group with more to follow
    low14 = [low + high for high in continued for low in continued]
    return low14, _prefixed_varints(b"\x12"), _prefixed_varints(b"\x0a"), _prefixed_varints(b"")


def _prefixed_varints(prefix: bytes) -> list[bytes]:
    """``prefix + varint(n)`` for each n below 16 Ki, joined from one-byte pieces made once: a
    ``varint`` call per entry made the first export about 9 ms slower (``bench_startup``)."""
    last = [bytes((n,)) for n in range(0x80)]  # a varint's last 7-bit group
    continued = [prefix + bytes((n | 0x80,)) for n in range(0x80)]
    return [prefix + group for group in last] + [low + high for high in last[1:] for low in continued]


def _timestamp_heads(sec: int) -> tuple[bytes, ...]:
    """Start of the Timestamp field for each length (1-5 bytes) of the nanos varint that follows."""
    seconds = b"\x08" + varint(sec) + b"\x10"
    return tuple(b"\x0a" + bytes((len(seconds) + n,)) + seconds for n in range(6))


def _time_of(record: LogRecord) -> int:
    return record.time_ns


def _metadata_of(record: LogRecord) -> Labels:
    """Structured metadata: the attributes, plus ``level`` from the severity unless an attribute has that name."""
    attributes = record.attributes
    if not record.severity or any(name == "level" for name, _ in attributes):
        return attributes
    return (*attributes, ("level", record.severity))
