"""A misbehaving application floods the OTLP receiver: bounded memory, counted refusals, the agent unaffected.

The agent runs as a process with the receiver and the ``sequence`` collector feeding a memory-buffered
output (a scripted sink that accepts everything). Twenty threads send garbage, 50 MB bodies, zip bombs
and valid requests as fast as they can for a few seconds; meanwhile ``/health`` must keep answering
quickly, the sequence must keep flowing, resident memory must stay within a bound, and every refused
request must be counted.
"""

from __future__ import annotations

import gzip
import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.agentproc import AgentProcess
from tests.support import free_port

pytestmark = pytest.mark.e2e

FIFTY_MB = b"\x0a" * (50 * 1024 * 1024)
BOMB = gzip.compress(FIFTY_MB)


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def send(port: int, body: bytes, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/v1/logs", body=body, headers={"Content-Type": "application/x-protobuf", **headers})
        return connection.getresponse().status
    except (ConnectionError, http.client.HTTPException, TimeoutError):
        return 0  # the server may close the connection on an oversized body it did not read
    finally:
        connection.close()


MIXED = [
    (FIFTY_MB, {}),
    (BOMB, {"Content-Encoding": "gzip"}),
    (b"\xff\xfe garbage \xff", {}),
    (b"", {}),  # a valid, empty request
]


@pytest.mark.parametrize("kinds", [MIXED, MIXED[1:2]], ids=["mixed", "zip_bombs"])
def test_a_flood_of_bad_and_huge_requests_is_bounded_and_counted(tmp_path, kinds) -> None:
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    http_port = free_port()
    agent = AgentProcess(
        tmp_path,
        f"""
[[collectors.otlp]]
http_listen = "127.0.0.1:{http_port}"
grpc_listen = ""
max_request_bytes = "4MiB"
max_inflight_bytes = "16MiB"
max_concurrent_requests = 8
[[collectors.sequence]]
signal = "logs"
rate = 200
[[outputs.loki]]
url = "http://127.0.0.1:{sink.server_address[1]}/loki/api/v1/push"
buffer = "memory"
flush_interval = "200ms"
""",
    ).start()
    try:
        baseline = agent.rss_kib()
        statuses: list[int] = []
        lock = threading.Lock()
        stop = time.monotonic() + 6

        def flood(k: int) -> None:
            while time.monotonic() < stop:
                status = send(http_port, *kinds[k % len(kinds)])
                with lock:
                    statuses.append(status)

        threads = [threading.Thread(target=flood, args=(k,)) for k in range(20)]
        for thread in threads:
            thread.start()
        health, peak = [], baseline
        while any(t.is_alive() for t in threads):
            started = time.monotonic()
            assert agent.get("/health")[0] == 200
            health.append(time.monotonic() - started)
            peak = max(peak, agent.rss_kib())
            time.sleep(0.1)
        for thread in threads:
            thread.join()
        counted = sum(
            agent.metric(f'hostwatch_otlp_requests_total{{result="{result}",signal="logs",transport="http"}}')
            for result in ("ok", "malformed", "too_large", "busy")
        )
        by_status = {s: statuses.count(s) for s in set(statuses)}
        print(
            f"flood: {len(statuses)} requests {by_status}; /health worst {max(health) * 1000:.0f} ms;"
            f" RSS {baseline // 1024} MiB -> peak {peak // 1024} MiB"
        )
        assert 413 in by_status and (len(kinds) == 1 or {200, 400}.issubset(by_status))
        assert counted >= len(statuses) - by_status.get(0, 0)  # every answered request counted
        assert max(health) < 1.0, "the agent's own endpoint stalled under the flood"
        # bounds: 16 MiB in flight, 8 requests of at most 4 MiB as sent and 4 MiB inflated, and slack
        assert (peak - baseline) // 1024 < 90, "memory grew beyond the receiver's bounds"
        sequence = agent.metric('hostwatch_output_sent_items_total{output="loki",signal="logs"}')
        time.sleep(1.0)
        assert agent.metric('hostwatch_output_sent_items_total{output="loki",signal="logs"}') > sequence
        assert agent.stop() == 0
    finally:
        agent.close()
        sink.shutdown()
