"""Durable delivery with the agent as a real process and real receivers:
kill -9 under load, an outage, a buffer smaller than the outage, damaged buffers, a slow receiver.

The source is the ``sequence`` collector: numbers 0, 1, 2, … resumed after a restart from
the last number every output acknowledged, so a receiver holding every number lost nothing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess
from tests.peers.fixtures_backends import _http_ok

pytestmark = [pytest.mark.e2e, pytest.mark.peers]


def restart(peer) -> None:
    peer.server.stop()
    peer.server.start(_http_ok(peer.url + "/health"))


def numbers_at(vm, name: str = "hostwatch_sequence") -> list[int]:
    """Every raw sample of the sequence, up to an hour ahead (the default stops at now)."""
    vm.force_flush()
    query = urllib.parse.urlencode({"match[]": name, "end": f"{time.time() + 3600:.0f}"})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{query}", timeout=30) as resp:
        body = resp.read()
    values: list[int] = []
    for line in body.splitlines():
        values.extend(int(v) for v in json.loads(line)["values"])
    return values


def acked_next(agent: AgentProcess) -> int:
    path = agent.state_dir / "collectors" / "sequence" / "sequence.json"
    try:
        return json.loads(path.read_text())["next"]
    except (OSError, ValueError, KeyError):
        return 0


def queued(agent: AgentProcess) -> int:
    return sum(o["queued_items"] for o in agent.detailed()["outputs"].values())


def segments(agent: AgentProcess, output: str, signal: str = "metrics") -> list[Path]:
    return sorted((agent.state_dir / "buffer" / output / signal).glob("*.seg"))


def report(what: str, total: int, values: list[int]) -> tuple[int, int]:
    lost = len(set(range(total)) - set(values))
    duplicated = len(values) - len(set(values))
    print(f"\n[{what}] lost {lost} / duplicated {duplicated} / total {total}")
    return lost, duplicated


def test_kill_9_twenty_times_under_load_loses_nothing(victoria_metrics, tmp_path) -> None:
    count, batch = 20_000, 500
    agent = AgentProcess(
        tmp_path,
        f"""
[[collectors.sequence]]
rate = 1000
count = {count}
[[outputs.remote_write]]
url = "{victoria_metrics.remote_write_url}"
flush_interval = "250ms"
batch_max_items = {batch}
""",
    )
    seed = int(os.environ.get("HOSTWATCH_TEST_SEED", time.time()))
    rng = random.Random(seed)
    print(f"\nseed {seed}")
    try:
        for _ in range(20):
            agent.start()
            time.sleep(rng.uniform(0.1, 1.2))
            agent.kill()
        agent.start()
        agent.wait(lambda: acked_next(agent) == count and queued(agent) == 0, 90, "sequence delivered")
        assert agent.stop() == 0
    finally:
        agent.close()
    lost, duplicated = report("kill -9 x20", count, numbers_at(victoria_metrics))
    assert lost == 0
    assert duplicated <= 20 * batch


def test_outage_fills_segments_then_everything_arrives_and_rss_stays_flat(victoria_metrics, tmp_path) -> None:
    agent = AgentProcess(
        tmp_path,
        f"""
[[collectors.sequence]]
rate = 2000
[[outputs.remote_write]]
url = "{victoria_metrics.remote_write_url}"
flush_interval = "200ms"
buffer_max_bytes = "8MiB"
retry_initial = "200ms"
retry_max = "1s"
""",
    )
    try:
        agent.start()
        time.sleep(3)
        before = agent.rss_kib()
        victoria_metrics.server.stop()
        samples = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            samples.append(agent.rss_kib())
            time.sleep(0.5)
        filled = len(segments(agent, "remote_write"))
        buffered = agent.metric('hostwatch_buffer_items{output="remote_write"}')
        restart(victoria_metrics)
        agent.wait(lambda: queued(agent) == 0, 60, "buffer drained")
        assert agent.stop() == 0
        total = acked_next(agent)
    finally:
        agent.close()
    growth = (max(samples) - before) / 1024
    print(
        f"\n[outage] {filled} segments, {buffered:.0f} items buffered; RSS before {before / 1024:.1f} MiB, "
        f"max during {max(samples) / 1024:.1f} MiB (growth {growth:.1f} MiB)"
    )
    assert filled >= 3, "the outage should span several segments"
    assert growth <= 10
    values = numbers_at(victoria_metrics)
    lost, _ = report("outage", total, values)
    assert lost == 0


def test_drop_oldest_counts_exactly_and_the_newest_arrives(victoria_metrics, tmp_path) -> None:
    agent = AgentProcess(
        tmp_path,
        f"""
[[collectors.sequence]]
rate = 3000
count = 40000
[[outputs.remote_write]]
url = "{victoria_metrics.remote_write_url}"
flush_interval = "200ms"
buffer_max_bytes = "256KiB"
batch_max_bytes = "64KiB"
retry_initial = "200ms"
retry_max = "500ms"
""",
    )
    try:
        agent.start()
        victoria_metrics.server.stop()
        agent.wait(
            lambda: (
                agent.metric('hostwatch_output_dropped_items_total{output="remote_write",reason="buffer_full"}') > 5000
            ),
            30,
            "drops while the receiver is down",
        )
        restart(victoria_metrics)
        agent.wait(lambda: acked_next(agent) == 40000 and queued(agent) == 0, 60, "sequence done")
        dropped = agent.metric('hostwatch_output_dropped_items_total{output="remote_write",reason="buffer_full"}')
        other_drops = agent.get("/health/detailed")
        assert agent.stop() == 0
    finally:
        agent.close()
    values = numbers_at(victoria_metrics)
    lost, duplicated = report("drop_oldest", 40000, values)
    print(f"[drop_oldest] counted as dropped: {dropped:.0f}")
    assert duplicated == 0
    assert lost == dropped, "every missing number is counted, and nothing else"
    assert max(values) == 39999, "the newest data arrived after recovery"
    assert json.loads(other_drops[1])["outputs"]["remote_write"]["dropped_items"] == {"buffer_full": lost}


def test_block_pauses_the_source_and_drops_nothing(victoria_logs, tmp_path) -> None:
    rate = 3000
    agent = AgentProcess(
        tmp_path,
        f"""
[[collectors.sequence]]
signal = "logs"
rate = {rate}
count = 30000
[[outputs.loki]]
url = "{victoria_logs.loki_push_url}"
flush_interval = "200ms"
batch_max_items = 2000
buffer_max_bytes = "256KiB"
batch_max_bytes = "64KiB"
retry_initial = "200ms"
retry_max = "500ms"
""",
    )
    try:
        agent.start()
        victoria_logs.server.stop()
        time.sleep(3)
        paused_at = acked_next(agent)
        time.sleep(4)
        assert acked_next(agent) - paused_at < rate, "the source keeps pace although nothing is delivered"
        # bounded: the buffer, plus at most the pending batch and the one waiting to be queued
        # (batch_max_items = 2000 records of ~40 bytes each)
        assert agent.metric('hostwatch_buffer_bytes{output="loki"}') <= 256 * 1024 + 2 * 2000 * 40
        restart(victoria_logs)
        agent.wait(lambda: acked_next(agent) == 30000 and queued(agent) == 0, 60, "sequence done")
        assert agent.stop() == 0
        log = agent.log_tail(20000)
    finally:
        agent.close()
    rows = victoria_logs.wait_for("seq", count=30000, timeout=20) if False else _all_rows(victoria_logs, 30000)
    values = [int(r["_msg"].split()[1]) for r in rows]
    lost, duplicated = report("block", 30000, values)
    assert lost == 0 and duplicated == 0
    assert "dropped" not in log


def _all_rows(victoria_logs, expected: int) -> list[dict]:
    deadline = time.monotonic() + 20
    while True:
        rows = victoria_logs.query('"seq"', limit=expected * 2)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def buffered_behind_a_dead_backend(tmp_path: Path) -> tuple[AgentProcess, str]:
    """An agent that put 6,000 numbers into its disk buffer for a remote-write URL nothing listens
    on (batches of 200 in several segments), then was killed; and that URL. The caller damages
    the segments, points the configuration at a live backend and starts the agent again."""
    dead = f"http://127.0.0.1:{_closed_port()}/api/v1/write"
    body = f"""
[[collectors.sequence]]
rate = 5000
count = 6000
[[outputs.remote_write]]
url = "{dead}"
flush_interval = "100ms"
batch_max_items = 200
buffer_max_bytes = "1MiB"
batch_max_bytes = "256KiB"
"""
    agent = AgentProcess(tmp_path, body)
    try:
        agent.start()
        agent.wait(lambda: acked_next(agent) == 6000, 30, "all numbers buffered")
        agent.kill()
    except BaseException:
        agent.close()
        raise
    return agent, dead


def test_damaged_buffers_are_cut_counted_and_the_rest_delivered(victoria_metrics, tmp_path) -> None:
    agent, dead = buffered_behind_a_dead_backend(tmp_path)
    try:
        segs = segments(agent, "remote_write")
        assert len(segs) >= 2
        with open(segs[-1], "r+b") as f:  # a torn tail: the last record cut in half
            f.truncate(f.seek(0, 2) - 50)
        data = bytearray(segs[0].read_bytes())
        data[len(data) // 2] ^= 0xFF  # a flipped byte in the middle of the first segment
        segs[0].write_bytes(bytes(data))
        agent.config.write_text(agent.config.read_text().replace(dead, victoria_metrics.remote_write_url))
        agent.start()
        agent.wait(lambda: queued(agent) == 0, 30, "intact records delivered")
        corrupt = agent.metric('hostwatch_buffer_corrupt_records_total{output="remote_write"}')
        assert agent.stop() == 0
    finally:
        agent.close()
    values = numbers_at(victoria_metrics)
    lost, _ = report("corruption", 6000, values)
    assert corrupt == 2
    assert 0 < lost <= 2 * 200, "only the two damaged records' items are missing"
    assert "damaged record" in agent.log_tail(50000)


def test_a_full_disk_is_reported_and_counted(victoria_metrics, tmp_path) -> None:
    count = 20000
    agent = AgentProcess(
        tmp_path,
        f"""
[[collectors.sequence]]
rate = 4000
count = {count}
[[outputs.remote_write]]
url = "{victoria_metrics.remote_write_url}"
flush_interval = "100ms"
buffer_write_delay = "0s"
""",
    )
    buffers = agent.state_dir / "buffer"
    buffers.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(buffers)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here; ENOSPC is covered by tests/unit/test_buffer.py")
    dropped = 'hostwatch_output_dropped_items_total{output="remote_write",reason="buffer_write_error"}'
    try:
        victoria_metrics.server.stop()
        agent.start()
        agent.wait(lambda: agent.metric(dropped) > 0, 30, "drops on a full disk")
        assert agent.get("/live")[0] == 200
        restart(victoria_metrics)
        agent.wait(lambda: acked_next(agent) == count and queued(agent) == 0, 60, "sequence done")
        lost_counted = agent.metric(dropped)
        assert agent.stop() == 0
    finally:
        agent.close()
        subprocess.run(["umount", "-l", str(buffers)])
    lost, duplicated = report("full disk", count, numbers_at(victoria_metrics))
    assert "No space left on device" in agent.log_tail(50000)
    assert lost == lost_counted > 0, "what the disk refused is counted exactly, the rest delivered"
    assert duplicated == 0


class _Slow(BaseHTTPRequestHandler):
    delay = 5.0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_slow_receiver_holds_back_nobody_else(victoria_metrics, tmp_path) -> None:
    slow = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    agent = AgentProcess(
        tmp_path,
        f"""
[[collectors.sequence]]
rate = 500
[[collectors.cpu]]
interval = "500ms"
[[outputs.remote_write]]
alias = "slow"
url = "http://127.0.0.1:{slow.server_address[1]}/api/v1/write"
flush_interval = "200ms"
timeout = "30s"
[[outputs.remote_write]]
alias = "fast"
url = "{victoria_metrics.remote_write_url}"
flush_interval = "200ms"
""",
    )
    try:
        agent.start()
        time.sleep(6)
        emitted = acked_next(agent)
        details = agent.detailed()
        fresh = numbers_at(victoria_metrics)
    finally:
        agent.close()
        slow.shutdown()
    print(
        f"\n[slow receiver] fast output has {len(set(fresh))} numbers after 6 s; "
        f"slow output sent {details['outputs']['slow']['queued_items']} queued"
    )
    assert details["collectors"]["cpu"]["runs"] >= 10, "collectors keep their cadence"
    assert len(set(fresh)) >= emitted - 500, "the fast output keeps up with the source"
    assert details["outputs"]["slow"]["queued_items"] > 0


def _closed_port() -> int:
    from tests.support import free_port

    return free_port()


def test_a_backend_down_at_start_gets_everything_once_it_comes_up(victoria_metrics, tmp_path) -> None:
    """With a memory buffer (no disk at all), nothing is lost while the queue has room."""
    victoria_metrics.server.stop()
    agent = AgentProcess(
        tmp_path,
        f"""
[[collectors.sequence]]
rate = 1000
count = 5000
[[outputs.remote_write]]
url = "{victoria_metrics.remote_write_url}"
buffer = "memory"
flush_interval = "200ms"
retry_initial = "200ms"
retry_max = "1s"
""",
    )
    try:
        agent.start()
        time.sleep(3)
        assert agent.get("/ready")[0] == 503, "an output failing since start-up is reported"
        restart(victoria_metrics)
        agent.wait(lambda: acked_next(agent) == 5000 and queued(agent) == 0, 30, "sequence delivered")
        assert agent.get("/ready")[0] == 200
        assert agent.stop() == 0
    finally:
        agent.close()
    lost, duplicated = report("down at start", 5000, numbers_at(victoria_metrics))
    assert lost == 0 and duplicated == 0
    assert not list(agent.state_dir.glob("buffer/**/*.seg")), "a memory buffer writes nothing to disk"
