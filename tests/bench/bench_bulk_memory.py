"""What holds the agent's memory while it ships a big log file from its beginning.

Run: ``python -m tests.bench.bench_bulk_memory`` (needs VictoriaLogs from ``tests/peers/install.sh``).
The agent runs in this process (``agent.cli.main``, the bulk bench's configuration: a logs collector
reading the corpus repeated to ``BENCH_BULK_MIB`` mebibytes, default 64, from its beginning, the default
redaction and disk buffer, a Loki output into a real VictoriaLogs), so a thread can look inside it.
Every 50 ms it samples the resident set (``VmRSS``, ``VmHWM``), glibc's heap (``mallinfo2``: the arenas,
what is in use and what is free in them), the blocks Python has allocated, and from ``/metrics`` the
disk buffer's bytes and the lines sent. Prints a timeline, then the peak and where it stood, and how
many batches were read back from the disk (not served by the queue's in-memory copy).

``bench_logs_lowrate`` prints the peak RSS of the agent as its own process; this one says what it is:
memory freed that glibc keeps (``heap free``), Python objects (``blocks``), or the buffer's backlog.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from agent import buffer
from agent.cli import main as agent_main
from tests.bench.bench_logs import CORPUS, free_port, start_victoria_logs, stop

MIB = float(os.environ.get("BENCH_BULK_MIB", "64"))


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mallinfo() -> tuple[int, int, int]:
    """glibc's (heap arenas, in use, free) in bytes; zeros where glibc's mallinfo2 is missing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return 0, 0, 0
    info = libc.mallinfo2()
    return info.arena, info.uordblks, info.fordblks


def _status_kib(*names: str) -> list[int]:
    found = dict.fromkeys(names, 0)
    for line in Path("/proc/self/status").read_text().splitlines():
        name = line.split(":", 1)[0]
        if name in found:
            found[name] = int(line.split()[1])
    return [found[n] for n in names]


def _metric(body: str, name: str) -> float:
    match = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="bench-bulk-memory-"))
    path = home / "access.log"
    chunk = CORPUS.read_bytes()
    repeats = max(1, int(MIB * 2**20 / len(chunk)))
    with open(path, "wb") as f:  # not chunk * repeats: that would be this process's peak
        for _ in range(repeats):
            f.write(chunk)
    lines = repeats * chunk.count(b"\n")
    vl, vl_url = start_victoria_logs(home)
    port = free_port()
    config = home / "hostwatch.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{home / "state"}"\n[http]\nlisten = "127.0.0.1:{port}"\n'
        f'[[collectors.logs]]\npaths = ["{path}"]\nstart_at = "beginning"\n'
        f'[[outputs.loki]]\nurl = "{vl_url}/insert/loki/api/v1/push"\n'
    )
    read_back = [0, 0]  # batches, items
    read_sync = buffer.DiskQueue._read_sync

    def counted_read(queue: buffer.DiskQueue, ref: Any) -> Any:
        read_back[0] += 1
        read_back[1] += ref.items
        return read_sync(queue, ref)

    buffer.DiskQueue._read_sync = counted_read  # type: ignore[method-assign]
    samples: list[tuple[float, ...]] = []

    def sample() -> None:
        started = time.monotonic()
        while True:
            time.sleep(0.05)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
            sent = _metric(body, "hostwatch_output_sent_items_total")
            rss, hwm = _status_kib("VmRSS", "VmHWM")
            arena, used, free = _mallinfo()
            queued = _metric(body, "hostwatch_buffer_bytes")
            at = time.monotonic() - started
            heap = (arena / 2**20, used / 2**20, free / 2**20)
            samples.append((at, sent, queued / 2**20, rss / 1024, hwm / 1024, *heap, sys.getallocatedblocks() / 1000))
            if sent >= lines:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=sample, daemon=True).start()
    try:
        agent_main(["run", "--config", str(config)])
    finally:
        buffer.DiskQueue._read_sync = read_sync  # type: ignore[method-assign]
        stop(vl)
    print(f"{repeats * len(chunk) / 2**20:.0f} MiB, {lines:,} lines; every 0.25 s:")
    print("     s      sent  queued MiB  RSS MiB  peak MiB  heap MiB  in use  free  Python blocks (k)")
    for row in samples[::5] + samples[-1:]:
        print("  {:4.2f} {:9,.0f} {:11.1f} {:8.1f} {:9.1f} {:9.1f} {:7.1f} {:5.1f} {:10.0f}".format(*row))
    peak = max(samples, key=lambda row: row[3])
    print(
        f"peak RSS {peak[3]:.1f} MiB at {peak[0]:.2f} s: glibc heap {peak[5]:.1f} MiB ({peak[6]:.1f} in use, "
        f"{peak[7]:.1f} free), {peak[8]:.0f} k Python blocks, {peak[2]:.1f} MiB queued on disk; "
        f"at start {samples[0][3]:.1f} MiB RSS, heap {samples[0][5]:.1f} MiB, {samples[0][8]:.0f} k blocks"
    )
    print(f"batches read back from disk: {read_back[0]} ({read_back[1]:,} of {lines:,} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
