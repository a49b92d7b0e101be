"""The engine's side of delivery, driven by a scripted output (no network here:
the outputs' own status mapping is tested against real and fake servers elsewhere)."""

from __future__ import annotations

import asyncio

import pytest

from agent import delivery
from agent.config import OutputCommon, PluginSpec
from agent.exposition import LatestSamples
from agent.model import LogRecord, Sample, Signal
from agent.output_runner import OutputRunner
from agent.pipeline import Pipeline
from agent.plugin import ExportResult, Output
from agent.retry import Backoff
from agent.telemetry import Telemetry


class ScriptedOutput(Output):
    """Answers from a script (an exception in it is raised); records what it was sent."""

    Config = None
    signals = frozenset({Signal.METRICS, Signal.LOGS})

    def __init__(self, script=None, delay: float = 0.0) -> None:
        self.script = list(script or [])
        self.delay = delay
        self.received: list[list] = []
        self.attempts = 0

    async def export(self, batch):
        self.attempts += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        result = self.script.pop(0) if self.script else ExportResult.ok()
        if isinstance(result, Exception):  # an output bug
            raise result
        if result.kind.value == "ok":
            self.received.append(list(batch.items))
        return result


def runner_for(output, tmp_path, *, buffer="memory", **common) -> OutputRunner:
    defaults = dict(flush_interval=0.01, retry_initial=0.01, retry_max=0.05)
    defaults.update(common)
    spec = PluginSpec("outputs", "scripted", 0, OutputCommon(**defaults), None, ScriptedOutput)
    return OutputRunner(spec, output, state_dir=tmp_path, telemetry=Telemetry(), clock=lambda: 1, buffer_kind=buffer)


def samples(start: int, count: int) -> list[Sample]:
    return [Sample("seq", float(i), "gauge", (), 1) for i in range(start, start + count)]


def dropped(runner: OutputRunner, reason: str) -> float:
    return (
        runner.telemetry.registry.get_sample_value(
            "hostwatch_output_dropped_items_total", {"output": "scripted", "reason": reason}
        )
        or 0.0
    )


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def delivered(output: ScriptedOutput) -> list[float]:
    return [item.value for batch in output.received for item in batch]


@pytest.mark.parametrize("buffer", ["memory", "disk"])
async def test_retryable_failures_are_retried_until_delivered(tmp_path, buffer) -> None:
    output = ScriptedOutput([ExportResult.retry("503"), ExportResult.retry("429", after=0.01)])
    runner = runner_for(output, tmp_path, buffer=buffer)
    await runner.start()
    runner.lanes[Signal.METRICS].offer(samples(0, 5))
    await wait_for(lambda: delivered(output) == [0.0, 1.0, 2.0, 3.0, 4.0])
    assert output.attempts == 3
    assert runner.telemetry.registry.get_sample_value("hostwatch_output_retries_total", {"output": "scripted"}) == 2
    await runner.close(1.0)


async def test_rejected_batch_is_dropped_and_counted_not_retried(tmp_path) -> None:
    output = ScriptedOutput([ExportResult.drop("400 bad sample")])
    runner = runner_for(output, tmp_path)
    await runner.start()
    runner.lanes[Signal.METRICS].offer(samples(0, 3))
    await wait_for(lambda: dropped(runner, "rejected") == 3)
    runner.lanes[Signal.METRICS].offer(samples(3, 1))
    await wait_for(lambda: delivered(output) == [3.0])
    assert output.attempts == 2
    await runner.close(1.0)


async def test_too_large_splits_the_batch_in_halves(tmp_path) -> None:
    output = ScriptedOutput([ExportResult.too_large("413"), ExportResult.too_large("413")])
    runner = runner_for(output, tmp_path)
    await runner.start()
    runner.lanes[Signal.METRICS].offer(samples(0, 8))
    await wait_for(lambda: sorted(delivered(output)) == [float(i) for i in range(8)])
    assert [len(b) for b in output.received] == [2, 2, 4]
    assert delivered(output) == [float(i) for i in range(8)]  # order kept
    await runner.close(1.0)


async def test_partial_success_counts_the_rejected_items(tmp_path) -> None:
    output = ScriptedOutput([ExportResult.ok(rejected=2, reason="2 points rejected")])
    runner = runner_for(output, tmp_path)
    await runner.start()
    runner.lanes[Signal.METRICS].offer(samples(0, 5))
    await wait_for(lambda: dropped(runner, "partial_success") == 2)
    sent = runner.telemetry.registry.get_sample_value(
        "hostwatch_output_sent_items_total", {"output": "scripted", "signal": "metrics"}
    )
    assert sent == 3
    await runner.close(1.0)


async def test_drop_oldest_when_full_counts_exactly_and_keeps_the_newest(tmp_path) -> None:
    output = ScriptedOutput([ExportResult.retry("down")] * 1000)
    runner = runner_for(output, tmp_path, buffer_max_bytes=2000, batch_max_items=5, when_full="drop_oldest")
    await runner.start()
    lane = runner.lanes[Signal.METRICS]
    for start in range(0, 200, 5):
        lane.offer(samples(start, 5))
        await asyncio.sleep(0.02)
    await wait_for(lambda: not lane.pending)
    queued = lane.queue.items
    gone = dropped(runner, "buffer_full")
    assert gone > 0
    output.script.clear()  # the backend recovers
    await wait_for(lambda: lane.queue.items == 0)
    got = delivered(output)
    assert len(got) + gone == 200, (len(got), gone, queued)
    assert got[-1] == 199.0  # the newest arrived
    await runner.close(1.0)


async def test_block_mode_pauses_the_source_and_drops_nothing(tmp_path) -> None:
    output = ScriptedOutput([ExportResult.retry("down")] * 30)
    runner = runner_for(output, tmp_path, buffer_max_bytes=600, batch_max_items=2, batch_max_bytes=200)
    await runner.start()
    lane = runner.lanes[Signal.LOGS]
    assert lane.when_full == "block"
    sent = 0

    async def source():
        nonlocal sent
        for i in range(40):
            await lane.accept([LogRecord(i, f"line {i}")], None)
            sent += 1

    task = asyncio.create_task(source())
    await asyncio.sleep(0.2)
    assert not task.done() and sent < 40, "the source should be paused while the backend is down"
    await asyncio.wait_for(task, 20)
    await wait_for(lambda: lane.queue.items == 0 and not lane.pending, timeout=20)
    bodies = [r.body for batch in output.received for r in batch]
    assert bodies == [f"line {i}" for i in range(40)]
    assert dropped(runner, "buffer_full") == 0
    await runner.close(1.0)


async def test_acknowledgement_waits_for_every_log_output(tmp_path) -> None:
    telemetry = Telemetry()
    pipeline = Pipeline(telemetry, LatestSamples())
    fast = runner_for(ScriptedOutput(), tmp_path / "a", buffer="memory")
    slow_output = ScriptedOutput([ExportResult.retry("down", after=0.1)] * 3)
    slow = runner_for(slow_output, tmp_path / "b", buffer="memory", retry_max=1)
    for runner in (fast, slow):
        await runner.start()
    pipeline.runners = {"a": (None, fast), "b": (None, slow)}
    pipeline._route()
    acked = asyncio.Event()
    await pipeline.publish_logs([LogRecord(1, "x")], acked.set)
    await asyncio.sleep(0.15)
    assert not acked.is_set(), "the memory-buffered slow output has not delivered yet"
    await asyncio.wait_for(acked.wait(), 5)
    assert [r.body for b in slow_output.received for r in b] == ["x"]
    await pipeline.close(1.0)


async def test_disk_buffer_acknowledges_once_written(tmp_path) -> None:
    output = ScriptedOutput([ExportResult.retry("down")] * 1000)
    runner = runner_for(output, tmp_path, buffer="disk")
    await runner.start()
    acked = asyncio.Event()
    from agent.delivery import AckToken

    await runner.lanes[Signal.LOGS].accept([LogRecord(1, "durable")], AckToken(1, acked.set))
    await asyncio.wait_for(acked.wait(), 5)
    assert delivered(output) == []
    await runner.close(0.1)
    # the next start replays it first
    output2 = ScriptedOutput()
    runner2 = runner_for(output2, tmp_path, buffer="disk")
    await runner2.start()
    await wait_for(lambda: output2.received)
    assert [r.body for r in output2.received[0]] == ["durable"]
    await runner2.close(1.0)


async def test_shutdown_cuts_a_long_retry_after_short(tmp_path) -> None:
    output = ScriptedOutput([ExportResult.retry("429", after=3600)])
    runner = runner_for(output, tmp_path, buffer="memory", retry_max=3600)
    await runner.start()
    runner.lanes[Signal.METRICS].offer(samples(0, 3))
    await wait_for(lambda: output.attempts == 1)
    started = asyncio.get_running_loop().time()
    await runner.close(0.2)
    assert asyncio.get_running_loop().time() - started < 2
    assert dropped(runner, "shutdown") == 3  # a memory buffer's leftovers are counted, not lost silently


@pytest.mark.parametrize("buffer", ["memory", "disk"])
async def test_shutdown_with_a_full_blocking_buffer_does_not_hang(tmp_path, buffer) -> None:
    output = ScriptedOutput([ExportResult.retry("down")] * 10_000)
    runner = runner_for(output, tmp_path, buffer=buffer, buffer_max_bytes=600, batch_max_items=2, batch_max_bytes=200)
    await runner.start()
    lane = runner.lanes[Signal.LOGS]

    accepted = 0

    async def source():
        nonlocal accepted
        for i in range(100):
            await lane.accept([LogRecord(i, f"line {i}")], None)
            accepted += 1

    task = asyncio.create_task(source())
    await asyncio.sleep(0.3)  # the buffer is full and the source paused
    task.cancel()  # the engine stops collectors before it closes outputs
    await asyncio.gather(task, return_exceptions=True)
    assert 0 < accepted < 100
    await asyncio.wait_for(runner.close(0.2), 5)
    on_disk = lane.queue.items if buffer == "disk" else 0
    assert dropped(runner, "shutdown") + on_disk == accepted, "every accepted item is on disk or counted"


def counter(runner: OutputRunner, name: str, **labels: str) -> float:
    return runner.telemetry.registry.get_sample_value(name, {"output": "scripted", **labels}) or 0.0


@pytest.mark.parametrize("buffer", ["memory", "disk"])
async def test_an_outage_of_more_than_1100_retries_loses_nothing(tmp_path, buffer) -> None:
    # 1 ms backoff: the 1,025th retry of one batch used to overflow 2.0 ** attempt and lose it
    output = ScriptedOutput([ExportResult.retry("connection refused")] * 1200)
    runner = runner_for(output, tmp_path, buffer=buffer, retry_initial=0.001, retry_max=0.001)
    await runner.start()
    lane = runner.lanes[Signal.METRICS]
    lane.offer(samples(0, 5))
    await wait_for(lambda: output.attempts > 0)
    lane.offer(samples(5, 5))  # queued behind the batch being retried
    await wait_for(lambda: delivered(output) == [float(i) for i in range(10)], timeout=30)
    assert output.attempts == 1202  # the backend came up after 1,200 refusals; each batch once after
    assert counter(runner, "hostwatch_output_retries_total") == 1200
    assert runner.dropped_by_reason == {}
    assert lane.queue.items == 0
    await runner.close(1.0)


class FailingBackoff(Backoff):
    """The lane's backoff with a fault: raises on the calls listed in ``failing`` (1-based, all lanes)."""

    failing: frozenset[int] = frozenset()
    calls = 0

    def next_delay(self, retry_after=None):
        FailingBackoff.calls += 1
        if FailingBackoff.calls in self.failing:
            raise OverflowError("injected")
        return super().next_delay(retry_after)


@pytest.mark.parametrize("buffer", ["memory", "disk"])
async def test_an_exception_in_the_sender_keeps_the_batch(tmp_path, buffer, monkeypatch, caplog) -> None:
    monkeypatch.setattr(FailingBackoff, "failing", frozenset({2}))
    monkeypatch.setattr(FailingBackoff, "calls", 0)
    monkeypatch.setattr(delivery, "Backoff", FailingBackoff)
    output = ScriptedOutput([ExportResult.retry("503")] * 3)
    runner = runner_for(output, tmp_path, buffer=buffer)
    await runner.start()
    lane = runner.lanes[Signal.METRICS]
    lane.offer(samples(0, 3))
    await wait_for(lambda: output.attempts > 0)
    lane.offer(samples(3, 3))
    await wait_for(lambda: delivered(output) == [float(i) for i in range(6)])
    assert counter(runner, "hostwatch_output_errors_total") == 1
    assert runner.dropped_by_reason == {}
    logged = [r for r in caplog.records if "sending a batch raised (a bug)" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # with its traceback
    await runner.close(1.0)


async def test_a_sender_fault_that_repeats_drops_the_batch_as_error_and_the_lane_goes_on(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(FailingBackoff, "failing", frozenset(range(1, 4)))
    monkeypatch.setattr(FailingBackoff, "calls", 0)
    monkeypatch.setattr(delivery, "Backoff", FailingBackoff)
    output = ScriptedOutput([ExportResult.retry("503")] * 3)
    runner = runner_for(output, tmp_path)
    await runner.start()
    lane = runner.lanes[Signal.METRICS]
    lane.offer(samples(0, 3))
    await wait_for(lambda: dropped(runner, "error") == 3)
    assert counter(runner, "hostwatch_output_errors_total") == delivery.ERROR_ATTEMPTS
    lane.offer(samples(3, 2))
    await wait_for(lambda: delivered(output) == [3.0, 4.0])
    assert lane.queue.items == 0
    await runner.close(1.0)


async def test_an_output_that_raises_is_retried_then_dropped_as_error_not_rejected(tmp_path) -> None:
    output = ScriptedOutput([ValueError("encoder bug")] * delivery.ERROR_ATTEMPTS)
    runner = runner_for(output, tmp_path)
    await runner.start()
    lane = runner.lanes[Signal.METRICS]
    lane.offer(samples(0, 4))
    await wait_for(lambda: dropped(runner, "error") == 4)
    assert dropped(runner, "rejected") == 0
    assert output.attempts == delivery.ERROR_ATTEMPTS
    assert counter(runner, "hostwatch_output_requests_total", result="error") == delivery.ERROR_ATTEMPTS
    assert counter(runner, "hostwatch_output_errors_total") == delivery.ERROR_ATTEMPTS
    lane.offer(samples(4, 1))
    await wait_for(lambda: delivered(output) == [4.0])
    await runner.close(1.0)


async def test_an_output_that_raises_once_delivers_on_the_next_try(tmp_path) -> None:
    output = ScriptedOutput([RuntimeError("session closed")])
    runner = runner_for(output, tmp_path)
    await runner.start()
    runner.lanes[Signal.METRICS].offer(samples(0, 2))
    await wait_for(lambda: delivered(output) == [0.0, 1.0])
    assert runner.dropped_by_reason == {}
    await runner.close(1.0)


async def test_a_lane_task_ended_by_an_exception_is_reported_not_silent(tmp_path, monkeypatch, caplog) -> None:
    runner = runner_for(ScriptedOutput(), tmp_path)
    lane = runner.lanes[Signal.METRICS]

    async def escapes(batch):
        raise RuntimeError("escaped every guard")

    monkeypatch.setattr(lane, "_send", escapes)
    await runner.start()
    lane.offer(samples(0, 1))
    await wait_for(lambda: counter(runner, "hostwatch_output_errors_total") == 1)
    assert runner.status()["last_error"] == "the sender:scripted:metrics task raised RuntimeError: escaped every guard"
    assert any("the lane has stopped" in r.getMessage() and r.exc_info for r in caplog.records)
    await runner.close(0.1)
