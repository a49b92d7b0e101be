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

``BENCH_BASELINE_REV`` (a git revision, e.g. ``main``) measures that revision's tree
(``git archive``) in the same run: each configuration runs in a fresh interpreter per
tree, the trees alternating, ``BENCH_RUNS`` times (default 2), and the ranges are printed
side by side, so a change is measured before and after under the same load.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

CYCLES = int(os.environ.get("BENCH_CYCLES", "300"))
RUNS = int(os.environ.get("BENCH_RUNS", "2"))
ROOT = Path(__file__).resolve().parents[2]
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


def measure(name: str) -> dict:
    """One configuration in this interpreter: its cost, the part off the loop, its series; or why not."""
    from agent.config import ConfigError
    from agent.registry import load_registry
    from agent.runtime import install_event_loop_policy

    install_event_loop_policy()
    text = CONFIGS[name]
    if text.split("[[collectors.", 1)[1].split("]", 1)[0] not in load_registry()["collectors"]:
        return {"skipped": "plugin not installed"}
    try:
        cost, off_loop, series = asyncio.run(cycle(text, CYCLES))
    except ConfigError as exc:  # an option an earlier tree does not know
        return {"skipped": str(exc)[:80]}
    return {"cost": cost, "off_loop": off_loop, "series": series}


def run_in(tree: Path, name: str) -> dict:
    """:func:`measure` in a fresh interpreter with ``tree`` first on the path."""
    from tests.bench.bench_agent import measure_in_tree  # here: a child imports the other tree's modules

    return measure_in_tree(__file__, tree, {"BENCH_NODE_COLLECTORS_CHILD": name})


def main() -> None:
    child = os.environ.get("BENCH_NODE_COLLECTORS_CHILD")
    if child:
        print(json.dumps(measure(child)))
        return
    only = os.environ.get("BENCH_ONLY", "")
    baseline = os.environ.get("BENCH_BASELINE_REV")
    if not baseline:
        for name in CONFIGS:
            if only in name:
                print(describe(name, [measure(name)]))
        return
    from tests.bench.bench_agent import export_tree

    with tempfile.TemporaryDirectory() as tmp:
        trees = {baseline: export_tree(baseline, Path(tmp)), "this tree": ROOT}
        print(f"{RUNS} runs per tree, alternating, {CYCLES} cycles each")
        for name in CONFIGS:
            if only not in name:
                continue
            results: dict[str, list[dict]] = {label: [] for label in trees}
            for _ in range(RUNS):
                for label, tree in trees.items():
                    results[label].append(run_in(tree, name))
            print(f"{name}:")
            for label, runs in results.items():
                print(f"  {label:<10} {describe('', runs).lstrip(': ')}")


def describe(name: str, runs: list[dict]) -> str:
    if "skipped" in runs[0]:
        return f"{name}: skipped, {runs[0]['skipped']}"
    costs = sorted(r["cost"] * 1e6 for r in runs)
    off = sorted(r["off_loop"] * 1e6 for r in runs)
    return f"{name}: {span(costs)} µs CPU per cycle ({span(off)} off the loop), {runs[0]['series']} series"


def span(values: list[float]) -> str:
    low, high = f"{values[0]:.0f}", f"{values[-1]:.0f}"
    return low if low == high else f"{low}-{high}"


if __name__ == "__main__":
    main()
