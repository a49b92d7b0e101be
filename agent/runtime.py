"""The agent's lifecycle: phased start, signals, reload, and a bounded stop.

Start order is HTTP server (so ``/live`` answers during start-up), outputs,
pipeline, collectors; stop is the reverse, under one deadline, so collectors
stop producing before outputs get ``shutdown_timeout`` to deliver.

A reload is all or nothing: the new parts are started before any old one
stops (see :meth:`Agent.reload`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import Config, ConfigError, PluginSpec, load_config
from agent.exposition import LatestSamples
from agent.logsetup import SecretMask
from agent.model import labels_from
from agent.pipeline import ApplyError, Pipeline
from agent.plugin import CollectorContext, Redactor
from agent.scheduler import CollectorRunner, TickGroup, iso_time, scrape_key
from agent.secrets import config_secrets
from agent.status import History, RecentProblems, build_status, output_totals
from agent.systemd import Notifier
from agent.telemetry import Telemetry
from agent.workers import SharedWorker, Worker

if TYPE_CHECKING:
    from agent.http import HttpServer

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
        mask: SecretMask | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry or Telemetry()
        # the log handler's mask (the CLI's), also applied to what /health/detailed and /ready show
        self.mask = mask or SecretMask()
        self.last_reload: dict[str, Any] | None = None
        self.clock = clock
        self.notify = notify or (lambda _state: None)
        # the status page's charts: fed by the runs /metrics keeps anyway (see agent.status)
        self.history = History(outputs=lambda: output_totals(self.pipeline))
        self.problems = RecentProblems()
        self.latest = LatestSamples(on_replace=self.history.observe, agent_labels=labels_from(config.agent.labels))
        self.pipeline = Pipeline(self.telemetry, self.latest, clock=clock)
        self.runners: dict[str, tuple[tuple[Any, ...], CollectorRunner]] = {}
        self.http: HttpServer | None = None
        self.started_monotonic = time.monotonic()
        self.ready = False
        self.stopping = False
        self._background: set[asyncio.Task] = set()
        self._redactor: tuple[Any, Redactor] | None = None
        # per interval: the periodic instances' common timer, and the worker thread of those
        # that only read /proc and /sys (see build_runner)
        self._tick_groups: dict[float, TickGroup] = {}
        self._shared_workers: dict[float, SharedWorker] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        logging.getLogger("hostwatch").addHandler(self.problems)
        self.mask.add(await asyncio.to_thread(config_secrets, self.config))
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
        logging.getLogger("hostwatch").removeHandler(self.problems)

    async def reload(self, new_config: Config) -> None:
        """Apply a validated config, all or nothing; unchanged instances keep running.

        The new parts start before any old one stops: a new ``listen`` address
        is bound, new or changed outputs start (secret files, TLS), new or
        changed collectors are built. Only when all of that worked do the old
        ones stop and the new ones take over; otherwise what was started is
        closed again, the running configuration stays, and :class:`ApplyError`
        says why.
        """
        old = self.config
        moved = new_config.http.listen != old.http.listen
        new_http = await self._bind_http(new_config.http.listen) if moved else None
        try:
            plan = await self.pipeline.prepare(new_config)
        except ApplyError:
            await self._unbind_http(new_http)
            raise
        try:
            stopping, starting = self._prepare_collectors(new_config)
        except ApplyError:
            await self.pipeline.abort(plan)
            await self._unbind_http(new_http)
            raise
        # everything new is ready: from here on the new configuration is the running one
        self.config = new_config
        self.latest.set_agent_labels(labels_from(new_config.agent.labels))
        if moved:
            old_http, self.http = self.http, new_http
            if old_http is not None and old_http is not new_http:
                await old_http.stop()
        try:
            await self.pipeline.commit(plan)
        finally:
            self._commit_collectors(stopping, starting)

    # ------------------------------------------------------------ collectors

    def _apply_collectors(self, config: Config) -> None:
        self._commit_collectors(*self._prepare_collectors(config))

    def _prepare_collectors(self, config: Config) -> tuple[list[str], dict[str, tuple[Any, CollectorRunner]]]:
        """Build (not start) the runners new or changed in ``config``; raises if a collector cannot be built."""
        wanted = {spec.name: spec for spec in config.collectors}
        stopping = [
            name
            for name, (key, _) in self.runners.items()
            if name not in wanted or key != self._runner_key(config, wanted[name])
        ]
        starting = {}
        for name, spec in wanted.items():
            if name in self.runners and name not in stopping:
                continue
            try:
                starting[name] = (self._runner_key(config, spec), self.build_runner(config, spec))
            except Exception as exc:
                raise ApplyError(f"collector {name}: {type(exc).__name__}: {exc}") from exc
        return stopping, starting

    def _commit_collectors(self, stopping: list[str], starting: dict[str, tuple[Any, CollectorRunner]]) -> None:
        for name in stopping:
            _, runner = self.runners.pop(name)
            if name not in starting:
                # removed, not changed: its series end now (a changed one goes on publishing them)
                for key in (name, scrape_key(name)):
                    self.latest.forget(key)
                    self.pipeline.end_instance(key)
            task = asyncio.create_task(runner.stop())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        for name, (key, runner) in starting.items():
            self.runners[name] = (key, runner)
            runner.start()

    @staticmethod
    def _runner_key(config: Config, spec: PluginSpec) -> tuple[Any, ...]:
        redaction = config.redaction if getattr(spec.plugin, "needs_redactor", False) else None
        return (spec, config.agent, redaction)

    def _redactor_for(self, config: Config, spec: PluginSpec) -> Redactor | None:
        """The redaction service, built once per configuration and only for plugins that use it."""
        if not getattr(spec.plugin, "needs_redactor", False):
            return None
        if self._redactor is None or self._redactor[0] is not config.redaction:
            from agent.redact import Redactor as RuleRedactor

            redactor = RuleRedactor.from_config(config.redaction, state_dir=config.state_dir, telemetry=self.telemetry)
            self._redactor = (config.redaction, redactor)
        return self._redactor[1]

    def build_runner(self, config: Config, spec: PluginSpec) -> CollectorRunner:
        agent = config.agent
        interval = spec.common.interval or agent.interval
        # [agent] labels are not the collectors' to add: the outputs and /metrics add them on the way out
        static = labels_from(spec.common.labels)
        periodic = not getattr(spec.plugin, "streaming", False)
        worker = self._shared_worker(interval).bind(spec.name) if self._may_share(spec) else Worker(spec.name)
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
            agent_labels=labels_from(agent.labels),
            denied_paths=secret_paths(config),
            interval=interval,
            timeout=spec.common.timeout or interval,
        )
        collector = spec.plugin(spec.config, context)
        served = getattr(spec.plugin, "served_on_metrics", True)
        return CollectorRunner(
            spec.name,
            collector,
            worker=worker,
            interval=interval,
            timeout=spec.common.timeout or interval,
            static_labels=static,
            publish=self.pipeline.publish_samples
            if served
            else functools.partial(self.pipeline.publish_samples, served=False),
            log_sink=self.pipeline.publish_logs,
            sample_sink=lambda samples, on_durable, flush=False, name=spec.name, served=served: (
                self.pipeline.accept_samples(name, list(samples), on_durable, flush, served=served)
            ),
            span_sink=self.pipeline.publish_spans,
            telemetry=self.telemetry,
            logger=context.logger,
            clock=self.clock,
            group=self._tick_groups.setdefault(interval, TickGroup(interval)) if periodic else None,
        )

    @staticmethod
    def _may_share(spec: PluginSpec) -> bool:
        """Plugins that only read /proc and /sys say so (``shares_worker``); their calls return
        at once, so one thread serves them all. Others (a mount, a user's directory) keep their own."""
        return getattr(spec.plugin, "shares_worker", False) and not getattr(spec.plugin, "streaming", False)

    def _shared_worker(self, interval: float) -> SharedWorker:
        shared = self._shared_workers.get(interval)
        if shared is None:
            shared = self._shared_workers[interval] = SharedWorker(
                f"shared-{interval:g}s", stuck_after=interval / 2, on_isolate=self._isolated
            )
        return shared

    @staticmethod
    def _isolated(instance: str) -> None:
        log.warning(
            "collector %s: a blocking call is still running after half an interval; the instance now has a"
            " worker thread of its own, so it cannot hold up the others",
            instance,
            extra={"collector": instance},
        )

    # ------------------------------------------------------------ reporting

    async def _start_http(self) -> None:
        if not self.config.http.listen:
            return
        from agent.http import HttpServer

        self.http = HttpServer(self, self.config.http.listen, telemetry=self.telemetry)
        await self.http.start()

    async def _bind_http(self, listen: str) -> HttpServer | None:
        """A server on ``listen`` for a reload, bound while the old one still serves; None for no server."""
        if not listen:
            return None
        from agent.http import HttpServer, parse_listen

        server = HttpServer(self, listen, telemetry=self.telemetry)
        try:
            try:
                await server.start()
            except OSError:
                # the same port on another address of this host: the old socket must go first
                if self.http is None or self.http.port != parse_listen(listen)[1]:
                    raise
                await self.http.stop()
                try:
                    await server.start()
                except OSError:
                    await self.http.start()  # the old address again: it was ours a moment ago
                    raise
        except (OSError, ValueError) as exc:
            raise ApplyError(f"[http] listen: {exc}") from None
        return server

    async def _unbind_http(self, server: HttpServer | None) -> None:
        """Undo :meth:`_bind_http` for a reload that failed later: the old server serves again."""
        if server is None or server is self.http:
            return
        await server.stop()
        if self.http is not None and not self.http.serving:
            await self.http.start()  # it had to give its port up for the new address

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready or not, and why not (error texts masked: they may quote a URL or a server's answer)."""
        reasons: list[str] = []
        if not self.ready:
            reasons.append("stopping" if self.stopping else "starting")
        reasons.extend(self.pipeline.problems())
        return (not reasons, [self.mask.mask(reason) for reason in reasons])

    def detailed(self) -> dict[str, Any]:
        ok, reasons = self.readiness()
        return self.mask.mask_all(
            {
                "status": "ready" if ok else "not ready",
                "reasons": reasons,
                "version": __version__,
                "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
                "config_sources": list(self.config.sources),
                "last_reload": self.last_reload,
                "collectors": {name: runner.state.as_dict() for name, (_, runner) in self.runners.items()},
                "outputs": self.pipeline.status(),
            }
        )

    async def status_document(self) -> dict[str, Any]:
        """``/status.json``: what the status page and ``hostwatch status`` show (masked)."""
        return await build_status(self)

    def note_reload(self, ok: bool, error: str = "") -> None:
        """Count a reload and remember it for /health/detailed."""
        self.telemetry.config_reloads.labels("success" if ok else "failure").inc()
        self.telemetry.config_last_reload_success.set(1 if ok else 0)
        self.last_reload = {"time": iso_time(self.clock()), "result": "success" if ok else "failure"}
        if error:
            self.last_reload["error"] = self.mask.mask(error)


async def run_agent(
    config_path: str | None,
    config: Config,
    *,
    on_ready: Callable[[Agent], None] | None = None,
    notifier: Notifier | None = None,
    mask: SecretMask | None = None,
) -> int:
    """The daemon: start, serve until SIGTERM/SIGINT, reload on SIGHUP. Returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    notifier = notifier or Notifier(None)
    notify = notifier.notify
    agent = Agent(config, notify=notify, mask=mask)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    try:
        await agent.start()
    except (OSError, ApplyError) as exc:
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
    try:
        new_config = await asyncio.to_thread(load_config, config_path)
    except ConfigError as exc:
        agent.note_reload(False, f"{len(exc.errors)} configuration error(s): {'; '.join(exc.errors)}")
        log.error("reload rejected, the running configuration stays: %d error(s)", len(exc.errors))
        for line in exc.errors:
            log.error("config: %s", line)
        notify("READY=1\nSTATUS=running (last reload rejected)")
        return
    # the new secrets are masked before anything can quote them, also if the reload fails
    agent.mask.add(await asyncio.to_thread(config_secrets, new_config))
    try:
        await agent.reload(new_config)
    except ApplyError as exc:
        agent.note_reload(False, str(exc))
        log.error("reload failed, the running configuration stays: %s", exc)
        notify("READY=1\nSTATUS=running (last reload failed)")
        return
    except Exception as exc:
        agent.note_reload(False, f"{type(exc).__name__}: {exc}")
        log.exception("reload failed while applying the new configuration")
        notify("READY=1\nSTATUS=running (last reload failed)")
        return
    agent.note_reload(True)
    log.info("configuration reloaded", extra={"sources": ",".join(new_config.sources)})
    for line in new_config.warnings:  # as at start: valid, but worth a look (a listen off loopback)
        logging.getLogger("hostwatch.config").warning("%s", line)
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


def secret_paths(config: Config) -> frozenset[str]:
    """Files no collector may ship: the configuration files, every plugin's ``*_file`` options and TLS keys."""
    paths = {source for source in config.sources if not source.startswith("<")}
    for spec in (*config.collectors, *config.outputs):
        for struct in (spec.common, spec.config):
            for name in getattr(struct, "__struct_fields__", ()):
                value = getattr(struct, name)
                if isinstance(value, str) and value and (name.endswith("_file") or name == "tls_key"):
                    paths.add(value)
    return frozenset(os.path.abspath(p) for p in paths)
