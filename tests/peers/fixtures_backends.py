"""Real metric and log backends on free loopback ports, one per test (DESIGN.md section 8).

``prometheus`` (remote-write receiver), ``victoria_metrics`` (bookworm's), ``victoria_metrics_otlp``
(trixie's 1.112, OTLP metrics), ``victoria_logs`` (Loki push, OTLP logs) and ``otelcol`` (the
reference OTLP receiver). Each starts in well under two seconds, so each is function-scoped: every
test gets an empty server of its own and can assert on everything it finds there. Data lives in the
test's ``tmp_path``; the process is stopped (SIGTERM, then SIGKILL) when the test ends. Extra
command-line flags can be passed with indirect parametrisation::

    @pytest.mark.parametrize("victoria_metrics_otlp", [["-opentelemetry.usePrometheusNaming"]], indirect=True)

The collector is read back through its otlp_http exporter, which posts to a capture server the
fixture runs: with the exporter's queue and retries off, the collector answers a client only after
the capture server has the data, so ``otelcol.requests("metrics")`` right after a successful export
already holds it, decoded into the opentelemetry-proto request type.

The built peers come from ``tests/peers/install.sh`` (``$HOSTWATCH_PEERS_CACHE/bin``, default
``/var/cache/hostwatch-peers/bin``). A missing binary skips the test with the command to run, or
fails it when ``HOSTWATCH_REQUIRE_PEERS`` is set (CI).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

CACHE = Path(os.environ.get("HOSTWATCH_PEERS_CACHE", "/var/cache/hostwatch-peers"))
INSTALL = "sudo tests/peers/install.sh"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _need(path: str | Path | None, what: str) -> str:
    """The binary's path, or skip (fail under HOSTWATCH_REQUIRE_PEERS) with what to run."""
    if path and Path(path).is_file() and os.access(path, os.X_OK):
        return str(path)
    reason = f"{what} is not installed ({path or 'not on PATH'}): run `{INSTALL}`"
    if os.environ.get("HOSTWATCH_REQUIRE_PEERS", "") not in ("", "0"):
        pytest.fail(reason)
    pytest.skip(reason)


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10.0) -> bytes:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _poll(fetch: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``fetch`` until it returns something truthy; the last value (or error) goes in the failure."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fetch()
            if last:
                return last
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: nothing after {timeout:g}s (last: {last!r})")
        time.sleep(0.1)


@dataclass
class Server:
    """A peer process: ``url`` is its HTTP base, ``log`` its stdout and stderr."""

    name: str
    args: list[str]
    url: str
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, ready: Callable[[], bool]) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        state = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "not ready"
        self.stop()
        raise RuntimeError(
            f"{self.name} {state} after start ({' '.join(self.args)}); its output ends:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _serve(server: Server, ready: Callable[[], bool], api: Any) -> Iterator[Any]:
    """The body of every fixture here: start, hand the API to the test, stop."""
    server.start(ready)
    try:
        yield api
    finally:
        server.stop()


def _http_ok(url: str) -> Callable[[], bool]:
    """Ready when ``url`` answers 2xx (urllib raises on anything else)."""

    def ready() -> bool:
        _http(url, timeout=1.0)
        return True

    return ready


def _extra(request: pytest.FixtureRequest) -> list[str]:
    return list(getattr(request, "param", None) or [])


# --- metrics: Prometheus and VictoriaMetrics ------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One series of a query result: its labels (``__name__`` included) and its (seconds, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]

    @property
    def value(self) -> float:
        return self.points[-1][1]


def _series(body: bytes) -> list[Series]:
    payload = json.loads(body)
    if payload.get("status") != "success":
        raise AssertionError(f"query failed: {payload}")
    data = payload["data"]
    if data["resultType"] == "scalar":
        return [Series({}, [(float(data["result"][0]), float(data["result"][1]))])]
    out = []
    for item in data["result"]:
        pairs = item["values"] if "values" in item else [item["value"]]
        out.append(Series(item["metric"], [(float(t), float(v)) for t, v in pairs]))
    return out


@dataclass
class PromAPI:
    """A Prometheus-compatible query API; ``remote_write_url`` takes remote-write 1.0."""

    server: Server
    remote_write_url: str

    @property
    def url(self) -> str:
        return self.server.url

    def flush(self) -> None:
        """Make just-written samples queryable (VictoriaMetrics buffers them; Prometheus needs nothing)."""

    def query(self, promql: str, at: float | None = None) -> list[Series]:
        """Instant query; ``name[5m]`` gives the raw samples of the last five minutes."""
        self.flush()
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return _series(_http(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"))

    def wait_for(self, promql: str, timeout: float = 10.0) -> list[Series]:
        """Poll until ``promql`` returns something."""
        return _poll(lambda: self.query(promql), timeout, f"{self.server.name} query {promql!r}")

    async def query_async(self, promql: str, at: float | None = None) -> list[Series]:
        return await asyncio.to_thread(self.query, promql, at)

    async def wait_for_async(self, promql: str, timeout: float = 10.0) -> list[Series]:
        return await asyncio.to_thread(self.wait_for, promql, timeout)

    def log_tail(self) -> str:
        return self.server.log_tail()


@dataclass
class VictoriaMetrics(PromAPI):
    """VictoriaMetrics: ``/api/v1/write``; the trixie build also ``otlp_metrics_url`` (OTLP protobuf)."""

    otlp_metrics_url: str = ""

    def force_flush(self) -> None:
        _http(f"{self.url}/internal/force_flush")

    flush = force_flush

    def export(self, match: str) -> list[dict[str, Any]]:
        """Raw samples of the series matching ``match``: ``[{"metric", "values", "timestamps"}]``."""
        self.force_flush()
        body = _http(f"{self.url}/api/v1/export?{urllib.parse.urlencode({'match[]': match})}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]


@pytest.fixture
def prometheus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PromAPI]:
    """Prometheus 2.42 with ``--web.enable-remote-write-receiver``, no scrape targets."""
    binary = _need(shutil.which("prometheus"), "prometheus")
    home = tmp_path / "prometheus"
    home.mkdir()
    (home / "prometheus.yml").write_text("global: {}\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        binary,
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-remote-write-receiver",
        *_extra(request),
    ]
    server = Server("prometheus", args, url, home / "output.log")
    yield from _serve(server, _http_ok(f"{url}/-/ready"), PromAPI(server, f"{url}/api/v1/write"))


def _victoria_metrics(
    request: pytest.FixtureRequest, tmp_path: Path, binary: str, name: str
) -> Iterator[VictoriaMetrics]:
    home = tmp_path / name
    home.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        binary,
        f"-storageDataPath={home / 'data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y",
        # answer with what was just written: no result cache, no hold-back of recent points
        "-search.disableCache",
        "-search.latencyOffset=0s",
        *_extra(request),
    ]
    server = Server(name, args, url, home / "output.log")
    api = VictoriaMetrics(server, f"{url}/api/v1/write", f"{url}/opentelemetry/v1/metrics")
    yield from _serve(server, _http_ok(f"{url}/health"), api)


@pytest.fixture
def victoria_metrics(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """Bookworm's victoria-metrics: remote-write at ``remote_write_url``."""
    binary = _need(shutil.which("victoria-metrics"), "victoria-metrics")
    yield from _victoria_metrics(request, tmp_path, binary, "victoria-metrics")


@pytest.fixture
def victoria_metrics_otlp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """Trixie's victoria-metrics 1.112: OTLP metrics (protobuf) at ``otlp_metrics_url``."""
    binary = _need(CACHE / "bin" / "victoria-metrics-trixie", "trixie's victoria-metrics")
    yield from _victoria_metrics(request, tmp_path, binary, "victoria-metrics-trixie")


# --- logs: VictoriaLogs ---------------------------------------------------------------------------


@dataclass
class VictoriaLogs:
    """VictoriaLogs: ``loki_push_url`` (JSON, gzip, protobuf+snappy) and ``otlp_logs_url``."""

    server: Server
    loki_push_url: str
    otlp_logs_url: str

    @property
    def url(self) -> str:
        return self.server.url

    def query(self, logsql: str, limit: int = 1000) -> list[dict[str, str]]:
        """Rows matching a LogsQL query (``*`` is all), each a dict with ``_msg``, ``_time``, ``_stream``..."""
        params = urllib.parse.urlencode({"query": logsql, "limit": limit})
        body = _http(f"{self.url}/select/logsql/query?{params}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def wait_for(self, logsql: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, str]]:
        """Poll until at least ``count`` rows match: ingested rows become searchable within about a second."""
        return _poll(
            lambda: (rows := self.query(logsql)) and len(rows) >= count and rows,
            timeout,
            f"victoria-logs query {logsql!r} for {count} rows",
        )

    async def wait_for_async(self, logsql: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, str]]:
        return await asyncio.to_thread(self.wait_for, logsql, count, timeout)

    def log_tail(self) -> str:
        return self.server.log_tail()


@pytest.fixture
def victoria_logs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VictoriaLogs]:
    binary = _need(CACHE / "bin" / "victoria-logs", "victoria-logs")
    home = tmp_path / "victoria-logs"
    home.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        binary,
        f"-storageDataPath={home / 'data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y",  # tests may push old timestamps: keep them rather than drop them
        *_extra(request),
    ]
    server = Server("victoria-logs", args, url, home / "output.log")
    api = VictoriaLogs(server, f"{url}/insert/loki/api/v1/push", f"{url}/insert/opentelemetry/v1/logs")
    yield from _serve(server, _http_ok(f"{url}/health"), api)


# --- the OpenTelemetry Collector --------------------------------------------------------------------

_REQUEST_TYPES = {
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
    "traces": ExportTraceServiceRequest,
}


@dataclass
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes


class _Capture(ThreadingHTTPServer):
    """Accepts what the collector's otlp_http exporter posts and keeps it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CaptureHandler)
        self.received: list[Captured] = []
        self.lock = threading.Lock()


class _CaptureHandler(BaseHTTPRequestHandler):
    server: _Capture

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with self.server.lock:
            self.server.received.append(Captured(self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class OtelCollector:
    """OTLP in at ``http_url`` (``/v1/metrics``...) and ``grpc_endpoint``; read back with ``requests``."""

    server: Server
    http_url: str
    grpc_endpoint: str
    capture: _Capture = field(repr=False)

    def requests(self, kind: str) -> list[Any]:
        """What the collector forwarded so far for ``kind`` ("metrics", "logs", "traces"), decoded."""
        message_type = _REQUEST_TYPES[kind]
        with self.capture.lock:
            bodies = [item.body for item in self.capture.received if item.path == f"/v1/{kind}"]
        return [message_type.FromString(body) for body in bodies]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        """Poll until at least ``count`` requests of ``kind`` arrived."""
        return _poll(lambda: (got := self.requests(kind)) and len(got) >= count and got, timeout, f"otelcol {kind}")

    def log_tail(self) -> str:
        """The collector's own log, with the debug exporter's detailed dump of each batch."""
        return self.server.log_tail()


@pytest.fixture
def otelcol(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OtelCollector]:
    binary = _need(CACHE / "bin" / "otelcol", "the OpenTelemetry Collector build")
    home = tmp_path / "otelcol"
    home.mkdir()
    capture = _Capture()
    threading.Thread(target=capture.serve_forever, name="otelcol-capture", daemon=True).start()
    http_port, grpc_port = _free_port(), _free_port()
    config = {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                    "http": {"endpoint": f"127.0.0.1:{http_port}"},
                }
            }
        },
        "exporters": {
            "debug": {"verbosity": "detailed"},
            "otlp_http": {
                "endpoint": f"http://127.0.0.1:{capture.server_address[1]}",
                "compression": "none",
                "sending_queue": {"enabled": False},
                "retry_on_failure": {"enabled": False},
            },
        },
        "service": {
            # level none: no own metrics server on port 8888
            "telemetry": {"metrics": {"level": "none"}},
            "pipelines": {
                kind: {"receivers": ["otlp"], "exporters": ["debug", "otlp_http"]} for kind in _REQUEST_TYPES
            },
        },
    }
    # JSON is YAML: the collector's file provider reads it as is
    (home / "config.yaml").write_text(json.dumps(config, indent=2))
    args = [binary, f"--config=file:{home / 'config.yaml'}", *_extra(request)]
    server = Server("otelcol", args, f"http://127.0.0.1:{http_port}", home / "output.log")
    api = OtelCollector(server, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", capture)

    def ready() -> bool:
        for port in (http_port, grpc_port):
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                pass
        return True

    try:
        yield from _serve(server, ready, api)
    finally:
        capture.shutdown()
        capture.server_close()
