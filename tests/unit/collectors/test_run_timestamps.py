"""The samples of one run share its timestamp (agent.plugin.Emitter), also those a collector
builds itself and hands over with ``emit.add``: they take ``emit.time_ns``, not a clock read
of their own a few microseconds later."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from agent.emitter import RunEmitter
from collectors.cpu.cpu import CpuCollector
from collectors.disk.disk import DiskCollector
from collectors.memory.memory import MemoryCollector
from collectors.netclass.netclass import NetclassCollector
from collectors.network.network import NetworkCollector
from tests.support import collector_context

RUN_TIME = 1_700_000_000_000_000_000


PLUGINS = [CpuCollector, MemoryCollector, NetworkCollector, NetclassCollector, DiskCollector]


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.__name__)
async def test_every_sample_of_a_run_carries_the_runs_time(tmp_path, plugin):
    # a clock that moves on every read: a sample stamped from it cannot equal the run's time
    ticks = itertools.count(RUN_TIME + 1)
    context = collector_context(tmp_path, clock=lambda: next(ticks))
    collector = plugin(msgspec.convert({}, plugin.Config), context)
    await collector.start()
    try:
        for _ in range(2):  # the first run and one through what the collector kept
            emitter = RunEmitter(RUN_TIME)
            await collector.collect(emitter)
            assert emitter.samples, plugin.__name__
            stamped = {s.time_ns for s in emitter.samples}
            assert stamped == {RUN_TIME}, sorted(stamped)[:3]
    finally:
        await collector.close()
