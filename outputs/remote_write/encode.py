"""Prometheus remote-write 1.0 ``WriteRequest`` encoding, by hand and with no I/O.

The wire format (``prometheus/prompb``)::

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // milliseconds

A ``WriteRequest`` is just its ``TimeSeries`` fields one after another, so the
payload is built by joining byte strings. Building protobuf message objects per
sample would cost microseconds each; here the encoded label block of every
series is cached (a host sends the same few thousand series every interval),
so a sample costs one dict lookup and one ``struct.pack``.

Rules the encoder enforces, because Prometheus refuses a whole request for
one bad series: names are sanitised (invalid characters become ``_``), labels
with empty values are left out (Prometheus treats them as absent), labels are
sorted, a series whose sanitised label names collide is refused and counted,
samples of a series are sent in time order with one value per millisecond.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.model import Labels, Sample
from outputs._protobuf import sanitize_label_name, varint

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_INVALID_METRIC_CHAR = re.compile(r"[^a-zA-Z0-9_:]")

# With a millisecond timestamp between 2^35 (1971) and 2^42 (2109) the varint
# takes 6 bytes, so an encoded Sample is always 18 bytes: field tag, length,
# 0x09 + double, 0x10 + varint. The common path packs it in one call.
_TS_MIN, _TS_MAX = 1 << 35, 1 << 42
_SAMPLE18 = struct.Struct("<3sd7s")
_SAMPLE18_PREFIX = b"\x12\x10\x09"
_DOUBLE = struct.Struct("<d")


def sanitize_metric_name(name: str) -> str:
    if _METRIC_NAME.fullmatch(name):
        return name
    name = _INVALID_METRIC_CHAR.sub("_", name) or "_"
    return "_" + name if name[0].isdigit() else name


def _string_field(tag: int, text: str) -> bytes:
    data = text.encode("utf-8", "replace")
    return bytes((tag,)) + varint(len(data)) + data


class RejectedSeries(Exception):
    """A series that cannot be sent (its sanitised label names collide)."""


def _sanitized(name: str, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key, value in pairs:
        clean = sanitize_label_name(key)
        if clean in out:
            raise RejectedSeries(f"labels {origin[clean]!r} and {key!r} of {name} are both {clean!r} once sanitised")
        out[clean] = value
        origin[clean] = key
    return out


def encode_labels(name: str, labels: Iterable[tuple[str, str]], base: Labels = ()) -> bytes:
    """The ``labels`` fields of one TimeSeries: ``__name__``, ``base``, then ``labels`` (which win).

    Raises :class:`RejectedSeries` when two different names sanitise to one.
    """
    merged = {"__name__": sanitize_metric_name(name)}
    merged.update(_sanitized(name, base))
    own = _sanitized(name, labels)
    if "__name__" in own:
        raise RejectedSeries(f"a label of {name} would replace the metric name")
    merged.update(own)
    out = bytearray()
    for key in sorted(merged):
        value = merged[key]
        if value == "":
            continue
        pair = _string_field(0x0A, key) + _string_field(0x12, value)
        out += b"\x0a" + varint(len(pair)) + pair
    return bytes(out)


@dataclass(slots=True)
class Encoded:
    """One encoded ``WriteRequest`` (uncompressed) and what went into it."""

    payload: bytes
    series: int = 0
    samples: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)
    """One line per distinct reason something was left out (for the engine's log)."""


class WriteRequestEncoder:
    """Turns samples into ``WriteRequest`` bytes, caching each series' label block.

    ``base`` labels (``job``, ``instance``, ``[agent] labels``) go on every
    series; a sample's own label of the same name wins. The cache is emptied
    before a batch once it holds ``max_series`` entries: series churn on a host
    is slow, so a rebuild is rare and cheap.
    """

    def __init__(self, base: Labels = (), *, max_series: int = 200_000) -> None:
        self.base = base
        self.max_series = max_series
        # series key -> [label block, TimeSeries header for one 18-byte sample (None: refused),
        #                last batch number it was seen in, refusal text]
        self._cache: dict[tuple[str, Labels], list] = {}
        self._batch = 0

    def _entry(self, key: tuple[str, Labels]) -> list:
        try:
            block = encode_labels(key[0], key[1], self.base)
            entry = [block, b"\x0a" + varint(len(block) + 18) + block, 0, ""]
        except RejectedSeries as exc:
            entry = [b"", None, 0, str(exc)]
        self._cache[key] = entry
        return entry

    def encode(self, samples: Sequence[Sample]) -> Encoded:
        """Encode a batch; the fast path covers one sample per series, the usual case."""
        if len(self._cache) >= self.max_series:  # only between batches: marks must survive a batch
            self._cache.clear()
        self._batch += 1
        batch = self._batch
        cache_get = self._cache.get
        pack = _SAMPLE18.pack
        parts: list[bytes] = []
        append = parts.append
        result = Encoded(b"")
        last_ns, ts_field = None, b""
        for sample in samples:
            key = (sample.name, sample.labels)
            entry = cache_get(key) or self._entry(key)
            if entry[2] == batch:  # a second sample of this series: group them all
                return self._encode_grouped(samples)
            entry[2] = batch
            header = entry[1]
            if header is None:
                result.rejected += 1
                if entry[3] not in result.problems:
                    result.problems.append(entry[3])
                continue
            if sample.time_ns != last_ns:
                last_ns = sample.time_ns
                ms = last_ns // 1_000_000
                if not _TS_MIN <= ms < _TS_MAX:
                    return self._encode_grouped(samples)
                ts_field = b"\x10" + varint(ms)
            append(header)
            append(pack(_SAMPLE18_PREFIX, sample.value, ts_field))
        result.series = result.samples = len(parts) // 2
        result.payload = b"".join(parts)
        return result

    def _encode_grouped(self, samples: Sequence[Sample]) -> Encoded:
        groups: dict[tuple[str, Labels], list[Sample]] = {}
        for sample in samples:
            groups.setdefault((sample.name, sample.labels), []).append(sample)
        parts: list[bytes] = []
        result = Encoded(b"")
        ts_fields: dict[int, bytes] = {}
        for key, group in groups.items():
            entry = self._cache.get(key) or self._entry(key)
            if entry[1] is None:
                result.rejected += len(group)
                if entry[3] not in result.problems:
                    result.problems.append(entry[3])
                continue
            body = _encode_samples(group, ts_fields)
            result.series += 1
            result.samples += len(body)
            if len(body) < len(group):
                result.rejected += len(group) - len(body)
                problem = f"several samples of {key[0]} in one millisecond: the last one was kept"
                if problem not in result.problems:
                    result.problems.append(problem)
            block = entry[0]
            parts.append(b"\x0a" + varint(len(block) + sum(map(len, body))) + block)
            parts.extend(body)
        result.payload = b"".join(parts)
        return result


def _encode_samples(group: list[Sample], ts_fields: dict[int, bytes]) -> list[bytes]:
    """Sample fields of one series in time order, the last value per millisecond kept.

    ``ts_fields`` caches the encoded timestamp field per millisecond across the batch.
    """
    times = [sample.time_ns for sample in group]
    if times != sorted(times):
        group = sorted(group, key=lambda s: s.time_ns)
    by_ms: dict[int, float] = {}
    for sample in group:
        by_ms[sample.time_ns // 1_000_000] = sample.value
    pack = _SAMPLE18.pack
    out = []
    for ms, value in by_ms.items():
        ts_field = ts_fields.get(ms)
        if ts_field is None:
            ts_field = ts_fields[ms] = b"\x10" + varint(ms)
        if len(ts_field) == 7:
            out.append(pack(_SAMPLE18_PREFIX, value, ts_field))
        else:
            inner = b"\x09" + _DOUBLE.pack(value) + ts_field
            out.append(b"\x12" + varint(len(inner)) + inner)
    return out
