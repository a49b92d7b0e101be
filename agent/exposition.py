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
from typing import Any

from agent.model import Labels, Sample, merge_labels, same_series


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
    """The last samples of every collector instance.

    A run usually brings the very series of the last one with new values. The
    page's layout (families in order, and for each series its instance, index
    and name-and-labels text) is kept while that holds, so a render only formats
    the values; a run with other series makes the next render lay it out anew.

    The page adds ``[agent] labels`` (``agent_labels``) to every series, as the
    outputs add them to what they push; a sample's own label of the same name wins.
    """

    def __init__(
        self, on_replace: Callable[[str, list[Sample]], None] | None = None, agent_labels: Labels = ()
    ) -> None:
        self._agent_labels = agent_labels
        self._by_instance: dict[str, list[Sample]] = {}
        self._on_replace = on_replace
        self._page: bytes | None = None
        self._prefixes: dict[tuple[str, Labels], str] = {}
        # per family: its TYPE line and (instance position, sample index, series text) per series
        self._layout: list[tuple[str, list[tuple[int, int, str]]]] | None = None

    def replace(self, instance: str, samples: list[Sample]) -> list[Sample] | None:
        """Returns the run replaced when ``samples`` has its very series (the pipeline's staleness
        tracker then needs no comparison of its own), else None."""
        before = self._by_instance.get(instance)
        self._by_instance[instance] = samples  # a known instance keeps its position
        self._page = None
        if self._on_replace is not None:
            self._on_replace(instance, samples)
        if before is None or not same_series(before, samples):
            self._layout = None
            return None
        return before

    def set_agent_labels(self, labels: Labels) -> None:
        if labels != self._agent_labels:
            self._agent_labels = labels
            self._prefixes.clear()
            self._page = self._layout = None

    def forget(self, instance: str) -> None:
        if self._by_instance.pop(instance, None) is not None:
            self._page = self._layout = None

    def samples(self) -> list[Sample]:
        return [s for samples in self._by_instance.values() for s in samples]

    def page(self) -> bytes:
        if self._page is None:
            if self._layout is None:
                self._layout = self._lay_out()
            self._page = self._render().encode()
        return self._page

    def _lay_out(self) -> list[tuple[str, list[tuple[int, int, str]]]]:
        """As :func:`render_samples` orders the page: families by first appearance, one TYPE line each."""
        cache = self._prefixes
        if len(cache) > 4 * sum(map(len, self._by_instance.values())) + 1000:
            cache.clear()  # series come and go (mounts, interfaces): keep the cache bounded
        families: dict[str, tuple[str, list[tuple[int, int, str]]]] = {}
        for i, samples in enumerate(self._by_instance.values()):
            for j, s in enumerate(samples):
                family = families.get(s.name)
                if family is None:
                    family = families[s.name] = (f"# TYPE {s.name} {s.kind}", [])
                key = (s.name, s.labels)
                prefix = cache.get(key)
                if prefix is None:
                    prefix = cache[key] = series_prefix(s.name, merge_labels(self._agent_labels, s.labels))
                family[1].append((i, j, prefix))
        return list(families.values())

    def _render(self) -> str:
        runs = list(self._by_instance.values())
        lines: list[str] = []
        for type_line, members in self._layout or ():
            lines.append(type_line)
            # v - v is 0 for every finite value; NaN and the infinities take the slow path
            lines.extend(
                [
                    prefix + (repr(v) if (v := runs[i][j].value) - v == 0 else format_value(v))
                    for i, j, prefix in members
                ]
            )
        lines.append("")
        return "\n".join(lines)


# prometheus_client's OpenMetrics types as the 0.0.4 text format names them
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


def go_float(value: float) -> str:
    """A value as Go's Prometheus client (and prometheus_client) writes it: ``1e+06``, ``+Inf``."""
    if value != value:
        return "NaN"
    if value in _INFINITIES:
        return _INFINITIES[value]
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


class RegistryPage:
    """The agent's own metrics (a prometheus_client registry) as text, like ``generate_latest``.

    The same page, byte for byte, at a fraction of the CPU: the HELP and TYPE
    lines and each series' name-and-labels text are built once and cached, only
    the values are formatted on each scrape. The metric names are the agent's
    own (``hostwatch_*``, ``process_*``), all valid classic names.
    """

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._heads: dict[tuple[str, str, str], tuple[str, dict[str, str]]] = {}
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def render(self) -> bytes:
        out: list[str] = []
        append = out.append
        heads, prefixes = self._heads, self._prefixes
        if len(prefixes) > 10_000:  # label values that come and go (instances removed by reloads)
            prefixes.clear()
        for metric in self.registry.collect():
            key = (metric.name, metric.type, metric.documentation)
            head = heads.get(key)
            if head is None:
                head = heads[key] = _family_head(metric)
            append(head[0])
            apart = head[1]
            extra: dict[str, list[str]] = {}
            for s in metric.samples:
                labels = s.labels
                pkey = (s.name, tuple(labels.items()) if labels else ())
                prefix = prefixes.get(pkey)
                if prefix is None:
                    prefix = prefixes[pkey] = _registry_prefix(s.name, labels)
                line = f"{prefix}{go_float(float(s.value))}\n"
                if s.timestamp is not None:
                    line = f"{line[:-1]} {int(float(s.timestamp) * 1000):d}\n"
                if s.name in apart:  # OpenMetrics-only samples go in a gauge of their own, after
                    extra.setdefault(s.name, []).append(line)
                else:
                    append(line)
            for name, lines in sorted(extra.items()):
                append(apart[name])
                out.extend(lines)
        return "".join(out).encode()


def _family_head(metric: Any) -> tuple[str, dict[str, str]]:
    """The HELP and TYPE lines, and those of the OpenMetrics-only samples' gauges by sample name."""
    name, kind = metric.name, metric.type
    if kind == "counter":
        name += "_total"
    elif kind == "info":
        name += "_info"
    kind = _TEXT_TYPES.get(kind, kind)
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    apart = {
        metric.name + suffix: f"# HELP {metric.name + suffix} {doc}\n# TYPE {metric.name + suffix} gauge\n"
        for suffix in ("_created", "_gcount", "_gsum")
    }
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n", apart


def _registry_prefix(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name + " "
    inner = ",".join(f'{k}="{_escape_client(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}} "


def _escape_client(value: str) -> str:
    # prometheus_client escapes backslash, newline and quote in label values
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
