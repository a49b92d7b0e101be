"""OTLP metrics to samples, by Prometheus' OTLP translation rules. No I/O.

Names (with ``suffixes = true``, Prometheus' default ``UnderscoreEscapingWithSuffixes``):
the OTLP name split on every character that is not a letter or digit, the
unit's word appended unless already there (``s`` → ``seconds``, ``By`` →
``bytes``, ``By/s`` → ``bytes_per_second``; ``{annotations}`` dropped),
monotonic sums end in ``total``, gauges of unit ``1`` in ``ratio``, the tokens
joined by ``_``. With ``suffixes = false`` only invalid characters become ``_``.

Types: gauge → gauge; monotonic cumulative sum → counter; non-monotonic or
delta sum → gauge; cumulative histogram → ``_bucket{le}`` (cumulative counts,
``+Inf`` last), ``_sum``, ``_count``; summary → ``{quantile}`` gauges, ``_sum``,
``_count``. Exponential histograms and delta histograms cannot be written as
Prometheus samples without keeping state: their points are refused and
reported in the OTLP partial success.

Resources: ``service.namespace/service.name`` → ``job``,
``service.instance.id`` → ``instance``, every other resource attribute on one
``target_info`` series (value 1) with that ``job`` and ``instance``; attributes
listed in ``promote`` also go on every sample of the resource.
A point flagged "no recorded value" becomes a staleness marker.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from agent.model import STALE_NAN, Labels, Sample
from collectors.otlp_receiver.values import attribute_map, prom_labels

_IDENTIFYING = ("service.name", "service.namespace", "service.instance.id")
_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds", "us": "microseconds",
    "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
    "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius",
    "Hz": "hertz", "1": "", "%": "percent",
}  # fmt: skip
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_TOKEN_SPLIT = re.compile(r"[^a-zA-Z0-9]+")
_INVALID_NAME_CHAR = re.compile(r"[^a-zA-Z0-9_:]")
_CURLY = re.compile(r"\{[^}]*\}")
_NO_RECORDED_VALUE = 1
_CUMULATIVE = 2  # AggregationTemporality


class Translated:
    """What one request became: samples, and the points refused with the reasons why."""

    __slots__ = ("items", "messages", "received", "rejected")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.rejected = 0
        self.received = 0
        self.messages: dict[str, int] = {}

    def refuse(self, count: int, why: str) -> None:
        if count:
            self.rejected += count
            self.messages[why] = self.messages.get(why, 0) + count

    @property
    def message(self) -> str:
        return "; ".join(f"{count} {why}" for why, count in self.messages.items())


def metric_name(name: str, unit: str, kind: str, monotonic: bool, *, suffixes: bool = True) -> str:
    """The Prometheus name of an OTLP metric (see the module docstring)."""
    if not suffixes:
        clean = _INVALID_NAME_CHAR.sub("_", name) or "_"
        return "_" + clean if clean[0].isdigit() else clean
    tokens = [t for t in _TOKEN_SPLIT.split(name) if t]
    main, _, per = _CURLY.sub("", unit).strip().partition("/")
    main_word = _clean(_UNITS.get(main.strip(), main.strip()))
    per_word = _clean(_PER_UNITS.get(per.strip(), per.strip()))
    if main_word and main_word not in tokens:
        tokens.append(main_word)
    if per_word and per_word not in tokens:
        tokens += ["per", per_word]
    if kind == "sum" and monotonic:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    joined = "_".join(tokens) or "_"
    return "_" + joined if joined[0].isdigit() else joined


def _clean(word: str) -> str:
    return _INVALID_NAME_CHAR.sub("_", word).strip("_")


def bound_text(value: float) -> str:
    """A bucket bound or quantile as Prometheus writes it (Go's ``FormatFloat(v, 'f', -1, 64)``)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value != value:
        return "NaN"
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def count_samples(request: Any) -> int:
    """How many samples ``request`` becomes, counted before translating it (to bound memory)."""
    count = 0
    for resource_metrics in request.resource_metrics:
        count += 1  # target_info
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind in ("gauge", "sum"):
                    count += len(metric.gauge.data_points if kind == "gauge" else metric.sum.data_points)
                elif kind == "histogram":
                    count += sum(len(p.explicit_bounds) + 3 for p in metric.histogram.data_points)
                elif kind == "summary":
                    count += sum(len(p.quantile_values) + 2 for p in metric.summary.data_points)
    return count


def translate_metrics(
    request: Any, now_ns: int, *, suffixes: bool = True, promote: frozenset[str] = frozenset()
) -> Translated:
    out = Translated()
    for resource_metrics in request.resource_metrics:
        attributes = attribute_map(resource_metrics.resource.attributes)
        base = _resource_labels(attributes, promote)
        before = len(out.items)
        latest = 0
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                latest = max(latest, _metric(metric, base, now_ns, suffixes, out))
        rest = {k: v for k, v in attributes.items() if k not in _IDENTIFYING}
        if len(out.items) > before and rest and ("job" in base or "instance" in base):
            labels = prom_labels(rest)
            labels.update((k, v) for k, v in base.items() if k in ("job", "instance"))
            out.items.append(Sample("target_info", 1.0, "gauge", tuple(sorted(labels.items())), latest or now_ns))
    return out


def _resource_labels(attributes: dict[str, str], promote: frozenset[str]) -> dict[str, str]:
    labels = prom_labels({k: v for k, v in attributes.items() if k in promote})
    name = attributes.get("service.name")
    if name is not None:
        namespace = attributes.get("service.namespace")
        labels["job"] = f"{namespace}/{name}" if namespace else name
    if "service.instance.id" in attributes:
        labels["instance"] = attributes["service.instance.id"]
    return labels


def _metric(metric: Any, base: dict[str, str], now_ns: int, suffixes: bool, out: Translated) -> int:
    """Append the samples of one metric; returns the latest point time seen."""
    kind = metric.WhichOneof("data")
    if kind is None:
        return 0
    data = getattr(metric, kind)
    points = data.data_points
    out.received += len(points)
    monotonic = kind == "sum" and data.is_monotonic
    name = metric_name(metric.name, metric.unit, kind, monotonic, suffixes=suffixes)
    unit = metric.unit
    items = out.items
    latest = 0
    if kind == "exponential_histogram":
        out.refuse(len(points), f"exponential histogram points of {metric.name!r} (not convertible to samples)")
        return 0
    if kind == "histogram" and data.aggregation_temporality != _CUMULATIVE:
        out.refuse(len(points), f"delta histogram points of {metric.name!r} (only cumulative histograms map)")
        return 0
    sample_kind = "counter" if monotonic and data.aggregation_temporality == _CUMULATIVE else "gauge"
    for point in points:
        time_ns = point.time_unix_nano or now_ns
        latest = max(latest, time_ns)
        labels = _point_labels(point, base)
        stale = point.flags & _NO_RECORDED_VALUE
        if kind in ("gauge", "sum"):
            value = STALE_NAN if stale else (point.as_double if point.HasField("as_double") else float(point.as_int))
            items.append(Sample(name, value, sample_kind, _canonical(labels), time_ns, unit))
        elif kind == "histogram":
            _histogram(point, name, labels, time_ns, unit, stale, items.append)
        else:
            _summary(point, name, labels, time_ns, unit, stale, items.append)
    return latest


def _point_labels(point: Any, base: dict[str, str]) -> dict[str, str]:
    labels = prom_labels(attribute_map(point.attributes)) if len(point.attributes) else {}
    labels.update(base)  # job and instance come from the resource, as Prometheus has it
    return labels


def _canonical(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _histogram(point: Any, name: str, labels: dict, time_ns: int, unit: str, stale: int, add: Callable) -> None:
    counts, bounds = point.bucket_counts, point.explicit_bounds
    cumulative = 0
    for index, bound in enumerate(bounds):
        cumulative += counts[index] if index < len(counts) else 0
        value = STALE_NAN if stale else float(cumulative)
        add(Sample(f"{name}_bucket", value, "counter", _canonical({**labels, "le": bound_text(bound)}), time_ns, unit))
    value = STALE_NAN if stale else float(point.count)
    add(Sample(f"{name}_bucket", value, "counter", _canonical({**labels, "le": "+Inf"}), time_ns, unit))
    plain = _canonical(labels)
    if point.HasField("sum"):
        add(Sample(f"{name}_sum", STALE_NAN if stale else point.sum, "counter", plain, time_ns, unit))
    add(Sample(f"{name}_count", value, "counter", plain, time_ns, unit))


def _summary(point: Any, name: str, labels: dict, time_ns: int, unit: str, stale: int, add: Callable) -> None:
    for quantile in point.quantile_values:
        value = STALE_NAN if stale else quantile.value
        quantile_labels = _canonical({**labels, "quantile": bound_text(quantile.quantile)})
        add(Sample(name, value, "gauge", quantile_labels, time_ns, unit))
    plain = _canonical(labels)
    add(Sample(f"{name}_sum", STALE_NAN if stale else point.sum, "counter", plain, time_ns, unit))
    add(Sample(f"{name}_count", STALE_NAN if stale else float(point.count), "counter", plain, time_ns, unit))
