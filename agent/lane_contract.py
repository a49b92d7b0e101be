"""What a lane (``agent.delivery``) shares with the output that owns it and with the pipeline.

The lane is built with its :class:`LaneSettings` and its owner's :class:`Shutdown`,
reports to its owner (``agent.output_runner``) through the few methods of
:class:`LaneOwner`, and answers what it holds with a :class:`LaneFill`. The
pipeline sees a lane only as an :class:`Intake`, which the owner hands out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.model import Signal
from agent.plugin import Batch, ExportResult

DEFAULT_BATCH, DEFAULT_LOG_BATCH = 2000, 10000


class Intake(Protocol):
    """The way into one output's lane for one signal: what the pipeline hands items to.

    ``token`` is the sources' acknowledgement token (``agent.pending.AckToken``), done
    once the lane has taken the items durably (or counted them dropped).
    """

    when_full: str
    """"block": :meth:`accept` waits while the buffer is full; "drop_oldest": it sheds."""

    def offer(self, items: Sequence[Any], token: Any = None, *, flush: bool = False) -> None:
        """Take items without waiting (metrics): an overfull pending batch sheds its oldest, counted."""

    async def accept(self, items: Sequence[Any], token: Any, *, flush: bool = False) -> None:
        """Take items, waiting for room with ``when_full = "block"`` (the source pauses)."""


class LaneOwner(Protocol):
    """What a lane needs from the output that owns it: to send, and someone to tell."""

    name: str
    """The output instance's name, for logs and task names."""
    clock: Callable[[], int]
    """Wall-clock nanoseconds: a sealed batch's creation time (its age on the gauges)."""

    def prepare(self, batch: Batch) -> Any:
        """The output's ``prepare`` of the next batch, while a request is in flight."""

    async def attempt(self, batch: Batch) -> ExportResult:
        """One export of a batch, guarded and counted; never raises for the output's faults."""

    def succeeded(self, signal: Signal, items: int) -> None: ...

    def retried(self) -> None:
        """A batch will be sent again after a backoff."""

    def dropped(self, count: int, reason: str, why: str = "") -> None:
        """Items given up for good: counted under ``reason``, logged once per kind."""

    def note_error(self, reason: str) -> None:
        """A failure that counts against readiness (a refused write, a failed attempt)."""

    def unexpected(self, during: str, exc: Exception, then: str = "") -> None:
        """An exception where none was expected (a bug); ``then`` says what the lane does next."""

    def update_gauges(self) -> None:
        """What the lane holds changed (a batch queued or sent)."""


@dataclass(frozen=True, slots=True)
class LaneSettings:
    """A lane's batching and retry options, from the output's shared options."""

    when_full: str  # "block" or "drop_oldest"
    max_items: int
    max_bytes: int
    flush_interval: float
    retry_initial: float
    retry_max: float
    retry_max_elapsed: float

    @classmethod
    def of(cls, common: Any, signal: Signal) -> LaneSettings:
        """From an output's ``OutputCommon``; the defaults depend on the signal."""
        # log receivers pay a fixed cost per request (VictoriaLogs: about 6 ms), so log batches
        # are larger by default; metrics keep remote-write's customary 2000
        default_items = DEFAULT_LOG_BATCH if signal is Signal.LOGS else DEFAULT_BATCH
        return cls(
            when_full=common.when_full or ("drop_oldest" if signal is Signal.METRICS else "block"),
            max_items=common.batch_max_items or default_items,
            max_bytes=common.batch_max_bytes,
            flush_interval=common.flush_interval,
            retry_initial=common.retry_initial,
            retry_max=common.retry_max,
            retry_max_elapsed=common.retry_max_elapsed,
        )


class Shutdown:
    """An output's one shutdown state: running, then draining until a deadline, then stopped.

    Draining: the lanes seal what is pending and no longer wait for room in a full
    buffer, nor for a disk that refuses writes; they keep delivering until the
    deadline. Stopped: retries and pauses are cut short, what is left stays queued.
    """

    __slots__ = ("deadline", "stopped")

    def __init__(self) -> None:
        self.deadline: float | None = None  # monotonic; None while running
        self.stopped = asyncio.Event()  # an event, so a backoff waiting on it ends at once

    @property
    def draining(self) -> bool:
        """Shutdown has begun (draining, or stopped already)."""
        return self.deadline is not None

    def drain(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout

    def stop(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic()
        self.stopped.set()


@dataclass(frozen=True, slots=True)
class LaneFill:
    """What a lane holds: pending (not sealed yet) and queued together, and its queue's bound."""

    items: int
    nbytes: int
    queued_bytes: int  # in the queue only: what counts against ``capacity``
    capacity: int
    oldest_ns: int | None
    corrupt_records: int

    @property
    def ratio(self) -> float:
        return self.queued_bytes / self.capacity if self.capacity else 0.0
