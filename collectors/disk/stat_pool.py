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
* One worker takes a run's calls in turn: a statvfs answers in microseconds, and waking
  every worker for a few calls cost more than the calls (about 7 µs of CPU per mount
  against 1.5). The others join only when the run is still going after ``HELP_AFTER``,
  so a slow or hung mount delays the rest of the run by that much, no more.
* Each worker waits on a queue of its own. On one shared queue, the worker that took a run
  woke a second idle one on its way out (the queue's lock hands over to the next waiter),
  which found nothing and slept again: a thread wake-up per run for nothing.

Threads alive = ``size`` + the number of stuck mounts, and a mount is never
submitted while stuck, so the thread count stays bounded.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

_QUEUED, _RUNNING, _DONE, _CANCELLED, _STUCK = range(5)
HELP_AFTER = 0.05  # seconds a run's calls are left to one worker before the others join in


_Inbox = queue.SimpleQueue  # one worker's: batches to help with, None to exit


class _Call:
    __slots__ = ("batch", "error", "inbox", "key", "path", "result", "state")

    def __init__(self, key: str, path: str, batch: _Batch) -> None:
        self.key = key
        self.path = path
        self.batch = batch
        self.state = _QUEUED
        self.result: Any = None
        self.error: BaseException | None = None
        self.inbox: _Inbox | None = None  # the worker running it (set with _RUNNING)


class _Batch:
    __slots__ = ("done", "queued", "remaining")

    def __init__(self) -> None:
        self.remaining = 0
        self.queued: deque[_Call] = deque()  # not taken by a worker yet
        self.done = threading.Event()


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
        self._lock = threading.Lock()
        self._inboxes: list[_Inbox] = []  # one per worker; stuck ones are not counted, the first leads
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
            return len(self._inboxes) + len(self._stuck)

    def run(self, jobs: Iterable[tuple[str, str]], timeout: float) -> StatResults:
        """statvfs each ``(key, path)``; return within about ``timeout`` seconds."""
        started = time.monotonic()
        batch = _Batch()
        calls = [_Call(key, path, batch) for key, path in jobs]
        batch.remaining = len(calls)
        batch.queued.extend(calls)
        with self._lock:
            if self._closed:
                raise RuntimeError("stat pool is closed")
            self._spawn_missing()
            inboxes = list(self._inboxes)
        if calls:
            inboxes[0].put(batch)
            if not batch.done.wait(min(timeout, HELP_AFTER)):
                for inbox in inboxes[1:]:
                    inbox.put(batch)
                batch.done.wait(max(0.0, timeout - (time.monotonic() - started)))
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
                    if call.inbox in self._inboxes:  # its thread is held: no longer a worker
                        self._inboxes.remove(call.inbox)
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
            inboxes = list(self._inboxes)
        for inbox in inboxes:
            inbox.put(None)

    def _spawn_missing(self) -> None:  # holds self._lock
        while len(self._inboxes) < self._size:
            inbox: _Inbox = queue.SimpleQueue()
            self._inboxes.append(inbox)
            threading.Thread(target=self._serve, args=(inbox,), name="hostwatch-statvfs", daemon=True).start()

    def _serve(self, inbox: _Inbox) -> None:
        while True:
            batch = inbox.get()
            if batch is None:
                return
            if not self._work_on(batch, inbox):
                return

    def _work_on(self, batch: _Batch, inbox: _Inbox) -> bool:
        """Run the batch's queued calls in turn; False when this thread is to exit."""
        while True:
            with self._lock:
                call = None
                while batch.queued:
                    call = batch.queued.popleft()
                    if call.state == _QUEUED:
                        break
                    call = None
                if call is None:
                    return True
                call.state = _RUNNING
                call.inbox = inbox
            try:
                call.result = self._statvfs(call.path)
            except BaseException as exc:  # the seam may raise anything; the collector reports it
                call.error = exc
            with self._lock:
                stuck = call.state == _STUCK
                call.state = _DONE
                if stuck:
                    # The collector gave up on this call (and the rest of its batch) and started a
                    # replacement thread.
                    self._stuck.discard(call.key)
                    if self._closed or len(self._inboxes) >= self._size:
                        return False
                    self._inboxes.append(inbox)
                    return True
                batch.remaining -= 1
                if batch.remaining == 0:
                    batch.done.set()
