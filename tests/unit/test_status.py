"""The status page's data: the history ring, the charts' points, /status.json, and the page's headers."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import status
from agent.config import load_config
from agent.exposition import LatestSamples
from agent.http import HttpServer
from agent.model import Sample
from agent.runtime import Agent
from agent.scheduler import RunState
from agent.status import History, Ring
from agent.status_assets import CONTENT_SECURITY_POLICY, PAGE_DIR, PageAssets

NS = 1_000_000_000


def counter(name: str, value: float, t: float, **labels: str) -> Sample:
    return Sample(name, value, "counter", tuple(sorted(labels.items())), int(t * NS))


def gauge(name: str, value: float, t: float, **labels: str) -> Sample:
    return Sample(name, value, "gauge", tuple(sorted(labels.items())), int(t * NS))


def cpu_run(t: float, user: float, system: float, idle: float, iowait: float = 0.0) -> list[Sample]:
    modes = {"user": user, "nice": 0.0, "system": system, "idle": idle, "iowait": iowait, "irq": 0.0}
    return [counter("node_cpu_seconds_total", v / 2, t, cpu=str(c), mode=m) for c in (0, 1) for m, v in modes.items()]


# ------------------------------------------------------------------ the ring


def test_ring_keeps_the_window_and_at_most_its_capacity() -> None:
    ring = Ring(("a",), window=60, capacity=5)
    for t in range(100, 110):
        ring.add(float(t), (t,))
    assert len(ring) == 5  # capacity
    assert ring.columns(now=109) == [[105, 106, 107, 108, 109], [105, 106, 107, 108, 109]]
    ring.add(200.0, (1,))  # a minute later: the old points left the window
    assert ring.columns(now=200) == [[200], [1]]
    assert ring.columns(now=300) == [[], []]  # nothing new for longer than the window


def test_ring_ignores_points_from_the_past_and_non_finite_values() -> None:
    ring = Ring(("a", "b"))
    ring.add(10.0, (1.0, float("nan")))
    ring.add(9.0, (2.0, 2.0))  # a clock step back
    ring.add(10.0, (3.0, 3.0))  # the same instant again
    assert ring.columns(now=10) == [[10.0], [1.0], [None]]


# ------------------------------------------------------------------ charts from collector runs


def test_cpu_points_are_percentages_of_all_cpu_time_between_runs() -> None:
    history = History()
    history.observe("cpu", cpu_run(100, user=10, system=10, idle=80))
    assert len(history.charts["cpu"]) == 0  # one run: no rate yet
    # 10 s later: +6 user, +2 system, +1 iowait, +11 idle = 20 s of CPU time
    history.observe("cpu", cpu_run(110, user=16, system=12, idle=91, iowait=1))
    times, user, system, iowait, steal = history.charts["cpu"].columns(now=110)
    assert times == [110.0]
    assert (user, system, iowait, steal) == ([30.0], [10.0], [5.0], [0.0])


def test_memory_disk_and_network_points_skip_virtual_devices_and_resets() -> None:
    history = History()
    for t, read, lo in ((100, 1000, 0), (110, 11000, 10**9), (120, 500, 2 * 10**9)):
        history.observe(
            "host",
            [
                gauge("node_memory_MemTotal_bytes", 8e9, t),
                gauge("node_memory_MemAvailable_bytes", 6e9, t),
                gauge("node_memory_Cached_bytes", 1e9, t),
                gauge("node_memory_Buffers_bytes", 1e8, t),
                counter("node_disk_read_bytes_total", read, t, device="sda"),
                counter("node_disk_read_bytes_total", 50 * read, t, device="dm-0"),  # on top of sda
                counter("node_disk_written_bytes_total", 0, t, device="sda"),
                counter("node_network_receive_bytes_total", 2000 * (t - 100), t, device="eth0"),
                counter("node_network_receive_bytes_total", lo, t, device="lo"),
                counter("node_network_transmit_bytes_total", lo, t, device="veth1234"),
            ],
        )
    mem = history.charts["memory"].columns(now=120)
    assert mem == [[100.0, 110.0, 120.0], [2e9] * 3, [1.1e9] * 3, [0.0] * 3]
    disk = history.charts["disk"].columns(now=120)
    assert disk == [[110.0, 120.0], [1000.0, None], [0.0, 0.0]]  # the counter went back: no rate
    net = history.charts["network"].columns(now=120)
    assert net == [[110.0, 120.0], [2000.0, 2000.0], [0.0, 0.0]]


def test_runs_without_chart_series_are_skipped_and_only_one_instance_draws() -> None:
    history = History()
    other = [gauge("container_memory_usage_bytes", i, 100, id=f"/x{i}") for i in range(1000)]
    history.observe("cgroup", other)
    history.observe("cgroup", other)
    assert history._feeds["cgroup"] == ("container_memory_usage_bytes", frozenset())
    assert all(len(ring) == 0 for ring in history.charts.values())
    history.observe("cpu", cpu_run(100, 10, 10, 80))
    history.observe("cpu.2", cpu_run(101, 500, 500, 80))  # a second cpu instance
    history.observe("cpu", cpu_run(110, 16, 12, 92))
    history.observe("cpu.2", cpu_run(111, 600, 600, 80))
    assert history.charts["cpu"].columns(now=111)[0] == [110.0]


def net_run(t: float, received: dict[str, float], labels: dict[str, tuple] | None = None) -> list[Sample]:
    """A network run: received and sent bytes per device (sent is half), and a gauge between them;
    ``labels`` keeps each device's label tuple between runs, as the collectors do."""
    kept = {} if labels is None else labels
    run = []
    for name in ("node_network_receive_bytes_total", "node_network_up", "node_network_transmit_bytes_total"):
        for device, value in received.items():
            key = kept.setdefault(device, (("device", device),))
            kind = "gauge" if name == "node_network_up" else "counter"
            run.append(Sample(name, value / 2 if "transmit" in name else value, kind, key, int(t * NS)))
    return run


def test_charts_take_their_inputs_where_they_were_while_the_series_stay_and_look_again_when_they_change() -> None:
    """Through /metrics' samples: an unchanged run is read at the positions found before; a run with
    other series (an interface replaced by another, lo and a veth joining) is searched anew."""
    history = History()
    latest = LatestSamples(on_run=history.observe)
    labels: dict[str, tuple] = {}
    latest.replace("network", net_run(100, {"eth0": 1000, "eth1": 0}, labels))
    latest.replace("network", net_run(110, {"eth0": 2000, "eth1": 1000}, labels))  # the same series
    assert history._inputs[("network", "network")] == [[0, 1], [4, 5]]
    # eth1 is gone and eth2 came; lo (virtual: not counted) now sits where eth1 was
    latest.replace("network", net_run(120, {"eth0": 3000, "lo": 9e9, "eth2": 50_000, "veth1": 9e9}, labels))
    latest.replace("network", net_run(130, {"eth0": 4000, "lo": 9e9, "eth2": 60_000, "veth1": 9e9}, labels))
    times, received, sent = history.charts["network"].columns(now=130)
    assert times == [110.0, 120.0, 130.0]
    # 120: the totals' step (eth2 counted from its first run); 130: eth0 and eth2 only
    assert received == [200.0, 5000.0, 1100.0] and sent == [100.0, 2500.0, 550.0]
    assert history._inputs[("network", "network")] == [[0, 2], [8, 10]]


def test_outputs_are_sampled_at_the_pace_of_the_host_charts() -> None:
    totals = {"rw": (0, 0, 0, 0.0)}
    history = History(outputs=lambda: dict(totals))
    for i, t in enumerate((100.0001, 110.0001, 120.0001, 130.0001)):  # the ring keeps milliseconds
        totals["rw"] = (1000 * i, 10 * i, 5, 0.25)
        history.observe(
            "memory", [gauge("node_memory_MemTotal_bytes", 8e9, t), gauge("node_memory_MemAvailable_bytes", 6e9, t)]
        )
        # another chart's run a moment later is not another output point
        history.observe("net", [counter("node_network_receive_bytes_total", t, t + 0.5, device="eth0")])
    times, sent, dropped, queued, fill = history.outputs["rw"].columns(now=130)
    assert times == [110.0, 120.0, 130.0]  # not the first run: the sample pace is known from the second
    assert sent == [None, 100.0, 100.0] and dropped == [None, 1.0, 1.0]
    assert queued == [5, 5, 5] and fill == [25.0, 25.0, 25.0]
    totals.clear()  # the output was removed by a reload: its ring goes too
    history.observe(
        "memory", [gauge("node_memory_MemTotal_bytes", 8e9, 140), gauge("node_memory_MemAvailable_bytes", 6e9, 140)]
    )
    assert history.outputs == {}


def test_a_failing_history_never_fails_the_run_that_feeds_it(caplog) -> None:
    def broken():
        raise RuntimeError("bug")

    history = History(outputs=broken)
    latest = LatestSamples(on_replace=history.observe)
    for t in (100, 110, 120):
        latest.replace("cpu", cpu_run(t, t, t, t))
    assert len(latest.samples()) == 12  # /metrics has the run
    assert len(history.charts["cpu"]) == 2  # the chart too; only the outputs' points are missing
    assert [r.getMessage() for r in caplog.records].count(
        "status page history: cannot take a point from cpu; its charts may have gaps"
    ) == 1  # logged once


def test_latest_samples_hands_each_run_to_its_hook() -> None:
    seen = []
    latest = LatestSamples(on_replace=lambda instance, samples: seen.append((instance, len(samples))))
    latest.replace("cpu", cpu_run(1, 1, 1, 1))
    assert seen == [("cpu", 12)]


# ------------------------------------------------------------------ /status.json


def agent_config(tmp_path: Path, body: str = "") -> Path:
    path = tmp_path / "hostwatch.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n[http]\nlisten = ""\n{body}')
    return path


class FakeCollector:
    def __init__(self, answer=None, delay: float = 0.0) -> None:
        self.answer, self.delay = answer, delay

    async def status(self):
        await asyncio.sleep(self.delay)
        return self.answer


async def test_status_document_masks_credentials_and_lists_files_problems_and_outputs(tmp_path, monkeypatch) -> None:
    config = load_config(
        str(
            agent_config(
                tmp_path,
                '[[outputs.remote_write]]\nurl = "http://user:hunter22@127.0.0.1:9/api/v1/write"\n',
            )
        )
    )
    agent = Agent(config)
    await agent.pipeline.apply(config)
    logging.getLogger("hostwatch").addHandler(agent.problems)
    try:
        runner = agent.pipeline.runners["remote_write"][1]
        runner.note_error("POST http://user:hunter22@127.0.0.1:9/api/v1/write: connection refused")
        files = {"files": [{"path": "/var/log/<b>x</b>.log", "size_bytes": 10, "offset": 4, "behind_bytes": 6}]}
        monkeypatch.setattr(status, "HOOK_TIMEOUT", 0.2)
        agent.runners = {
            "logs": (None, SimpleNamespace(collector=FakeCollector(files), state=RunState())),
            "stuck": (None, SimpleNamespace(collector=FakeCollector(files, delay=5), state=RunState())),
            "cpu": (None, SimpleNamespace(collector=object(), state=RunState())),  # no hook at all
        }
        document = await status.build_status(agent)
    finally:
        logging.getLogger("hostwatch").removeHandler(agent.problems)
        await agent.pipeline.close(0.1)
    text = json.dumps(document, allow_nan=False)  # strict JSON: a browser's JSON.parse takes no NaN
    assert "hunter22" not in text
    (output,) = document["outputs"]
    assert output["name"] == "remote_write" and "user:***@" in output["last_error"]
    assert output["history"]["series"] == ["sent", "dropped", "queued", "fill"]
    assert document["log_files"][0] == {"collector": "logs", **files["files"][0]}
    assert document["log_files"][1]["collector"] == "stuck" and "no answer" in document["log_files"][1]["error"]
    assert len(document["log_files"]) == 2
    assert any("user:***@" in p["message"] and p["source"] == "delivery" for p in document["problems"])
    assert set(document["charts"]) == {"cpu", "memory", "disk", "network"}
    assert document["status"] in ("ready", "not ready") and document["window_seconds"] == 900


def test_host_summary_lists_file_systems_and_skips_non_finite_values() -> None:
    samples = [
        gauge("node_load1", float("nan"), 1),
        gauge("node_filesystem_size_bytes", 100.0, 1, mountpoint="/", device="/dev/sda1", fstype="ext4"),
        gauge("node_filesystem_avail_bytes", 25.0, 1, mountpoint="/", device="/dev/sda1", fstype="ext4"),
        gauge("node_filesystem_size_bytes", 0.0, 1, mountpoint="/empty", device="none", fstype="tmpfs"),
        gauge("node_filesystem_avail_bytes", 0.0, 1, mountpoint="/empty", device="none", fstype="tmpfs"),
        *cpu_run(1, 1, 1, 1),
    ]
    summary = status.host_summary(samples)
    assert summary["load1"] is None and summary["cpus"] == 2
    assert summary["filesystems"] == [
        {
            "mountpoint": "/",
            "device": "/dev/sda1",
            "fstype": "ext4",
            "size_bytes": 100.0,
            "avail_bytes": 25.0,
            "used_percent": 75.0,
        }
    ]


# ------------------------------------------------------------------ the page over HTTP


async def request(port: int, path: str) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


@pytest.fixture
async def served_agent(tmp_path):
    agent = Agent(load_config(str(agent_config(tmp_path))))
    http = HttpServer(agent, "127.0.0.1:0")
    await http.start()
    yield agent, http
    await http.stop()


async def test_page_is_served_with_a_strict_policy_and_no_inline_script(served_agent) -> None:
    _, http = served_agent
    line, headers, body = await request(http.port, "/")
    assert line == "HTTP/1.1 200 OK" and headers["content-type"].startswith("text/html")
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert headers["x-content-type-options"] == "nosniff"
    html = body.decode()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="static/' in attrs and not inline.strip() for attrs, inline in scripts)
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"<[^>]+\son[a-z]+=", html)  # no event handler attributes
    for src in re.findall(r'(?:src|href)="(static/[^"]+)"', html):
        line, headers, _ = await request(http.port, "/" + src)
        assert line == "HTTP/1.1 200 OK", src
        assert headers["x-content-type-options"] == "nosniff"


async def test_status_json_is_strict_json_built_on_request(served_agent) -> None:
    agent, http = served_agent
    now = round(time.time(), 3)
    agent.latest.replace("cpu", cpu_run(now - 10, 1, 1, 1))
    agent.latest.replace("cpu", cpu_run(now, 2, 2, 2))
    line, headers, body = await request(http.port, "/status.json")
    assert line == "HTTP/1.1 200 OK" and headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"

    def refuse(constant: str):
        raise AssertionError(f"{constant} in /status.json")

    document = json.loads(body, parse_constant=refuse)
    assert document["charts"]["cpu"]["data"][0] == [now]


async def test_page_without_the_chart_library_leaves_its_script_out(tmp_path) -> None:
    bare = tmp_path / "page"
    bare.mkdir()
    for name in ("index.html", "status.js", "status.css"):
        (bare / name).write_bytes((PAGE_DIR / name).read_bytes())
    assets = PageAssets(bare)
    code, _, body, _ = await assets.index()
    assert code == 200 and b"uPlot" not in body.split(b"<body>")[0] and b"static/status.js" in body
    code, _, _, _ = await assets.static("/static/uPlot.min.js")
    assert code == 404
    (bare / "vendor").mkdir()
    (bare / "vendor" / "uPlot.iife.min.js").write_text("/* the library */")
    code, _, body, _ = await assets.index()  # fetched while the agent runs: used from now on
    assert b'<script src="static/uPlot.min.js"></script>' in body
