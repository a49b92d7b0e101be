"""queue_redis against a real redis-server: every expected number is what the test put there."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import pytest
import redis

from agent.emitter import RunEmitter
from agent.model import labels_from
from collectors.queue.queue_redis import Config, RedisQueueCollector
from tests.support import by_series, collect_once, collector_context

pytestmark = pytest.mark.peers

NOW_MS = int(time.time() * 1000) // 1000 * 1000  # whole seconds: ages come out exact


def ser(name: str, queue: str, **labels: str):
    return (name, labels_from({"system": "redis", "queue": queue, **labels}))


def make(tmp_path, **config) -> RedisQueueCollector:
    context = collector_context(tmp_path, clock=lambda: NOW_MS * 1_000_000)
    return RedisQueueCollector(Config(**config), context)


def queue_series(emitter: RunEmitter) -> dict:
    return {k: v for k, v in by_series(emitter.samples).items() if k[0].startswith("queue_")}


async def test_lists_streams_sorted_sets(redis_server, tmp_path):
    server = redis_server()
    r = redis.Redis(port=server.port)
    # Celery-style list: LPUSH producer, so the oldest entry sits at the right end.
    for age in (300, 200, 100):
        enqueued = datetime.fromtimestamp(NOW_MS / 1000 - age, UTC).isoformat()
        r.lpush("celery", json.dumps({"task": "t", "meta": {"enqueued_at": enqueued}}))
    # A delayed-job sorted set (RQ's scheduled registry).
    r.zadd("rq:scheduled:default", {f"job{i}": NOW_MS / 1000 + i for i in range(4)})
    # A stream with 6 entries, the first 120 s old; group "workers" has read 2 and acked none.
    for i in range(6):
        r.xadd("events", {"n": i}, id=f"{NOW_MS - 120_000 + i}-0")
    r.xgroup_create("events", "workers", id="0")
    r.xreadgroup("workers", "w1", {"events": ">"}, count=2)
    r.xgroup_create("events", "audit", id="$")  # caught up, no consumer yet
    for i in range(3):
        r.xadd("plain", {"n": i}, id=f"{NOW_MS - 5_000 + i}-0")

    keys = ["celery", "rq:scheduled:default", "events", "plain", "not-there"]
    emitter = await collect_once(make(tmp_path, url=server.url, keys=keys, timestamp_field="meta.enqueued_at"))

    assert emitter.errors == []
    assert queue_series(emitter) == {
        ser("queue_messages", "celery", state="ready"): 3,
        ser("queue_oldest_message_age_seconds", "celery"): 300,
        ser("queue_messages", "rq:scheduled:default", state="delayed"): 4,
        ser("queue_stream_length", "events"): 6,
        ser("queue_messages", "events", group="workers", state="ready"): 4,
        ser("queue_messages", "events", group="workers", state="unacked"): 2,
        ser("queue_consumers", "events", group="workers"): 1,
        ser("queue_messages", "events", group="audit", state="ready"): 0,
        ser("queue_messages", "events", group="audit", state="unacked"): 0,
        ser("queue_consumers", "events", group="audit"): 0,
        ser("queue_oldest_message_age_seconds", "events"): 120,
        ser("queue_stream_length", "plain"): 3,
        ser("queue_messages", "plain", state="ready"): 3,
        ser("queue_oldest_message_age_seconds", "plain"): 5,
        # a named queue that was emptied (Redis deletes empty lists) reads as 0, not as gone
        ser("queue_messages", "not-there", state="ready"): 0,
        ser("queue_oldest_message_age_seconds", "not-there"): 0,
    }


async def test_rpush_list_with_epoch_timestamps_over_unix_socket(redis_server, tmp_path):
    server = redis_server()
    r = redis.Redis(unix_socket_path=str(server.unix_socket))
    for age in (90, 30):
        r.rpush("jobs", json.dumps({"ts": NOW_MS - age * 1000}))  # epoch milliseconds
    r.rpush("jobs", "not json")
    url = f"unix://{server.unix_socket}?db=0"
    left = await collect_once(make(tmp_path, url=url, keys=["jobs"], timestamp_field="ts", oldest_end="left"))
    assert left.errors == []
    assert queue_series(left) == {
        ser("queue_messages", "jobs", state="ready"): 3,
        ser("queue_oldest_message_age_seconds", "jobs"): 90,
    }
    # The right end holds a non-JSON entry: the age cannot be told, so it is left out.
    right = await collect_once(make(tmp_path, url=url, keys=["jobs"], timestamp_field="ts"))
    assert queue_series(right) == {ser("queue_messages", "jobs", state="ready"): 3}


async def test_glob_with_many_keys_and_the_cap(redis_server, tmp_path):
    server = redis_server()
    r = redis.Redis(port=server.port)
    expected = {}
    for i in range(250):
        r.rpush(f"jobs:{i:03d}", *range(i % 7 + 1))
        expected[ser("queue_messages", f"jobs:{i:03d}", state="ready")] = i % 7 + 1
    r.hset("jobs:hash", "a", "1")  # matched by the glob, not a queue type
    r.rpush("other", 1)

    emitter = await collect_once(make(tmp_path, url=server.url, keys=["jobs:*"], scan_count=20))
    assert queue_series(emitter) == expected
    counters = by_series(emitter.samples)
    assert counters[("hostwatch_queue_skipped_total", labels_from({"system": "redis", "reason": "type"}))] == 1

    capped = make(tmp_path, url=server.url, keys=["jobs:*"], max_keys=100)
    first = await collect_once(capped)
    second = await collect_once(capped)
    # The cap keeps the first 100 names in sorted order, so the set is stable from scrape to scrape.
    kept = dict(sorted(expected.items())[:100])
    assert queue_series(first) == kept == queue_series(second)
    skipped = ("hostwatch_queue_skipped_total", labels_from({"system": "redis", "reason": "max_keys"}))
    assert by_series(first.samples)[skipped] == 151  # 250 lists and the hash, less 100
    assert by_series(second.samples)[skipped] == 302  # a counter: cumulative


async def test_wrong_password_is_a_counted_error_that_never_shows_the_secret(redis_server, tmp_path, caplog):
    server = redis_server(password="right-pass-123")
    redis.Redis(port=server.port, password="right-pass-123").rpush("celery", "x", "y")
    (tmp_path / "bad").write_text("wrong-pass-456\n")
    (tmp_path / "good").write_text("right-pass-123\n")
    caplog.set_level(logging.DEBUG)

    bad_file = await collect_once(make(tmp_path, url=server.url, password_file=str(tmp_path / "bad")))
    in_url = f"redis://:wrong-pass-456@127.0.0.1:{server.port}/0"
    bad_url = await collect_once(make(tmp_path, url=in_url))
    for emitter in (bad_file, bad_url):
        assert len(emitter.errors) == 1
        assert "AuthenticationError" in str(emitter.errors[0])
        assert queue_series(emitter) == {}
    assert "redis://:***@127.0.0.1" in str(bad_url.errors[0])
    everything = caplog.text + " ".join(str(e) for e in bad_file.errors + bad_url.errors)
    assert "wrong-pass-456" not in everything and "right-pass" not in everything

    good = await collect_once(make(tmp_path, url=server.url, password_file=str(tmp_path / "good")))
    assert good.errors == []
    assert queue_series(good) == {ser("queue_messages", "celery", state="ready"): 2}


async def test_server_going_away_between_scrapes(redis_server, tmp_path, caplog):
    server = redis_server()
    redis.Redis(port=server.port).rpush("celery", "a", "b", "c")
    collector = make(tmp_path, url=server.url)
    await collector.start()
    try:
        runs = []
        for action in (None, server.stop, server.start):
            if action:
                action()
            emitter = RunEmitter(NOW_MS * 1_000_000)
            await collector.collect(emitter)
            runs.append(emitter)
    finally:
        await collector.close()
    up, down, back = runs
    assert up.errors == [] and queue_series(up) == {ser("queue_messages", "celery", state="ready"): 3}
    assert len(down.errors) == 1 and queue_series(down) == {}
    assert "ConnectionError" in str(down.errors[0]) and f"127.0.0.1:{server.port}" in str(down.errors[0])
    assert "retrying at the next interval" in caplog.text
    # The restarted server is empty (no persistence): the queue reads 0, and the collector recovered.
    assert back.errors == [] and queue_series(back) == {ser("queue_messages", "celery", state="ready"): 0}


async def test_tls_verifies_the_server(redis_server, tmp_path):
    server = redis_server(tls=True)
    ca = server.tls[0]
    redis.Redis(port=server.port, ssl=True, ssl_ca_certs=str(ca)).rpush("celery", "a", "b", "c", "d")
    trusted = await collect_once(make(tmp_path, url=server.url, tls_ca=str(ca)))
    assert trusted.errors == []
    assert queue_series(trusted) == {ser("queue_messages", "celery", state="ready"): 4}
    # The system's CAs do not know the test CA: verification is on, so this is a counted error.
    untrusted = await collect_once(make(tmp_path, url=server.url))
    assert len(untrusted.errors) == 1 and "certificate verify failed" in str(untrusted.errors[0])
    assert queue_series(untrusted) == {}
