"""Push throughput of the outputs to real receivers on loopback.

Batches of 2,000 items go one request at a time (as the engine sends them) through
the real output classes: remote-write into VictoriaMetrics, OTLP/HTTP metrics into
trixie's VictoriaMetrics, and the Loki push API (protobuf + snappy) into
VictoriaLogs. Encoding, compression and the HTTP round trip are all counted.

Environment: BENCH_PUSH_BATCHES (default 200).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from agent.config import parse_config
from agent.model import LogRecord, Sample
from agent.plugin import Batch, ResultKind, Signal
from agent.registry import load_registry
from tests.support import free_port, output_context

BATCHES = int(os.environ.get("BENCH_PUSH_BATCHES", "200"))
BATCH = 2000
CACHE = Path(os.environ.get("HOSTWATCH_PEERS_CACHE", "/var/cache/hostwatch-peers"))
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real" / "apache_access_semicomplete.log"


def start(args: list[str], health: str) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(health, timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{args[0]} did not start")


def output(name: str, **options: str):
    registry = load_registry()
    spec = parse_config({"outputs": {name: [options]}}, environ={}, registry=registry).outputs[0]
    return spec.plugin(spec.config, output_context(name))


def metric_batches() -> list[Batch]:
    now = time.time_ns()
    batches = []
    for b in range(BATCHES):
        # 500 series (like a host's), 4 points each per batch, advancing in time
        items = [
            Sample(
                "bench_value",
                float(i),
                "gauge",
                (("cpu", str(i % 500)), ("mode", "user")),
                now - (BATCHES - b) * 10_000_000_000 + (i // 500) * 1_000_000,
            )
            for i in range(BATCH)
        ]
        batches.append(Batch(Signal.METRICS, items))
    return batches


def log_batches() -> list[Batch]:
    lines = CORPUS.read_text().splitlines() if CORPUS.exists() else [f"line {i} " + "x" * 200 for i in range(10000)]
    now = time.time_ns() - BATCHES * BATCH * 1000
    labels = (("filename", "/var/log/apache2/access.log"), ("job", "bench"))
    batches, n = [], 0
    for _ in range(BATCHES):
        items = []
        for _ in range(BATCH):
            items.append(LogRecord(now + n * 1000, lines[n % len(lines)], labels))
            n += 1
        batches.append(Batch(Signal.LOGS, items))
    return batches


async def push(out, batches: list[Batch]) -> tuple[float, int]:
    await out.start()
    try:
        started = time.perf_counter()
        for batch in batches:
            result = await out.export(batch)
            if result.kind is not ResultKind.OK:
                raise SystemExit(f"push failed: {result}")
        return time.perf_counter() - started, sum(len(b) for b in batches)
    finally:
        await out.close()


def main() -> int:
    vm_bin = shutil.which("victoria-metrics")
    vl_bin = CACHE / "bin" / "victoria-logs"
    vmt_bin = CACHE / "bin" / "victoria-metrics-trixie"
    if not vm_bin or not vl_bin.exists() or not vmt_bin.exists():
        raise SystemExit("peers missing: run tests/peers/install.sh")
    from agent.runtime import install_event_loop_policy

    install_event_loop_policy()
    with tempfile.TemporaryDirectory() as tmp:
        vm_port, vl_port, vmt_port = free_port(), free_port(), free_port()
        procs = [
            start(
                [vm_bin, f"-storageDataPath={tmp}/vm", f"-httpListenAddr=127.0.0.1:{vm_port}"],
                f"http://127.0.0.1:{vm_port}/health",
            ),
            start(
                [str(vmt_bin), f"-storageDataPath={tmp}/vmt", f"-httpListenAddr=127.0.0.1:{vmt_port}"],
                f"http://127.0.0.1:{vmt_port}/health",
            ),
            start(
                [
                    str(vl_bin),
                    f"-storageDataPath={tmp}/vl",
                    f"-httpListenAddr=127.0.0.1:{vl_port}",
                    "-retentionPeriod=100y",
                ],
                f"http://127.0.0.1:{vl_port}/health",
            ),
        ]
        try:
            metrics, logs = metric_batches(), log_batches()
            cases = [
                (
                    "remote_write -> VictoriaMetrics",
                    output("remote_write", url=f"http://127.0.0.1:{vm_port}/api/v1/write"),
                    metrics,
                    "samples",
                ),
                (
                    "otlp http/protobuf -> VictoriaMetrics (trixie)",
                    output("otlp", endpoint=f"http://127.0.0.1:{vmt_port}/opentelemetry", signals=["metrics"]),
                    metrics,
                    "points",
                ),
                (
                    "loki protobuf+snappy -> VictoriaLogs",
                    output("loki", url=f"http://127.0.0.1:{vl_port}/insert/loki/api/v1/push"),
                    logs,
                    "lines",
                ),
            ]
            print(f"{BATCHES} requests of {BATCH} items each, one in flight (as the engine sends)")
            for name, out, batches, unit in cases:
                seconds, items = asyncio.run(push(out, batches))
                print(f"  {name:<48} {items / seconds:>10,.0f} {unit}/s  ({seconds:.2f} s)")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
