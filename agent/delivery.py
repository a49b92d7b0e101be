"""Per-output delivery: batching, the bounded queue, retries, and the drop ledger.

An output gets one *lane* per signal it accepts. A lane gathers items into a
pending batch, seals it when it reaches ``batch_max_items`` or
``batch_max_bytes`` or has waited ``flush_interval``, puts it in the lane's
queue (memory or disk), and a sender task exports queued batches one at a
time, in order (one request in flight). An output may define a synchronous
``prepare(batch)``: the sender calls it for the next queued batch while the
current request is in flight, so the output can encode that batch meanwhile;
its ``export`` of that batch then uses the result. Everything a lane gives up
is counted in ``hostwatch_output_dropped_items_total{output,reason}`` and
logged once per distinct reason; nothing leaves silently.

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
import bisect
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.buffer import Batch, DiskQueue, MemoryQueue
from agent.model import LogRecord, Sample, Signal, Span
from agent.plugin import Batch as ExportBatch
from agent.plugin import ResultKind
from agent.retry import Backoff, sleep_or_stop

if TYPE_CHECKING:
    from agent.output_runner import OutputRunner

log = logging.getLogger("hostwatch.delivery")
DEFAULT_BATCH, DEFAULT_LOG_BATCH = 2000, 10000
EXPORT_GUARD_SECONDS = 120.0  # outputs enforce their own timeout; this only catches a hung bug
# the rest of a log batch sealed full waits this long for more lines before it goes out alone
_REST_LINGER = 0.1
# loop turns the next batch's encoding waits, so the request in flight is written to the socket first
_LET_REQUEST_OUT = 4
# attempts of one batch that end in an exception (a bug) before it is dropped as ``error``
ERROR_ATTEMPTS = 3
ERROR_PAUSE = 1.0  # seconds between those attempts (at most retry_max)


def item_size(item: Sample | LogRecord | Span) -> int:
    """Approximate encoded size, cheap enough to compute per item."""
    if type(item) is Span:
        return 24 + len(item.span) + len(item.resource) + len(item.scope)
    labels = item.labels
    size = 24 + sum(len(k) + len(v) for k, v in labels) if labels else 24
    if type(item) is Sample:
        return size + len(item.name)
    return size + len(item.body) + (sum(len(k) + len(v) for k, v in item.attributes) if item.attributes else 0)


def item_sizes(items: Sequence[Any]) -> list[int]:
    """``[item_size(i) for i in items]``, with little Python code per log record.

    A file's lines share one label tuple: labels are sized once per run of records
    that share it, so a record costs about one ``len`` of its body.
    """
    if not items or type(items[0]) is not LogRecord:
        return list(map(item_size, items))
    try:
        sizes: list[int] = []
        start = 0
        for labels, run in itertools.groupby([r.labels for r in items]):
            count = len(list(run))
            base = 24 + sum(len(k) + len(v) for k, v in labels) if labels else 24
            part = items[start : start + count] if count != len(items) else items
            sizes += [base + len(r.body) for r in part]
            start += count
        if any([r.attributes for r in items]):
            for i, record in enumerate(items):
                if record.attributes:
                    sizes[i] += sum(len(k) + len(v) for k, v in record.attributes)
    except AttributeError:  # not all of them log records
        return list(map(item_size, items))
    return sizes


class AckToken:
    """Counts down the lanes that still have to take a source's records durably."""

    __slots__ = ("callback", "remaining")

    def __init__(self, remaining: int, callback: Callable[[], None]) -> None:
        self.remaining = remaining
        self.callback = callback

    def done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            try:
                self.callback()
            except Exception:
                log.exception("acknowledgement callback failed")


class Lane:
    def __init__(self, runner: OutputRunner, signal: Signal, queue: MemoryQueue | DiskQueue, when_full: str) -> None:
        self.runner = runner
        self.signal = signal
        self.queue = queue
        self.when_full = when_full
        common = runner.common
        # log receivers pay a fixed cost per request (VictoriaLogs: about 6 ms), so log batches
        # are larger by default; metrics keep remote-write's customary 2000
        self.max_items = common.batch_max_items or (DEFAULT_LOG_BATCH if signal is Signal.LOGS else DEFAULT_BATCH)
        self.max_bytes = common.batch_max_bytes
        self.flush_interval = common.flush_interval
        self.pending: list[Any] = []
        self.pending_sizes: list[int] = []  # item_size of each pending item, computed once
        self.pending_bytes = 0
        # (number of pending items up to and including the ones a token covers, the token):
        # a token is done once every item before that mark has been queued
        self.pending_tokens: list[tuple[int, AckToken]] = []
        self.pending_since = 0.0
        self._last_intake = 0.0
        self._rest = False  # what is pending is the rest of a full batch sealed before it
        self._flush = False  # a source waits on its acknowledgement: seal without waiting for more
        self.closing = False  # set by drain(): sealing must no longer wait for room
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
                self.runner.name,
                self.queue.items,
                self.signal.value,
            )
        name = f"{self.runner.name}:{self.signal.value}"
        self._tasks = [
            asyncio.create_task(self._batcher(), name=f"batcher:{name}"),
            asyncio.create_task(self._sender(), name=f"sender:{name}"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task) -> None:
        """The loops catch every failure; should one still end a task, it is said, never silent."""
        if not task.cancelled() and isinstance(exc := task.exception(), Exception):
            self.runner.unexpected(f"the {task.get_name()} task", exc, then="the lane has stopped")

    # -------------------------------------------------------------- intake

    def offer(self, items: Sequence[Any], token: AckToken | None = None, *, flush: bool = False) -> None:
        """Metrics intake: never waits; an overfull pending batch sheds its oldest items.

        ``flush``: the source waits for the acknowledgement (the OTLP receiver's
        sender does), so what is pending is sealed now, not after flush_interval."""
        if not self.pending:
            self.pending_since = time.monotonic()
            self._has_pending.set()
        sizes = item_sizes(items)
        self.pending.extend(items)
        self.pending_sizes += sizes
        self.pending_bytes += sum(sizes)
        if token is not None:
            self.pending_tokens.append((len(self.pending), token))
        if flush or len(self.pending) >= self.max_items or self.pending_bytes >= self.max_bytes:
            self._flush = self._flush or flush
            self._seal_now.set()
        limit = 4 * self.max_bytes
        if self.pending_bytes > limit:  # the queue is stalled (disk): keep memory bounded
            shed, freed = 0, 0
            for size in self.pending_sizes:
                if self.pending_bytes - freed <= limit // 2:
                    break
                shed += 1
                freed += size
            del self.pending[:shed], self.pending_sizes[:shed]
            self.pending_bytes -= freed
            # a token whose items all went is done with the next batch, as the dropped items are
            self.pending_tokens = [(max(0, end - shed), token) for end, token in self.pending_tokens]
            self.runner.dropped(shed, "buffer_full", "pending batch over its bound while the buffer is stalled")

    async def accept(self, items: Sequence[Any], token: AckToken | None, *, flush: bool = False) -> None:
        """Logs intake: with ``when_full = "block"`` waits for room (the source pauses);
        ``flush`` as for :meth:`offer`."""
        sizes = item_sizes(items)
        # a full pending batch waits for the batcher to queue it; with "block" and a full
        # queue that wait lasts until the output makes room, which pauses the source
        while self.pending_bytes >= self.max_bytes or len(self.pending) >= self.max_items:
            self._drained.clear()
            self._seal_now.set()
            await self._drained.wait()
        if not self.pending:
            self.pending_since = time.monotonic()
            self._has_pending.set()
        self.pending.extend(items)
        self.pending_sizes += sizes
        self.pending_bytes += sum(sizes)
        self._last_intake = time.monotonic()
        if token is not None:
            self.pending_tokens.append((len(self.pending), token))
        if flush or len(self.pending) >= self.max_items or self.pending_bytes >= self.max_bytes:
            self._flush = self._flush or flush
            self._seal_now.set()

    # ------------------------------------------------------------- batcher

    async def _batcher(self) -> None:
        while True:
            if not self.pending:
                self._has_pending.clear()
                await self._has_pending.wait()
            now = time.monotonic()
            deadline = self.pending_since + self.flush_interval
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
                    or now >= self.pending_since + self.flush_interval
                    or (self._rest and now >= self._last_intake + _REST_LINGER)
                )
                self._flush = False  # what arrives while sealing is sealed by this round too
                await self.seal(full_only=self.signal is Signal.LOGS and not due)
                self._rest = bool(self.pending)

    async def seal(self, *, full_only: bool = False) -> None:
        """Move everything pending into the queue, in batches of at most max items / bytes;
        with ``full_only``, only full batches (a partial rest stays pending)."""
        while self.pending:
            sizes = self.pending_sizes
            if full_only and len(sizes) < self.max_items and self.pending_bytes < self.max_bytes:
                break
            count = min(len(sizes), self.max_items)
            size = sum(sizes[:count])
            if size > self.max_bytes and count > 1:
                # the byte bound cuts first: after the last item that still fits (at least one)
                count = max(1, bisect.bisect_right(list(itertools.accumulate(sizes[:count])), self.max_bytes))
                size = sum(sizes[:count])
            items, self.pending = self.pending[:count], self.pending[count:]
            self.pending_sizes = sizes[count:]
            self.pending_bytes -= size
            # the sources whose items are all in this batch or earlier ones are released with it
            tokens = [token for end, token in self.pending_tokens if end <= count]
            self.pending_tokens = [(end - count, token) for end, token in self.pending_tokens if end > count]
            self.pending_since = time.monotonic()
            if not await self._enqueue(Batch(self.signal, items, size, self.runner.clock(), tokens)):
                break  # shutdown with a full buffer: the rest stays pending, close() counts it
            self._drained.set()

    async def _enqueue(self, batch: Batch) -> bool:
        """Queue a sealed batch (or count it dropped); False: it went back to pending (shutdown)."""
        queue = self.queue
        while not queue.has_room(batch.nbytes):
            if self.when_full == "block":
                if self.closing:  # at shutdown there is no waiting for room that may never come
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
                self.runner.note_error(f"buffer write failed: {exc.strerror or exc}")
                if self.when_full != "block" or self.runner.stopping:
                    self._finish(batch, dropped="buffer_write_error", why=f"buffer write failed: {exc.strerror}")
                    return True
                await asyncio.sleep(1.0)  # logs wait for the disk; their sources stay paused
        if queue.durable:
            for token in batch.tokens:
                token.done()
            batch.tokens = []
        self.runner.update_gauges()
        return True

    def _unseal(self, batch: Batch) -> None:
        """Put a batch that could not be queued back in front of what is pending."""
        self.pending[:0] = batch.items
        self.pending_sizes[:0] = item_sizes(batch.items)
        self.pending_bytes += batch.nbytes
        count = len(batch.items)  # token ends index into pending: everything after moves back
        self.pending_tokens = [(count, t) for t in batch.tokens] + [(e + count, t) for e, t in self.pending_tokens]
        batch.tokens = []

    def _finish(self, batch: Batch, *, dropped: str | None = None, why: str = "") -> None:
        """A batch leaves for good: its sources are released, drops counted."""
        if dropped:
            self.runner.dropped(len(batch.items), dropped, why)
        for token in batch.tokens:
            token.done()
        batch.tokens = []
        self._space.set()

    # -------------------------------------------------------------- sender

    async def _sender(self) -> None:
        prepare = getattr(self.runner.output, "prepare", None)
        while True:
            try:
                batch = await self.queue.take()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nothing was taken, so nothing is lost: say it and look again
                self.runner.unexpected("taking a batch from the buffer", exc, then="the sender looks again")
                await asyncio.sleep(ERROR_PAUSE)
                continue
            if not await self._send(batch, prepare):
                return  # shutdown cut the retries short: the batch stays queued

    async def _send(self, batch: Batch, prepare: Callable[[ExportBatch], None] | None) -> bool:
        """Deliver a taken batch until it leaves the queue: delivered, or dropped and counted.

        False when shutdown cut it short: it stays queued (on disk for the next start,
        or counted by :meth:`close`). An unexpected exception on the way (a bug in the
        engine) never loses the batch with the task: it is logged and counted, and the
        batch is sent again; after ``ERROR_ATTEMPTS`` of them it is dropped as ``error``,
        so a failure that repeats on this batch cannot hold the lane for good.
        """
        runner = self.runner
        # a plain pause, not Backoff: this path must not lean on the code that may have failed
        pause = min(ERROR_PAUSE, runner.common.retry_max)
        failures = 0
        while True:
            ahead = asyncio.create_task(self._prepare_next(prepare)) if prepare is not None else None
            try:
                if not await self._deliver(batch.items):
                    return False
                await self.queue.ack()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                runner.unexpected("sending a batch", exc)
                if failures >= ERROR_ATTEMPTS:
                    why = f"sending failed {failures} times: {type(exc).__name__}: {exc}"
                    runner.dropped(len(batch.items), "error", why)
                    with contextlib.suppress(Exception):
                        await self.queue.ack()
                    break
                if await sleep_or_stop(pause, runner.stop_now):
                    return False
            finally:
                if ahead is not None:
                    ahead.cancel()
        try:
            self._finish(batch)
            runner.update_gauges()
        except Exception as exc:  # the batch has left already (delivered or counted): only say it
            runner.unexpected("releasing a sent batch", exc, then="the sender goes on")
        return True

    async def _prepare_next(self, prepare: Callable[[ExportBatch], None]) -> None:
        """While a request is in flight, let the output encode the next batch (CPU the wait leaves idle)."""
        try:
            for _ in range(_LET_REQUEST_OUT):
                await asyncio.sleep(0)
            batch = await self.queue.lookahead()
            if batch is not None:
                prepare(ExportBatch(self.signal, batch.items))
        except Exception:  # only a head start: export encodes the batch again, and reports what fails
            log.debug("output %s: preparing the next batch failed", self.runner.name, exc_info=True)

    async def _deliver(self, items: list[Any]) -> bool:
        runner = self.runner
        backoff = Backoff(runner.common.retry_initial, runner.common.retry_max)
        first = time.monotonic()
        errors = 0
        while True:
            result = await runner.attempt(ExportBatch(self.signal, items))
            kind = result.kind
            if kind is ResultKind.OK:
                runner.succeeded(self.signal, len(items) - result.rejected)
                if result.rejected:
                    runner.dropped(result.rejected, "partial_success", result.reason)
                return True
            if kind is ResultKind.TOO_LARGE:
                if len(items) == 1:
                    runner.dropped(1, "too_large", result.reason)
                    return True
                half = len(items) // 2
                return await self._deliver(items[:half]) and await self._deliver(items[half:])
            if kind is ResultKind.DROP:
                runner.dropped(len(items), "rejected", result.reason)
                return True
            if kind is ResultKind.ERROR:
                # the output raised: a passing fault gets another try, a bug that fails this
                # batch every time (an encoder's) is given up rather than holding the lane
                errors += 1
                if errors >= ERROR_ATTEMPTS:
                    runner.dropped(len(items), "error", result.reason)
                    return True
            delay = backoff.next_delay(result.after)
            limit = runner.common.retry_max_elapsed
            if limit and time.monotonic() - first + delay > limit:
                runner.dropped(len(items), "retry_expired", f"still failing after {limit:g}s: {result.reason}")
                return True
            runner.telemetry.output_retries.labels(runner.name).inc()
            if await sleep_or_stop(delay, runner.stop_now):
                return False

    # ------------------------------------------------------------ shutdown

    async def drain(self, deadline: float) -> None:
        """Seal what is pending, deliver until the queue is empty or the deadline passes."""
        self.closing = True
        self._tasks[0].cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._tasks[0]
        await self.seal()
        while self.queue.items and time.monotonic() < deadline and not self._tasks[1].done():
            await asyncio.sleep(0.05)

    async def close(self) -> None:
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
            self.runner.dropped(len(self.pending), "shutdown", "not buffered before shutdown: the buffer was full")
            self.pending, self.pending_sizes, self.pending_bytes, self.pending_tokens = [], [], 0, []
        await self.queue.close()
        if self.queue.items and self.queue.durable:
            log.info(
                "output %s: %d %s item(s) stay in the disk buffer for the next start",
                self.runner.name,
                self.queue.items,
                self.signal.value,
            )
