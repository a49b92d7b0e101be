"""Runs collector instances: on their interval (periodic) or until stopped (streaming).

Periodic instances of one interval form a :class:`TickGroup`: one timer wakes
them all and starts their runs together, so the blocking calls of those that
share a :class:`~agent.workers.SharedWorker` run in one thread hop.

A run is bounded by the instance's timeout. When it passes, the run is
abandoned (its worker thread may still be stuck in the kernel; the next run
queues behind it and times out too, which is reported each time) and other
instances carry on: a run never waits for another instance's, an instance
whose run is still going skips its turn, and an instance with a worker thread
of its own (``disk``: a hung mount) cannot hold up anyone else's calls. The
group keeps the deadlines of its runs on its own timer (one handle for the
next tick or the earliest deadline), not one ``asyncio.timeout`` per run: the
runs of a tick nearly always end long before either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.emitter import LogSink, RunEmitter, SampleSink, SpanSink
from agent.model import Labels, Sample, merge_labels
from agent.workers import SharedWorkerMember, Worker

Publish = Callable[[str, list[Sample]], None]

SCRAPE_SUFFIX = "#scrape"
"""Key under which an instance's ``node_scrape_collector_*`` samples are published: apart
from its run's samples, so a failed run reports ``success 0`` without ending (staleness)
the series the instance still has."""


# uvloop's timers count whole milliseconds and may fire that much before their time: a wake-up
# that close to a tick or a deadline takes it, instead of arming the timer again for the rest
TIMER_SLACK = 0.001


def scrape_key(instance: str) -> str:
    return instance + SCRAPE_SUFFIX


@dataclass
class RunState:
    """What /health/detailed shows for an instance."""

    runs: int = 0
    errors: int = 0
    last_run_ns: int = 0
    last_duration_s: float = 0.0
    last_success_ns: int = 0
    last_error: str = ""
    last_samples: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "errors": self.errors,
            "last_run": iso_time(self.last_run_ns),
            "last_duration_seconds": round(self.last_duration_s, 6),
            "last_success": iso_time(self.last_success_ns),
            "last_error": self.last_error or None,
            "last_samples": self.last_samples,
        }


def iso_time(ns: int) -> str | None:
    if not ns:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


class CollectorRunner:
    """Drives one collector instance and reports on it."""

    def __init__(
        self,
        name: str,
        collector: Any,
        *,
        worker: Worker | SharedWorkerMember,
        interval: float,
        timeout: float,
        static_labels: Labels,
        publish: Publish,
        log_sink: LogSink | None,
        telemetry: Any,
        sample_sink: SampleSink | None = None,
        span_sink: SpanSink | None = None,
        logger: logging.Logger,
        clock: Callable[[], int] = time.time_ns,
        jitter: float | None = None,
        group: TickGroup | None = None,
    ) -> None:
        self.name = name
        self.group = group
        self.collector = collector
        self.worker = worker
        self.interval = interval
        self.timeout = timeout
        self.static_labels = static_labels
        self.publish = publish
        self.log_sink = log_sink
        self.sample_sink = sample_sink
        self.span_sink = span_sink
        self.telemetry = telemetry
        self.logger = logger
        self.clock = clock
        # spread a fleet's (and one host's instances') runs; at most 10% of the interval, 1 s
        self.jitter = min(interval * 0.1, 1.0) if jitter is None else jitter
        self.state = RunState()
        self._task: asyncio.Task | None = None
        self._run: asyncio.Task | None = None  # the run a TickGroup started
        self._run_name = f"collector:{name}"
        self.deadline = math.inf  # loop time the group's run must end by; inf once expired
        self._expired = False  # the group cancelled the run for its timeout
        self._started = False
        self._logged_errors: set[str] = set()
        self._m_runs = telemetry.collector_runs.labels(name)
        self._m_errors = telemetry.collector_errors.labels(name)
        self._m_duration = telemetry.collector_duration.labels(name)
        self._m_samples = telemetry.collector_samples.labels(name)
        # node_exporter's per-collector scrape series, which Node Exporter Full charts
        self._scrape_labels = merge_labels(static_labels, (("collector", name),))
        self._scrape_key = scrape_key(name)

    def start(self) -> None:
        if getattr(self.collector, "streaming", False):
            self._task = asyncio.create_task(self._stream(), name=self._run_name)
            return
        if self.group is None:  # a lone periodic instance: a group of its own keeps its cadence
            self.group = TickGroup(self.interval, self.jitter)
        self.group.add(self)

    def start_run(self, deadline: float) -> bool:
        """Start a run for the group, to end by ``deadline`` (loop time); False (skipped) while the
        previous one is still going."""
        if self.running:
            return False
        self.deadline = deadline
        self._expired = False
        self._run = asyncio.create_task(self._tick(), name=self._run_name)
        return True

    @property
    def running(self) -> bool:
        return self._run is not None and not self._run.done()

    def expire(self) -> None:
        """The run passed its deadline: abandon it (``_tick`` reports the timeout)."""
        self.deadline = math.inf
        if self.running:
            self._expired = True
            self._run.cancel()  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Cancel the loop, then close the plugin. Idempotent."""
        if self.group is not None:
            self.group.remove(self)
        for task in (self._task, self._run):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._run = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.collector.close()
        self.worker.close()

    async def run_once(self) -> RunEmitter:
        """One run outside the schedule (``hostwatch once``, benches), bounded by the timeout;
        the emitter holds what it produced and reported."""
        emitter = RunEmitter(self.clock(), self.static_labels, self.log_sink)
        async with asyncio.timeout(self.timeout):
            await self._collect(emitter)
        return emitter

    async def _collect(self, emitter: RunEmitter) -> None:
        if not self._started:
            await self.collector.start()
            self._started = True
        await self.collector.collect(emitter)

    async def _tick(self) -> None:
        """One run the group started and bounds (see :meth:`expire`)."""
        state = self.state
        state.runs += 1
        state.last_run_ns = self.clock()
        self._m_runs.inc()
        started = time.perf_counter()
        success = False
        emitter = RunEmitter(state.last_run_ns, self.static_labels, self.log_sink)
        try:
            if self._started:  # the collect() call inline: one coroutine frame less per run
                await self.collector.collect(emitter)
            else:
                await self._collect(emitter)
        except asyncio.CancelledError:
            # ours (the deadline passed) unless someone else cancelled the task as well (a stop)
            if not self._expired or asyncio.current_task().uncancel():  # type: ignore[union-attr]
                raise
            self._fail(f"run exceeded its timeout of {self.timeout:g}s", timed_out=True)
        except TimeoutError:
            self._fail(f"run exceeded its timeout of {self.timeout:g}s", timed_out=True)
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}", exc=exc)
        else:
            for problem in emitter.errors:
                self._report(problem)
            self.publish(self.name, emitter.samples)
            state.last_samples = len(emitter.samples)
            self._m_samples.set(state.last_samples)
            success = not emitter.errors
            if success:
                state.last_success_ns = state.last_run_ns
        finally:
            state.last_duration_s = time.perf_counter() - started
            self._m_duration.observe(state.last_duration_s)
            if self.group is not None:
                self.group.ended(self)
        self._publish_scrape(state.last_duration_s, success)

    def _publish_scrape(self, duration: float, success: bool) -> None:
        labels, now = self._scrape_labels, self.state.last_run_ns
        self.publish(
            self._scrape_key,
            [
                Sample("node_scrape_collector_duration_seconds", duration, "gauge", labels, now, "s"),
                Sample("node_scrape_collector_success", 1.0 if success else 0.0, "gauge", labels, now),
            ],
        )

    def _report(self, problem: BaseException | str) -> None:
        text = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}"
        self._fail(text, partial=True)

    def _fail(self, text: str, *, timed_out: bool = False, partial: bool = False, exc: Exception | None = None) -> None:
        self.state.errors += 1
        self.state.last_error = text
        self._m_errors.inc()
        if timed_out:
            self.telemetry.collector_timeouts.labels(self.name).inc()
        # the same problem every interval would flood the log: say it once, count it always
        if text not in self._logged_errors and len(self._logged_errors) < 100:
            self._logged_errors.add(text)
            self.logger.warning(
                "collector %s: %s%s",
                self.name,
                text,
                " (further occurrences are only counted)" if not partial else "",
                extra={"collector": self.name},
                exc_info=exc if exc and not isinstance(exc, OSError) else None,
            )

    async def _stream(self) -> None:
        while True:
            self.state.runs += 1
            self.state.last_run_ns = self.clock()
            self._m_runs.inc()
            emitter = _StreamEmitter(self)
            try:
                await self.collector.run(emitter)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._fail(f"{type(exc).__name__}: {exc}", exc=exc)
            await asyncio.sleep(self.interval)


class TickGroup:
    """The periodic instances of one interval: one timer, their runs started together.

    One wake-up of the loop per interval for the whole group instead of one per
    instance, and the runs' blocking calls reach a shared worker in the same
    loop iteration, so they go in one batch. The group never waits for a run:
    an instance whose previous run has not ended skips this turn (as a lone
    instance skips the slots its overrunning run missed).

    The same timer bounds the runs: it is armed for the next tick or, when
    earlier, the earliest deadline of a run still going; a run past its deadline
    is abandoned (:meth:`CollectorRunner.expire`). One timer handle per tick,
    instead of a timeout handle set and cancelled by every run.
    """

    def __init__(self, interval: float, jitter: float | None = None) -> None:
        self.interval = interval
        # spread a fleet's runs; at most 10% of the interval, 1 s
        self.jitter = min(interval * 0.1, 1.0) if jitter is None else jitter
        # one offset drawn per group, as Prometheus offsets each target's scrapes: the ticks stay
        # an interval apart, so a run whose timeout is the interval ends (or is abandoned) just
        # as the next tick starts it again
        self.phase = random.uniform(0, self.jitter)
        self.members: list[CollectorRunner] = []
        self._running: list[CollectorRunner] = []  # members whose run may still be going
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._armed_at = math.inf  # loop time the timer fires at
        self._next_at = 0.0  # the next tick's slot, and that tick's time with the offset
        self._tick_at = 0.0
        self._ticked = False  # the first tick came: a member that joins now starts at once

    def add(self, runner: CollectorRunner) -> None:
        self.members.append(runner)
        if self._loop is None:  # the first member: the first tick as soon as the loop turns
            self._loop = loop = asyncio.get_running_loop()
            self._next_at = self._tick_at = loop.time()  # the first tick at once, the offset after it
            self._timer, self._armed_at = loop.call_soon(self._wake), self._tick_at
        elif self._ticked:
            # joined by a reload while the group ticks: first run now, then in step with the group
            self._start(runner, self._loop.time())
            self._arm()

    def remove(self, runner: CollectorRunner) -> None:
        if runner in self.members:
            self.members.remove(runner)
        if runner in self._running:
            self._running.remove(runner)
        if not self.members:  # the timer stops; a member added later starts the group again
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._loop, self._armed_at, self._ticked = None, None, math.inf, False

    def ended(self, runner: CollectorRunner) -> None:
        """A run ended (done, failed or abandoned)."""
        running = self._running
        if runner in running:
            running.remove(runner)
            if not running and self._armed_at < self._tick_at:
                self._arm()  # armed for a deadline that no run needs now: wait for the tick instead

    def _wake(self) -> None:
        self._timer, self._armed_at = None, math.inf
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        due = now + TIMER_SLACK
        # a run cancelled before its first step never reaches its ``ended`` call: dropped here
        self._running = [r for r in self._running if r.running]
        expired = False
        for runner in [r for r in self._running if r.deadline <= due]:
            runner.expire()
            expired = True
        if due >= self._tick_at:
            if expired:
                # after the abandoned runs have taken their cancellation (one turn of the loop),
                # so they can start again this tick
                self._timer, self._armed_at = loop.call_soon(self._wake), now
                return
            self._ticked = True
            for runner in self.members:
                self._start(runner, now)
            self._next_at += self.interval
            if self._next_at < now:  # the loop was held up: skip the missed slots, keep the cadence
                self._next_at += ((now - self._next_at) // self.interval + 1) * self.interval
            self._tick_at = self._next_at + self.phase
        self._arm()

    def _start(self, runner: CollectorRunner, now: float) -> None:
        if runner.start_run(now + runner.timeout):
            self._running.append(runner)

    def _arm(self) -> None:
        when = self._tick_at
        for runner in self._running:
            if runner.deadline < when:
                when = runner.deadline
        if when == self._armed_at or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_at = self._loop.call_at(when, self._wake), when


class _StreamEmitter(RunEmitter):
    """A streaming collector's emitter: samples publish at once, errors count at once."""

    def __init__(self, runner: CollectorRunner) -> None:
        super().__init__(runner.clock(), runner.static_labels, runner.log_sink, runner.sample_sink, runner.span_sink)
        self._runner = runner

    def error(self, error: BaseException | str) -> None:
        self._runner._report(error)

    def add(self, samples: Sequence[Sample]) -> None:
        self._runner.publish(self._runner.name, list(self._with_static(samples)))
