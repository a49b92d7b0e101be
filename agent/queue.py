"""The queue a lane puts sealed batches in, and its in-memory kind.

Every output lane has one :class:`Queue`: :class:`MemoryQueue` (here) or the durable
``agent.buffer.DiskQueue``. Both keep batches in order and hand them out one at a
time: ``take`` returns the oldest batch not yet handed out, ``ack`` retires it once
the output has delivered (or given up on) it, ``drop_oldest`` discards the oldest
batch not yet handed out, to make room when ``when_full = "drop_oldest"``.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.model import Signal


@dataclass(slots=True)
class QueuedBatch:
    """A batch a lane sealed, as it waits in (or leaves) a queue.

    Not the plugin contract's ``Batch`` (what an output is handed): this one also
    carries what the engine needs on the way. ``tokens`` are the acknowledgement
    tokens of the sources whose items it holds (never persisted); ``prepared`` is
    what the output's ``prepare`` returned for it, handed back to its ``export``;
    ``replayable``: every item came with a token, so its sources send it again
    until those are done (a durable queue may then hold it in memory for a while,
    see ``agent.buffer``).
    """

    signal: Signal
    items: list[Any]
    nbytes: int
    created_ns: int
    tokens: list[Any] = field(default_factory=list)
    prepared: Any = None
    replayable: bool = False

    @property
    def count(self) -> int:
        return len(self.items)


@dataclass(slots=True)
class Dropped:
    """What :meth:`Queue.drop_oldest` gave up when the items themselves stay unread (on disk)."""

    count: int
    tokens: list[Any] = field(default_factory=list)


class Queue(Protocol):
    """A lane's bounded queue of sealed batches (see the module docstring)."""

    durable: bool
    """True: the queue tells a batch's sources (its tokens) itself, once the batch and every batch put
    before it are on disk or delivered; False: the lane tells them when the batch leaves."""
    capacity: int
    items: int
    bytes: int
    corrupt_records: int

    async def open(self) -> None:
        """Ready the queue; a durable one indexes what it holds from before (replayed first)."""

    def has_room(self, nbytes: int) -> bool: ...

    async def put(self, batch: QueuedBatch) -> None:
        """Append a batch (a durable queue raises ``OSError`` when the disk refuses it)."""

    def drop_oldest(self) -> QueuedBatch | Dropped | None:
        """Discard the oldest batch not handed out yet: the batch, or (disk) only its count; None if empty."""

    async def take(self) -> QueuedBatch:
        """The oldest batch not handed out yet (waits for one); it stays counted until :meth:`ack`."""

    async def lookahead(self) -> QueuedBatch | None:
        """The batch :meth:`take` hands out next, without taking it (waits for one); None if unreadable."""

    async def ack(self) -> None:
        """Retire the batch :meth:`take` handed out last."""

    def oldest_ns(self) -> int | None: ...

    def pending(self) -> list[QueuedBatch]:
        """The batches that end with the queue, asked after :meth:`close`: a memory queue's; a durable
        one's only if it could not write them (``agent.buffer``: batches held in memory)."""

    async def close(self) -> None: ...


class MemoryQueue:
    """A :class:`Queue` in memory: fast, and gone with the process."""

    durable = False

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: collections.deque[QueuedBatch] = collections.deque()
        self._inflight: QueuedBatch | None = None
        self._available = asyncio.Event()
        self.items = 0
        self.bytes = 0
        self.corrupt_records = 0

    async def open(self) -> None:
        pass

    def has_room(self, nbytes: int) -> bool:
        return self.bytes + nbytes <= self.capacity

    async def put(self, batch: QueuedBatch) -> None:
        self._queue.append(batch)
        self.items += len(batch.items)
        self.bytes += batch.nbytes
        self._available.set()

    def drop_oldest(self) -> QueuedBatch | None:
        if not self._queue:
            return None
        batch = self._queue.popleft()
        self.items -= len(batch.items)
        self.bytes -= batch.nbytes
        return batch

    async def take(self) -> QueuedBatch:
        while not self._queue:
            self._available.clear()
            await self._available.wait()
        self._inflight = self._queue.popleft()
        return self._inflight

    async def lookahead(self) -> QueuedBatch | None:
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

    def pending(self) -> list[QueuedBatch]:
        return ([self._inflight] if self._inflight else []) + list(self._queue)

    async def close(self) -> None:
        pass
