"""The agent's own metrics (``hostwatch_*``), on a registry of its own.

One :class:`Telemetry` per agent process, created by the runtime and handed to
plugins through their context; nothing is registered at import time, so tests
can create as many as they like. Plugins use the attributes below directly,
e.g. ``telemetry.output_retries.labels(name).inc()``. A plugin declares metrics of its own
with :meth:`Telemetry.counter` and :meth:`Telemetry.gauge`.
"""

from __future__ import annotations

import platform
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Summary, disable_created_metrics
from prometheus_client.process_collector import ProcessCollector

from agent import __version__


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `_created` series double the page for no dashboard's benefit (process-wide switch)
        disable_created_metrics()
        self.registry = registry = registry or CollectorRegistry(auto_describe=True)
        self._declared: dict[str, Counter | Gauge] = {}
        ProcessCollector(registry=registry)
        self.build_info = Gauge(
            "hostwatch_build_info",
            "hostwatch version and Python runtime; always 1.",
            ["version", "python"],
            registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.start_time = Gauge(
            "hostwatch_start_time_seconds", "When the agent started, seconds since the epoch.", registry=registry
        )
        self.start_time.set_to_current_time()
        self.config_reloads = Counter(
            "hostwatch_config_reloads",
            "Configuration reloads by result (success, failure).",
            ["result"],
            registry=registry,
        )
        self.config_last_reload_success = Gauge(
            "hostwatch_config_last_reload_successful", "1 if the last reload succeeded.", registry=registry
        )
        self.config_last_reload_success.set(1)
        self.http_connections = Gauge(
            "hostwatch_http_connections", "Connections open to the agent's HTTP server.", registry=registry
        )
        self.http_connections_closed = Counter(
            "hostwatch_http_connections_closed",
            "HTTP connections the agent closed on its own, by reason (limit: over max connections;"
            " head_timeout, idle_timeout, write_timeout: a client too slow).",
            ["reason"],
            registry=registry,
        )

        # collectors
        self.collector_runs = Counter(
            "hostwatch_collector_runs",
            "Collection runs started, by collector instance.",
            ["collector"],
            registry=registry,
        )
        self.collector_errors = Counter(
            "hostwatch_collector_errors",
            "Collection errors (failed or timed-out runs and reported problems).",
            ["collector"],
            registry=registry,
        )
        self.collector_timeouts = Counter(
            "hostwatch_collector_timeouts",
            "Runs abandoned because they exceeded the instance's timeout.",
            ["collector"],
            registry=registry,
        )
        self.collector_duration = Summary(
            "hostwatch_collector_duration_seconds", "Duration of collection runs.", ["collector"], registry=registry
        )
        self.collector_samples = Gauge(
            "hostwatch_collector_samples",
            "Samples produced by the instance's last run.",
            ["collector"],
            registry=registry,
        )

        # logs: the logs plugin declares its own (collectors/logs/stats.py); redaction is the core's
        self.log_lines_redacted = Counter(
            "hostwatch_log_lines_redacted",
            "Log lines changed by a redaction rule, by rule.",
            ["rule"],
            registry=registry,
        )

        # the OTLP receiver (collectors/otlp_receiver)
        self.otlp_requests = Counter(
            "hostwatch_otlp_requests",
            "OTLP export requests received, by transport (http, grpc), signal and result"
            " (ok, partial, malformed, too_large, busy, unavailable, unsupported).",
            ["transport", "signal", "result"],
            registry=registry,
        )
        self.otlp_received_items = Counter(
            "hostwatch_otlp_received_items",
            "Data points, log records and spans received over OTLP and handed to the outputs, by signal.",
            ["signal"],
            registry=registry,
        )
        self.otlp_refused_items = Counter(
            "hostwatch_otlp_refused_items",
            "OTLP items refused, by signal and reason (unsupported: points a partial success reported;"
            " unavailable: the buffers stayed full and the sender was told to retry).",
            ["signal", "reason"],
            registry=registry,
        )
        self.otlp_inflight_bytes = Gauge(
            "hostwatch_otlp_inflight_bytes",
            "Bytes of OTLP requests being decoded or waiting for the outputs' buffers.",
            registry=registry,
        )

        # the journal (journald collector)
        self.journal_entries_read = Counter(
            "hostwatch_journal_entries_read",
            "Journal entries read from journalctl, by collector instance.",
            ["collector"],
            registry=registry,
        )
        self.journal_cursor_lost = Counter(
            "hostwatch_journal_cursor_lost",
            "Saved journal cursors no longer in the journal (vacuumed before they were read on from):"
            " reading starts again at the oldest entry.",
            ["collector"],
            registry=registry,
        )
        self.journal_restarts = Counter(
            "hostwatch_journal_restarts",
            "journalctl restarted, by reason (exited, not_found: the program is missing, error: it could not"
            " be started, bad_output: its output was not the export format).",
            ["collector", "reason"],
            registry=registry,
        )
        self.journal_fields_truncated = Counter(
            "hostwatch_journal_fields_truncated",
            "Journal field values cut at max_field_bytes.",
            ["collector"],
            registry=registry,
        )

        self.unrouted_items = Counter(
            "hostwatch_unrouted_items",
            "Items a source handed on that no output takes (dropped), by signal: log lines without a log"
            " output, OTLP traces without a trace output, OTLP metrics without a metrics output.",
            ["signal"],
            registry=registry,
        )

        # outputs and buffers
        self.output_sent_items = Counter(
            "hostwatch_output_sent_items",
            "Items delivered, by output and signal.",
            ["output", "signal"],
            registry=registry,
        )
        self.output_sent_bytes = Counter(
            "hostwatch_output_sent_bytes",
            "Request payload bytes delivered (after compression).",
            ["output"],
            registry=registry,
        )
        self.output_requests = Counter(
            "hostwatch_output_requests",
            "Export attempts, by output and result (ok, retry, drop, too_large, error).",
            ["output", "result"],
            registry=registry,
        )
        self.output_retries = Counter(
            "hostwatch_output_retries", "Export attempts that will be retried.", ["output"], registry=registry
        )
        self.output_errors = Counter(
            "hostwatch_output_errors",
            "Unexpected exceptions (bugs) in an output's export or its sender; the batch is kept and retried.",
            ["output"],
            registry=registry,
        )
        self.output_dropped_items = Counter(
            "hostwatch_output_dropped_items",
            "Items given up, by output and reason.",
            ["output", "reason"],
            registry=registry,
        )
        self.output_request_duration = Summary(
            "hostwatch_output_request_duration_seconds",
            "Duration of export attempts.",
            ["output"],
            registry=registry,
        )
        self.buffer_items = Gauge(
            "hostwatch_buffer_items", "Items waiting in the output's buffer.", ["output"], registry=registry
        )
        self.buffer_bytes = Gauge(
            "hostwatch_buffer_bytes", "Bytes waiting in the output's buffer.", ["output"], registry=registry
        )
        self.buffer_max_bytes = Gauge(
            "hostwatch_buffer_max_bytes",
            "Capacity of the output's buffer (buffer_max_bytes, per signal lane).",
            ["output"],
            registry=registry,
        )
        self.buffer_corrupt_records = Counter(
            "hostwatch_buffer_corrupt_records",
            "Damaged disk-buffer records skipped (torn writes, corruption).",
            ["output"],
            registry=registry,
        )
        self.buffer_oldest_age = Gauge(
            "hostwatch_buffer_oldest_age_seconds",
            "Age of the oldest item waiting in the output's buffer.",
            ["output"],
            registry=registry,
        )

    def counter(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> Counter:
        """A counter a plugin declares; the same one again when asked again (several instances of a
        plugin, or a reload, share the registry, which refuses a name twice)."""
        return self._declare(Counter, name, documentation, labelnames)

    def gauge(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> Gauge:
        """A gauge a plugin declares; see :meth:`counter`."""
        return self._declare(Gauge, name, documentation, labelnames)

    def _declare(self, kind: type, name: str, documentation: str, labelnames: tuple[str, ...]) -> Any:
        metric = self._declared.get(name)
        if metric is None:
            metric = self._declared[name] = kind(name, documentation, list(labelnames), registry=self.registry)
        elif not isinstance(metric, kind) or tuple(metric._labelnames) != tuple(labelnames):
            raise ValueError(f"metric {name} declared again with another type or labels")
        return metric
