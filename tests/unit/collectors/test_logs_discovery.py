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


async def test_the_watcher_reads_nothing_more_until_the_loop_took_what_it_noted(tmp_path, monkeypatch) -> None:
    """Many files written while the loop paces its rounds: one read and one wake-up, not a read every
    pause; and after take() the next changes are noted and woken for again."""
    patterns = Patterns([str(tmp_path / "*.log")], [], False)
    wake = asyncio.Event()
    watcher = Watcher(asyncio.get_running_loop(), wake, patterns.matches)
    handled: list[int] = []
    handle = watcher._handle
    monkeypatch.setattr(watcher, "_handle", lambda data: (handled.append(len(data)), handle(data)))
    assert watcher.sync(patterns.watch_plan()) == []
    files = [tmp_path / f"app{i}.log" for i in range(20)]
    for path in files:
        path.write_text("")
    await asyncio.sleep(0.1)
    watcher.take()
    handled.clear()
    for tick in range(40):  # 0.6 s of writes to 20 files, the loop never taking
        for path in files[tick % 2 :: 2]:
            with open(path, "a") as f:
                f.write("line\n")
        await asyncio.sleep(0.015)
    assert wake.is_set()
    assert len(handled) <= 2, f"{len(handled)} reads while the loop had not taken the first notice"
    _rescan, dirty = watcher.take()
    wake.clear()
    with open(files[0], "a") as f:
        f.write("after\n")
    for _ in range(100):
        if wake.is_set():
            break
        await asyncio.sleep(0.01)
    rescan2, dirty2 = watcher.take()
    watcher.stop()
    assert wake.is_set() and str(files[0]) in dirty2 | dirty, "changes after take() wake the loop again"
    assert not rescan2
