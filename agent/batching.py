"""The intake half of an output lane: items gathered into batches and put in the lane's queue.

A :class:`Batcher` takes items from the pipeline (it is the lane's
:class:`~agent.lane_contract.Intake`), keeps them pending until a batch is full
(``batch_max_items`` / ``batch_max_bytes``), has waited ``flush_interval``, or a
waiting source asks for it (``flush``), then seals them into :class:`QueuedBatch`
es and puts those in the queue: waiting for room (``when_full = "block"``, which
pauses the sources) or dropping the oldest batch (``"drop_oldest"``, counted).
A durable queue acknowledges the sources once their items are on disk or delivered
(``agent.buffer``); a memory queue's, when the batch leaves it (:meth:`Batcher.finish`).

Log lines adapt the batch to the backlog: the first lines into a lane that was idle
(nothing queued or in flight) for ``flush_interval`` are sealed at once, and what comes
while they are in flight fills full batches; at a steady low rate the lane is never idle
that long, so a partial batch still waits for ``flush_interval``. While such a lane takes up
its backlog (until it seals its first full batch), at least half a full batch pending is
sealed as soon as nothing is being written, queued or in flight, rather than leave the
backend idle while the rest of a full batch is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any

from agent.lane_contract import LaneOwner, LaneSettings, Shutdown
from agent.model import Signal
from agent.pending import AckToken, PendingItems, item_sizes
from agent.queue import Dropped, Queue, QueuedBatch

# the rest of a log batch sealed full waits this long for more lines before it goes out alone
_REST_LINGER = 0.1


class Batcher:
    """A lane's pending items, and the task that seals them into its queue."""

    def __init__(
        self, owner: LaneOwner, signal: Signal, queue: Queue, settings: LaneSettings, shutdown: Shutdown
    ) -> None:
        self.owner = owner
        self.signal = signal
        self.queue = queue
        self.settings = settings
        self.shutdown = shutdown
        self.when_full = settings.when_full
        self.max_items = settings.max_items
        self.max_bytes = settings.max_bytes
        self.pending = PendingItems()
        self._last_intake = 0.0
        self._rest = False  # what is pending is the rest of a full batch sealed before it
        self._flush = False  # a source waits on its acknowledgement: seal without waiting for more
        # a source waits on its acknowledgement (flush=True): the batch is written at once, not held in
        # memory until delivered (see agent.buffer: the wait would be the backend's, up to write_delay)
        self._waiting = False
        # when the lane last became quiet: nothing being written to the queue, queued or in flight
        self._idle_since = -math.inf
        # batches sealed and not in the queue yet (a disk append): lines that come meanwhile do not
        # find the lane quiet, though the queue may be empty
        self._writing = 0
        # from an idle lane's first lines until its first full batch: a backlog is being taken up
        self._ramp = False
        self._seal_now = asyncio.Event()
        self._has_pending = asyncio.Event()
        self._drained = asyncio.Event()
        self._space = asyncio.Event()

    # -------------------------------------------------------------- intake

    def offer(self, items: Sequence[Any], token: AckToken | None = None, *, flush: bool = False) -> None:
        """Metrics intake: never waits; an overfull pending batch sheds its oldest items.

        ``flush``: the source waits for the acknowledgement (the OTLP receiver's
        sender does), so what is pending is sealed now, not after flush_interval."""
        pending = self.pending
        if not pending:
            self._has_pending.set()
        pending.add(items, item_sizes(items), token)
        if flush or pending.full(self.max_items, self.max_bytes):
            self._flush = self._flush or flush
            self._waiting = self._waiting or flush
            self._seal_now.set()
        limit = 4 * self.max_bytes
        if pending.nbytes > limit:  # the queue is stalled (disk): keep memory bounded
            shed = pending.shed(limit // 2)
            self.owner.dropped(shed, "buffer_full", "pending batch over its bound while the buffer is stalled")

    async def accept(self, items: Sequence[Any], token: AckToken | None, *, flush: bool = False) -> None:
        """Logs intake: with ``when_full = "block"`` waits for room (the source pauses);
        ``flush`` as for :meth:`offer`."""
        sizes = item_sizes(items)
        pending = self.pending
        # a full pending batch waits for the batcher to queue it; with "block" and a full
        # queue that wait lasts until the output makes room, which pauses the source
        while pending.full(self.max_items, self.max_bytes):
            self._drained.clear()
            self._seal_now.set()
            await self._drained.wait()
        now = time.monotonic()
        # the first lines after the lane sat idle (nothing queued or in flight) for flush_interval go
        # out at once: nothing would share the backend with them, and waiting adds only latency; the
        # lines that come while they are in flight fill the next batch as before
        logs = self.signal is Signal.LOGS
        first = logs and not pending and self._idle(now)
        if first:
            self._ramp = True
        if not pending:
            self._has_pending.set()
        pending.add(items, sizes, token)
        self._last_intake = now
        # a backlog while the backend has nothing to do goes now: waiting for the rest of a full batch
        # would leave it idle for that long
        backlog = self._ramp and self._backlog() and self._idle(now, 0.0)
        if flush or first or backlog or pending.full(self.max_items, self.max_bytes):
            self._flush = self._flush or flush or first or backlog
            self._waiting = self._waiting or flush
            self._seal_now.set()

    def _idle(self, now: float, since: float | None = None) -> bool:
        """Nothing being written, queued or in flight, and nothing was for ``since`` (flush_interval)."""
        quiet = self.settings.flush_interval if since is None else since
        return not self._writing and not self.queue.items and now - self._idle_since >= quiet

    def _backlog(self) -> bool:
        """At least half a full batch pending: more than a low rate gathers while a request is in flight."""
        pending = self.pending
        return 2 * len(pending) >= self.max_items or 2 * pending.nbytes >= self.max_bytes

    # ------------------------------------------------------------- sealing

    async def run(self) -> None:
        """The batcher task: seal what is pending when it is full, waited long enough, or asked for."""
        flush_interval = self.settings.flush_interval
        while True:
            if not self.pending:
                self._has_pending.clear()
                await self._has_pending.wait()
            now = time.monotonic()
            deadline = self.pending.since + flush_interval
            if self._rest:
                deadline = min(deadline, self._last_intake + _REST_LINGER)
            if now < deadline and not self._seal_now.is_set():
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
                # that arrives as the event is set, and the lane's drain() would wait for this task forever
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - now):
                        await self._seal_now.wait()
                if not self._seal_now.is_set():
                    continue  # a deadline: look again, an intake may have moved it
            self._seal_now.clear()
            if self.pending:
                # A log stream tops a partial batch up within moments: when a full batch is what
                # woke us, the rest waits for more rather than going out alone as a small request,
                # until the stream pauses (_REST_LINGER) or flush_interval passes.
                now = time.monotonic()
                due = (
                    self._flush
                    or now >= self.pending.since + flush_interval
                    or (self._rest and now >= self._last_intake + _REST_LINGER)
                )
                self._flush = False  # what arrives while sealing is sealed by this round too
                waiting, self._waiting = self._waiting, False
                await self.seal(full_only=self.signal is Signal.LOGS and not due, hold=not waiting)
                self._rest = bool(self.pending)

    async def seal(self, *, full_only: bool = False, hold: bool = True) -> None:
        """Move everything pending into the queue, in batches of at most max items / bytes;
        with ``full_only``, only full batches (a partial rest stays pending); ``hold=False``: none
        of them may wait in memory (``QueuedBatch.replayable``: a source waits for them)."""
        pending = self.pending
        while pending:
            if full_only and not pending.full(self.max_items, self.max_bytes):
                break
            items, size, tokens, replayable = pending.cut(self.max_items, self.max_bytes)
            if len(items) >= self.max_items or pending:  # a full batch (a bound cut it)
                self._ramp = False  # the backlog is taken up: batches wait to be full again
            self._writing += 1
            try:
                clock = self.owner.clock()
                batch = QueuedBatch(self.signal, items, size, clock, tokens, replayable=replayable and hold)
                queued = await self._enqueue(batch)
            finally:
                self._writing -= 1
            if not queued:
                break  # shutdown with a full buffer: the rest stays pending, close() counts it
            self._drained.set()

    async def _enqueue(self, batch: QueuedBatch) -> bool:
        """Queue a sealed batch (or count it dropped); False: it went back to pending (shutdown)."""
        queue = self.queue
        while not queue.has_room(batch.nbytes):
            if self.when_full == "block":
                if self.shutdown.draining:  # at shutdown there is no waiting for room that may never come
                    self._unseal(batch)
                    return False
                self._space.clear()
                try:
                    await self._space.wait()
                except asyncio.CancelledError:
                    self._unseal(batch)  # never lose a batch to a cancelled wait: close() counts it
                    raise
                continue
            oldest = queue.drop_oldest()
            if oldest is None:  # a single batch larger than the whole buffer
                self.finish(batch, dropped="buffer_full", why="batch larger than buffer_max_bytes")
                return True
            self.finish(oldest, dropped="buffer_full", why="buffer full (when_full = drop_oldest)")
        while True:
            put = asyncio.ensure_future(queue.put(batch))
            try:
                await asyncio.shield(put)
                break
            except asyncio.CancelledError:
                # shutdown cancels this task (the lane's drain) while a disk append may be under way on the
                # buffer's thread: the batch ends up queued (its sources acknowledged) or back in pending,
                # never between the two, where it would be lost once a later batch's acknowledgement moved
                # the sources' checkpoint past its lines
                while not put.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(put)
                if put.cancelled() or put.exception() is not None:
                    self._unseal(batch)
                else:
                    self._queued(batch)
                raise
            except OSError as exc:
                self.owner.note_error(f"buffer write failed: {exc.strerror or exc}")
                if self.when_full != "block" or self.shutdown.draining:
                    self.finish(batch, dropped="buffer_write_error", why=f"buffer write failed: {exc.strerror}")
                    return True
                await asyncio.sleep(1.0)  # logs wait for the disk; their sources stay paused
        self._queued(batch)
        return True

    def _queued(self, batch: QueuedBatch) -> None:
        """A batch is in the queue (a durable one tells its sources itself, see ``Queue.durable``)."""
        self.owner.update_gauges()

    def _unseal(self, batch: QueuedBatch) -> None:
        """Put a batch that could not be queued back in front of what is pending."""
        self.pending.put_back(batch.items, batch.nbytes, batch.tokens, batch.replayable)
        batch.tokens = []

    def finish(self, batch: QueuedBatch | Dropped, *, dropped: str | None = None, why: str = "") -> None:
        """A batch leaves for good: its sources are released, drops counted."""
        if dropped:
            self.owner.dropped(batch.count, dropped, why)
        for token in batch.tokens:
            token.done()
        batch.tokens = []
        self._space.set()
        if not self.queue.items and not self._writing:  # the lane is quiet from now
            self._idle_since = time.monotonic()
            if self._ramp and self.pending and self._backlog():
                self._flush = True  # the backlog gathered meanwhile goes now (see accept)
                self._seal_now.set()
