"""When to try a batch again: exponential backoff with full jitter, Retry-After, a deadline.

The wait itself is :func:`sleep_or_stop`, which returns early when shutdown is
requested, so a backend that asks for 30 s cannot hold the agent's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
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
        return self.rng.uniform(0, self.cap())

    def cap(self) -> float:
        """The upper bound of the current attempt's draw: ``initial * multiplier ** (attempt - 1)``,
        at most ``maximum``.

        The exponent stops growing once the bound has reached ``maximum``: a float power
        overflows (``OverflowError``) past about 1,024 doublings, which an outage of hours
        at the defaults, or seconds with a 1 ms ``retry_max``, would otherwise reach.
        """
        if self.initial <= 0 or self.initial >= self.maximum or self.multiplier <= 1:
            return max(0.0, min(self.initial, self.maximum))
        # the attempt from which initial * multiplier ** n reaches maximum (a log difference is
        # finite for any positive finite pair, where their ratio may not be)
        span = math.log(self.maximum) - math.log(self.initial)
        steps = math.ceil(span / math.log(self.multiplier)) if math.isfinite(span) else 0
        exponent = min(max(self.attempt - 1, 0), steps)
        try:
            return min(self.maximum, self.initial * self.multiplier**exponent)
        except OverflowError:  # only for extreme pairs (1e-300 .. 1e300): past maximum anyway
            return self.maximum


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
