"""Scrape parsing speed: samples per second on one core, cold (first scrape) and warm (repeat).

``python -m tests.bench.bench_scrape`` parses a generated exposition of about
10 MB (histograms with method/path/code labels, counters, gauges: what an
instrumented web app exposes, scaled up) through the collector's own parse
step: body bytes to ``Sample`` values with the target's labels attached.
"Cold" is a target's first scrape (every series is new: its labels are taken
apart, target labels and relabeling applied); "warm" is every scrape after
that, with new values each time (two bodies, the same series, alternate):
"in step" when the body has the previous one's series in the same order (the
usual case), "cache only" when it does not (a series came or went: lines are
looked up in the series cache one by one, in bulk). In the same run, the same
bodies go through the line-by-line parser hostwatch used before
(``tests/unit/collectors/scrape_reference.py``), round for round. Then
(unless ``--no-peers``) the same body is served over HTTP to Prometheus 2.42
and to vmagent (writing into VictoriaMetrics), and the
``scrape_duration_seconds`` each of them records for it (request, parse and
append: the fair common measure, neither exposes its parser alone) is printed
next to hostwatch's own for the same scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from agent.config.validation import convert
from agent.emitter import RunEmitter
from collectors.scrape.relabel import Relabeler
from collectors.scrape.scrape import Config, PrometheusScrapeCollector
from tests.support import collector_context
from tests.unit.collectors import scrape_reference

PATHS = [f"/api/v1/resource{i}/{{id}}" for i in range(40)]
METHODS = ["GET", "POST", "PUT", "DELETE"]
CODES = ["200", "201", "400", "404", "500"]
BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"]


def exposition(target_bytes: int = 10 << 20, variant: int = 0) -> bytes:
    """A text-format body of about ``target_bytes``: app-like histograms, counters, gauges.
    Another ``variant`` has the same series with other values."""
    out: list[str] = []
    size, shard = 0, 0
    while size < target_bytes:
        lines = [
            f"# HELP http_request_duration_seconds_{shard} Request latency.",
            f"# TYPE http_request_duration_seconds_{shard} histogram",
        ]
        for path in PATHS:
            for method in METHODS:
                for code in CODES:
                    labels = f'method="{method}",path="{path}",status="{code}"'
                    for i, le in enumerate(BUCKETS):
                        lines.append(
                            f'http_request_duration_seconds_{shard}_bucket{{{labels},le="{le}"}} {i * 7 + variant}'
                        )
                    lines.append(f"http_request_duration_seconds_{shard}_sum{{{labels}}} {123.456 + variant * 0.7:g}")
                    lines.append(f"http_request_duration_seconds_{shard}_count{{{labels}}} {77 + variant}")
        lines.append(f"# TYPE app_queue_depth_{shard} gauge")
        lines.extend(f'app_queue_depth_{shard}{{queue="q{i}"}} {i}' for i in range(200))
        lines.append(f"# TYPE app_events_{shard}_total counter")
        lines.extend(f"app_events_{shard}_total {i}" for i in range(1))
        chunk = "\n".join(lines) + "\n"
        out.append(chunk)
        size += len(chunk)
        shard += 1
    return "".join(out).encode()


def hostwatch_parse(bodies: list[bytes], rounds: int = 5) -> dict[str, float]:
    """Seconds per parse, best of ``rounds``: hostwatch's, and the line-by-line parser's before it, interleaved."""
    config = convert({"job": "bench", "targets": ["127.0.0.1:9999"], "sample_limit": 0}, Config)
    collector = PrometheusScrapeCollector(config, collector_context(Path(tempfile.mkdtemp())))
    content_type = "text/plain; version=0.0.4"

    def ours(state, body: bytes, plan: bool = True) -> int:
        if not plan:
            state.plan = None
        return len(collector._parse(state, body, content_type, time.time_ns(), RunEmitter(0)).rows)

    def before(cache: dict, body: bytes) -> tuple[int, dict]:
        current: dict = {}
        result = scrape_reference.scan(
            body.decode("utf-8", "replace"),
            openmetrics=False,
            resolve=resolver.resolve,
            previous=cache,
            current=current,
            time_ns=time.time_ns(),
            max_samples=0,
        )
        return len(result.rows), current

    state = collector._new_state(collector._static[0])
    resolver = scrape_reference.Resolver(
        state.resolver.target_labels,
        honor_labels=False,
        relabeler=Relabeler([]),
        label_limit=config.label_limit,
        name_length_limit=config.label_name_length_limit,
        value_length_limit=config.label_value_length_limit,
    )
    times: dict[str, list[float]] = {}

    def timed(name: str, call, *args):
        gc.collect()
        started = time.perf_counter()
        result = call(*args)
        times.setdefault(name, []).append(time.perf_counter() - started)
        return result

    samples, cache = 0, {}
    for _ in range(2):  # the first scrape, twice each (a new target each time)
        state = collector._new_state(collector._static[0])
        samples = timed("cold", ours, state, bodies[0])
        _, cache = timed("cold_before", before, {}, bodies[0])
    for i in range(rounds):
        body = bodies[(i + 1) % len(bodies)]
        timed("warm", ours, state, body)
        _, cache = timed("warm_before", before, cache, body)
    # one series more near the start of the body, then gone again: every scrape is a change
    changed = bodies[0].replace(
        b"# TYPE app_queue_depth_0 gauge\n", b"# TYPE app_queue_depth_0 gauge\napp_queue_depth_0 1\n"
    )
    for i in range(rounds):
        timed("warm_changed", ours, state, (changed, bodies[0])[i % 2])
    for i in range(rounds):
        timed("warm_cache_only", ours, state, bodies[i % len(bodies)], False)
    figures: dict[str, float] = {"samples": samples, "bytes": len(bodies[0])}
    for name, values in times.items():
        figures[f"{name}_seconds"] = min(values)
        figures[f"{name}_samples_per_s"] = samples / min(values)
    return figures


def cache_memory(body: bytes) -> dict[str, float]:
    """Bytes a target keeps between scrapes (series cache, plan, shared label pairs) after its first
    scrape of ``body``: hostwatch's, and the line-by-line parser's before it (its cache)."""
    import tracemalloc

    config = convert({"job": "bench", "targets": ["127.0.0.1:9999"], "sample_limit": 0}, Config)
    collector = PrometheusScrapeCollector(config, collector_context(Path(tempfile.mkdtemp())))
    figures = {}
    for name in ("hostwatch", "before"):
        state = collector._new_state(collector._static[0])
        gc.collect()
        tracemalloc.start()
        if name == "hostwatch":
            collector._parse(state, body, "text/plain; version=0.0.4", time.time_ns(), RunEmitter(0))
        else:
            resolver = scrape_reference.Resolver(
                state.resolver.target_labels,
                honor_labels=False,
                relabeler=Relabeler([]),
                label_limit=config.label_limit,
                name_length_limit=config.label_name_length_limit,
                value_length_limit=config.label_value_length_limit,
            )
            cache: dict = {}
            text = body.decode()
            resolve = resolver.resolve
            scrape_reference.scan(text, openmetrics=False, resolve=resolve, previous={}, current=cache, time_ns=1)
            del text
        gc.collect()
        figures[name] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del state
    return figures


# --------------------------------------------------------------- the peers, for comparison


class _Body(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def _query(url: str, promql: str) -> list:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}") as r:
        return json.loads(r.read())["data"]["result"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(fetch, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fetch()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("peer did not report in time")


def peers(body: bytes, scrapes: int = 5) -> dict[str, list[float]]:
    """scrape_duration_seconds of Prometheus and of vmagent (into VictoriaMetrics) for the same body."""
    _Body.body = body
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Body)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{server.server_port}"
    home = Path(tempfile.mkdtemp())
    found: dict[str, list[float]] = {}
    procs: list[subprocess.Popen] = []
    try:
        scrape = (
            "global: {scrape_interval: 5s, scrape_timeout: 5s}\n"
            f"scrape_configs: [{{job_name: bench, sample_limit: 0, static_configs: [{{targets: ['{target}']}}]}}]\n"
        )
        (home / "prom.yml").write_text(scrape)
        prom_port, vm_port = _free_port(), _free_port()
        procs.append(
            subprocess.Popen(
                [
                    shutil.which("prometheus") or "prometheus",
                    f"--config.file={home / 'prom.yml'}",
                    f"--storage.tsdb.path={home / 'prom'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        vmagent_port = _free_port()
        procs.append(
            subprocess.Popen(
                [
                    shutil.which("victoria-metrics") or "victoria-metrics",
                    f"-storageDataPath={home / 'vm'}",
                    f"-httpListenAddr=127.0.0.1:{vm_port}",
                    "-search.latencyOffset=0s",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    shutil.which("vmagent") or "vmagent",
                    f"-promscrape.config={home / 'prom.yml'}",
                    "-promscrape.maxScrapeSize=64MB",
                    f"-remoteWrite.url=http://127.0.0.1:{vm_port}/api/v1/write",
                    f"-remoteWrite.tmpDataPath={home / 'vmagent'}",
                    f"-httpListenAddr=127.0.0.1:{vmagent_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        query = "scrape_duration_seconds[10m]"
        for name, port in (("prometheus", prom_port), ("vmagent", vm_port)):
            url = f"http://127.0.0.1:{port}"

            def fetch(url: str = url, flush: bool = name == "vmagent") -> list:
                if flush:
                    urllib.request.urlopen(f"{url}/internal/force_flush").read()
                result = _query(url, query)
                return result if result and len(result[0]["values"]) >= scrapes else []

            found[name] = [float(v) for _, v in _wait(fetch, timeout=30 + 6 * scrapes)[0]["values"]]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        server.shutdown()
        shutil.rmtree(home, ignore_errors=True)
    return found


async def hostwatch_scrape(body: bytes, scrapes: int = 5) -> list[float]:
    """hostwatch's scrape_duration_seconds for the same body over HTTP (fetch, parse, samples)."""
    _Body.body = body
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Body)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{server.server_port}"
    config = convert({"job": "bench", "targets": [target], "sample_limit": 0, "body_size_limit": "1GiB"}, Config)
    collector = PrometheusScrapeCollector(config, collector_context(Path(tempfile.mkdtemp()), timeout=30.0))
    durations = []
    try:
        for _ in range(scrapes):
            emitter = RunEmitter(time.time_ns())
            await collector.collect(emitter)
            durations.append(next(s.value for s in emitter.samples if s.name == "scrape_duration_seconds"))
    finally:
        await collector.close()
        server.shutdown()
    return durations


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=10.0, help="exposition size in MB")
    parser.add_argument("--no-peers", action="store_true", help="skip timing Prometheus and vmagent on the same body")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    size = int(args.mb * (1 << 20))
    bodies = [exposition(size), exposition(size, variant=1)]
    body = bodies[0]
    f = hostwatch_parse(bodies)
    print(f"parse {f['bytes'] / 1e6:.1f} MB, {f['samples']} samples, best of 2 (cold) or 5 (warm) in this run:")
    for label, key in (
        ("first scrape", "cold"),
        ("later scrapes, in step", "warm"),
        ("a series came or went", "warm_changed"),
        ("later scrapes, cache only", "warm_cache_only"),
    ):
        line = f"  {label:26s} hostwatch {f[key + '_seconds']:.3f}s = {f[key + '_samples_per_s'] / 1e6:.2f} M samples/s"
        if key + "_before_seconds" in f:
            line += (
                f" | line-by-line parser before {f[key + '_before_seconds']:.3f}s"
                f" = {f[key + '_before_samples_per_s'] / 1e6:.2f} M samples/s"
            )
        print(line)
    memory = cache_memory(body)
    print(
        f"  kept between scrapes       hostwatch {memory['hostwatch'] / 1e6:.0f} MB"
        f" | line-by-line parser before {memory['before'] / 1e6:.0f} MB"
    )
    missing = [b for b in ("prometheus", "vmagent", "victoria-metrics") if not shutil.which(b)]
    if missing and not args.no_peers:
        print(f"peers not timed: {', '.join(missing)} not installed (tests/peers/install.sh)")
    elif not args.no_peers:
        ours = asyncio.run(hostwatch_scrape(body))
        print(f"scrape_duration_seconds hostwatch: first {ours[0]:.3f}s, then min {min(ours[1:]):.3f}s")
        for name, values in peers(body).items():
            print(f"scrape_duration_seconds {name}: first {values[0]:.3f}s, then min {min(values[1:]):.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
