"""The bodies OTLP answers with: Export*ServiceResponse (with a partial success) and google.rpc.Status."""

from __future__ import annotations

import math

import msgspec
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from collectors.otlp_receiver.intake import Answer

_RESPONSES = {
    "metrics": (
        metrics_pb.ExportMetricsServiceResponse,
        metrics_pb.ExportMetricsPartialSuccess,
        "rejected_data_points",
    ),
    "logs": (logs_pb.ExportLogsServiceResponse, logs_pb.ExportLogsPartialSuccess, "rejected_log_records"),
    "traces": (trace_pb.ExportTraceServiceResponse, trace_pb.ExportTracePartialSuccess, "rejected_spans"),
}
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
# google.rpc.Code of each refusal (gRPC status codes; the HTTP body's Status carries it too).
# too_large is INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: SDKs retry the latter, and the same
# request would be refused again every time
GRPC_CODES = {"malformed": 3, "too_large": 3, "busy": 8, "unavailable": 14, "unsupported": 12}


def success_body(signal: str, answer: Answer, *, json: bool) -> bytes:
    """An Export*ServiceResponse: empty for a full success, with partial_success otherwise."""
    response_type, partial_type, field = _RESPONSES[signal]
    response = response_type()
    if answer.rejected or answer.message:
        response.partial_success.CopyFrom(partial_type(**{field: answer.rejected, "error_message": answer.message}))
    if json:
        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def retry_info(delay: float) -> bytes:
    """A google.rpc.RetryInfo: ``retry_delay`` = ``delay`` seconds."""
    seconds = math.floor(delay)
    nanos = round((delay - seconds) * 1e9)
    duration = (b"\x08" + _varint(seconds) if seconds else b"") + (b"\x10" + _varint(nanos) if nanos else b"")
    return _field(0x0A, duration)


def status(answer: Answer) -> bytes:
    """A google.rpc.Status (code, message, and a RetryInfo detail when the sender should come back)."""
    code = GRPC_CODES.get(answer.result, 2)
    body = b"\x08" + _varint(code) + _field(0x12, answer.message.encode("utf-8", "replace"))
    if answer.retry_after:
        detail = _field(0x0A, RETRY_INFO_TYPE.encode()) + _field(0x12, retry_info(answer.retry_after))
        body += _field(0x1A, detail)
    return body


def status_json(answer: Answer) -> bytes:
    document: dict = {"code": GRPC_CODES.get(answer.result, 2), "message": answer.message}
    if answer.retry_after:
        document["details"] = [{"@type": RETRY_INFO_TYPE, "retryDelay": f"{answer.retry_after:g}s"}]
    return msgspec.json.encode(document)
