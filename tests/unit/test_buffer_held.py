"""A disk buffer's ``write_delay``: replayable batches held in memory until delivered or due.

A batch whose every item came with an acknowledgement token (a log file's lines, which the file
keeps until its checkpoint moves) is held unwritten for ``write_delay``; delivered by then, it is
never written. Whatever happens to it, its sources are told in the order the batches were put, and
only once it is on disk, delivered or dropped, so no checkpoint passes lines that are only in memory.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import shutil
import threading

from agent.buffer import DiskQueue, QueuedBatch
from agent.model import LogRecord, Signal
from agent.pending import AckToken, PendingItems
from agent.plugin import ExportResult
from tests.unit.test_delivery import ScriptedOutput, dropped, runner_for, wait_for

DELAY = 0.2
_copies = itertools.count()


class Told:
    """Tokens that record, in order, which batch's sources were told."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def token(self, name: str) -> AckToken:
        return AckToken(1, lambda: self.order.append(name))


def batch(first: int, told: Told | None = None, name: str = "", *, replayable: bool = True) -> QueuedBatch:
    records = [LogRecord(first + i, f"line {first + i}") for i in range(5)]
    tokens = [told.token(name)] if told is not None else []
    return QueuedBatch(Signal.LOGS, records, 5 * 40, first, tokens, replayable=replayable)


def queue_at(path, **options) -> DiskQueue:
    return DiskQueue(path, 10_000_000, signal=Signal.LOGS, **options)


async def replayed(path) -> list[int]:
    """The records a restart would find on disk now, read from a copy (the queue is left as a crash
    would leave it, and the directory as it was)."""
    copy = path.parent / f"{path.name}-copy{next(_copies)}"
    shutil.copytree(path, copy)
    reopened = queue_at(copy)
    await reopened.open()
    times = []
    while reopened.items:
        taken = await asyncio.wait_for(reopened.take(), 5)
        times += [r.time_ns for r in taken.items]
        await reopened.ack()
    await reopened.close()
    return times


async def one_in_flight(path, told: Told) -> DiskQueue:
    """A queue (write_delay 5 s) whose batch "a" (times 0-4) is handed out and in flight, unwritten."""
    queue = queue_at(path, write_delay=5.0)
    await queue.open()
    await queue.put(batch(0, told, "a"))
    await queue.take()
    return queue


def written_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.seg"))


async def test_a_replayable_batch_delivered_within_the_delay_is_never_written(tmp_path) -> None:
    told = Told()
    queue = queue_at(tmp_path, write_delay=5.0)
    await queue.open()
    await queue.put(batch(0, told, "a"))
    assert queue.items == 5 and told.order == []  # held: its file still has the lines
    taken = await queue.take()
    assert [r.time_ns for r in taken.items] == [0, 1, 2, 3, 4]
    assert told.order == []
    await queue.ack()
    assert told.order == ["a"] and queue.items == 0 and queue.bytes == 0
    assert written_bytes(tmp_path) == 0
    await queue.close()
    assert written_bytes(tmp_path) == 0
    assert await replayed(tmp_path) == []


async def test_a_held_batch_not_delivered_within_the_delay_is_written_and_its_sources_told(tmp_path) -> None:
    told = Told()
    queue = queue_at(tmp_path, write_delay=DELAY)
    await queue.open()
    await queue.put(batch(0, told, "a"))
    await asyncio.sleep(DELAY / 4)
    assert told.order == [] and written_bytes(tmp_path) == 0
    await asyncio.sleep(DELAY * 2)
    assert told.order == ["a"]
    assert written_bytes(tmp_path) > 0
    # a crash now (no close): the record is there for the next start
    assert await replayed(tmp_path) == [0, 1, 2, 3, 4]


async def test_a_batch_in_flight_past_the_delay_is_written_first_and_its_ack_retires_it(tmp_path) -> None:
    told = Told()
    queue = queue_at(tmp_path, write_delay=DELAY)
    await queue.open()
    await queue.put(batch(0, told, "a"))
    await queue.put(batch(10, told, "b"))
    taken = await queue.take()  # a slow backend: the request outlasts the delay
    await asyncio.sleep(DELAY * 2.5)
    assert told.order == ["a", "b"]
    assert queue.items == 10
    assert await replayed(tmp_path) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]  # a crash now sends both again
    assert taken.items[0].time_ns == 0
    await queue.ack()  # delivered at last
    assert queue.items == 5
    await queue.close()
    assert await replayed(tmp_path) == [10, 11, 12, 13, 14]


async def test_a_batch_in_flight_is_written_at_its_own_deadline_not_at_an_older_ones(tmp_path) -> None:
    told, delay = Told(), 0.5
    queue = queue_at(tmp_path, write_delay=delay)
    await queue.open()
    await queue.put(batch(0, told, "a"))  # the timer is set for a's deadline
    await asyncio.sleep(delay * 0.6)
    await queue.put(batch(10, told, "b"))
    await queue.take()
    await queue.ack()
    await queue.take()  # b in flight, due 0.6 delays after a
    await asyncio.sleep(delay * 0.7)  # a's deadline passed
    assert told.order == ["a"] and written_bytes(tmp_path) == 0
    await asyncio.sleep(delay * 0.8)  # b's passed
    assert told.order == ["a", "b"] and written_bytes(tmp_path) > 0
    await queue.ack()
    await queue.close()
    assert await replayed(tmp_path) == []


async def test_a_batch_that_must_be_written_goes_after_the_held_ones(tmp_path) -> None:
    told = Told()
    queue = await one_in_flight(tmp_path, told)
    await queue.put(batch(10, told, "b"))
    assert told.order == []
    await queue.put(batch(20, told, "c", replayable=False))  # no source could send it again
    assert told.order == ["a", "b", "c"]
    assert await replayed(tmp_path) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24]
    await queue.ack()
    assert [r.time_ns for r in (await queue.take()).items] == [10, 11, 12, 13, 14]
    await queue.ack()
    await queue.close()
    assert await replayed(tmp_path) == [20, 21, 22, 23, 24]


async def test_without_a_delay_every_batch_is_written_before_it_is_sent(tmp_path) -> None:
    told = Told()
    queue = queue_at(tmp_path)
    await queue.open()
    await queue.put(batch(0, told, "a"))
    assert told.order == ["a"] and written_bytes(tmp_path) > 0
    await queue.close()


async def test_a_batch_that_does_not_fit_the_memory_bound_is_written_after_the_held_one(tmp_path) -> None:
    told = Told()
    one = batch(0)
    queue = queue_at(tmp_path, write_delay=5.0, cache_bytes=one.nbytes + 144 * 5)
    await queue.open()
    await queue.put(batch(0, told, "a"))
    assert told.order == []
    await queue.put(batch(10, told, "b"))
    assert told.order == ["a", "b"]
    assert await replayed(tmp_path) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    await queue.close()


async def test_close_writes_what_is_held_and_what_was_in_flight(tmp_path) -> None:
    told = Told()
    queue = await one_in_flight(tmp_path, told)  # shutdown cuts its request short
    await queue.put(batch(10, told, "b"))
    await queue.close()
    assert told.order == ["a", "b"]
    assert await replayed(tmp_path) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]


async def test_a_held_batch_dropped_for_room_tells_its_sources_after_the_one_in_flight(tmp_path) -> None:
    told = Told()
    queue = await one_in_flight(tmp_path, told)
    await queue.put(batch(10, told, "b"))
    dropped = queue.drop_oldest()
    assert dropped is not None and dropped.count == 5 and dropped.tokens == []
    assert told.order == []  # "a" is still only in memory, in flight
    assert queue.items == 5
    await queue.ack()
    assert told.order == ["a", "b"]
    assert queue.items == 0 and queue.bytes == 0
    await queue.close()
    assert await replayed(tmp_path) == []


async def test_a_batch_delivered_while_it_is_being_written_is_not_sent_again(tmp_path) -> None:
    told = Told()
    queue = await one_in_flight(tmp_path, told)
    gate = threading.Event()
    blocked = asyncio.ensure_future(queue._worker.run(gate.wait))  # the disk is slow: the write waits
    await asyncio.sleep(0.05)
    put = asyncio.ensure_future(queue.put(batch(10, told, "b", replayable=False)))
    await asyncio.sleep(0.05)
    assert not put.done()
    await queue.ack()  # "a" delivered while its record waits to be written
    assert told.order == ["a"]
    gate.set()
    await blocked
    await put
    assert told.order == ["a", "b"]
    assert queue.items == 5
    await queue.close()
    assert await replayed(tmp_path) == [10, 11, 12, 13, 14]


async def test_sources_are_told_in_the_order_put_whatever_resolves_first(tmp_path) -> None:
    """A batch written (over the bound) while an older one is in flight unwritten waits for it."""
    told = Told()
    one = batch(0)
    queue = queue_at(tmp_path, write_delay=5.0, cache_bytes=2 * (one.nbytes + 144 * 5))
    await queue.open()
    await queue.put(batch(0, told, "a"))
    await queue.put(batch(10, told, "b"))
    await queue.take()
    await queue.ack()
    assert told.order == ["a"]
    await queue.take()  # "b" in flight, unwritten
    await queue.put(batch(20, told, "c"))  # held
    await queue.put(batch(30, told, "d"))  # over the bound: b and c are written first, then d
    assert told.order == ["a", "b", "c", "d"]
    await queue.close()


def test_a_batch_is_replayable_only_when_every_item_came_with_a_token() -> None:
    pending = PendingItems()
    records = [LogRecord(i, "x") for i in range(6)]
    pending.add(records[:2], [10, 10], AckToken(1, lambda: None))
    pending.add(records[2:4], [10, 10], None)  # a source that cannot send them again
    pending.add(records[4:], [10, 10], AckToken(1, lambda: None))
    first = pending.cut(2, 1000)
    second = pending.cut(2, 1000)
    third = pending.cut(2, 1000)
    # conservative: the batch before the bare items is not counted replayable either
    assert [first[3], second[3], third[3]] == [False, False, True]
    pending.put_back(second[0], 20, second[2], second[3])
    assert pending.cut(2, 1000)[3] is False
    pending.add(records[:1], [10], AckToken(1, lambda: None))
    assert pending.cut(10, 1000)[3] is True


# ------------------------------------------------------------------ through a lane


async def test_a_lane_delivers_log_lines_with_tokens_without_writing_them(tmp_path) -> None:
    output = ScriptedOutput()
    runner = runner_for(output, tmp_path, buffer="disk", flush_interval=0.01)
    await runner.start()
    told = Told()
    lane = runner.lanes[Signal.LOGS]
    for k in range(5):
        await lane.accept([LogRecord(k * 10 + i, f"line {k}.{i}") for i in range(10)], told.token(str(k)))
        await asyncio.sleep(0.03)
    await wait_for(lambda: len(told.order) == 5)
    assert told.order == ["0", "1", "2", "3", "4"]
    assert [r.time_ns for b in output.received for r in b] == list(range(50))
    assert sum(p.stat().st_size for p in tmp_path.rglob("*.seg")) == 0
    await runner.close(1.0)


async def test_a_lane_writes_what_its_backend_has_not_taken_within_the_delay(tmp_path) -> None:
    output = ScriptedOutput([ExportResult.retry("down")] * 1000)
    runner = runner_for(output, tmp_path, buffer="disk", buffer_write_delay=0.1, retry_initial=0.02)
    await runner.start()
    told = Told()
    lane = runner.lanes[Signal.LOGS]
    await lane.accept([LogRecord(i, "x") for i in range(10)], told.token("a"))
    await wait_for(lambda: told.order == ["a"])
    assert output.received == []
    assert sum(p.stat().st_size for p in tmp_path.rglob("*.seg")) > 0
    output.script.clear()
    await wait_for(lambda: output.received)
    assert [r.time_ns for r in output.received[0]] == list(range(10))
    await runner.close(1.0)


async def test_a_source_waiting_for_its_answer_has_its_batch_written_at_once(tmp_path) -> None:
    output = ScriptedOutput(delay=0.5)  # a slow backend: the answer must not wait for it
    runner = runner_for(output, tmp_path, buffer="disk", buffer_write_delay=5.0)
    await runner.start()
    told = Told()
    await runner.lanes[Signal.LOGS].accept([LogRecord(1, "x")], told.token("a"), flush=True)
    await wait_for(lambda: told.order == ["a"], timeout=0.4)
    await runner.close(1.0)


async def test_held_lines_the_disk_refuses_at_shutdown_are_counted_as_dropped(tmp_path) -> None:
    output = ScriptedOutput([ExportResult.retry("down")] * 1000)
    runner = runner_for(output, tmp_path, buffer="disk", buffer_write_delay=5.0)
    await runner.start()
    told = Told()
    lane = runner.lanes[Signal.LOGS]
    await lane.accept([LogRecord(i, "x") for i in range(10)], told.token("a"))
    await wait_for(lambda: output.attempts > 0)  # in flight, held
    await lane.accept([LogRecord(10 + i, "y") for i in range(5)], told.token("b"))
    await wait_for(lambda: lane.queue.items == 15)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    lane.queue._append_sync = full
    await runner.close(0.1)
    assert dropped(runner, "shutdown") == 15
    assert told.order == ["a", "b"]  # counted, so their sources move on
    assert lane.queue.items == 0


async def test_a_held_batch_in_flight_on_a_full_disk_takes_the_space_of_what_was_delivered(tmp_path) -> None:
    """A write that fails while every record on disk is delivered deletes the delivered segment and
    tries again: a held batch in flight is not on disk, so it does not stand in the way."""
    told, errors = Told(), []
    queue = queue_at(tmp_path, write_delay=DELAY, on_write_error=errors.append)
    await queue.open()
    await queue.put(batch(0, told, "a", replayable=False))
    await queue.take()
    await queue.ack()  # delivered: its segment holds nothing to send
    await queue.put(batch(10, told, "b"))
    await queue.take()  # in flight, held
    append, refused = queue._append_sync, []

    def full_once(*args):
        if not refused:
            refused.append(True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return append(*args)

    queue._append_sync = full_once
    await asyncio.sleep(DELAY * 2.5)
    assert refused and errors == []
    assert told.order == ["a", "b"]
    assert await replayed(tmp_path) == [10, 11, 12, 13, 14]
    await queue.ack()
    await queue.close()


async def test_close_ends_the_retry_of_a_write_the_disk_refused(tmp_path) -> None:
    told, errors = Told(), []
    queue = queue_at(tmp_path, write_delay=0.05, on_write_error=errors.append)
    await queue.open()

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    queue._append_sync = full
    await queue.put(batch(0, told, "a"))
    await asyncio.sleep(0.2)  # due, refused: the write is tried again a second later
    assert [e.errno for e in errors] == [errno.ENOSPC]
    await queue.close()
    assert [b.items[0].time_ns for b in queue.pending()] == [0]  # the lane counts it as dropped
    await asyncio.sleep(0)
    assert queue._spilling.done(), "the retry outlives the queue (a pending task at exit)"
