"""Runs inside the booted container (its python3.11, the checkout and the test venv's packages
bind-mounted): drives one cgroup collector instance in ``units`` mode as the engine does, prints JSON.

    cgroup_probe.py cost RUNS       CPU and wall time of collect(), one instance kept (its caches warm)
    cgroup_probe.py churn RUNS      RUNS collects back to back (while the test starts and stops units)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from agent.config import parse_config
from agent.emitter import RunEmitter
from agent.registry import load_registry
from tests.support import collector_context


def collector(tmp: Path):
    registry = load_registry()
    spec = parse_config({"collectors": {"cgroup": [{"mode": "units"}]}}, environ={}, registry=registry).collectors[0]
    return registry["collectors"]["cgroup"](spec.config, collector_context(tmp))


async def one_run(instance) -> RunEmitter:
    emitter = RunEmitter(time.time_ns())
    await instance.collect(emitter)
    return emitter


def summary(emitter: RunEmitter) -> dict:
    skipped = {dict(s.labels)["reason"]: s.value for s in emitter.samples if s.name.startswith("hostwatch_")}
    return {
        "samples": len(emitter.samples),
        "cgroups": len({dict(s.labels)["id"] for s in emitter.samples if s.name.startswith("container_")}),
        "errors": [str(e) for e in emitter.errors],
        "skipped": skipped,
    }


USAGE_FILES = (
    "cpu.stat", "memory.current", "memory.stat", "memory.swap.current", "memory.peak", "memory.events",
    "io.stat", "pids.current", "cgroup.procs", "cpu.pressure", "memory.pressure", "io.pressure",
)  # fmt: skip


def read_floor(mount: Path, cgroups: list[str], runs: int) -> tuple[float, int]:
    """CPU ms per run to open, read and close just the usage files that exist: the kernel's share."""
    paths = [str(p) for c in cgroups for p in (mount / c.lstrip("/") / f for f in USAGE_FILES) if p.exists()]
    cpu = time.process_time()
    for _ in range(runs):
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 65536)
            os.close(fd)
    return (time.process_time() - cpu) * 1e3 / runs, len(paths)


async def cost(runs: int, tmp: Path) -> dict:
    instance = collector(tmp)
    await instance.start()
    first = await one_run(instance)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(runs):
        last = await one_run(instance)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await instance.close()
    cgroups = sorted({dict(s.labels)["id"] for s in last.samples if s.name.startswith("container_")})
    mount = next(m for m in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")) if (m / "cgroup.procs").exists())
    floor_ms, files = read_floor(mount, cgroups, runs)
    return {
        "first": summary(first),
        "last": summary(last),
        "cpu_ms": cpu * 1e3 / runs,
        "wall_ms": wall * 1e3 / runs,
        "files": files,
        "read_only_cpu_ms": floor_ms,
    }


async def churn(runs: int, tmp: Path) -> dict:
    instance = collector(tmp)
    await instance.start()
    results = [summary(await one_run(instance)) for _ in range(runs)]
    await instance.close()
    return {
        "runs": len(results),
        "errors": sorted({e for r in results for e in r["errors"]}),
        "cgroups": sorted({r["cgroups"] for r in results}),
        "skipped": results[-1]["skipped"],
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        action = cost if sys.argv[1] == "cost" else churn
        result = asyncio.run(action(int(sys.argv[2]), Path(tmp)))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
