"""Scheduling: a hung collector is abandoned and reported while the others keep their cadence."""

from __future__ import annotations

import asyncio
import logging
import threading

from agent.config import CollectorCommon, PluginSpec, loads_config
from agent.plugin import PeriodicCollector
from agent.runtime import Agent
from agent.telemetry import Telemetry


class Hangs(PeriodicCollector):
    """Blocks its worker thread like a statvfs on a dead NFS server."""

    Config = None
    release = threading.Event()

    async def collect(self, emit) -> None:
        await self.context.run_blocking(self.release.wait)


class Ticks(PeriodicCollector):
    Config = None

    async def collect(self, emit) -> None:
        emit.gauge("ticks", await self.context.run_blocking(lambda: 1.0))


class Fails(PeriodicCollector):
    Config = None

    async def collect(self, emit) -> None:
        emit.gauge("partial", 1)
        emit.error("vmstat unreadable")
        emit.error("vmstat unreadable")


def spec(name: str, cls: type, interval: float, timeout: float | None = None) -> PluginSpec:
    return PluginSpec("collectors", name, 0, CollectorCommon(interval=interval, timeout=timeout), None, cls)


async def test_hung_collector_times_out_and_others_keep_running(tmp_path, caplog) -> None:
    base = loads_config(
        f"[agent]\nstate_dir = '{tmp_path}'\n[http]\nlisten = ''\n",
        registry={"collectors": {}, "outputs": {}},
        environ={},
    )
    telemetry = Telemetry()
    agent = Agent(base, telemetry=telemetry)
    config = type(base)(
        base.agent,
        base.http,
        base.redaction,
        (spec("hangs", Hangs, 0.1, 0.05), spec("ticks", Ticks, 0.05), spec("fails", Fails, 0.05)),
        (),
        base.sources,
    )
    agent.config = config
    caplog.set_level(logging.WARNING, logger="hostwatch")
    try:
        await agent.start()
        await asyncio.sleep(0.6)
        details = agent.detailed()["collectors"]
        assert details["ticks"]["runs"] >= 8, details["ticks"]
        assert details["ticks"]["errors"] == 0
        assert details["hangs"]["errors"] >= 2
        assert "timeout" in details["hangs"]["last_error"]
        value = telemetry.registry.get_sample_value
        assert value("hostwatch_collector_timeouts_total", {"collector": "hangs"}) >= 2
        assert value("hostwatch_collector_errors_total", {"collector": "fails"}) >= 2 * details["fails"]["runs"] - 2
        # a repeated problem is logged once and counted every time
        assert sum("vmstat unreadable" in r.getMessage() for r in caplog.records) == 1
        assert sum("exceeded its timeout" in r.getMessage() for r in caplog.records) == 1
        assert any(s.name == "partial" for s in agent.latest.samples()), "a partial run still publishes"
    finally:
        Hangs.release.set()
        await agent.stop()


async def test_each_run_reports_node_exporters_scrape_series_apart_from_its_samples(tmp_path) -> None:
    """node_scrape_collector_{duration_seconds,success}{collector}, which Node Exporter Full charts;
    a failed run says success 0 without taking the instance's last samples away."""
    base = loads_config(
        f"[agent]\nstate_dir = '{tmp_path}'\n[http]\nlisten = ''\n",
        registry={"collectors": {}, "outputs": {}},
        environ={},
    )
    agent = Agent(base, telemetry=Telemetry())
    agent.config = type(base)(
        base.agent,
        base.http,
        base.redaction,
        (spec("ticks", Ticks, 0.05), spec("fails", Fails, 0.05)),
        (),
        base.sources,
    )
    try:
        await agent.start()
        await asyncio.sleep(0.3)
        scrape = {
            (s.name, dict(s.labels)["collector"]): s.value
            for s in agent.latest.samples()
            if s.name.startswith("node_scrape_collector_")
        }
        assert scrape[("node_scrape_collector_success", "ticks")] == 1.0
        assert scrape[("node_scrape_collector_success", "fails")] == 0.0
        assert 0 < scrape[("node_scrape_collector_duration_seconds", "ticks")] < 1
        page = agent.latest.page().decode()
        assert 'node_scrape_collector_success{collector="fails"} 0.0' in page
        assert "partial" in page and "ticks" in page
    finally:
        await agent.stop()


class SharedTicks(Ticks):
    """Reads /proc-like files only: its calls go to the interval's shared worker thread."""

    shares_worker = True
    threads: dict[str, set[int]] = {}

    async def collect(self, emit) -> None:
        ident = await self.context.run_blocking(threading.get_ident)
        self.threads.setdefault(self.context.instance, set()).add(ident)
        emit.gauge("ticks", 1.0)


class SharedHangs(Hangs):
    """A shared instance whose call never returns (a driver stuck in the kernel)."""

    shares_worker = True
    release = threading.Event()


def agent_with(tmp_path, *specs: PluginSpec) -> Agent:
    base = loads_config(
        f"[agent]\nstate_dir = '{tmp_path}'\n[http]\nlisten = ''\n",
        registry={"collectors": {}, "outputs": {}},
        environ={},
    )
    agent = Agent(base, telemetry=Telemetry())
    agent.config = type(base)(base.agent, base.http, base.redaction, specs, (), base.sources)
    return agent


async def test_instances_of_one_interval_share_a_wakeup_and_a_worker_thread(tmp_path) -> None:
    """Those that say ``shares_worker`` run their calls on one thread; the others keep their own."""
    SharedTicks.threads.clear()
    agent = agent_with(tmp_path, spec("a", SharedTicks, 0.05), spec("b", SharedTicks, 0.05), spec("own", Ticks, 0.05))
    try:
        await agent.start()
        await asyncio.sleep(0.3)
        assert len(agent._tick_groups) == 1, "one timer for the interval"
        assert len(SharedTicks.threads["a"]) == 1 and SharedTicks.threads["a"] == SharedTicks.threads["b"]
        details = agent.detailed()["collectors"]
        assert all(details[name]["runs"] >= 4 and details[name]["errors"] == 0 for name in ("a", "b", "own"))
        shared = {t.name for t in threading.enumerate() if t.name == "hw-shared-0.05s"}
        assert shared, "the shared thread is named after its interval"
        assert any(t.name == "hw-own" for t in threading.enumerate()), "a plugin that may hang keeps its own"
    finally:
        await agent.stop()


async def test_a_stuck_call_on_the_shared_thread_costs_its_mates_one_run_at_most(tmp_path, caplog) -> None:
    """The instance whose call is stuck moves to a thread of its own; the others keep their cadence."""
    caplog.set_level(logging.WARNING, logger="hostwatch")
    agent = agent_with(tmp_path, spec("stuck", SharedHangs, 0.05), spec("mate", SharedTicks, 0.05))
    try:
        await agent.start()
        await asyncio.sleep(0.6)
        details = agent.detailed()["collectors"]
        assert details["mate"]["runs"] >= 8
        assert details["mate"]["errors"] <= 1, details["mate"]  # the batch it shared with the stuck call
        assert details["stuck"]["errors"] >= 2 and "timeout" in details["stuck"]["last_error"]
        assert sum("worker thread of its own" in r.getMessage() for r in caplog.records) == 1
    finally:
        SharedHangs.release.set()
        await agent.stop()


async def test_a_shared_instance_changed_by_a_reload_keeps_the_shared_thread(tmp_path) -> None:
    """The new runner binds the name before the old one releases it: the name stays bound once."""
    agent = agent_with(tmp_path, spec("a", SharedTicks, 0.05), spec("b", SharedTicks, 0.05))
    try:
        await agent.start()
        await asyncio.sleep(0.1)
        changed = type(agent.config)(
            agent.config.agent,
            agent.config.http,
            agent.config.redaction,
            (spec("a", SharedTicks, 0.05, 0.04), spec("b", SharedTicks, 0.05)),
            (),
            agent.config.sources,
        )
        await agent.reload(changed)
        await asyncio.sleep(0.3)  # the old runner's stop has run by now
        shared = agent._shared_workers[0.05]
        assert shared._members == {"a": 1, "b": 1}
        before = agent.detailed()["collectors"]["a"]["runs"]
        await asyncio.sleep(0.2)
        assert agent.detailed()["collectors"]["a"]["runs"] >= before + 2
        assert agent.detailed()["collectors"]["a"]["errors"] == 0
    finally:
        await agent.stop()
    assert agent._shared_workers[0.05]._members == {}, "every binding released at stop"


class AlwaysHangs(Hangs):
    """Every run outlives its timeout, which is the interval (the default)."""

    release = threading.Event()


async def test_a_run_that_outlives_its_timeout_is_abandoned_on_time_and_the_next_starts_on_schedule(tmp_path) -> None:
    """The group's timer abandons each run at its deadline (the next tick when the timeout is the
    interval), and the abandoned instance runs again at that tick instead of skipping it."""
    agent = agent_with(tmp_path, spec("hangs", AlwaysHangs, 0.05), spec("ticks", SharedTicks, 0.05))
    try:
        await agent.start()
        await asyncio.sleep(0.62)
        details = agent.detailed()["collectors"]
        assert details["ticks"]["runs"] >= 10, details["ticks"]
        # as many runs as its mate (give or take the one in progress), each but the last abandoned
        assert details["hangs"]["runs"] >= details["ticks"]["runs"] - 1, details
        assert details["hangs"]["errors"] >= details["hangs"]["runs"] - 2, details
        assert details["ticks"]["errors"] == 0
        assert "exceeded its timeout of 0.05s" in details["hangs"]["last_error"]
    finally:
        AlwaysHangs.release.set()
        await agent.stop()


async def test_a_stop_cancels_a_run_without_counting_a_timeout(tmp_path) -> None:
    agent = agent_with(tmp_path, spec("hangs", AlwaysHangs, 10.0))
    AlwaysHangs.release.clear()
    try:
        await agent.start()
        await asyncio.sleep(0.1)
        runner = agent.runners["hangs"][1]
        assert runner.state.runs == 1
    finally:
        await agent.stop()
        AlwaysHangs.release.set()
    assert runner.state.errors == 0, runner.state
    assert agent.telemetry.registry.get_sample_value("hostwatch_collector_timeouts_total", {"collector": "hangs"}) in (
        None,
        0.0,
    )
