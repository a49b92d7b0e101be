"""The durable queue of an output lane: batches on disk that survive a restart and kill -9.

:class:`DiskQueue` is the disk kind of ``agent.queue.Queue`` (the contract, and the
memory kind, are there). On disk it is an append-only series of segment files of CRC-checked
records (the format and damage scanning are in ``agent.segments``; careful file access,
and what the directory holds at start, in ``agent.segment_files``). Damage costs
only the damaged records: they are skipped, counted (records, and the items in
them) and logged. The read position ("cursor") is persisted after each ack; a
segment is deleted once every record in it is retired, and the segment being
written too, when a write fails while everything in it is delivered: on a full
disk that segment is the space the next write needs. All file I/O runs on the
queue's own worker thread, never on the event loop.

The queue also keeps the batches it wrote last in memory (bounded by ``cache_bytes`` of
the memory their items hold, estimated from their records' sizes and item counts), so
a sender that keeps up hands out what was just written without reading and decoding
it back; what is not cached (a backlog, a replay after a restart) is read from disk.
The record on disk is written and synced the same either way. A batch handed out by
``lookahead`` stays cached until ``take`` hands out the same object, so what the
output prepared for it travels with it.

The file side (writing, reading back, the cursor, deleting segments: every call
that blocks) is the base class, ``agent.segment_store.SegmentStore``; this module
keeps the index of queued records, the cache and the counts, on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from agent.model import LogRecord, Sample, Signal, Span
from agent.queue import Dropped, MemoryQueue, Queue, QueuedBatch
from agent.segment_files import recover
from agent.segment_store import BufferUnavailable, SegmentStore
from agent.segments import Ref
from agent.stored_records import LogRecordsDecoder
from agent.workers import Worker

__all__ = ["BufferUnavailable", "DiskQueue", "MemoryQueue", "Queue", "QueuedBatch"]

log = logging.getLogger("hostwatch.buffer")

# a failed open or read that says nothing about the record: try again rather than drop it
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR}

# What a cached batch holds in memory beyond its record's bytes, per item: the item's Python objects
# (the item, its time as an int, its string's header, its list slot: about 150 bytes) less what the
# record spends on it that memory does not (a label set, shared in memory by a source's items, is
# written out with each record). Measured on log records: 98 bytes with two labels, 146 without any;
# so the cache's bound is one of memory, not of bytes on disk (attributes, decoded per record when
# a batch is read back, are not in it).
_ITEM_OVERHEAD = 144


def _cache_cost(ref: Ref) -> int:
    return ref.length + _ITEM_OVERHEAD * ref.items


class DiskQueue(SegmentStore):
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
        item = {Signal.METRICS: Sample, Signal.LOGS: LogRecord, Signal.TRACES: Span}[signal]
        super().__init__(
            directory,
            fsync=fsync,
            segment_bytes=segment_bytes or max(64 * 1024, min(16 * 1024 * 1024, capacity // 16)),
            decoder=LogRecordsDecoder() if item is LogRecord else msgspec.msgpack.Decoder(list[item]),  # type: ignore[valid-type]
        )
        self.capacity = capacity
        self.signal = signal
        self.on_corrupt = on_corrupt or (lambda records, items: None)
        self._encoder = msgspec.msgpack.Encoder()
        self._worker = Worker(f"buffer:{directory.name}")
        self._index: collections.deque[Ref] = collections.deque()
        self._inflight: Ref | None = None
        self._available = asyncio.Event()
        self._put_lock = asyncio.Lock()  # one append at a time: the reclaim in put() relies on it
        self._busy = 0  # appends and reads running on the worker (see ack)
        # (segment, offset) -> a record still queued, with the items as they were put
        self._cache: dict[tuple[int, int], QueuedBatch] = {}
        self._cache_bytes = 0
        self.cache_max = min(capacity // 8, 16 * 1024 * 1024) if cache_bytes is None else cache_bytes
        self._retired_until = (0, 0)
        self._commit_failed = False
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

    # --------------------------------------------------------------- write

    def has_room(self, nbytes: int) -> bool:
        return self.bytes + nbytes <= self.capacity

    async def put(self, batch: QueuedBatch) -> None:
        payload = self._encoder.encode(batch.items)
        args = (payload, len(batch.items), batch.created_ns)
        async with self._put_lock:
            try:
                ref = await self._on_worker(self._append_sync, *args)
            except OSError as exc:
                self._short_of_space = True
                if self._index or self._inflight is not None:
                    raise
                # every record written is retired: the segment being written can go, and on a
                # full disk that is the space this write needs
                ref = await self._on_worker(self._reclaim_and_append_sync, exc, *args)
        self._index.append(ref)
        self.items += ref.items
        self.bytes += ref.length
        cost = _cache_cost(ref)
        if self._cache_bytes + cost <= self.cache_max:
            self._cache[(ref.segment, ref.offset)] = self._batch(ref, batch.items)
            self._cache_bytes += cost
        self._available.set()

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
                    items = await self._on_worker(self._read_sync, ref)
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
                items = await self._on_worker(self._read_sync, ref)
            except (OSError, msgspec.DecodeError, ValueError):
                return None
            if not self._index or self._index[0] is not ref:
                return None
            batch = self._cache[key] = self._batch(ref, items)  # one batch over cache_max at most
            self._cache_bytes += _cache_cost(ref)
        return batch

    def _uncache(self, ref: Ref) -> None:
        if self._cache.pop((ref.segment, ref.offset), None) is not None:
            self._cache_bytes -= _cache_cost(ref)

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
        # the save's own future, which nobody cancels: the worker skips a job whose future was
        # cancelled, and shutdown cancels the sender while it waits here (the lane's drain sees the
        # queue empty as soon as the batch is counted out above). close() runs after the save on
        # the same thread.
        loop = asyncio.get_running_loop()
        saved = loop.create_future()
        saved.add_done_callback(self._committed)
        self._worker.submit(self._commit_sync, (position, head is None), saved, loop)
        if self._busy or head is not None:
            # the worker is busy (an append and its fsync, a read), or the next batch is queued: the
            # position is saved in order on the worker, and the sender goes on with the next batch
            # meanwhile, rather than leave the backend idle (a save that deletes a delivered 16 MiB
            # segment takes milliseconds). A crash in between sends this batch again, as a crash
            # before the save always did. With nothing left to send, the ack waits for its save.
            return
        with contextlib.suppress(Exception):  # _committed reports a failure
            await asyncio.shield(saved)

    async def _on_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the worker thread, counted in ``_busy`` while it runs."""
        self._busy += 1
        try:
            return await self._worker.run(fn, *args)
        finally:
            self._busy -= 1

    def _committed(self, saved: asyncio.Future) -> None:
        exc = saved.exception() if not saved.cancelled() else None
        if isinstance(exc, OSError):
            self._commit_error(exc)
        elif exc is not None:
            log.error("buffer %s: saving the read position failed", self.directory, exc_info=exc)
        else:
            self._commit_failed = False

    def _commit_error(self, exc: OSError) -> None:
        if not self._commit_failed:
            log.error(
                "buffer %s: cannot save the read position (%s); delivered batches may be sent again after a restart",
                self.directory,
                exc.strerror or exc,
            )
        self._commit_failed = True

    def _retire(self, ref: Ref) -> None:
        end = (ref.segment, ref.offset + ref.length)
        if end > self._retired_until:
            self._retired_until = end

    def oldest_ns(self) -> int | None:
        head = self._inflight or (self._index[0] if self._index else None)
        return head.created_ns if head else None

    def pending(self) -> list[QueuedBatch]:
        return []  # durable: what is left stays on disk for the next start

    async def close(self) -> None:
        await self._worker.run(self._close_files_sync)
        self._worker.close()
        self._cache.clear()
        self._cache_bytes = 0
