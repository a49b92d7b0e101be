"""The prometheus_scrape collector against a real prometheus_client app and, for what no real
target does on purpose (HTML, endless or huge bodies, hangs, auth checks), small local servers."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import os
import re
import time
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, start_http_server

from agent.config.validation import convert
from agent.emitter import RunEmitter
from agent.model import is_stale
from agent.staleness import SeriesTracker
from collectors.scrape.scrape import Config, PrometheusScrapeCollector
from tests.support import collector_context
from tests.unit.outputs.conftest import certs  # noqa: F401  (the throwaway CA fixture)

README = Path(__file__).parents[3] / "collectors" / "scrape" / "README.md"


def collector(tmp_path: Path, timeout: float = 5.0, static_labels=(), **options) -> PrometheusScrapeCollector:
    options.setdefault("job", "app")
    config = convert(options, Config)
    context = collector_context(tmp_path, timeout=timeout, interval=timeout, static_labels=static_labels)
    return PrometheusScrapeCollector(config, context)


async def run(c: PrometheusScrapeCollector) -> RunEmitter:
    emitter = RunEmitter(time.time_ns(), c.context.static_labels)
    await c.collect(emitter)
    return emitter


def series(emitter: RunEmitter) -> dict[tuple[str, tuple], float]:
    return {(s.name, s.labels): s.value for s in emitter.samples}


def value(emitter: RunEmitter, name: str, **labels: str) -> float:
    found = [s.value for s in emitter.samples if s.name == name and labels.items() <= dict(s.labels).items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


@pytest.fixture
def app():
    """A real prometheus_client app: counter, histogram, summary, gauge."""
    registry = CollectorRegistry()
    requests = Counter("app_requests", "Requests.", ["code"], registry=registry)
    requests.labels("200").inc(3)
    latency = Histogram("app_latency_seconds", "Latency.", registry=registry, buckets=(0.1, 1.0))
    latency.observe(0.05)
    latency.observe(0.5)
    Summary("app_payload_bytes", "Payload.", registry=registry).observe(100)
    Gauge("app_in_flight", "In flight.", ["job"], registry=registry).labels("inner").set(2)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


async def serve(handler) -> tuple[web.AppRunner, str]:
    application = web.Application()
    application.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(application, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def test_a_prometheus_client_app_as_prometheus_stores_it(app: str, tmp_path) -> None:
    c = collector(tmp_path, static_configs=[{"targets": [app], "labels": {"team": "web"}}])
    try:
        emitter = await run(c)
    finally:
        await c.close()
    target = {"job": "app", "instance": app, "team": "web"}
    got = {(s.name, tuple(sorted(set(dict(s.labels).items()) - set(target.items())))): s for s in emitter.samples}
    assert all(dict(s.labels).items() >= target.items() for s in emitter.samples)
    assert got[("app_requests_total", (("code", "200"),))].value == 3.0
    assert got[("app_requests_total", (("code", "200"),))].kind == "counter"
    assert got[("app_latency_seconds_bucket", (("le", "0.1"),))].value == 1.0
    assert got[("app_latency_seconds_bucket", (("le", "+Inf"),))].kind == "counter"
    assert got[("app_latency_seconds_sum", ())].value == pytest.approx(0.55)
    assert got[("app_payload_bytes_count", ())].kind == "counter"
    # the app's own job label does not replace the target's: it is kept as exported_job
    assert got[("app_in_flight", (("exported_job", "inner"),))].kind == "gauge"
    assert not [name for name, _ in got if name.endswith("_created")]
    assert value(emitter, "up") == 1.0
    kept = value(emitter, "scrape_samples_post_metric_relabeling")
    assert kept == value(emitter, "scrape_samples_scraped") == value(emitter, "scrape_series_added")
    assert kept == len([s for s in emitter.samples if not s.name.startswith(("up", "scrape_"))])
    assert 0 < value(emitter, "scrape_duration_seconds") < 5
    # every name it produces is in the README's metric table or is the app's own
    listed = set(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", README.read_text()))
    own = {s.name for s in emitter.samples if not s.name.startswith("app_")}
    assert own <= listed, own - listed


async def test_the_second_scrape_adds_no_series_and_relabeling_applies(app: str, tmp_path) -> None:
    rules = [{"action": "drop", "source_labels": ["__name__"], "regex": "app_payload_.*"}]
    c = collector(tmp_path, targets=[app], metric_relabel_configs=rules)
    try:
        first, second = await run(c), await run(c)
    finally:
        await c.close()
    assert value(second, "scrape_series_added") == 0 and value(first, "scrape_series_added") > 0
    assert value(second, "scrape_samples_scraped") > value(second, "scrape_samples_post_metric_relabeling")
    assert not [s for s in second.samples if s.name.startswith("app_payload_")]
    assert [s for s in second.samples if s.name.startswith("app_latency_")]


async def test_honor_labels_and_timestamps(tmp_path) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text='m{job="inner",env="dev"} 1 1700000000000\n', content_type="text/plain")

    runner, target = await serve(page)
    env = (("env", "prod"),)  # [agent] labels or the instance's labels: target labels as well
    try:
        honoring = collector(tmp_path, targets=[target], honor_labels=True, static_labels=env)
        ignoring = collector(tmp_path, targets=[target], honor_timestamps=False, static_labels=env)
        a, b = await run(honoring), await run(ignoring)
        await honoring.close()
        await ignoring.close()
    finally:
        await runner.cleanup()
    [ma] = [s for s in a.samples if s.name == "m"]
    [mb] = [s for s in b.samples if s.name == "m"]
    assert dict(ma.labels) == {"job": "inner", "env": "dev", "instance": target}
    assert ma.time_ns == 1_700_000_000_000_000_000
    assert dict(mb.labels) == {
        "job": "app",
        "exported_job": "inner",
        "env": "prod",
        "exported_env": "dev",
        "instance": target,
    }
    assert mb.time_ns > 1_700_000_000_000_000_000 * 1.01


async def test_file_sd_is_reread_when_it_changes_and_vanished_targets_go_stale(app: str, tmp_path) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="# TYPE other gauge\nother 1\n")

    runner, other = await serve(page)
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([{"targets": [app, other], "labels": {"env": "test"}}]))
    c = collector(tmp_path, files=[str(tmp_path / "*.json")])
    tracker = SeriesTracker()
    try:
        first = await run(c)
        assert tracker.update("scrape", first.samples, 1) == []
        assert {dict(s.labels)["instance"] for s in first.samples if s.name == "up"} == {app, other}
        assert all(dict(s.labels)["env"] == "test" for s in first.samples)
        # the app's target goes away: the file is rewritten (a new mtime)
        targets.write_text(json.dumps([{"targets": [other], "labels": {"env": "test"}}]))
        os.utime(targets, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
        second = await run(c)
        markers = tracker.update("scrape", second.samples, 2)
        gone = {(s.name, s.labels) for s in first.samples if dict(s.labels)["instance"] == app}
        assert {(m.name, m.labels) for m in markers} == gone
        assert all(is_stale(m.value) for m in markers)
        # a broken rewrite keeps the last good targets and says why
        targets.write_text("[{not json")
        os.utime(targets, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
        third = await run(c)
        assert {dict(s.labels)["instance"] for s in third.samples if s.name == "up"} == {other}
        assert third.errors and "not valid JSON" in str(third.errors[0])
        assert tracker.update("scrape", third.samples, 3) == []
    finally:
        await c.close()
        await runner.cleanup()


async def test_a_series_that_vanishes_from_a_target_goes_stale(tmp_path) -> None:
    body = {"text": "a 1\nb 1\n"}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=body["text"])

    runner, target = await serve(page)
    c = collector(tmp_path, targets=[target])
    tracker = SeriesTracker()
    try:
        tracker.update("scrape", (await run(c)).samples, 1)
        body["text"] = "a 2\n"
        markers = tracker.update("scrape", (await run(c)).samples, 2)
    finally:
        await c.close()
        await runner.cleanup()
    assert [m.name for m in markers] == ["b"]


HOSTILE_LINE = 'm{v="' + "x" * 100_000 + '"} 1\n'


class Hostile:
    """The misbehaving targets: each path answers one way."""

    def __init__(self) -> None:
        self.authorization: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/html":
            return web.Response(text="<!DOCTYPE html>\n<html><body>Sign in</body></html>\n", content_type="text/html")
        if path == "/huge":  # 50 MB of valid exposition
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            chunk = "".join(f'm{{i="{i}"}} 1\n' for i in range(50_000)).encode()
            for _ in range(50 * (1 << 20) // len(chunk) + 1):
                await response.write(chunk)
            return response
        if path in ("/endless", "/trickle"):  # a body that never ends, fast or slowly
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            i = 0
            while True:
                await response.write("".join(f'm{{i="{i + j}"}} 1\n' for j in range(1000)).encode())
                i += 1000
                await asyncio.sleep(0.1 if path == "/trickle" else 0)
        if path == "/hang":
            await asyncio.sleep(3600)
        if path == "/labels":
            return web.Response(text=HOSTILE_LINE)
        if path == "/many":
            return web.Response(text="".join(f"m{i} 1\n" for i in range(20_000)))
        if path == "/missing":
            return web.Response(status=404, text="no such page")
        if path == "/gzip":
            body = gzip.compress(b"# TYPE z counter\nz_total 7\n")
            return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
        if path == "/auth":
            self.authorization.append(request.headers.get("Authorization", ""))
            return web.Response(text="ok 1\n")
        return web.Response(text="fine 1\n")


@pytest.fixture
async def hostile():
    handler = Hostile()
    runner, address = await serve(handler.handle)
    yield address, handler
    await runner.cleanup()


BAD = ["html", "huge", "endless", "trickle", "hang", "labels", "many", "missing"]


async def test_hostile_targets_are_down_bounded_counted_and_logged_once(hostile, tmp_path, caplog) -> None:
    address, _ = hostile
    static = [{"targets": [f"http://{address}/{p}"], "labels": {"case": p}} for p in [*BAD, "ok", "gzip"]]
    c = collector(tmp_path, timeout=4.0, static_configs=static, body_size_limit="8MiB", sample_limit=10_000)
    caplog.set_level(logging.WARNING, "hostwatch.test.test")
    try:
        started = time.monotonic()
        first = await run(c)
        elapsed = time.monotonic() - started
        second = await run(c)
    finally:
        await c.close()
    assert elapsed < 4.0  # the hung target did not hold the run past the instance's timeout
    up = {dict(s.labels)["case"]: s.value for s in first.samples if s.name == "up"}
    assert up == {**dict.fromkeys(BAD, 0.0), "ok": 1.0, "gzip": 1.0}
    assert {s.name for s in first.samples if dict(s.labels).get("case") in BAD} == {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "hostwatch_scrape_failures_total",
    }  # nothing of what they sent
    failures = {
        (dict(s.labels)["case"], dict(s.labels)["reason"]): s.value
        for s in second.samples
        if s.name == "hostwatch_scrape_failures_total"
    }
    assert failures == {
        ("html", "parse_error"): 2.0,
        ("huge", "body_size_limit"): 2.0,
        ("endless", "body_size_limit"): 2.0,
        ("trickle", "timeout"): 2.0,
        ("hang", "timeout"): 2.0,
        ("labels", "label_limit"): 2.0,
        ("many", "sample_limit"): 2.0,
        ("missing", "http_status"): 2.0,
    }
    assert ("z_total", "counter", 7.0) in {(s.name, s.kind, s.value) for s in second.samples}
    messages = [r.getMessage() for r in caplog.records]
    for case, reason in failures:
        assert sum(f"/{case} " in m and f"reason={reason!r}" in m for m in messages) == 1, (case, messages)
    assert "web page, not metrics" in next(m for m in messages if "/html " in m)


async def test_credentials_are_read_from_files_each_scrape(hostile, tmp_path) -> None:
    address, handler = hostile
    token = tmp_path / "token"
    token.write_text("first\n")
    c = collector(tmp_path, targets=[f"http://{address}/auth"], bearer_token_file=str(token))
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    b = collector(
        tmp_path, targets=[f"http://{address}/auth"], basic_auth_user="u", basic_auth_password_file=str(password)
    )
    try:
        await run(c)
        token.write_text("second\n")
        await run(c)
        await run(b)
        token.unlink()  # the secret manager lost it: the target is down, the file is named
        gone = await run(c)
        token.write_text("\n")  # emptied: as the outputs, no request with an empty token
        empty = await run(c)
    finally:
        await c.close()
        await b.close()
    assert handler.authorization == ["Bearer first", "Bearer second", "Basic dTpzM2NyZXQ="]
    assert value(gone, "up") == 0.0
    assert value(gone, "hostwatch_scrape_failures_total", reason="credentials") == 1.0
    assert value(empty, "up") == 0.0
    assert value(empty, "hostwatch_scrape_failures_total", reason="credentials") == 2.0


async def test_parsing_a_10mb_body_leaves_the_event_loop_free(tmp_path) -> None:
    from tests.bench.bench_scrape import exposition

    body = exposition(10 << 20)

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    runner, target = await serve(page)
    # with [agent] labels every sample gets them merged in: that work must stay off the loop too
    c = collector(tmp_path, timeout=60.0, targets=[target], sample_limit=0, static_labels=(("env", "prod"),))
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        started = time.perf_counter()
        emitter = await run(c)
        took = time.perf_counter() - started
    finally:
        done.set()
        await tick
        await c.close()
        await runner.cleanup()
    assert value(emitter, "up") == 1.0 and value(emitter, "scrape_samples_scraped") > 100_000
    # the loop kept ticking while the worker thread parsed (it only shares the GIL)
    # (about 0.06 s here, the GIL's hand-overs; merging [agent] labels on the loop took 0.27 s alone)
    assert max(gaps) < 0.2, (max(gaps), took)
    assert not math.isnan(value(emitter, "scrape_duration_seconds"))


async def test_tls_with_a_private_ca_server_name_and_client_certificate(certs, tmp_path) -> None:  # noqa: F811
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the scraper must show its certificate

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="secure 1\n")

    application = web.Application()
    application.router.add_get("/metrics", page)
    runner = web.AppRunner(application, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    target = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/metrics"
    client = {"tls_cert": str(certs.client_cert), "tls_key": str(certs.client_key)}
    cases = {
        "right": {"tls_ca": str(certs.ca), "tls_server_name": certs.server_name, **client},
        "wrong_name": {"tls_ca": str(certs.ca), **client},  # the certificate is for hostwatch.test only
        "unknown_ca": {"tls_server_name": certs.server_name, **client},
        "no_client_cert": {"tls_ca": str(certs.ca), "tls_server_name": certs.server_name},
    }
    up = {}
    try:
        for case, options in cases.items():
            c = collector(tmp_path, targets=[target], **options)
            emitter = await run(c)
            await c.close()
            up[case] = value(emitter, "up")
            if case == "right":
                assert value(emitter, "secure") == 1.0
            else:
                assert value(emitter, "hostwatch_scrape_failures_total", reason="connection") == 1.0
    finally:
        await runner.cleanup()
    assert up == {"right": 1.0, "wrong_name": 0.0, "unknown_ca": 0.0, "no_client_cert": 0.0}


def test_the_engine_hands_the_instance_its_interval_and_timeout(tmp_path) -> None:
    from agent.config import parse_config
    from agent.registry import load_registry
    from agent.runtime import Agent

    table = {"job": "app", "targets": ["127.0.0.1:9"], "interval": "30s", "timeout": "20s"}
    config = parse_config(
        {"agent": {"state_dir": str(tmp_path)}, "collectors": {"prometheus_scrape": [table, {"interval": "5s"}]}},
        environ={},
        registry=load_registry(),
    )
    agent = Agent(config)
    timed, defaulted = (agent.build_runner(config, spec) for spec in config.collectors)
    assert (timed.collector.context.interval, timed.collector.context.timeout, timed.timeout) == (30, 20, 20)
    assert timed.collector._fetch_timeout == 19.0  # a second kept for parsing
    assert (defaulted.collector.context.interval, defaulted.collector.context.timeout) == (5, 5)
    assert defaulted.collector._fetch_timeout == 4.5


def test_a_body_of_millions_of_tiny_lines_stays_bounded_in_memory(tmp_path) -> None:
    import tracemalloc

    c = collector(tmp_path, targets=["127.0.0.1:9"], sample_limit=10_000)
    state = c._new_state(c._static[0])
    body = b"m 1\n" * 2_000_000  # 8 MB: as one list of lines, 2 million strings (over 100 MB)
    tracemalloc.start()
    try:
        with pytest.raises(Exception, match="sample_limit") as info:
            c._parse(state, body, "text/plain", 1, RunEmitter(1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.reason == "sample_limit"
    assert peak < 30 << 20, peak  # the decoded text and one block of lines at a time


def test_series_relabeling_drops_still_count_against_a_bound(tmp_path) -> None:
    rules = [{"action": "drop", "source_labels": ["__name__"], "regex": "m.*"}]
    c = collector(tmp_path, targets=["127.0.0.1:9"], sample_limit=100, metric_relabel_configs=rules)
    state = c._new_state(c._static[0])
    body = "".join(f"m{i} 1\n" for i in range(1000)).encode()
    with pytest.raises(Exception, match="series") as info:
        c._parse(state, body, "text/plain", 1, RunEmitter(1))
    assert info.value.reason == "sample_limit" and len(state.cache) <= 400


def test_each_scrape_follows_the_last_good_one_and_a_failed_one_breaks_the_chain(tmp_path) -> None:
    c = collector(tmp_path, targets=["127.0.0.1:9"])
    state = c._new_state(c._static[0])

    def parse(text: str):
        result = c._parse(state, text.encode(), "text/plain", 1, RunEmitter(1))
        return [(s.name, s.value) for s in result.rows], result.new_series

    assert parse("a 1\nb 2\n") == ([("a", 1.0), ("b", 2.0)], 2) and state.plan is not None
    cache = state.cache
    assert parse("a 3\nb 4\n") == ([("a", 3.0), ("b", 4.0)], 0) and state.cache is cache  # in step: kept as is
    with pytest.raises(Exception, match="bad value") as info:
        parse("a 1\nb x\n")
    assert info.value.reason == "parse_error" and state.plan is None
    assert parse("a 5\nc 6\n") == ([("a", 5.0), ("c", 6.0)], 1) and set(state.cache) == {"a", "c"}
    assert parse("c 7\na 8\n") == ([("c", 7.0), ("a", 8.0)], 0) and state.plan.keys == ["c", "a"]
