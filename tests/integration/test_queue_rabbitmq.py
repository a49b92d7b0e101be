"""queue_rabbitmq against a real broker with the management plugin (one broker per session).

The management API reports statistics the broker refreshes every 500 ms here, so
each test scrapes until the numbers it put there show up (at most 15 s) and then
compares every series exactly.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from agent.emitter import RunEmitter
from agent.model import labels_from
from collectors.queue.queue_rabbitmq import Config, RabbitMQQueueCollector
from tests.peers.fixtures_rabbitmq import Broker
from tests.support import by_series, collect_once, collector_context

pytestmark = pytest.mark.peers

NOW = int(time.time())


def ser(name: str, vhost: str, queue: str, **labels: str):
    return (name, labels_from({"system": "rabbitmq", "vhost": vhost, "queue": queue, **labels}))


def depth(vhost: str, queue: str, ready: int, unacked: int, consumers: int, age: float | None) -> dict:
    series = {
        ser("queue_messages", vhost, queue, state="ready"): ready,
        ser("queue_messages", vhost, queue, state="unacked"): unacked,
        ser("queue_consumers", vhost, queue): consumers,
    }
    if age is not None:
        series[ser("queue_oldest_message_age_seconds", vhost, queue)] = age
    return series


def make(tmp_path, broker: Broker, **config) -> RabbitMQQueueCollector:
    if "password_file" not in config:
        (tmp_path / "password").write_text(broker.password + "\n")
        config["password_file"] = str(tmp_path / "password")
    config.setdefault("url", broker.url)
    config.setdefault("username", broker.user)
    return RabbitMQQueueCollector(Config(**config), collector_context(tmp_path, clock=lambda: NOW * 1_000_000_000))


def queue_series(emitter: RunEmitter) -> dict:
    return {k: v for k, v in by_series(emitter.samples).items() if k[0].startswith("queue_")}


async def scrape_until(collector: RabbitMQQueueCollector, expected: dict, timeout: float = 15.0) -> RunEmitter:
    """Scrape until the broker's statistics catch up with what the test did; the last run is returned."""
    deadline = time.monotonic() + timeout
    while True:
        emitter = await collect_once(collector)
        if queue_series(emitter) == expected or time.monotonic() > deadline:
            return emitter
        await asyncio.sleep(0.25)


async def test_two_vhosts_ready_unacked_consumers_and_age(rabbitmq, amqp_consumer, tmp_path):
    shop, ops = rabbitmq.new_vhost("shop"), rabbitmq.new_vhost("ops")
    for vhost, queue in ((shop, "orders"), (shop, "emails"), (ops, "orders"), (ops, "reports")):
        rabbitmq.declare(vhost, queue)
    rabbitmq.publish(shop, "orders", 5, timestamp=NOW - 600)
    rabbitmq.publish(ops, "orders", 3)  # no timestamp property: the age cannot be told
    for i in range(7):
        rabbitmq.publish(ops, "reports", 1, timestamp=NOW - 100 + i)
    # A consumer that takes 2 and never acks them. The broker's age is that of the oldest message
    # not yet acknowledged, so the first one (100 s old) still counts.
    await asyncio.to_thread(amqp_consumer, ops, "reports", 2)

    expected = {
        **depth(shop, "orders", ready=5, unacked=0, consumers=0, age=600),
        **depth(shop, "emails", ready=0, unacked=0, consumers=0, age=0),
        **depth(ops, "orders", ready=3, unacked=0, consumers=0, age=None),
        **depth(ops, "reports", ready=5, unacked=2, consumers=1, age=100),
    }
    emitter = await scrape_until(make(tmp_path, rabbitmq, vhosts=[shop, ops]), expected)
    assert emitter.errors == []
    assert queue_series(emitter) == expected


async def test_pagination_filters_and_the_cap(rabbitmq, tmp_path):
    vhost = rabbitmq.new_vhost("paged")
    expected = {}
    for i in range(7):
        rabbitmq.declare(vhost, f"job-{i}")
        rabbitmq.publish(vhost, f"job-{i}", i)
        expected |= depth(vhost, f"job-{i}", ready=i, unacked=0, consumers=0, age=None if i else 0)
    for name in ("job-skip", "other"):
        rabbitmq.declare(vhost, name)
        rabbitmq.publish(vhost, name, 1)

    # page_size 2: four pages for 7 matches; "job-*" is filtered on the server, "job-skip" here.
    paged = make(tmp_path, rabbitmq, vhosts=[vhost], queues=["job-*"], exclude_queues=["job-skip"], page_size=2)
    emitter = await scrape_until(paged, expected)
    assert emitter.errors == []
    assert queue_series(emitter) == expected

    # Every vhost (the session's other tests' too), narrowed by the queue-name filter; a cap of 3.
    capped = make(tmp_path, rabbitmq, queues=["job-?"], page_size=3, max_queues=3)
    first = await collect_once(capped)
    second = await collect_once(capped)
    kept = {k: v for k, v in expected.items() if dict(k[1])["queue"] in ("job-0", "job-1", "job-2")}
    assert queue_series(first) == kept == queue_series(second)
    skipped = ("hostwatch_queue_skipped_total", labels_from({"system": "rabbitmq", "reason": "max_queues"}))
    assert by_series(first.samples)[skipped] == 4
    assert by_series(second.samples)[skipped] == 8


async def test_missing_vhost_is_an_error_that_hides_nothing_else(rabbitmq, tmp_path, caplog):
    vhost = rabbitmq.new_vhost("present")
    rabbitmq.declare(vhost, "tasks")
    rabbitmq.publish(vhost, "tasks", 4)
    expected = depth(vhost, "tasks", ready=4, unacked=0, consumers=0, age=None)
    emitter = await scrape_until(make(tmp_path, rabbitmq, vhosts=["no-such-vhost", vhost]), expected)
    assert queue_series(emitter) == expected
    assert len(emitter.errors) == 1
    assert "vhost 'no-such-vhost' does not exist" in str(emitter.errors[0])
    assert "vhost 'no-such-vhost' does not exist" in caplog.text


async def test_wrong_credentials_never_show_the_password(rabbitmq, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    (tmp_path / "wrong").write_text("wrong-secret-771\n")
    by_file = await collect_once(make(tmp_path, rabbitmq, password_file=str(tmp_path / "wrong")))
    url = rabbitmq.url.replace("http://", f"http://{rabbitmq.user}:wrong-secret-771@")
    by_url = await collect_once(make(tmp_path, rabbitmq, url=url, password_file=""))
    for emitter in (by_file, by_url):
        assert len(emitter.errors) == 1
        assert f"authentication failed for user '{rabbitmq.user}' (HTTP 401)" in str(emitter.errors[0])
        assert queue_series(emitter) == {}
    assert f"http://{rabbitmq.user}:***@127.0.0.1" in str(by_url.errors[0])
    everything = caplog.text + " ".join(str(e) for e in by_file.errors + by_url.errors)
    assert "wrong-secret-771" not in everything and rabbitmq.password not in everything


async def test_unreachable_broker_is_a_counted_error(tmp_path, caplog):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://monitor:unused-secret@127.0.0.1:{port}"
    collector = RabbitMQQueueCollector(Config(url=url), collector_context(tmp_path))
    emitter = await collect_once(collector)
    assert len(emitter.errors) == 1 and queue_series(emitter) == {}
    assert "Cannot connect" in str(emitter.errors[0]) and "monitor:***@" in str(emitter.errors[0])
    assert "retrying at the next interval" in caplog.text
    assert "unused-secret" not in caplog.text + str(emitter.errors[0])
