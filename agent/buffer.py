"""The durable queue of an output lane: batches on disk that survive a restart and kill -9.

:class:`DiskQueue` is the disk kind of ``agent.queue.Queue`` (the contract, and the
memory kind, are there). It is an append-only series of segment files of CRC-checked
records (the format and damage scanning are in ``agent.segments``; careful file access,
and what the directory holds at start, in ``agent.segment_files``). Damage costs
only the damaged records: they are skipped, counted (records, and the items in
them) and logged. The read position ("cursor") is persisted after each ack; a
segment is deleted once every record in it is retired, and the segment being
written too, when a write fails while everything in it is delivered: on a full
disk that segment is the space the next write needs. All file I/O runs on the
queue's own worker thread, never on the event loop.

The queue also keeps the batches it wrote last in memory (bounded by ``cache_bytes``
of their records), so a sender that keeps up hands out what was just written without
reading and decoding it back; what is not cached (a backlog, a replay after a
restart) is read from disk. The record on disk is written and synced the same either
way. A batch handed out by ``lookahead`` stays cached until ``take`` hands out the
same object, so what the output prepared for it travels with it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from agent.model import LogRecord, Sample, Signal, Span
from agent.queue import Dropped, MemoryQueue, Queue, QueuedBatch
from agent.segment_files import (
    CURSOR,
    NotRegularFile,
    open_regular,
    recover,
    remove,
    segment_number,
    segment_path,
    write_cursor,
)
from agent.segments import HEADER, Ref, encode, parse_at
from agent.workers import Worker

__all__ = ["BufferUnavailable", "DiskQueue", "MemoryQueue", "Queue", "QueuedBatch"]

log = logging.getLogger("hostwatch.buffer")

# a failed open or read that says nothing about the record: try again rather than drop it
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR}
# a buffer directory the agent may not write to: a setup error, said at start
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


class BufferUnavailable(OSError):
    """The disk buffer's directory cannot be used at all (read-only, not a directory)."""

    def __str__(self) -> str:
        return str(self.args[-1])


class DiskQueue:
    """Durable queue under ``directory``; see the module docstring.

    ``on_corrupt(records, items)`` is told of damaged records skipped and the items
    lost in them (for records whose header is damaged too, an estimate: their bytes
    at the average size per item of the intact records, at least one item each).
    """

    durable = True

    def __init__(
        self,
        directory: Path,
        capacity: int,
        *,
        signal: Signal,
        fsync: str = "batch",
        segment_bytes: int | None = None,
        on_corrupt: Callable[[int, int], None] | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        self.directory = directory
        self.capacity = capacity
        self.signal = signal
        self.fsync = fsync
        self.segment_bytes = segment_bytes or max(64 * 1024, min(16 * 1024 * 1024, capacity // 16))
        self.on_corrupt = on_corrupt or (lambda records, items: None)
        item = {Signal.METRICS: Sample, Signal.LOGS: LogRecord, Signal.TRACES: Span}[signal]
        self._item_type = list[item]  # type: ignore[valid-type]
        self._decoder = msgspec.msgpack.Decoder(self._item_type)
        self._encoder = msgspec.msgpack.Encoder()
        self._worker = Worker(f"buffer:{directory.name}")
        self._index: collections.deque[Ref] = collections.deque()
        self._inflight: Ref | None = None
        self._available = asyncio.Event()
        self._put_lock = asyncio.Lock()  # one append at a time: the reclaim in put() relies on it
        # (segment, offset) -> a record still queued, with the items as they were put
        self._cache: dict[tuple[int, int], QueuedBatch] = {}
        self._cache_bytes = 0
        self.cache_max = min(capacity // 8, 16 * 1024 * 1024) if cache_bytes is None else cache_bytes
        self._write_segment = 0
        self._write_fd: int | None = None
        self._write_size = 0
        self._last_fsync = 0.0
        self._retired_until = (0, 0)
        self._cursor_fd: int | None = None
        self._commit_failed = False
        self._short_of_space = False  # a write failed: reclaim delivered space eagerly from now on
        self._said: set[str] = set()  # problems logged once
        self.items = 0
        self.bytes = 0
        self.corrupt_records = 0
        self.corrupt_items = 0

    # ---------------------------------------------------------------- open

    async def open(self) -> None:
        await self._worker.run(self._open_sync)
        if self.corrupt_records:
            self.on_corrupt(self.corrupt_records, self.corrupt_items)
        if self._index:
            self._available.set()

    def _segment_path(self, number: int) -> Path:
        return segment_path(self.directory, number)

    def _segment_numbers(self) -> list[int]:
        return sorted(n for path in self.directory.iterdir() if (n := segment_number(path)) is not None)

    def _open_sync(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            numbers = self._segment_numbers()
        except OSError as exc:
            raise BufferUnavailable(
                exc.errno, f'disk buffer {self.directory}: {exc.strerror or exc}; fix it or set buffer = "memory"'
            ) from exc
        found = recover(self.directory, numbers)
        self._index.extend(found.refs)
        self._retired_until = found.retired_until
        self._write_segment = found.write_segment
        self.corrupt_records, self.corrupt_items = found.corrupt_records, found.corrupt_items
        for ref in self._index:
            self.items += ref.items
            self.bytes += ref.length
        self._open_first_write_segment()

    def _open_first_write_segment(self) -> None:
        """Open the segment to write now, so a buffer that can never be written is said at start."""
        try:
            self._roll_sync()
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise BufferUnavailable(
                    exc.errno,
                    f"disk buffer {self.directory} is not writable ({exc.strerror}); "
                    'make it writable or set buffer = "memory" for this output',
                ) from exc
            # a full disk may have room later: writes try again (and count what they cannot write)
            log.warning("buffer %s: cannot open a segment to write yet: %s", self.directory, exc.strerror or exc)

    # --------------------------------------------------------------- write

    def has_room(self, nbytes: int) -> bool:
        return self.bytes + nbytes <= self.capacity

    async def put(self, batch: QueuedBatch) -> None:
        payload = self._encoder.encode(batch.items)
        args = (payload, len(batch.items), batch.created_ns)
        async with self._put_lock:
            try:
                ref = await self._worker.run(self._append_sync, *args)
            except OSError as exc:
                self._short_of_space = True
                if self._index or self._inflight is not None:
                    raise
                # every record written is retired: the segment being written can go, and on a
                # full disk that is the space this write needs
                ref = await self._worker.run(self._reclaim_and_append_sync, exc, *args)
        self._index.append(ref)
        self.items += ref.items
        self.bytes += ref.length
        if self._cache_bytes + ref.length <= self.cache_max:
            self._cache[(ref.segment, ref.offset)] = self._batch(ref, batch.items)
            self._cache_bytes += ref.length
        self._available.set()

    def _append_sync(self, payload: bytes, items: int, created_ns: int) -> Ref:
        if self._write_fd is None or self._write_size >= self.segment_bytes:
            self._roll_sync()
        record = encode(payload, items, created_ns)
        offset = self._write_size
        try:
            self._write_all(record)
            self._sync_if_due()
        except OSError:
            # a partial write (ENOSPC) leaves a torn record: cut it so the segment stays valid
            try:
                os.ftruncate(self._write_fd, offset)
            except OSError:  # the torn bytes stay: go on in a new segment, so offsets stay true
                self._close_write_segment()
            raise
        self._write_size += len(record)
        return Ref(self._write_segment, offset, len(record), items, (created_ns // 1_000_000) * 1_000_000)

    def _reclaim_and_append_sync(self, error: OSError, payload: bytes, items: int, created_ns: int) -> Ref:
        """Called when every record written is retired: every segment can go, then write again."""
        freed = [n for n in self._segment_numbers() if n < self._write_segment]
        if self._write_fd is not None and self._write_size:
            freed.append(self._write_segment)
            self._close_write_segment()
        if not freed:
            raise error  # nothing to give back
        for number in freed:
            self._remove(self._segment_path(number))
        log.info(
            "buffer %s: a write failed (%s) with every record delivered; %d delivered segment(s) deleted to make room",
            self.directory,
            error.strerror or error,
            len(freed),
        )
        return self._append_sync(payload, items, created_ns)

    def _write_all(self, data: bytes) -> None:
        """Unbuffered, so a failed write leaves nothing behind to fail again at close."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._write_fd, view) :]

    def _sync_if_due(self) -> None:
        if self.fsync == "batch":
            os.fsync(self._write_fd)
        elif self.fsync == "interval" and time.monotonic() - self._last_fsync >= 1.0:
            os.fsync(self._write_fd)
            self._last_fsync = time.monotonic()

    def _close_write_segment(self) -> None:
        """Done with the segment being written: the next write opens the next one."""
        fd, self._write_fd = self._write_fd, None
        self._write_segment += 1
        self._write_size = 0
        if fd is not None:
            os.close(fd)

    def _roll_sync(self) -> None:
        if self._write_fd is not None:
            self._close_write_segment()
        path = self._segment_path(self._write_segment)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            self._write_fd = open_regular(path, flags)
        except FileNotFoundError:  # the directory itself was deleted (a clean-up of state_dir)
            log.error("buffer %s: the directory is gone; made again", self.directory)
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._cursor_fd is not None:  # the cursor went with it: write a new one
                fd, self._cursor_fd = self._cursor_fd, None
                os.close(fd)
            self._write_fd = open_regular(path, flags)
        self._write_size = os.fstat(self._write_fd).st_size

    # ---------------------------------------------------------------- read

    def _batch(self, ref: Ref, items: list[Any]) -> QueuedBatch:
        return QueuedBatch(self.signal, items, ref.length, ref.created_ns)

    def drop_oldest(self) -> Dropped | None:
        """The oldest record not handed out goes unread: only its item count is known (and needed)."""
        if not self._index:
            return None
        ref = self._index.popleft()
        self._uncache(ref)
        self.items -= ref.items
        self.bytes -= ref.length
        self._retire(ref)
        return Dropped(ref.items)

    async def take(self) -> QueuedBatch:
        while True:
            while not self._index:
                self._available.clear()
                await self._available.wait()
            ref = self._index[0]
            batch = self._cache.get((ref.segment, ref.offset))
            if batch is None:
                try:
                    items = await self._worker.run(self._read_sync, ref)
                except OSError as exc:
                    if exc.errno not in _TRANSIENT:
                        self._lost(ref, exc)
                        continue
                    self._say(f"read:{exc.errno}", "cannot read a record yet (%s); trying again", exc.strerror)
                    await asyncio.sleep(1.0)  # out of file descriptors or memory: the record is fine
                    continue
                except (msgspec.DecodeError, ValueError) as exc:
                    self._lost(ref, exc)
                    continue
                if not self._index or self._index[0] is not ref:
                    continue  # dropped (drop_oldest) while it was being read
                batch = self._batch(ref, items)
            self._index.popleft()
            self._uncache(ref)
            self._inflight = ref
            return batch

    def _lost(self, ref: Ref, exc: Exception) -> None:
        """A record that passed its CRC at write or scan time and cannot be read now: damage."""
        if not self._index or self._index[0] is not ref:
            return  # dropped (drop_oldest) while it was being read
        self._say(  # once per segment: a vanished segment fails every record in it
            f"lost:{ref.segment}",
            "cannot read a record of segment %s (%s); such records are skipped and counted",
            self._segment_path(ref.segment).name,
            getattr(exc, "strerror", None) or exc,
        )
        self._index.popleft()
        self.items -= ref.items
        self.bytes -= ref.length
        self._retire(ref)
        self.corrupt_records += 1
        self.corrupt_items += ref.items
        self.on_corrupt(1, ref.items)

    async def lookahead(self) -> QueuedBatch | None:
        """The batch :meth:`take` will hand out next, without taking it (waits for one).

        Loads it into the cache when it is not there, so the following ``take`` hands out
        this same batch without reading it again; None when it cannot be read (``take``
        deals with that).
        """
        while not self._index:
            self._available.clear()
            await self._available.wait()
        ref = self._index[0]
        key = (ref.segment, ref.offset)
        batch = self._cache.get(key)
        if batch is None:
            try:
                items = await self._worker.run(self._read_sync, ref)
            except (OSError, msgspec.DecodeError, ValueError):
                return None
            if not self._index or self._index[0] is not ref:
                return None
            batch = self._cache[key] = self._batch(ref, items)  # one batch over cache_max at most
            self._cache_bytes += ref.length
        return batch

    def _uncache(self, ref: Ref) -> None:
        if self._cache.pop((ref.segment, ref.offset), None) is not None:
            self._cache_bytes -= ref.length

    def _read_sync(self, ref: Ref) -> list[Any]:
        path = self._segment_path(ref.segment)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise NotRegularFile(path, mode)
            data = os.pread(fd, ref.length, ref.offset)
        finally:
            os.close(fd)
        if parse_at(data, 0, ref.segment) is None:
            raise ValueError("checksum mismatch")
        return self._decoder.decode(memoryview(data)[HEADER.size :])

    async def ack(self) -> None:
        ref, self._inflight = self._inflight, None
        if ref is None:
            return
        self.items -= ref.items
        self.bytes -= ref.length
        self._retire(ref)
        # the first record not yet retired; never the write end, which an append running
        # on the worker thread right now may already have moved past a record not yet indexed
        head = self._index[0] if self._index else None
        position = (head.segment, head.offset) if head else self._retired_until
        try:
            await self._worker.run(self._commit_sync, position, head is None)
        except OSError as exc:
            if not self._commit_failed:
                log.error(
                    "buffer %s: cannot save the read position (%s); delivered batches may be sent "
                    "again after a restart",
                    self.directory,
                    exc.strerror or exc,
                )
            self._commit_failed = True
        else:
            self._commit_failed = False

    def _retire(self, ref: Ref) -> None:
        end = (ref.segment, ref.offset + ref.length)
        if end > self._retired_until:
            self._retired_until = end

    def _commit_sync(self, position: tuple[int, int], drained: bool) -> None:
        if drained and self._short_of_space and self._write_size and position == self._write_end():
            # a disk that was full once: a delivered write segment goes now, not only when a
            # write fails, which may be while a batch is in flight (and cost that write)
            self._close_write_segment()
        if drained and position[0] < self._write_segment:
            # every record indexed is retired, and an append not yet indexed is in the write
            # segment: the segments before it (a replay's, the last rolled one) are all delivered
            position = (self._write_segment, 0)
        failed: OSError | None = None
        try:
            self._write_cursor_sync(position)
        except OSError as exc:
            failed = exc
        # delivered segments go even when the cursor cannot be saved: a stale cursor only
        # replays (duplicates), while keeping them would keep a full disk full
        for number in self._segment_numbers():
            if number < position[0]:
                self._remove(self._segment_path(number))
        if failed is not None:
            raise failed

    def _write_end(self) -> tuple[int, int]:
        return (self._write_segment, self._write_size)

    def _write_cursor_sync(self, position: tuple[int, int]) -> None:
        if self._cursor_fd is None:
            self._cursor_fd = open_regular(self.directory / CURSOR, os.O_RDWR | os.O_CREAT)
        write_cursor(self._cursor_fd, position)

    def _remove(self, path: Path) -> None:
        try:
            remove(path)
        except OSError as exc:
            self._say(f"remove:{exc.errno}", "cannot delete delivered segment %s: %s", path.name, exc.strerror)

    def _say(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.error("buffer %s: " + message + " (said once)", self.directory, *args)

    def oldest_ns(self) -> int | None:
        head = self._inflight or (self._index[0] if self._index else None)
        return head.created_ns if head else None

    def pending(self) -> list[QueuedBatch]:
        return []  # durable: what is left stays on disk for the next start

    async def close(self) -> None:
        def close_sync() -> None:
            for fd in (self._write_fd, self._cursor_fd):
                if fd is None:
                    continue
                try:
                    if self.fsync != "never":
                        os.fsync(fd)
                except OSError as exc:  # the data is written; only its flush to the device failed
                    log.error("buffer %s: fsync at close failed: %s", self.directory, exc.strerror or exc)
                finally:
                    os.close(fd)
            self._write_fd = self._cursor_fd = None

        await self._worker.run(close_sync)
        self._worker.close()
        self._cache.clear()
        self._cache_bytes = 0
