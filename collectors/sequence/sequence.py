"""A synthetic source: a numbered sequence at a steady rate, resumed after restarts.

For proving delivery end to end (like Vector's ``demo_logs`` or Telegraf's
``mock`` input): every number is emitted once, and the next number to emit is
saved only when the pipeline acknowledges that every output durably took the
previous ones. After a crash the source resumes from the last acknowledged
number, so a receiver that has every number has lost nothing, and numbers it
has twice were emitted after the last acknowledgement (at most about one batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Annotated, Literal

import msgspec

from agent.model import LogRecord, Sample, merge_labels
from agent.plugin import PluginConfig, StreamingCollector
from agent.statefile import write_atomically

Meta = msgspec.Meta


class SequenceConfig(PluginConfig):
    signal: Annotated[Literal["metrics", "logs"], Meta(description="Emit samples or log records.")] = "metrics"
    rate: Annotated[float, Meta(description="Numbers per second.", gt=0, le=100_000)] = 100.0
    name: Annotated[str, Meta(description="Metric name (metrics) and `source` label value.")] = "hostwatch_sequence"
    count: Annotated[int, Meta(description="Stop after this many numbers; 0: never.", ge=0)] = 0


class SequenceCollector(StreamingCollector):
    Config = SequenceConfig
    TICK = 0.05  # emit in small chunks so the rate is steady

    async def run(self, emit) -> None:
        config: SequenceConfig = self.config
        state_file = self.context.state_dir / "sequence.json"
        self.next_number = await self.context.run_blocking(_load, state_file)
        self.acked = self.next_number
        saved = self.acked
        labels = merge_labels(self.context.static_labels, (("source", config.name),))
        loop = asyncio.get_running_loop()
        started, emitted = loop.time(), 0
        last_ms = 0
        try:
            while not config.count or self.next_number < config.count:
                due = int((loop.time() - started) * config.rate) - emitted
                if due > 0:
                    if config.count:
                        due = min(due, config.count - self.next_number)
                    first = self.next_number
                    # one millisecond apart and ending now (not in the future, which queries
                    # up to "now" would miss), so no two numbers share a remote-write timestamp
                    first_ms = max(time.time_ns() // 1_000_000 - due + 1, last_ms + 1)
                    numbers = range(first, first + due)
                    times = [(first_ms + i) * 1_000_000 for i in range(due)]
                    last_ms = first_ms + due - 1
                    end = first + due
                    if config.signal == "metrics":
                        batch = [
                            Sample(config.name, float(n), "gauge", labels, t)
                            for n, t in zip(numbers, times, strict=True)
                        ]
                        await emit.publish(batch, on_durable=lambda end=end: self._ack(end))
                    else:
                        records = [LogRecord(t, f"seq {n}", labels) for n, t in zip(numbers, times, strict=True)]
                        await emit.logs(records, on_durable=lambda end=end: self._ack(end))
                    self.next_number = end
                    emitted += due
                if self.acked != saved:
                    saved = self.acked
                    await self.context.run_blocking(_save, state_file, saved)
                await asyncio.sleep(self.TICK)
            while self.acked < self.next_number:  # a bounded run waits for its last acknowledgement
                await asyncio.sleep(self.TICK)
            await self.context.run_blocking(_save, state_file, self.acked)
        finally:
            if self.acked != saved:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.context.run_blocking(_save, state_file, self.acked))

    def _ack(self, end: int) -> None:
        self.acked = max(self.acked, end)


def _load(path) -> int:
    try:
        return int(json.loads(path.read_text())["next"])
    except FileNotFoundError:
        return 0
    except (ValueError, KeyError, TypeError, OSError):
        return 0


def _save(path, number: int) -> None:
    write_atomically(path, json.dumps({"next": number}).encode())
