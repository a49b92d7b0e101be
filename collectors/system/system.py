"""Kernel and system information, as node_exporter's small Linux collectors export it.

One plugin stands for ten of node_exporter's collectors (``uname``, ``os``,
``time``, ``timex``, ``filefd``, ``entropy``, ``pressure``, ``schedstat``,
``processes``, ``interrupts``); ``collectors`` and ``exclude`` pick them, as
node_exporter's ``--collector.X`` flags do. Each is a small class with a
``collect(emit)`` (modules :mod:`.info`, :mod:`.clock`, :mod:`.kernel`,
:mod:`.processes`); one run calls the selected ones in turn on the instance's
worker thread. Each also yields node_exporter's
``node_scrape_collector_success`` and ``node_scrape_collector_duration_seconds``
under its own name, so a dashboard sees which part failed.

A part that fails (a file missing that every Linux has, malformed content)
loses its series for that run and is reported as a collector error, counted
and logged once per distinct message; the other parts are unaffected. A part
the host does not offer (no PSI, no schedstat, adjtimex refused, no
os-release) is not an error: it logs once and reports success 0, as
node_exporter's "no data".
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec

from agent.plugin import CollectorContext, Emitter, IdleParts, PeriodicCollector, PluginConfig
from agent.procfiles import KeptFiles

from .base import Roots, Unavailable
from .clock import TimeCollector, TimexCollector
from .info import OsReleaseCollector, UnameCollector
from .kernel import EntropyCollector, FilefdCollector, InterruptsCollector, PressureCollector, SchedstatCollector
from .processes import ProcessesCollector

PARTS = {
    part.name: part
    for part in (
        EntropyCollector,
        FilefdCollector,
        InterruptsCollector,
        OsReleaseCollector,
        PressureCollector,
        ProcessesCollector,
        SchedstatCollector,
        TimeCollector,
        TimexCollector,
        UnameCollector,
    )
}
ALL = tuple(PARTS)


class SystemCollector(PeriodicCollector):
    shares_worker = True  # reads /proc, /sys and /etc/os-release only

    class Config(PluginConfig):
        collectors: Annotated[
            list[str],
            msgspec.Meta(
                description="The parts to run, by node_exporter collector name: " + ", ".join(ALL) + ". "
                "Default: all of them."
            ),
        ] = msgspec.field(default_factory=lambda: list(ALL))
        exclude: Annotated[
            list[str], msgspec.Meta(description='Parts not to run, e.g. ["interrupts"]; applied after collectors.')
        ] = msgspec.field(default_factory=list)

        def __post_init__(self) -> None:
            for key in ("collectors", "exclude"):
                unknown = [name for name in getattr(self, key) if name not in PARTS]
                if unknown:
                    raise ValueError(f"{key}: unknown collector(s) {unknown}; known: {', '.join(ALL)}")

    def __init__(self, config: SystemCollector.Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._files = KeptFiles()
        roots = Roots(context.proc_root, context.sys_root, context.rootfs, self._files)
        chosen = [name for name in dict.fromkeys(config.collectors) if name not in config.exclude]
        self._parts = [PARTS[name](roots) for name in chosen]
        self._labels = {name: (("collector", name),) for name in chosen}
        self._told: set[str] = set()  # parts whose unavailability was logged
        self._idle = IdleParts(context.clock)  # a part the host lacks (no schedstat): tried once a minute

    async def collect(self, emit: Emitter) -> None:
        await self.context.run_blocking(self._collect, emit)

    async def close(self) -> None:
        # on the worker thread, after any run still reading them: a descriptor closed under a
        # read could be reused by another open and read in its place
        if len(self._files):
            await self.context.run_blocking(self._files.close)

    def _collect(self, emit: Emitter) -> None:
        self._collect_parts(emit)
        self._files.sweep()

    def _collect_parts(self, emit: Emitter) -> None:
        idle = self._idle
        now = idle.clock()
        for part in self._parts:
            started = time.perf_counter()
            success = 0.0
            try:
                if not idle.idle(part.name, now):  # else unavailable still: success 0, as when it said so
                    part.collect(emit)
                    success = 1.0
                    idle.looked(part.name, now, True)
            except Unavailable as exc:
                idle.looked(part.name, now, False)
                if part.name not in self._told:
                    self._told.add(part.name)
                    log = self.context.logger.warning if exc.warn else self.context.logger.info
                    log("system collector %s: not available on this host: %s", part.name, exc)
            except (OSError, ValueError, IndexError) as exc:
                emit.error(f"{part.name}: {exc}")
            labels = self._labels[part.name]
            emit.gauge("node_scrape_collector_duration_seconds", time.perf_counter() - started, labels, unit="s")
            emit.gauge("node_scrape_collector_success", success, labels, unit="1")
