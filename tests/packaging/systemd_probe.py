"""Runs inside the booted container (its python3.11, the checkout and the test venv's packages
bind-mounted): drives one systemd collector instance the way the engine does, and prints JSON.

    systemd_probe.py cost RUNS          CPU and wall time of collect(), one instance kept
    systemd_probe.py reconnect          collect, restart dbus.service, collect again
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
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
    table = {"enable_restarts_metrics": True, "enable_start_time_metrics": True, "enable_task_metrics": True}
    spec = parse_config({"collectors": {"systemd": [table]}}, environ={}, registry=registry).collectors[0]
    return registry["collectors"]["systemd"](spec.config, collector_context(tmp))


async def one_run(instance) -> RunEmitter:
    emitter = RunEmitter(time.time_ns())
    await instance.collect(emitter)
    return emitter


def summary(emitter: RunEmitter) -> dict:
    return {
        "samples": len(emitter.samples),
        "units": len({dict(s.labels)["name"] for s in emitter.samples if s.name == "node_systemd_unit_state"}),
        "errors": [str(e) for e in emitter.errors],
    }


async def cost(runs: int, tmp: Path) -> dict:
    instance = collector(tmp)
    await instance.start()
    first = await one_run(instance)  # connects
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(runs):
        last = await one_run(instance)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await instance.close()
    return {"first": summary(first), "last": summary(last), "cpu_ms": cpu * 1e3 / runs, "wall_ms": wall * 1e3 / runs}


async def reconnect(tmp: Path) -> dict:
    instance = collector(tmp)
    before = await one_run(instance)
    subprocess.run(["systemctl", "restart", "dbus.service"], check=True, timeout=60)
    after = await one_run(instance)
    await instance.close()
    return {"before": summary(before), "after": summary(after)}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if sys.argv[1] == "cost":
            result = asyncio.run(cost(int(sys.argv[2]), Path(tmp)))
        else:
            result = asyncio.run(reconnect(Path(tmp)))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
