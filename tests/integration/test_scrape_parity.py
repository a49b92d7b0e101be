"""prometheus_scrape side by side with vmagent and with Prometheus in agent mode.

The same targets are scraped every second by three scrapers, each remote-writing
into a VictoriaMetrics of its own (the same binary): hostwatch (the agent as a
process: the prometheus_scrape collector and the remote_write output), vmagent
(Debian's victoria-metrics package ships it) and ``prometheus --enable-feature=agent``.
The targets: fixed expositions in the text format and in OpenMetrics served by a tiny
HTTP server, a prometheus_client app with a histogram and a summary, node_exporter,
Prometheus' own /metrics, VictoriaMetrics' /metrics and RabbitMQ's rabbitmq_prometheus plugin.

What must match: for the fixed and the prometheus_client targets, every series and
its value; for the live targets (their values move), the series sets. The one
allowed difference is by design: Prometheus 2.42 and vmagent store ``_created``
series, hostwatch does not (they are start times, not samples).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, start_http_server

from tests.e2e.agentproc import AgentProcess
from tests.peers.fixtures_backends import VictoriaMetrics, _need, _victoria_metrics
from tests.support import free_port

pytestmark = pytest.mark.peers

TEXT = """# HELP http_requests_total Requests handled.
# TYPE http_requests_total counter
http_requests_total{method="GET",code="200"} 1027
http_requests_total{method="POST",code="500"} 3
# HELP http_request_duration_seconds Latency.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="1.0"} 100392
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423.5
http_request_duration_seconds_count 144320
# HELP rpc_duration_seconds RPC latency.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.99"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
# TYPE temperature_celsius gauge
temperature_celsius{sensor="a b",path="C:\\\\dir\\\\f",quote="say \\"x\\""} -3.5e-2
temperature_celsius{sensor="inf"} +Inf
untyped_thing{x="1,}= y"} 42
metric_without_labels 12.25
"""

OPENMETRICS = """# TYPE jobs counter
# HELP jobs Jobs done.
jobs_total{queue="default"} 17
# TYPE lag histogram
lag_bucket{le="1.0"} 3
lag_bucket{le="+Inf"} 5
lag_sum 7.5
lag_count 5
# TYPE build info
build_info{version="1.2.3"} 1
# TYPE ratio gauge
ratio 0.25
# EOF
"""


class _Fixed(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        om = self.path.startswith("/om")
        body = (OPENMETRICS if om else TEXT).encode()
        kind = "application/openmetrics-text; version=1.0.0" if om else "text/plain; version=0.0.4"
        self.send_response(200)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fixed_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fixed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def client_app():
    """A prometheus_client app (its own registry: every value stays put between scrapes)."""
    registry = CollectorRegistry()
    Counter("orders", "Orders.", ["status"], registry=registry).labels("paid").inc(12)
    latency = Histogram("checkout_seconds", "Checkout latency.", ["route"], registry=registry)
    for v in (0.01, 0.2, 0.2, 3.0):
        latency.labels("/pay").observe(v)
    Summary("payload_bytes", "Payload.", registry=registry).observe(512)
    Gauge("carts_open", "Open carts.", registry=registry).set(7)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def vm_server(request, tmp_path: Path, name: str):
    binary = _need(shutil.which("victoria-metrics"), "victoria-metrics")
    generator = _victoria_metrics(request, tmp_path, binary, name)
    vm = next(generator)
    try:
        yield vm
    finally:
        with contextlib.suppress(StopIteration):
            next(generator)


def prometheus_yaml(jobs: dict[str, tuple[str, str]], remote_write: str | None) -> str:
    """A scrape config every scraper reads the same way (hostwatch gets the TOML equivalent)."""
    configs = [
        {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [address]}]}
        for job, (address, path) in jobs.items()
    ]
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": configs}
    if remote_write:
        config["remote_write"] = [{"url": remote_write}]
    return json.dumps(config)  # YAML is a superset of JSON


def hostwatch_toml(jobs: dict[str, tuple[str, str]], remote_write: str) -> str:
    parts = [
        f'[[collectors.prometheus_scrape]]\nalias = "{job}"\njob = "{job}"\ninterval = "1s"\n'
        f'targets = ["{address}"]\nmetrics_path = "{path}"\n'
        for job, (address, path) in jobs.items()
    ]
    parts.append(f'[[outputs.remote_write]]\nurl = "{remote_write}"\nflush_interval = "200ms"\n')
    return "\n".join(parts)


def stored(vm: VictoriaMetrics, jobs: list[str], since: float) -> dict[frozenset, float]:
    """Every series of ``jobs`` with a sample since ``since``, and its last value."""
    vm.force_flush()
    match = '{job=~"' + "|".join(jobs) + '"}'
    params = urllib.parse.urlencode({"match[]": match, "start": f"{since:.3f}"})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{params}", timeout=30) as response:
        lines = response.read().splitlines()
    out = {}
    for line in lines:
        head, _, tail = line.partition(b'"values":')  # VictoriaMetrics writes +Inf and NaN bare
        tail = tail.replace(b"+Inf", b"Infinity").replace(b"-Inf", b"-Infinity")
        item = json.loads(head + b'"values":' + tail)
        out[frozenset(item["metric"].items())] = item["values"][-1]
    return out


def names(series) -> set[str]:
    return {dict(s)["__name__"] for s in series}


def test_same_series_and_values_as_vmagent_and_prometheus_agent(
    request, tmp_path, fixed_server, client_app, node_exporter, prometheus, victoria_metrics, rabbitmq
) -> None:
    vmagent = _need(shutil.which("vmagent"), "vmagent (victoria-metrics package)")
    prometheus_bin = _need(shutil.which("prometheus"), "prometheus")
    node = urllib.parse.urlsplit(node_exporter)
    jobs = {
        "fixed_text": (fixed_server, "/metrics"),
        "fixed_om": (fixed_server, "/om"),
        "client_app": (client_app, "/metrics"),
        "node": (node.netloc, node.path),
        "prometheus": (urllib.parse.urlsplit(prometheus.url).netloc, "/metrics"),
        "victoriametrics": (urllib.parse.urlsplit(victoria_metrics.url).netloc, "/metrics"),
        "rabbitmq": (f"127.0.0.1:{rabbitmq.prometheus_port}", "/metrics"),
    }
    procs: list[subprocess.Popen] = []
    with (
        vm_server(request, tmp_path, "vm-hostwatch") as vm_hw,
        vm_server(request, tmp_path, "vm-vmagent") as vm_va,
        vm_server(request, tmp_path, "vm-prometheus") as vm_pa,
    ):
        agent = AgentProcess(tmp_path, hostwatch_toml(jobs, vm_hw.remote_write_url))
        try:
            agent.start()
            (tmp_path / "vmagent.yml").write_text(prometheus_yaml(jobs, None))
            (tmp_path / "prom-agent.yml").write_text(prometheus_yaml(jobs, vm_pa.remote_write_url))
            with open(tmp_path / "vmagent.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            vmagent,
                            f"-promscrape.config={tmp_path / 'vmagent.yml'}",
                            f"-remoteWrite.url={vm_va.remote_write_url}",
                            f"-remoteWrite.tmpDataPath={tmp_path / 'vmagent-data'}",
                            f"-httpListenAddr=127.0.0.1:{free_port()}",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            with open(tmp_path / "prom-agent.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            prometheus_bin,
                            "--enable-feature=agent",
                            f"--config.file={tmp_path / 'prom-agent.yml'}",
                            f"--storage.agent.path={tmp_path / 'prom-agent-data'}",
                            f"--web.listen-address=127.0.0.1:{free_port()}",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            time.sleep(4)  # every scraper has scraped a few times: the live targets' series sets settled
            since = time.time()
            compare(vm_hw, vm_va, vm_pa, list(jobs), since, tmp_path)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(15)
            agent.stop()


FIXED = ("fixed_text", "fixed_om", "client_app")
AUTO = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
        "scrape_series_added"}  # fmt: skip


COUNTS = {"scrape_samples_scraped", "scrape_samples_post_metric_relabeling", "scrape_series_added"}


def compare(vm_hw, vm_va, vm_pa, jobs: list[str], since: float, tmp_path: Path) -> None:
    deadline = time.monotonic() + 40
    while True:
        time.sleep(3)
        ours = stored(vm_hw, jobs, since)
        refs = {"vmagent": stored(vm_va, jobs, since), "prometheus agent": stored(vm_pa, jobs, since)}
        problems = []
        for who, theirs in refs.items():
            theirs_here = {s: v for s, v in theirs.items() if dict(s)["__name__"] in AUTO | names(ours)}
            theirs_here = {s: v for s, v in theirs_here.items() if not dict(s)["__name__"].endswith("_created")}
            # vmagent adds scrape_* series of its own (scrape_timeout_seconds ...): only Prometheus' five count
            theirs_here = {s: v for s, v in theirs_here.items() if not dict(s)["__name__"].startswith("scrape_")
                           or dict(s)["__name__"] in AUTO}  # fmt: skip
            missing, extra = set(theirs_here) - set(ours), set(ours) - set(theirs_here)
            if missing or extra:
                problems.append(f"{who}: hostwatch lacks {sorted(map(sorted, missing))[:5]} ({len(missing)}),"
                                f" has extra {sorted(map(sorted, extra))[:5]} ({len(extra)})")  # fmt: skip
            for s, value in ours.items():
                labels = dict(s)
                fixed_value = labels["job"] in FIXED and labels["__name__"] not in AUTO
                # sample counts too, where no _created series makes them differ by design
                counted = labels["job"] in ("fixed_text", "fixed_om") and labels["__name__"] in COUNTS
                if (fixed_value or counted or labels["__name__"] == "up") and s in theirs and theirs[s] != value:
                    problems.append(f"{who}: {sorted(labels.items())} = {theirs[s]}, hostwatch {value}")
            # the only series the reference has and hostwatch leaves out: _created and vmagent's own scrape_*
            left_out = names(set(theirs) - set(ours))
            unexpected = {n for n in left_out if not n.endswith("_created") and not n.startswith("scrape_")}
            if unexpected:
                problems.append(f"{who}: series hostwatch never produced: {sorted(unexpected)}")
        if not problems or time.monotonic() > deadline:
            break
        since = time.time() - 2  # live targets moved: compare a later window
    assert ours and {dict(s)["job"] for s in ours} == set(jobs)
    assert len([s for s in ours if dict(s)["job"] == "node"]) > 50
    assert len([s for s in ours if dict(s)["job"] == "rabbitmq"]) > 50
    assert not problems, "\n".join(problems)
