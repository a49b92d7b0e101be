"""The agent's footprint beside node_exporter, and the cost of one collection cycle.

* CPU seconds and peak RSS of ``hostwatch run`` at the embedded default (whatever
  :data:`agent.config.EMBEDDED_DEFAULT` enables), of node_exporter running the same
  collectors (mapped from the config, see :data:`NODE_EXPORTER_OF`), and of
  node_exporter with its defaults, side by side in one run; at 10 s and at 1 s;
  median of several runs. All three are scraped at the collection interval:
  node_exporter collects when scraped, so its scrape is its cost; hostwatch
  collects on its own clock and its ``/metrics`` render is paid on top.
* One cycle of the embedded default's collectors through the engine (worker
  thread hop, emitter, publish) against just reading and splitting the files
  they read.
* Start to ``/ready``.

Environment: BENCH_SECONDS (default 60), BENCH_RUNS (default 3); BENCH_INTERVALS (default
"10,1") and BENCH_SKIP_CYCLE=1 (footprint only) for quicker looks. BENCH_BASELINE_REV (a git
revision, e.g. ``main``) adds a fourth process, hostwatch as that revision has it (``git
archive``), to the footprint runs: a before/after in the same conditions.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
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
BASELINE_REV = os.environ.get("BENCH_BASELINE_REV", "")
BASELINE_NAME = f"hostwatch at {BASELINE_REV}"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))

# hostwatch plugin -> the node_exporter collectors it stands for. A tuple: the whole plugin;
# a callable: the parts its config switches on (each part is named after its node_exporter
# collector). A plugin missing here stops the bench, so a new default collector cannot be
# left out of the comparison unnoticed.
NODE_EXPORTER_OF = {
    "cpu": ("cpu", "loadavg", "stat"),
    "memory": ("meminfo", "vmstat"),
    "disk": ("filesystem", "diskstats"),
    "network": ("netdev", "netstat", "sockstat"),
    "textfile": ("textfile",),
    "netclass": lambda config: _switched_on(
        config,
        ("netclass", "softnet", "arp", "conntrack", "udp_queues", "tcpstat", "bonding", "ipvs", "infiniband"),
        ("fibrechannel",),
    ),
    "hardware": lambda config: _switched_on(
        config, ("hwmon", "thermal_zone", "cpufreq", "powersupplyclass", "edac", "rapl", "dmi", "nvme")
    ),
    "storage": lambda config: _switched_on(
        config, ("mdadm", "bcache", "btrfs", "xfs", "zfs", "nfs", "nfsd", "tapestats", "selinux")
    ),
    "system": lambda config: [name for name in config.collectors if name not in config.exclude],
}
# Plugins that have no node_exporter counterpart (the agent's own metrics).
NO_COUNTERPART = {"internal"}
# Debian patches two upstream defaults (it leaves out /run, /mnt, /media and lo); hostwatch
# keeps upstream's, so the matching node_exporter gets them too and exports the same series.
UPSTREAM_FLAGS = {
    "filesystem": (
        "--collector.filesystem.mount-points-exclude="
        "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)",
    ),
    "netdev": ("--collector.netdev.device-exclude=",),
}


def _switched_on(config, *parts: tuple[str, ...]) -> list[str]:
    """The parts (boolean options named after node_exporter collectors) the config switches on."""
    return [name for group in parts for name in group if getattr(config, name)]


def embedded_default():
    from agent.config import EMBEDDED_DEFAULT, loads_config

    return EMBEDDED_DEFAULT, loads_config(EMBEDDED_DEFAULT)


def matching_collectors() -> list[str]:
    """node_exporter's --collector.X names for every collector instance of the embedded default."""
    names: list[str] = []
    for spec in embedded_default()[1].collectors:
        if spec.type in NO_COUNTERPART:
            continue
        if spec.type not in NODE_EXPORTER_OF:
            raise SystemExit(f"bench_agent: add the {spec.type!r} collector to NODE_EXPORTER_OF")
        mapped = NODE_EXPORTER_OF[spec.type]
        names += mapped(spec.config) if callable(mapped) else mapped
    return list(dict.fromkeys(names))


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


def main_thread_seconds(pid: int) -> float:
    """CPU time of the main thread alone: hostwatch's event loop (the rest are its worker threads)."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


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


def start_agent(interval: str, tmp: Path, tree: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``hostwatch run`` on the embedded default, with only the interval, port and state_dir changed;
    ``tree``: the agent of another source tree (its embedded default too)."""
    port = free_port()
    config = tmp / f"bench-{port}.toml"
    text = embedded_default()[0] if tree is None else _embedded_default_of(tree)
    for pattern, value in (
        (r'(?m)^interval = "10s"$', f'interval = "{interval}"\nstate_dir = "{tmp}"'),
        (r'(?m)^listen = "[^"]*"$', f'listen = "127.0.0.1:{port}"'),
    ):
        text, found = re.subn(pattern, value, text)
        if found != 1:
            raise SystemExit(f"bench_agent: the embedded default no longer has {pattern!r}")
    config.write_text(text)
    command, env = hostwatch_command(), None
    if tree is not None:
        command = [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())"]
        env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([*command, "run", "--config", str(config)], stderr=subprocess.DEVNULL, env=env, cwd=tree)
    return proc, f"http://127.0.0.1:{port}"


def _embedded_default_of(tree: Path) -> str:
    code = "from agent.config import EMBEDDED_DEFAULT; print(EMBEDDED_DEFAULT, end='')"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True).stdout


def export_tree(revision: str, into: Path) -> Path:
    """A revision's files (``git archive``), to run its agent beside this one."""
    import tarfile

    root = Path(__file__).resolve().parents[2]
    archive = subprocess.run(["git", "archive", revision], cwd=root, capture_output=True, check=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return into


def measure_in_tree(bench_file: str, tree: Path, child_env: dict[str, str]) -> dict:
    """Run ``bench_file``'s measurement in a fresh interpreter with ``tree`` first on the path (the
    child is told by ``child_env``) and return the JSON it prints last: a before/after of two trees
    in one run without either importing the other's modules."""
    env = {**os.environ, "PYTHONPATH": str(tree), **child_env}
    script = str(Path(bench_file).resolve())
    out = subprocess.run([sys.executable, script], cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{Path(bench_file).stem} in {tree} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def byte_compile(tree: Path | None = None) -> None:
    """Byte-compile a source tree's packages (this one by default), as the packages ship them: run from
    its sources with ``PYTHONDONTWRITEBYTECODE`` set, the agent would compile every module of the
    project at each start, which the installed agent never does."""
    import compileall

    root = tree or Path(__file__).resolve().parents[2]
    for package in ("agent", "collectors", "outputs"):
        compileall.compile_dir(root / package, quiet=1)


def start_node_exporter(collectors: list[str] | None) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not binary:
        raise SystemExit("node_exporter is missing: run tests/peers/install.sh")
    port = free_port()
    args = [binary, f"--web.listen-address=127.0.0.1:{port}"]
    if collectors is not None:
        args += ["--collector.disable-defaults", *(f"--collector.{c}" for c in collectors)]
        args += [flag for c in collectors for flag in UPSTREAM_FLAGS.get(c, ())]
    return subprocess.Popen(args, stderr=subprocess.DEVNULL), f"http://127.0.0.1:{port}"


def footprint(
    interval: float, matching: list[str], baseline: Path | None = None, turn: int = 0
) -> dict[str, tuple[float, float, float]]:
    """CPU seconds over SECONDS, peak RSS and the main thread's CPU seconds, each process scraped
    every ``interval``.

    Which process starts first moves round with ``turn`` (the run's number), and which is scraped
    first with each round: the process started first read 5-10 % more CPU than the same code
    started after it (three copies of one tree, pinned to one CPU or not), which made one tree read
    1.09-1.26x itself when it always went first; the median of three runs drops the run it did."""
    starters = {
        "hostwatch": lambda tmp: start_agent(f"{interval}s", _fresh(tmp / "current")),
        "node_exporter (matching collectors)": lambda tmp: start_node_exporter(matching),
        "node_exporter (defaults)": lambda tmp: start_node_exporter(None),
    }
    if baseline is not None:
        starters[BASELINE_NAME] = lambda tmp: start_agent(f"{interval}s", _fresh(tmp / "baseline"), tree=baseline)
    names = list(starters)
    with tempfile.TemporaryDirectory() as tmp:
        procs: dict[str, tuple[subprocess.Popen, str]] = {}
        try:
            for name in _turned(names, turn):
                procs[name] = starters[name](Path(tmp))
            for _proc, url in procs.values():
                wait_ready(url + "/metrics")
            time.sleep(2)  # past start-up and the first collection
            before = {name: cpu_seconds(p.pid) for name, (p, _) in procs.items()}
            loop_before = {name: main_thread_seconds(p.pid) for name, (p, _) in procs.items()}
            deadline = time.monotonic() + SECONDS
            next_scrape = time.monotonic()
            urls = [url for _proc, url in procs.values()]
            rounds = 0
            while time.monotonic() < deadline:
                for url in _turned(urls, rounds):
                    fetch(url + "/metrics")
                rounds += 1
                next_scrape += interval
                time.sleep(max(0.0, next_scrape - time.monotonic()))
            return {
                name: (
                    cpu_seconds(p.pid) - before[name],
                    peak_rss_mib(p.pid),
                    main_thread_seconds(p.pid) - loop_before[name],
                )
                for name, (p, _) in procs.items()
            }
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(10)


def _turned(items: list, turn: int) -> list:
    """``items`` turned round by ``turn`` places."""
    k = turn % len(items)
    return items[k:] + items[:k]


def _fresh(directory: Path) -> Path:
    directory.mkdir()
    return directory


def cycle_cost() -> tuple[float, float, list[str]]:
    """Mean CPU seconds of one engine cycle of the embedded default's collectors, and of the bare reads.

    The baseline reads and splits exactly the files one cycle opened (recorded with
    an audit hook) and calls statvfs on the mount points it reported: the floor
    any implementation pays for the same data.
    """
    from agent.runtime import Agent

    config = embedded_default()[1]
    agent = Agent(config)
    opened: list[str] = []
    kept: list[str] = []
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
        kept[:] = _kept_open()
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
    # Files read through descriptors kept open between runs are not opened again in the recorded
    # run: they count as read (with an open and a close here, as the bare way reads them).
    kept_files, route_socket = kept[:-1], kept[-1] == "netlink"
    files = [name for name in dict.fromkeys(opened + kept_files) if _readable(name)]

    def bare() -> None:
        for name in files:
            with open(name, "rb") as f:
                for line in f.read().splitlines():
                    line.split()
        for mount in mounts:
            os.statvfs(mount)
        if route_socket:  # netclass asks rtnetlink: the bare dump, unparsed, counts as its read
            _bare_link_dump()

    rounds = 300
    started = time.process_time()
    for _ in range(rounds):
        bare()
    return engine, (time.process_time() - started) / rounds, files


def _kept_open() -> list[str]:
    """/proc and /sys files this process holds open, then "netlink" if it holds an rtnetlink socket."""
    paths, sockets = [], set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("/proc/", "/sys/")):
            paths.append(target)
        elif target.startswith("socket:["):
            sockets.add(target[8:-1])
    with open("/proc/self/net/netlink") as table:
        routes = [row.split() for row in table.read().splitlines()[1:]]
    route = any(row[1] == "0" and row[-1] in sockets for row in routes)  # protocol 0: NETLINK_ROUTE
    return [*paths, "netlink" if route else ""]


def _bare_link_dump() -> None:
    import socket
    import struct

    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:
        sock.bind((0, 0))
        request = struct.pack("=IHHII", 32, 18, 0x301, 1, 0) + bytes(16)  # RTM_GETLINK, NLM_F_REQUEST|DUMP
        sock.send(request)
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk or struct.unpack_from("=H", chunk, 4)[0] in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
                return


def _readable(name: str) -> bool:
    """Some sysfs attributes refuse reads (EINVAL when the device has no value): the collectors
    try them and move on, the bare baseline just leaves them out."""
    try:
        with open(name, "rb") as f:
            f.read()
        return True
    except OSError:
        return False


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


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    matching = matching_collectors()
    names = ", ".join(spec.name for spec in embedded_default()[1].collectors)
    print(f"machine: {os.cpu_count()} cores; {SECONDS:.0f}s per run, median of {RUNS} runs; load {load_average()}")
    print(f"embedded default: {names}")
    print(f"node_exporter, same collectors ({len(matching)}): {' '.join(matching)}")
    if not os.environ.get("BENCH_SKIP_CYCLE"):
        engine, bare, files = cycle_cost()
        print(f"files one cycle reads: {len(files)} (and one rtnetlink link dump when netclass uses it)")
        print(
            f"one cycle of the embedded default through the engine: {engine * 1e3:.3f} ms; "
            f"bare read+split of their files: {bare * 1e3:.3f} ms; ratio {engine / bare:.2f} (target <= 1.3)"
        )
        print(f"start to /ready (process spawn included): {start_to_ready():.3f}s (target <= 0.5 s)")
    with tempfile.TemporaryDirectory() as tmp:
        baseline = export_tree(BASELINE_REV, Path(tmp)) if BASELINE_REV else None
        byte_compile()  # both trees as the packages ship them
        if baseline is not None:
            byte_compile(baseline)
        report_footprints(matching, baseline)


def report_footprints(matching: list[str], baseline: Path | None) -> None:
    for interval in (float(i) for i in os.environ.get("BENCH_INTERVALS", "10,1").split(",")):
        runs = [footprint(interval, matching, baseline, turn) for turn in range(RUNS)]
        print(f"\ninterval {interval:g}s, each scraped every {interval:g}s, {SECONDS:.0f}s; load {load_average()}:")
        medians = {}
        for name in runs[0]:
            cpu = statistics.median(r[name][0] for r in runs)
            rss = max(r[name][1] for r in runs)
            medians[name] = cpu
            spread = " ".join(f"{r[name][0]:.3f}" for r in runs)
            print(f"  {name:<38} CPU {cpu:7.4f} s ({spread})   peak RSS {rss:6.1f} MiB")
            if name.startswith("hostwatch"):
                loop = statistics.median(r[name][2] for r in runs)
                print(f"  {'':<38} of which the event loop {loop * 1e3 / SECONDS:.2f} ms per second")
        ours = medians["hostwatch"]
        for name, target in (
            ("node_exporter (matching collectors)", " (target <= 0.5)"),
            ("node_exporter (defaults)", ""),
        ):
            ratio = ours / medians[name] if medians[name] else float("inf")
            print(f"  hostwatch / {name}: {ratio:.2f}{target}")
            if baseline is not None:
                before = medians[BASELINE_NAME] / medians[name] if medians[name] else float("inf")
                print(f"  {BASELINE_NAME} / {name}: {before:.2f}")
        if baseline is not None:
            print(f"  hostwatch / {BASELINE_NAME}: {ours / medians[BASELINE_NAME]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
