"""OTLP request bodies to ``opentelemetry-proto`` messages: decompression, protobuf, JSON. No I/O.

Bounded before anything is allocated in proportion to what a client claims:
a gzip body inflates at most ``limit`` bytes (a zip bomb stops there, as
:class:`TooLarge`), and everything that does not decode is :class:`Malformed`
with a message that says what was wrong, for the 400 answer.

OTLP/JSON is protobuf's JSON mapping with two differences, both handled here:
trace and span ids are hex strings (protobuf JSON would want base64), and
enum fields may be given as integers (protobuf's parser takes those as is).
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

REQUEST_TYPES: dict[str, type[Message]] = {
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
    "traces": ExportTraceServiceRequest,
}
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_ID_LENGTHS = {16: "trace", 8: "span"}


class Malformed(ValueError):
    """The request cannot be decoded (HTTP 400, gRPC INVALID_ARGUMENT)."""


class TooLarge(ValueError):
    """The request is over the size limit (HTTP 413, gRPC RESOURCE_EXHAUSTED)."""


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding (``gzip``, ``deflate`` or none), at most ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise TooLarge(f"request body of {len(body)} bytes is over the limit of {limit} bytes")
        return body
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise Malformed(f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none")
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Malformed(f"body is not valid {encoding}: {exc}") from None
    if len(data) > limit:
        raise TooLarge(f"request body inflates to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise Malformed(f"{encoding} body is truncated")
    return data


def parse(signal: str, data: bytes, *, json: bool) -> Any:
    """An ``Export{Metrics,Logs,Trace}ServiceRequest`` from protobuf or OTLP/JSON bytes."""
    message_type = REQUEST_TYPES[signal]
    if not json:
        try:
            return message_type.FromString(data)
        except (DecodeError, RecursionError) as exc:
            raise Malformed(f"body is not a protobuf {message_type.__name__}: {exc}") from None
    try:
        document = msgspec.json.decode(data) if data.strip() else {}
    except msgspec.DecodeError as exc:
        raise Malformed(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise Malformed(f"body must be a JSON object ({message_type.__name__}), not {type(document).__name__}")
    _ids_to_base64(document)
    try:
        return json_format.ParseDict(document, message_type(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise Malformed(f"body is not an OTLP/JSON {message_type.__name__}: {exc}") from None


def _ids_to_base64(document: dict) -> None:
    """Rewrite OTLP/JSON's hex trace and span ids into protobuf JSON's base64, everywhere in the tree."""
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_KEYS and isinstance(value, str):
                    node[key] = _hex_id(key, value)
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))


def _hex_id(key: str, value: str) -> str:
    if not value:
        return value
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise Malformed(f"{key} {value[:40]!r} is not hex") from None
    if len(raw) not in _ID_LENGTHS:
        raise Malformed(f"{key} {value[:40]!r} must be 16 bytes (trace id) or 8 bytes (span id) of hex")
    return base64.b64encode(raw).decode()


def hex_id(raw: bytes) -> str:
    """A trace or span id as OTLP/JSON and Loki write it; empty for an unset (all-zero or empty) id."""
    return binascii.hexlify(raw).decode() if raw and any(raw) else ""
