"""Series and targets that disappear end at once in the backend, as with Prometheus' own scrapes.

The agent runs as a process with a prometheus_scrape instance reading a file_sd file and a
remote_write output into VictoriaMetrics. A series leaves its target's page, and a target
leaves the file: an instant query right afterwards no longer returns them (without a
staleness marker VictoriaMetrics would keep answering with the last value for minutes),
while the series that remain are still there.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.agentproc import AgentProcess

pytestmark = pytest.mark.peers


def page_server(body: dict) -> ThreadingHTTPServer:
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body["text"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_vanished_series_and_targets_end_at_once(tmp_path, victoria_metrics) -> None:
    first, second = {"text": "kept 1\nleaving 1\n"}, {"text": "other 1\n"}
    servers = [page_server(first), page_server(second)]
    a, b = (f"127.0.0.1:{s.server_port}" for s in servers)
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([{"targets": [a, b]}]))
    agent = AgentProcess(
        tmp_path,
        f'[[collectors.prometheus_scrape]]\njob = "app"\ninterval = "1s"\nfiles = ["{targets}"]\n'
        f'[[outputs.remote_write]]\nurl = "{victoria_metrics.remote_write_url}"\nflush_interval = "200ms"\n',
    )
    try:
        agent.start()
        victoria_metrics.wait_for('leaving{job="app"}', timeout=20)
        victoria_metrics.wait_for(f'up{{instance="{b}"}}', timeout=20)
        first["text"] = "kept 2\n"
        targets.write_text(json.dumps([{"targets": [a]}]))
        os.utime(targets, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            gone = not victoria_metrics.query("leaving") and not victoria_metrics.query(f'up{{instance="{b}"}}')
            if gone and not victoria_metrics.query("other"):
                break
            time.sleep(0.5)
        assert victoria_metrics.query("leaving") == []
        assert victoria_metrics.query(f'up{{instance="{b}"}}') == []
        assert victoria_metrics.query("other") == []
        [kept] = victoria_metrics.query("kept")
        assert kept.value == 2.0 and kept.labels["instance"] == a
        [up] = victoria_metrics.query('up{job="app"}')
        assert up.labels["instance"] == a and up.value == 1.0
    finally:
        agent.stop()
        for server in servers:
            server.shutdown()
            server.server_close()
