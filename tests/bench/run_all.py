"""`make bench`: run every tests/bench/bench_*.py module in its own process, one after the other.

Pass module names to run a subset: ``python -m tests.bench.run_all bench_agent``. bench_scrape
compares the scrape parser with Prometheus and vmagent on the same 10 MB exposition.
bench_logs_lowrate compares log tailing CPU at low rates, and bulk shipping, with rsyslog's
(``imfile``) on the same files.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    modules = sorted(p.stem for p in here.glob("bench_*.py"))
    if argv:
        modules = [m for m in modules if m in argv]
    failed = []
    for module in modules:
        print(f"\n=== {module} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"tests.bench.{module}"])
        print(f"=== {module}: exit {code} in {time.monotonic() - started:.0f}s ===", flush=True)
        if code:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
