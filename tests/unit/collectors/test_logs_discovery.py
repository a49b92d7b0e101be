"""The file watcher of the logs collector: change events coalesced into a few wake-ups."""

from __future__ import annotations

import asyncio
import os
import struct

from collectors.logs import discovery
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


def _age(directory, seconds: float = 60.0) -> None:
    """Set a directory's modification time back, as if nothing had changed there for a while."""
    past = os.stat(directory).st_mtime_ns - int(seconds * 1e9)
    os.utime(directory, ns=(past, past))


def test_a_scan_of_an_unchanged_directory_does_not_list_it_again(tmp_path, monkeypatch) -> None:
    """2,000 files: the periodic scan costs a stat of the directory, not a listing and a stat per file;
    what changed since (a new, a removed file) is found as soon as the directory's time moves."""
    for i in range(50):
        (tmp_path / f"app{i}.log").write_text("x\n")
    (tmp_path / ".hidden.log").write_text("x\n")
    (tmp_path / "skip.log").write_text("x\n")
    patterns = Patterns([str(tmp_path / "*.log")], ["skip.log"], False)
    _age(tmp_path)
    first = patterns.scan()[0]
    assert sorted(first) == sorted(str(tmp_path / f"app{i}.log") for i in range(50))
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": listed.append(path) or real_scandir(path))
    monkeypatch.setattr(os, "stat", _counting(os.stat, stats := []))
    again = patterns.scan()[0]
    assert again.keys() == first.keys()
    assert [(st.st_dev, st.st_ino) for st in again.values()] == [(st.st_dev, st.st_ino) for st in first.values()]
    assert listed == [] and stats == [str(tmp_path)]
    (tmp_path / "app0.log").unlink()
    (tmp_path / "new.log").write_text("y\n")  # the directory's time moves
    found = patterns.scan()[0]
    assert str(tmp_path / "new.log") in found and str(tmp_path / "app0.log") not in found
    assert listed == [str(tmp_path)]


def _counting(real, calls: list):
    def stat(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    return stat


def test_a_directory_changed_just_before_its_listing_is_listed_again(tmp_path) -> None:
    """A change in the same tick of the directory's clock as the listing leaves its time as it was:
    a directory changed within seconds of its listing is not trusted to be unchanged."""
    patterns = Patterns([str(tmp_path / "*.log")], [], False)
    (tmp_path / "a.log").write_text("x\n")
    assert list(patterns.scan()[0]) == [str(tmp_path / "a.log")]
    before = os.stat(tmp_path).st_mtime_ns
    (tmp_path / "b.log").write_text("x\n")
    os.utime(tmp_path, ns=(before, before))  # the new file's change landed in the same tick
    assert sorted(patterns.scan()[0]) == [str(tmp_path / "a.log"), str(tmp_path / "b.log")]


def test_a_symlink_and_polling_are_looked_at_anew_in_an_unchanged_directory(tmp_path) -> None:
    """A symlink's target can be replaced elsewhere, and a network file system's times are the
    server's: neither is taken from the remembered listing."""
    target_dir = tmp_path / "real"
    target_dir.mkdir()
    (target_dir / "one").write_text("x\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "link.log").symlink_to(target_dir / "one")
    (logs / "plain.log").write_text("x\n")
    patterns = Patterns([str(logs / "*.log")], [], False)
    _age(logs)
    first = patterns.scan()[0]
    (target_dir / "one").unlink()
    (target_dir / "one").write_text("another file\n")  # another file behind the same link
    second = patterns.scan()[0]
    assert second[str(logs / "link.log")].st_size != first[str(logs / "link.log")].st_size
    # a file replaced without the directory's time showing it (a clock or granularity elsewhere)
    plain = os.stat(logs).st_mtime_ns
    (logs / "plain.log").unlink()
    (logs / "plain.log").write_text("new\n")
    os.utime(logs, ns=(plain, plain))
    assert patterns.scan()[0][str(logs / "plain.log")].st_size == 2  # the remembered listing
    assert patterns.scan(reuse=False)[0][str(logs / "plain.log")].st_size == 4


def _events(*names: str, mask: int = 0x2, wd: int = 1) -> bytes:
    """inotify events as the kernel hands them over: the header, then the name padded to 16 bytes."""
    out = b""
    for name in names:
        raw = name.encode() + b"\0"
        raw += b"\0" * (-len(raw) % 16)
        out += struct.pack("iIII", wd, mask, 0, len(raw)) + raw
    return out


def test_a_read_of_writes_to_known_files_is_noted_without_a_step_per_event(monkeypatch) -> None:
    """At low rates a read of the inotify descriptor holds another write to each of hundreds of files
    already seen: they are noted with one look at the events' size, not a Python step per event; any
    other event (a new file, a name of another length) takes the step per event, noting the same."""
    loop = asyncio.new_event_loop()
    watcher = Watcher(loop, asyncio.Event(), lambda path: path.endswith(".log"))
    watcher._dir_of[1] = "/logs"
    noted: list[tuple[set[str], bool]] = []
    monkeypatch.setattr(watcher, "_note", lambda dirty, rescan: noted.append((set(dirty), rescan)))
    names = [f"app{i:04d}.log" for i in range(250)] + ["app0001.log.gz"]  # the last one is not tailed
    writes = _events(*names)
    watcher._handle(writes)  # first seen: one step per event, which remembers each write's event
    want = {f"/logs/app{i:04d}.log" for i in range(250)}
    assert noted == [(want, False)]

    sizes = []
    real = discovery._LENGTH

    class Counting:
        def unpack_from(self, data, offset):
            sizes.append(offset)
            return real.unpack_from(data, offset)

    monkeypatch.setattr(discovery, "_LENGTH", Counting())
    noted.clear()
    watcher._handle(writes)
    assert noted == [(want, False)] and len(sizes) == 1, len(sizes)
    for other in (_events("app9999.log"), _events("application-2.log")):  # new, or of another length
        noted.clear()
        watcher._handle(writes + other)
        assert noted == [(want | {"/logs/" + other[16:].rstrip(b"\0").decode()}, False)]
    noted.clear()
    watcher._handle(writes + _events("app0001.log", mask=0x100))  # created: the globs may match anew
    assert noted == [(want, True)]
    loop.close()
