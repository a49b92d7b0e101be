"""OTLP logs to log records, and spans to :class:`agent.model.Span` items, redacted. No I/O.

Log records: the body as text (a structured body as JSON); severity text (or
the name of its number's range when only a number was sent) and number; the
record's attributes, with ``trace_id`` and ``span_id`` in hex (as Loki writes
them), as record attributes (Loki structured metadata). Of the resource, the
attributes in ``stream_labels`` (Loki's default list: ``service.name``,
``service.namespace``, ... few values per host) label the stream; the other
resource attributes and the scope's name and version join the record's
attributes, which leaves stream labels low-cardinality.

Redaction: every string a record carries (body, attribute values) goes
through the agent's redaction rules as file log lines do, in one batch per
request. Spans keep everything except string attribute values of the span, its
events and links, and the status message, which are redacted the same way:
URLs, SQL statements and exception messages carry secrets as often as logs do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.model import Labels, LogRecord, Span, merge_labels
from collectors.otlp_receiver.decode import hex_id
from collectors.otlp_receiver.metrics import Translated
from collectors.otlp_receiver.values import text

RedactMany = Callable[[list[str]], list[str]]
_SEVERITY_NAMES = ((21, "FATAL"), (17, "ERROR"), (13, "WARN"), (9, "INFO"), (5, "DEBUG"), (1, "TRACE"))


def severity_name(number: int) -> str:
    return next((name for floor, name in _SEVERITY_NAMES if number >= floor), "")


def translate_logs(
    request: Any, now_ns: int, *, stream_labels: frozenset[str], static: Labels, redact: RedactMany | None
) -> Translated:
    out = Translated()
    for resource_logs in request.resource_logs:
        resource = [(kv.key, text(kv.value)) for kv in resource_logs.resource.attributes]
        labels = merge_labels(static, tuple(sorted({k: v for k, v in resource if k in stream_labels}.items())))
        extra = {k: v for k, v in resource if k not in stream_labels}
        for scope_logs in resource_logs.scope_logs:
            scope = dict(extra)
            if scope_logs.scope.name:
                scope["otel.scope.name"] = scope_logs.scope.name
            if scope_logs.scope.version:
                scope["otel.scope.version"] = scope_logs.scope.version
            for record in scope_logs.log_records:
                out.items.append(_record(record, labels, scope, now_ns))
    out.received = len(out.items)
    if redact is not None and out.items:
        out.items = _redact_records(out.items, redact)
    return out


def _record(record: Any, labels: Labels, inherited: dict[str, str], now_ns: int) -> LogRecord:
    attributes = dict(inherited)
    attributes.update((kv.key, text(kv.value)) for kv in record.attributes)
    if trace := hex_id(record.trace_id):
        attributes["trace_id"] = trace
    if span := hex_id(record.span_id):
        attributes["span_id"] = span
    number = record.severity_number
    return LogRecord(
        time_ns=record.time_unix_nano or record.observed_time_unix_nano or now_ns,
        body=text(record.body) if record.HasField("body") else "",
        labels=labels,
        severity=record.severity_text or severity_name(number),
        attributes=tuple(sorted(attributes.items())),
        severity_number=number,
    )


def _redact_records(records: list[LogRecord], redact: RedactMany) -> list[LogRecord]:
    """Bodies and attribute values through the redactor in one call; unchanged records stay as they are."""
    texts: list[str] = []
    for record in records:
        texts.append(record.body)
        texts.extend(value for _, value in record.attributes)
    masked = redact(texts)
    if all(a is b for a, b in zip(masked, texts, strict=True)):
        return records
    out, at = [], 0
    for record in records:
        count = 1 + len(record.attributes)
        part = masked[at : at + count]
        if any(a is not b for a, b in zip(part, texts[at : at + count], strict=True)):
            attributes = tuple((name, value) for (name, _), value in zip(record.attributes, part[1:], strict=True))
            record = LogRecord(
                record.time_ns, part[0], record.labels, record.severity, attributes, record.severity_number
            )
        out.append(record)
        at += count
    return out


def translate_traces(request: Any, *, redact: RedactMany | None) -> Translated:
    out = Translated()
    if redact is not None:
        _redact_spans(request, redact)
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource.SerializeToString()
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.SerializeToString()
            for span in scope_spans.spans:
                out.items.append(
                    Span(
                        span.end_time_unix_nano or span.start_time_unix_nano,
                        span.SerializeToString(),
                        resource,
                        scope,
                        resource_spans.schema_url,
                        scope_spans.schema_url,
                    )
                )
    out.received = len(out.items)
    return out


def _redact_spans(request: Any, redact: RedactMany) -> None:
    """String attribute values (span, events, links) and status messages, in one redactor call."""
    holders: list[tuple[Any, str]] = []  # (message holding the text, its field name)
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                lists = [span.attributes, *(e.attributes for e in span.events), *(k.attributes for k in span.links)]
                for attributes in lists:
                    holders.extend((kv.value, "string_value") for kv in attributes if kv.value.string_value)
                if span.status.message:
                    holders.append((span.status, "message"))
    if not holders:
        return
    texts = [getattr(holder, name) for holder, name in holders]
    for (holder, name), before, after in zip(holders, texts, redact(texts), strict=True):
        if after is not before and after != before:
            setattr(holder, name, after)
