"""Worker threads for plugin instances' blocking calls: one per instance, or one shared.

Why not the loop's default executor: a call stuck in the kernel (``statvfs``
on a hung NFS mount, a read from a dead FUSE file) would hold a shared pool
thread forever, and enough of them starve every other collector. A private,
daemon thread confines the damage to the instance that hit it, and being a
daemon it cannot keep the process from exiting at shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class Worker:
    """Runs callables on one daemon thread; ``await worker.run(fn, *args)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple, asyncio.Future, asyncio.AbstractEventLoop] | None
        ]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"hw-{self.name}", daemon=True)
                self._thread.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """``fn(*args)`` on the thread; await the future for its result (a future, not a coroutine:
        one frame less for every call)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ensure_thread()
        self._jobs.put((fn, args, future, loop))
        return future

    def submit(
        self, fn: Callable[..., Any], args: tuple, future: asyncio.Future, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Queue a call whose future the caller already awaits (a :class:`SharedWorker` handing one over)."""
        self._ensure_thread()
        self._jobs.put((fn, args, future, loop))

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, future, loop = job
            if future.cancelled():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine
                _hand_back(loop, _set_exception, future, exc)
            else:
                _hand_back(loop, _set_result, future, result)

    def close(self) -> None:
        """Let the thread end after its current job; never waits for it."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None


def _hand_back(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """``callback(*args)`` on ``loop``; nothing when the loop closed while the call ran (the agent
    stopped, or a reload's test ended): nobody awaits the result, and a daemon thread must not die
    with a traceback on the way out."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise


def _set_result(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


# A batch's results are handed back together (one wake-up of the loop); a call slower than
# this hands back what is done so far first, so its mates do not wait for it.
SLOW_CALL = 0.05


class SharedWorker:
    """One daemon thread for the blocking calls of several instances, in batches.

    The calls the instances make in one loop iteration (their runs start together,
    see :class:`agent.scheduler.TickGroup`) run back to back in one thread hop, and
    their results come back in one wake-up of the loop: one hop per interval for
    the group instead of one per instance. Only for instances that read /proc and
    /sys (the kernel answers at once); anything that may hang on a mount keeps a
    :class:`Worker` of its own.

    Should a call that has run for ``stuck_after`` seconds still be running when
    the next batch is due (a driver stuck in the kernel, or one slower than half
    an interval), its instance is moved to a private :class:`Worker` for good and
    the group gets a fresh thread: the stuck call then delays its group mates
    once (their runs time out that interval, which is reported) and never again.
    """

    def __init__(self, name: str, *, stuck_after: float = 0.5, on_isolate: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.stuck_after = stuck_after
        self.on_isolate = on_isolate
        self._pending: list[tuple[str, Callable[..., Any], tuple, asyncio.Future]] = []
        self._flush_at: asyncio.Handle | None = None
        self._lane: _Lane | None = None
        self._private: dict[str, Worker] = {}
        # bindings per instance name: a reload binds a changed instance's new runner before
        # the old one releases the name
        self._members: dict[str, int] = {}

    def bind(self, owner: str) -> SharedWorkerMember:
        """One instance's view: ``run`` (its ``run_blocking``) and ``close``, as a :class:`Worker` has."""
        self._members[owner] = self._members.get(owner, 0) + 1
        return SharedWorkerMember(self, owner)

    def run(self, owner: str, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        private = self._private.get(owner)
        if private is not None:
            return private.run(fn, *args)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((owner, fn, args, future))
        if self._flush_at is None:
            # after every instance started this iteration has queued its call
            self._flush_at = loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_at = None
        batch, self._pending = self._pending, []
        lane = self._lane
        if lane is not None and lane.busy:
            stuck, since = lane.owner, lane.owner_since
            if stuck is not None and time.monotonic() - since >= self.stuck_after:
                self._isolate(stuck)
                lane.retire()  # it ends when the stuck call returns; its queued calls are cancelled by then
                self._lane = lane = None
        for owner, fn, args, future in [job for job in batch if job[0] in self._private]:
            self._private[owner].submit(fn, args, future, loop)
        batch = [job for job in batch if job[0] not in self._private]
        if not batch:
            return
        if lane is None:
            self._lane = lane = _Lane(f"hw-{self.name}")
        lane.submit(batch, loop)

    def _isolate(self, owner: str) -> None:
        self._private[owner] = Worker(owner)
        if self.on_isolate is not None:
            self.on_isolate(owner)

    def release(self, owner: str) -> None:
        """The instance stopped; the thread ends with the last of them."""
        left = self._members.get(owner, 0) - 1
        if left > 0:
            self._members[owner] = left
            return
        self._members.pop(owner, None)
        private = self._private.pop(owner, None)
        if private is not None:
            private.close()
        if not self._members and self._lane is not None:
            self._lane.retire()
            self._lane = None


class SharedWorkerMember:
    __slots__ = ("owner", "run", "shared")

    def __init__(self, shared: SharedWorker, owner: str) -> None:
        self.shared, self.owner = shared, owner
        # ``run(fn, *args)``: a future, as :meth:`Worker.run` returns
        self.run: Callable[..., asyncio.Future] = functools.partial(shared.run, owner)

    def close(self) -> None:
        self.shared.release(self.owner)


class _Lane:
    """The thread of a :class:`SharedWorker`: runs batches of calls, one after the other."""

    def __init__(self, name: str) -> None:
        self._batches: queue.SimpleQueue[tuple[list, asyncio.AbstractEventLoop] | None] = queue.SimpleQueue()
        # batches handed over and finished: each counter has one writer (the loop, the lane)
        self._submitted = self._finished = 0
        self.owner: str | None = None  # whose call runs right now, since when
        self.owner_since = 0.0
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    @property
    def busy(self) -> bool:
        return self._submitted != self._finished

    def submit(self, batch: list, loop: asyncio.AbstractEventLoop) -> None:
        self._submitted += 1
        self._batches.put((batch, loop))

    def retire(self) -> None:
        self._batches.put(None)

    def _loop(self) -> None:
        while True:
            item = self._batches.get()
            if item is None:
                return
            batch, loop = item
            done: list[tuple[asyncio.Future, bool, Any]] = []
            since = time.monotonic()
            for owner, fn, args, future in batch:
                if future.cancelled():
                    continue
                self.owner_since = time.monotonic()
                self.owner = owner
                try:
                    done.append((future, True, fn(*args)))
                except BaseException as exc:  # handed to the awaiting coroutine
                    done.append((future, False, exc))
                self.owner = None
                if time.monotonic() - since > SLOW_CALL:
                    _hand_back(loop, _settle, done)
                    done, since = [], time.monotonic()
            self._finished += 1  # before the results: a caller woken by them may queue the next batch
            if done:
                _hand_back(loop, _settle, done)


def _settle(done: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for future, ok, value in done:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
