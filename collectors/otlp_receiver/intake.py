"""Admission, decoding and the durable hand-off of one OTLP request, for both transports.

A request is admitted only while the receiver holds fewer than
``max_concurrent_requests`` requests and fewer than ``max_inflight_bytes``
bytes of them (its declared or read size; then also its inflated size once
decoded); beyond that it is answered ``busy`` (HTTP 429, gRPC
RESOURCE_EXHAUSTED, both with a retry delay) before its body is even read, so
a flood costs a bounded amount of memory. Decoding and translation run on the
instance's worker thread, never on the event loop.

The hand-off answers success only once every output that takes the signal has
durably taken the items (the pipeline's ``on_durable``: written to its disk
buffer with the fsync policy met, or delivered, or counted dropped). Should that
take longer than ``handoff_timeout`` (a log or trace buffer full and applying
backpressure), the answer is ``unavailable`` (HTTP 503, gRPC UNAVAILABLE) with
a retry delay, and the sender sends again later. What was already handed on
may then arrive twice: at least once, never lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.model import Labels
from agent.plugin import Redactor
from collectors.otlp_receiver.decode import Malformed, TooLarge, decompress, parse
from collectors.otlp_receiver.logs import translate_logs, translate_traces
from collectors.otlp_receiver.metrics import Translated, count_samples, translate_metrics

# Python memory one translated item holds, measured with tracemalloc on SDK-shaped requests
# (a histogram bucket is 23 bytes on the wire and about 550 as a Sample): what a request
# costs is judged by these, not by its size on the wire
ITEM_BYTES = {"metrics": 550, "logs": 700, "traces": 350}


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one request; each transport writes it its own way."""

    result: str  # ok | partial | malformed | too_large | busy | unavailable | unsupported
    message: str = ""
    rejected: int = 0
    retry_after: float = 0.0


class Intake:
    def __init__(self, config: Any, context: Any, emit: Any) -> None:
        self.config = config
        self.context = context
        self.emit = emit
        self.signals = frozenset(config.signals)
        self.stream_labels = frozenset(config.stream_labels)
        self.promote = frozenset(config.promote_resource_attributes)
        self.static: Labels = context.static_labels
        self.requests = 0
        self.inflight_bytes = 0
        self._said: set[str] = set()
        redactor: Redactor | None = context.redactor
        self.redact: Callable[[list[str]], list[str]] | None = redactor.redact_lines if redactor is not None else None

    # ------------------------------------------------------------- admission

    def admit(self, size: int) -> Answer | None:
        """Reserve room for a request of ``size`` bytes; an answer when there is none."""
        config = self.config
        if size > config.max_request_bytes:
            return Answer(
                "too_large", f"request of {size} bytes is over max_request_bytes ({config.max_request_bytes})"
            )
        if self.requests >= config.max_concurrent_requests or self.inflight_bytes + size > config.max_inflight_bytes:
            return Answer("busy", "receiver busy: too many requests in flight", retry_after=float(config.retry_after))
        self.requests += 1
        self._reserve(size)
        return None

    def release(self, size: int) -> None:
        self.requests -= 1
        self._reserve(-size)

    def _reserve(self, size: int) -> None:
        self.inflight_bytes += size
        if self.context.telemetry is not None:
            self.context.telemetry.otlp_inflight_bytes.set(self.inflight_bytes)

    # ------------------------------------------------------------- processing

    async def process(self, signal: str, body: bytes, *, encoding: str = "", json: bool = False) -> Answer:
        """Decode, translate and hand on an admitted request (``body`` as it came, maybe compressed)."""
        if signal not in self.signals:
            return Answer("unsupported", f"this receiver does not take {signal} (see its signals option)")
        translated, held = await self.context.run_blocking(self._decode, signal, body, encoding, json)
        if isinstance(translated, Answer):
            return translated
        extra = max(0, held - len(body))
        if self.inflight_bytes + extra > self.config.max_inflight_bytes:
            return Answer(
                "busy",
                "receiver busy: the requests in flight hold max_inflight_bytes",
                retry_after=float(self.config.retry_after),
            )
        self._reserve(extra)
        try:
            return await self._hand_off(signal, translated)
        finally:
            self._reserve(-extra)

    def _decode(self, signal: str, body: bytes, encoding: str, json: bool) -> tuple[Translated | Answer, int]:
        """On the worker thread: inflate, parse, translate (and redact); with the bytes the result holds.

        A request whose items would hold more than ``max_inflight_bytes`` by
        themselves is refused before translation (413): a 16 MiB body of
        histogram buckets is some 700,000 samples, about 400 MB as objects.

        Bad input is returned as an :class:`Answer`, not raised: an exception handed
        across to the event loop keeps the frames of this thread (and the inflated
        body in them) in a reference cycle until the garbage collector happens to
        run, which under a flood of zip bombs let memory grow by hundreds of MiB.
        """
        try:
            data = decompress(body, encoding, self.config.max_request_bytes)
            request = parse(signal, data, json=json)
        except Malformed as exc:
            return Answer("malformed", str(exc)), 0
        except TooLarge as exc:
            return Answer("too_large", str(exc)), 0
        items = _count(signal, request)
        held = len(data) + items * ITEM_BYTES[signal]
        if held > self.config.max_inflight_bytes:
            mib = held / 2**20
            message = (
                f"request holds {items} {signal} items, about {mib:.0f} MiB once decoded, over"
                f" max_inflight_bytes ({self.config.max_inflight_bytes}); send smaller batches"
            )
            return Answer("too_large", message), 0
        now = self.context.clock()
        if signal == "metrics":
            result = translate_metrics(request, now, suffixes=self.config.metric_suffixes, promote=self.promote)
        elif signal == "logs":
            result = translate_logs(
                request, now, stream_labels=self.stream_labels, static=self.static, redact=self.redact
            )
        else:
            result = translate_traces(request, redact=self.redact)
        return result, held

    async def _hand_off(self, signal: str, translated: Translated) -> Answer:
        items = translated.items
        if items:
            loop = asyncio.get_running_loop()
            durable = loop.create_future()

            def acknowledged() -> None:
                if not durable.done():
                    durable.set_result(None)

            send = {"metrics": self.emit.publish, "logs": self.emit.logs, "traces": self.emit.spans}[signal]
            try:
                async with asyncio.timeout(float(self.config.handoff_timeout)):
                    await send(items, on_durable=acknowledged, flush=True)  # the sender is waiting
                    await durable
            except TimeoutError:
                self.count_refused(signal, "unavailable", translated.received)
                return Answer(
                    "unavailable",
                    f"the outputs' buffers did not take the {signal} within {float(self.config.handoff_timeout):g}s",
                    retry_after=float(self.config.retry_after),
                )
        telemetry = self.context.telemetry
        if telemetry is not None:
            telemetry.otlp_received_items.labels(signal).inc(translated.received - translated.rejected)
        if translated.rejected:
            self.count_refused(signal, "unsupported", translated.rejected)
            return Answer("partial", translated.message, rejected=translated.rejected)
        return Answer("ok")

    # ------------------------------------------------------------- reporting

    def count_refused(self, signal: str, reason: str, count: int) -> None:
        telemetry = self.context.telemetry
        if telemetry is not None and count:
            telemetry.otlp_refused_items.labels(signal, reason).inc(count)

    def report(self, transport: str, signal: str, answer: Answer) -> None:
        """Count the request; say each kind of refusal once in the agent's log."""
        telemetry = self.context.telemetry
        if telemetry is not None:
            telemetry.otlp_requests.labels(transport, signal, answer.result).inc()
        if answer.result in ("ok", "busy", "unavailable"):
            key = answer.result
        else:
            key = f"{answer.result}:{answer.message[:80]}"
        if answer.result != "ok" and key not in self._said and len(self._said) < 100:
            self._said.add(key)
            self.context.logger.log(
                logging.INFO if answer.result == "partial" else logging.WARNING,
                "collector %s: OTLP %s %s request answered %s: %s (further ones are only counted)",
                self.context.instance,
                transport,
                signal,
                answer.result,
                answer.message,
            )


def _count(signal: str, request: Any) -> int:
    if signal == "metrics":
        return count_samples(request)
    if signal == "logs":
        return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
    return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
