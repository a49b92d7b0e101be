"""The garbage collector's settings once the agent has started (``agent.runtime.settle_garbage_collector``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from agent import runtime

PROBE = """
import gc
from agent.runtime import GC_YOUNGEST_THRESHOLD, settle_garbage_collector
before = gc.get_threshold()
assert gc.get_freeze_count() == 0
settle_garbage_collector()
after = gc.get_threshold()
print(gc.get_freeze_count(), before[0], after[0], before[1:] == after[1:], GC_YOUNGEST_THRESHOLD)
"""


def test_settling_freezes_start_up_objects_and_raises_only_the_youngest_threshold() -> None:
    # in a fresh interpreter: freezing this test process would keep its garbage for good
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    frozen, before, after, older_kept, configured = int(out[0]), int(out[1]), int(out[2]), out[3], int(out[4])
    assert frozen > 1000  # the modules and everything imported
    assert before == 700 and after == configured == 10_000
    assert older_kept == "True"


def test_the_daemon_settles_the_collector_after_start_and_before_ready() -> None:
    # (the first call of each in run_agent, by line: start, then the collector, then READY=1)
    tree = ast.parse(Path(runtime.__file__).read_text())
    run_agent = next(n for n in tree.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "run_agent")
    lines = {
        name: min(n.lineno for n in ast.walk(run_agent) if isinstance(n, ast.Call) and ast.unparse(n.func) == name)
        for name in ("agent.start", "settle_garbage_collector", "notify")
    }
    assert lines["agent.start"] < lines["settle_garbage_collector"] < lines["notify"]
