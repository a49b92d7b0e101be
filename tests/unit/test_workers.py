"""Worker threads hand results back to their loop; a loop closed meanwhile gets none, and no thread dies."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent.workers import SharedWorker, Worker


@pytest.mark.parametrize("kind", ["private", "shared"])
def test_a_call_that_ends_after_its_loop_closed_ends_quietly(kind: str) -> None:
    failures: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)
    gate, returned = threading.Event(), threading.Event()

    def slow() -> int:
        gate.wait(5)
        returned.set()
        return 1

    loop = asyncio.new_event_loop()
    try:
        if kind == "private":
            worker = Worker("test")
            start = worker.run
        else:
            worker = SharedWorker("test").bind("instance")
            start = worker.run

        async def begin() -> asyncio.Future:
            future = start(slow)
            await asyncio.sleep(0.05)  # the shared worker hands its batch over on the next turn
            return future

        loop.run_until_complete(begin())
        threads = [t for t in threading.enumerate() if t.name == "hw-test"]
        assert len(threads) == 1
        loop.close()  # the agent stopped while the call ran
        worker.close()  # the thread ends once the call is over and its result handed back
        gate.set()
        threads[0].join(5)
        assert returned.is_set() and not threads[0].is_alive()
    finally:
        threading.excepthook = previous
    assert failures == []
