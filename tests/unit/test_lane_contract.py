"""A lane needs nothing of its owner but :class:`LaneOwner`; queues keep to :class:`Queue`."""

from __future__ import annotations

import asyncio

from agent.buffer import DiskQueue
from agent.delivery import Lane
from agent.lane_contract import LaneSettings, Shutdown
from agent.model import Sample, Signal
from agent.plugin import ExportResult
from agent.queue import Dropped, MemoryQueue, QueuedBatch
from tests.unit.test_delivery import wait_for

SETTINGS = LaneSettings(
    when_full="drop_oldest",
    max_items=2,
    max_bytes=1 << 20,
    flush_interval=0.01,
    retry_initial=0.01,
    retry_max=0.05,
    retry_max_elapsed=0.0,
)


def samples(start: int, count: int) -> list[Sample]:
    return [Sample("seq", float(i), "gauge", (), 1) for i in range(start, start + count)]


class Owner:
    """Exactly the LaneOwner protocol (slots: anything else a lane reached for would raise)."""

    __slots__ = ("exported", "first_sent", "log", "name", "prepared")

    def __init__(self) -> None:
        self.name = "owner"
        self.log: list[tuple] = []
        self.exported: list[tuple[list[float], object]] = []
        self.prepared: list[list[float]] = []
        self.first_sent = asyncio.Event()

    def clock(self) -> int:
        return 7

    def prepare(self, batch) -> object:
        values = [s.value for s in batch.items]
        self.prepared.append(values)
        return ("encoded", tuple(values))

    async def attempt(self, batch) -> ExportResult:
        self.exported.append(([s.value for s in batch.items], batch.prepared))
        if len(self.exported) == 1:
            await self.first_sent.wait()  # the request in flight, while the next batch is prepared
        return ExportResult.ok()

    def succeeded(self, signal, items) -> None:
        self.log.append(("sent", items))

    def retried(self) -> None:
        self.log.append(("retried",))

    def dropped(self, count, reason, why="") -> None:
        self.log.append(("dropped", count, reason))

    def note_error(self, reason) -> None:
        self.log.append(("error", reason))

    def unexpected(self, during, exc, then="") -> None:
        self.log.append(("unexpected", during, repr(exc)))

    def update_gauges(self) -> None:
        pass


async def test_a_lane_runs_on_its_owner_protocol_and_hands_back_what_the_output_prepared() -> None:
    owner = Owner()
    shutdown = Shutdown()
    lane = Lane(owner, Signal.METRICS, MemoryQueue(1 << 20), SETTINGS, shutdown)
    await lane.start()
    lane.offer(samples(0, 4))  # two batches of two
    await wait_for(lambda: owner.prepared == [[2.0, 3.0]])  # the second, while the first is in flight
    owner.first_sent.set()
    await wait_for(lambda: len(owner.exported) == 2)
    assert owner.exported == [([0.0, 1.0], None), ([2.0, 3.0], ("encoded", (2.0, 3.0)))]
    assert owner.log == [("sent", 2), ("sent", 2)]
    assert lane.fill().items == 0
    shutdown.drain(1.0)
    await lane.drain()
    shutdown.stop()
    await lane.close()


async def test_a_disk_queue_drops_its_oldest_by_count_without_reading_it(tmp_path) -> None:
    queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.METRICS)
    await queue.open()
    for start in (0, 10):
        await queue.put(QueuedBatch(Signal.METRICS, samples(start, 10), 100, 1))
    queue._read_sync = None  # a drop must not read the record back
    dropped = queue.drop_oldest()
    assert isinstance(dropped, Dropped) and dropped.count == 10 and dropped.tokens == []
    assert queue.items == 10
    await queue.close()
    memory = MemoryQueue(1000)
    await memory.put(QueuedBatch(Signal.METRICS, samples(0, 3), 100, 1))
    assert memory.drop_oldest().count == 3  # a memory queue gives the batch itself back
