"""One output instance: its lanes (see ``agent.delivery``), its attempts, and its report.

The runner owns the output plugin and one lane per signal it accepts; it makes
the export attempts (with a guard against a hung output), keeps the consecutive
failures and the drop ledger that ``/ready`` and ``/health/detailed`` show, and
sets the buffer gauges. It is each lane's ``LaneOwner`` (the lane reports to it)
and talks to a lane only through the lane's public methods; the pipeline hands
items to the lanes' :class:`~agent.lane_contract.Intake` that ``intake`` gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.buffer import DiskQueue, MemoryQueue
from agent.delivery import ERROR_ATTEMPTS, Lane
from agent.lane_contract import Intake, LaneSettings, Shutdown
from agent.model import Signal
from agent.plugin import Batch as ExportBatch
from agent.plugin import ExportResult, ResultKind
from agent.queue import Queue
from agent.scheduler import iso_time

log = logging.getLogger("hostwatch.delivery")
EXPORT_GUARD_SECONDS = 120.0  # outputs enforce their own timeout; this only catches a hung bug


class OutputRunner:
    """One output instance: its lanes, its attempts, and what /health/detailed says of it."""

    def __init__(
        self,
        spec: Any,
        output: Any,
        *,
        state_dir: Any,
        telemetry: Any,
        clock: Callable[[], int],
        buffer_kind: str,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.common = spec.common
        self.output = output
        self.telemetry = telemetry
        self.clock = clock
        self.buffer_kind = buffer_kind
        self.shutdown = Shutdown()  # shared with the lanes: they read it, the runner moves it on
        self.consecutive_failures = 0
        self.last_success_ns = 0
        self.last_error = ""
        self.sent_items = 0  # for the status page's rates (the counters live in telemetry)
        self.dropped_by_reason: dict[str, int] = {}
        self._logged: set[str] = set()
        self.lanes: dict[Signal, Lane] = {}
        for signal in sorted(output.signals, key=lambda s: s.value):
            queue: Queue
            if buffer_kind == "disk":
                queue = DiskQueue(
                    state_dir / "buffer" / _safe(self.name) / signal.value,
                    self.common.buffer_max_bytes,
                    signal=signal,
                    fsync=self.common.fsync,
                    on_corrupt=self._corrupt,
                    write_delay=self.common.buffer_write_delay,
                    on_write_error=self._write_error,
                )
            else:
                queue = MemoryQueue(self.common.buffer_max_bytes)
            self.lanes[signal] = Lane(self, signal, queue, LaneSettings.of(self.common, signal), self.shutdown)
        self._m_sent = {s: telemetry.output_sent_items.labels(self.name, s.value) for s in self.lanes}
        self._m_duration = telemetry.output_request_duration.labels(self.name)

    @property
    def stopping(self) -> bool:
        return self.shutdown.draining

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.start_output()
        await self.open_lanes()

    async def start_output(self) -> None:
        """The plugin's own start (secret files, TLS): what a reload tries before it touches the old instance."""
        await self.output.start()

    async def open_lanes(self) -> None:
        """Open the buffers (replaying what they hold) and start sending."""
        for lane in self.lanes.values():
            await lane.start()
        self.update_gauges()

    async def close(self, timeout: float) -> None:
        """Drain within ``timeout``, then stop; what is left stays on disk (or is counted)."""
        self.shutdown.drain(timeout)
        await asyncio.gather(*(lane.drain() for lane in self.lanes.values()))
        self.shutdown.stop()
        await asyncio.gather(*(lane.close() for lane in self.lanes.values()))
        await self.close_output()
        self.update_gauges()

    async def discard(self) -> None:
        """Stop at once, without draining: for an instance whose buffers could not all be opened.

        What its lanes gathered meanwhile is counted (log sources read those lines again)."""
        self.shutdown.stop()
        for lane in self.lanes.values():
            with contextlib.suppress(Exception):
                await lane.close()
        await self.close_output()

    async def close_output(self) -> None:
        """The plugin's own close (idempotent): also what undoes :meth:`start_output` alone."""
        with contextlib.suppress(Exception):
            await self.output.close()

    def intake(self, signal: Signal) -> Intake | None:
        """The way in for items of ``signal`` (what the pipeline hands them to); None: not taken."""
        lane = self.lanes.get(signal)
        return lane.batcher if lane is not None else None

    # ------------------------------------------------------------ what a lane needs (LaneOwner)

    def prepare(self, batch: ExportBatch) -> Any:
        return self.output.prepare(batch)

    async def attempt(self, batch: ExportBatch) -> Any:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(self.output.export(batch), EXPORT_GUARD_SECONDS)
        except TimeoutError:
            result = ExportResult.retry(f"export did not finish within {EXPORT_GUARD_SECONDS:g}s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.unexpected("export", exc)
            result = ExportResult.error(f"export raised {type(exc).__name__}: {exc}")
        self._m_duration.observe(time.perf_counter() - started)
        self.telemetry.output_requests.labels(self.name, result.kind.value).inc()
        if result.kind is not ResultKind.OK and result.kind is not ResultKind.ERROR:  # unexpected() noted that
            self.note_error(result.reason or result.kind.value)
        return result

    def succeeded(self, signal: Signal, items: int) -> None:
        self.consecutive_failures = 0
        self.last_success_ns = self.clock()
        self.sent_items += items
        self._m_sent[signal].inc(items)

    def retried(self) -> None:
        self.telemetry.output_retries.labels(self.name).inc()

    def _write_error(self, exc: OSError) -> None:
        self.note_error(f"buffer write failed: {exc.strerror or exc}")

    def note_error(self, reason: str) -> None:
        self.consecutive_failures += 1
        self.last_error = reason
        if reason not in self._logged and len(self._logged) < 100:
            self._logged.add(reason)
            log.warning("output %s: %s", self.name, reason, extra={"output": self.name})

    def unexpected(self, during: str, exc: Exception, then: str = "") -> None:
        """An exception where none was expected (a bug): counted, and logged with its traceback
        once per distinct kind and place; ``then`` says what follows (the caller does it)."""
        self.telemetry.output_errors.labels(self.name).inc()
        self.consecutive_failures += 1
        self.last_error = f"{during} raised {type(exc).__name__}: {exc}"
        key = f"unexpected:{during}:{type(exc).__name__}"
        if key not in self._logged and len(self._logged) < 100:
            self._logged.add(key)
            log.error(
                "output %s: %s raised (a bug); %s",
                self.name,
                during,
                then or f"the batch stays queued and is tried again, {ERROR_ATTEMPTS} times at most",
                exc_info=exc,
                extra={"output": self.name},
            )

    def dropped(self, count: int, reason: str, why: str = "") -> None:
        if count <= 0:
            return
        self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + count
        self.telemetry.output_dropped_items.labels(self.name, reason).inc(count)
        key = f"drop:{reason}:{why}"
        if key not in self._logged and len(self._logged) < 100:
            self._logged.add(key)
            log.error(
                "output %s: dropped %d item(s) (%s): %s; further drops of this kind are only counted",
                self.name,
                count,
                reason,
                why,
                extra={"output": self.name},
            )

    def _corrupt(self, records: int, items: int) -> None:
        self.telemetry.buffer_corrupt_records.labels(self.name).inc(records)
        self.dropped(items, "corrupt", "damaged records in the disk buffer (torn write or corruption)")

    def update_gauges(self) -> None:
        fills = [lane.fill() for lane in self.lanes.values()]
        oldest = [f.oldest_ns for f in fills if f.oldest_ns is not None]
        self.telemetry.buffer_items.labels(self.name).set(sum(f.items for f in fills))
        self.telemetry.buffer_max_bytes.labels(self.name).set(sum(f.capacity for f in fills))
        self.telemetry.buffer_bytes.labels(self.name).set(sum(f.nbytes for f in fills))
        age = (self.clock() - min(oldest)) / 1e9 if oldest else 0.0
        self.telemetry.buffer_oldest_age.labels(self.name).set(max(0.0, age))

    # ------------------------------------------------------------ report

    def problems(self) -> list[str]:
        found = []
        if self.consecutive_failures >= self.common.ready_failure_threshold:
            found.append(f"output {self.name} failing ({self.consecutive_failures} attempts): {self.last_error}")
        for signal, lane in self.lanes.items():
            ratio = lane.fill().ratio
            if ratio > self.common.ready_buffer_ratio:
                found.append(f"output {self.name} {signal.value} buffer {ratio:.0%} full")
        return found

    def totals(self) -> tuple[int, int, int, float]:
        """Sent and dropped items so far, items held now, and the fullest lane's fill (status page)."""
        fills = [lane.fill() for lane in self.lanes.values()]
        held = sum(f.items for f in fills)
        return self.sent_items, sum(self.dropped_by_reason.values()), held, max((f.ratio for f in fills), default=0.0)

    def status(self) -> dict[str, Any]:
        fills = [lane.fill() for lane in self.lanes.values()]
        return {
            "type": self.spec.type,
            "signals": [s.value for s in self.lanes],
            "buffer": self.buffer_kind,
            "last_success": iso_time(self.last_success_ns),
            "last_error": self.last_error or None,
            "consecutive_failures": self.consecutive_failures,
            "sent_items": self.sent_items,
            "queued_items": sum(f.items for f in fills),
            "queued_bytes": sum(f.nbytes for f in fills),
            "buffer_max_bytes": self.common.buffer_max_bytes,
            "dropped_items": dict(self.dropped_by_reason),
            "corrupt_records": sum(f.corrupt_records for f in fills),
        }


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
