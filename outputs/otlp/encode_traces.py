"""OTLP traces encoding: received spans regrouped into ``ExportTraceServiceRequest``. No I/O.

Spans travel through hostwatch as they arrived: each :class:`agent.model.Span`
holds the encoded ``Span`` and the encoded ``Resource`` and
``InstrumentationScope`` it came with. Here consecutive spans of one resource
and scope become one ``ResourceSpans`` / ``ScopeSpans`` again, by copying their
bytes, so what the next receiver gets is what the application sent (after
redaction). OTLP/JSON goes through ``opentelemetry-proto``'s classes, with the
ids in hex as OTLP/JSON wants them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import msgspec
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.model import Span
from outputs._protobuf import varint

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def encode_spans(spans: Sequence[Span]) -> bytes:
    """``ExportTraceServiceRequest`` bytes: one ResourceSpans per run of spans sharing resource and scope."""
    out: list[bytes] = []
    scopes: list[bytes] = []  # encoded ScopeSpans of the current resource
    current: list[bytes] = []  # encoded Span fields of the current scope
    resource_key: tuple[bytes, str] | None = None
    scope_key: tuple[bytes, str] | None = None

    def close_scope() -> None:
        if scope_key is not None and current:
            scope, schema = scope_key
            body = _field(0x0A, scope) + b"".join(current) + (_field(0x1A, schema.encode()) if schema else b"")
            scopes.append(_field(0x12, body))  # ResourceSpans.scope_spans = 2
            current.clear()

    def close_resource() -> None:
        close_scope()
        if resource_key is not None and scopes:
            resource, schema = resource_key
            body = _field(0x0A, resource) + b"".join(scopes) + (_field(0x1A, schema.encode()) if schema else b"")
            out.append(_field(0x0A, body))  # ExportTraceServiceRequest.resource_spans = 1
            scopes.clear()

    for span in spans:
        key = (span.resource, span.resource_schema_url)
        if key != resource_key:
            close_resource()
            resource_key, scope_key = key, None
        skey = (span.scope, span.scope_schema_url)
        if skey != scope_key:
            close_scope()
            scope_key = skey
        current.append(_field(0x12, span.span))  # ScopeSpans.spans = 2
    close_resource()
    return b"".join(out)


def encode_spans_json(spans: Sequence[Span]) -> bytes:
    """The same request in OTLP/JSON (ids as hex strings, not protobuf JSON's base64)."""
    request = ExportTraceServiceRequest.FromString(encode_spans(spans))
    document = json_format.MessageToDict(request)
    for resource_spans in document.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _hex_ids(span)
                for link in span.get("links", ()):
                    _hex_ids(link)
    return msgspec.json.encode(document)


def _hex_ids(entry: dict) -> None:
    for key in _ID_KEYS:
        if key in entry:
            entry[key] = base64.b64decode(entry[key]).hex()
