"""Fan-out from collectors to /metrics and to every output that accepts the signal."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.exposition import LatestSamples
from agent.model import LogRecord, Sample


class Pipeline:
    def __init__(self, telemetry: Any, latest: LatestSamples, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.telemetry = telemetry
        self.latest = latest
        self.clock = clock

    async def apply(self, config: Any) -> None:
        pass

    def publish_samples(self, instance: str, samples: list[Sample]) -> None:
        self.latest.replace(instance, samples)

    async def publish_logs(self, records: Sequence[LogRecord], on_durable: Callable[[], None] | None) -> None:
        if on_durable is not None:
            on_durable()

    async def close(self, timeout: float) -> None:
        pass

    def problems(self) -> list[str]:
        return []

    def status(self) -> dict[str, Any]:
        return {}
