"""Decoding the disk buffer's log records with their label sets shared, not one copy per record.

A batch of log records holds a few label sets (a file's lines share one), each written out with
every record. A plain ``Decoder(list[LogRecord])`` builds a new tuple of tuples of strings for each
record: most of a batch's decoding time, and the Loki encoder and the batch sizing then compare
equal label sets value by value. :class:`LogRecordsDecoder` reads the bytes the same way
(the format on disk is unchanged, and validated as strictly) but decodes each distinct label set
once per batch, so the records of one file share one ``labels`` object again, as they did when
they were put.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agent.model import Labels, LogRecord

_EMPTY = msgspec.Raw(b"\x90")  # a msgpack empty array: NO_LABELS


class _Stored(msgspec.Struct, array_like=True, gc=False):
    """A :class:`~agent.model.LogRecord` as written, with its label sets left undecoded."""

    time_ns: int
    body: str
    labels: msgspec.Raw = _EMPTY
    severity: str = ""
    attributes: msgspec.Raw = _EMPTY
    severity_number: int = 0


class LogRecordsDecoder:
    """``decode(buffer) -> list[LogRecord]``, equal to ``msgspec.msgpack.Decoder(list[LogRecord])``'s
    result; raises ``msgspec.DecodeError`` (a ``ValidationError`` for a bad label set) as it does."""

    def __init__(self) -> None:
        self._records = msgspec.msgpack.Decoder(list[_Stored])
        self._labels = msgspec.msgpack.Decoder(Labels)

    def decode(self, buffer: Any) -> list[LogRecord]:
        decode_labels = self._labels.decode
        seen: dict[bytes, Labels] = {}
        last_raw, last = _EMPTY, ()  # consecutive records mostly share a label set: compare with the last
        out: list[LogRecord] = []
        append = out.append
        for s in self._records.decode(buffer):
            raw = s.labels
            if raw != last_raw:
                key = bytes(raw)
                last = seen.get(key)  # type: ignore[assignment]
                if last is None:
                    last = seen[key] = decode_labels(key)
                last_raw = raw
            attributes = s.attributes
            attrs = () if attributes == _EMPTY else decode_labels(attributes)
            append(LogRecord(s.time_ns, s.body, last, s.severity, attrs, s.severity_number))
        return out
