"""The disk buffer with the agent as a process: a full ``state_dir`` (a 256 KiB tmpfs) that must not
stall delivery, with and without a restart, a read-only one, and damage (the items lost counted
exactly, a segment replaced by a directory); log batches held in memory (``buffer_write_delay``),
never written when delivered at once, written during an outage, lost by no kill -9.

The source is the ``sequence`` collector (numbers 0, 1, 2, … resumed after a restart from the
last number every output took durably), so a receiver holding every number lost nothing.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from agent.segments import HEADER, scan
from tests.e2e.agentproc import AgentProcess
from tests.e2e.test_delivery_process import (
    acked_next,
    buffered_behind_a_dead_backend,
    numbers_at,
    queued,
    report,
    restart,
    segments,
)

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def small_disk(tmp_path):
    """Mounts a 256 KiB tmpfs at ``<dir>/state/buffer`` for the AgentProcess made in ``<dir>``."""
    mounted: list[Path] = []

    def mount(agent: AgentProcess, *, read_only_with: str = "") -> Path:
        buffers = agent.state_dir / "buffer"
        buffers.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(buffers)]).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root); tests/unit/test_buffer.py covers ENOSPC")
        mounted.append(buffers)
        if read_only_with:  # a buffer left by an earlier run, then the file system went read-only
            (buffers / read_only_with).mkdir(parents=True)
            subprocess.run(["mount", "-o", "remount,ro", str(buffers)], check=True)
        return buffers

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)])


def write_error(agent: AgentProcess) -> str:
    output = agent.detailed()["outputs"]
    return " ".join(str(o["last_error"]) for o in output.values())


def stalled(agent: AgentProcess, seconds: float = 1.5) -> bool:
    """The source made no progress for ``seconds``: its lines wait for room in the buffer."""
    before = acked_next(agent)
    time.sleep(seconds)
    return acked_next(agent) == before


@pytest.mark.peers
def test_metrics_resume_once_the_full_disk_is_delivered(victoria_metrics, tmp_path, small_disk) -> None:
    count = 36_000
    agent = AgentProcess(
        tmp_path,
        f"""
[[collectors.sequence]]
rate = 3000
count = {count}
[[outputs.remote_write]]
url = "{victoria_metrics.remote_write_url}"
flush_interval = "100ms"
retry_initial = "100ms"
retry_max = "300ms"
buffer_write_delay = "0s"
""",
    )
    small_disk(agent)
    dropped = 'hostwatch_output_dropped_items_total{output="remote_write",reason="buffer_write_error"}'
    try:
        victoria_metrics.server.stop()
        agent.start(wait_ready=False)
        agent.wait(lambda: agent.metric(dropped) > 0, 30, "drops on a full disk")
        restart(victoria_metrics)
        agent.wait(lambda: queued(agent) == 0, 30, "what the full disk held delivered")
        time.sleep(1)
        mark, dropped_at_mark = acked_next(agent), agent.metric(dropped)
        assert mark < count - 6000, "the rest of the sequence is written after the space came back"
        agent.wait(lambda: acked_next(agent) == count and queued(agent) == 0, 60, "sequence done")
        counted = agent.metric(dropped)
        assert agent.stop() == 0
    finally:
        agent.close()
    values = numbers_at(victoria_metrics)
    lost, duplicated = report("full disk, then delivered", count, values)
    log = agent.log_tail(200_000)
    print(f"[full disk] {counted:.0f} counted as buffer_write_error; numbers from {mark} on written after recovery")
    assert counted == dropped_at_mark, "no write fails once the delivered segment is given back"
    assert set(range(mark, count)) <= set(values), "everything written after the space returned arrived"
    assert lost == counted > 0, "what the disk refused is counted exactly, the rest delivered"
    assert duplicated == 0
    assert log.count("(buffer_write_error)") == 1, "the drop is logged once, then only counted"


def logs_agent(tmp_path, victoria_logs, count: int, write_delay: str = "0s") -> AgentProcess:
    """``write_delay``: the output's ``buffer_write_delay`` (the tests of a full disk's writes set 0s: every
    batch is written before it is sent)."""
    return AgentProcess(
        tmp_path,
        f"""
[[collectors.sequence]]
signal = "logs"
rate = 3000
count = {count}
[[outputs.loki]]
url = "{victoria_logs.loki_push_url}"
flush_interval = "100ms"
batch_max_items = 1000
retry_initial = "100ms"
retry_max = "300ms"
buffer_write_delay = "{write_delay}"
""",
    )


def disk_full(agent: AgentProcess) -> bool:
    return "No space left" in write_error(agent) and stalled(agent)


@pytest.mark.peers
def test_logs_resume_once_the_full_disk_is_delivered(victoria_logs, tmp_path, small_disk) -> None:
    count = 25_000
    agent = logs_agent(tmp_path, victoria_logs, count)
    small_disk(agent)
    try:
        victoria_logs.server.stop()  # the disk fills while the receiver is down: the source pauses
        agent.start(wait_ready=False)
        agent.wait(lambda: disk_full(agent), 30, "source paused: disk full")
        paused_at = acked_next(agent)
        restart(victoria_logs)
        agent.wait(lambda: acked_next(agent) == count and queued(agent) == 0, 60, "sequence done")
        assert agent.stop() == 0
    finally:
        agent.close()
    lost, duplicated = report("logs on a full disk", count, _numbers(victoria_logs, count))
    print(f"[full disk, logs] paused at {paused_at}")
    assert paused_at < count - 10_000, "most of the sequence is written after the space returned"
    assert lost == 0 and duplicated == 0


@pytest.mark.peers
def test_logs_resume_after_a_restart_on_a_full_disk(victoria_logs, tmp_path, small_disk) -> None:
    count = 25_000
    agent = logs_agent(tmp_path, victoria_logs, count)
    small_disk(agent)
    try:
        victoria_logs.server.stop()
        agent.start(wait_ready=False)
        agent.wait(lambda: disk_full(agent), 30, "source paused: disk full")
        assert agent.stop() == 0  # the buffer fills the disk at the restart
        stopped_at = acked_next(agent)
        restart(victoria_logs)
        agent.start(wait_ready=False)
        agent.wait(lambda: acked_next(agent) == count and queued(agent) == 0, 60, "sequence done after restart")
        assert agent.stop() == 0
    finally:
        agent.close()
    lost, duplicated = report("logs, restart on a full disk", count, _numbers(victoria_logs, count))
    print(f"[full disk, logs, restart] stopped at {stopped_at}")
    assert stopped_at < count - 10_000, "most of the sequence is written after the restart"
    assert lost == 0
    assert duplicated <= 2000, "at most the batches not yet acknowledged at the stop are sent twice"


@pytest.mark.peers
def test_held_log_batches_a_full_disk_refuses_stay_in_memory_until_sent(victoria_logs, tmp_path, small_disk) -> None:
    """buffer_write_delay (1 s): batches not delivered in time are written; when the disk refuses them
    they stay held in memory (bounded, said once) and go out once the backend is back: none dropped."""
    count = 9000
    agent = logs_agent(tmp_path, victoria_logs, count, write_delay="1s")
    small_disk(agent)
    try:
        victoria_logs.server.stop()
        agent.start(wait_ready=False)
        agent.wait(lambda: "No space left" in write_error(agent), 30, "the held batches' write refused")
        restart(victoria_logs)
        agent.wait(lambda: acked_next(agent) == count and queued(agent) == 0, 60, "sequence done")
        dropped = agent.metric('hostwatch_output_dropped_items_total{output="loki",reason="buffer_write_error"}')
        assert agent.stop() == 0
    finally:
        agent.close()
    lost, duplicated = report("held logs on a full disk", count, _numbers(victoria_logs, count))
    assert dropped == 0
    assert lost == 0 and duplicated == 0


@pytest.mark.peers
def test_log_batches_are_written_only_when_not_delivered_within_the_delay(victoria_logs, tmp_path) -> None:
    """buffer_write_delay (1 s by default): batches its sources can send again are held in memory.
    Delivered at once, they never reach the disk; during an outage they are written after the delay
    (the source moves on), and a kill -9 then loses none of them."""
    count = 24000
    agent = logs_agent(tmp_path, victoria_logs, count, write_delay="1s")

    def written() -> int:
        return sum(p.stat().st_size for p in segments(agent, "loki", "logs"))

    try:
        agent.start()
        agent.wait(lambda: acked_next(agent) >= 4000, 30, "4,000 numbers delivered")
        assert written() == 0, "batches delivered within the delay were written to the disk buffer"
        victoria_logs.server.stop()
        outage = acked_next(agent)
        time.sleep(3)
        assert written() > 0, "nothing reached the disk buffer during an outage"
        assert acked_next(agent) - outage >= 3000, "the source did not move on once its lines were written"
        agent.kill()
        restart(victoria_logs)
        agent.start()
        agent.wait(lambda: acked_next(agent) == count and queued(agent) == 0, 60, "sequence delivered")
        assert agent.stop() == 0
    finally:
        agent.close()
    lost, _ = report("held batches, outage and kill -9", count, _numbers(victoria_logs, count))
    assert lost == 0


def _numbers(victoria_logs, expected: int) -> list[int]:
    return [int(r["_msg"].split()[1]) for r in _rows(victoria_logs, expected)]


def _rows(victoria_logs, expected: int) -> list[dict]:
    deadline = time.monotonic() + 20
    while True:
        rows = victoria_logs.query('"seq"', limit=expected * 2)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_a_read_only_buffer_directory_stops_the_start_naming_it(tmp_path, small_disk) -> None:
    agent = AgentProcess(
        tmp_path,
        """
[[collectors.sequence]]
rate = 10
[[outputs.remote_write]]
url = "http://127.0.0.1:9/api/v1/write"
buffer = "disk"
""",
    )
    buffers = small_disk(agent, read_only_with="remote_write/metrics")
    try:
        agent.start(wait_ready=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.proc.wait(15)
        assert agent.proc.poll() == 1, "no output without its disk buffer (its metrics would all be dropped)"
    finally:
        agent.close()
    log = agent.log_tail()
    assert f"disk buffer {buffers / 'remote_write' / 'metrics'} is not writable" in log, log
    assert 'buffer = \\"memory\\"' in log, "the way out is named"
    assert "Traceback" not in log


@pytest.mark.peers
def test_damaged_records_count_their_items_and_a_directory_segment_is_set_aside(victoria_metrics, tmp_path) -> None:
    agent, dead = buffered_behind_a_dead_backend(tmp_path)
    try:
        segs = [p for p in segments(agent, "remote_write") if p.stat().st_size]
        assert len(segs) >= 3
        data = bytearray(segs[0].read_bytes())
        refs, _, _ = scan(bytes(data), 0, 0)
        data[refs[2].offset + HEADER.size + 10] ^= 0xFF  # inside a payload: the header tells the count
        segs[0].write_bytes(bytes(data))
        in_directory = sum(ref.items for ref in scan(segs[1].read_bytes(), 0, 1)[0])
        segs[1].unlink()
        segs[1].mkdir()  # a segment replaced by a directory: its items are unknown, counted as one
        with open(segs[-1], "r+b") as f:  # a torn tail: the last record cut short
            f.truncate(f.seek(0, 2) - 50)
        agent.config.write_text(agent.config.read_text().replace(dead, victoria_metrics.remote_write_url))
        agent.start()
        agent.wait(lambda: queued(agent) == 0, 30, "intact records delivered")
        records = agent.metric('hostwatch_buffer_corrupt_records_total{output="remote_write"}')
        counted = agent.metric('hostwatch_output_dropped_items_total{output="remote_write",reason="corrupt"}')
        detailed = agent.detailed()["outputs"]["remote_write"]["dropped_items"]
        assert agent.stop() == 0
    finally:
        agent.close()
    lost, _ = report("damage", 6000, numbers_at(victoria_metrics))
    print(f"[damage] {counted:.0f} counted as corrupt, {in_directory} of them in the directory segment")
    assert records == 3
    assert counted == lost - in_directory + 1, "the payload and torn-tail losses exactly, the directory as one"
    assert detailed == {"corrupt": counted}
    assert segs[1].with_name(segs[1].name + ".corrupt").is_dir()
    assert "cannot be read" in agent.log_tail(50_000)
