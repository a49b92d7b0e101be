"""The agent's footprint beside node_exporter, and the cost of one collection cycle.

* CPU seconds and peak RSS of ``hostwatch run`` at the embedded default's four
  collectors, and of node_exporter (once with only the matching collectors, once
  with its defaults), side by side in one run, both scraped at the same interval;
  at 10 s and at 1 s; median of several runs.
* One cycle of the four collectors through the engine (worker thread hop,
  emitter, publish) against just reading and splitting the files they read.
* Start to ``/ready``.

Environment: BENCH_SECONDS (default 60), BENCH_RUNS (default 3).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support import free_port, hostwatch_command

SECONDS = float(os.environ.get("BENCH_SECONDS", "60"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
MATCHING = ["cpu", "loadavg", "stat", "meminfo", "vmstat", "filesystem", "diskstats", "netdev", "netstat", "sockstat"]


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` in nanoseconds (schedstat), not clock ticks:
    at a 10 s interval a minute costs a few ticks, too coarse to compare."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fetch(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return len(resp.read())


def wait_ready(url: str, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if fetch(url) >= 0:
                return time.monotonic() - started
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"{url} not ready")


def start_agent(interval: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = tmp / f"bench-{port}.toml"
    config.write_text(
        f'[agent]\ninterval = "{interval}"\nstate_dir = "{tmp}"\n[http]\nlisten = "127.0.0.1:{port}"\n'
        "[[collectors.cpu]]\n[[collectors.memory]]\n[[collectors.disk]]\n[[collectors.network]]\n"
    )
    proc = subprocess.Popen([*hostwatch_command(), "run", "--config", str(config)], stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def start_node_exporter(collectors: list[str] | None) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not binary:
        raise SystemExit("node_exporter is missing: run tests/peers/install.sh")
    port = free_port()
    args = [binary, f"--web.listen-address=127.0.0.1:{port}"]
    if collectors is not None:
        args += ["--collector.disable-defaults", *(f"--collector.{c}" for c in collectors)]
    return subprocess.Popen(args, stderr=subprocess.DEVNULL), f"http://127.0.0.1:{port}"


def footprint(interval: float) -> dict[str, tuple[float, float]]:
    """CPU seconds over SECONDS and peak RSS, each process scraped every ``interval``."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = {
            "hostwatch": start_agent(f"{interval}s", Path(tmp)),
            "node_exporter (matching collectors)": start_node_exporter(MATCHING),
            "node_exporter (defaults)": start_node_exporter(None),
        }
        try:
            for _proc, url in procs.values():
                wait_ready(url + "/metrics")
            time.sleep(2)  # past start-up and the first collection
            before = {name: cpu_seconds(p.pid) for name, (p, _) in procs.items()}
            deadline = time.monotonic() + SECONDS
            next_scrape = time.monotonic()
            while time.monotonic() < deadline:
                for _proc, url in procs.values():
                    fetch(url + "/metrics")
                next_scrape += interval
                time.sleep(max(0.0, next_scrape - time.monotonic()))
            return {name: (cpu_seconds(p.pid) - before[name], peak_rss_mib(p.pid)) for name, (p, _) in procs.items()}
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(10)


def cycle_cost() -> tuple[float, float, list[str]]:
    """Median seconds of one engine cycle of the four collectors, and of the bare reads.

    The baseline reads and splits exactly the files one cycle opened (recorded with
    an audit hook) and calls statvfs on the mount points it reported: the floor
    any implementation pays for the same data.
    """
    from agent.config import EMBEDDED_DEFAULT, loads_config
    from agent.runtime import Agent

    config = loads_config(EMBEDDED_DEFAULT)
    agent = Agent(config)
    opened: list[str] = []
    recording = [False]

    def hook(event: str, args: tuple) -> None:
        if recording[0] and event == "open" and isinstance(args[0], str):
            opened.append(args[0])

    sys.addaudithook(hook)

    async def engine_cycles(n: int) -> tuple[list[float], list[str]]:
        runners = [agent.build_runner(config, spec) for spec in config.collectors]
        for runner in runners:
            await runner.run_once()
        recording[0] = True
        mounts = []
        for runner in runners:
            emitter = await runner.run_once()
            mounts += [dict(s.labels)["mountpoint"] for s in emitter.samples if s.name == "node_filesystem_size_bytes"]
        recording[0] = False
        times = []
        for _ in range(n):
            # CPU time of the whole process (every thread), not wall time: a thread hop's
            # wake-up latency is waiting, not cost, and makes wall times noisy
            started = time.process_time()
            for runner in runners:
                emitter = await runner.run_once()
                agent.pipeline.publish_samples(runner.name, emitter.samples)
            times.append(time.process_time() - started)
        for runner in runners:
            await runner.stop()
        return times, mounts

    from agent.runtime import install_event_loop_policy

    install_event_loop_policy()  # the agent runs on uvloop too
    times, mounts = asyncio.run(engine_cycles(300))
    engine = sum(times) / len(times)  # process_time ticks coarsely: the mean over many cycles
    files = list(dict.fromkeys(opened))

    def bare() -> None:
        for name in files:
            with open(name, "rb") as f:
                for line in f.read().splitlines():
                    line.split()
        for mount in mounts:
            os.statvfs(mount)

    rounds = 300
    started = time.process_time()
    for _ in range(rounds):
        bare()
    return engine, (time.process_time() - started) / rounds, files


def start_to_ready(runs: int = 5) -> float:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            started = time.monotonic()
            proc, url = start_agent("10s", Path(tmp))
            try:
                wait_ready(url + "/ready")
                results.append(time.monotonic() - started)
            finally:
                proc.terminate()
                proc.wait(10)
    return statistics.median(results)


def main() -> None:
    print(f"machine: {os.cpu_count()} cores; {SECONDS:.0f}s per run, median of {RUNS} runs")
    engine, bare, files = cycle_cost()
    print(f"files one cycle reads: {len(files)}")
    print(
        f"one cycle of cpu+memory+disk+network through the engine: {engine * 1e3:.3f} ms; "
        f"bare read+split of their files: {bare * 1e3:.3f} ms; ratio {engine / bare:.2f} (target <= 1.3)"
    )
    print(f"start to /ready (process spawn included): {start_to_ready():.3f}s (target <= 0.5 s)")
    for interval in (10.0, 1.0):
        runs = [footprint(interval) for _ in range(RUNS)]
        print(f"\ninterval {interval:g}s, scraped every {interval:g}s, {SECONDS:.0f}s:")
        medians = {}
        for name in runs[0]:
            cpu = statistics.median(r[name][0] for r in runs)
            rss = max(r[name][1] for r in runs)
            medians[name] = cpu
            print(f"  {name:<38} CPU {cpu:7.4f} s   peak RSS {rss:6.1f} MiB")
        ours = medians["hostwatch"]
        for name in ("node_exporter (matching collectors)", "node_exporter (defaults)"):
            ratio = ours / medians[name] if medians[name] else float("inf")
            print(f"  hostwatch / {name}: {ratio:.2f} (target <= 0.5)")


if __name__ == "__main__":
    sys.exit(main())
