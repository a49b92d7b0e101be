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

A batch whose sources can send it again (``QueuedBatch.replayable``: log lines, whose files
keep them until their checkpoint moves) is held in memory, unwritten, for ``write_delay``:
delivered by then it never reaches the disk, which at a backend that keeps up is most of the
buffer's cost (the record's encoding, the write and its fsync, the read position saved after
it). One that is not is written when due, the one in flight first, so the records keep their
order; so is every held batch as soon as a batch that must be written comes, or one that no
longer fits the memory bound, and at close. Whatever happens to a batch, its sources are
told in the order the batches were put, once it and every batch before it are on disk,
delivered or dropped, so a source's checkpoint never passes lines that are only in memory.

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
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from agent.model import LogRecord, Sample, Signal, Span
from agent.queue import Dropped, MemoryQueue, Queue, QueuedBatch
from agent.release import InOrderRelease
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


def _memory_cost(batch: QueuedBatch) -> int:
    """:func:`_cache_cost` of a batch not written yet (its estimated size for the record's)."""
    return batch.nbytes + _ITEM_OVERHEAD * len(batch.items)


class DiskQueue(SegmentStore):
    """Durable queue under ``directory``; see the module docstring.

    ``on_corrupt(records, items)`` is told of damaged records skipped and the items
    lost in them (for records whose header is damaged too, an estimate: their bytes
    at the average size per item of the intact records, at least one item each).
    ``on_write_error(exc)`` is told when batches held in memory cannot be written when due
    (they stay held, sent from there if the backend takes them, and are tried again a
    second later).
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
        on_write_error: Callable[[OSError], None] | None = None,
        cache_bytes: int | None = None,
        write_delay: float = 0.0,
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
        self.on_write_error = on_write_error or self._write_error
        self._encoder = msgspec.msgpack.Encoder()
        self._worker = Worker(f"buffer:{directory.name}")
        self._index: collections.deque[Ref] = collections.deque()
        self._inflight: Ref | QueuedBatch | None = None  # a QueuedBatch: handed out unwritten
        self._available = asyncio.Event()
        self._put_lock = asyncio.Lock()  # one append at a time: the reclaim in put() relies on it
        self._busy = 0  # appends and reads running on the worker (see ack)
        # (segment, offset) -> a record still queued, with the items as they were put
        self._cache: dict[tuple[int, int], QueuedBatch] = {}
        self._cache_bytes = 0
        self.cache_max = min(capacity // 8, 16 * 1024 * 1024) if cache_bytes is None else cache_bytes
        self._retired_until = (0, 0)
        self._commit_failed = False
        self.write_delay = write_delay
        # replayable batches put and not written (each with the loop time it must be on disk by), oldest
        # first, all after the records of _index; their memory counts in _cache_bytes
        self._unwritten: collections.deque[tuple[QueuedBatch, float]] = collections.deque()
        self._release = InOrderRelease()  # every batch's sources are told through it
        self._inflight_due = 0.0  # when the batch in flight must be on disk, if it is held unwritten
        self._timer: asyncio.TimerHandle | None = None
        self._spilling: asyncio.Future | None = None
        self._closed = False
        self._left: list[QueuedBatch] = []  # held batches close could not write
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
        async with self._put_lock:  # after any write under way: a batch never overtakes one put before it
            if self._hold(batch):
                return
            await self._spill_locked()  # what is held goes first: the records keep their order
            ref = await self._append(batch)
        self._index.append(ref)
        self.items += ref.items
        self.bytes += ref.length
        cost = _cache_cost(ref)
        if self._cache_bytes + cost <= self.cache_max:
            self._cache[(ref.segment, ref.offset)] = self._batch(ref, batch.items)
            self._cache_bytes += cost
        self._available.set()
        self._release.put(batch, safe=True)

    def _hold(self, batch: QueuedBatch) -> bool:
        """Keep a replayable batch in memory, unwritten, if there is room: it reaches the disk only if it
        is not delivered within ``write_delay`` (its sources keep its items until then)."""
        cost = _memory_cost(batch)
        if self._closed or not (self.write_delay and batch.replayable and self._cache_bytes + cost <= self.cache_max):
            return False
        self._unwritten.append((batch, asyncio.get_running_loop().time() + self.write_delay))
        self._release.put(batch, safe=False)
        self._cache_bytes += cost
        self.items += len(batch.items)
        self.bytes += batch.nbytes
        self._arm()
        self._available.set()
        return True

    async def _append(self, batch: QueuedBatch) -> Ref:
        """Write ``batch``'s record (under ``_put_lock``)."""
        payload = self._encoder.encode(batch.items)
        args = (payload, len(batch.items), batch.created_ns)
        try:
            return await self._on_worker(self._append_sync, *args)
        except OSError as exc:
            self._short_of_space = True
            if self._index or isinstance(self._inflight, Ref):  # (a held batch in flight is not on disk)
                raise
            # every record written is retired: the segment being written can go, and on a
            # full disk that is the space this write needs
            return await self._on_worker(self._reclaim_and_append_sync, exc, *args)

    # ------------------------------------------------------- held in memory

    def _write_error(self, exc: OSError) -> None:
        self._say(f"spill:{exc.errno}", "cannot write held batches yet (%s); trying again", exc.strerror or exc)

    def _arm(self) -> None:
        """Wake at the oldest unwritten batch's deadline, in flight or queued (one timer at a time)."""
        if self._timer is not None or self._closed:
            return
        if isinstance(self._inflight, QueuedBatch):
            due = self._inflight_due
        elif self._unwritten:
            due = self._unwritten[0][1]
        else:
            return
        self._timer = asyncio.get_running_loop().call_at(due, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._spilling is None or self._spilling.done():
            self._spilling = asyncio.ensure_future(self._spill_due())

    async def _spill_due(self) -> None:
        try:
            async with self._put_lock:
                await self._spill_locked(until=asyncio.get_running_loop().time())
        except OSError as exc:  # they stay in memory (sent from there if the backend takes them): try again
            self.on_write_error(exc)
            await asyncio.sleep(1.0)
        except Exception:  # a bug: said, and the next deadline tries again
            log.exception("buffer %s: writing held batches failed", self.directory)
            await asyncio.sleep(1.0)
        finally:
            self._arm()

    async def _spill_locked(self, until: float = math.inf) -> None:
        """Write the batches held unwritten whose deadline is before ``until``, oldest first: the one
        in flight, if it is one of them, then the queued ones (under ``_put_lock``)."""
        while True:
            batch = self._inflight
            if isinstance(batch, QueuedBatch):
                if self._inflight_due > until:
                    return  # the queued ones are younger still
            elif not self._unwritten or self._unwritten[0][1] > until:
                return
            else:
                batch = self._unwritten[0][0]
            ref = await self._append(batch)
            if self._inflight is batch:  # handed out: its ack retires the record
                self._inflight = ref
                self.bytes += ref.length - batch.nbytes
                self._cache_bytes -= _memory_cost(batch)
            elif self._unwritten and self._unwritten[0][0] is batch:
                self._unwritten.popleft()
                self._cache_bytes -= _memory_cost(batch)
                self._index.append(ref)
                self.bytes += ref.length - batch.nbytes
                self._cache[(ref.segment, ref.offset)] = batch
                self._cache_bytes += _cache_cost(ref)
            else:  # delivered or dropped while it was written (nothing queued is older): nothing to replay
                self._retire(ref)
                await self._commit()
            self._release.safe(batch)

    # ---------------------------------------------------------------- read

    def _batch(self, ref: Ref, items: list[Any]) -> QueuedBatch:
        return QueuedBatch(self.signal, items, ref.length, ref.created_ns)

    def drop_oldest(self) -> Dropped | None:
        """The oldest record not handed out goes unread: only its item count is known (and needed)."""
        if not self._index:
            if not self._unwritten:
                return None
            batch = self._unwritten.popleft()[0]
            self._cache_bytes -= _memory_cost(batch)
            self.items -= len(batch.items)
            self.bytes -= batch.nbytes
            self._release.safe(batch)  # its sources are told in order, not by the lane
            return Dropped(len(batch.items))
        ref = self._index.popleft()
        self._uncache(ref)
        self.items -= ref.items
        self.bytes -= ref.length
        self._retire(ref)
        return Dropped(ref.items)

    async def take(self) -> QueuedBatch:
        while True:
            while not self._index and not self._unwritten:
                self._available.clear()
                await self._available.wait()
            if not self._index:
                batch, self._inflight_due = self._unwritten.popleft()
                self._inflight = batch
                return batch
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
        while not self._index and not self._unwritten:
            self._available.clear()
            await self._available.wait()
        if not self._index:
            return self._unwritten[0][0]
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
        if isinstance(ref, QueuedBatch):  # delivered before it was written: nothing on disk to retire
            self.items -= len(ref.items)
            self.bytes -= ref.nbytes
            self._cache_bytes -= _memory_cost(ref)
            self._release.safe(ref)
            return
        self.items -= ref.items
        self.bytes -= ref.length
        self._retire(ref)
        await self._commit()

    async def _commit(self) -> None:
        """Save the read position past what is retired, on the worker, in order with the writes."""
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
        if head is None and self._unwritten:
            head = self._unwritten[0][0]
        return head.created_ns if head else None

    def pending(self) -> list[QueuedBatch]:
        """Durable: what is left stays on disk for the next start; after :meth:`close`, the held
        batches it could not write (a full disk), which end with the process."""
        return self._left

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:  # what is held unwritten (and what was in flight unwritten) stays, on disk, for the next start
            async with self._put_lock:
                await self._spill_locked()
        except OSError as exc:  # the lane counts them as dropped (pending)
            inflight = [self._inflight] if isinstance(self._inflight, QueuedBatch) else []
            self._left = inflight + [batch for batch, _ in self._unwritten]
            self._inflight = None
            self._unwritten.clear()
            for batch in self._left:
                self.items -= len(batch.items)
                self.bytes -= batch.nbytes
            log.error(
                "buffer %s: cannot write %d batch(es) held in memory at close (%s)",
                self.directory,
                len(self._left),
                exc.strerror or exc,
            )
        if self._spilling is not None:  # a timer's write that failed and waits to try again: nothing is left
            self._spilling.cancel()
        await self._worker.run(self._close_files_sync)
        self._worker.close()
        self._cache.clear()
        self._cache_bytes = 0
