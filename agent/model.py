"""The data hostwatch moves: immutable samples, log records and trace spans.

Everything a collector produces and an output consumes is one of the three value
types below. They are msgspec Structs: frozen (a value can be shared by every
output's queue without copying), cheap to build, serialisable to msgpack for the
disk buffer, and created with ``gc=False`` because they hold only strings,
numbers, bytes and tuples of strings, so they can never be part of a reference cycle.

Conventions every producer and consumer relies on:

* ``labels`` and ``attributes`` are tuples of ``(name, value)`` string pairs,
  **sorted by name, names unique**. Use :func:`labels_from` to build them from a
  mapping; equality and hashing of label sets then work without normalising.
* Times are integer nanoseconds since the Unix epoch (``time.time_ns()``).
* Metric names and units follow Prometheus/node_exporter conventions: base units
  (seconds, bytes), counters end in ``_total``.

This module imports nothing from the project.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import msgspec

Labels = tuple[tuple[str, str], ...]
"""A sorted tuple of unique ``(name, value)`` pairs."""

NO_LABELS: Labels = ()


class Signal(enum.StrEnum):
    """The kinds of telemetry the pipeline routes to outputs."""

    METRICS = "metrics"
    LOGS = "logs"
    TRACES = "traces"


MetricKind = Literal["gauge", "counter"]


class Sample(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One measurement of one time series.

    ``kind`` is ``"counter"`` for monotonically increasing cumulative values
    (they reset only when their source restarts) and ``"gauge"`` otherwise.
    ``unit`` is informative (OTLP carries it, Prometheus ignores it): ``"s"``,
    ``"By"``, ``"1"`` ... in UCUM as OpenTelemetry expects; empty when unknown.
    """

    name: str
    value: float
    kind: MetricKind
    labels: Labels
    time_ns: int
    unit: str = ""


class LogRecord(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One log record (a line, or several lines joined by multiline framing).

    ``labels`` identify the stream (Loki stream labels, OTLP resource
    attributes) and must stay low-cardinality: file name, job, host labels.
    ``attributes`` carry per-record fields (parsed JSON keys, trace ids ...):
    Loki structured metadata, OTLP log attributes; never stream labels.
    ``severity`` is the OpenTelemetry severity text (``"INFO"``, ``"ERROR"``
    ...) or empty; ``severity_number`` the OpenTelemetry number (0 = unset).
    """

    time_ns: int
    body: str
    labels: Labels = NO_LABELS
    severity: str = ""
    attributes: Labels = NO_LABELS
    severity_number: int = 0


class Span(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One trace span, kept as encoded OTLP so nothing of it is lost in translation.

    ``span`` is an encoded ``opentelemetry.proto.trace.v1.Span``; ``resource``
    and ``scope`` are the encoded ``Resource`` and ``InstrumentationScope`` it
    arrived with (the spans of one request share these ``bytes`` objects, so
    they cost memory once; the disk buffer stores them per span). An output
    regroups consecutive spans of one resource and scope into ``ResourceSpans``.
    One item is one span, so batch sizes, ``sent`` and ``dropped`` counts and
    an OTLP partial success (``rejected_spans``) all count spans.
    ``time_ns`` is the span's end time (the buffer's age of the oldest item).
    """

    time_ns: int
    span: bytes
    resource: bytes = b""
    scope: bytes = b""
    resource_schema_url: str = ""
    scope_schema_url: str = ""


Item = Sample | LogRecord | Span


class SeverityNumber(enum.IntEnum):
    """OpenTelemetry's log severity numbers (the data model's ``SeverityNumber``).

    Each level is a range of four, least severe first (ERROR 17 ... ERROR4 20); the
    members below are the ones a level word maps to.
    """

    UNSPECIFIED = 0
    TRACE = 1
    DEBUG = 5
    INFO = 9
    INFO2 = 10
    WARN = 13
    ERROR = 17
    ERROR2 = 18
    ERROR3 = 19
    FATAL = 21


_S = SeverityNumber
_WORDS = {
    "trace": ("TRACE", _S.TRACE),
    "trc": ("TRACE", _S.TRACE),
    "debug": ("DEBUG", _S.DEBUG),
    "dbg": ("DEBUG", _S.DEBUG),
    "info": ("INFO", _S.INFO),
    "inf": ("INFO", _S.INFO),
    "information": ("INFO", _S.INFO),
    "informational": ("INFO", _S.INFO),
    "notice": ("NOTICE", _S.INFO2),
    "warn": ("WARN", _S.WARN),
    "warning": ("WARN", _S.WARN),
    "wrn": ("WARN", _S.WARN),
    "error": ("ERROR", _S.ERROR),
    "err": ("ERROR", _S.ERROR),
    "eror": ("ERROR", _S.ERROR),
    "critical": ("CRITICAL", _S.ERROR2),
    "crit": ("CRITICAL", _S.ERROR2),
    "alert": ("ALERT", _S.ERROR3),
    "fatal": ("FATAL", _S.FATAL),
    "panic": ("FATAL", _S.FATAL),  # syslog's old name for emerg
    "emerg": ("EMERGENCY", _S.FATAL),
    "emergency": ("EMERGENCY", _S.FATAL),
}
SEVERITY_WORDS: Mapping[str, tuple[str, int]] = {word: (text, int(n)) for word, (text, n) in _WORDS.items()}
"""Level words, lower case, to the severity text a record gets and its number (a plain
``int``). The one table of the project: the log collectors read levels with it and the
OTLP output numbers a record that carries only a text with it. The syslog levels follow
the data model's Appendix B: notice INFO2, crit ERROR2, alert ERROR3, emerg FATAL."""


def severity_number(text: str) -> int:
    """The number of a level word in any case (``"crit"``, ``"WARNING"``); 0 when unknown."""
    found = SEVERITY_WORDS.get(text.lower())
    return found[1] if found else 0


def labels_from(mapping: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Labels:
    """Build a canonical label tuple: values as strings, sorted, last name wins."""
    if not mapping:
        return NO_LABELS
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    return tuple(sorted({str(k): str(v) for k, v in items}.items()))


def merge_labels(base: Labels, extra: Labels) -> Labels:
    """Combine two canonical label tuples; ``extra`` wins on a name clash."""
    if not extra:
        return base
    if not base:
        return extra
    merged = dict(base)
    merged.update(extra)
    return tuple(sorted(merged.items()))


def same_series(before: Sequence[Sample], now: Sequence[Sample]) -> bool:
    """The same series in the same order (values aside): a collector's usual run. Compared
    pairwise, which needs no hashing of label tuples, unlike building a set of them."""
    if len(before) != len(now):
        return False
    # Collectors keep a series' label tuple between runs (the very object): identity answers
    # first, the element-wise tuple comparison only when the tuples are not the same object.
    for a, b in zip(before, now, strict=False):  # equal lengths, checked above: no check per pair
        if a.name != b.name or (a.labels is not b.labels and a.labels != b.labels) or a.kind != b.kind:
            return False
        if a.unit != b.unit:
            return False
    return True


STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
"""Prometheus' staleness marker: a NaN with this exact bit pattern, as the value of
the last sample of a series, says the series ended (an interface or a mount went
away, or the agent stopped). Remote-write sends it as is; OTLP sets the data
point's no-recorded-value flag instead; ``/metrics`` never shows it. Ordinary
NaN values (a sensor that reads NaN) have other bits and stay ordinary."""

_STALE_BITS = struct.pack("<d", STALE_NAN)


def is_stale(value: float) -> bool:
    """True only for :data:`STALE_NAN` (compared bit for bit; any other NaN is a value)."""
    return value != value and struct.pack("<d", value) == _STALE_BITS


def signal_of(item: Item) -> Signal:
    kind = type(item)
    return Signal.METRICS if kind is Sample else Signal.LOGS if kind is LogRecord else Signal.TRACES
