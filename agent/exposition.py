"""The latest host samples, kept for ``/metrics`` and rendered as Prometheus text.

Each collector instance's last run replaces its previous samples, so a series
that stops being produced (an unmounted file system, a removed interface)
disappears from the page, as it does from node_exporter's. The page is
rendered once per change and then served from cache: a scrape between two
collection runs costs nothing but the copy. An ``on_replace`` hook sees each
run as it arrives (the status page's history, ``agent.status``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from agent.model import Labels, Sample


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def format_value(value: float) -> str:
    if value != value:
        return "NaN"
    if value in _INFINITIES:
        return _INFINITIES[value]
    return repr(value)


_INFINITIES = {math.inf: "+Inf", -math.inf: "-Inf"}


def series_prefix(name: str, labels: Labels) -> str:
    """``name{a="b",...} `` ready for the value; built once per series, then cached."""
    if not labels:
        return name + " "
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} "


def render_samples(
    samples: Iterable[Sample], with_timestamps: bool = False, prefixes: dict[tuple[str, Labels], str] | None = None
) -> str:
    """Prometheus text format 0.0.4: one ``# TYPE`` line per family, series after it.

    ``prefixes`` caches each series' name-and-labels text across renders; the
    caller keeps it (series repeat every scrape, only their values change).
    """
    cache = {} if prefixes is None else prefixes
    families: dict[str, list[Sample]] = {}
    for sample in samples:
        families.setdefault(sample.name, []).append(sample)
    lines: list[str] = []
    append = lines.append
    for name, members in families.items():
        append(f"# TYPE {name} {members[0].kind}")
        for s in members:
            key = (name, s.labels)
            prefix = cache.get(key)
            if prefix is None:
                prefix = cache[key] = series_prefix(name, s.labels)
            if with_timestamps:
                append(f"{prefix}{format_value(s.value)} {s.time_ns // 1_000_000}")
            else:
                append(prefix + format_value(s.value))
    lines.append("")
    return "\n".join(lines)


class LatestSamples:
    """The last samples of every collector instance."""

    def __init__(self, on_replace: Callable[[str, list[Sample]], None] | None = None) -> None:
        self._by_instance: dict[str, list[Sample]] = {}
        self._on_replace = on_replace
        self._page: bytes | None = None
        self._prefixes: dict[tuple[str, Labels], str] = {}

    def replace(self, instance: str, samples: list[Sample]) -> None:
        self._by_instance[instance] = samples
        self._page = None
        if self._on_replace is not None:
            self._on_replace(instance, samples)

    def forget(self, instance: str) -> None:
        if self._by_instance.pop(instance, None) is not None:
            self._page = None

    def samples(self) -> list[Sample]:
        return [s for samples in self._by_instance.values() for s in samples]

    def page(self) -> bytes:
        if self._page is None:
            if len(self._prefixes) > 4 * sum(map(len, self._by_instance.values())) + 1000:
                self._prefixes.clear()  # series come and go (mounts, interfaces): keep the cache bounded
            self._page = render_samples(self.samples(), prefixes=self._prefixes).encode()
        return self._page
