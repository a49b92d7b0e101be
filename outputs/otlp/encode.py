"""OTLP metrics and logs encoding (protobuf by hand, JSON). No I/O.

Building ``opentelemetry-proto`` message objects costs microseconds per data
point; this module writes the same wire format directly and caches what
repeats (the encoded attributes of every label set, the resource, the
scope), so a data point costs one dict lookup and one ``struct.pack``. The
tests decode its output with ``opentelemetry-proto``'s own classes.

Mapping: one ``ResourceMetrics`` per request, whose resource carries the
host (``host.name``, ``host.id``, ``os.type``, ``service.name`` = job,
``service.instance.id`` = instance, and the ``[agent] labels``); one metric
per (name, kind, unit); counters become cumulative monotonic Sums whose start
time is ``start_time_ns``, gauges become Gauges; sample labels become
data point attributes. Logs: one ``ResourceLogs`` per label set, whose
resource is the host resource plus the record's labels; record attributes
become log record attributes.

A staleness marker (:data:`agent.model.STALE_NAN`, the end of a series) becomes
a data point with no value and the ``FLAG_NO_RECORDED_VALUE`` flag, which is
how the OTLP data model says a stream ended (the Prometheus translation turns
it back into a staleness marker).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import msgspec

from agent.model import Labels, LogRecord, Sample, is_stale, severity_number
from outputs._protobuf import varint

_SUM_POINT = struct.Struct("<BQBQBd")  # 0x11 start, 0x19 time, 0x21 as_double: 27 bytes
_GAUGE_POINT = struct.Struct("<BQBd")  # 0x19 time, 0x21 as_double: 18 bytes
_FIXED64 = struct.Struct("<Q")
_NO_RECORDED_VALUE = b"\x40\x01"  # NumberDataPoint.flags = 8: FLAG_NO_RECORDED_VALUE
_CUMULATIVE_MONOTONIC = b"\x10\x02\x18\x01"  # Sum.aggregation_temporality = 2, Sum.is_monotonic = true
_json_encode = msgspec.json.Encoder().encode


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` is the whole key byte)."""
    return bytes((tag,)) + varint(len(payload)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")


def key_values(pairs: Sequence[tuple[str, str]], tag: int) -> bytes:
    """Repeated ``KeyValue`` fields with string values, under the key byte ``tag``."""
    out = bytearray()
    for key, value in pairs:
        any_value = _field(0x0A, _text(value))  # AnyValue.string_value
        out += _field(tag, _field(0x0A, _text(key)) + _field(0x12, any_value))
    return bytes(out)


def resource_attributes(*, hostname: str, job: str, machine_id: str, os_type: str, labels: Labels) -> Labels:
    """The host's resource attributes (OpenTelemetry semantic conventions), ``labels`` last."""
    attributes = {
        "service.name": job,
        "service.instance.id": hostname,
        "host.name": hostname,
        "os.type": os_type,
    }
    if machine_id:
        attributes["host.id"] = machine_id
    attributes.update(labels)
    return tuple(sorted(attributes.items()))


def _scope(name: str, version: str) -> bytes:
    return _field(0x0A, _text(name)) + (_field(0x12, _text(version)) if version else b"")


class MetricsEncoder:
    """Samples to ``ExportMetricsServiceRequest`` bytes, or to OTLP/JSON."""

    def __init__(
        self, resource: Labels, *, scope_name: str = "hostwatch", scope_version: str = "", start_time_ns: int = 0
    ) -> None:
        self.resource = resource
        self.scope = (scope_name, scope_version)
        self.start_time_ns = start_time_ns
        self._resource_field = _field(0x0A, key_values(resource, 0x0A))  # ResourceMetrics.resource
        self._scope_field = _field(0x0A, _scope(scope_name, scope_version))  # ScopeMetrics.scope
        self._points: dict[Labels, tuple[bytes, bytes]] = {}  # labels -> (gauge point head, sum point head)
        self._metric_heads: dict[tuple[str, str, str], bytes] = {}

    def _heads(self, labels: Labels) -> tuple[bytes, bytes]:
        if len(self._points) >= 200_000:
            self._points.clear()
        attrs = key_values(labels, 0x3A)  # NumberDataPoint.attributes = 7
        heads = (
            b"\x0a" + varint(len(attrs) + _GAUGE_POINT.size) + attrs,
            b"\x0a" + varint(len(attrs) + _SUM_POINT.size) + attrs,
        )
        self._points[labels] = heads
        return heads

    def encode(self, samples: Sequence[Sample]) -> bytes:
        metrics: dict[tuple[str, str, str], list[bytes]] = {}
        metrics_get = metrics.get
        heads_get = self._points.get
        pack_sum, pack_gauge = _SUM_POINT.pack, _GAUGE_POINT.pack
        start = self.start_time_ns
        for sample in samples:
            key = (sample.name, sample.kind, sample.unit)
            points = metrics_get(key)
            if points is None:
                points = metrics[key] = []
            time_ns = sample.time_ns
            value = sample.value
            if value != value and is_stale(value):
                points.append(self._ended_point(sample, start if start <= time_ns else time_ns))
                continue
            heads = heads_get(sample.labels) or self._heads(sample.labels)
            if sample.kind == "counter":
                points.append(heads[1])
                points.append(pack_sum(0x11, start if start <= time_ns else time_ns, 0x19, time_ns, 0x21, value))
            else:
                points.append(heads[0])
                points.append(pack_gauge(0x19, time_ns, 0x21, value))
        encoded_metrics = []
        for key, points in metrics.items():
            data = b"".join(points)
            # Metric.sum = 7 (cumulative, monotonic) or Metric.gauge = 5
            data = _field(0x3A, data + _CUMULATIVE_MONOTONIC) if key[1] == "counter" else _field(0x2A, data)
            head = self._metric_heads.get(key)
            if head is None:
                head = _field(0x0A, _text(key[0])) + (_field(0x1A, _text(key[2])) if key[2] else b"")
                if len(self._metric_heads) < 10_000:
                    self._metric_heads[key] = head
            encoded_metrics.append(_field(0x12, head + data))  # ScopeMetrics.metrics = 2
        scope_metrics = _field(0x12, self._scope_field + b"".join(encoded_metrics))
        return _field(0x0A, self._resource_field + scope_metrics) if samples else b""

    @staticmethod
    def _ended_point(sample: Sample, start_ns: int) -> bytes:
        """A series' end: the point carries times and the no-recorded-value flag, no value."""
        body = key_values(sample.labels, 0x3A)
        if sample.kind == "counter":
            body += b"\x11" + _FIXED64.pack(start_ns)
        body += b"\x19" + _FIXED64.pack(sample.time_ns) + _NO_RECORDED_VALUE
        return _field(0x0A, body)

    def encode_json(self, samples: Sequence[Sample]) -> bytes:
        metrics: dict[tuple[str, str, str], list[dict]] = {}
        start = self.start_time_ns
        for sample in samples:
            point = {"attributes": _json_attributes(sample.labels), "timeUnixNano": str(sample.time_ns)}
            if is_stale(sample.value):
                point["flags"] = 1
            else:
                point["asDouble"] = _json_double(sample.value)
            if sample.kind == "counter":
                point["startTimeUnixNano"] = str(min(start, sample.time_ns))
            metrics.setdefault((sample.name, sample.kind, sample.unit), []).append(point)
        out = []
        for (name, kind, unit), points in metrics.items():
            metric: dict = {"name": name, "unit": unit}
            if kind == "counter":
                metric["sum"] = {"dataPoints": points, "aggregationTemporality": 2, "isMonotonic": True}
            else:
                metric["gauge"] = {"dataPoints": points}
            out.append(metric)
        request = {
            "resourceMetrics": [
                {
                    "resource": {"attributes": _json_attributes(self.resource)},
                    "scopeMetrics": [{"scope": _json_scope(*self.scope), "metrics": out}],
                }
            ]
        }
        return _json_encode(request)


class LogsEncoder:
    """Log records to ``ExportLogsServiceRequest`` bytes, or to OTLP/JSON."""

    def __init__(self, resource: Labels, *, scope_name: str = "hostwatch", scope_version: str = "") -> None:
        self.resource = resource
        self.scope = (scope_name, scope_version)
        self._scope_field = _field(0x0A, _scope(scope_name, scope_version))  # ScopeLogs.scope
        self._resources: dict[Labels, bytes] = {}

    def resource_of(self, labels: Labels) -> Labels:
        if not labels:
            return self.resource
        merged = dict(self.resource)
        merged.update(labels)
        return tuple(sorted(merged.items()))

    def _resource_field(self, labels: Labels) -> bytes:
        field = self._resources.get(labels)
        if field is None:
            if len(self._resources) >= 20_000:
                self._resources.clear()
            field = self._resources[labels] = _field(0x0A, key_values(self.resource_of(labels), 0x0A))
        return field

    def encode(self, records: Sequence[LogRecord], observed_ns: int) -> bytes:
        groups: dict[Labels, list[bytes]] = {}
        observed = b"\x59" + _FIXED64.pack(observed_ns)  # LogRecord.observed_time_unix_nano = 11
        for record in records:
            parts = [b"\x09", _FIXED64.pack(record.time_ns), observed]  # time_unix_nano = 1
            number = record.severity_number or severity_number(record.severity)
            if number:
                parts.append(b"\x10" + varint(number))  # severity_number = 2
            if record.severity:
                parts.append(_field(0x1A, _text(record.severity)))  # severity_text = 3
            parts.append(_field(0x2A, _field(0x0A, _text(record.body))))  # body = 5, AnyValue.string_value
            if record.attributes:
                parts.append(key_values(record.attributes, 0x32))  # attributes = 6
            log_record = b"".join(parts)
            groups.setdefault(record.labels, []).append(b"\x12" + varint(len(log_record)) + log_record)
        out = []
        for labels, encoded in groups.items():
            scope_logs = _field(0x12, self._scope_field + b"".join(encoded))  # ResourceLogs.scope_logs = 2
            out.append(_field(0x0A, self._resource_field(labels) + scope_logs))
        return b"".join(out)

    def encode_json(self, records: Sequence[LogRecord], observed_ns: int) -> bytes:
        groups: dict[Labels, list[dict]] = {}
        for record in records:
            entry: dict = {
                "timeUnixNano": str(record.time_ns),
                "observedTimeUnixNano": str(observed_ns),
                "body": {"stringValue": record.body},
            }
            number = record.severity_number or severity_number(record.severity)
            if number:
                entry["severityNumber"] = number
            if record.severity:
                entry["severityText"] = record.severity
            if record.attributes:
                entry["attributes"] = _json_attributes(record.attributes)
            groups.setdefault(record.labels, []).append(entry)
        resource_logs = [
            {
                "resource": {"attributes": _json_attributes(self.resource_of(labels))},
                "scopeLogs": [{"scope": _json_scope(*self.scope), "logRecords": entries}],
            }
            for labels, entries in groups.items()
        ]
        return _json_encode({"resourceLogs": resource_logs})


def _json_attributes(pairs: Sequence[tuple[str, str]]) -> list[dict]:
    return [{"key": key, "value": {"stringValue": value}} for key, value in pairs]


def _json_scope(name: str, version: str) -> dict:
    return {"name": name, "version": version} if version else {"name": name}


def _json_double(value: float) -> float | str:
    """Protobuf's JSON mapping writes non-finite doubles as strings."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
