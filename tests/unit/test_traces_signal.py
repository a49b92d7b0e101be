"""Traces as a signal: spans buffered on disk, routed to outputs that take traces, regrouped by the OTLP output."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.buffer import DiskQueue, QueuedBatch
from agent.delivery import AckToken, item_size
from agent.exposition import LatestSamples
from agent.model import Sample, Signal, Span, signal_of
from agent.pipeline import Pipeline
from agent.plugin import Batch as ExportBatch
from agent.plugin import ResultKind
from collectors.otlp_receiver.logs import translate_traces
from outputs.otlp.encode_traces import encode_spans, encode_spans_json
from tests.unit.test_delivery import ScriptedOutput, runner_for, wait_for
from tests.unit.test_plugin_contract import output_for, serve


def two_resources_request() -> ExportTraceServiceRequest:
    from google.protobuf import json_format

    def span(n: int) -> dict:
        return {
            "traceId": "AAECAwQFBgcICQoLDA0ODw==",
            "spanId": f"AAAAAAAAAA{n}=",
            "name": f"op {n}",
            "startTimeUnixNano": str(1_700_000_000_000_000_000 + n),
            "endTimeUnixNano": str(1_700_000_000_100_000_000 + n),
            "attributes": [{"key": "n", "value": {"intValue": str(n)}}],
        }

    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": name}}]},
                "schemaUrl": "https://opentelemetry.io/schemas/1.21.0",
                "scopeSpans": [
                    {"scope": {"name": "a", "version": "1"}, "spans": [span(1), span(2)]},
                    {"scope": {"name": "b"}, "spans": [span(3)], "schemaUrl": "s"},
                ],
            }
            for name in ("web", "worker")
        ]
    }
    return json_format.ParseDict(document, ExportTraceServiceRequest())


def spans_of(request: ExportTraceServiceRequest) -> list[Span]:
    return translate_traces(ExportTraceServiceRequest.FromString(request.SerializeToString()), redact=None).items


def test_a_span_is_its_own_signal_and_sized_by_its_bytes() -> None:
    [first, *_] = spans_of(two_resources_request())
    assert signal_of(first) is Signal.TRACES
    assert item_size(first) == 24 + len(first.span) + len(first.resource) + len(first.scope)


def test_the_otlp_encoder_regroups_spans_into_what_was_received() -> None:
    request = two_resources_request()
    assert ExportTraceServiceRequest.FromString(encode_spans(spans_of(request))) == request
    document = json.loads(encode_spans_json(spans_of(request)))
    first = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert first["traceId"] == "000102030405060708090a0b0c0d0e0f"  # OTLP/JSON: hex, not base64
    assert len(first["spanId"]) == 16


async def test_spans_survive_the_disk_buffer_and_a_restart(tmp_path) -> None:
    spans = spans_of(two_resources_request())
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.TRACES)
    await queue.open()
    await queue.put(QueuedBatch(Signal.TRACES, spans, sum(map(item_size, spans)), 1))
    await queue.close()
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.TRACES)
    await reopened.open()
    replay = await reopened.take()
    assert replay.items == spans and replay.items is not spans
    await reopened.close()


class TraceOutput(ScriptedOutput):
    signals = frozenset({Signal.TRACES})


class MetricsOutput(ScriptedOutput):
    signals = frozenset({Signal.METRICS})


async def test_spans_go_only_to_outputs_that_take_traces_and_are_acknowledged_once_durable(tmp_path) -> None:
    traces = runner_for(TraceOutput(), tmp_path / "t", buffer="disk", flush_interval=0.05)
    metrics = runner_for(MetricsOutput(), tmp_path / "m", buffer="disk")
    assert set(traces.lanes) == {Signal.TRACES} and set(metrics.lanes) == {Signal.METRICS}
    pipeline = Pipeline(traces.telemetry, LatestSamples())
    pipeline.runners = {"t": (None, traces), "m": (None, metrics)}
    pipeline._route()
    for runner in (traces, metrics):
        await runner.start()
    spans = spans_of(two_resources_request())
    acked: list[int] = []
    await pipeline.publish_spans(spans, lambda: acked.append(traces.lanes[Signal.TRACES].queue.items))
    await wait_for(lambda: bool(acked))
    await wait_for(lambda: sum(map(len, traces.output.received)) == len(spans))
    assert acked[0] == len(spans) or traces.output.received  # acknowledged once on disk (or already sent)
    assert [s for batch in traces.output.received for s in batch] == spans
    assert metrics.output.received == []
    sent = traces.telemetry.registry.get_sample_value(
        "hostwatch_output_sent_items_total", {"output": "scripted", "signal": "traces"}
    )
    assert sent == len(spans)  # counted in spans
    await pipeline.close(1.0)


async def test_a_full_trace_buffer_pauses_the_source(tmp_path) -> None:
    blocked = asyncio.Event()

    class Stuck(TraceOutput):
        async def export(self, batch):
            await blocked.wait()
            return await super().export(batch)

    spans = spans_of(two_resources_request())
    one_batch = max(sum(map(item_size, spans[:3])), sum(map(item_size, spans[3:])))
    runner = runner_for(Stuck(), tmp_path, buffer="disk", buffer_max_bytes=one_batch, batch_max_items=3)
    assert runner.lanes[Signal.TRACES].when_full == "block"  # like logs, unlike metrics
    await runner.start()
    lane = runner.lanes[Signal.TRACES]
    tokens: list[str] = []
    await lane.accept(spans[:3], AckToken(1, lambda: tokens.append("first")))
    await wait_for(lambda: tokens == ["first"])  # on disk: durable, though not delivered
    await lane.accept(spans[3:], AckToken(1, lambda: tokens.append("second")))
    await asyncio.sleep(0.3)
    assert tokens == ["first"], "the second batch cannot be durable while the buffer is full"
    blocked.set()
    await wait_for(lambda: tokens == ["first", "second"])
    assert [s for batch in runner.output.received for s in batch] == spans
    await runner.close(1.0)


async def test_the_otlp_output_posts_traces_to_v1_traces() -> None:
    seen: list[tuple[str, bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, await request.read()))
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    server, port = await serve(handler)
    output = output_for("otlp", f"http://127.0.0.1:{port}/push", compression="none")  # the base URL
    assert Signal.TRACES in output.signals  # the default signals take traces
    await output.start()
    try:
        spans = spans_of(two_resources_request())
        result = await output.export(ExportBatch(Signal.TRACES, spans))
        assert result.kind is ResultKind.OK
        [(path, body)] = seen
        assert path == "/v1/traces"
        assert ExportTraceServiceRequest.FromString(body) == two_resources_request()
    finally:
        await output.close()
        await server.cleanup()


@pytest.mark.parametrize("signal", [Signal.TRACES, Signal.METRICS])
async def test_a_waiting_source_has_its_batch_sealed_at_once_not_after_flush_interval(tmp_path, signal) -> None:
    output = TraceOutput() if signal is Signal.TRACES else MetricsOutput()
    runner = runner_for(output, tmp_path, buffer="disk", flush_interval=10.0)
    await runner.start()
    lane = runner.lanes[signal]
    items = spans_of(two_resources_request()) if signal is Signal.TRACES else _samples(6)
    acked: list[str] = []

    async def hand(part, name: str, flush: bool) -> None:
        token = AckToken(1, lambda: acked.append(name))
        if signal is Signal.METRICS:
            lane.offer(part, token, flush=flush)  # metrics' drop_oldest intake
        else:
            await lane.accept(part, token, flush=flush)

    await hand(items[:3], "plain", False)
    await asyncio.sleep(0.3)
    assert acked == [], "without flush a partial batch waits for flush_interval"
    started = asyncio.get_running_loop().time()
    await hand(items[3:], "waiting", True)
    await wait_for(lambda: acked == ["plain", "waiting"], timeout=2.0)
    assert asyncio.get_running_loop().time() - started < 1.0
    await runner.close(1.0)


def _samples(count: int) -> list:
    return [Sample("x", float(n), "gauge", (), n + 1) for n in range(count)]


async def test_spans_no_output_takes_are_counted_not_silently_dropped(tmp_path) -> None:
    metrics = runner_for(MetricsOutput(), tmp_path, buffer="memory")
    pipeline = Pipeline(metrics.telemetry, LatestSamples())
    pipeline.runners = {"m": (None, metrics)}
    pipeline._route()
    acked: list[bool] = []
    await pipeline.publish_spans(spans_of(two_resources_request()), lambda: acked.append(True))
    assert acked == [True]  # nothing will ever take them: the source is not held
    counted = metrics.telemetry.registry.get_sample_value("hostwatch_unrouted_items_total", {"signal": "traces"})
    assert counted == 6
