"""What an OTLP/HTTP or gRPC backend answers: partial successes, ``google.rpc.Status`` and its
``RetryInfo``. No I/O.

Read with the wire reader in :mod:`outputs._protobuf` rather than generated classes: the
Status and RetryInfo classes are in googleapis-common-protos (not a dependency of the
agent), not in opentelemetry-proto, and the three Export*ServiceResponse messages share one layout
(``partial_success`` = 1: ``rejected_*`` = 1, ``error_message`` = 2), so one reader serves
every signal.
"""

from __future__ import annotations

import msgspec

from outputs._protobuf import read_fields

_REJECTED_KEYS = ("rejectedDataPoints", "rejectedLogRecords", "rejectedSpans")


def partial_success(body: bytes, *, json: bool = False) -> tuple[int, str]:
    """``(rejected items, error message)`` from an Export*ServiceResponse (metrics, logs or traces)."""
    if json:
        answer = msgspec.json.decode(body) if body.strip() else {}
        partial = answer.get("partialSuccess") or {} if isinstance(answer, dict) else {}
        rejected = next((partial[k] for k in _REJECTED_KEYS if k in partial), 0) or 0
        return int(rejected), str(partial.get("errorMessage", ""))
    rejected, message = 0, ""
    for number, _, value in read_fields(body):
        if number == 1 and isinstance(value, bytes):
            for inner, _, item in read_fields(value):
                if inner == 1 and isinstance(item, int):
                    rejected = item
                elif inner == 2 and isinstance(item, bytes):
                    message = item.decode("utf-8", "replace")
    return rejected, message


def status_message(body: bytes, *, json: bool = False) -> str:
    """The message of a ``google.rpc.Status`` (the body of an OTLP/HTTP error); empty if none."""
    try:
        if json:
            answer = msgspec.json.decode(body)
            return str(answer.get("message", "")) if isinstance(answer, dict) else ""
        for number, wire, value in read_fields(body):
            if number == 2 and wire == 2 and isinstance(value, bytes):
                return value.decode("utf-8", "replace")
    except (ValueError, msgspec.DecodeError):
        pass
    return ""


def retry_delay(status: bytes) -> float | None:
    """The ``google.rpc.RetryInfo`` delay in a serialized ``google.rpc.Status`` (gRPC's status details)."""
    try:
        for number, _, detail in read_fields(status):
            if number != 3 or not isinstance(detail, bytes):  # Status.details: repeated Any
                continue
            fields = {n: v for n, _, v in read_fields(detail)}
            type_url = fields.get(1, b"")
            if not (isinstance(type_url, bytes) and type_url.endswith(b"google.rpc.RetryInfo")):
                continue
            seconds = nanos = 0
            for n, _, duration in read_fields(fields.get(2, b"")):  # RetryInfo.retry_delay
                if n == 1 and isinstance(duration, bytes):
                    for k, _, v in read_fields(duration):
                        seconds = v if k == 1 and isinstance(v, int) else seconds
                        nanos = v if k == 2 and isinstance(v, int) else nanos
            return seconds + nanos / 1e9
    except ValueError:
        return None
    return None
