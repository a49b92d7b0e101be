"""Log tailing end to end: a writer at 10,000 lines/s, rotation, restarts and kill -9, into VictoriaLogs.

The agent runs as a real process (``hostwatch run``) tailing what a writer
process writes, and ships through the Loki output (protobuf + snappy) into a
real VictoriaLogs. Every line carries a sequence number; the test reads every
row back and checks that each number arrived, and how many arrived twice.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from collectors.logs.logs import SAVE_LINES
from tests.e2e.agentproc import AgentProcess

pytestmark = [pytest.mark.e2e, pytest.mark.peers]

RATE = 10_000  # lines per second
BATCH_MAX_ITEMS = 500

WRITER = r"""
import os, shutil, sys, time
path, total, rate, every, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
directory, name = os.path.split(path)

def shift():
    # app.log.N -> app.log.N+1 ..., nothing deleted: the test counts every line
    numbered = sorted((int(f.rsplit(".", 1)[1]) for f in os.listdir(directory)
                       if f.startswith(name + ".") and f.rsplit(".", 1)[1].isdigit()), reverse=True)
    for n in numbered:
        os.rename(f"{path}.{n}", f"{path}.{n + 1}")

out = open(path, "a", buffering=1 << 16)
tick, per_tick = 0.01, max(1, rate // 100)
start = time.monotonic()
seq = 0
while seq < total:
    count = min(per_tick, total - seq)
    out.write("".join(f"seq={seq + i:08d} writer line padded to a realistic length ........................\n"
                      for i in range(count)))
    out.flush()
    seq += count
    if every and seq % every == 0 and seq < total:
        if kind == "rename":
            out.close(); shift(); os.rename(path, path + ".1"); out = open(path, "a", buffering=1 << 16)
        elif kind == "copytruncate":
            shift(); shutil.copyfile(path, path + ".1"); os.truncate(path, 0)
        elif kind == "recreate":
            out.close(); os.unlink(path); out = open(path, "a", buffering=1 << 16)
    delay = start + (seq / rate) - time.monotonic()
    if delay > 0:
        time.sleep(delay)
out.close()
"""


def logs_agent(tmp: Path, collector: str, loki_url: str, extra: str = "", wrap: Sequence[str] = ()) -> AgentProcess:
    """``hostwatch run`` with ``collector`` (logs collector tables) and a Loki output with ``extra``
    options; restartable on the same state. ``wrap``: a command the agent runs under (setpriv ...)."""
    body = f"""
[redaction]
sets = []
{collector}
[[outputs.loki]]
url = "{loki_url}"
batch_max_items = {BATCH_MAX_ITEMS}
flush_interval = "200ms"
{extra}
"""
    return AgentProcess(tmp, body, agent_table='interval = "1s"\nlabels = { env = "e2e" }', command_prefix=wrap)


def row_count(vl) -> int:
    rows = vl.query("* | stats count() as n")
    return int(rows[0]["n"]) if rows else 0


def wait_rows(vl, expected: int, timeout: float = 60.0, settle: float = 2.0) -> int:
    """Poll until at least ``expected`` rows are searchable, then a little longer for stragglers."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = row_count(vl)
        if count >= expected:
            break
        time.sleep(0.5)
    time.sleep(settle)
    return row_count(vl)


def sequence_numbers(vl, limit: int) -> list[int]:
    rows = vl.query("* | fields _msg", limit=limit)
    return [int(row["_msg"][4:12]) for row in rows if row.get("_msg", "").startswith("seq=")]


def run_writer(path: Path, total: int, every: int, kind: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(total), str(RATE), str(every), kind])


def collector_table(directory: Path, pattern: str = "app.log*") -> str:
    return f"""
[[collectors.logs]]
paths = ["{directory / pattern}"]
start_at = "beginning"
glob_interval = "1s"
rotate_wait = "2s"
labels = {{ job = "rotation" }}
"""


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.mark.parametrize("kind", ["rename", "copytruncate", "recreate"])
def test_rotation_at_10000_lines_per_second_loses_and_repeats_nothing(tmp_path, logdir, victoria_logs, kind) -> None:
    total = 5 * RATE
    agent = logs_agent(tmp_path, collector_table(logdir), victoria_logs.loki_push_url)
    agent.start()
    try:
        writer = run_writer(logdir / "app.log", total, RATE, kind)  # a rotation every second
        assert writer.wait(timeout=60) == 0
        count = wait_rows(victoria_logs, total)
        seqs = sequence_numbers(victoria_logs, limit=total * 2)
        assert count == len(seqs)
        missing = set(range(total)) - set(seqs)
        assert not missing, f"{len(missing)} lines lost, e.g. {sorted(missing)[:5]}"
        assert len(seqs) == total, f"{len(seqs) - total} duplicates"
        assert agent.stop() == 0
    finally:
        agent.kill()
    print(f"{kind}: {total} lines, rotated every {RATE} lines, all delivered once")


@pytest.mark.parametrize("how", ["restart", "kill -9"])
def test_restarts_while_shipping_lose_nothing(tmp_path, logdir, victoria_logs, how) -> None:
    total = 8 * RATE
    agent = logs_agent(tmp_path, collector_table(logdir), victoria_logs.loki_push_url)
    agent.start()
    interruptions = 0
    try:
        writer = run_writer(logdir / "app.log", total, 2 * RATE, "rename")  # rotated every 2 s
        started = time.monotonic()
        for at in (2.0, 5.0):
            time.sleep(max(0.0, started + at - time.monotonic()))
            if how == "restart":
                assert agent.stop() == 0
            else:
                agent.kill()
            interruptions += 1
            agent.start()
        assert writer.wait(timeout=60) == 0
        count = wait_rows(victoria_logs, total, settle=3.0)
        seqs = sequence_numbers(victoria_logs, limit=total * 2)
        assert count == len(seqs)
        missing = set(range(total)) - set(seqs)
        assert not missing, f"{len(missing)} lines lost, e.g. {sorted(missing)[:5]}\n{agent.stderr()[-3000:]}"
        duplicates = len(seqs) - total
        print(f"{how} x{interruptions}: {total} lines, {duplicates} duplicates")
        if how == "restart":
            assert duplicates == 0
        else:
            # what one kill -9 may send again (README, Log files): the batch being written to the disk
            # buffer (it survives in the page cache, its acknowledgement had not come), the batch sent
            # whose buffer position was not saved yet, and the lines acknowledged since the checkpoint
            # was last written (fewer than SAVE_LINES, or those of the round whose write was running).
            # Two kills are too few to average over: under load one kill alone sent 1,100-1,500 again
            # (the twenty-kill test below holds the average to one batch)
            per_kill = 2 * BATCH_MAX_ITEMS + SAVE_LINES
            assert duplicates <= interruptions * per_kill, f"{duplicates} duplicates"
        assert agent.stop() == 0
    finally:
        agent.kill()


def test_kill_9_twenty_times_while_a_file_grows_at_5000_lines_per_second(tmp_path, logdir, victoria_logs) -> None:
    """The durable-delivery issue's log variant: random SIGKILLs, 0 lost, at most a batch repeated per kill."""
    import os
    import random

    rate, seconds, kills = 5_000, 28, 20
    total = rate * seconds
    seed = int(os.environ.get("HOSTWATCH_TEST_SEED", time.time()))
    rng = random.Random(seed)
    agent = logs_agent(tmp_path, collector_table(logdir), victoria_logs.loki_push_url)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(logdir / "app.log"), str(total), str(rate), str(10 * rate), "rename"]
    )
    try:
        for _ in range(kills):
            agent.start()
            time.sleep(rng.uniform(0.2, 0.9))
            agent.kill()
        agent.start()
        assert writer.wait(timeout=120) == 0
        count = wait_rows(victoria_logs, total, settle=3.0)
        seqs = sequence_numbers(victoria_logs, limit=total * 2)
        assert count == len(seqs)
        lost = len(set(range(total)) - set(seqs))
        duplicated = len(seqs) - len(set(seqs))
        print(f"\n[logs kill -9 x{kills}, seed {seed}] lost {lost} / duplicated {duplicated} / total {total}")
        assert lost == 0, agent.stderr()[-3000:]
        assert duplicated <= kills * BATCH_MAX_ITEMS
        assert agent.stop() == 0
    finally:
        writer.kill()
        agent.kill()
