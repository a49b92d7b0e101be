"""Fan-out: each collector run goes to /metrics and to every output that accepts its signal."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.delivery import AckToken
from agent.exposition import LatestSamples
from agent.lane_contract import Intake
from agent.model import LogRecord, Sample, Signal, Span, labels_from
from agent.output_runner import OutputRunner
from agent.plugin import OutputContext
from agent.staleness import SeriesTracker

log = logging.getLogger("hostwatch.pipeline")


class ApplyError(Exception):
    """A configuration that validated but could not be applied (a secret file, TLS, a buffer)."""


@dataclass
class OutputPlan:
    """What :meth:`Pipeline.prepare` readied for :meth:`Pipeline.commit` or :meth:`Pipeline.abort`."""

    config: Any
    retired: list[str]  # running outputs the config removes or changes
    started: dict[str, tuple[Any, OutputRunner]] = field(default_factory=dict)  # plugin started, buffers closed


class Pipeline:
    def __init__(self, telemetry: Any, latest: LatestSamples, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.telemetry = telemetry
        self.latest = latest
        self.clock = clock
        self.runners: dict[str, tuple[Any, OutputRunner]] = {}
        # each signal's way into every running output that takes it (see _route)
        self._metric_lanes: list[Intake] = []
        self._log_lanes: list[Intake] = []
        self._trace_lanes: list[Intake] = []
        self._said_unrouted: set[Signal] = set()
        self.failed: dict[str, str] = {}  # outputs of the config that could not be started, and why
        self.series = SeriesTracker()

    # ------------------------------------------------------------ outputs

    async def apply(self, config: Any) -> None:
        """Start outputs new in ``config``, stop removed or changed ones (they drain first).

        All or nothing up to the buffers: see :meth:`prepare` and :meth:`commit`.
        """
        await self.commit(await self.prepare(config))

    async def prepare(self, config: Any) -> OutputPlan:
        """Build and start (plugin only: secret files, TLS) every output new or changed in ``config``.

        Nothing running is touched. When one fails, those already started are
        closed again and :class:`ApplyError` names the output and the reason.
        """
        wanted = {spec.name: spec for spec in config.outputs}
        retired = [n for n, (key, _) in self.runners.items() if n not in wanted or key != (wanted[n], config.agent)]
        plan = OutputPlan(config, retired)
        for name, spec in wanted.items():
            if name in self.runners and name not in retired:
                continue
            try:
                runner = self._build(config, spec)
                plan.started[name] = ((spec, config.agent), runner)
                await runner.start_output()
            except Exception as exc:
                await self.abort(plan)
                raise ApplyError(f"output {name}: {type(exc).__name__}: {exc}") from exc
        return plan

    async def abort(self, plan: OutputPlan) -> None:
        """Close the plugins :meth:`prepare` started; the running outputs never noticed."""
        for _, runner in plan.started.values():
            await runner.close_output()
        plan.started.clear()

    async def commit(self, plan: OutputPlan) -> None:
        """Swap: retired outputs drain and stop, then the new ones open their buffers and start.

        A replaced output's buffer directory is the old one's, so it can only be
        opened once the old instance has closed it. The new instance is routed
        to at once, though: what arrives meanwhile waits in its pending batches
        (log sources pause when those are full), so nothing slips past an output
        while it is being replaced. Should a buffer still fail to open, the
        output is listed by :meth:`problems` (``/ready`` answers 503) and
        :class:`ApplyError` is raised after everything else was applied.
        """
        stopping = [self.runners.pop(name)[1] for name in plan.retired]
        self.runners.update(plan.started)
        self._route()
        await asyncio.gather(*(r.close(plan.config.agent.shutdown_timeout) for r in stopping))
        wanted = {spec.name for spec in plan.config.outputs}
        self.failed = {name: why for name, why in self.failed.items() if name in wanted and name not in plan.started}
        for name, (_, runner) in plan.started.items():
            try:
                await runner.open_lanes()
            except Exception as exc:
                self.failed[name] = f"output {name} not running: cannot open its buffer: {type(exc).__name__}: {exc}"
                log.error("%s", self.failed[name])
                del self.runners[name]
                self._route()
                await runner.discard()  # what it gathered is counted (logs are read again)
        self._route()
        failed_now = [self.failed[name] for name in plan.started if name in self.failed]
        if failed_now:
            raise ApplyError("; ".join(failed_now))

    def _build(self, config: Any, spec: Any) -> OutputRunner:
        agent = config.agent
        context = OutputContext(
            instance=spec.name,
            logger=logging.getLogger(f"hostwatch.output.{spec.type}"),
            clock=self.clock,
            hostname=config.hostname,
            job=agent.job,
            agent_labels=labels_from(agent.labels),
            version=_version(),
            telemetry=self.telemetry,
        )
        output = spec.plugin(spec.config, context)
        return OutputRunner(
            spec,
            output,
            state_dir=config.state_dir,
            telemetry=self.telemetry,
            clock=self.clock,
            buffer_kind=choose_buffer(spec.common.buffer, config.state_dir, spec.name),
        )

    def _route(self) -> None:
        runners = [r for _, r in self.runners.values()]
        self._metric_lanes = [i for r in runners if (i := r.intake(Signal.METRICS)) is not None]
        self._log_lanes = [i for r in runners if (i := r.intake(Signal.LOGS)) is not None]
        self._trace_lanes = [i for r in runners if (i := r.intake(Signal.TRACES)) is not None]

    # ------------------------------------------------------------ intake

    def publish_samples(
        self,
        instance: str,
        samples: list[Sample],
        on_durable: Callable[[], None] | None = None,
        *,
        served: bool = True,
    ) -> None:
        """A periodic run's samples: to /metrics, and offered to every metrics output (never waits).

        Series the instance's previous run had and this one lacks get a staleness
        marker, pushed with the run (``/metrics`` simply stops showing them).
        ``served=False`` keeps the samples off ``/metrics`` (outputs only)."""
        same_as = self.latest.replace(instance, samples) if served else None
        ended = self.series.update(instance, samples, self.clock(), same_as)
        if ended:
            samples = samples + ended
        lanes = self._metric_lanes if samples else []
        token = _ack_token(lanes, on_durable)
        for lane in lanes:
            lane.offer(samples, token)

    async def accept_samples(
        self,
        instance: str,
        samples: list[Sample],
        on_durable: Callable[[], None] | None = None,
        flush: bool = False,
        *,
        served: bool = True,
    ) -> None:
        """Streaming sources' samples: like :meth:`publish_samples`, but an output with
        ``when_full = "block"`` makes the source wait for room instead of shedding.
        ``flush``: the source waits for ``on_durable``; the batch is sealed at once."""
        if served:
            self.latest.replace(instance, samples)
        elif not self._metric_lanes:
            self._unrouted(Signal.METRICS, len(samples))
        lanes = self._metric_lanes if samples else []
        token = _ack_token(lanes, on_durable)
        for lane in lanes:
            if lane.when_full == "block":
                await lane.accept(samples, token, flush=flush)
            else:
                lane.offer(samples, token, flush=flush)

    async def publish_logs(
        self, records: Sequence[LogRecord], on_durable: Callable[[], None] | None, flush: bool = False
    ) -> None:
        lanes = self._log_lanes
        if not lanes:
            self._unrouted(Signal.LOGS, len(records))
        token = _ack_token(lanes, on_durable)
        for lane in lanes:
            await lane.accept(records, token, flush=flush)

    async def publish_spans(
        self, spans: Sequence[Span], on_durable: Callable[[], None] | None, flush: bool = False
    ) -> None:
        """Trace spans, as log records: every trace output takes them, waiting for room when full."""
        lanes = self._trace_lanes
        if not lanes:
            self._unrouted(Signal.TRACES, len(spans))
        token = _ack_token(lanes, on_durable)
        for lane in lanes:
            await lane.accept(spans, token, flush=flush)

    def _unrouted(self, signal: Signal, count: int) -> None:
        """Items a source handed on that no output takes: gone, so counted and said once."""
        if not count:
            return
        self.telemetry.unrouted_items.labels(signal.value).inc(count)
        if signal not in self._said_unrouted:
            self._said_unrouted.add(signal)
            log.warning("%s received, but no output takes %s: they are dropped (counted)", signal.value, signal.value)

    def end_instance(self, instance: str) -> None:
        """A collector instance was removed: its series end now (staleness markers)."""
        self._offer_markers(self.series.end(instance, self.clock()))

    def _offer_markers(self, markers: list[Sample]) -> None:
        for lane in self._metric_lanes if markers else []:
            lane.offer(markers, None)

    # ------------------------------------------------------------ shutdown, status

    async def close(self, timeout: float) -> None:
        # the collectors have stopped: every series they kept alive ends here, and the
        # markers are flushed with the rest (a restart's first run revives the series)
        self._offer_markers(self.series.end_all(self.clock()))
        runners = [r for _, r in self.runners.values()]
        self.runners.clear()
        self._route()
        await asyncio.gather(*(r.close(timeout) for r in runners))

    def problems(self) -> list[str]:
        return [*self.failed.values(), *(p for _, r in self.runners.values() for p in r.problems())]

    def status(self) -> dict[str, Any]:
        return {name: r.status() for name, (_, r) in self.runners.items()}

    def totals(self) -> dict[str, tuple[int, int, int, float]]:
        """Each running output's :meth:`OutputRunner.totals` (the status page's figures)."""
        return {name: r.totals() for name, (_, r) in self.runners.items()}

    def refresh_gauges(self) -> None:
        for _, runner in self.runners.values():
            runner.update_gauges()


def _ack_token(lanes: list[Intake], on_durable: Callable[[], None] | None) -> AckToken | None:
    """One token that every lane counts down; with no lane at all the items are done now."""
    if on_durable is None:
        return None
    if not lanes:
        on_durable()
        return None
    return AckToken(len(lanes), on_durable)


def choose_buffer(requested: str, state_dir: Path, name: str) -> str:
    """``disk`` by default when the state directory is writable, else ``memory`` (said once)."""
    if requested:
        return requested
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        if os.access(state_dir, os.W_OK):
            return "disk"
    except OSError:
        pass
    log.warning("output %s: state_dir %s is not writable; using a memory buffer (not durable)", name, state_dir)
    return "memory"


def _version() -> str:
    from agent import __version__

    return __version__
