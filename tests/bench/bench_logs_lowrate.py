"""Log tailing CPU at low rates, and bulk shipping, side by side with rsyslog.

Run: ``python -m tests.bench.bench_logs_lowrate`` (needs VictoriaLogs from ``tests/peers/install.sh``
and Debian's ``rsyslog``, which install.sh installs with its service disabled).

Low rates: a writer process appends lines of real Apache access-log text (the corpus file) to
many files at a steady combined rate, spread evenly over the files, in ticks of 20 ms. Two
shippers tail the same files at the same time, each in its own process:

* ``hostwatch run``: the logs collector (inotify) with the default redaction, batching, the
  disk buffer and the Loki output (protobuf + snappy) into a real VictoriaLogs on loopback;
* ``rsyslogd -n``: ``imfile`` (inotify mode) on the same glob, forwarding over TCP (``omfwd``,
  RFC 5424 framing) to a sink in the benchmark process that counts the lines; no filtering and no
  disk queue (rsyslog's defaults), so its figure is a floor the agent is compared with.

After a warm-up, the CPU time of each process (every thread, from ``/proc/PID/task/*/schedstat``)
is taken over a fixed window and divided by the lines written in it. Scenarios: 20 files at
200 lines/s and 2,000 files at 1,000 lines/s. Target: hostwatch <= 1.5x rsyslog's CPU per line.

Bulk: one file of the corpus repeated (``BENCH_BULK_MIB``) read from its beginning, each shipper
alone and pinned to one CPU: hostwatch into VictoriaLogs (redaction and disk buffer on), rsyslog
into the TCP sink, ``BENCH_BULK_RUNS`` times each, alternating (the medians are compared, and each
hostwatch run with the rsyslog run next to it). Wall time until the last line arrived. Target:
hostwatch >= 0.6x rsyslog's lines per second. The receivers' threads in this process are pinned to the
other CPU, where VictoriaLogs runs: left to the scheduler, rsyslog's counting socket ran on rsyslog's own
CPU whenever another process kept the other one busy, and rsyslog's figure then fell by up to half (its
CPU per line up 30-50 %, its involuntary context switches from about 500 to 2,600-19,800 a run); that,
and not the page cache (``BENCH_BULK_COLD=1``: the same spread) or a core sharing the other's compute (a
busy loop there leaves a loop here as fast), was one cause of the 185-371 k lines/s spread earlier rounds
saw. The other, left: rsyslog's own CPU for the same lines moved 0.64-1.39 s between runs seconds apart
with the same context switches and read sizes (4 KiB, strace), in streaks, with steal at 0, while the
fixed Python loop each run prints as "CPU probe" moved less (0.21-0.30 s in those runs) and a
memory-bound loop up to 1.35x: the virtual machine's speed moves with its host, for every shipper;
so compare ratios from the same runs, not across runs.
BENCH_BULK_RSYSLOG_ONLY=1 runs only rsyslog into the socket, ``BENCH_BULK_RUNS`` times in a row, each
printed with its CPU by thread, context switches, the socket thread's CPU, how busy the other CPU was,
steal, the load average and the probe. BENCH_BULK_INTO=sink (or ``victorialogs,sink``; the default
``victorialogs``) ships hostwatch into a Loki push receiver in this process that reads each request's body
and answers 204 at once (``LokiSink``), the part rsyslog's counting socket plays for rsyslog: like with
like on the receiving side, so the figure is the agent's alone (delivered lines from its ``/metrics``, and
checked against the entries the sink decodes after the run).
Beside the bulk figures, from the same runs: the rate with hostwatch's start-up left out (timed
from its ``/metrics`` answering: its Python start-up is 0.3 s on a quiet machine, rsyslog's a few ms), the
agent's CPU per line over that same stretch (the flow's own cost, which other processes on a shared machine
disturb less than its wall time), lines per CPU second of each process (its threads' schedstat; wall time on
the shared machine includes waiting for the CPU), and the CPU time VictoriaLogs spent ingesting (rsyslog's
sink only counts lines), and when the agent's first lines were delivered (its first request answered, seen by
the 50 ms polling of ``/metrics``).

Environment: BENCH_LOWRATE_SECONDS (window, default 30), BENCH_BULK_MIB (default 64),
BENCH_LOWRATE_ONLY=1 skips the bulk part, BENCH_LOWRATE_THREADS=1 also prints hostwatch's CPU per line
by thread, the baseline's too (named by ``py-spy dump`` when py-spy is installed, else by thread id; in the
bulk part each shipment's whole run, the main thread as "event loop"),
BENCH_LOWRATE_FILES=2000 runs only the scenarios with that many files (comma-separated counts).
For finding where the agent's CPU per line goes: BENCH_LOWRATE_PROFILE=DIR records this tree's agent with
``py-spy record`` over the window (non-blocking sampling, by thread, collapsed stacks: DIR/agent-FILES.txt;
BENCH_LOWRATE_PROFILE_RATE samples a second, default 200). py-spy counts a thread waiting for a CPU as busy: on a
shared machine the frames right after a wake-up (the event loop's, a worker's queue) read higher than their CPU.
BENCH_LOWRATE_TIMERS=module:Qualified.name,... runs this tree's agent with thread CPU timers around those functions
over the window (``tests/bench/agent_timers.py``) and prints each one's CPU per line and calls a second, and the
garbage collector's.
BENCH_BASELINE_REV (a git revision, e.g. ``main``) adds a third shipper to the low-rate runs: hostwatch as
that revision has it (``git archive``), tailing the same files in the same window, for a before/after in
the same conditions.
BENCH_BULK_BASELINE=DIR also ships the bulk file with hostwatch from the source tree DIR (an earlier
commit: ``git archive REV | tar -x -C DIR``), alternating with this tree's, for a before/after in the same
run; BENCH_BULK_RUNS=N ships it N times with each tree (the goal's figures: this tree's median run). Both trees
are byte-compiled first (``compileall``), as the packages ship them.
BENCH_BULK_RSYSLOG_INTO=victorialogs also compares like with like (the default, ``socket``, only the run above):
rsyslog, with the same imfile input (the same file, from its beginning), forwards it over TCP into a new
VictoriaLogs of its own (its syslog listener, ``-syslog.listenAddr.tcp``, pinned like hostwatch's), BENCH_BULK_RUNS
times, alternating with hostwatch's runs. Each of these runs, and hostwatch's too, is then timed until
VictoriaLogs' query API counts every line (``* | stats count()``: searchable; polled every 50 ms during rsyslog's
run, after the agent's ``/metrics`` counts every line sent in hostwatch's), and VictoriaLogs' CPU is printed for both;
the counting-socket run and its ratio are printed beside it. VictoriaLogs' syslog listener stores an open
connection's last partial block of lines only on its periodic flush (1-2 s later), while a Loki push's lines are
searchable when the request is answered; so rsyslog's rate is also given up to the last growth of the count
before it reached every line (its last step, a few thousand lines, left out), and the goal is checked on that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import NamedTuple

import cramjam

from tests.bench.bench_agent import byte_compile, export_tree
from tests.bench.bench_logs import (
    AGENT_CPU,
    CORPUS,
    PEER_CPU,
    get,
    metric,
    pinned,
    start_agent,
    start_victoria_logs,
    stop,
)
from tests.support import free_port

WINDOW = float(os.environ.get("BENCH_LOWRATE_SECONDS", "30"))
BULK_MIB = float(os.environ.get("BENCH_BULK_MIB", "64"))
BY_THREAD = os.environ.get("BENCH_LOWRATE_THREADS") == "1"
BULK_RUNS = int(os.environ.get("BENCH_BULK_RUNS", "1"))
BASELINE = os.environ.get("BENCH_BULK_BASELINE", "")  # a source tree (git archive REV | tar -x -C DIR) to ship too
WARMUP = 8.0
SCENARIOS = [(20, 200), (2000, 1000)]  # (files, combined lines per second)
ONLY_FILES = {int(n) for n in os.environ.get("BENCH_LOWRATE_FILES", "").split(",") if n.strip()}
BASELINE_REV = os.environ.get("BENCH_BASELINE_REV", "")
RSYSLOG_INTO = os.environ.get("BENCH_BULK_RSYSLOG_INTO", "socket")  # or "victorialogs": like with like
COLD = os.environ.get("BENCH_BULK_COLD") == "1"  # each run reads the file from the disk, not the page cache
RSYSLOG_ONLY = os.environ.get("BENCH_BULK_RSYSLOG_ONLY") == "1"  # only rsyslog into the socket, BULK_RUNS times
INTO = [n.strip() for n in os.environ.get("BENCH_BULK_INTO", "victorialogs").split(",") if n.strip()]
TARGET_CPU_RATIO, TARGET_BULK_RATIO = 1.5, 0.6
PROFILE = os.environ.get("BENCH_LOWRATE_PROFILE", "")
PROFILE_RATE = os.environ.get("BENCH_LOWRATE_PROFILE_RATE", "200")  # samples a second
TIMERS = os.environ.get("BENCH_LOWRATE_TIMERS", "")
TIMED = [sys.executable, "-c", "import tests.bench.agent_timers as timers; timers.run()"]
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

WRITER = r"""
import os, sys, time
directory, files, rate, corpus = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lines = [l for l in open(corpus, "rb").read().splitlines(keepends=True) if l.strip()][:5000]
fds = [os.open(os.path.join(directory, f"app{i:04d}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
       for i in range(files)]
tick, owed, n, f = 0.02, 0.0, 0, 0
start = next_at = time.monotonic()
while True:
    owed += rate * tick
    while owed >= 1:
        os.write(fds[f], lines[n % len(lines)])
        n += 1; f = (f + 1) % files; owed -= 1
    with open(os.path.join(directory, "..", "written"), "w") as out:  # outside the tailed directory
        out.write(str(n))
    next_at += tick
    time.sleep(max(0.0, next_at - time.monotonic()))
"""

RSYSLOG_CONF = """
global(workDirectory="{work}" maxMessageSize="256k")
module(load="imfile" mode="inotify")
input(type="imfile" File="{glob}" Tag="app" addMetadata="on" {extra})
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" template="RSYSLOG_SyslogProtocol23Format")
"""


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU time of each thread of a process, by thread id (nanoseconds)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found[task.name] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return found


def py_spy() -> str:
    """The py-spy executable ("" when not installed)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return spy if os.path.exists(spy) else ""


def thread_names(pid: int) -> dict[str, str]:
    """Thread id -> Python thread name, from ``py-spy dump`` (empty without py-spy)."""
    spy = py_spy()
    if not spy:
        return {}
    try:
        dump = subprocess.run([spy, "dump", "-p", str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {m.group(1): m.group(2) for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump)}


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process, from the scheduler's statistics (nanoseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
    return total


def pin_thread() -> None:
    """Keep the calling thread on the receiver's CPU (where VictoriaLogs runs), off the shipper's: unpinned, a
    sink's thread ran on the shipper's CPU whenever the other one was busy (another process's load), and the
    shipper's figure then moved by up to 2x (see the bulk part of the module's docstring)."""
    if len(pinned(PEER_CPU)):  # taskset and two CPUs: the same condition as the processes' pinning
        os.sched_setaffinity(0, {int(PEER_CPU)})  # 0: on Linux, the calling thread only


class Receiver:
    """A TCP server on loopback serving each connection on a thread of its own, pinned to the receiver's CPU
    (``pin_thread``); ``cpu``: its threads' CPU seconds, counted as they go (connections stay open)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.cpu = 0.0
        self._thread = threading.local()  # each connection's thread: its CPU time counted so far
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        pin_thread()
        self._thread.started = time.thread_time()
        try:
            with conn:
                self.serve(conn)
        except OSError:
            return

    def _count_cpu(self) -> None:
        now = time.thread_time()
        self.cpu, self._thread.started = self.cpu + now - self._thread.started, now

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.server.close()


class Sink(Receiver):
    """Counts the lines rsyslog forwards (one message per line, LF framed)."""

    def __init__(self) -> None:
        self.lines = 0
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        while data := conn.recv(1 << 20):
            self.lines += data.count(b"\n")
            self._count_cpu()


class LokiSink(Receiver):
    """A Loki push receiver that plays the part rsyslog's counting socket plays: it reads each request's whole
    body (``Content-Length`` framed, keep-alive) and answers 204 at once, on the same kind of thread. The bodies
    are kept and their entries counted after the run (``entries``: snappy, then protobuf), so the counting costs
    the run nothing."""

    ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                data = conn.recv(1 << 20)
                if not data:
                    return
                pending += data
            head, _, pending = pending.partition(b"\r\n\r\n")
            found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            length = int(found.group(1)) if found else 0
            parts, have = [pending[:length]], len(pending[:length])
            pending = pending[length:]
            while have < length:
                data = conn.recv(max(1 << 20, length - have))
                if not data:
                    return
                parts.append(data)
                have += len(data)
            self.bodies.append(b"".join(parts))
            conn.sendall(self.ANSWER)
            self._count_cpu()

    def entries(self) -> int:
        """Log entries in the bodies received (snappy-compressed protobuf push requests)."""
        from tests.unit.outputs.protos import PushRequest  # protobuf: only when the sink is used

        total = 0
        for body in self.bodies:
            request = PushRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
            total += sum(len(stream.entries) for stream in request.streams)
        return total


def start_rsyslog(home: Path, glob: str, port: int, extra: str = "", cpu: list[str] | None = None) -> subprocess.Popen:
    work = home / "rsyslog"
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(work=work, glob=glob, port=port, extra=extra))
    log = open(work / "rsyslogd.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [*(cpu or []), RSYSLOGD, "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")], stdout=log, stderr=log
    )


def written(directory: Path) -> int:
    """Lines the writer has written; read again when caught between its truncation of the count and its
    write (an empty file read as 0 made a window count every line written since the start)."""
    for _ in range(100):
        try:
            text = (directory.parent / "written").read_text()
        except OSError:
            return 0
        if text:
            return int(text)
        time.sleep(0.001)
    return 0


def lowrate(home: Path, files: int, rate: float, baseline: Path | None = None) -> list[tuple[str, bool]]:
    logs = home / "logs"
    logs.mkdir(parents=True)
    for i in range(files):
        (logs / f"app{i:04d}.log").write_bytes(b"")
    vl, vl_url = start_victoria_logs(home)
    sink = Sink()
    procs: list[subprocess.Popen] = [vl]
    try:
        collector = f'[[collectors.logs]]\npaths = ["{logs}/*.log"]\n'
        timings = home / "timers.txt"
        timer_env = {"HOSTWATCH_BENCH_TIMERS": TIMERS, "HOSTWATCH_BENCH_TIMERS_OUT": str(timings)}
        if TIMERS:  # this tree's agent only: the baseline and later scenarios start without them
            os.environ.update(timer_env)
        try:
            agent, url = start_agent(home, collector, vl_url, command=TIMED if TIMERS else None)
        finally:
            for name in timer_env if TIMERS else ():
                os.environ.pop(name, None)
        rsyslog = start_rsyslog(home, f"{logs}/*.log", sink.port)
        procs += [agent, rsyslog]
        old = old_url = None
        if baseline is not None:
            (home / "baseline").mkdir()
            old, old_url = start_agent(home / "baseline", collector, vl_url, tree=baseline)
            procs.append(old)
        time.sleep(3)  # both have found the files before the first line is written
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(logs), str(files), str(rate), str(CORPUS)])
        procs.append(writer)
        time.sleep(WARMUP)
        agents = [p for p in (agent, old) if p is not None]  # by thread: this tree's, and the baseline's
        names = {p.pid: thread_names(p.pid) if BY_THREAD else {} for p in agents}
        threads_before = {p.pid: thread_cpu_ns(p.pid) for p in agents}
        shippers = [p for p in (agent, rsyslog, old) if p is not None]
        before = {p.pid: cpu_ns(p.pid) for p in shippers}
        lines_before = written(logs)
        if TIMERS:
            os.kill(agent.pid, signal.SIGUSR1)  # the timers start from here
        if PROFILE and py_spy():
            Path(PROFILE).mkdir(parents=True, exist_ok=True)
            record = [py_spy(), "record", "--nonblocking", "--threads", "--format", "raw", "-r", PROFILE_RATE]
            out = Path(PROFILE) / f"agent-{files}.txt"
            procs.append(
                subprocess.Popen(
                    [*record, "-d", f"{WINDOW:g}", "-o", str(out), "-p", str(agent.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(WINDOW)
        used = {p.pid: cpu_ns(p.pid) - before[p.pid] for p in shippers}
        lines = written(logs) - lines_before
        if TIMERS:
            timings.unlink(missing_ok=True)
            os.kill(agent.pid, signal.SIGUSR1)  # what they took in the window
            for _ in range(50):
                if timings.exists():
                    break
                time.sleep(0.1)
        by_thread: dict[int, dict[str, int]] = {}
        for p in agents:
            threads = by_thread[p.pid] = {}
            for tid, ns in thread_cpu_ns(p.pid).items():
                name = names[p.pid].get(tid, f"thread {tid}")
                threads[name] = threads.get(name, 0) + ns - threads_before[p.pid].get(tid, 0)
        stop(writer)
        total = written(logs)
        sent = old_sent = 0.0
        for _ in range(100):  # all catch up with the last lines
            sent = metric(get(url + "/metrics"), "hostwatch_output_sent_items_total", signal="logs")
            if old_url is not None:
                old_sent = metric(get(old_url + "/metrics"), "hostwatch_output_sent_items_total", signal="logs")
            if sent >= total and sink.lines >= total and (old_url is None or old_sent >= total):
                break
            time.sleep(0.1)
    finally:
        for proc in reversed(procs):
            stop(proc)
        sink.close()
    agent_us = used[agent.pid] / 1000 / max(lines, 1)
    rsyslog_us = used[rsyslog.pid] / 1000 / max(lines, 1)
    ratio = agent_us / rsyslog_us if rsyslog_us else float("inf")
    name = f"{files:,} files at {rate:,.0f} lines/s"
    print(
        f"{name}: {lines:,} lines in {WINDOW:g} s; CPU per line: hostwatch {agent_us:.1f} us, "
        f"rsyslog {rsyslog_us:.1f} us ({ratio:.2f}x); delivered: hostwatch {sent:,.0f}, rsyslog {sink.lines:,} "
        f"of {total:,}"
    )
    if old is not None:
        old_us = used[old.pid] / 1000 / max(lines, 1)
        print(
            f"  hostwatch at {BASELINE_REV}, same run: {old_us:.1f} us/line ({old_us / rsyslog_us:.2f}x rsyslog); "
            f"this tree / {BASELINE_REV}: {agent_us / old_us:.2f}; delivered {old_sent:,.0f} of {total:,}"
        )
    if TIMERS and timings.exists():
        for line in sorted(timings.read_text().splitlines(), key=lambda text: -int(text.split()[-2])):
            timer, ns, calls = line.rsplit(" ", 2)
            per_line, per_second = int(ns) / 1000 / max(lines, 1), int(calls) / WINDOW
            print(f"  hostwatch timer: {timer} {per_line:.2f} us/line, {per_second:.1f} calls/s")
    if BY_THREAD:
        for p, who in ((agent, "hostwatch"), (old, f"hostwatch at {BASELINE_REV}")):
            if p is not None:
                busy = sorted(by_thread[p.pid].items(), key=lambda item: -item[1])[:6]
                print(f"  {who} by thread: " + ", ".join(f"{n} {ns / 1000 / max(lines, 1):.1f} us" for n, ns in busy))
    return [
        (f"{name}: hostwatch CPU <= {TARGET_CPU_RATIO:g}x rsyslog's (got {ratio:.2f}x)", ratio <= TARGET_CPU_RATIO),
        (f"{name}: every line shipped by both", sent >= total and sink.lines >= total),
    ]


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident set (``VmHWM``), in MiB; 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def searchable(vl_url: str) -> int:
    """How many lines VictoriaLogs' query API counts (what a search would find)."""
    query = urllib.parse.urlencode({"query": "* | stats count() as n"})
    got = get(f"{vl_url}/select/logsql/query?{query}", timeout=30).strip()
    return int(json.loads(got)["n"]) if got else 0


def wait_searchable(vl_url: str, lines: int, deadline: float) -> int:
    """Poll the query API until it counts ``lines`` (or the deadline passes); the last count."""
    counted = searchable(vl_url)
    while counted < lines and time.monotonic() < deadline:
        time.sleep(0.05)
        counted = searchable(vl_url)
    return counted


class Shipment(NamedTuple):
    """One bulk shipment by hostwatch; ordered by its wall time first (the median run)."""

    seconds: float  # from exec until /metrics counts every line sent
    flow_seconds: float  # the same from /metrics answering
    cpu: float  # the agent's CPU seconds
    sent: float  # lines sent
    peer_cpu: float  # VictoriaLogs' CPU seconds
    flow_cpu: float  # the agent's CPU seconds from /metrics answering
    peak_rss: float  # the agent's peak RSS, MiB
    found_seconds: float  # until VictoriaLogs' query API counts every line (0 without until_searchable)
    found: int  # the lines it counts (0 without until_searchable)
    first: float  # until /metrics first counts lines sent: the first request answered, seen within a 50 ms poll
    threads: tuple[tuple[str, float], ...] = ()  # BENCH_LOWRATE_THREADS=1: CPU seconds by thread, busiest first
    probe: float = 0.0  # cpu_probe() just before the run


def ship_with_hostwatch(
    home: Path, path: Path, lines: int, tree: str | None, until_searchable: bool = False, into: str = "victorialogs"
) -> Shipment:
    """hostwatch (of the source tree ``tree``, else this one) ships ``path`` into a new VictoriaLogs, or with
    ``into="sink"`` into a new :class:`LokiSink` (then ``peer_cpu`` is the sink's, ``found`` the entries it got)."""
    home.mkdir(parents=True)
    sink = LokiSink() if into == "sink" else None
    vl, vl_url = (None, sink.url) if sink is not None else start_victoria_logs(home)
    saved = os.environ.get("PYTHONPATH")
    if COLD:
        evict(path)
    probe = cpu_probe()
    try:
        collector = f'[[collectors.logs]]\npaths = ["{path}"]\nstart_at = "beginning"\n'
        if tree:
            os.environ["PYTHONPATH"] = tree  # before the editable install's path: the agent imports that tree
        started = time.monotonic()
        try:
            agent, url = start_agent(home, collector, vl_url)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        try:
            sent, up, cpu_up, first = 0.0, None, 0, 0.0
            while time.monotonic() < started + 600 and sent < lines:
                time.sleep(0.05)
                try:
                    sent = metric(get(url + "/metrics"), "hostwatch_output_sent_items_total", signal="logs")
                    if up is None:  # started: /metrics answers
                        up, cpu_up = time.monotonic(), cpu_ns(agent.pid)
                    if sent and not first:  # the first request answered (seen within 50 ms)
                        first = time.monotonic() - started
                except OSError:
                    pass
            seconds = time.monotonic() - started
            flow = time.monotonic() - (up or started)
            cpu_end = cpu_ns(agent.pid)
            cpu, flow_cpu = cpu_end / 1e9, (cpu_end - cpu_up) / 1e9
            found_seconds, found = 0.0, 0
            if until_searchable and vl is not None:  # as rsyslog's run into VictoriaLogs is timed
                found = wait_searchable(vl_url, lines, started + 600)
                found_seconds = time.monotonic() - started
            peer_cpu = cpu_ns(vl.pid) / 1e9 if vl is not None else 0.0
            peak = peak_rss_mib(agent.pid)
            threads = bulk_threads(agent.pid) if BY_THREAD else ()  # (its py-spy dump after the timings)
        finally:
            stop(agent)
    finally:
        if vl is not None:
            stop(vl)
        if sink is not None:
            sink.close()
    if sink is not None:  # its threads' CPU until the agent stopped; the entries counted now, off the clock
        peer_cpu, found, found_seconds = sink.cpu, sink.entries(), seconds
    return Shipment(seconds, flow, cpu, sent, peer_cpu, flow_cpu, peak, found_seconds, found, first, threads, probe)


def bulk_threads(pid: int) -> tuple[tuple[str, float], ...]:
    """CPU seconds of each thread of the agent over its whole run, busiest first: its main thread (the event
    loop, start-up included) by that name, the others by their Python names (py-spy) or thread ids."""
    used, names = thread_cpu_ns(pid), thread_names(pid)
    named = [
        ("event loop" if tid == str(pid) else names.get(tid, f"thread {tid}"), ns / 1e9) for tid, ns in used.items()
    ]
    return tuple(sorted(named, key=lambda item: -item[1]))


def rsyslog_into_victoria_logs(home: Path, path: Path, lines: int) -> tuple[float, float, int, float, float, int]:
    """rsyslog (the bulk run's imfile input) forwards ``path`` into a new VictoriaLogs's syslog listener:
    (seconds until its query API counts every line; seconds until the count last grew before that, and the lines
    of that last step: VictoriaLogs' syslog listener stores a connection's last partial block of lines only on
    its periodic flush; rsyslog CPU seconds, VictoriaLogs CPU seconds, lines counted)."""
    home.mkdir(parents=True)
    port = free_port()
    vl, vl_url = start_victoria_logs(home, (f"-syslog.listenAddr.tcp=127.0.0.1:{port}",))
    try:
        for _ in range(200):  # the listener is up before rsyslog's first connection (omfwd would drop lines)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        started = time.monotonic()
        rsyslog = start_rsyslog(home, str(path), port, 'freshStartTail="off"', pinned("0"))
        try:
            found, before, grew = 0, 0, started  # the count before the last step, and when it grew to it
            while time.monotonic() < started + 600 and found < lines:
                time.sleep(0.05)
                count = searchable(vl_url)
                if count > found:
                    if count < lines:
                        before, grew = count, time.monotonic()
                    found = count
            seconds = time.monotonic() - started
            before_last = grew - started if before else seconds  # one step only: nothing to leave out
            rsyslog_cpu = cpu_ns(rsyslog.pid) / 1e9
            peer_cpu = cpu_ns(vl.pid) / 1e9
        finally:
            stop(rsyslog)
    finally:
        stop(vl)
    return seconds, before_last, found - before, rsyslog_cpu, peer_cpu, found


PROBE = (
    "import time\nt = time.thread_time()\nx = 0\nfor i in range(3_000_000):\n    x += i\nprint(time.thread_time() - t)"
)


def cpu_probe() -> float:
    """CPU seconds a fixed Python loop takes on the shippers' CPU: how fast that (virtual) CPU runs right now."""
    got = subprocess.run([*pinned(AGENT_CPU), sys.executable, "-c", PROBE], capture_output=True, text=True)
    return float(got.stdout or 0)


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (BENCH_BULK_COLD=1: each run reads it from the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class SocketRun(NamedTuple):
    """One bulk run of rsyslog into the counting socket, with what may explain its spread."""

    seconds: float  # from exec until the socket counted every line
    cpu: float  # rsyslog's CPU seconds (every thread)
    sink_cpu: float  # the socket's reading thread, CPU seconds
    delivered: int  # lines the socket counted
    steal: float  # CPU seconds the hypervisor took from this machine's CPUs during the run (/proc/stat)
    other_busy: float  # CPU seconds the other CPU (not rsyslog's) was busy during the run, anyone's
    load: float  # the one-minute load average when the run started
    probe: float  # cpu_probe() just before the run
    switches: tuple[int, int]  # rsyslog's context switches, voluntary and not (every thread)
    threads: tuple[tuple[str, float], ...]  # rsyslog's CPU seconds by thread name, busiest first


def cpu_ticks() -> dict[str, list[int]]:
    """``/proc/stat``'s per-CPU times (user nice system idle iowait irq softirq steal ...), in clock ticks."""
    found = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu"):
            name, *fields = line.split()
            found[name] = [int(f) for f in fields]
    return found


def switches(pid: int) -> tuple[int, int]:
    """A process's context switches (voluntary, involuntary), summed over its threads."""
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        voluntary += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        involuntary += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
    return voluntary, involuntary


def rsyslog_threads(pid: int) -> tuple[tuple[str, float], ...]:
    """rsyslog's CPU seconds by thread name (``comm``: rsyslogd, in:imfile, rs:main Q:Reg...), busiest first."""
    named: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        named[name] = named.get(name, 0.0) + ns / 1e9
    return tuple(sorted(named.items(), key=lambda item: -item[1]))


def rsyslog_into_socket(home: Path, path: Path, lines: int) -> SocketRun:
    """rsyslog (imfile from the file's beginning, a new work directory: no state) forwards ``path`` into a
    counting :class:`Sink`, pinned like hostwatch; timed until the sink has counted every line."""
    home.mkdir(parents=True)
    sink = Sink()
    other = f"cpu{PEER_CPU}"
    if COLD:
        evict(path)
    probe = cpu_probe()
    ticks_before, load = cpu_ticks(), os.getloadavg()[0]
    started = time.monotonic()
    rsyslog = start_rsyslog(home, str(path), sink.port, 'freshStartTail="off"', pinned(AGENT_CPU))
    try:
        while time.monotonic() < started + 600 and sink.lines < lines:
            time.sleep(0.05)
        seconds = time.monotonic() - started
        ticks_after = cpu_ticks()
        cpu, switched, threads = cpu_ns(rsyslog.pid) / 1e9, switches(rsyslog.pid), rsyslog_threads(rsyslog.pid)
    finally:
        stop(rsyslog)
        sink.close()
    tick = os.sysconf("SC_CLK_TCK")
    steal = (ticks_after["cpu"][7] - ticks_before["cpu"][7]) / tick if len(ticks_after["cpu"]) > 7 else 0.0
    busy = [a - b for a, b in zip(ticks_after.get(other, []), ticks_before.get(other, []), strict=False)]
    other_busy = (sum(busy) - sum(busy[3:5])) / tick if busy else 0.0  # all but idle and iowait
    return SocketRun(seconds, cpu, sink.cpu, sink.lines, steal, other_busy, load, probe, switched, threads)


def socket_line(r: SocketRun, lines: int) -> str:
    return (
        f"  rsyslog into the socket: {lines / r.seconds:,.0f} lines/s ({r.seconds:.2f} s, delivered "
        f"{r.delivered:,}), CPU {r.cpu:.2f} s ({lines / r.cpu:,.0f} lines per CPU second; "
        + ", ".join(f"{n} {sec:.2f}" for n, sec in r.threads[:3])
        + f"), context switches {r.switches[0]:,} voluntary, {r.switches[1]:,} not; the socket's thread "
        f"{r.sink_cpu:.2f} s; the other CPU busy {r.other_busy:.2f} s; steal {r.steal:.2f} s; load {r.load:.2f}; "
        f"CPU probe {r.probe:.3f} s"
    )


def bulk(home: Path) -> list[tuple[str, bool]]:
    path = home / "bulk" / "access.log"
    path.parent.mkdir(parents=True)
    chunk = CORPUS.read_bytes()
    repeats = max(1, int(BULK_MIB * 2**20 / len(chunk)))
    with open(path, "wb") as f:
        for _ in range(repeats):
            f.write(chunk)
    lines = repeats * chunk.count(b"\n")
    # hostwatch: redaction (the default sets) and the disk buffer (the default) on; with BASELINE, the
    # tree before a change runs too, alternating with this one (ABBA...), BULK_RUNS times each, into each
    # receiver of BENCH_BULK_INTO; rsyslog into the counting socket BULK_RUNS times, between them
    if RSYSLOG_ONLY:  # why rsyslog's figure moves: its runs one after the other, each with what may explain it
        alone = [rsyslog_into_socket(home / f"rs{run}", path, lines) for run in range(BULK_RUNS)]
        for r in alone:
            print(socket_line(r, lines))
        rates = sorted(lines / r.seconds for r in alone)
        print(f"rsyslog alone into the socket, {BULK_RUNS} runs: {rates[0]:,.0f} to {rates[-1]:,.0f} lines/s")
        return []
    trees = [("hostwatch", None)] + ([("hostwatch before", BASELINE)] if BASELINE else [])
    for _, tree in trees:  # as the packages ship them: start-up is part of the figure
        byte_compile(Path(tree) if tree else None)
    into_vl = RSYSLOG_INTO == "victorialogs"
    shipped: dict[tuple[str, str], list[Shipment]] = {(name, into): [] for into in INTO for name, _ in trees}
    rsyslog_vl: list[tuple[float, float, int, float, float, int]] = []  # rsyslog into VictoriaLogs
    by_socket: list[SocketRun] = []  # rsyslog into the counting socket
    for run in range(BULK_RUNS):
        forward = run % 2 == 0
        if not forward:
            by_socket.append(rsyslog_into_socket(home / f"rs{run}", path, lines))
            if into_vl:
                rsyslog_vl.append(rsyslog_into_victoria_logs(home / f"rvl{run}", path, lines))
        for into in INTO if forward else INTO[::-1]:
            for name, tree in trees if forward else trees[::-1]:
                done = shipped[(name, into)]
                searchable_too = into_vl and into == "victorialogs"
                where = home / f"hw{len(done)}{name[-1]}{into[0]}"
                done.append(ship_with_hostwatch(where, path, lines, tree, searchable_too, into))
        if forward:
            if into_vl:
                rsyslog_vl.append(rsyslog_into_victoria_logs(home / f"rvl{run}", path, lines))
            by_socket.append(rsyslog_into_socket(home / f"rs{run}", path, lines))
    socket_median = sorted(by_socket)[len(by_socket) // 2]
    rsyslog_seconds, rsyslog_cpu = socket_median.seconds, socket_median.cpu
    rsyslog_rate = lines / rsyslog_seconds
    for r in by_socket:
        print(socket_line(r, lines))
    for (name, into), results in shipped.items():
        for r in results:
            print(
                f"  {name} into {into}: {lines / r.seconds:,.0f} lines/s ({lines / r.seconds / rsyslog_rate:.2f}x "
                f"rsyslog), {lines / r.flow_seconds:,.0f} without start-up, {lines / r.cpu:,.0f} per CPU second "
                f"({r.flow_cpu * 1e6 / lines:.2f} us of CPU per line without start-up); "
                f"{'VictoriaLogs' if into == 'victorialogs' else 'sink'} CPU {r.peer_cpu:.2f} s of {r.seconds:.2f} s; "
                f"peak RSS {r.peak_rss:.1f} MiB; first lines delivered after {r.first:.2f} s; CPU before /metrics "
                f"answered {r.cpu - r.flow_cpu:.2f} s; CPU probe {r.probe:.3f} s"
                + (f"; searchable in VictoriaLogs: {r.found:,} lines after {r.found_seconds:.2f} s" if into_vl else "")
                + (f"; entries the sink got: {r.found:,}" if into == "sink" else "")
            )
            if r.threads:
                print(
                    "    by thread: "
                    + ", ".join(f"{n} {sec:.2f} s ({sec * 1e6 / lines:.2f} us/line)" for n, sec in r.threads[:5])
                )
    checks = []
    if into_vl and "victorialogs" in INTO:
        for seconds, before_last, last, cpu, peer_cpu, found in rsyslog_vl:
            print(
                f"  rsyslog into VictoriaLogs: {lines / seconds:,.0f} lines/s until searchable ({found:,} lines after "
                f"{seconds:.2f} s; all but the last {last:,} after {before_last:.2f} s), {lines / cpu:,.0f} per CPU "
                f"second; VictoriaLogs CPU {peer_cpu:.2f} s"
            )
        # like with like: both timed until VictoriaLogs' query API counts every line; each shipper's median run
        ships = shipped[("hostwatch", "victorialogs")]
        hw = sorted(ships, key=lambda r: r.found_seconds)[len(ships) // 2]
        rs = sorted(rsyslog_vl)[len(rsyslog_vl) // 2]
        rs_stream = sorted(r[1] for r in rsyslog_vl)[len(rsyslog_vl) // 2]
        vl_ratio = (lines / hw.found_seconds) / (lines / rs[0])
        stream_ratio = (lines / hw.found_seconds) / (lines / rs_stream)  # the goal's figure in this comparison
        print(
            f"bulk into VictoriaLogs for both, until searchable (median of {BULK_RUNS}): hostwatch "
            f"{lines / hw.found_seconds:,.0f} lines/s (VictoriaLogs CPU {hw.peer_cpu:.2f} s), "
            f"rsyslog {lines / rs[0]:,.0f} lines/s "
            f"(VictoriaLogs CPU {rs[4]:.2f} s): {vl_ratio:.2f}x"
        )
        print(
            f"bulk into VictoriaLogs, rsyslog's last step left out (the syslog listener stores a connection's last "
            f"partial block on its periodic flush; a Loki push is searchable when answered): rsyslog "
            f"{lines / rs_stream:,.0f} lines/s: {stream_ratio:.2f}x"
        )
        every = all(r.found >= lines for r in ships) and all(r[5] >= lines for r in rsyslog_vl)
        checks = [
            (
                f"bulk into VictoriaLogs for both: hostwatch >= {TARGET_BULK_RATIO:g}x rsyslog's lines/s "
                f"(rsyslog's last step left out; got {stream_ratio:.2f}x)",
                stream_ratio >= TARGET_BULK_RATIO,
            ),
            ("bulk into VictoriaLogs for both: every line searchable, every run", every),
        ]
    rsyslog_delivered = min(r.delivered for r in by_socket)
    for into in INTO:
        ships = shipped[("hostwatch", into)]
        median = sorted(ships)[len(ships) // 2]  # the goal's figures: this tree's median run by wall time
        agent_rate, ratio = lines / median.seconds, (lines / median.seconds) / rsyslog_rate
        paired = ", ".join(f"{r.seconds / s.seconds:.2f}" for s, r in zip(ships, by_socket, strict=True))
        print(
            f"bulk, {repeats * len(chunk) / 2**20:.0f} MiB ({lines:,} lines) from the beginning, one CPU each, "
            f"median of {BULK_RUNS}: hostwatch into {into} {agent_rate:,.0f} lines/s (delivered {median.sent:,.0f}), "
            f"rsyslog into the socket {rsyslog_rate:,.0f} lines/s (delivered {rsyslog_delivered:,}): {ratio:.2f}x; "
            f"run by run (each beside the rsyslog run next to it): {paired}"
        )
        # the same runs without hostwatch's start-up (from /metrics answering), and per CPU second (the machine
        # is shared: wall time includes waiting for the CPU, which CPU time does not)
        flow = (lines / median.flow_seconds) / rsyslog_rate  # rsyslog starts in a few milliseconds
        per_cpu = (lines / median.cpu) / (lines / rsyslog_cpu)
        print(
            f"bulk into {into} without start-up: hostwatch {lines / median.flow_seconds:,.0f} lines/s, rsyslog "
            f"{rsyslog_rate:,.0f} ({flow:.2f}x); per CPU second: hostwatch {lines / median.cpu:,.0f} lines, "
            f"rsyslog {lines / rsyslog_cpu:,.0f} ({per_cpu:.2f}x)"
        )
        what = "bulk" if into == "victorialogs" else f"bulk into {into} (rsyslog into the socket)"
        checks.append(
            (
                f"{what}: hostwatch >= {TARGET_BULK_RATIO:g}x rsyslog's lines/s (got {ratio:.2f}x)",
                ratio >= TARGET_BULK_RATIO,
            )
        )
        if into == "sink":
            got = all(r.found >= lines for r in ships)
            checks.append(("bulk into the sink: every line received, every run", got))
    return checks


def main() -> int:
    if RSYSLOG_INTO not in ("socket", "victorialogs"):
        sys.exit(f"BENCH_BULK_RSYSLOG_INTO={RSYSLOG_INTO!r}: expected socket or victorialogs")
    if not INTO or set(INTO) - {"victorialogs", "sink"}:
        sys.exit(f"BENCH_BULK_INTO={','.join(INTO)!r}: expected victorialogs, sink or both, comma-separated")
    if not os.path.exists(RSYSLOGD):
        sys.exit("rsyslogd is not installed: run tests/peers/install.sh")
    results: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="bench-lowrate-") as tmp:
        baseline = export_tree(BASELINE_REV, Path(tmp) / "baseline-tree") if BASELINE_REV else None
        for i, (files, rate) in enumerate(SCENARIOS):
            if not ONLY_FILES or files in ONLY_FILES:
                results += lowrate(Path(tmp) / f"s{i}", files, rate, baseline)
        if os.environ.get("BENCH_LOWRATE_ONLY") != "1":
            results += bulk(Path(tmp) / "b")
    for name, ok in results:
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
