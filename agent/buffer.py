"""Each output's bounded queue of sealed batches: in memory, or durable on disk.

Both queues keep batches in order and hand them out one at a time: ``take``
returns the oldest batch not yet handed out, ``ack`` retires it once the
output has delivered (or given up on) it. ``drop_oldest`` discards the oldest
batches not yet handed out, to make room when ``when_full = "drop_oldest"``.

The disk queue is an append-only series of segment files. A record is::

    magic "HWB1" | payload length u32 | crc32 u32 | item count u32 | created ms u64 | payload

with the CRC over everything after it, so a torn tail (a kill -9 mid-write) or a
flipped bit is detected; the reader then scans forward to the next magic that
starts a valid record, so damage costs only the damaged records, which are
counted and logged. The read position ("cursor") is persisted after each ack;
a segment is deleted once every record in it is retired. All file I/O runs on
the queue's own worker thread, never on the event loop.

The disk queue also keeps the items of the batches it wrote last in memory
(bounded by ``cache_bytes`` of their records), so a sender that keeps up hands
out what was just written without reading and decoding it back; what is not
cached (a backlog, a replay after a restart) is read from disk. The record on
disk is written and synced the same either way.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from agent.model import LogRecord, Sample, Signal, Span
from agent.workers import Worker

log = logging.getLogger("hostwatch.buffer")

_HEADER = struct.Struct("<4sIIIQ")
_MAGIC = b"HWB1"
_CRC_FROM = 12  # the CRC covers item count, created time and payload


@dataclass
class Batch:
    """A sealed batch in a queue. ``tokens`` are acknowledgement tokens (never persisted)."""

    signal: Signal
    items: list[Any]
    nbytes: int
    created_ns: int
    tokens: list[Any] = field(default_factory=list)


class MemoryQueue:
    durable = False

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: collections.deque[Batch] = collections.deque()
        self._inflight: Batch | None = None
        self._available = asyncio.Event()
        self.items = 0
        self.bytes = 0
        self.corrupt_records = 0

    async def open(self) -> None:
        pass

    def has_room(self, nbytes: int) -> bool:
        return self.bytes + nbytes <= self.capacity

    async def put(self, batch: Batch) -> None:
        self._queue.append(batch)
        self.items += len(batch.items)
        self.bytes += batch.nbytes
        self._available.set()

    def drop_oldest(self) -> Batch | None:
        if not self._queue:
            return None
        batch = self._queue.popleft()
        self.items -= len(batch.items)
        self.bytes -= batch.nbytes
        return batch

    async def take(self) -> Batch:
        while not self._queue:
            self._available.clear()
            await self._available.wait()
        self._inflight = self._queue.popleft()
        return self._inflight

    async def lookahead(self) -> Batch | None:
        """The batch :meth:`take` will hand out next, without taking it (waits for one)."""
        while not self._queue:
            self._available.clear()
            await self._available.wait()
        return self._queue[0]

    async def ack(self) -> None:
        batch, self._inflight = self._inflight, None
        if batch is not None:
            self.items -= len(batch.items)
            self.bytes -= batch.nbytes

    def oldest_ns(self) -> int | None:
        head = self._inflight or (self._queue[0] if self._queue else None)
        return head.created_ns if head else None

    def pending(self) -> list[Batch]:
        return ([self._inflight] if self._inflight else []) + list(self._queue)

    async def close(self) -> None:
        pass


@dataclass(slots=True)
class _Ref:
    segment: int
    offset: int
    length: int  # header + payload
    items: int
    created_ns: int


class DiskQueue:
    """Durable queue under ``directory``; see the module docstring for the format."""

    durable = True

    def __init__(
        self,
        directory: Path,
        capacity: int,
        *,
        signal: Signal,
        fsync: str = "batch",
        segment_bytes: int | None = None,
        on_corrupt: Callable[[int], None] | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        self.directory = directory
        self.capacity = capacity
        self.signal = signal
        self.fsync = fsync
        self.segment_bytes = segment_bytes or max(64 * 1024, min(16 * 1024 * 1024, capacity // 16))
        self.on_corrupt = on_corrupt or (lambda n: None)
        item = {Signal.METRICS: Sample, Signal.LOGS: LogRecord, Signal.TRACES: Span}[signal]
        self._item_type = list[item]  # type: ignore[valid-type]
        self._decoder = msgspec.msgpack.Decoder(self._item_type)
        self._encoder = msgspec.msgpack.Encoder()
        self._worker = Worker(f"buffer:{directory.name}")
        self._index: collections.deque[_Ref] = collections.deque()
        self._inflight: _Ref | None = None
        self._available = asyncio.Event()
        # (segment, offset) -> the items of a record still queued, as they were put
        self._cache: dict[tuple[int, int], list[Any]] = {}
        self._cache_bytes = 0
        self.cache_max = min(capacity // 8, 16 * 1024 * 1024) if cache_bytes is None else cache_bytes
        self._write_segment = 0
        self._write_fd: int | None = None
        self._write_size = 0
        self._last_fsync = 0.0
        self._retired_until = (0, 0)
        self._cursor_fd: int | None = None
        self._commit_failed = False
        self.items = 0
        self.bytes = 0
        self.corrupt_records = 0

    # ---------------------------------------------------------------- open

    async def open(self) -> None:
        await self._worker.run(self._open_sync)
        if self.corrupt_records:
            self.on_corrupt(self.corrupt_records)
        if self._index:
            self._available.set()

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"{number:010d}.seg"

    def _open_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())
        cursor_segment, cursor_offset = self._read_cursor()
        self._retired_until = (cursor_segment, cursor_offset)
        for number in segments:
            if number < cursor_segment:
                self._segment_path(number).unlink(missing_ok=True)  # retired before a crash
                continue
            start = cursor_offset if number == cursor_segment else 0
            self._scan_segment(number, start, is_last=number == segments[-1])
        self._write_segment = (segments[-1] + 1) if segments else max(cursor_segment, 1)
        for ref in self._index:
            self.items += ref.items
            self.bytes += ref.length

    def _read_cursor(self) -> tuple[int, int]:
        try:
            raw = (self.directory / "cursor").read_bytes()
            segment, offset, crc = struct.unpack("<QQI", raw)
            if zlib.crc32(raw[:16]) != crc:
                raise ValueError("checksum mismatch")
            return segment, offset
        except FileNotFoundError:
            return 0, 0
        except (OSError, struct.error, ValueError) as exc:
            log.error("buffer %s: unreadable cursor (%s): replaying from the oldest segment", self.directory, exc)
            return 0, 0

    def _scan_segment(self, number: int, start: int, *, is_last: bool) -> None:
        path = self._segment_path(number)
        data = path.read_bytes()
        pos, end, corrupt, good_end = start, len(data), 0, start
        while pos < end:
            ref = self._parse_at(data, pos, number)
            if ref is not None:
                self._index.append(ref)
                pos += ref.length
                good_end = pos
                continue
            corrupt += 1
            nxt = data.find(_MAGIC, pos + 1)
            if nxt < 0:
                break
            pos = nxt
        if corrupt:
            self.corrupt_records += corrupt
            log.error(
                "buffer %s: segment %s has %d damaged record(s) (torn write or corruption); "
                "they are skipped and counted, intact records are kept",
                self.directory,
                path.name,
                corrupt,
            )
            if good_end < end and is_last:
                with open(path, "r+b") as f:  # cut the torn tail so new appends follow a valid record
                    f.truncate(good_end)

    @staticmethod
    def _parse_at(data: bytes, pos: int, segment: int) -> _Ref | None:
        if pos + _HEADER.size > len(data):
            return None
        magic, length, crc, items, created_ms = _HEADER.unpack_from(data, pos)
        total = _HEADER.size + length
        if magic != _MAGIC or pos + total > len(data):
            return None
        if zlib.crc32(memoryview(data)[pos + _CRC_FROM : pos + total]) != crc:
            return None
        return _Ref(segment, pos, total, items, created_ms * 1_000_000)

    # --------------------------------------------------------------- write

    def has_room(self, nbytes: int) -> bool:
        return self.bytes + nbytes <= self.capacity

    async def put(self, batch: Batch) -> None:
        payload = self._encoder.encode(batch.items)
        ref = await self._worker.run(self._append_sync, payload, len(batch.items), batch.created_ns)
        self._index.append(ref)
        self.items += ref.items
        self.bytes += ref.length
        if self._cache_bytes + ref.length <= self.cache_max:
            self._cache[(ref.segment, ref.offset)] = batch.items
            self._cache_bytes += ref.length
        self._available.set()

    def _append_sync(self, payload: bytes, items: int, created_ns: int) -> _Ref:
        if self._write_fd is None or self._write_size >= self.segment_bytes:
            self._roll_sync()
        tail = struct.pack("<IQ", items, created_ns // 1_000_000) + payload
        record = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(tail), items, created_ns // 1_000_000) + payload
        offset = self._write_size
        try:
            self._write_all(record)
            self._sync_if_due()
        except OSError:
            # a partial write (ENOSPC) leaves a torn record: cut it so the segment stays valid
            os.ftruncate(self._write_fd, offset)
            raise
        self._write_size += len(record)
        return _Ref(self._write_segment, offset, len(record), items, (created_ns // 1_000_000) * 1_000_000)

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

    def _roll_sync(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_segment += 1
        path = self._segment_path(self._write_segment)
        self._write_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._write_size = os.fstat(self._write_fd).st_size

    # ---------------------------------------------------------------- read

    def drop_oldest(self) -> Batch | None:
        if not self._index:
            return None
        ref = self._index.popleft()
        self._uncache(ref)
        self.items -= ref.items
        self.bytes -= ref.length
        self._retire(ref)
        return Batch(self.signal, [None] * ref.items, ref.length, ref.created_ns)

    async def take(self) -> Batch:
        while True:
            while not self._index:
                self._available.clear()
                await self._available.wait()
            ref = self._index[0]
            items = self._cache.get((ref.segment, ref.offset))
            if items is None:
                try:
                    items = await self._worker.run(self._read_sync, ref)
                except (OSError, msgspec.DecodeError, ValueError) as exc:
                    if not self._index or self._index[0] is not ref:
                        continue  # dropped (drop_oldest) while it was being read
                    # the record passed its CRC at write or scan time; an unreadable one now is damage
                    log.error("buffer %s: cannot read a record (%s); it is skipped and counted", self.directory, exc)
                    self._index.popleft()
                    self.items -= ref.items
                    self.bytes -= ref.length
                    self._retire(ref)
                    self.corrupt_records += 1
                    self.on_corrupt(1)
                    continue
                if not self._index or self._index[0] is not ref:
                    continue  # dropped (drop_oldest) while it was being read
            self._index.popleft()
            self._uncache(ref)
            self._inflight = ref
            return Batch(self.signal, items, ref.length, ref.created_ns)

    async def lookahead(self) -> Batch | None:
        """The batch :meth:`take` will hand out next, without taking it (waits for one).

        Loads it into the cache when it is not there, so the following ``take`` does not
        read it again; None when it cannot be read (``take`` deals with that).
        """
        while not self._index:
            self._available.clear()
            await self._available.wait()
        ref = self._index[0]
        key = (ref.segment, ref.offset)
        items = self._cache.get(key)
        if items is None:
            try:
                items = await self._worker.run(self._read_sync, ref)
            except (OSError, msgspec.DecodeError, ValueError):
                return None
            if not self._index or self._index[0] is not ref:
                return None
            self._cache[key] = items  # one batch over cache_max at most: the next one out
            self._cache_bytes += ref.length
        return Batch(self.signal, items, ref.length, ref.created_ns)

    def _uncache(self, ref: _Ref) -> None:
        if self._cache.pop((ref.segment, ref.offset), None) is not None:
            self._cache_bytes -= ref.length

    def _read_sync(self, ref: _Ref) -> list[Any]:
        with open(self._segment_path(ref.segment), "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.length)
        parsed = self._parse_at(data, 0, ref.segment)
        if parsed is None:
            raise ValueError("checksum mismatch")
        return self._decoder.decode(memoryview(data)[_HEADER.size :])

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
            await self._worker.run(self._commit_sync, position)
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

    def _retire(self, ref: _Ref) -> None:
        end = (ref.segment, ref.offset + ref.length)
        if end > self._retired_until:
            self._retired_until = end

    def _commit_sync(self, position: tuple[int, int]) -> None:
        # overwritten in place: 20 bytes in an existing block need no free space, so a full
        # disk can still retire segments (a torn or stale cursor only replays, never skips)
        if self._cursor_fd is None:
            self._cursor_fd = os.open(self.directory / "cursor", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        body = struct.pack("<QQ", *position)
        os.pwrite(self._cursor_fd, body + struct.pack("<I", zlib.crc32(body)), 0)
        for path in self.directory.glob("*.seg"):
            if path.stem.isdigit() and int(path.stem) < position[0]:
                path.unlink(missing_ok=True)

    def oldest_ns(self) -> int | None:
        head = self._inflight or (self._index[0] if self._index else None)
        return head.created_ns if head else None

    def pending(self) -> list[Batch]:
        return []

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
