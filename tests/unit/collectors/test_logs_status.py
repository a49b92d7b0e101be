"""The logs collector's status hook: each tailed file's size, read offset and bytes not read yet."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from agent.config import convert
from agent.emitter import RunEmitter
from collectors.logs.logs import LogsCollector
from tests.support import collector_context


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_status_shows_the_bytes_a_held_back_tailer_has_not_read(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("first\n" * 10)
    config = convert(
        {"paths": [str(tmp_path / "*.log")], "start_at": "beginning", "watch": "poll", "poll_interval": "50ms"},
        LogsCollector.Config,
    )
    collector = LogsCollector(config, collector_context(tmp_path))
    assert await collector.status() == {"files": []}  # not running yet
    gate, taken = asyncio.Event(), []

    async def sink(records, on_durable) -> None:  # a full output buffer: emit.logs waits
        taken.extend(records)
        await gate.wait()
        if on_durable is not None:
            on_durable()

    task = asyncio.create_task(collector.run(RunEmitter(time.time_ns(), (), sink)))
    try:

        async def first_batch_taken() -> bool:
            return len(taken) == 10

        await until(first_batch_taken)
        with open(log, "a") as f:
            f.write("x" * 99 + "\n")
        (entry,) = (await collector.status())["files"]
        assert entry == {"path": str(log), "size_bytes": 160, "offset": 60, "behind_bytes": 100, "rotated": False}
        gate.set()  # room again: the tailer catches up

        async def caught_up() -> bool:
            return (await collector.status())["files"][0]["behind_bytes"] == 0

        await until(caught_up)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await collector.status() == {"files": []}
