"""Disk and memory queues: order, replay after restart, torn tails, corruption, segment rolling."""

from __future__ import annotations

import os

import pytest

from agent.buffer import Batch, DiskQueue, MemoryQueue
from agent.model import LogRecord, Sample, Signal


def sample_batch(start: int, count: int = 10) -> Batch:
    items = [
        Sample("seq", float(i), "gauge", (("n", str(i)),), 1_700_000_000_000_000_000 + i)
        for i in range(start, start + count)
    ]
    return Batch(Signal.METRICS, items, 100 * count, 1_700_000_000_000_000_000)


async def drain(queue, limit: int = 1000) -> list[float]:
    values = []
    while queue.items and limit:
        batch = await queue.take()
        values.extend(item.value for item in batch.items)
        await queue.ack()
        limit -= 1
    return values


async def test_disk_queue_keeps_order_across_restart(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS, segment_bytes=512)
    await queue.open()
    for start in range(0, 100, 10):
        await queue.put(sample_batch(start))
    first = await queue.take()
    await queue.ack()
    await queue.close()
    assert len(list(tmp_path.glob("*.seg"))) > 2, "small segments should roll"

    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS, segment_bytes=512)
    await reopened.open()
    assert reopened.items == 90
    assert [i.value for i in first.items] == [float(i) for i in range(10)]
    assert await drain(reopened) == [float(i) for i in range(10, 100)]
    await reopened.close()
    # every retired segment is gone but the one being written
    assert len(list(tmp_path.glob("*.seg"))) <= 1


async def test_unacked_batch_is_replayed_after_a_crash(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    await queue.put(sample_batch(0))
    await queue.put(sample_batch(10))
    await queue.take()  # in flight when the process "dies": no ack, no close
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await reopened.open()
    assert await drain(reopened) == [float(i) for i in range(20)]


async def test_torn_tail_is_cut_and_counted(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    for start in (0, 10, 20):
        await queue.put(sample_batch(start))
    await queue.close()
    (segment,) = tmp_path.glob("*.seg")
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 7)  # kill -9 in the middle of the last write
    corrupt = []
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS, on_corrupt=corrupt.append)
    await reopened.open()
    assert corrupt == [1]
    await reopened.put(sample_batch(30))  # appends after the last intact record
    assert await drain(reopened) == [float(i) for i in range(20)] + [float(i) for i in range(30, 40)]


async def test_flipped_bytes_cost_only_the_damaged_record(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    for start in (0, 10, 20):
        await queue.put(sample_batch(start))
    await queue.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    record = len(data) // 3
    data[record + record // 2] ^= 0xFF  # inside the second record's payload
    segment.write_bytes(bytes(data))
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await reopened.open()
    assert reopened.corrupt_records == 1
    assert await drain(reopened) == [float(i) for i in range(10)] + [float(i) for i in range(20, 30)]


async def test_write_error_leaves_the_segment_valid(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.LOGS)
    await queue.open()
    logs = Batch(Signal.LOGS, [LogRecord(1, "a"), LogRecord(2, "b")], 50, 1)
    await queue.put(logs)
    write_all = queue._write_all

    def half_then_enospc(data: bytes) -> None:  # a disk that fills in the middle of a record
        write_all(data[: len(data) // 2])
        raise OSError(28, os.strerror(28))

    queue._write_all = half_then_enospc
    with pytest.raises(OSError):
        await queue.put(Batch(Signal.LOGS, [LogRecord(3, "c")], 50, 3))
    queue._write_all = write_all
    await queue.put(Batch(Signal.LOGS, [LogRecord(4, "d")], 50, 4))
    await queue.close()
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.LOGS)
    await reopened.open()
    assert reopened.corrupt_records == 0
    bodies = []
    while reopened.items:
        batch = await reopened.take()
        bodies += [r.body for r in batch.items]
        await reopened.ack()
    assert bodies == ["a", "b", "d"]


async def test_memory_queue_drop_oldest_and_capacity() -> None:
    queue = MemoryQueue(capacity=250)
    await queue.put(sample_batch(0, 1))
    await queue.put(sample_batch(1, 1))
    assert not queue.has_room(100)
    dropped = queue.drop_oldest()
    assert [i.value for i in dropped.items] == [0.0]
    assert queue.has_room(100)
    assert await drain(queue) == [1.0]
