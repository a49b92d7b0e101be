"""The event loop's cost of a collection tick: the engine around the collectors' own work.

The agent runs the embedded default's collectors on its real schedule (timer, runs,
worker threads, emitters, staleness, ``/metrics`` bookkeeping) with no HTTP server,
no outputs and no scrapes, at a short interval so a run sees many ticks. Per tick:

* **event loop**: CPU time of the loop's thread (the engine's part: tasks, timeouts,
  thread hops, publishing; the collectors' reading and parsing runs on worker threads);
* **process**: CPU time of every thread (the collectors' work included).

``BENCH_BASELINE_REV`` (a git revision, e.g. ``main``) runs the same measurement on
that revision's tree (``git archive``) in the same run, alternating, for a side-by-side
before/after. ``BENCH_RUNS`` (default 3) repeats; ``BENCH_SECONDS`` (default 20) is the
length of one run, ``BENCH_TICK_INTERVAL`` (default 0.2 s) the collection interval.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
INTERVAL = float(os.environ.get("BENCH_TICK_INTERVAL", "0.2"))
ROOT = Path(__file__).resolve().parents[2]


async def measure() -> dict[str, float]:
    from agent.config import EMBEDDED_DEFAULT, loads_config
    from agent.runtime import Agent

    with tempfile.TemporaryDirectory() as tmp:
        text = EMBEDDED_DEFAULT
        for pattern, value in (
            (r'(?m)^interval = "10s"$', f'interval = "{INTERVAL * 1000:g}ms"\nstate_dir = "{tmp}"'),
            (r'(?m)^listen = "[^"]*"$', 'listen = ""'),
        ):
            text, found = re.subn(pattern, value, text)
            if found != 1:
                raise SystemExit(f"bench_engine_tick: the embedded default no longer has {pattern!r}")
        agent = Agent(loads_config(text))
        await agent.start()
        await asyncio.sleep(max(1.0, 5 * INTERVAL))  # past start-up and the first runs
        runs = [runner for _, runner in agent.runners.values()]

        def ticks() -> int:
            return sum(runner.state.runs for runner in runs)

        ticks_before, loop_before, process_before = ticks(), time.thread_time(), time.process_time()
        await asyncio.sleep(SECONDS)
        loop_spent, process_spent = time.thread_time() - loop_before, time.process_time() - process_before
        n = (ticks() - ticks_before) / len(runs)
        errors = sum(runner.state.errors for runner in runs)
        await agent.stop()
    return {
        "ticks": n,
        "event loop": loop_spent / n * 1e3,
        "process": process_spent / n * 1e3,
        "collector errors": float(errors),
    }


def run_in(tree: Path) -> dict[str, float]:
    """The measurement in a fresh interpreter with ``tree`` first on the path."""
    from tests.bench.bench_agent import measure_in_tree  # here: a child imports the other tree's modules

    return measure_in_tree(__file__, tree, {"BENCH_ENGINE_TICK_CHILD": "1"})


def main() -> None:
    if os.environ.get("BENCH_ENGINE_TICK_CHILD"):
        from agent.runtime import install_event_loop_policy

        install_event_loop_policy()  # the agent runs on uvloop too
        print(json.dumps(asyncio.run(measure())))
        return
    from tests.bench.bench_agent import export_tree, load_average

    baseline = os.environ.get("BENCH_BASELINE_REV")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        if baseline:
            trees[f"at {baseline}"] = export_tree(baseline, Path(tmp))
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(RUNS):
            for name, tree in trees.items():  # alternating: both see the same load
                results[name].append(run_in(tree))
    print(
        f"embedded default at a {INTERVAL:g}s interval, {SECONDS:g}s per run, {RUNS} runs, no scrapes;"
        f" load {load_average()}; CPU ms per tick, median (each run)"
    )
    for name, runs in results.items():
        errors = [int(r["collector errors"]) for r in runs]
        print(f"  {name}: {runs[0]['ticks']:.0f} ticks a run, collector errors {errors}")
        for key in ("event loop", "process"):
            spread = " ".join(f"{r[key]:.3f}" for r in runs)
            print(f"    {key:<11} {statistics.median(r[key] for r in runs):.3f} ms ({spread})")
    if baseline:
        ours, theirs = results["this tree"], results[f"at {baseline}"]
        for key in ("event loop", "process"):
            ratio = statistics.median(o[key] for o in ours) / statistics.median(t[key] for t in theirs)
            print(f"  this tree / at {baseline}, {key}: {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
