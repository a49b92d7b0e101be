"""The agent's lifecycle: phased start, signals, reload, and a bounded stop.

Start order is HTTP server (so ``/live`` answers during start-up), outputs,
pipeline, collectors; stop is the reverse, under one deadline, so collectors
stop producing before outputs get ``shutdown_timeout`` to deliver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import Config, ConfigError, PluginSpec, load_config
from agent.exposition import LatestSamples
from agent.model import labels_from, merge_labels
from agent.pipeline import Pipeline
from agent.plugin import CollectorContext
from agent.scheduler import CollectorRunner, scrape_key
from agent.systemd import Notifier
from agent.telemetry import Telemetry
from agent.workers import Worker

log = logging.getLogger("hostwatch.runtime")


class Agent:
    """One running configuration, plus what survives reloads (telemetry, latest samples)."""

    def __init__(
        self,
        config: Config,
        *,
        telemetry: Telemetry | None = None,
        clock: Callable[[], int] = time.time_ns,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry or Telemetry()
        self.clock = clock
        self.notify = notify or (lambda _state: None)
        self.latest = LatestSamples()
        self.pipeline = Pipeline(self.telemetry, self.latest, clock=clock)
        self.runners: dict[str, tuple[tuple[Any, ...], CollectorRunner]] = {}
        self.http: Any = None
        self.started_monotonic = time.monotonic()
        self.ready = False
        self.stopping = False
        self._background: set[asyncio.Task] = set()
        self._redactor: tuple[Any, Any] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._start_http()
        await self.pipeline.apply(self.config)
        self._apply_collectors(self.config)
        self.ready = True
        log.info(
            "hostwatch %s started: %d collectors, %d outputs",
            __version__,
            len(self.config.collectors),
            len(self.config.outputs),
            extra={"sources": ",".join(self.config.sources)},
        )

    async def stop(self) -> None:
        """Collectors stop, outputs flush within ``shutdown_timeout``, the server closes. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        self.ready = False
        await asyncio.gather(*(runner.stop() for _, runner in self.runners.values()))
        self.runners.clear()
        await self.pipeline.close(self.config.agent.shutdown_timeout)
        if self.http is not None:
            await self.http.stop()
            self.http = None

    async def reload(self, new_config: Config) -> None:
        """Apply a validated config: unchanged instances keep running."""
        old = self.config
        self.config = new_config
        if new_config.http.listen != old.http.listen:
            if self.http is not None:
                await self.http.stop()
                self.http = None
            await self._start_http()
        await self.pipeline.apply(new_config)
        self._apply_collectors(new_config)

    # ------------------------------------------------------------ collectors

    def _apply_collectors(self, config: Config) -> None:
        wanted = {spec.name: spec for spec in config.collectors}
        for name in list(self.runners):
            key, runner = self.runners[name]
            if name not in wanted or key != self._runner_key(config, wanted[name]):
                del self.runners[name]
                for key in (name, scrape_key(name)):
                    self.latest.forget(key)
                    if name not in wanted:
                        self.pipeline.end_instance(key)
                task = asyncio.create_task(runner.stop())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        for name, spec in wanted.items():
            if name not in self.runners:
                runner = self.build_runner(config, spec)
                self.runners[name] = (self._runner_key(config, spec), runner)
                runner.start()

    @staticmethod
    def _runner_key(config: Config, spec: PluginSpec) -> tuple[Any, ...]:
        redaction = config.redaction if getattr(spec.plugin, "needs_redactor", False) else None
        return (spec, config.agent, redaction)

    def _redactor_for(self, config: Config, spec: PluginSpec) -> Any:
        """The redaction service, built once per configuration and only for plugins that use it."""
        if not getattr(spec.plugin, "needs_redactor", False):
            return None
        if self._redactor is None or self._redactor[0] is not config.redaction:
            from agent.redact import Redactor

            redactor = Redactor.from_config(config.redaction, state_dir=config.state_dir, telemetry=self.telemetry)
            self._redactor = (config.redaction, redactor)
        return self._redactor[1]

    def build_runner(self, config: Config, spec: PluginSpec) -> CollectorRunner:
        agent = config.agent
        interval = spec.common.interval or agent.interval
        static = merge_labels(labels_from(agent.labels), labels_from(spec.common.labels))
        worker = Worker(spec.name)
        context = CollectorContext(
            instance=spec.name,
            logger=logging.getLogger(f"hostwatch.collector.{spec.type}"),
            clock=self.clock,
            proc_root=Path(agent.proc_root),
            sys_root=Path(agent.sys_root),
            rootfs=Path(agent.rootfs),
            state_dir=config.state_dir / "collectors" / spec.name,
            run_blocking=worker.run,
            redactor=self._redactor_for(config, spec),
            telemetry=self.telemetry,
            static_labels=static,
            interval=interval,
            timeout=spec.common.timeout or interval,
        )
        collector = spec.plugin(spec.config, context)
        return CollectorRunner(
            spec.name,
            collector,
            worker=worker,
            interval=interval,
            timeout=spec.common.timeout or interval,
            static_labels=static,
            publish=self.pipeline.publish_samples,
            log_sink=self.pipeline.publish_logs,
            sample_sink=lambda samples, on_durable, name=spec.name: self.pipeline.accept_samples(
                name, list(samples), on_durable
            ),
            telemetry=self.telemetry,
            logger=context.logger,
            clock=self.clock,
        )

    # ------------------------------------------------------------ reporting

    async def _start_http(self) -> None:
        if not self.config.http.listen:
            return
        from agent.http import HttpServer

        self.http = HttpServer(self, self.config.http.listen)
        await self.http.start()

    def readiness(self) -> tuple[bool, list[str]]:
        reasons: list[str] = []
        if not self.ready:
            reasons.append("stopping" if self.stopping else "starting")
        reasons.extend(self.pipeline.problems())
        return (not reasons, reasons)

    def detailed(self) -> dict[str, Any]:
        ok, reasons = self.readiness()
        return {
            "status": "ready" if ok else "not ready",
            "reasons": reasons,
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
            "config_sources": list(self.config.sources),
            "collectors": {name: runner.state.as_dict() for name, (_, runner) in self.runners.items()},
            "outputs": self.pipeline.status(),
        }


async def run_agent(
    config_path: str | None,
    config: Config,
    *,
    on_ready: Callable[[Agent], None] | None = None,
    notifier: Notifier | None = None,
) -> int:
    """The daemon: start, serve until SIGTERM/SIGINT, reload on SIGHUP. Returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    notifier = notifier or Notifier(None)
    notify = notifier.notify
    agent = Agent(config, notify=notify)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    try:
        await agent.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await agent.stop()
        return 1
    notify(f"READY=1\nSTATUS=running: {len(config.collectors)} collectors, {len(config.outputs)} outputs")
    heartbeat = asyncio.create_task(notifier.watchdog(), name="watchdog")
    if on_ready:
        on_ready(agent)
    while not stop.is_set():
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload_requested.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if reload_requested.is_set() and not stop.is_set():
            reload_requested.clear()
            await _reload(agent, config_path, notify)
    heartbeat.cancel()
    notify("STOPPING=1\nSTATUS=stopping")
    log.info("stopping: flushing outputs (shutdown_timeout %gs)", agent.config.agent.shutdown_timeout)
    await agent.stop()
    log.info("stopped")
    return 0


async def _reload(agent: Agent, config_path: str | None, notify: Callable[[str], None]) -> None:
    notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
    telemetry = agent.telemetry
    try:
        new_config = await asyncio.to_thread(load_config, config_path)
    except ConfigError as exc:
        telemetry.config_reloads.labels("failure").inc()
        telemetry.config_last_reload_success.set(0)
        log.error("reload rejected, the running configuration stays: %d error(s)", len(exc.errors))
        for line in exc.errors:
            log.error("config: %s", line)
        notify("READY=1\nSTATUS=running (last reload rejected)")
        return
    try:
        await agent.reload(new_config)
    except Exception:
        telemetry.config_reloads.labels("failure").inc()
        telemetry.config_last_reload_success.set(0)
        log.exception("reload failed while applying the new configuration")
    else:
        telemetry.config_reloads.labels("success").inc()
        telemetry.config_last_reload_success.set(1)
        log.info("configuration reloaded", extra={"sources": ",".join(new_config.sources)})
    notify("READY=1\nSTATUS=running")


def install_event_loop_policy() -> None:
    """uvloop when available (lower CPU per wake-up); plain asyncio otherwise."""
    if os.environ.get("HOSTWATCH_NO_UVLOOP"):
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
