"""An outage longer than 1,100 retries of one batch against a real VictoriaMetrics, then recovery.

The engine runs in-process (an output runner with its lane and disk buffer, as the agent
builds it) with a 1 ms backoff, so the retries a day-long outage makes at the defaults
happen in seconds; the backend is a real server, stopped and started again.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.config import OutputCommon, PluginSpec
from agent.model import Sample, Signal, labels_from
from agent.output_runner import OutputRunner
from agent.telemetry import Telemetry
from outputs.remote_write.remote_write import RemoteWriteConfig, RemoteWriteOutput
from tests.peers.fixtures_backends import _http_ok
from tests.support import output_context

pytestmark = pytest.mark.peers


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout:g}s: {what}")
        await asyncio.sleep(0.02)


async def test_an_outage_of_more_than_1100_retries_loses_nothing(victoria_metrics, tmp_path) -> None:
    vm = victoria_metrics
    config = RemoteWriteConfig(url=vm.remote_write_url)
    common = OutputCommon(flush_interval=0.01, retry_initial=0.001, retry_max=0.001)
    spec = PluginSpec("outputs", "remote_write", 0, common, config, RemoteWriteOutput)
    telemetry = Telemetry()
    runner = OutputRunner(
        spec,
        RemoteWriteOutput(config, output_context("outage")),
        state_dir=tmp_path,
        telemetry=telemetry,
        clock=time.time_ns,
        buffer_kind="disk",
    )

    def retries() -> float:
        return telemetry.registry.get_sample_value("hostwatch_output_retries_total", {"output": "remote_write"}) or 0

    start_ns = time.time_ns() // 1_000_000 * 1_000_000
    samples = [
        Sample("hostwatch_outage_seq", float(i), "gauge", labels_from({"run": "outage"}), start_ns + i * 1_000_000)
        for i in range(10)
    ]
    await asyncio.to_thread(vm.server.stop)  # the outage
    await runner.start()
    lane = runner.lanes[Signal.METRICS]
    try:
        lane.offer(samples[:5])
        await wait_for(
            lambda: retries() > 1100, 60, "1,100 retries of the first batch (a batch abandoned stops retrying)"
        )
        lane.offer(samples[5:])  # queued behind it
        await asyncio.sleep(0.2)
        await asyncio.to_thread(vm.server.start, _http_ok(vm.url + "/health"))  # the backend comes back
        await wait_for(lambda: lane.queue.items == 0 and not lane.pending, 60, "the buffer delivered")
    finally:
        await runner.close(5.0)
    assert runner.dropped_by_reason == {}
    series = await asyncio.to_thread(vm.export, 'hostwatch_outage_seq{run="outage"}')
    values = sorted(v for s in series for v in s["values"])
    assert values == [float(i) for i in range(10)], values
    print(f"\n[outage] {retries():.0f} retries of one batch, then all 10 samples delivered")
