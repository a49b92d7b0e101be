"""When to try a batch again: exponential backoff with full jitter, Retry-After, a deadline.

The wait itself is :func:`sleep_or_stop`, which returns early when shutdown is
requested, so a backend that asks for 30 s cannot hold the agent's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays for one batch's successive attempts.

    Full jitter (a uniform draw between 0 and the exponential cap) spreads a
    fleet that lost its backend at the same moment, so they do not come back
    in lock step. A server's ``Retry-After`` replaces the draw, capped at
    ``maximum`` so a hostile or broken header cannot park an output for hours.
    """

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.attempt += 1
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.maximum)
        cap = min(self.maximum, self.initial * self.multiplier ** (self.attempt - 1))
        return self.rng.uniform(0, cap)

    def reset(self) -> None:
        self.attempt = 0


async def sleep_or_stop(delay: float, stop: asyncio.Event) -> bool:
    """Wait ``delay`` seconds; True if ``stop`` was set meanwhile (the wait is cut short)."""
    if stop.is_set():
        return True
    if delay <= 0:
        return False
    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
    # arrives just as the event is set, and shutdown must always get through
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
    return stop.is_set()
