"""CPU cost of one collection cycle of the cpu, memory, disk, network, netclass, hardware, storage, system
and textfile collectors.

``python -m tests.bench.bench_node_collectors`` (BENCH_CYCLES, default 300; BENCH_ONLY=word runs only
the configurations whose name contains it). Each configuration runs its collector through the engine's
runner (worker-thread hop, emitter), first once to warm up, then BENCH_CYCLES times; it prints the mean
process CPU time (every thread) of one cycle, the part of it spent off the event loop's thread (the
collector's own work on its worker thread, and disk's statvfs threads: schedstat of every thread but
the main one), and the number of series. The
hardware collector is also run on the fixture tree of tests/fixtures/hardware,
which stands for a machine with sensors, RAPL, batteries and DMI, and the
storage collector on tests/fixtures/storage (md arrays, bcache, Btrfs, XFS, ZFS,
NFS, tapes); system on this host with all its parts and with node_exporter's defaults,
textfile on the fixture files. A configuration whose plugin is not installed, or whose
options this tree's plugin does not know (an earlier commit), is skipped.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

CYCLES = int(os.environ.get("BENCH_CYCLES", "300"))
FIXTURE_SYS = Path(__file__).parents[1] / "fixtures" / "hardware" / "sys"
STORAGE = Path(__file__).parents[1] / "fixtures" / "storage"
TEXTFILES = Path(__file__).parents[1] / "fixtures" / "textfile" / "good"
CONFIGS = {
    "cpu on this host": "[[collectors.cpu]]\n",
    "memory on this host": "[[collectors.memory]]\n",
    "disk on this host": "[[collectors.disk]]\n",
    "network on this host": "[[collectors.network]]\n",
    "netclass (defaults) on this host": "[[collectors.netclass]]\n",
    "netclass without rtnetlink (sysfs only) on this host": "[[collectors.netclass]]\nnetclass_netlink = false\n",
    "netclass with tcpstat on this host": "[[collectors.netclass]]\ntcpstat = true\n",
    "hardware on this host": "[[collectors.hardware]]\n",
    "hardware on the fixture tree": f'[agent]\nsys_root = "{FIXTURE_SYS}"\n[[collectors.hardware]]\n',
    "storage on this host": "[[collectors.storage]]\n",
    "storage on the fixture tree": (
        f'[agent]\nsys_root = "{STORAGE / "sys"}"\nproc_root = "{STORAGE / "proc"}"\nrootfs = "{STORAGE / "rootfs"}"\n'
        "[[collectors.storage]]\n"
    ),
    "system, all ten parts, on this host": "[[collectors.system]]\n",
    "system, node_exporter's default parts": '[[collectors.system]]\nexclude = ["processes", "interrupts"]\n',
    "textfile, three fixture files": f'[[collectors.textfile]]\ndirectories = ["{TEXTFILES}"]\n',
}


async def cycle(text: str, cycles: int) -> tuple[float, int]:
    from agent.config import loads_config
    from agent.runtime import Agent

    config = loads_config(text)
    runner = Agent(config).build_runner(config, config.collectors[0])
    emitter = await runner.run_once()
    assert not emitter.errors, emitter.errors
    started, main_started = time.process_time(), main_thread_seconds()
    for _ in range(cycles):
        emitter = await runner.run_once()
    cost = (time.process_time() - started) / cycles
    on_loop = (main_thread_seconds() - main_started) / cycles
    await runner.stop()
    return cost, cost - on_loop, len(emitter.samples)


def main_thread_seconds() -> float:
    """CPU time of this process's main thread (the event loop's), from schedstat: nanoseconds, not ticks."""
    with open(f"/proc/self/task/{os.getpid()}/schedstat", "rb") as f:
        return int(f.read().split()[0]) / 1e9


def main() -> None:
    from agent.config import ConfigError
    from agent.registry import load_registry
    from agent.runtime import install_event_loop_policy

    install_event_loop_policy()
    installed = load_registry()["collectors"]
    only = os.environ.get("BENCH_ONLY", "")
    for name, text in CONFIGS.items():
        if only not in name:
            continue
        if text.split("[[collectors.", 1)[1].split("]", 1)[0] not in installed:
            print(f"{name}: skipped, plugin not installed")
            continue
        try:
            cost, off_loop, series = asyncio.run(cycle(text, CYCLES))
        except ConfigError as exc:  # an option an earlier tree does not know
            print(f"{name}: skipped, {str(exc)[:80]}")
            continue
        print(f"{name}: {cost * 1e6:.0f} µs CPU per cycle ({off_loop * 1e6:.0f} off the loop), {series} series")


if __name__ == "__main__":
    main()
