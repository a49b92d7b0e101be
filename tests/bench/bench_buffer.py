"""The disk buffer's throughput, and the agent's memory over a long outage.

* Write then read back batches of realistic log records (the Apache corpus) through
  ``DiskQueue`` with each fsync policy: MiB/s and records/s.
* A simulated outage: the agent at its embedded default (cpu, memory, disk,
  network) plus a log file written at 5,000 lines/s, with a Loki and a
  remote-write output whose backend is down, for BENCH_OUTAGE_SECONDS (default
  600: ten minutes). RSS is sampled every few seconds; the goal is growth
  <= 10 MiB from the first minute to the end, while the disk buffer fills, hits its
  bound and the tailer is held back.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.buffer import DiskQueue, QueuedBatch
from agent.model import LogRecord, Signal
from tests.support import free_port, hostwatch_command

OUTAGE_SECONDS = float(os.environ.get("BENCH_OUTAGE_SECONDS", "600"))
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real" / "apache_access_semicomplete.log"
BATCH, BATCHES = 2000, 100


def log_batches() -> tuple[list[QueuedBatch], int]:
    lines = CORPUS.read_text().splitlines()
    labels = (("filename", "/var/log/apache2/access.log"), ("job", "bench"))
    batches, raw = [], 0
    for b in range(BATCHES):
        items = [LogRecord(b * BATCH + i, lines[(b * BATCH + i) % len(lines)], labels) for i in range(BATCH)]
        raw += sum(len(r.body) for r in items)
        batches.append(QueuedBatch(Signal.LOGS, items, 0, time.time_ns()))
    return batches, raw


async def throughput(directory: Path, fsync: str, batches: list[QueuedBatch]) -> tuple[float, float]:
    queue = DiskQueue(directory, 1 << 34, signal=Signal.LOGS, fsync=fsync)
    await queue.open()
    started = time.perf_counter()
    for batch in batches:
        await queue.put(batch)
    written = time.perf_counter() - started
    started = time.perf_counter()
    while queue.items:
        await queue.take()
        await queue.ack()
    read = time.perf_counter() - started
    await queue.close()
    return written, read


def disk_throughput() -> None:
    batches, raw = log_batches()
    records = BATCH * BATCHES
    print(f"disk buffer: {BATCHES} batches of {BATCH} Apache log records ({raw / 2**20:.0f} MiB of text)")
    for fsync in ("batch", "interval", "never"):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_BUFFER_DIR")) as tmp:
            written, read = asyncio.run(throughput(Path(tmp), fsync, batches))
        print(
            f"  fsync={fsync:<8}  write {raw / 2**20 / written:7.1f} MiB/s {records / written:>11,.0f} records/s"
            f"   read+ack {raw / 2**20 / read:7.1f} MiB/s {records / read:>11,.0f} records/s"
        )


WRITER = r"""
import sys, time
path, rate, line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = open(path, "a", buffering=1 << 16)
start, n = time.monotonic(), 0
while True:
    due = int((time.monotonic() - start) * rate) - n
    if due > 0:
        out.write("".join(f"{n + i} {line}\n" for i in range(due)))
        out.flush()
        n += due
    time.sleep(0.01)
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def outage() -> None:
    line = CORPUS.read_text().splitlines()[0]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        dead = free_port()
        config = home / "hostwatch.toml"
        config.write_text(f"""
[agent]
state_dir = "{home / "state"}"
[http]
listen = "127.0.0.1:{free_port()}"
[[collectors.cpu]]
[[collectors.memory]]
[[collectors.disk]]
[[collectors.network]]
[[collectors.logs]]
paths = ["{home / "app.log"}"]
[[outputs.loki]]
url = "http://127.0.0.1:{dead}/loki/api/v1/push"
[[outputs.remote_write]]
url = "http://127.0.0.1:{dead}/api/v1/write"
""")
        (home / "app.log").touch()
        agent = subprocess.Popen([*hostwatch_command(), "run", "--config", str(config)], stderr=subprocess.DEVNULL)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(home / "app.log"), "5000", line])
        try:
            samples = []
            started = time.monotonic()
            while time.monotonic() - started < OUTAGE_SECONDS:
                time.sleep(5)
                samples.append((time.monotonic() - started, rss_kib(agent.pid)))
            buffered = sum(f.stat().st_size for f in (home / "state" / "buffer").rglob("*.seg"))
        finally:
            writer.kill()
            agent.terminate()
            agent.wait(30)
    first_minute = [kib for t, kib in samples if t <= 60] or [samples[0][1]]
    baseline, peak = max(first_minute), max(kib for _, kib in samples)
    print(
        f"outage of {OUTAGE_SECONDS:.0f}s at the embedded default + 5,000 lines/s, backends down: "
        f"RSS after the first minute {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
        f"growth {(peak - baseline) / 1024:.1f} MiB (goal <= 10); {buffered / 2**20:.0f} MiB on disk at the end"
    )
    trail = ", ".join(f"{t:.0f}s {kib / 1024:.1f}" for t, kib in samples[:: max(1, len(samples) // 12)])
    print(f"  RSS (MiB) over time: {trail}")


def main() -> int:
    disk_throughput()
    outage()
    return 0


if __name__ == "__main__":
    sys.exit(main())
