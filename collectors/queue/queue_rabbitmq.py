"""Queue depth from RabbitMQ's management HTTP API.

One paged ``GET /api/queues`` walk per scrape (or one per configured vhost),
asking only for the columns used, so a broker with thousands of queues costs
``ceil(queues / page_size)`` small requests. The numbers are the management
plugin's statistics, refreshed by the broker every ``collect_statistics_interval``
(5 s by default), so they lag the queues by up to that long.
"""

from __future__ import annotations

import base64
import fnmatch
import re
import ssl
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import aiohttp
import msgspec
import yarl

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

_COLUMNS = "name,vhost,messages_ready,messages_unacknowledged,consumers,head_message_timestamp"


class Config(PluginConfig):
    url: Annotated[str, msgspec.Meta(description="Base URL of the management API (its web UI's address).")] = (
        "http://127.0.0.1:15672"
    )
    username: Annotated[str, msgspec.Meta(description="Management user; needs the monitoring tag.")] = "guest"
    password_file: Annotated[
        str,
        msgspec.Meta(description="File holding the user's password; empty: \"guest\" (RabbitMQ's default)."),
        readable_file,
    ] = ""
    vhosts: Annotated[list[str], msgspec.Meta(description="Virtual hosts to read; empty: every vhost.")] = (
        msgspec.field(default_factory=list)
    )
    queues: Annotated[list[str], msgspec.Meta(description="Glob patterns of queue names to include.")] = msgspec.field(
        default_factory=lambda: ["*"]
    )
    exclude_queues: Annotated[list[str], msgspec.Meta(description="Glob patterns of queue names to leave out.")] = (
        msgspec.field(default_factory=list)
    )
    page_size: Annotated[int, msgspec.Meta(ge=1, le=500, description="Queues per API request (500 at most).")] = 500
    max_queues: Annotated[
        int, msgspec.Meta(ge=1, description="Queues reported per scrape at most; the rest are counted as skipped.")
    ] = 5000
    tls_ca: Annotated[str, msgspec.Meta(description="CA bundle for https://; empty: the system's."), readable_file] = ""
    tls_cert: Annotated[str, msgspec.Meta(description="Client certificate for https://."), readable_file] = ""
    tls_key: Annotated[str, msgspec.Meta(description="Client key for https://."), readable_file] = ""

    def __post_init__(self) -> None:
        check_url(self.url, "url", ("http", "https"))


class ApiError(Exception):
    """A request the broker answered with an error status."""


class NotFound(ApiError):
    pass


class PageOutOfRange(ApiError):
    pass


class RabbitMQQueueCollector(PeriodicCollector):
    Config = Config

    def __init__(self, config: Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        self._user = ""
        self._secrets: tuple[str, ...] = ()
        self._skipped = 0
        parts = urlsplit(config.url)
        # Credentials in the URL become basic auth; the URL used in requests and messages carries none.
        self._base = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])).rstrip("/")
        self._url_user, self._url_password = parts.username, parts.password

    async def collect(self, emit: Emitter) -> None:
        try:
            await self._open()
            queues = await self._list_queues(emit)
        except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as exc:
            await self.close()  # the next run starts afresh and re-reads the password file
            detail = str(exc) or type(exc).__name__
            message = scrub(f"rabbitmq {mask_url(self.config.url)}: {detail}", self._secrets)
            self.context.logger.warning("%s; retrying at the next interval", message)
            emit.error(message)
            queues = []
        if len(queues) > self.config.max_queues:
            over = len(queues) - self.config.max_queues
            self._skipped += over
            self.context.logger.warning(
                "%d queues match, max_queues = %d: %d skipped", len(queues), self.config.max_queues, over
            )
            # Keep the same queues from scrape to scrape: the first ones by vhost and name.
            queues = sorted(queues, key=lambda q: (q["vhost"], q["name"]))[: self.config.max_queues]
        now = self.context.clock() / 1e9
        for queue in queues:
            _emit_queue(emit, queue, now)
        emit.counter(
            SKIPPED, self._skipped, labels_from({"system": "rabbitmq", "reason": "max_queues"}), unit="{queue}"
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _open(self) -> None:
        if self._session is not None:
            return
        cfg = self.config
        if cfg.password_file:
            password = await self.context.run_blocking(read_secret, cfg.password_file)
        else:
            password = self._url_password if self._url_password is not None else "guest"
        self._user = user = self._url_user or cfg.username
        self._secrets = (password,) if password else ()
        self._headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        tls: ssl.SSLContext | None = None
        if self._base.startswith("https://") and (cfg.tls_ca or cfg.tls_cert):
            tls = await self.context.run_blocking(_tls_context, cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True, limit=2),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
        )

    async def _list_queues(self, emit: Emitter) -> list[dict[str, Any]]:
        queues: list[dict[str, Any]] = []
        targets = [(v, f"/api/queues/{quote(v, safe='')}") for v in self.config.vhosts] or [("", "/api/queues")]
        name_regex = _server_side_filter(self.config.queues)
        for vhost, path in targets:
            try:
                queues.extend(q for q in await self._pages(path, name_regex) if self._wanted(q["name"]))
            except NotFound:
                # One missing vhost must not hide the others.
                message = f"rabbitmq {mask_url(self.config.url)}: vhost {vhost!r} does not exist (HTTP 404)"
                self.context.logger.warning(message)
                emit.error(message)
        return queues

    async def _pages(self, path: str, name_regex: str | None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page, page_count = 1, 1
        while page <= page_count:
            query = {"page": page, "page_size": self.config.page_size, "columns": _COLUMNS}
            if name_regex:
                query |= {"name": name_regex, "use_regex": "true"}
            try:
                body = await self._get(f"{path}?{urlencode(query)}")
            except PageOutOfRange:
                break  # queues were deleted while we paged: the last page went away
            items.extend(body.get("items", ()))
            page_count = int(body.get("page_count", 0))
            page += 1
        return items

    async def _get(self, path_query: str) -> dict[str, Any]:
        assert self._session is not None
        url = yarl.URL(self._base + path_query, encoded=True)
        async with self._session.get(url, headers=self._headers) as response:
            if response.status == 401:
                raise ApiError(f"authentication failed for user {self._user!r} (HTTP 401)")
            if response.status == 404:
                raise NotFound(url.path)
            if response.status != 200:
                text = (await response.text(errors="replace"))[:200]
                if response.status == 400 and "page_out_of_range" in text:
                    raise PageOutOfRange(text)
                raise ApiError(f"GET {url.path} answered HTTP {response.status}: {text}")
            return await response.json()

    def _wanted(self, name: str) -> bool:
        cfg = self.config
        return any(fnmatch.fnmatchcase(name, p) for p in cfg.queues) and not any(
            fnmatch.fnmatchcase(name, p) for p in cfg.exclude_queues
        )


def _emit_queue(emit: Emitter, queue: dict[str, Any], now: float) -> None:
    base = {"system": "rabbitmq", "vhost": queue["vhost"], "queue": queue["name"]}
    ready = queue.get("messages_ready")
    # A queue declared a moment ago has no statistics yet: report nothing rather than zeros.
    if ready is not None:
        emit.gauge(MESSAGES, ready, labels_from({**base, "state": "ready"}), unit=MESSAGE_UNIT)
    if queue.get("messages_unacknowledged") is not None:
        unacked = queue["messages_unacknowledged"]
        emit.gauge(MESSAGES, unacked, labels_from({**base, "state": "unacked"}), unit=MESSAGE_UNIT)
    if queue.get("consumers") is not None:
        emit.gauge(CONSUMERS, queue["consumers"], labels_from(base), unit=CONSUMER_UNIT)
    # The oldest message not yet acknowledged, delivered or not; only classic queues whose
    # messages carry the AMQP timestamp property report it.
    head = queue.get("head_message_timestamp")
    empty = ready == 0 and queue.get("messages_unacknowledged") == 0
    age = max(0.0, now - head) if isinstance(head, int | float) else 0.0 if empty else None
    if age is not None:
        emit.gauge(OLDEST_AGE, age, labels_from(base), unit="s")


def _server_side_filter(patterns: list[str]) -> str | None:
    """A regex for the API's ``name`` filter, so non-matching queues are not paged through.

    Only plain ``*``/``?`` globs are translated; the client-side glob match stays authoritative.
    """
    if "*" in patterns or any("[" in p for p in patterns):
        return None
    alternatives = (re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") for p in patterns)
    return "^(?:" + "|".join(alternatives) + ")$"


def _tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key or None)
    return context
