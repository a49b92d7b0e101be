"""Queue depth of Redis lists, streams and sorted sets (Celery, RQ, stream consumers).

Per scrape: one SCAN walk per glob pattern (never KEYS, which blocks the server),
then pipelined round trips: TYPE of every key, then the length command of each
type plus, for streams, XINFO GROUPS and the first entry. The walk visits the
whole keyspace (SCAN cost is O(keys in the database)); the per-key work is
bounded by ``max_keys``.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agent.model import labels_from
from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig, check_url, readable_file
from collectors.queue._common import (
    CONSUMER_UNIT,
    CONSUMERS,
    MESSAGE_UNIT,
    MESSAGES,
    OLDEST_AGE,
    SKIPPED,
    mask_url,
    read_secret,
    scrub,
)

STREAM_LENGTH = "queue_stream_length"
_GLOB_CHARS = frozenset("*?[")
_WARNED_MAX = 1000


class Config(PluginConfig):
    url: Annotated[
        str,
        msgspec.Meta(description="redis://host:port/db, rediss:// for TLS, or unix:///path/redis.sock?db=0."),
    ] = "redis://127.0.0.1:6379/0"
    keys: Annotated[
        list[str],
        msgspec.Meta(description="Key names or glob patterns (expanded with SCAN) of lists, streams and sorted sets."),
    ] = msgspec.field(default_factory=lambda: ["celery"])
    username: Annotated[str, msgspec.Meta(description="ACL user name; empty: the default user.")] = ""
    password_file: Annotated[
        str, msgspec.Meta(description="File holding the password; empty: none."), readable_file
    ] = ""
    max_keys: Annotated[
        int, msgspec.Meta(ge=1, description="Keys measured per scrape at most; the rest are counted as skipped.")
    ] = 1000
    scan_count: Annotated[int, msgspec.Meta(ge=1, description="COUNT hint of each SCAN call.")] = 1000
    timestamp_field: Annotated[
        str,
        msgspec.Meta(description="Dotted path of the JSON field holding a list entry's enqueue time; empty: no age."),
    ] = ""
    oldest_end: Annotated[
        Literal["right", "left"],
        msgspec.Meta(description="List end holding the oldest entry: right for LPUSH producers, left for RPUSH."),
    ] = "right"
    tls_ca: Annotated[str, msgspec.Meta(description="CA bundle for rediss://; empty: the system's."), readable_file] = (
        ""
    )
    tls_cert: Annotated[str, msgspec.Meta(description="Client certificate for rediss://."), readable_file] = ""
    tls_key: Annotated[str, msgspec.Meta(description="Client key for rediss://."), readable_file] = ""

    def __post_init__(self) -> None:
        check_url(self.url, "url", ("redis", "rediss", "unix"), host=not self.url.startswith("unix:"))


class RedisQueueCollector(PeriodicCollector):
    Config = Config

    def __init__(self, config: Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._client: aioredis.Redis | None = None
        self._secrets: tuple[str, ...] = ()
        self._skipped = {"max_keys": 0, "type": 0}
        self._warned: set[str] = set()

    async def collect(self, emit: Emitter) -> None:
        try:
            client = await self._connect()
            keys = await self._expand(client)
            await self._measure(client, keys, emit)
        except (RedisError, OSError) as exc:
            await self._drop_client()  # reconnect and re-read the password next run
            message = scrub(f"redis {mask_url(self.config.url)}: {type(exc).__name__}: {exc}", self._secrets)
            self.context.logger.warning("%s; retrying at the next interval", message)
            emit.error(message)
        for reason, total in self._skipped.items():
            emit.counter(SKIPPED, total, labels_from({"system": "redis", "reason": reason}), unit="{queue}")

    async def close(self) -> None:
        await self._drop_client()

    async def _connect(self) -> aioredis.Redis:
        if self._client is None:
            cfg = self.config
            password = await self.context.run_blocking(read_secret, cfg.password_file) if cfg.password_file else None
            self._secrets = (password,) if password else ()
            tls: dict[str, Any] = {}
            if cfg.url.startswith("rediss://"):
                tls = {"ssl_ca_certs": cfg.tls_ca or None, "ssl_certfile": cfg.tls_cert or None}
                tls["ssl_keyfile"] = cfg.tls_key or None
            self._client = aioredis.from_url(
                cfg.url,
                username=cfg.username or None,
                password=password,
                socket_connect_timeout=5,
                socket_timeout=10,
                **tls,
            )
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _expand(self, client: aioredis.Redis) -> list[bytes]:
        """Named keys as given (an emptied queue's key is gone), globs via SCAN; capped, stable order."""
        named: dict[bytes, None] = {}
        matched: set[bytes] = set()
        for pattern in self.config.keys:
            if _GLOB_CHARS.isdisjoint(pattern):
                named[pattern.encode()] = None
            else:
                async for key in client.scan_iter(match=pattern, count=self.config.scan_count):
                    matched.add(key)
        keys = list(named) + sorted(matched - named.keys())
        if len(keys) > self.config.max_keys:
            over = len(keys) - self.config.max_keys
            self._skipped["max_keys"] += over
            self.context.logger.warning(
                "%d keys match, max_keys = %d: %d skipped this scrape", len(keys), self.config.max_keys, over
            )
            keys = keys[: self.config.max_keys]
        return keys

    async def _measure(self, client: aioredis.Redis, keys: list[bytes], emit: Emitter) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
            types = await pipe.execute(raise_on_error=False)
        oldest_index = -1 if self.config.oldest_end == "right" else 0
        list_age = bool(self.config.timestamp_field)
        plan: list[tuple[str, str, int]] = []  # (queue label, type, replies it takes)
        async with client.pipeline(transaction=False) as pipe:
            for key, type_ in zip(keys, types, strict=True):
                queue = _label(key)
                if isinstance(type_, Exception):
                    emit.error(f"redis key {queue}: TYPE failed: {type_}")
                    continue
                type_ = type_.decode()
                if type_ in ("list", "none"):  # a named queue that was emptied has no key
                    pipe.llen(key)
                    if list_age:
                        pipe.lindex(key, oldest_index)
                elif type_ == "zset":
                    pipe.zcard(key)
                elif type_ == "stream":
                    pipe.xlen(key)
                    pipe.xinfo_groups(key)
                    pipe.xrange(key, "-", "+", count=1)
                else:
                    self._skipped["type"] += 1
                    self._warn_once(queue, f"key {queue} is a {type_}, not a list, stream or sorted set: skipped")
                    continue
                replies_taken = {"stream": 3, "zset": 1}.get(type_, 1 + list_age)
                plan.append((queue, type_, replies_taken))
            replies = await pipe.execute(raise_on_error=False)
        now_ms = self.context.clock() / 1e6
        offset = 0
        for queue, type_, count in plan:
            got, offset = replies[offset : offset + count], offset + count
            failed = next((r for r in got if isinstance(r, Exception)), None)
            if failed is not None:  # e.g. an ACL that denies XINFO, or a key whose type just changed
                emit.error(f"redis key {queue}: {failed}")
            elif type_ == "zset":
                _gauge(emit, MESSAGES, got[0], queue, state="delayed")
            elif type_ == "stream":
                self._emit_stream(emit, queue, *got, now_ms)
            else:
                _gauge(emit, MESSAGES, got[0], queue, state="ready")
                age = None if not list_age else 0.0 if got[1] is None else self._entry_age(queue, got[1], now_ms)
                if age is not None:
                    emit.gauge(OLDEST_AGE, age, labels_from({"system": "redis", "queue": queue}), unit="s")

    def _emit_stream(self, emit: Emitter, queue: str, length: int, groups: list, first: list, now_ms: float) -> None:
        labels = labels_from({"system": "redis", "queue": queue})
        emit.gauge(STREAM_LENGTH, length, labels, unit=MESSAGE_UNIT)
        if not groups:
            _gauge(emit, MESSAGES, length, queue, state="ready")
        for group in groups:
            name = _label(group["name"])
            # lag is None when Redis cannot tell (entries deleted mid-stream, Redis < 7).
            if group.get("lag") is not None:
                _gauge(emit, MESSAGES, group["lag"], queue, state="ready", group=name)
            _gauge(emit, MESSAGES, group["pending"], queue, state="unacked", group=name)
            _gauge(emit, CONSUMERS, group["consumers"], queue, group=name)
        first_ms = int(first[0][0].split(b"-", 1)[0]) if first else now_ms
        emit.gauge(OLDEST_AGE, max(0.0, (now_ms - first_ms) / 1000), labels, unit="s")

    def _entry_age(self, queue: str, entry: bytes, now_ms: float) -> float | None:
        try:
            value: Any = json.loads(entry)
            for part in self.config.timestamp_field.split("."):
                value = value[part]
            enqueued_ms = _epoch_ms(value)
        except (ValueError, TypeError, KeyError, IndexError):
            self._warn_once(queue, f"list {queue}: oldest entry has no usable {self.config.timestamp_field!r}")
            return None
        return max(0.0, (now_ms - enqueued_ms) / 1000)

    def _warn_once(self, key: bytes | str, message: str) -> None:
        key = key if isinstance(key, str) else _label(key)
        if key not in self._warned and len(self._warned) < _WARNED_MAX:
            self._warned.add(key)
            self.context.logger.warning(message)


def _gauge(emit: Emitter, name: str, value: float, queue: str, **labels: str) -> None:
    unit = CONSUMER_UNIT if name == CONSUMERS else MESSAGE_UNIT
    emit.gauge(name, value, labels_from({"system": "redis", "queue": queue, **labels}), unit=unit)


def _label(key: bytes) -> str:
    """Keys are binary-safe (Celery's priority queues hold control bytes); labels are printable text."""
    text = key.decode("utf-8", "backslashreplace")
    if not any(c < " " for c in text):
        return text
    return "".join(c if c >= " " else f"\\x{ord(c):02x}" for c in text)


def _epoch_ms(value: Any) -> float:
    """Enqueue time as Unix milliseconds from epoch s/ms/us/ns numbers or ISO 8601 text."""
    if isinstance(value, bool):
        raise TypeError("boolean timestamp")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("non-finite timestamp")
        magnitude = abs(value)
        # Tell the unit by magnitude: seconds until the year 5138, then ms, us, ns.
        scale = 1e3 if magnitude < 1e11 else 1.0 if magnitude < 1e14 else 1e-3 if magnitude < 1e17 else 1e-6
        return value * scale
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:  # producers writing utcnow().isoformat() mean UTC
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp() * 1e3
    raise TypeError(f"unsupported timestamp {type(value).__name__}")
