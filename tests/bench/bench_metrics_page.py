"""The cost of ``/metrics``: rendering the agent's own metrics, the handler, and a whole scrape.

The agent is built from the embedded default (its collectors' runs published once,
so the host page has the series of this host) but nothing is started; its
``HttpServer`` serves on loopback. Three figures, each process CPU time (every
thread, so a hop to a thread counts):

* **own metrics render**: the ``/metrics`` handler with an empty host page, after
  a 1 s interval's changes (every collector's runs, duration and samples);
* **handler**: the handler with the host page after every collector ran and
  published again (as a scrape at the 1 s interval finds it: both pages changed);
* **scrape**: the server's CPU per request over loopback, a new connection each
  (as ``bench_agent`` scrapes), the requests made by another process;
* **scrape kept-alive**: the same on one kept-alive connection (as Prometheus scrapes).

``BENCH_BASELINE_REV`` (a git revision, e.g. ``main``) runs the same measurements on
that revision's tree (``git archive``) in the same run, alternating, for a side-by-side
before/after. ``BENCH_RUNS`` (default 3) repeats; ``BENCH_RENDERS`` (default 2000) and
``BENCH_SCRAPES`` (default 1000) set the counts.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RENDERS = int(os.environ.get("BENCH_RENDERS", "2000"))
SCRAPES = int(os.environ.get("BENCH_SCRAPES", "1000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
ROOT = Path(__file__).resolve().parents[2]

CLIENT = """
import http.client, sys
port, n, kept = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "kept"
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    if not kept:
        c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/metrics")
    c.getresponse().read()
    if not kept:
        c.close()
"""


async def measure() -> dict[str, float]:
    from agent.config import EMBEDDED_DEFAULT, loads_config
    from agent.exposition import LatestSamples
    from agent.http import HttpServer
    from agent.runtime import Agent

    config = loads_config(EMBEDDED_DEFAULT.replace('listen = "127.0.0.1:9730"', 'listen = "127.0.0.1:0"'))
    agent = Agent(config)
    runners = [agent.build_runner(config, spec) for spec in config.collectors]
    for runner in runners:
        emitter = await runner.run_once()
        agent.pipeline.publish_samples(runner.name, emitter.samples)
    host_page = agent.latest
    telemetry = agent.telemetry
    names = [runner.name for runner in runners]

    def one_interval() -> None:
        for name in names:
            telemetry.collector_runs.labels(name).inc()
            telemetry.collector_duration.labels(name).observe(0.0012)
            telemetry.collector_samples.labels(name).set(100)

    async def collection() -> None:
        for runner in runners:
            emitter = await runner.run_once()
            agent.pipeline.publish_samples(runner.name, emitter.samples)

    http = HttpServer(agent, "127.0.0.1:0")

    async def handler() -> tuple:
        answer = http.metrics()  # a coroutine on older trees
        return await answer if inspect.isawaitable(answer) else answer

    results: dict[str, float] = {}
    for label, latest, rounds in (
        ("own metrics render", LatestSamples(), RENDERS),
        ("handler", host_page, max(1, RENDERS // 10)),  # a collection before each: fewer
    ):
        agent.latest = latest
        await handler()
        spent = 0.0
        for _ in range(rounds):
            if latest is host_page:
                await collection()
            one_interval()
            started = time.process_time()
            await handler()
            spent += time.process_time() - started
        results[label] = spent / rounds * 1e3
    results["page bytes"] = float(len((await handler())[2]))

    await http.start()
    for label, kept in (("scrape", "new"), ("scrape kept-alive", "kept")):
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(http.port), "5", kept)
        await client.wait()  # warm: first connections, caches
        started = time.process_time()
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(http.port), str(SCRAPES), kept)
        await client.wait()
        results[label] = (time.process_time() - started) / SCRAPES * 1e3
    await http.stop()
    for runner in runners:
        await runner.stop()
    return results


def run_in(tree: Path) -> dict[str, float]:
    """The measurements in a fresh interpreter with ``tree`` first on the path."""
    from tests.bench.bench_agent import measure_in_tree  # here: a child imports the other tree's modules

    return measure_in_tree(__file__, tree, {"BENCH_METRICS_PAGE_CHILD": "1"})


def main() -> None:
    if os.environ.get("BENCH_METRICS_PAGE_CHILD"):
        from agent.runtime import install_event_loop_policy

        install_event_loop_policy()  # the agent runs on uvloop too
        print(json.dumps(asyncio.run(measure())))
        return
    baseline = os.environ.get("BENCH_BASELINE_REV")
    from tests.bench.bench_agent import export_tree

    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        if baseline:
            trees = {baseline: export_tree(baseline, Path(tmp)), **trees}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(RUNS):
            for name, tree in trees.items():
                results[name].append(run_in(tree))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{RUNS} runs, alternating; {RENDERS} renders, {SCRAPES} scrapes each; load {load}")
    for name, runs in results.items():
        print(f"{name}: page {runs[0]['page bytes'] / 1024:.1f} KiB")
        for key in ("own metrics render", "handler", "scrape", "scrape kept-alive"):
            values = sorted(r[key] for r in runs)
            print(f"  {key:<20} {values[0]:.3f}-{values[-1]:.3f} ms  ({' '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
