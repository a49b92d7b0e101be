"""The agent's own metrics as samples, so a push-only deployment sees them too.

``/metrics`` serves the ``hostwatch_*`` and ``process_*`` metrics to a scraper; this
collector (like Telegraf's ``internal`` input) hands the same values to the
pipeline every interval, so the outputs push them with the host metrics and the
alert rules about dropped data, full buffers and failing outputs work without a
scrape.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from agent.model import labels_from
from agent.plugin import PeriodicCollector, PluginConfig

Meta = msgspec.Meta
# summary and counter children that are cumulative
_COUNTER_SUFFIXES = ("_total", "_count", "_sum")


class InternalConfig(PluginConfig):
    prefixes: Annotated[
        list[str], Meta(description="Metric name prefixes to push; the agent's own and its process metrics.")
    ] = msgspec.field(default_factory=lambda: ["hostwatch_", "process_"])


class InternalCollector(PeriodicCollector):
    Config = InternalConfig
    served_on_metrics = False  # /metrics serves these already: twice would be duplicate series

    async def collect(self, emit) -> None:
        telemetry = self.context.telemetry
        if telemetry is None:
            emit.error("no agent telemetry in this context")
            return
        samples = await self.context.run_blocking(self._read, telemetry.registry)
        for name, labels, value, kind in samples:
            (emit.counter if kind == "counter" else emit.gauge)(name, value, labels)

    def _read(self, registry) -> list[tuple]:
        prefixes = tuple(self.config.prefixes)
        out = []
        for family in registry.collect():
            if not family.name.startswith(prefixes):
                continue
            cumulative = family.type in ("counter", "summary", "histogram")
            for sample in family.samples:
                kind = "counter" if cumulative and sample.name.endswith(_COUNTER_SUFFIXES) else "gauge"
                out.append((sample.name, labels_from(sample.labels), float(sample.value), kind))
        return out
