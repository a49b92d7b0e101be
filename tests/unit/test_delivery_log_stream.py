"""The delivery path under a steady log stream: sizes counted in bulk, each source released once its
lines are queued, the disk buffer handing out what it wrote without reading it back."""

from __future__ import annotations

import asyncio
import random
import time

from agent.buffer import DiskQueue, QueuedBatch, _cache_cost
from agent.delivery import AckToken, item_size, item_sizes
from agent.model import LogRecord, Sample, Signal, labels_from
from tests.unit.test_delivery import ScriptedOutput, runner_for, wait_for


def test_item_sizes_equal_item_size_per_item() -> None:
    rng = random.Random(7)
    labels = [labels_from({"filename": f"/var/log/{i}.log", "job": "app"}) for i in range(3)] + [()]
    records = [
        LogRecord(
            i,
            "x" * rng.randint(0, 300),
            rng.choice(labels),
            "",
            labels_from({"k": "v" * rng.randint(0, 9)}) if rng.random() < 0.2 else (),
        )
        for i in range(3000)
    ]
    for start in range(0, 3000, 337):
        chunk = records[start : start + rng.randint(0, 900)]
        assert item_sizes(chunk) == [item_size(r) for r in chunk]
    samples = [Sample("m", 1.0, "gauge", labels[0], 1)] * 5
    assert item_sizes(samples) == [item_size(s) for s in samples]


def test_item_sizes_of_a_line_from_each_of_many_files_over_many_batches() -> None:
    """Low rates: a batch holds a line of each of many files, each file with its own labels; the label
    sets seen before are sized once, and more of them than are remembered come out right too."""
    files = [labels_from({"filename": f"/var/log/app{i:05d}.log", "job": "app"}) for i in range(9000)]
    for start in range(0, 18000, 250):
        batch = [LogRecord(i, "x" * (i % 200), files[i % 9000]) for i in range(start, start + 250)]
        assert item_sizes(batch) == [item_size(r) for r in batch]


def slow_disk(queue, when) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the queue's appends wait, while ``when()`` holds and until ``release`` is set, as a slow disk
    does: (set once an append waits, release). As on the buffer's thread, an append goes on when the task
    waiting for it is cancelled."""
    put, waiting, release = queue.put, asyncio.Event(), asyncio.Event()

    async def append(batch) -> None:
        if when() and not release.is_set():
            waiting.set()
            await release.wait()
        await put(batch)

    async def slow_put(batch) -> None:
        await asyncio.shield(append(batch))

    queue.put = slow_put
    return waiting, release


async def test_a_steady_stream_releases_each_source_once_its_lines_are_queued(tmp_path) -> None:
    runner = runner_for(ScriptedOutput(), tmp_path, buffer="disk", batch_max_items=500, flush_interval=5.0)
    await runner.start()
    lane = runner.lanes[Signal.LOGS]
    acked: list[int] = []
    for k in range(40):  # 120 lines every 20 ms: a partial rest is pending all the time
        await lane.accept([LogRecord(k * 120 + i, "x") for i in range(120)], AckToken(1, lambda k=k: acked.append(k)))
        await asyncio.sleep(0.02)
    queued = lane.queue.items + sum(len(b) for b in runner.output.received)
    assert all((k + 1) * 120 <= queued for k in acked), "a source was released before its lines were durable"
    assert len(acked) >= 36, "sources must not wait for the pending batch to empty"
    deadline = time.monotonic() + 5.0  # the stream pauses: the rest goes out on its own
    while (sorted(acked) != list(range(40)) or lane.pending) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sorted(acked) == list(range(40)) and not lane.pending
    await runner.close(1.0)


async def test_disk_queue_hands_out_what_it_wrote_without_reading_it_back_and_replays_from_disk(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.LOGS)
    await queue.open()
    written = [
        QueuedBatch(Signal.LOGS, [LogRecord(n * 10 + i, f"line {n}.{i}") for i in range(10)], 100, 1) for n in range(3)
    ]
    for batch in written:
        await queue.put(batch)
    queue._read_sync = None  # any read from disk now fails the test
    assert (await queue.lookahead()).items is written[0].items
    first = await queue.take()
    assert first.items is written[0].items
    await queue.ack()
    assert queue._cache_bytes == sum(map(_cache_cost, queue._index))  # taken batches leave the cache
    await queue.close()
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.LOGS)
    await reopened.open()
    replay = await reopened.take()  # after a restart the records come from disk
    assert replay.items == written[1].items and replay.items is not written[1].items
    await reopened.close()


def lines(start: int, count: int) -> list[LogRecord]:
    return [LogRecord(i, f"line {i}") for i in range(start, start + count)]


async def test_an_idle_log_lane_sends_its_first_lines_at_once_and_fills_the_next_batch_meanwhile(tmp_path) -> None:
    """Adaptive batching: the first lines into an idle lane leave without waiting for a full batch or
    flush_interval; what arrives while they are in flight (a backlog being read) fills full batches."""
    output = ScriptedOutput(delay=0.3)
    runner = runner_for(output, tmp_path, buffer="disk", batch_max_items=1000, flush_interval=5.0)
    await runner.start()
    lane = runner.lanes[Signal.LOGS]
    started = time.monotonic()
    await lane.accept(lines(0, 100), None)
    await wait_for(lambda: output.attempts == 1, timeout=2.0)
    assert time.monotonic() - started < 1.0, "the first lines waited for more"
    for k in range(1, 26):  # a backlog read in rounds while the first request is in flight
        await lane.accept(lines(k * 100, 100), None)
    await wait_for(lambda: sum(map(len, output.received)) >= 2100, timeout=3.0)
    assert [len(b) for b in output.received] == [100, 1000, 1000], "under a backlog the batches stay full"
    await runner.close(1.0)


async def test_a_log_lane_busy_within_flush_interval_keeps_gathering_a_partial_batch(tmp_path) -> None:
    """Low rates keep their one request per flush_interval: lines that come less than flush_interval after
    the last request wait for it with what follows them; after a quiet flush_interval they go at once."""
    output = ScriptedOutput()
    runner = runner_for(output, tmp_path, buffer="disk", batch_max_items=1000, flush_interval=0.6)
    await runner.start()
    lane = runner.lanes[Signal.LOGS]
    await lane.accept(lines(0, 10), None)
    await wait_for(lambda: len(output.received) == 1, timeout=0.4)
    await lane.accept(lines(10, 10), None)  # the lane was idle for less than flush_interval
    await asyncio.sleep(0.2)
    await lane.accept(lines(20, 10), None)
    await asyncio.sleep(0.2)
    assert len(output.received) == 1, "a partial batch went out before flush_interval"
    await wait_for(lambda: len(output.received) == 2, timeout=1.0)
    assert [len(b) for b in output.received] == [10, 20]
    await asyncio.sleep(0.7)  # quiet for longer than flush_interval: the next lines go at once
    await lane.accept(lines(30, 10), None)
    await wait_for(lambda: len(output.received) == 3, timeout=0.4)
    await runner.close(1.0)


async def test_lines_that_come_while_a_sealed_batch_is_being_written_wait_for_the_next_batch(tmp_path) -> None:
    """A batch sealed after flush_interval is not in the queue until its write ends: lines arriving
    meanwhile find the lane busy, not idle, and gather into one batch rather than each going out alone."""
    output = ScriptedOutput()
    runner = runner_for(output, tmp_path, buffer="disk", batch_max_items=1000, flush_interval=0.5)
    await runner.start()
    lane = runner.lanes[Signal.LOGS]
    queue = lane.queue
    writing, release = slow_disk(queue, lambda: len(output.received) == 1)  # the second batch
    await lane.accept(lines(0, 10), None)  # an idle lane: at once
    await wait_for(lambda: len(output.received) == 1)
    await lane.accept(lines(10, 10), None)  # sealed after flush_interval, then written slowly
    await asyncio.wait_for(writing.wait(), 2.0)
    await lane.accept(lines(20, 10), None)  # the lane is busy writing: this waits for more
    await lane.accept(lines(30, 10), None)
    release.set()
    await wait_for(lambda: sum(map(len, output.received)) == 40)
    assert [len(b) for b in output.received] == [10, 10, 20]
    await runner.close(1.0)


async def test_a_backlog_of_half_a_batch_goes_as_soon_as_nothing_is_in_flight(tmp_path) -> None:
    """Lines read while a request is in flight go when it is answered once they make half a full batch,
    rather than wait flush_interval for the rest (the backend would sit idle); so do as many taken at
    once by a lane with nothing in flight. Fewer wait for flush_interval, as at low rates."""
    output = ScriptedOutput(delay=0.3)
    runner = runner_for(output, tmp_path, buffer="disk", batch_max_items=1000, flush_interval=5.0)
    await runner.start()
    lane = runner.lanes[Signal.LOGS]
    await lane.accept(lines(0, 100), None)  # an idle lane: at once
    await wait_for(lambda: output.attempts == 1, timeout=2.0)
    for k in range(1, 7):  # read while that request is in flight: more than half a batch
        await lane.accept(lines(k * 100, 100), None)
    answered = time.monotonic()
    await wait_for(lambda: output.attempts == 2, timeout=2.0)
    assert time.monotonic() - answered < 1.0, "the backlog waited for flush_interval"
    await wait_for(lambda: len(output.received) == 2, timeout=2.0)
    assert [len(b) for b in output.received] == [100, 600]
    await lane.accept(lines(700, 500), None)  # nothing in flight, busy moments ago: half a batch goes at once
    await wait_for(lambda: output.attempts == 3, timeout=1.0)
    await wait_for(lambda: len(output.received) == 3, timeout=2.0)
    await lane.accept(lines(1200, 400), None)  # less than half: gathers for flush_interval
    await asyncio.sleep(0.8)
    assert output.attempts == 3, "a partial batch under half went out before flush_interval"
    assert [len(b) for b in output.received] == [100, 600, 500]
    await runner.close(1.0)


async def past_its_backlog(output: ScriptedOutput, tmp_path) -> tuple:
    """A started runner (batches of 1,000, flush_interval 5 s) and its log lane, which has taken an idle
    lane's first lines (sent at once) and then a full batch: the backlog is taken up."""
    runner = runner_for(output, tmp_path, buffer="disk", batch_max_items=1000, flush_interval=5.0)
    await runner.start()
    lane = runner.lanes[Signal.LOGS]
    await lane.accept(lines(0, 100), None)  # an idle lane: at once
    await wait_for(lambda: len(output.received) == 1)
    await lane.accept(lines(100, 1000), None)  # a full batch: the backlog is taken up
    return runner, lane


async def test_once_its_backlog_is_taken_up_a_log_lane_waits_for_full_batches_again(tmp_path) -> None:
    """Half batches go at once only while an idle lane takes up a backlog (until its first full batch): a
    steady stream slower than the backend takes it in afterwards still fills full batches, not half ones."""
    output = ScriptedOutput(delay=0.05)
    runner, lane = await past_its_backlog(output, tmp_path)
    for k in range(30):  # then 2,500 lines/s, slower than the backend takes them (1,000 in 50 ms)
        await lane.accept(lines(1100 + k * 100, 100), None)
        await asyncio.sleep(0.04)
    await wait_for(lambda: sum(map(len, output.received)) == 4100, timeout=2.0)
    assert [len(b) for b in output.received] == [100, 1000, 1000, 1000, 1000]
    await runner.close(1.0)


async def test_lines_handed_over_with_flush_go_at_once_after_the_backlog_is_taken_up(tmp_path) -> None:
    """The logs collector hands the round that reads a backlog to its end over with ``flush``: its lines,
    fewer than half a batch, go at once, not after flush_interval, also once the lane waits for full
    batches again (a full batch went before them); without the flush the same lines wait."""
    output = ScriptedOutput()
    runner, lane = await past_its_backlog(output, tmp_path)
    await wait_for(lambda: len(output.received) == 2)
    await lane.accept(lines(1100, 300), None)  # less than half a batch: waits for more
    await asyncio.sleep(0.5)
    assert len(output.received) == 2
    await lane.accept(lines(1400, 100), None, flush=True)  # the end of the backlog: everything pending goes
    await wait_for(lambda: len(output.received) == 3, timeout=1.0)
    assert [len(b) for b in output.received] == [100, 1000, 400]
    await runner.close(1.0)


async def test_a_batch_being_appended_when_shutdown_cancels_the_batcher_is_queued_not_lost(tmp_path) -> None:
    """Shutdown cancels the batcher (the lane's drain) while a sealed batch's disk append runs on the buffer's
    thread, which a cancelled wait does not stop: the batch is still queued and sent, and its sources are
    acknowledged before the next batch's. Lost, a later acknowledgement would move the checkpoint past it."""
    output = ScriptedOutput()
    runner = runner_for(output, tmp_path, buffer="disk", batch_max_items=10, flush_interval=5.0)
    await runner.start()
    lane = runner.lanes[Signal.LOGS]
    queue = lane.queue
    appending, release = slow_disk(queue, lambda: True)  # the first batch
    acked: list[str] = []
    await lane.accept(lines(0, 10), AckToken(1, lambda: acked.append("first")))  # a full batch: sealed now
    await asyncio.wait_for(appending.wait(), 2.0)
    await lane.accept(lines(10, 5), AckToken(1, lambda: acked.append("second")))  # pending at shutdown
    asyncio.get_running_loop().call_later(0.2, release.set)
    await runner.close(5.0)
    assert acked == ["first", "second"]
    assert [r.body for b in output.received for r in b] == [r.body for r in lines(0, 15)]
