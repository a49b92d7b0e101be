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
the batch: a bug), ``shutdown`` (a memory buffer's leftovers at exit, and
batches a disk buffer held in memory and could not write then),
``corrupt`` (items of disk-buffer records found damaged, counted from their
headers or estimated).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from agent.batching import Batcher
from agent.lane_contract import LaneFill, LaneOwner, LaneSettings, Shutdown
from agent.model import Signal
from agent.pending import AckToken, PendingItems, item_size, item_sizes
from agent.plugin import Batch as ExportBatch
from agent.plugin import ResultKind
from agent.queue import Queue, QueuedBatch
from agent.retry import Backoff, sleep_or_stop

__all__ = ["AckToken", "Lane", "LaneFill", "LaneOwner", "LaneSettings", "Shutdown", "item_size", "item_sizes"]

log = logging.getLogger("hostwatch.delivery")
# loop turns the next batch's encoding waits, so the request in flight is written to the socket first
_LET_REQUEST_OUT = 4
# attempts of one batch that end in an exception (a bug) before it is dropped as ``error``
ERROR_ATTEMPTS = 3
ERROR_PAUSE = 1.0  # seconds between those attempts (at most retry_max)


class Lane:
    """One signal's way to one output: its :class:`~agent.batching.Batcher` (intake and
    sealing, a task), its queue, and the sender task, which delivers what is queued."""

    def __init__(
        self, owner: LaneOwner, signal: Signal, queue: Queue, settings: LaneSettings, shutdown: Shutdown
    ) -> None:
        self.owner = owner
        self.signal = signal
        self.queue = queue
        self.settings = settings
        self.shutdown = shutdown
        self.when_full = settings.when_full
        self.batcher = Batcher(owner, signal, queue, settings, shutdown)
        # the intake is the batcher's (see agent.batching); bound here, so a call costs no extra frame
        self.offer = self.batcher.offer
        self.accept = self.batcher.accept
        self._tasks: list[asyncio.Task] = []

    @property
    def pending(self) -> PendingItems:
        """Items taken in and not sealed into a batch yet."""
        return self.batcher.pending

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
            asyncio.create_task(self.batcher.run(), name=f"batcher:{name}"),
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
            self.batcher.finish(batch)
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
        await self.batcher.seal()
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
        await self.queue.close()
        leftovers = self.queue.pending()
        if leftovers:  # memory queue (or batches a disk buffer held and could not write): these end here
            why = "memory buffer not delivered before shutdown_timeout"
            if self.queue.durable:
                why = "held in memory, not delivered before shutdown_timeout, and the disk buffer refused it"
            for batch in leftovers:
                self.batcher.finish(batch, dropped="shutdown", why=why)
        if self.pending:  # a full buffer at shutdown ("block"): never queued, so their sources were not
            # acknowledged either; log files send these lines again after the restart
            self.owner.dropped(len(self.pending), "shutdown", "not buffered before shutdown: the buffer was full")
            self.batcher.pending.clear()
        if self.queue.items and self.queue.durable:
            log.info(
                "output %s: %d %s item(s) stay in the disk buffer for the next start",
                self.owner.name,
                self.queue.items,
                self.signal.value,
            )
