"""The latest host samples, kept for ``/metrics`` and rendered as Prometheus text.

Each collector instance's last run replaces its previous samples, so a series
that stops being produced (an unmounted file system, a removed interface)
disappears from the page, as it does from node_exporter's. The page is
rendered once per change and then served from cache: a scrape between two
collection runs costs nothing but the copy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from agent.model import Sample


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def format_value(value: float) -> str:
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render_samples(samples: Iterable[Sample], with_timestamps: bool = False) -> str:
    """Prometheus text format 0.0.4: one ``# TYPE`` line per family, series after it."""
    families: dict[str, list[Sample]] = {}
    for sample in samples:
        families.setdefault(sample.name, []).append(sample)
    lines: list[str] = []
    append = lines.append
    for name, members in families.items():
        append(f"# TYPE {name} {members[0].kind}")
        for s in members:
            if s.labels:
                labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in s.labels)
                series = f"{name}{{{labels}}} {format_value(s.value)}"
            else:
                series = f"{name} {format_value(s.value)}"
            if with_timestamps:
                series += f" {s.time_ns // 1_000_000}"
            append(series)
    lines.append("")
    return "\n".join(lines)


class LatestSamples:
    """The last samples of every collector instance."""

    def __init__(self) -> None:
        self._by_instance: dict[str, list[Sample]] = {}
        self._page: bytes | None = None

    def replace(self, instance: str, samples: list[Sample]) -> None:
        self._by_instance[instance] = samples
        self._page = None

    def forget(self, instance: str) -> None:
        if self._by_instance.pop(instance, None) is not None:
            self._page = None

    def samples(self) -> list[Sample]:
        return [s for samples in self._by_instance.values() for s in samples]

    def page(self) -> bytes:
        if self._page is None:
            self._page = render_samples(self.samples()).encode()
        return self._page
