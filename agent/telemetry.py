"""The agent's own metrics (``hostwatch_*``, ``process_*``): declared, typed metric objects.

One :class:`Telemetry` per agent process, created by the runtime and handed to
plugins through their context; nothing is registered at import time, so tests
can create as many as they like. Each core metric is an attribute with its type
and label names (``telemetry.output_retries.labels(name).inc()``); a plugin
declares metrics of its own with :meth:`Telemetry.counter` and
:meth:`Telemetry.gauge`. ``/metrics`` shows them as :meth:`Telemetry.page`
renders them (``agent.selfmetrics``: the text prometheus_client wrote, without
it).
"""

from __future__ import annotations

import platform
from typing import Any, TypeVar

from agent import __version__
from agent.selfmetrics import Counter, Family, Gauge, Metric, MetricRegistry, ProcessMetrics, Summary

__all__ = ["Counter", "Gauge", "Summary", "Telemetry"]

M = TypeVar("M", bound=Metric)


class Telemetry:
    def __init__(self, registry: Any = None) -> None:
        """``registry``: a prometheus_client registry to show these metrics on as well (tests
        and embedders read them there); the agent itself needs none."""
        self.registry = MetricRegistry(ProcessMetrics())
        add = self._add
        self.build_info = add(
            Gauge("hostwatch_build_info", "hostwatch version and Python runtime; always 1.", ("version", "python"))
        )
        self.start_time = add(Gauge("hostwatch_start_time_seconds", "When the agent started, seconds since the epoch."))
        self.config_reloads = add(
            Counter("hostwatch_config_reloads", "Configuration reloads by result (success, failure).", ("result",))
        )
        self.config_last_reload_success = add(
            Gauge("hostwatch_config_last_reload_successful", "1 if the last reload succeeded.")
        )
        self.http_connections = add(Gauge("hostwatch_http_connections", "Connections open to the agent's HTTP server."))
        self.http_connections_closed = add(
            Counter(
                "hostwatch_http_connections_closed",
                "HTTP connections the agent closed on its own, by reason (limit: over max connections; head_timeout,"
                " idle_timeout, write_timeout: a client too slow).",
                ("reason",),
            )
        )
        # collectors
        self.collector_runs = add(
            Counter("hostwatch_collector_runs", "Collection runs started, by collector instance.", ("collector",))
        )
        self.collector_errors = add(
            Counter(
                "hostwatch_collector_errors",
                "Collection errors (failed or timed-out runs and reported problems).",
                ("collector",),
            )
        )
        self.collector_timeouts = add(
            Counter(
                "hostwatch_collector_timeouts",
                "Runs abandoned because they exceeded the instance's timeout.",
                ("collector",),
            )
        )
        self.collector_duration = add(
            Summary("hostwatch_collector_duration_seconds", "Duration of collection runs.", ("collector",))
        )
        self.collector_samples = add(
            Gauge("hostwatch_collector_samples", "Samples produced by the instance's last run.", ("collector",))
        )
        # logs: the logs plugin declares its own (collectors/logs/stats.py); redaction is the core's
        self.log_lines_redacted = add(
            Counter("hostwatch_log_lines_redacted", "Log lines changed by a redaction rule, by rule.", ("rule",))
        )
        # the OTLP receiver (collectors/otlp_receiver)
        self.otlp_requests = add(
            Counter(
                "hostwatch_otlp_requests",
                "OTLP export requests received, by transport (http, grpc), signal and result (ok, partial,"
                " malformed, too_large, busy, unavailable, unsupported).",
                ("transport", "signal", "result"),
            )
        )
        self.otlp_received_items = add(
            Counter(
                "hostwatch_otlp_received_items",
                "Data points, log records and spans received over OTLP and handed to the outputs, by signal.",
                ("signal",),
            )
        )
        self.otlp_refused_items = add(
            Counter(
                "hostwatch_otlp_refused_items",
                "OTLP items refused, by signal and reason (unsupported: points a partial success reported;"
                " unavailable: the buffers stayed full and the sender was told to retry).",
                ("signal", "reason"),
            )
        )
        self.otlp_inflight_bytes = add(
            Gauge(
                "hostwatch_otlp_inflight_bytes",
                "Bytes of OTLP requests being decoded or waiting for the outputs' buffers.",
            )
        )
        # the journal (journald collector)
        self.journal_entries_read = add(
            Counter(
                "hostwatch_journal_entries_read",
                "Journal entries read from journalctl, by collector instance.",
                ("collector",),
            )
        )
        self.journal_cursor_lost = add(
            Counter(
                "hostwatch_journal_cursor_lost",
                "Saved journal cursors no longer in the journal (vacuumed before they were read on from): reading"
                " starts again at the oldest entry.",
                ("collector",),
            )
        )
        self.journal_restarts = add(
            Counter(
                "hostwatch_journal_restarts",
                "journalctl restarted, by reason (exited, not_found: the program is missing, error: it could not be"
                " started, bad_output: its output was not the export format).",
                ("collector", "reason"),
            )
        )
        self.journal_fields_truncated = add(
            Counter(
                "hostwatch_journal_fields_truncated", "Journal field values cut at max_field_bytes.", ("collector",)
            )
        )
        self.unrouted_items = add(
            Counter(
                "hostwatch_unrouted_items",
                "Items a source handed on that no output takes (dropped), by signal: log lines without a log output,"
                " OTLP traces without a trace output, OTLP metrics without a metrics output.",
                ("signal",),
            )
        )
        # outputs and buffers
        self.output_sent_items = add(
            Counter("hostwatch_output_sent_items", "Items delivered, by output and signal.", ("output", "signal"))
        )
        self.output_requests = add(
            Counter(
                "hostwatch_output_requests",
                "Export attempts, by output and result (ok, retry, drop, too_large, error).",
                ("output", "result"),
            )
        )
        self.output_retries = add(
            Counter("hostwatch_output_retries", "Export attempts that will be retried.", ("output",))
        )
        self.output_errors = add(
            Counter(
                "hostwatch_output_errors",
                "Unexpected exceptions (bugs) in an output's export or its sender; the batch is kept and retried.",
                ("output",),
            )
        )
        self.output_dropped_items = add(
            Counter("hostwatch_output_dropped_items", "Items given up, by output and reason.", ("output", "reason"))
        )
        self.output_request_duration = add(
            Summary("hostwatch_output_request_duration_seconds", "Duration of export attempts.", ("output",))
        )
        self.buffer_items = add(Gauge("hostwatch_buffer_items", "Items waiting in the output's buffer.", ("output",)))
        self.buffer_bytes = add(Gauge("hostwatch_buffer_bytes", "Bytes waiting in the output's buffer.", ("output",)))
        self.buffer_max_bytes = add(
            Gauge(
                "hostwatch_buffer_max_bytes",
                "Capacity of the output's buffer (buffer_max_bytes, per signal lane).",
                ("output",),
            )
        )
        self.buffer_corrupt_records = add(
            Counter(
                "hostwatch_buffer_corrupt_records",
                "Damaged disk-buffer records skipped (torn writes, corruption).",
                ("output",),
            )
        )
        self.buffer_oldest_age = add(
            Gauge(
                "hostwatch_buffer_oldest_age_seconds",
                "Age of the oldest item waiting in the output's buffer.",
                ("output",),
            )
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.start_time.set_to_current_time()
        self.config_last_reload_success.set(1)
        if registry is not None:
            registry.register(_PrometheusClientView(self.registry))

    def _add(self, metric: M) -> M:
        self.registry.register(metric)
        return metric

    def page(self) -> bytes:
        """The exposition text of every metric, for ``/metrics``."""
        return self.registry.render()

    @property
    def log_lines_invalid_encoding(self) -> Counter:
        """Declared by the logs plugin (``collectors/logs/stats.py``) and counted by the journald
        collector too: the one counter, whichever declares it first."""
        return self.counter(
            "hostwatch_log_lines_invalid_encoding",
            "Log lines with bytes invalid in their encoding, replaced by U+FFFD.",
        )

    def counter(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> Counter:
        """A counter a plugin declares; the same one again when asked again (several instances of a
        plugin, or a reload, share the registry, which refuses a name twice)."""
        return self._declare(Counter, name, documentation, labelnames)

    def gauge(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> Gauge:
        """A gauge a plugin declares; see :meth:`counter`."""
        return self._declare(Gauge, name, documentation, labelnames)

    def _declare(self, kind: type[M], name: str, documentation: str, labelnames: tuple[str, ...]) -> M:
        metric = self.registry.get(name)
        if metric is None:
            return self._add(kind(name, documentation, labelnames))
        if type(metric) is not kind or metric.labelnames != tuple(labelnames):
            raise ValueError(f"metric {name} declared again with another type or labels")
        return metric  # type: ignore[return-value]


class _PrometheusClientView:
    """The metrics as a prometheus_client collector: only for a registry the caller passed (so
    prometheus_client is imported by the caller, never by the agent)."""

    def __init__(self, registry: MetricRegistry) -> None:
        self._registry = registry

    def collect(self) -> list[Any]:
        from prometheus_client.metrics_core import Metric as ClientMetric

        out = []
        family: Family
        for family in self._registry.collect():
            metric = ClientMetric(family.name, family.documentation, family.type)
            for sample in family.samples:
                metric.add_sample(sample.name, sample.labels, sample.value)
            out.append(metric)
        return out
