"""Per-output delivery: batching, the bounded queue, retries, and the drop ledger.

An output gets one *lane* per signal it accepts. A lane gathers items into a
pending batch, seals it when it reaches ``batch_max_items`` or
``batch_max_bytes`` or has waited ``flush_interval``, puts it in the lane's
queue (memory or disk), and a sender task exports queued batches one at a
time, in order (one request in flight). While a request is in flight the
sender hands the next queued batch to the output's ``prepare``, so the output
can encode it meanwhile; what ``prepare`` returns travels with the batch to its
``export``. Everything a lane gives up is counted in
``hostwatch_output_dropped_items_total{output,reason}`` and logged once per
distinct reason; nothing leaves silently.

A lane talks to the output that owns it only through :class:`LaneOwner` (the
``OutputRunner``), one way: it asks it to prepare and export a batch, and tells
it what happened. The owner talks to the lane through its public methods.

Drop reasons: ``buffer_full`` (drop_oldest), ``rejected`` (a 4xx), ``too_large``
(one item over the backend's limit), ``partial_success`` (items the backend
refused in an accepted request), ``retry_expired`` (``retry_max_elapsed``),
``buffer_write_error`` (a metrics batch the disk refused), ``error`` (the
output's export, or the sender itself, raised ``ERROR_ATTEMPTS`` times for
the batch: a bug), ``shutdown`` (a memory buffer's leftovers at exit),
``corrupt`` (items of disk-buffer records found damaged, counted from their
headers or estimated).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from agent.lane_contract import LaneFill, LaneOwner, LaneSettings, Shutdown
from agent.model import Signal
from agent.pending import AckToken, PendingItems, item_size, item_sizes
from agent.plugin import Batch as ExportBatch
from agent.plugin import ResultKind
from agent.queue import Dropped, Queue, QueuedBatch
from agent.retry import Backoff, sleep_or_stop

__all__ = ["AckToken", "Lane", "LaneFill", "LaneOwner", "LaneSettings", "Shutdown", "item_size", "item_sizes"]

log = logging.getLogger("hostwatch.delivery")
# the rest of a log batch sealed full waits this long for more lines before it goes out alone
_REST_LINGER = 0.1
# loop turns the next batch's encoding waits, so the request in flight is written to the socket first
_LET_REQUEST_OUT = 4
# attempts of one batch that end in an exception (a bug) before it is dropped as ``error``
ERROR_ATTEMPTS = 3
ERROR_PAUSE = 1.0  # seconds between those attempts (at most retry_max)


class Lane:
    """One signal's way to one output: intake, the batcher task, the queue, the sender task."""

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
        self._seal_now = asyncio.Event()
        self._has_pending = asyncio.Event()
        self._drained = asyncio.Event()
        self._space = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.queue.open()
        if self.queue.items:
            log.info(
                "output %s: replaying %d buffered %s item(s) first",
                self.owner.name,
                self.queue.items,
                self.signal.value,
            )
        name = f"{self.owner.name}:{self.signal.value}"
        self._tasks = [
            asyncio.create_task(self._batcher(), name=f"batcher:{name}"),
            asyncio.create_task(self._sender(), name=f"sender:{name}"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task) -> None:
        """The loops catch every failure; should one still end a task, it is said, never silent."""
        if not task.cancelled() and isinstance(exc := task.exception(), Exception):
            self.owner.unexpected(f"the {task.get_name()} task", exc, then="the lane has stopped")

    def fill(self) -> LaneFill:
        """What the lane holds now, pending and queued (for gauges, /ready and the status page)."""
        queue = self.queue
        return LaneFill(
            items=queue.items + len(self.pending),
            nbytes=queue.bytes + self.pending.nbytes,
            queued_bytes=queue.bytes,
            capacity=queue.capacity,
            oldest_ns=queue.oldest_ns(),
            corrupt_records=queue.corrupt_records,
        )

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
        if not pending:
            self._has_pending.set()
        pending.add(items, sizes, token)
        self._last_intake = time.monotonic()
        if flush or pending.full(self.max_items, self.max_bytes):
            self._flush = self._flush or flush
            self._seal_now.set()

    # ------------------------------------------------------------- batcher

    async def _batcher(self) -> None:
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
                # that arrives as the event is set, and drain() would wait for this task forever
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
                await self.seal(full_only=self.signal is Signal.LOGS and not due)
                self._rest = bool(self.pending)

    async def seal(self, *, full_only: bool = False) -> None:
        """Move everything pending into the queue, in batches of at most max items / bytes;
        with ``full_only``, only full batches (a partial rest stays pending)."""
        pending = self.pending
        while pending:
            if full_only and not pending.full(self.max_items, self.max_bytes):
                break
            items, size, tokens = pending.cut(self.max_items, self.max_bytes)
            if not await self._enqueue(QueuedBatch(self.signal, items, size, self.owner.clock(), tokens)):
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
                self._finish(batch, dropped="buffer_full", why="batch larger than buffer_max_bytes")
                return True
            self._finish(oldest, dropped="buffer_full", why="buffer full (when_full = drop_oldest)")
        while True:
            try:
                await queue.put(batch)
                break
            except OSError as exc:
                self.owner.note_error(f"buffer write failed: {exc.strerror or exc}")
                if self.when_full != "block" or self.shutdown.draining:
                    self._finish(batch, dropped="buffer_write_error", why=f"buffer write failed: {exc.strerror}")
                    return True
                await asyncio.sleep(1.0)  # logs wait for the disk; their sources stay paused
        if queue.durable:
            for token in batch.tokens:
                token.done()
            batch.tokens = []
        self.owner.update_gauges()
        return True

    def _unseal(self, batch: QueuedBatch) -> None:
        """Put a batch that could not be queued back in front of what is pending."""
        self.pending.put_back(batch.items, batch.nbytes, batch.tokens)
        batch.tokens = []

    def _finish(self, batch: QueuedBatch | Dropped, *, dropped: str | None = None, why: str = "") -> None:
        """A batch leaves for good: its sources are released, drops counted."""
        if dropped:
            self.owner.dropped(batch.count, dropped, why)
        for token in batch.tokens:
            token.done()
        batch.tokens = []
        self._space.set()

    # -------------------------------------------------------------- sender

    async def _sender(self) -> None:
        while True:
            try:
                batch = await self.queue.take()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nothing was taken, so nothing is lost: say it and look again
                self.owner.unexpected("taking a batch from the buffer", exc, then="the sender looks again")
                await asyncio.sleep(ERROR_PAUSE)
                continue
            if not await self._send(batch):
                return  # shutdown cut the retries short: the batch stays queued

    async def _send(self, batch: QueuedBatch) -> bool:
        """Deliver a taken batch until it leaves the queue: delivered, or dropped and counted.

        False when shutdown cut it short: it stays queued (on disk for the next start,
        or counted by :meth:`close`). An unexpected exception on the way (a bug in the
        engine) never loses the batch with the task: it is logged and counted, and the
        batch is sent again; after ``ERROR_ATTEMPTS`` of them it is dropped as ``error``,
        so a failure that repeats on this batch cannot hold the lane for good.
        """
        owner = self.owner
        # a plain pause, not Backoff: this path must not lean on the code that may have failed
        pause = min(ERROR_PAUSE, self.settings.retry_max)
        failures = 0
        while True:
            ahead = asyncio.create_task(self._prepare_next())
            try:
                if not await self._deliver(batch.items, batch.prepared):
                    return False
                await self.queue.ack()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                owner.unexpected("sending a batch", exc)
                if failures >= ERROR_ATTEMPTS:
                    why = f"sending failed {failures} times: {type(exc).__name__}: {exc}"
                    owner.dropped(len(batch.items), "error", why)
                    with contextlib.suppress(Exception):
                        await self.queue.ack()
                    break
                if await sleep_or_stop(pause, self.shutdown.stopped):
                    return False
            finally:
                ahead.cancel()
        try:
            self._finish(batch)
            owner.update_gauges()
        except Exception as exc:  # the batch has left already (delivered or counted): only say it
            owner.unexpected("releasing a sent batch", exc, then="the sender goes on")
        return True

    async def _prepare_next(self) -> None:
        """While a request is in flight, let the output prepare the next batch (CPU the wait leaves idle)."""
        try:
            for _ in range(_LET_REQUEST_OUT):
                await asyncio.sleep(0)
            batch = await self.queue.lookahead()
            if batch is not None and batch.prepared is None:
                batch.prepared = self.owner.prepare(ExportBatch(self.signal, batch.items))
        except Exception:  # only a head start: export encodes the batch itself, and reports what fails
            log.debug("output %s: preparing the next batch failed", self.owner.name, exc_info=True)

    async def _deliver(self, items: list[Any], prepared: Any = None) -> bool:
        owner, settings = self.owner, self.settings
        backoff = Backoff(settings.retry_initial, settings.retry_max)
        first = time.monotonic()
        errors = 0
        while True:
            result = await owner.attempt(ExportBatch(self.signal, items, prepared))
            kind = result.kind
            if kind is ResultKind.OK:
                owner.succeeded(self.signal, len(items) - result.rejected)
                if result.rejected:
                    owner.dropped(result.rejected, "partial_success", result.reason)
                return True
            if kind is ResultKind.TOO_LARGE:
                if len(items) == 1:
                    owner.dropped(1, "too_large", result.reason)
                    return True
                half = len(items) // 2  # halves are new batches: nothing was prepared for them
                return await self._deliver(items[:half]) and await self._deliver(items[half:])
            if kind is ResultKind.DROP:
                owner.dropped(len(items), "rejected", result.reason)
                return True
            if kind is ResultKind.ERROR:
                # the output raised: a passing fault gets another try, a bug that fails this
                # batch every time (an encoder's) is given up rather than holding the lane
                errors += 1
                if errors >= ERROR_ATTEMPTS:
                    owner.dropped(len(items), "error", result.reason)
                    return True
            delay = backoff.next_delay(result.after)
            limit = settings.retry_max_elapsed
            if limit and time.monotonic() - first + delay > limit:
                owner.dropped(len(items), "retry_expired", f"still failing after {limit:g}s: {result.reason}")
                return True
            owner.retried()
            if await sleep_or_stop(delay, self.shutdown.stopped):
                return False

    # ------------------------------------------------------------ shutdown

    async def drain(self) -> None:
        """Seal what is pending, deliver until the queue is empty or the shutdown's deadline passes.

        The owner has begun draining its :class:`Shutdown`: sealing no longer waits for room."""
        self._tasks[0].cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._tasks[0]
        await self.seal()
        deadline = self.shutdown.deadline or 0.0
        while self.queue.items and time.monotonic() < deadline and not self._tasks[1].done():
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stop the tasks; a memory buffer's leftovers and what never got queued are counted."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        leftovers = self.queue.pending()
        if leftovers:  # memory queue: these items end with the process
            for batch in leftovers:
                self._finish(batch, dropped="shutdown", why="memory buffer not delivered before shutdown_timeout")
        if self.pending:  # a full buffer at shutdown ("block"): never queued, so their sources were not
            # acknowledged either; log files send these lines again after the restart
            self.owner.dropped(len(self.pending), "shutdown", "not buffered before shutdown: the buffer was full")
            self.pending.clear()
        await self.queue.close()
        if self.queue.items and self.queue.durable:
            log.info(
                "output %s: %d %s item(s) stay in the disk buffer for the next start",
                self.owner.name,
                self.queue.items,
                self.signal.value,
            )
