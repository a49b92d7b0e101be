"""Python's garbage collector in the agent: collections and their CPU time, two trees side by side.

Run: ``BENCH_GC_BASELINE_REV=REV python -m tests.bench.bench_gc`` (needs VictoriaLogs and rsyslog, as
``bench_logs_lowrate``). This tree's HEAD (commit first) and ``REV`` are exported (``git archive``) and
a probe is put in each (a ``sitecustomize`` that only acts when ``BENCH_GC_PROBE`` names a directory):
``gc.callbacks`` time every collection on the CPU clock of the thread it runs on, and the process
writes the count and CPU time per generation when it exits. Both trees' agents run the same
scenarios of ``bench_logs_lowrate``, alternately, ``BENCH_GC_RUNS`` times each (default 2):

* 2,000 files at 1,000 lines/s for ``BENCH_LOWRATE_SECONDS`` (default 20; the bench's own hostwatch,
  unprobed, tails the same files beside it);
* bulk: ``BENCH_BULK_MIB`` (default 64) of the corpus shipped from the beginning into VictoriaLogs.

Each line gives a run's collections per generation (youngest first), their CPU milliseconds, and
the agent's CPU per line and peak RSS (``VmHWM``) as the scenario measured them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from tests.bench import bench_logs_lowrate as lowrate_bench
from tests.bench.bench_agent import byte_compile, export_tree

BASELINE_REV = os.environ.get("BENCH_GC_BASELINE_REV", "")
RUNS = int(os.environ.get("BENCH_GC_RUNS", "2"))

PROBE = """
import atexit, gc, json, os, threading, time
_out = os.environ.get("BENCH_GC_PROBE")
if _out:
    _count, _cpu, _started = [0, 0, 0], [0.0, 0.0, 0.0], {}

    def _timed(phase, info):
        if phase == "start":
            _started[threading.get_ident()] = time.thread_time()
        else:
            began = _started.pop(threading.get_ident(), None)
            if began is not None:
                _count[info["generation"]] += 1
                _cpu[info["generation"]] += time.thread_time() - began

    def _write():
        hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
        path = os.path.join(_out, f"{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump({"count": _count, "cpu": _cpu, "hwm_kib": int(hwm), "tree": os.getcwd()}, f)

    gc.callbacks.append(_timed)
    atexit.register(_write)
"""


def probed_tree(revision: str, into: Path) -> Path:
    tree = export_tree(revision, into)
    (tree / "sitecustomize.py").write_text(PROBE)
    byte_compile(tree)
    return tree


def collected(probe: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(probe.glob("*.json"))]
    for p in probe.glob("*.json"):
        p.unlink()
    return found


def line(name: str, probe: dict, extra: str) -> str:
    counts = "/".join(str(n) for n in probe["count"])
    cpu = "/".join(f"{s * 1000:.1f}" for s in probe["cpu"])
    total = sum(probe["cpu"]) * 1000
    return (
        f"  {name}: collections {counts}, CPU {cpu} ms (total {total:.1f} ms); "
        f"peak RSS {probe['hwm_kib'] / 1024:.1f} MiB{extra}"
    )


def main() -> int:
    if not BASELINE_REV:
        sys.exit("bench_gc: set BENCH_GC_BASELINE_REV to the revision to compare with")
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as tmp:
        root = Path(tmp)
        trees = {
            "this tree": probed_tree("HEAD", root / "this"),
            BASELINE_REV: probed_tree(BASELINE_REV, root / "base"),
        }
        probe = root / "probe"
        probe.mkdir()
        os.environ["BENCH_GC_PROBE"] = str(probe)
        path = root / "bulk.log"
        chunk = lowrate_bench.CORPUS.read_bytes()
        repeats = max(1, int(lowrate_bench.BULK_MIB * 2**20 / len(chunk)))
        path.write_bytes(chunk * repeats)
        lines = repeats * chunk.count(b"\n")
        for run in range(RUNS):
            for name, tree in list(trees.items())[:: 1 if run % 2 == 0 else -1]:  # ABBA
                print(f"{name}, run {run + 1} (the scenario's own lines, then the probe's):")
                lowrate_bench.BASELINE_REV = name  # the name it prints for the probed agent
                lowrate_bench.lowrate(root / f"low{run}{name[0]}", 2000, 1000, tree)
                for found in collected(probe):
                    print(line(name, found, ""))
                shipment = lowrate_bench.ship_with_hostwatch(root / f"bulk{run}{name[0]}", path, lines, str(tree))
                seconds, cpu, sent = shipment.seconds, shipment.cpu, shipment.sent
                for found in collected(probe):
                    extra = f"; bulk {sent / seconds:,.0f} lines/s, {sent / cpu:,.0f} lines per CPU second"
                    print(line(f"{name}, bulk", found, extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
