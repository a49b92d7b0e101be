"""statvfs() on daemon threads, with a deadline and stuck-mount tracking.

A statvfs() on a hung NFS or FUSE mount blocks in the kernel, possibly forever,
and a Python thread cannot be interrupted. So the calls of one collection run
go to a few worker threads while the collector waits at most ``timeout``:

* A call still running at the deadline is *stuck*. Its mount point is reported
  as a device error and is not submitted again until that call returns (as
  node_exporter's ``stuckMounts`` does). The thread it holds no longer counts as
  a worker and a replacement is started, so one hung server cannot starve the
  other mounts; when the stuck call returns, the surplus thread exits.
* A call still queued at the deadline (every worker was busy) is cancelled and
  reported back as not started.
* Threads are daemons: a call hung in the kernel never delays the agent's exit.

Threads alive = ``size`` + the number of stuck mounts, and a mount is never
submitted while stuck, so the thread count stays bounded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

_QUEUED, _RUNNING, _DONE, _CANCELLED, _STUCK = range(5)


class _Call:
    __slots__ = ("batch", "error", "key", "path", "result", "state")

    def __init__(self, key: str, path: str, batch: _Batch) -> None:
        self.key = key
        self.path = path
        self.batch = batch
        self.state = _QUEUED
        self.result: Any = None
        self.error: BaseException | None = None


class _Batch:
    __slots__ = ("done", "remaining")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.done = threading.Event()
        if count == 0:
            self.done.set()


class StatResults:
    """What one :meth:`StatPool.run` found, by key."""

    __slots__ = ("errors", "not_started", "stats", "timed_out")

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}
        self.errors: dict[str, BaseException] = {}
        self.timed_out: list[str] = []
        self.not_started: list[str] = []


class StatPool:
    def __init__(self, statvfs: Callable[[str], Any], size: int) -> None:
        self._statvfs = statvfs
        self._size = size
        self._tasks: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers = 0  # threads serving the queue; stuck ones are not counted
        self._stuck: set[str] = set()
        self._closed = False

    def is_stuck(self, key: str) -> bool:
        return key in self._stuck

    @property
    def stuck(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._stuck)

    @property
    def threads(self) -> int:
        """Threads alive or owed: workers plus the ones held by stuck calls."""
        with self._lock:
            return self._workers + len(self._stuck)

    def run(self, jobs: Iterable[tuple[str, str]], timeout: float) -> StatResults:
        """statvfs each ``(key, path)``; return within about ``timeout`` seconds."""
        jobs = list(jobs)
        batch = _Batch(len(jobs))
        calls = [_Call(key, path, batch) for key, path in jobs]
        with self._lock:
            if self._closed:
                raise RuntimeError("stat pool is closed")
            self._spawn_missing()
        for call in calls:
            self._tasks.put(call)
        batch.done.wait(timeout)
        results = StatResults()
        with self._lock:
            for call in calls:
                if call.state == _DONE:
                    if call.error is None:
                        results.stats[call.key] = call.result
                    else:
                        results.errors[call.key] = call.error
                elif call.state == _RUNNING:
                    call.state = _STUCK
                    self._stuck.add(call.key)
                    self._workers -= 1
                    results.timed_out.append(call.key)
                else:
                    call.state = _CANCELLED
                    results.not_started.append(call.key)
            self._spawn_missing()
        return results

    def close(self) -> None:
        """Stop idle workers; threads held by stuck calls exit when their call returns."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = self._workers
        for _ in range(workers):
            self._tasks.put(None)

    def _spawn_missing(self) -> None:  # holds self._lock
        while self._workers < self._size:
            self._workers += 1
            threading.Thread(target=self._serve, name="hostwatch-statvfs", daemon=True).start()

    def _serve(self) -> None:
        while True:
            call = self._tasks.get()
            if call is None:
                return
            with self._lock:
                if call.state == _CANCELLED:
                    continue
                call.state = _RUNNING
            try:
                call.result = self._statvfs(call.path)
            except BaseException as exc:  # the seam may raise anything; the collector reports it
                call.error = exc
            with self._lock:
                stuck = call.state == _STUCK
                call.state = _DONE
                if stuck:
                    # The collector gave up on this call and started a replacement thread.
                    self._stuck.discard(call.key)
                    if self._closed or self._workers >= self._size:
                        return
                    self._workers += 1
                    continue
                call.batch.remaining -= 1
                if call.batch.remaining == 0:
                    call.batch.done.set()
