"""Disk and memory queues: order, replay after restart, torn tails, corruption, segment rolling,
a full disk, and odd things in the buffer directory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import shutil
import subprocess
import threading
import tracemalloc
from pathlib import Path

import pytest

from agent.buffer import BufferUnavailable, DiskQueue, MemoryQueue, QueuedBatch
from agent.model import LogRecord, Sample, Signal


def sample_batch(start: int, count: int = 10) -> QueuedBatch:
    items = [
        Sample("seq", float(i), "gauge", (("n", str(i)),), 1_700_000_000_000_000_000 + i)
        for i in range(start, start + count)
    ]
    return QueuedBatch(Signal.METRICS, items, 100 * count, 1_700_000_000_000_000_000)


async def drain(queue, limit: int = 1000) -> list[float]:
    values = []
    while queue.items and limit:
        batch = await asyncio.wait_for(queue.take(), 5)  # a record lost while counted as queued hangs take
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


async def test_an_ack_whose_sender_is_cancelled_at_shutdown_still_saves_the_position(tmp_path) -> None:
    """Shutdown cancels the sender while its ack waits for the read position to be saved (the lane's
    drain sees the queue empty as soon as the ack counts the batch out). The worker skips a job whose
    future was cancelled, so the save must not hang on the sender's own wait: a skipped save sent the
    last batch again after every clean restart that hit it (500 duplicates in the restart e2e test)."""
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    await queue.put(sample_batch(0))
    await queue.put(sample_batch(10))
    await queue.take()
    release = threading.Event()
    held = queue._worker.run(release.wait)  # the worker thread not free yet (a busy machine)
    ack = asyncio.create_task(queue.ack())
    await asyncio.sleep(0.05)
    ack.cancel()  # the lane's close() cancelling the sender
    with contextlib.suppress(asyncio.CancelledError):
        await ack
    release.set()
    await held
    await queue.close()
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await reopened.open()
    assert await drain(reopened) == [float(i) for i in range(10, 20)], "the delivered batch came back"
    await reopened.close()


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
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS, on_corrupt=lambda *c: corrupt.append(c))
    await reopened.open()
    assert corrupt == [(1, 10)], "one record, its 10 items read from its intact header"
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
    assert reopened.corrupt_items == 10
    assert await drain(reopened) == [float(i) for i in range(10)] + [float(i) for i in range(20, 30)]


async def test_write_error_leaves_the_segment_valid(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.LOGS)
    await queue.open()
    logs = QueuedBatch(Signal.LOGS, [LogRecord(1, "a"), LogRecord(2, "b")], 50, 1)
    await queue.put(logs)
    write_all = queue._write_all

    def half_then_enospc(*chunks: bytes) -> None:  # a disk that fills in the middle of a record
        data = b"".join(chunks)
        write_all(data[: len(data) // 2])
        raise OSError(28, os.strerror(28))

    queue._write_all = half_then_enospc
    with pytest.raises(OSError):
        await queue.put(QueuedBatch(Signal.LOGS, [LogRecord(3, "c")], 50, 3))
    queue._write_all = write_all
    await queue.put(QueuedBatch(Signal.LOGS, [LogRecord(4, "d")], 50, 4))
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


async def test_an_ack_does_not_wait_for_an_append_in_progress_and_its_position_is_still_saved(tmp_path) -> None:
    """The sender goes on with the next batch while a write (and its fsync) holds the buffer's thread:
    the read position is saved right after that write, before the queue closes."""
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    await queue.put(sample_batch(0))
    await queue.put(sample_batch(10))
    first = await queue.take()
    release = threading.Event()
    append = queue._append_sync
    queue._append_sync = lambda *args: (release.wait(10), append(*args))[1]  # a slow disk
    writing = asyncio.create_task(queue.put(sample_batch(20)))
    await asyncio.sleep(0.05)  # the append holds the worker
    try:
        await asyncio.wait_for(queue.ack(), 2)
        second = await asyncio.wait_for(queue.take(), 2)  # handed out from memory meanwhile
    finally:
        release.set()
    await writing
    await queue.ack()
    await queue.close()
    assert [i.value for i in first.items + second.items] == [float(i) for i in range(20)]
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await reopened.open()
    assert await drain(reopened) == [float(i) for i in range(20, 30)], "the acknowledged batches are not sent again"
    await reopened.close()


async def test_an_ack_with_the_next_batch_queued_does_not_wait_for_its_save(tmp_path) -> None:
    """A save that deletes a delivered segment takes milliseconds: with the next batch queued the sender
    goes on meanwhile (the saves run in order on the buffer's thread); the ack that empties the queue
    waits for its own, and a restart sends nothing acknowledged again."""
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    for start in (0, 10, 20):
        await queue.put(sample_batch(start))
    release = threading.Event()
    commit = queue._commit_sync
    queue._commit_sync = lambda *args: (release.wait(10), commit(*args))[1]  # a slow save
    taken = [await queue.take()]
    try:
        await asyncio.wait_for(queue.ack(), 2)  # with main, waited for the save until release
        taken.append(await asyncio.wait_for(queue.take(), 2))
        await asyncio.wait_for(queue.ack(), 2)
        taken.append(await asyncio.wait_for(queue.take(), 2))
        last = asyncio.create_task(queue.ack())  # the queue is empty now: this one waits for the saves
        await asyncio.sleep(0.05)
        assert not last.done(), "the ack that empties the queue returned before its save"
    finally:
        release.set()
    await last
    await queue.close()
    assert [i.value for b in taken for i in b.items] == [float(i) for i in range(30)]
    reopened = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await reopened.open()
    assert await drain(reopened) == [], "the acknowledged batches are not sent again"
    await reopened.close()


async def test_memory_queue_drop_oldest_and_capacity() -> None:
    queue = MemoryQueue(capacity=250)
    await queue.put(sample_batch(0, 1))
    await queue.put(sample_batch(1, 1))
    assert not queue.has_room(100)
    dropped = queue.drop_oldest()
    assert [i.value for i in dropped.items] == [0.0]
    assert queue.has_room(100)
    assert await drain(queue) == [1.0]


# ------------------------------------------------------------ a full disk (issue 10, item 2)


class SmallDisk(DiskQueue):
    """A disk queue on a file system of ``disk_bytes``: a write that does not fit fails with ENOSPC."""

    disk_bytes = 4096

    def _write_all(self, *chunks: bytes) -> None:
        used = sum(p.stat().st_size for p in self.directory.glob("*.seg"))
        if used + sum(map(len, chunks)) > self.disk_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._write_all(*chunks)


async def fill(queue: DiskQueue, start: int = 0) -> int:
    """Put batches of 10 until the disk refuses one; the next number not written."""
    while True:
        try:
            await queue.put(sample_batch(start))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return start
        start += 10


async def test_a_full_disk_gives_back_the_delivered_write_segment(tmp_path) -> None:
    queue = SmallDisk(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    written = await fill(queue)
    assert written >= 20 and len(list(tmp_path.glob("*.seg"))) == 1
    assert await drain(queue) == [float(i) for i in range(written)]
    await queue.put(sample_batch(written))  # the delivered write segment makes room
    assert await drain(queue) == [float(i) for i in range(written, written + 10)]
    await queue.close()


async def test_after_a_full_disk_writes_go_on_while_a_batch_is_in_flight(tmp_path) -> None:
    queue = SmallDisk(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    written = await fill(queue)
    await drain(queue)
    for start in range(written, written + 2000, 20):  # the receiver keeps up again
        await queue.put(sample_batch(start))
        in_flight = await asyncio.wait_for(queue.take(), 5)
        await queue.put(sample_batch(start + 10))  # not drained now: this write needs free space
        await queue.ack()
        assert [i.value for i in in_flight.items] + await drain(queue) == [float(start + i) for i in range(20)]
    await queue.close()


async def test_a_full_disk_delivered_before_a_restart_is_given_back_at_start(tmp_path) -> None:
    queue = SmallDisk(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    written = await fill(queue)
    await drain(queue)
    await queue.close()
    reopened = SmallDisk(tmp_path, 10_000_000, signal=Signal.METRICS)
    await reopened.open()
    await reopened.put(sample_batch(1000))
    assert await drain(reopened) == [float(i) for i in range(1000, 1010)]
    assert written


async def test_a_replay_that_filled_the_disk_is_deleted_once_delivered(tmp_path) -> None:
    queue = SmallDisk(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    written = await fill(queue)
    await queue.close()  # a restart with the disk full of undelivered batches
    reopened = SmallDisk(tmp_path, 10_000_000, signal=Signal.METRICS)
    await reopened.open()
    with pytest.raises(OSError):
        await reopened.put(sample_batch(1000))  # still full: this one is counted by the lane
    assert await drain(reopened) == [float(i) for i in range(written)]
    await reopened.put(sample_batch(2000))
    assert await drain(reopened) == [float(i) for i in range(2000, 2010)]
    await reopened.close()


async def test_delivered_segments_are_deleted_even_when_the_cursor_cannot_be_saved(
    tmp_path, caplog, monkeypatch
) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:  # the cursor's first write needs a block
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS, segment_bytes=512)
    await queue.open()
    for start in range(0, 100, 10):
        await queue.put(sample_batch(start))
    assert len(list(tmp_path.glob("*.seg"))) > 3
    assert await drain(queue) == [float(i) for i in range(100)]
    assert len(list(tmp_path.glob("*.seg"))) <= 1, "delivered segments keep no space"
    assert caplog.text.count("cannot save the read position") == 1
    await queue.close()


async def test_a_torn_write_that_cannot_be_cut_moves_to_a_new_segment(tmp_path, monkeypatch) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.LOGS, cache_bytes=0)  # read back from the disk
    await queue.open()
    await queue.put(QueuedBatch(Signal.LOGS, [LogRecord(1, "a")], 50, 1))
    write_all = queue._write_all

    def half_then_eio(*chunks: bytes) -> None:
        data = b"".join(chunks)
        write_all(data[: len(data) // 2])
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    queue._write_all = half_then_eio
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(OSError):
        await queue.put(QueuedBatch(Signal.LOGS, [LogRecord(2, "b")], 50, 2))
    monkeypatch.undo()
    queue._write_all = write_all
    await queue.put(QueuedBatch(Signal.LOGS, [LogRecord(3, "c")], 50, 3))
    bodies = []
    while queue.items:
        bodies += [r.body for r in (await asyncio.wait_for(queue.take(), 5)).items]
        await queue.ack()
    assert bodies == ["a", "c"]
    assert queue.corrupt_records == 0, "the record after the torn bytes is read where it is"
    await queue.close()


# ------------------------------------------------- damage accounting (issue 10, item 6)


async def written_segment(tmp_path, batches: int = 3, **kwargs) -> Path:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS, **kwargs)
    await queue.open()
    for start in range(0, 10 * batches, 10):
        await queue.put(sample_batch(start))
    await queue.close()
    (segment,) = [p for p in tmp_path.glob("*.seg") if p.stat().st_size]
    return segment


async def reopen(tmp_path) -> tuple[DiskQueue, list[tuple[int, int]]]:
    corrupt: list[tuple[int, int]] = []
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS, on_corrupt=lambda *c: corrupt.append(c))
    await asyncio.wait_for(queue.open(), 5)
    return queue, corrupt


async def test_a_damaged_header_is_estimated_from_the_intact_records(tmp_path) -> None:
    segment = await written_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    record = len(data) // 3
    data[record] ^= 0xFF  # the second record's magic: its item count cannot be trusted
    segment.write_bytes(bytes(data))
    queue, corrupt = await reopen(tmp_path)
    assert corrupt == [(1, 10)], "its bytes at the intact records' size per item"
    assert await drain(queue) == [float(i) for i in range(10)] + [float(i) for i in range(20, 30)]


async def test_a_tail_torn_inside_the_header_counts_at_least_one_item(tmp_path) -> None:
    segment = await written_segment(tmp_path)
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - size // 3 + 10)  # 10 bytes of the third record's header are left
    queue, corrupt = await reopen(tmp_path)
    assert corrupt == [(1, 1)]
    assert await drain(queue) == [float(i) for i in range(20)]


async def test_two_adjacent_damaged_records_count_their_items(tmp_path) -> None:
    segment = await written_segment(tmp_path, batches=4)
    data = bytearray(segment.read_bytes())
    record = len(data) // 4
    data[record + record // 2] ^= 0xFF
    data[2 * record + record // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    queue, corrupt = await reopen(tmp_path)
    assert corrupt == [(2, 20)]
    assert await drain(queue) == [float(i) for i in range(10)] + [float(i) for i in range(30, 40)]


async def test_a_record_unreadable_at_run_time_counts_its_items(tmp_path) -> None:
    corrupt: list[tuple[int, int]] = []
    queue = DiskQueue(
        tmp_path, 10_000_000, signal=Signal.METRICS, cache_bytes=0, on_corrupt=lambda *c: corrupt.append(c)
    )
    await queue.open()
    await queue.put(sample_batch(0))
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF
    segment.write_bytes(bytes(data))
    await queue.put(sample_batch(10))
    assert await drain(queue) == [float(i) for i in range(10, 20)]
    assert corrupt == [(1, 10)]
    await queue.close()


class OutOfDescriptorsOnce(DiskQueue):
    failed = False

    def _read_sync(self, ref):
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return super()._read_sync(ref)


async def test_running_out_of_file_descriptors_loses_no_record(tmp_path) -> None:
    queue = OutOfDescriptorsOnce(tmp_path, 10_000_000, signal=Signal.METRICS, cache_bytes=0)
    await queue.open()
    await queue.put(sample_batch(0))
    assert await drain(queue) == [float(i) for i in range(10)]
    assert queue.failed and queue.corrupt_records == 0
    await queue.close()


# -------------------------------------------- odd things in the buffer directory


async def two_segments(tmp_path) -> list[Path]:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS, segment_bytes=512)
    await queue.open()
    for start in range(0, 60, 10):
        await queue.put(sample_batch(start))
    await queue.close()
    return sorted(p for p in tmp_path.glob("*.seg") if p.stat().st_size)


async def test_a_segment_replaced_by_a_directory_is_set_aside_and_counted(tmp_path, caplog) -> None:
    segments = await two_segments(tmp_path)
    first = segments[0]
    first.unlink()
    first.mkdir()
    (first / "x").write_text("not a segment")
    queue, corrupt = await reopen(tmp_path)
    assert corrupt == [(1, 1)], "one record of unknown size: counted as one item"
    assert first.with_name(first.name + ".corrupt").is_dir()
    values = await drain(queue)
    assert values and values == sorted(values) and 0.0 not in values
    assert "cannot be read" in caplog.text
    await queue.put(sample_batch(100))  # and it writes on
    assert await drain(queue) == [float(i) for i in range(100, 110)]


async def test_an_unreadable_segment_is_estimated_from_its_size(tmp_path, monkeypatch) -> None:
    segments = await two_segments(tmp_path)
    import agent.segment_files

    real = agent.segment_files.read_regular

    def denied(path):
        if path == segments[0]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(agent.segment_files, "read_regular", denied)
    queue, corrupt = await reopen(tmp_path)
    lost = 60 - queue.items
    assert lost >= 10
    assert corrupt == [(1, lost)], "its size at the intact records' size per item"
    assert segments[0].with_name(segments[0].name + ".corrupt").exists()
    await queue.close()


async def test_a_segment_that_is_a_fifo_does_not_hang_the_start(tmp_path) -> None:
    segments = await two_segments(tmp_path)
    segments[0].unlink()
    os.mkfifo(segments[0])
    try:
        queue, corrupt = await reopen(tmp_path)
    finally:
        if segments[0].exists():  # a reader stuck on it (the bug) is let go
            fd = os.open(segments[0], os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
    assert corrupt == [(1, 1)]
    assert queue.items > 0
    await queue.close()


async def test_a_symlinked_segment_is_not_followed(tmp_path) -> None:
    segments = await two_segments(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(segments[0].read_bytes())
    segments[0].unlink()
    segments[0].symlink_to(outside)
    dangling = tmp_path / "0000000900.seg"
    dangling.symlink_to(tmp_path / "gone")
    queue, corrupt = await reopen(tmp_path)
    assert corrupt == [(2, 2)]
    assert outside.read_bytes(), "the target is left alone"
    assert not dangling.is_symlink() and dangling.with_name(dangling.name + ".corrupt").is_symlink()
    await queue.put(sample_batch(100))
    assert not any(p.is_symlink() for p in tmp_path.glob("*.seg"))
    assert (tmp_path / "0000000901.seg").stat().st_size, "the numbering goes on after the highest name"
    await queue.close()


class Vanishing(DiskQueue):
    def _segment_numbers(self) -> list[int]:
        return sorted([*super()._segment_numbers(), 7])  # listed, then gone before it is read


async def test_a_segment_that_vanished_is_counted(tmp_path, caplog) -> None:
    await two_segments(tmp_path)
    corrupt: list[tuple[int, int]] = []
    queue = Vanishing(tmp_path, 10_000_000, signal=Signal.METRICS, on_corrupt=lambda *c: corrupt.append(c))
    await queue.open()
    assert corrupt == [(1, 1)] and queue.items == 60
    assert "0000000007.seg cannot be read" in caplog.text
    await queue.close()


async def test_a_cursor_replaced_by_a_directory_is_set_aside(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    for start in (0, 10):
        await queue.put(sample_batch(start))
    await queue.close()
    (tmp_path / "cursor").unlink(missing_ok=True)
    (tmp_path / "cursor").mkdir()
    reopened, _ = await reopen(tmp_path)
    assert await drain(reopened) == [float(i) for i in range(20)]
    await reopened.close()
    again, _ = await reopen(tmp_path)
    assert again.items == 0, "the read position is saved again: nothing is sent twice"
    assert (tmp_path / "cursor.corrupt").is_dir()
    await again.close()


async def test_a_cursor_that_is_a_fifo_does_not_hang_the_start(tmp_path) -> None:
    os.mkfifo(tmp_path / "cursor")
    try:
        queue, _ = await reopen(tmp_path)
    finally:
        if (tmp_path / "cursor").exists() and not (tmp_path / "cursor").is_file():
            os.close(os.open(tmp_path / "cursor", os.O_WRONLY | os.O_NONBLOCK))
    await queue.put(sample_batch(0))
    assert await drain(queue) == [float(i) for i in range(10)]
    await queue.close()


async def test_a_directory_where_the_next_segment_goes_is_set_aside(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS, segment_bytes=512)
    await queue.open()
    await queue.put(sample_batch(0))
    (tmp_path / "0000000002.seg").mkdir()  # where the roll after this segment writes
    for start in range(10, 60, 10):
        await queue.put(sample_batch(start))
    assert await drain(queue) == [float(i) for i in range(60)]
    assert (tmp_path / "0000000002.seg.corrupt").is_dir()
    await queue.close()


async def test_a_deleted_buffer_directory_is_made_again(tmp_path, caplog) -> None:
    directory = tmp_path / "buffer"
    queue = DiskQueue(directory, 10_000_000, signal=Signal.METRICS, segment_bytes=2048, cache_bytes=0)
    await queue.open()
    await queue.put(sample_batch(0))
    assert await drain(queue) == [float(i) for i in range(10)]
    shutil.rmtree(directory)  # a clean-up of state_dir while the agent runs
    for start in range(10, 160, 10):
        await queue.put(sample_batch(start))
    values = await drain(queue)
    # what went on into the deleted segment (still open) is lost with it, and counted
    assert values == [float(i) for i in range(160 - len(values), 160)] and len(values) >= 50
    assert queue.corrupt_items == 150 - len(values) >= 20
    assert caplog.text.count("cannot read a record") == 1, "said once, then counted"
    await queue.close()
    reopened = DiskQueue(directory, 10_000_000, signal=Signal.METRICS)
    await reopened.open()
    assert reopened.items == 0, "a new cursor: nothing delivered is sent again"
    await reopened.close()


@pytest.fixture
def read_only_dir(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount / "buffer").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount / "buffer"
    finally:
        subprocess.run(["umount", "-l", str(mount)])


async def test_a_read_only_buffer_directory_is_a_clear_error_at_start(read_only_dir) -> None:
    queue = DiskQueue(read_only_dir, 10_000_000, signal=Signal.METRICS)
    with pytest.raises(BufferUnavailable) as caught:
        await queue.open()
    message = str(caught.value)
    assert str(read_only_dir) in message and "not writable" in message and 'buffer = "memory"' in message


async def test_a_short_write_of_header_and_payload_is_completed(tmp_path, monkeypatch) -> None:
    """The header and payload go out in one writev; when it writes only part, the rest follows."""
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.LOGS, cache_bytes=0)  # read back from the disk
    await queue.open()
    writev = os.writev
    calls = []

    def short_writev(fd: int, chunks) -> int:
        calls.append(len(chunks))
        return writev(fd, [b"".join(chunks)[:7]])  # part of the header only

    monkeypatch.setattr(os, "writev", short_writev)
    await queue.put(QueuedBatch(Signal.LOGS, [LogRecord(1, "a" * 5000), LogRecord(2, "b")], 50, 1))
    monkeypatch.undo()
    assert calls == [2]
    batch = await queue.take()
    assert [r.body for r in batch.items] == ["a" * 5000, "b"]
    await queue.close()


async def test_the_cache_of_written_batches_holds_at_most_its_bound_in_memory(tmp_path) -> None:
    """``cache_bytes`` bounds what the cached batches' items hold in memory (their Python objects),
    not only their records' bytes on disk, which are about a quarter smaller for log lines."""
    bound = 1 << 20
    queue = DiskQueue(tmp_path, 100_000_000, signal=Signal.LOGS, cache_bytes=bound)
    await queue.open()
    labels = (("filename", "/var/log/apache2/access.log"), ("job", "logs"))
    line = '203.0.113.7 - - [03/Dec/2026:10:00:00 +0000] "GET /index.html?page={} HTTP/1.1" 200 5120 "-" "curl/8"'
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(40):  # about 3 MiB of records: the cache fills, the rest is only on disk
            items = [LogRecord(1_700_000_000_000_000_000 + i, line.format(n * 1000 + i), labels) for i in range(500)]
            await queue.put(QueuedBatch(Signal.LOGS, items, 100_000, 1))
        del items
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0 < queue._cache_bytes <= bound
    assert len(queue._cache) >= 3  # it does cache
    assert held <= bound, f"the cache and index hold {held:,} bytes, over the {bound:,} bound"
    taken = []  # what is not cached is read back from disk, all of it and in order
    while queue.items:
        taken += [r.body for r in (await queue.take()).items]
        await queue.ack()
    assert taken == [line.format(n * 1000 + i) for n in range(40) for i in range(500)]
    await queue.close()
