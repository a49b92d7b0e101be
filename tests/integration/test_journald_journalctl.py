"""The journald collector with the real journalctl on real journal files.

No journald runs on a build machine, so the journals are written with systemd-journal-remote
(Debian's systemd-journal-remote package, installed by tests/peers/install.sh) from export-format
input; journalctl then reads them with ``--directory`` exactly as it reads a container's or a
copied journal. Every message carries a sequence number, and each test checks which numbers
arrived and how often.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import convert
from agent.emitter import RunEmitter
from agent.model import LogRecord
from agent.telemetry import Telemetry
from collectors.journald.journald import JournaldCollector
from tests.support import collector_context

pytestmark = pytest.mark.peers

JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")
BOOT_ID = "0123456789abcdef0123456789abcdef"
_clock = [int(time.time() * 1e6)]


@pytest.fixture(autouse=True)
def _tools() -> None:
    if shutil.which("journalctl") is None:
        pytest.skip("no journalctl on this machine")
    if not JOURNAL_REMOTE.exists():
        reason = "systemd-journal-remote is not installed: run `sudo tests/peers/install.sh`"
        if os.environ.get("HOSTWATCH_REQUIRE_PEERS", "") not in ("", "0"):
            pytest.fail(reason)
        pytest.skip(reason)


def write_journal(path: Path, numbers: range, *, unit: str = "app.service", pad: int = 0) -> None:
    """Append entries ``seq=N`` to the journal file ``path`` (created when missing)."""
    out = bytearray()
    for n in numbers:
        _clock[0] += 1
        message = f"seq={n:08d}" + " ." * pad
        out += f"__REALTIME_TIMESTAMP={_clock[0]}\n__MONOTONIC_TIMESTAMP={_clock[0] % 10**9}\n".encode()
        out += f"_BOOT_ID={BOOT_ID}\n".encode()
        out += f"_SYSTEMD_UNIT={unit}\nSYSLOG_IDENTIFIER=app\nPRIORITY={n % 8}\n_PID=4242\n".encode()
        if n % 10 == 3:  # a multi-line message now and then: binary in the export format
            body = f"{message}\nTraceback (most recent call last):\n  line {n}\n".encode()
            out += b"MESSAGE\n" + struct.pack("<Q", len(body)) + body + b"\n\n"
        else:
            out += f"MESSAGE={message}\n\n".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(JOURNAL_REMOTE), f"--output={path}", "-"], input=bytes(out), check=True, capture_output=True)


class Sink:
    """The pipeline's side of emit.logs: keeps records, acknowledges at once unless held or gated."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self.hold = False
        self.held: list[Callable[[], None]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, records, on_durable) -> None:
        await self.gate.wait()
        self.records.extend(records)
        if self.hold:
            self.held.append(on_durable)
        else:
            asyncio.get_running_loop().call_soon(on_durable)

    def numbers(self) -> list[int]:
        return [int(r.body[4:12]) for r in self.records]


class Running:
    def __init__(self, tmp_path: Path, sink: Sink, **options) -> None:
        options.setdefault("restart_delay", "100ms")
        config = convert(options, JournaldCollector.Config)
        self.telemetry = Telemetry(CollectorRegistry())
        self.collector = JournaldCollector(config, collector_context(tmp_path, telemetry=self.telemetry))
        self.emitter = RunEmitter(0, log_sink=sink)
        self.task = asyncio.create_task(self.collector.run(self.emitter))

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def metric(self, name: str, **labels: str) -> float:
        return self.telemetry.registry.get_sample_value(name, {"collector": "test", **labels}) or 0.0


async def until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:g}s")
        await asyncio.sleep(0.05)


async def test_follows_new_entries_and_resumes_at_the_cursor_after_a_restart(tmp_path) -> None:
    journal = tmp_path / "journal"
    write_journal(journal / "system.journal", range(0, 100))
    sink = Sink()
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning", fields=["_PID"])
    await until(lambda: len(sink.records) >= 100, what="the first 100 entries")
    write_journal(journal / "system.journal", range(100, 150))  # appended while journalctl follows
    await until(lambda: len(sink.records) >= 150, what="entries appended later")
    await run.stop()
    assert sink.numbers() == list(range(150))
    multi = sink.records[3]
    assert multi.body == "seq=00000003\nTraceback (most recent call last):\n  line 3\n"  # one record
    assert dict(multi.labels) == {"unit": "app.service", "identifier": "app"}
    assert multi.attributes == (("_PID", "4242"),) and multi.severity == "ERR"
    assert run.metric("hostwatch_journal_entries_read_total") == 150

    write_journal(journal / "system.journal", range(150, 200))  # while the agent was down
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning")
    await until(lambda: len(sink.records) >= 200, what="entries written while stopped")
    await asyncio.sleep(0.5)
    await run.stop()
    assert sink.numbers() == list(range(200)), "after the restart: nothing lost, nothing twice"
    assert run.metric("hostwatch_journal_cursor_lost_total") == 0


async def test_unacknowledged_entries_are_sent_again_after_a_restart(tmp_path) -> None:
    journal = tmp_path / "journal"
    write_journal(journal / "system.journal", range(0, 50))
    sink = Sink()
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning")
    await until(lambda: len(sink.records) >= 50)
    sink.hold = True
    write_journal(journal / "system.journal", range(50, 80))
    await until(lambda: len(sink.records) >= 80)
    await run.stop()  # 50..79 were handed on but never durable
    sink.hold = False
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning")
    await until(lambda: len(sink.records) >= 110)
    await asyncio.sleep(0.3)
    await run.stop()
    assert sink.numbers() == list(range(80)) + list(range(50, 80))


async def test_a_vacuumed_cursor_restarts_at_the_oldest_entry_and_is_counted(tmp_path) -> None:
    journal = tmp_path / "journal"
    write_journal(journal / "system@old.journal", range(0, 20))
    sink = Sink()
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning")
    await until(lambda: len(sink.records) >= 20)
    await run.stop()
    # while the agent is stopped: more entries in a new file, then the old file vacuumed away,
    # cursor and all; journalctl --after-cursor would now skip seq=20, the oldest entry never sent
    write_journal(journal / "system.journal", range(20, 40))
    (journal / "system@old.journal").unlink()
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning")
    await until(lambda: len(sink.records) >= 40)
    await asyncio.sleep(0.5)
    await run.stop()
    assert sink.numbers() == list(range(40))
    assert run.metric("hostwatch_journal_cursor_lost_total") == 1
    assert any("no longer in the journal" in str(e) for e in run.emitter.errors)


async def test_a_killed_journalctl_is_restarted_and_resumes_without_loss(tmp_path) -> None:
    journal = tmp_path / "journal"
    write_journal(journal / "system.journal", range(0, 30))
    sink = Sink()
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning")
    await until(lambda: len(sink.records) >= 30)
    for round_ in range(3):
        pid = run.collector.proc.pid
        os.kill(pid, signal.SIGKILL)
        await until(lambda pid=pid: run.collector.proc is not None and run.collector.proc.pid != pid, what="restart")
        first = 30 + round_ * 10
        write_journal(journal / "system.journal", range(first, first + 10))
        await until(lambda first=first: len(sink.records) >= first + 10, what=f"entries after kill {round_ + 1}")
    await asyncio.sleep(0.3)
    await run.stop()
    assert sink.numbers() == list(range(60))
    assert run.metric("hostwatch_journal_restarts_total", reason="exited") == 3
    assert any("journalctl exited" in str(e) for e in run.emitter.errors)


async def test_a_missing_journalctl_is_retried_with_a_growing_delay(tmp_path) -> None:
    sink = Sink()
    run = Running(tmp_path, sink, journalctl=str(tmp_path / "no-such-journalctl"), restart_delay="100ms")
    await asyncio.sleep(1.6)  # 0.1 + 0.2 + 0.4 + 0.8: four or five tries, not sixteen
    tries = run.metric("hostwatch_journal_restarts_total", reason="not_found")
    await run.stop()
    assert 3 <= tries <= 5, tries
    assert "not found" in str(run.emitter.errors[0])


async def test_a_blocked_pipeline_stops_the_reading_and_loses_nothing(tmp_path) -> None:
    journal = tmp_path / "journal"
    total = 30_000
    write_journal(journal / "system.journal", range(total), pad=60)  # about 8 MB of export format
    sink = Sink()
    sink.gate.clear()  # the pipeline blocks: emit.logs waits
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning")
    await until(lambda: run.metric("hostwatch_journal_entries_read_total") > 0)
    await asyncio.sleep(1.0)
    read = run.metric("hostwatch_journal_entries_read_total")
    await asyncio.sleep(0.5)
    # one read is held while journalctl waits on the full pipe; nothing more is read or buffered
    assert run.metric("hostwatch_journal_entries_read_total") == read
    assert read < total / 10, read
    state = Path(f"/proc/{run.collector.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "S"  # journalctl sleeps in its write
    sink.gate.set()
    await until(lambda: len(sink.records) >= total, timeout=60, what="every entry once the gate opens")
    await run.stop()
    assert sink.numbers() == list(range(total))


async def test_unit_priority_and_match_filters_are_journalctls_own(tmp_path) -> None:
    journal = tmp_path / "journal"
    write_journal(journal / "system.journal", range(0, 40), unit="app.service")
    write_journal(journal / "system.journal", range(40, 80), unit="other.service")
    sink = Sink()
    # app.service only, priorities emerg..err (n % 8 <= 3), and (a match) PRIORITY=3 or PRIORITY=0
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning", units=["app.service"],
                  priority="err", matches=["PRIORITY=3", "PRIORITY=0"])  # fmt: skip
    expected = [n for n in range(40) if n % 8 in (0, 3)]
    await until(lambda: len(sink.records) >= len(expected))
    await asyncio.sleep(0.5)
    await run.stop()
    assert sink.numbers() == expected
    assert {r.severity for r in sink.records} == {"EMERG", "ERR"}


async def test_a_journal_briefly_unreadable_keeps_the_cursor(tmp_path) -> None:
    journal = tmp_path / "journal"
    write_journal(journal / "system.journal", range(0, 20))
    sink = Sink()
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning")
    await until(lambda: len(sink.records) >= 20)
    await run.stop()
    journal.rename(tmp_path / "away")  # journalctl fails: that says nothing about the cursor
    run = Running(tmp_path, sink, directory=str(journal), start_at="beginning")
    await until(lambda: run.metric("hostwatch_journal_restarts_total", reason="exited") >= 2, what="failed starts")
    (tmp_path / "away").rename(journal)
    write_journal(journal / "system.journal", range(20, 30))
    await until(lambda: len(sink.records) >= 30, what="entries after the journal came back")
    await asyncio.sleep(0.5)
    await run.stop()
    assert sink.numbers() == list(range(30))
    assert run.metric("hostwatch_journal_cursor_lost_total") == 0
