"""The agent's start-up, pinned to one CPU: from exec until ``/metrics`` answers and until the first line is read.

Run: ``python -m tests.bench.bench_startup`` (needs VictoriaLogs from ``tests/peers/install.sh``).

The configuration is the bulk log bench's (``bench_logs_lowrate``): ``hostwatch run`` pinned to one
CPU, with a logs collector reading a file from its beginning and a Loki output into a real
VictoriaLogs (pinned to the other CPU), the default redaction and disk buffer. The file holds 100
lines, so that the first round's reading is a small part of the time to the first line. The bench
polls ``/metrics`` every few milliseconds from the moment it spawns the agent: the first answer is
"``/metrics`` answering"; the first page with ``hostwatch_log_lines_read_total`` above zero is
"first line read". Beside it, the resident memory (``VmRSS``, and the peak ``VmHWM``) of
``hostwatch run`` on the embedded default, two seconds after ``/ready``. And what importing aiohttp
adds, in time and RSS, to a fresh interpreter that has imported asyncio, ssl and uvloop, and what
finding the plugins costs there, by ``importlib.metadata`` and by :mod:`agent.registry`. And, for
each tree, the CPU time of what comes before the first line is shipped besides the imports: building
the default redaction, redacting the first 1,000 lines, and the Loki encoder's first-export tables.

The trees are byte-compiled first (``compileall``, as the packages ship them): a tree run from
its sources with ``PYTHONDONTWRITEBYTECODE`` set compiles every module of the project at each
start, which the installed agent never does.

Environment: BENCH_STARTUP_RUNS (default 5; the figures are the median and the range),
BENCH_STARTUP_BASELINE=DIR also starts the agent of the source tree DIR (an earlier commit: ``git
archive REV | tar -x -C DIR``), alternating with this tree's, for a before/after in the same
conditions. Target: <= 0.25 s to ``/metrics`` and to the first line.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.bench import bench_agent
from tests.bench.bench_logs import CORPUS, metric, pinned, start_agent, start_victoria_logs, stop

RUNS = int(os.environ.get("BENCH_STARTUP_RUNS", "5"))
BASELINE = os.environ.get("BENCH_STARTUP_BASELINE", "")
TARGET_SECONDS = 0.25
POLL = 0.003
LINES = 100


def poll_metrics(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def start_once(home: Path, log: Path, vl_url: str, tree: Path | None) -> tuple[float, float, float]:
    """Seconds from spawning ``hostwatch run`` until /metrics answers and until the first line is read,
    and its VmRSS (MiB) half a second after that (the first lines sent)."""
    home.mkdir(parents=True)
    collector = f'[[collectors.logs]]\npaths = ["{log}"]\nstart_at = "beginning"\n'
    started = time.monotonic()
    agent, url = start_agent(home, collector, vl_url, tree=tree)
    answering = first_line = None
    rss = 0.0
    try:
        while time.monotonic() < started + 30:
            page = poll_metrics(url)
            now = time.monotonic()
            if page is not None:
                answering = answering or now
                if metric(page, "hostwatch_log_lines_read_total") > 0:
                    first_line = now
                    time.sleep(0.5)
                    rss = vm(agent.pid, "VmRSS")
                    break
            time.sleep(POLL)
    finally:
        stop(agent)
    if answering is None or first_line is None:
        sys.exit(f"bench_startup: the agent did not start; see {home / 'agent.log'}")
    return answering - started, first_line - started, rss


def vm(pid: int, field: str) -> float:
    """A ``/proc/PID/status`` memory field, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def resident_mib(tree: Path | None) -> tuple[float, float]:
    """VmRSS and VmHWM (MiB) of ``hostwatch run`` on the embedded default, 2 s after /ready."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = bench_agent.start_agent("10s", Path(tmp), tree=tree)
        try:
            bench_agent.wait_ready(url + "/ready")
            time.sleep(2)
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ":" in line
            )
            return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024
        finally:
            proc.terminate()
            proc.wait(10)


IMPORT_PROBE = (
    "import time, sys; import asyncio, ssl, uvloop; started = time.perf_counter(); {extra}; "
    "elapsed = time.perf_counter() - started; "
    "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1]; print(elapsed, rss)"
)
PROBES = {
    "importing aiohttp": "import aiohttp",
    "plugin discovery by importlib.metadata": (
        "import importlib.metadata as m; "
        "[m.entry_points(group=g) for g in ('hostwatch.collectors', 'hostwatch.outputs')]"
    ),
    "plugin discovery by agent.registry": "import agent.registry as r; r.load_registry()",
}


def import_cost(extra: str) -> tuple[float, float]:
    """Seconds and RSS (MiB) of running ``extra`` in a fresh interpreter pinned to one CPU that has
    imported asyncio, ssl and uvloop (what the agent imports anyway); the median of 7."""
    runs = []
    for _ in range(7):
        code = IMPORT_PROBE.format(extra=extra)
        out = subprocess.run([*pinned("0"), sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds, rss = out.stdout.split()
        runs.append((float(seconds), int(rss) / 1024))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def redaction_warm_up(tree: Path | None) -> tuple[float, float, float, float]:
    """Seconds to build the default redactor, to redact the corpus's first 1,000 lines with it (RE2
    builds each rule's automaton on first use), to redact them again, and to build the Loki encoder's
    varint tables (its first export); in a fresh interpreter pinned to one CPU, importing from ``tree``
    (this one when None), the best of 3."""
    code = (
        "import time, sys; from agent.config.schema import RedactionSection; from agent.redact import Redactor; "
        "from outputs.loki import encode; "
        f"lines = open({str(CORPUS)!r}, 'rb').read().decode('utf-8', 'replace').splitlines()[:1000]; "
        "t0 = time.process_time(); r = Redactor.from_config(RedactionSection(), state_dir='/nonexistent'); "
        "t1 = time.process_time(); r.redact_lines(lines); t2 = time.process_time(); r.redact_lines(lines); "
        "t3 = time.process_time(); encode._tables(); t4 = time.process_time(); "
        "print(t1 - t0, t2 - t1, t3 - t2, t4 - t3)"
    )
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [*pinned("0"), sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tree
        )
        runs.append(tuple(float(x) for x in out.stdout.split()))
    return min(r[0] for r in runs), min(r[1] for r in runs), min(r[2] for r in runs), min(r[3] for r in runs)


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} s (range {min(values):.3f}-{max(values):.3f})"


def main() -> int:
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if BASELINE:
        trees.append(("baseline", Path(BASELINE).resolve()))
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in trees}
    memory: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in trees}
    for _, tree in trees:
        bench_agent.byte_compile(tree)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        home = Path(tmp)
        log = home / "access.log"
        log.write_bytes(b"".join(CORPUS.read_bytes().splitlines(keepends=True)[:LINES]))
        vl, vl_url = start_victoria_logs(home)
        try:
            for run in range(RUNS):
                for name, tree in trees if run % 2 == 0 else trees[::-1]:  # ABBA: drifts in load cancel out
                    times[name].append(start_once(home / f"run{run}-{len(times[name])}{name[0]}", log, vl_url, tree))
        finally:
            stop(vl)
    for _ in range(2):
        for name, tree in trees:
            memory[name].append(resident_mib(tree))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"start-up pinned to one CPU, {RUNS} runs each, alternating; load {load}")
    results = []
    for name, _ in trees:
        metrics_s = [t[0] for t in times[name]]
        line_s = [t[1] for t in times[name]]
        rss = max(m[0] for m in memory[name])
        hwm = max(m[1] for m in memory[name])
        print(f"  {name}: exec to /metrics {spread(metrics_s)}; to the first line read {spread(line_s)}")
        bulk_rss = statistics.median(t[2] for t in times[name])
        print(f"  {name}: this configuration's VmRSS 0.5 s after the first line: median {bulk_rss:.1f} MiB")
        print(f"  {name}: embedded default, 2 s after /ready: VmRSS {rss:.1f} MiB, peak {hwm:.1f} MiB")
        if name == "this tree":
            results = [
                (f"/metrics answering <= {TARGET_SECONDS} s", statistics.median(metrics_s) <= TARGET_SECONDS),
                (f"first line read <= {TARGET_SECONDS} s", statistics.median(line_s) <= TARGET_SECONDS),
            ]
    bare, bare_rss = import_cost("pass")
    for what, code in PROBES.items():
        seconds, rss = import_cost(code)
        print(
            f"  {what}, after asyncio, ssl and uvloop: +{(seconds - bare) * 1000:.0f} ms, RSS +{rss - bare_rss:.1f} MiB"
        )
    for name, tree in trees:
        build, first, again, tables = redaction_warm_up(tree)
        print(
            f"  {name}: the default redaction built in {build * 1000:.1f} ms; the first 1,000 lines redacted in "
            f"{first * 1000:.1f} ms, the same lines again in {again * 1000:.1f} ms; the Loki encoder's tables "
            f"in {tables * 1000:.1f} ms (CPU time, best of 3)"
        )
    for what, ok in results:
        print(f"{'PASS' if ok else 'FAIL'} {what}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
