"""The collector in-process: acknowledgements move checkpoints, restarts, discovery, backpressure, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import convert
from agent.emitter import RunEmitter
from agent.model import LogRecord
from agent.telemetry import Telemetry
from collectors.logs.checkpoint import Store
from collectors.logs.logs import LogsCollector
from tests.support import collector_context

CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus" / "real"
FAST = {"glob_interval": "200ms", "poll_interval": "50ms", "partial_line_timeout": "300ms", "rotate_wait": "300ms"}


class Sink:
    """The pipeline's side of emit.logs: keeps records, acknowledges at once or when told."""

    def __init__(self, *, hold_acks: bool = False) -> None:
        self.records: list[LogRecord] = []
        self.hold_acks = hold_acks
        self.unacked: list[Callable[[], None]] = []
        self.gate: asyncio.Event | None = None  # when set up, emit.logs waits on it (backpressure)
        self.flushes: list[bool] = []  # each call's flush (the source asks for its batch to go now)

    async def __call__(self, records, on_durable, flush: bool = False) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.records.extend(records)
        self.flushes.append(flush)
        if on_durable is None:
            return
        if self.hold_acks:
            self.unacked.append(on_durable)
        else:
            asyncio.get_running_loop().call_soon(on_durable)

    def ack_all(self) -> None:
        callbacks, self.unacked = self.unacked, []
        for callback in callbacks:
            callback()

    def bodies(self, path: Path | None = None) -> list[str]:
        return [r.body for r in self.records if path is None or dict(r.labels)["filename"] == str(path)]


class Running:
    def __init__(self, collector: LogsCollector, emitter: RunEmitter, task: asyncio.Task) -> None:
        self.collector, self.emitter, self.task = collector, emitter, task

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start(tmp_path: Path, sink: Sink, paths: list[str], **options) -> Running:
    config = convert({"paths": paths, **{**FAST, **options}}, LogsCollector.Config)
    context = collector_context(tmp_path, static_labels=(("env", "test"), ("job", "app")))
    collector = LogsCollector(config, context)
    emitter = RunEmitter(time.time_ns(), context.static_labels, sink)
    task = asyncio.create_task(collector.run(emitter))
    await asyncio.sleep(0.15)  # the first scan
    return Running(collector, emitter, task)


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def append(path: Path, lines: list[str]) -> None:
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


def checkpoint(tmp_path: Path) -> dict[str, int]:
    """The open files' offsets as a restart would load them (the snapshot and its journal)."""
    return {f.path: f.offset for f in Store(tmp_path / "state").load().files if not f.closed}


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


async def test_labels_start_at_end_and_new_files_from_their_beginning(tmp_path, logs) -> None:
    app = logs / "app.log"
    app.write_text("before start\n")
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "*.log")])
    append(app, ["one", "two"])
    (logs / "new.log").write_text("first of new\n")
    await until(lambda: len(sink.records) == 3)
    await run.stop()
    assert sink.bodies(app) == ["one", "two"]
    assert sink.bodies(logs / "new.log") == ["first of new"]
    first = next(r for r in sink.records if r.body == "one")
    assert first.labels == (("env", "test"), ("filename", str(app)), ("job", "app"))
    assert run.emitter.errors == []


async def test_the_round_that_reads_a_backlog_to_its_end_asks_for_the_batch_to_go_now(tmp_path, logs) -> None:
    """A file read from its beginning in rounds that run out of their budget: the round that reaches its end
    hands its lines over with ``flush``, so the outputs send them at once rather than hold the backlog's last
    lines for flush_interval like the start of a low rate's batch; the rounds before it do not, nor do
    lines written later at a low rate."""
    app = logs / "app.log"
    app.write_text(("x" * 99 + "\n") * 30_000)  # 3 MB: the first round's budget, a full round's, and a rest
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "*.log")], start_at="beginning")
    await until(lambda: len(sink.records) == 30_000)
    append(app, ["later"])
    await until(lambda: len(sink.records) == 30_001)
    await run.stop()
    assert len(sink.flushes) >= 4
    assert sink.flushes == [False] * (len(sink.flushes) - 2) + [True, False]


async def test_start_at_beginning(tmp_path, logs) -> None:
    (logs / "app.log").write_text("old 1\nold 2\n")
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "*.log")], start_at="beginning")
    await until(lambda: len(sink.records) == 2)
    await run.stop()
    assert sink.bodies() == ["old 1", "old 2"]


async def test_checkpoints_move_only_when_acknowledged_and_a_restart_resends_the_rest(tmp_path, logs) -> None:
    app = logs / "app.log"
    app.write_text("")
    sink = Sink(hold_acks=True)
    run = await start(tmp_path, sink, [str(app)])
    append(app, ["a1", "a2"])
    await until(lambda: len(sink.records) == 2)
    first_size = app.stat().st_size
    append(app, ["b1"])
    await until(lambda: len(sink.records) == 3)
    await asyncio.sleep(0.1)
    assert checkpoint(tmp_path)[str(app)] == 0, "nothing acknowledged yet"
    sink.unacked.pop(0)()  # the first batch is durable; the second is not
    await until(lambda: checkpoint(tmp_path)[str(app)] == first_size)
    await run.stop()
    assert checkpoint(tmp_path)[str(app)] == first_size

    again = Sink()
    run = await start(tmp_path, again, [str(app)])
    append(app, ["c1"])
    await until(lambda: len(again.records) == 2)
    await run.stop()
    assert again.bodies() == ["b1", "c1"], "exactly the unacknowledged batch is sent again"
    assert checkpoint(tmp_path)[str(app)] == app.stat().st_size


async def test_acknowledgements_after_the_collector_stopped_still_save(tmp_path, logs) -> None:
    app = logs / "app.log"
    app.write_text("")
    sink = Sink(hold_acks=True)
    run = await start(tmp_path, sink, [str(app)])
    append(app, ["x"])
    await until(lambda: len(sink.records) == 1)
    await run.stop()
    assert checkpoint(tmp_path)[str(app)] == 0
    sink.ack_all()  # outputs drain after collectors stop: the late acknowledgement is written soon
    await until(lambda: checkpoint(tmp_path)[str(app)] == app.stat().st_size)


async def test_late_acknowledgements_are_saved_off_the_event_loop(tmp_path, logs, monkeypatch) -> None:
    app = logs / "app.log"
    app.write_text("")
    sink = Sink(hold_acks=True)
    run = await start(tmp_path, sink, [str(app)])
    append(app, ["x"])
    await until(lambda: len(sink.records) == 1)
    await run.stop()
    savers: list[threading.Thread] = []
    save = Store.save
    monkeypatch.setattr(
        Store, "save", lambda self, entries, *a: (savers.append(threading.current_thread()), save(self, entries, *a))
    )
    sink.ack_all()  # fsync on the loop thread would stall every other collector and output
    await until(lambda: checkpoint(tmp_path)[str(app)] == app.stat().st_size)
    assert savers and threading.main_thread() not in savers


async def test_a_corrupt_checkpoint_is_reported_and_never_a_crash(tmp_path, logs) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "checkpoints.json").write_text("{not json")
    (logs / "app.log").write_text("")
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "app.log")])
    append(logs / "app.log", ["still works"])
    await until(lambda: sink.records)
    await run.stop()
    assert len(run.emitter.errors) == 1 and "corrupt" in str(run.emitter.errors[0])
    assert any(p.name.startswith("checkpoints.json.corrupt-") for p in (tmp_path / "state").iterdir())


@pytest.mark.parametrize("damage", ["whole file", "one entry"])
async def test_lines_written_while_down_survive_a_corrupt_checkpoint(tmp_path, logs, damage) -> None:
    app, other = logs / "app.log", logs / "other.log"
    app.write_text("")
    other.write_text("")
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "*.log")])  # start_at = "end"
    append(app, ["seen 1", "seen 2"])
    append(other, ["other seen"])
    await until(lambda: len(sink.records) == 3)
    await until(lambda: checkpoint(tmp_path).get(str(app)) == app.stat().st_size)
    await run.stop()

    append(app, ["while down 1", "while down 2"])  # the agent is down
    append(other, ["other while down"])
    state = tmp_path / "state" / "checkpoints.json"
    if damage == "whole file":
        state.write_bytes(state.read_bytes()[:40])
    else:
        data = json.loads(state.read_text())
        for entry in data["files"]:
            if entry["path"] == str(app):
                entry["offset"] = "not a number"
        state.write_text(json.dumps(data))

    again = Sink()
    run = await start(tmp_path, again, [str(logs / "*.log")])
    await until(lambda: {"while down 1", "while down 2", "other while down"} <= set(again.bodies()))
    await run.stop()
    # duplicates over loss: the damaged file is read again from its start
    assert again.bodies(app) == ["seen 1", "seen 2", "while down 1", "while down 2"]
    if damage == "whole file":
        assert again.bodies(other) == ["other seen", "other while down"]
    else:
        assert again.bodies(other) == ["other while down"], "an intact entry still resumes exactly"
    assert run.collector.stats["checkpoint_corrupt"] == 1
    assert len(run.emitter.errors) == 1 and "beginning" in str(run.emitter.errors[0])


async def test_a_binary_file_and_a_10_mb_line_lose_nothing_and_are_counted(tmp_path, logs) -> None:
    import random

    blob = random.Random(5).randbytes(1 << 20).replace(b"\n", b"\0")  # 1 MiB of binary, no line end
    (logs / "data.log").write_bytes(b"text before\n" + blob + b"\ntext after\n")
    app = logs / "app.log"
    app.write_bytes(b"x" * (10 << 20) + b"\nafter the long line\n")
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "*.log")], start_at="beginning", max_line_bytes="256KiB")
    await until(lambda: len(sink.records) == 5, timeout=20)
    await until(lambda: checkpoint(tmp_path).get(str(app)) == app.stat().st_size)
    await run.stop()
    assert sink.bodies(app) == ["x" * (256 << 10), "after the long line"], "cut, and the next line kept"
    binary = sink.bodies(logs / "data.log")
    assert binary[0] == "text before" and binary[2] == "text after"
    # cut at 256 KiB of input (each invalid byte decodes to one U+FFFD)
    assert 0 < len(binary[1]) <= 256 << 10 and "\ufffd" in binary[1]
    stats = run.collector.stats
    assert stats["lines_truncated"] == 2 and stats["lines_invalid"] == 1
    assert stats["bytes_read"] == app.stat().st_size + (logs / "data.log").stat().st_size


async def test_partial_last_line_is_sent_after_the_timeout(tmp_path, logs) -> None:
    app = logs / "app.log"
    app.write_text("")
    sink = Sink()
    run = await start(tmp_path, sink, [str(app)])
    with open(app, "a") as f:
        f.write("complete\r\nno newline yet")
    await until(lambda: len(sink.records) == 1)
    started = time.monotonic()
    await until(lambda: len(sink.records) == 2)
    assert time.monotonic() - started >= 0.2
    append(app, ["", "next"])  # the late newline ends nothing new
    await until(lambda: len(sink.records) == 3)
    await run.stop()
    assert sink.bodies() == ["complete", "no newline yet", "next"]


@pytest.mark.parametrize("watch", ["inotify", "poll"])
async def test_rotation_by_rename_copytruncate_and_recreate_loses_and_repeats_nothing(tmp_path, logs, watch) -> None:
    import shutil

    app = logs / "app.log"
    app.write_text("")
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "app.log*")], watch=watch)
    expected: list[str] = []
    n = 0

    def burst(count: int = 200) -> None:
        nonlocal n
        lines = [f"line {n + i:06d} " + "p" * 40 for i in range(count)]
        n += count
        append(app, lines)
        expected.extend(lines)

    for round_ in range(3):
        burst()
        await asyncio.sleep(0.05)
        burst()  # partly unread when the rotation happens
        if round_ == 0:
            os.rename(app, logs / "app.log.1")
            app.write_text("")
        elif round_ == 1:
            shutil.copyfile(app, logs / "app.log.2")
            os.truncate(app, 0)
        else:
            os.unlink(app)
            app.write_text("")
        burst()
        await asyncio.sleep(0.1)
    await until(lambda: len(sink.records) >= len(expected))
    await asyncio.sleep(0.5)
    await run.stop()
    got = sink.bodies()
    assert sorted(got) == sorted(expected), f"missing {len(set(expected) - set(got))}, extra {len(got) - len(expected)}"
    stats = run.collector.stats
    assert stats["rotations"]["rename"] == 1 and stats["rotations"]["recreate"] == 1
    assert stats["truncations"] == 1


async def test_hundreds_of_files_appearing_and_vanishing(tmp_path, logs) -> None:
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "**" / "*.log")])
    expected = []
    for i in range(300):
        sub = logs / f"d{i % 7}"
        sub.mkdir(exist_ok=True)
        line = f"file {i} first"
        (sub / f"f{i}.log").write_text(line + "\n")
        expected.append(line)
    await until(lambda: len(sink.records) == 300, timeout=10)
    for i in range(0, 300, 2):
        (logs / f"d{i % 7}" / f"f{i}.log").unlink()
    for i in range(1, 300, 2):
        line = f"file {i} second"
        append(logs / f"d{i % 7}" / f"f{i}.log", [line])
        expected.append(line)
    await until(lambda: len(sink.records) == 450, timeout=10)
    await until(lambda: len(run.collector._ledger.entries) <= 150 + 150, timeout=5)
    await asyncio.sleep(0.6)  # rotate_wait: the deleted ones are let go
    await run.stop()
    assert sorted(sink.bodies()) == sorted(expected)
    open_entries = [e for e in run.collector._ledger.entries.values() if not e.closed]
    assert len(open_entries) == 150


async def test_a_symlinked_log_and_a_directory_created_later(tmp_path, logs) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "real.log"
    target.write_text("")
    (logs / "link.log").symlink_to(target)
    sink = Sink()
    run = await start(
        tmp_path,
        sink,
        [str(logs / "*.log"), str(tmp_path / "later" / "sub" / "*.log")],
        follow_symlinks_to=[str(elsewhere / "*.log")],  # a target outside the paths globs must be allowed
    )
    append(target, ["through the link"])
    await until(lambda: len(sink.records) == 1)
    (tmp_path / "later" / "sub").mkdir(parents=True)
    append(tmp_path / "later" / "sub" / "x.log", ["in a new directory"])
    await until(lambda: len(sink.records) == 2)
    await run.stop()
    assert sink.bodies(logs / "link.log") == ["through the link"]
    assert sink.bodies(tmp_path / "later" / "sub" / "x.log") == ["in a new directory"]


async def test_backpressure_pauses_reading(tmp_path, logs) -> None:
    app = logs / "app.log"
    app.write_text("")
    sink = Sink()
    sink.gate = asyncio.Event()
    run = await start(tmp_path, sink, [str(app)])
    line = "y" * 200
    append(app, [line] * 50_000)  # 10 MB: several rounds of reading
    await asyncio.sleep(0.5)
    read_while_blocked = run.collector.stats["bytes_read"]
    assert 0 < read_while_blocked < app.stat().st_size, "one round read, then it waits for the pipeline"
    sink.gate.set()
    await until(lambda: len(sink.records) == 50_000, timeout=20)
    await run.stop()


async def test_redaction_and_multiline_on_the_laravel_corpus(tmp_path, logs) -> None:
    class Redactor:
        def redact_lines(self, lines: list[str]) -> list[str]:
            return [line.replace("zhebaoting", "[REDACTED:user]") for line in lines]

        def redact(self, text: str) -> str:
            raise AssertionError("the batch form is used when there is one")

        def streams(self):
            redactor = self

            class Streams:  # the StreamRedactor protocol: per stream, or several streams at once
                def __call__(self, lines: list[str], _key: str) -> list[str]:
                    return redactor.redact_lines(lines)

                def many(self, groups: list[list[str]], _keys: list[str]) -> list[str]:
                    return redactor.redact_lines([line for lines in groups for line in lines])

                def many_finding(self, groups: list[list[str]], keys: list[str], _find: str) -> tuple[list[str], None]:
                    return self.many(groups, keys), None

            return Streams()

    source = CORPUS / "laravel_php.log"
    text = source.read_text()
    starts = [i for i, line in enumerate(text.split("\n")) if line.startswith("[20")]
    lines = text.split("\n")
    expected = ["\n".join(lines[a:b]) for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)]
    expected = [r.replace("zhebaoting", "[REDACTED:user]") for r in expected]
    (logs / "laravel.log").write_bytes(source.read_bytes())
    sink = Sink()
    config = {"start_pattern": r"^\[\d{4}-\d{2}-\d{2}", "flush_timeout": "300ms"}
    config = convert({"paths": [str(logs / "*.log")], "start_at": "beginning", "multiline": config, **FAST},
                     LogsCollector.Config)  # fmt: skip
    context = collector_context(tmp_path, redactor=Redactor())
    collector = LogsCollector(config, context)
    task = asyncio.create_task(collector.run(RunEmitter(time.time_ns(), (), sink)))
    await until(lambda: len(sink.records) == len(expected), timeout=10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sink.bodies() == expected
    assert [r.severity for r in sink.records[:2]] == ["ERROR", "ERROR"]


async def test_metrics_reach_telemetry(tmp_path, logs) -> None:
    registry = CollectorRegistry()

    app = logs / "app.log"
    app.write_text("")
    sink = Sink()
    config = convert({"paths": [str(app)], "max_line_bytes": 100, **FAST}, LogsCollector.Config)
    collector = LogsCollector(config, collector_context(tmp_path, telemetry=Telemetry(registry)))
    task = asyncio.create_task(collector.run(RunEmitter(time.time_ns(), (), sink)))
    await asyncio.sleep(0.15)
    with open(app, "ab") as f:
        f.write(b"ok\n" + b"z" * 500 + b"\nbad \xff byte\n")
    await until(lambda: len(sink.records) == 3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    value = registry.get_sample_value
    assert value("hostwatch_log_lines_read_total") == 3
    assert value("hostwatch_log_bytes_read_total") == app.stat().st_size
    assert value("hostwatch_log_lines_truncated_total") == 1
    assert value("hostwatch_log_lines_invalid_encoding_total") == 1
    assert value("hostwatch_log_files", {"collector": "test"}) == 1
    assert [len(b) for b in sink.bodies()] == [2, 100, 10]


def test_several_instances_share_the_declared_log_metrics(tmp_path, logs) -> None:
    registry = CollectorRegistry()
    telemetry = Telemetry(registry)
    config = convert({"paths": [str(logs / "*.log")]}, LogsCollector.Config)
    for instance in ("a", "b"):  # a second declaration of the same names must not be refused
        LogsCollector(config, collector_context(tmp_path / instance, instance=instance, telemetry=telemetry))
    assert registry.get_sample_value("hostwatch_log_files", {"collector": "a"}) == 0
    assert registry.get_sample_value("hostwatch_log_files", {"collector": "b"}) == 0
    assert registry.get_sample_value("hostwatch_log_lines_read_total") == 0


async def test_checkpoint_writes_are_coalesced_at_low_rates(tmp_path, logs, monkeypatch) -> None:
    """A round a few lines long, four times a second, is not a checkpoint write each: at most one a second."""
    import collectors.logs.logs as logs_module

    writes: list[float] = []
    for name in ("save", "append"):  # a snapshot, or the changes appended to the journal
        real = getattr(Store, name)
        monkeypatch.setattr(Store, name, lambda self, *a, real=real: (writes.append(time.monotonic()), real(self, *a)))
    monkeypatch.setattr(logs_module, "SAVE_INTERVAL", 0.5, raising=False)
    files = [logs / f"app{i}.log" for i in range(20)]
    for path in files:
        path.write_text("")
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "*.log")])
    await asyncio.sleep(0.6)
    writes.clear()
    started = time.monotonic()
    for n in range(12):
        append(files[n % len(files)], [f"line {n}"])
        await until(lambda n=n: len(sink.records) == n + 1)
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    await until(lambda: checkpoint(tmp_path)[str(files[11])] == files[11].stat().st_size)
    await run.stop()
    during = [w for w in writes if w < started + elapsed]
    assert len(during) <= elapsed / 0.5 + 1, f"{len(during)} writes in {elapsed:.1f} s for 12 acknowledged rounds"
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(during)), "at most one write per interval"


async def test_writes_while_running_append_the_changes_and_a_crash_resumes_from_them(
    tmp_path, logs, monkeypatch
) -> None:
    """A checkpoint write while running appends the entries that changed to the journal, and the snapshot
    is written once; the snapshot and the journal as a kill -9 leaves them resume exactly past what was
    acknowledged (the shutdown's own snapshot is thrown away here)."""
    import collectors.logs.logs as logs_module

    monkeypatch.setattr(logs_module, "SAVE_INTERVAL", 0.1)
    calls: list[str] = []
    for name in ("save", "append"):
        real = getattr(Store, name)
        monkeypatch.setattr(Store, name, lambda self, *a, name=name, real=real: (calls.append(name), real(self, *a)))
    files = [logs / f"app{i}.log" for i in range(3)]
    for path in files:
        path.write_text("")
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "*.log")])
    for n in range(4):
        for i, path in enumerate(files):
            append(path, [f"before {i}.{n}"])
        await until(lambda n=n: len(sink.records) == 3 * (n + 1))
        await asyncio.sleep(0.15)
    await until(lambda: checkpoint(tmp_path) == {str(p): p.stat().st_size for p in files})
    state = tmp_path / "state"
    crash = {name: (state / name).read_bytes() for name in ("checkpoints.json", "checkpoints.journal")}
    snapshot = json.loads(crash["checkpoints.json"])
    assert {f["offset"] for f in snapshot["files"]} == {0}, "the snapshot is the first write's"
    assert calls[0] == "save" and calls.count("append") >= 3 and calls.count("save") == 1
    for i, path in enumerate(files):
        append(path, [f"after {i}"])
    await until(lambda: len(sink.records) == 15)
    await run.stop()
    for name, data in crash.items():  # as kill -9 would have left them before the lines after
        (state / name).write_bytes(data)

    again = Sink()
    run = await start(tmp_path, again, [str(logs / "*.log")])
    await until(lambda: len(again.records) == 3)
    await asyncio.sleep(0.3)
    await run.stop()
    assert sorted(again.bodies()) == ["after 0", "after 1", "after 2"]
    assert run.collector.stats["checkpoint_torn"] == 0


async def test_a_torn_journal_tail_resumes_from_the_records_before_it_and_is_counted(tmp_path, logs, caplog) -> None:
    app = logs / "app.log"
    app.write_text("")
    sink = Sink()
    run = await start(tmp_path, sink, [str(app)])
    append(app, ["one"])
    await until(lambda: checkpoint(tmp_path).get(str(app)) == app.stat().st_size)
    acknowledged = (tmp_path / "state" / "checkpoints.journal").read_bytes()
    append(app, ["two"])
    await until(lambda: checkpoint(tmp_path).get(str(app)) == app.stat().st_size)
    state = {name: (tmp_path / "state" / name).read_bytes() for name in ("checkpoints.json", "checkpoints.journal")}
    await run.stop()
    append(app, ["three"])
    torn = state["checkpoints.journal"][len(acknowledged) :]
    assert torn, "the second line's write is a record of its own"
    state["checkpoints.journal"] = acknowledged + torn[:-5]  # its append cut short by a crash
    for name, data in state.items():
        (tmp_path / "state" / name).write_bytes(data)

    again = Sink()
    run = await start(tmp_path, again, [str(app)])
    await until(lambda: len(again.records) == 2)
    await asyncio.sleep(0.3)
    await run.stop()
    assert again.bodies() == ["two", "three"], "from the record before the torn one: 'two' again, nothing lost"
    assert run.collector.stats["checkpoint_torn"] == 1
    assert run.emitter.errors == []
    assert any("torn record" in r.getMessage() for r in caplog.records)


async def test_each_round_of_save_lines_is_written_at_once(tmp_path, logs, monkeypatch) -> None:
    """Past ``SAVE_LINES`` acknowledged lines the checkpoint is written at once, every time, whatever the
    interval: what a kill -9 sends again stays about a round (a 0.1 s gap between writes in bulk once let
    it grow past 1,000 lines a kill)."""
    import collectors.logs.logs as logs_module

    writes: list[float] = []
    monkeypatch.setattr(logs_module, "SAVE_INTERVAL", 60.0)  # only the lines can make a write due
    app = logs / "app.log"
    app.write_text("")
    sink = Sink(hold_acks=True)
    run = await start(tmp_path, sink, [str(app)])
    rounds = 10
    for n in range(1, rounds + 1):  # a round each, its acknowledgement held
        append(app, [f"line {i}" for i in range(logs_module.SAVE_LINES)])
        await until(lambda n=n: len(sink.records) == n * logs_module.SAVE_LINES)
    # counted, not written: the write's own time (an fsync) must not be what spaces the writes out
    monkeypatch.setattr(Store, "save", lambda self, entries, *taken: writes.append(time.monotonic()))
    monkeypatch.setattr(Store, "append", lambda self, changes, *taken: writes.append(time.monotonic()))
    callbacks, sink.unacked = sink.unacked, []
    assert len(callbacks) == rounds  # released one at a time
    for callback in callbacks:
        callback()
        await asyncio.sleep(0.03)
    await until(lambda: len(writes) >= len(callbacks) - 2, timeout=2.0)
    await run.stop()
    assert len(writes) >= len(callbacks) - 2, f"{len(writes)} checkpoint writes for {len(callbacks)} rounds"


async def test_a_round_redacts_the_lines_of_all_its_files_in_one_call(tmp_path, logs) -> None:
    calls: list[int] = []

    def redact_lines(lines: list[str]) -> list[str]:
        calls.append(len(lines))
        return [line.replace("secret", "[REDACTED]") for line in lines]

    class Streams:  # counts calls whichever form the tailer uses: per file, or a round's files at once
        def __call__(self, lines: list[str], _key: str) -> list[str]:
            return redact_lines(lines)

        def many(self, groups: list[list[str]], _keys: list[str]) -> list[str]:
            return redact_lines([line for lines in groups for line in lines])

        def many_finding(self, groups: list[list[str]], keys: list[str], _find: str) -> tuple[list[str], None]:
            return self.many(groups, keys), None

    class Redactor:
        def redact_lines(self, lines: list[str]) -> list[str]:
            return redact_lines(lines)

        def streams(self) -> Streams:
            return Streams()

    files = [logs / f"app{i}.log" for i in range(20)]
    for path in files:
        path.write_text("")
    sink = Sink()
    config = convert({"paths": [str(logs / "*.log")], **FAST}, LogsCollector.Config)
    collector = LogsCollector(config, collector_context(tmp_path, redactor=Redactor()))
    task = asyncio.create_task(collector.run(RunEmitter(time.time_ns(), (), sink)))
    await asyncio.sleep(0.3)  # the first scan
    for i, path in enumerate(files):
        append(path, [f"line {i} secret"])
    await until(lambda: len(sink.records) == 20)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sorted(sink.bodies()) == sorted(f"line {i} [REDACTED]" for i in range(20))
    assert sum(calls) == 20 and len(calls) <= 3, f"one call per round, not per file: {calls}"
