"""One worker thread per plugin instance for its blocking calls.

Why not the loop's default executor: a call stuck in the kernel (``statvfs``
on a hung NFS mount, a read from a dead FUSE file) would hold a shared pool
thread forever, and enough of them starve every other collector. A private,
daemon thread confines the damage to the instance that hit it, and being a
daemon it cannot keep the process from exiting at shutdown.
"""

from __future__ import annotations

import asyncio
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
        self.busy_since: float | None = None
        """``time.monotonic()`` when the current job started; None when idle."""

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"hw-{self.name}", daemon=True)
                self._thread.start()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ensure_thread()
        self._jobs.put((fn, args, future, loop))
        return await future

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, future, loop = job
            if future.cancelled():
                continue
            self.busy_since = time.monotonic()
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)
            finally:
                self.busy_since = None

    def close(self) -> None:
        """Let the thread end after its current job; never waits for it."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None


def _set_result(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
