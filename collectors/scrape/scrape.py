"""Scrapes Prometheus endpoints, as a Prometheus scrape job does.

One instance is one job: its targets (static, and ``file_sd`` files checked
every interval) are fetched concurrently, each body is parsed on the
instance's worker thread, and every sample carries the target's labels
(``job``, ``instance`` = host:port, per-target labels). Each target also gets
Prometheus' ``up``, ``scrape_duration_seconds``, ``scrape_samples_scraped``,
``scrape_samples_post_metric_relabeling`` and ``scrape_series_added``. All
targets' samples leave in one run, so a series or a whole target that
disappears is ended with staleness markers by the engine, as Prometheus does.

A target's request gets the instance's ``timeout`` minus a reserve for
parsing, so a hung target shows as ``up 0`` instead of failing the run. A
failed scrape (refused, timeout, HTTP error, ``body_size_limit``, malformed
body, ``sample_limit``, label limits) keeps nothing of that target, reports
``up 0`` and is counted in ``hostwatch_scrape_failures_total{reason}``; it is
logged once per target and reason.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Annotated

import aiohttp
import msgspec

from agent.httpauth import build_ssl_context, load_credentials
from agent.model import merge_labels
from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig, Size, readable_file
from collectors.scrape.discovery import Defaults, FileTargets, Target, static_targets
from collectors.scrape.exposition import SERIES_PER_SAMPLE_LIMIT, ExpositionError, Plan, Scan, scan
from collectors.scrape.relabel import Relabeler, RelabelRule
from collectors.scrape.series import LabelLimitError, Resolver

Desc = msgspec.Meta
ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus asks for
FAILURES = "hostwatch_scrape_failures_total"
DROPPED = "hostwatch_scrape_dropped_samples_total"


class StaticConfig(PluginConfig):
    targets: Annotated[list[str], Desc(description="host:port (or URLs) sharing the labels below.")]
    labels: Annotated[dict[str, str], Desc(description="Target labels of these targets.")] = msgspec.field(
        default_factory=dict
    )


class Config(PluginConfig):
    job: Annotated[str, Desc(description="The job label; empty: the instance's name.")] = ""
    targets: Annotated[list[str], Desc(description="host:port (or http(s) URLs) to scrape.")] = msgspec.field(
        default_factory=list
    )
    static_configs: Annotated[list[StaticConfig], Desc(description="Targets with labels of their own.")] = (
        msgspec.field(default_factory=list)
    )
    files: Annotated[list[str], Desc(description="Prometheus file_sd files (JSON/YAML), globs allowed.")] = (
        msgspec.field(default_factory=list)
    )
    scheme: Annotated[str, Desc(description="http or https, for targets given as host:port.")] = "http"
    metrics_path: Annotated[str, Desc(description="Path of the metrics page.")] = "/metrics"
    params: Annotated[dict[str, str], Desc(description="URL query parameters.")] = msgspec.field(default_factory=dict)
    honor_labels: Annotated[bool, Desc(description="Scraped labels win over target labels.")] = False
    honor_timestamps: Annotated[bool, Desc(description="Keep timestamps the target exposes.")] = True
    sample_limit: Annotated[int, Desc(ge=0, description="More samples fail the scrape; 0: no limit.")] = 100_000
    body_size_limit: Annotated[
        Size.at_least("1KiB"), Desc(description="A larger (uncompressed) body fails the scrape.")
    ] = Size(16 << 20)
    label_limit: Annotated[int, Desc(ge=0, description="Labels per series at most; 0: no limit.")] = 64
    label_name_length_limit: Annotated[int, Desc(ge=0, description="0: no limit.")] = 256
    label_value_length_limit: Annotated[int, Desc(ge=0, description="0: no limit.")] = 4096
    metric_relabel_configs: Annotated[list[RelabelRule], Desc(description="Rules on scraped series.")] = msgspec.field(
        default_factory=list
    )
    tls_ca: Annotated[str, Desc(description="PEM CAs to trust; empty: the system's."), readable_file] = ""
    tls_cert: Annotated[str, Desc(description="PEM client certificate (with tls_key)."), readable_file] = ""
    tls_key: Annotated[str, Desc(description="PEM key of tls_cert."), readable_file] = ""
    tls_server_name: Annotated[str, Desc(description="Name the certificate must match.")] = ""
    tls_insecure_skip_verify: Annotated[bool, Desc(description="Accept any certificate.")] = False
    basic_auth_user: Annotated[str, Desc(description="Basic auth user.")] = ""
    basic_auth_password_file: Annotated[str, Desc(description="Basic auth password."), readable_file] = ""
    bearer_token_file: Annotated[str, Desc(description="Bearer token."), readable_file] = ""

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scheme: {self.scheme!r} is not http or https")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if bool(self.basic_auth_user) != bool(self.basic_auth_password_file):
            raise ValueError("basic_auth_user and basic_auth_password_file go together")
        if self.basic_auth_user and self.bearer_token_file:
            raise ValueError("use basic auth or a bearer token, not both")
        defaults = Defaults("job", self.scheme, self.metrics_path)
        try:
            static_targets(self.groups(), defaults)
        except ValueError as exc:
            raise ValueError(f"targets: {exc}") from None

    def groups(self) -> list[tuple[list[str], dict[str, str]]]:
        return [(self.targets, {})] + [(s.targets, s.labels) for s in self.static_configs]


class ScrapeFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class TargetState:
    """What a target keeps between scrapes: its series cache, its last body's plan and its counters."""

    target: Target
    resolver: Resolver
    cache: dict = field(default_factory=dict)
    plan: Plan | None = None
    failures: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    logged: set[str] = field(default_factory=set)


class PrometheusScrapeCollector(PeriodicCollector):
    Config = Config

    def __init__(self, config: Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._defaults = Defaults(
            config.job or context.instance, config.scheme, config.metrics_path, tuple(config.params.items())
        )
        self._static = static_targets(config.groups(), self._defaults)
        self._files = FileTargets(config.files, self._defaults) if config.files else None
        self._relabeler = Relabeler(config.metric_relabel_configs)
        self._states: dict[Target, TargetState] = {}
        self._session: aiohttp.ClientSession | None = None
        # the run's bound, less a reserve for parsing: a hung target is up 0, the others still count
        self._fetch_timeout = max(0.1, context.timeout - min(1.0, 0.1 * context.timeout))

    async def collect(self, emit: Emitter) -> None:
        targets = list(self._static)
        if self._files is not None:
            found, problems = await self.context.run_blocking(self._files.refresh)
            targets.extend(found)
            for problem in problems:
                emit.error(problem)
        wanted = {t: None for t in targets}  # ordered, deduplicated
        self._states = {t: self._states.get(t) or self._new_state(t) for t in wanted}
        if not self._states:
            return
        try:
            headers: dict[str, str] | ScrapeFailed = await self._headers()
        except (OSError, ValueError) as exc:  # a secret file gone or empty: every target is down for it
            headers = ScrapeFailed("credentials", str(exc))
        session = await self._open()
        await asyncio.gather(*(self._scrape(session, headers, state, emit) for state in self._states.values()))

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _new_state(self, target: Target) -> TargetState:
        cfg = self.config
        resolver = Resolver(
            # the instance's and [agent] labels are target labels too: honor_labels decides a clash
            merge_labels(merge_labels(self.context.agent_labels, self.context.static_labels), target.labels),
            honor_labels=cfg.honor_labels,
            relabeler=self._relabeler,
            label_limit=cfg.label_limit,
            name_length_limit=cfg.label_name_length_limit,
            value_length_limit=cfg.label_value_length_limit,
        )
        return TargetState(target, resolver)

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            cfg = self.config
            tls: ssl.SSLContext | bool = True
            if cfg.tls_ca or cfg.tls_cert or cfg.tls_insecure_skip_verify:
                tls = await self.context.run_blocking(build_ssl_context, cfg)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls, limit=32),
                timeout=aiohttp.ClientTimeout(total=self._fetch_timeout),
                auto_decompress=True,
            )
        return self._session

    async def _headers(self) -> dict[str, str]:
        headers = {
            "Accept": ACCEPT,
            "Accept-Encoding": "gzip",
            "User-Agent": "hostwatch",
            "X-Prometheus-Scrape-Timeout-Seconds": f"{self._fetch_timeout:g}",
        }
        cfg = self.config
        if cfg.bearer_token_file or cfg.basic_auth_user:
            # read every run: a rotated token or password is used at the next scrape
            headers["Authorization"] = await self.context.run_blocking(_authorization, cfg)
        return headers

    async def _scrape(
        self, session: aiohttp.ClientSession, headers: dict | ScrapeFailed, state: TargetState, emit: Emitter
    ) -> None:
        target = state.target
        start_ns = self.context.clock()
        started = time.perf_counter()
        result: Scan | None = None
        try:
            if isinstance(headers, ScrapeFailed):
                raise ScrapeFailed(headers.reason, str(headers))
            body, content_type = await self._fetch(session, target, headers)
            result = await self.context.run_blocking(self._parse, state, body, content_type, start_ns, emit)
        except ScrapeFailed as exc:
            self._failed(state, exc.reason, str(exc), emit)
        duration = time.perf_counter() - started
        labels = target.labels
        if result is not None:
            if result.duplicates:
                state.dropped["duplicate"] = state.dropped.get("duplicate", 0) + result.duplicates
                self._log_once(state, "duplicate", f"{result.duplicates} samples of series already in the body")
            if "down" in state.logged:  # log the next outage again, once
                self.context.logger.info("scrape %s (job %s): up again", target.url, self._defaults.job)
                state.logged.clear()
        up, scraped = (1.0, result.samples) if result is not None else (0.0, 0)
        kept = len(result.rows) if result is not None else 0
        added = result.new_series if result is not None else 0
        for name, value in (
            ("up", up),
            ("scrape_duration_seconds", duration),
            ("scrape_samples_scraped", scraped),
            ("scrape_samples_post_metric_relabeling", kept),
            ("scrape_series_added", added),
        ):
            emit.gauge(name, value, labels, time_ns=start_ns)
        for metric, counts in ((FAILURES, state.failures), (DROPPED, state.dropped)):
            for reason, count in counts.items():
                emit.counter(metric, count, merge_labels(labels, (("reason", reason),)), time_ns=start_ns)

    async def _fetch(self, session: aiohttp.ClientSession, target: Target, headers: dict) -> tuple[bytes, str]:
        limit = int(self.config.body_size_limit)  # counted after decompression, as Prometheus does
        try:
            server_name = self.config.tls_server_name or None
            async with session.get(target.url, headers=headers, server_hostname=server_name) as r:
                if r.status != 200:
                    raise ScrapeFailed("http_status", f"HTTP {r.status} {r.reason or ''}".rstrip())
                chunks, size = [], 0
                async for chunk in r.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise ScrapeFailed(
                            "body_size_limit", f"body larger than body_size_limit ({limit} bytes); not read further"
                        )
                    chunks.append(chunk)
                return b"".join(chunks), r.headers.get("Content-Type", "")
        except TimeoutError:
            raise ScrapeFailed("timeout", f"no complete answer within {self._fetch_timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ScrapeFailed("connection", f"{type(exc).__name__}: {exc}") from None

    def _parse(self, state: TargetState, body: bytes, content_type: str, start_ns: int, emit: Emitter) -> Scan:
        """Worker thread: body -> samples, through the target's series cache, handed to ``emit``.

        ``emit.add`` runs here too: with ``[agent] labels`` it merges them into every
        sample, which for a big target would hold the event loop for a while."""
        cfg = self.config
        current: dict = {}
        try:
            result = scan(
                body.decode("utf-8", "replace"),
                openmetrics=content_type.startswith("application/openmetrics-text"),
                resolve=state.resolver.resolve,
                previous=state.cache,
                current=current,
                time_ns=start_ns,
                honor_timestamps=cfg.honor_timestamps,
                max_samples=cfg.sample_limit,
                plan=state.plan,
                resolve_many=state.resolver.resolve_many,
            )
        except ExpositionError as exc:
            state.cache.update(current)  # series resolved before the error: keep them for the next scrape
            state.plan = None
            if isinstance(exc.__cause__, LabelLimitError):
                raise ScrapeFailed("label_limit", str(exc)) from None
            html = " (the target answered a web page, not metrics)" if "html" in content_type else ""
            raise ScrapeFailed("parse_error", f"{exc}{html}") from None
        if result.truncated:
            state.cache.update(current)
            state.plan = None  # the cache now holds more than the plan's series
            if result.too_many_series:
                raise ScrapeFailed(
                    "sample_limit",
                    f"more than {SERIES_PER_SAMPLE_LIMIT} x sample_limit = {cfg.sample_limit} series"
                    " (counting those metric_relabel_configs drops)",
                )
            raise ScrapeFailed("sample_limit", f"more than sample_limit = {cfg.sample_limit} samples")
        state.cache, state.plan = result.cache, result.plan
        emit.add(result.rows)
        return result

    def _failed(self, state: TargetState, reason: str, message: str, emit: Emitter) -> None:
        state.failures[reason] = state.failures.get(reason, 0) + 1
        self._log_once(state, reason, message)
        state.logged.add("down")

    def _log_once(self, state: TargetState, reason: str, message: str) -> None:
        if reason in state.logged:
            return
        state.logged.add(reason)
        self.context.logger.warning(
            "scrape %s (job %s): %s; counted in %s{reason=%r}, further ones only counted",
            state.target.url,
            self._defaults.job,
            message,
            FAILURES if reason != "duplicate" else DROPPED,
            reason,
        )


def _authorization(cfg: Config) -> str:
    """The Authorization header from the secret files (blocking). Errors name the file, not its content."""
    try:
        return load_credentials(cfg).authorization
    except OSError as exc:
        raise OSError(f"cannot read {exc.filename}: {exc.strerror}") from None
