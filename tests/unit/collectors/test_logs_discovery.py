"""The file watcher of the logs collector: change events coalesced into a few wake-ups."""

from __future__ import annotations

import asyncio
import os

from collectors.logs.discovery import Patterns, Watcher


async def test_a_file_written_line_by_line_wakes_the_watcher_a_few_times_not_per_write(tmp_path) -> None:
    patterns = Patterns([str(tmp_path / "**" / "*.log")], [], False)
    wakes = 0
    wake = asyncio.Event()
    watcher = Watcher(asyncio.get_running_loop(), wake, patterns.matches)
    assert watcher.sync(patterns.watch_plan()) == []
    (tmp_path / "sub" / "deep").mkdir(parents=True)  # a new directory under a recursive watch
    await asyncio.sleep(0.1)
    watcher.take()
    path = tmp_path / "sub" / "deep" / "app.log"
    with open(path, "a") as f:
        for _ in range(5000):
            f.write("line\n")
            f.flush()
            if wake.is_set():
                wakes += 1
                wake.clear()
                watcher.take()
    await asyncio.sleep(0.1)
    rescan, dirty = watcher.take()
    watcher.stop()
    assert wakes < 100, wakes
    assert rescan or str(path) in dirty
    assert os.path.exists(path)
