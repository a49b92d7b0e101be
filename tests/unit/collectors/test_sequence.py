"""The sequence source resumes from the last acknowledged number, never from the last emitted one."""

from __future__ import annotations

import asyncio

from agent.emitter import RunEmitter
from collectors.sequence.sequence import SequenceCollector, SequenceConfig
from tests.support import collector_context


async def run_source(tmp_path, count: int, *, ack: bool, signal: str = "metrics") -> list:
    received, callbacks = [], []

    async def sample_sink(samples, on_durable):
        received.extend(int(s.value) for s in samples)
        callbacks.append(on_durable)
        if ack:
            on_durable()

    async def log_sink(records, on_durable):
        received.extend(int(r.body.split()[1]) for r in records)
        if ack:
            on_durable()

    collector = SequenceCollector(SequenceConfig(rate=2000, count=count, signal=signal), collector_context(tmp_path))
    emitter = RunEmitter(0, (), log_sink, sample_sink)
    task = asyncio.create_task(collector.run(emitter))
    if ack:
        await asyncio.wait_for(task, 10)
    else:
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return received


async def test_resumes_after_the_last_acknowledged_number(tmp_path) -> None:
    assert await run_source(tmp_path, 50, ack=True) == list(range(50))
    # nothing acknowledged in this run: the numbers are emitted again by the next one
    unacked = await run_source(tmp_path, 80, ack=False)
    assert unacked == list(range(50, 80))
    assert await run_source(tmp_path, 80, ack=True) == list(range(50, 80))


async def test_logs_signal_numbers_the_bodies(tmp_path) -> None:
    assert await run_source(tmp_path, 30, ack=True, signal="logs") == list(range(30))
