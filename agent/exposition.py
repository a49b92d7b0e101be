"""The latest host samples, kept for ``/metrics`` and rendered as Prometheus text.

Each collector instance's last run replaces its previous samples, so a series
that stops being produced (an unmounted file system, a removed interface)
disappears from the page, as it does from node_exporter's. The page is
rendered once per change and then served from cache: a scrape between two
collection runs costs nothing but the copy. A hook sees each run as it arrives
(the status page's history, ``agent.status``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from operator import attrgetter, itemgetter

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
    The layout is also compiled into the page's text between values and a picker
    that takes every value in page order, so a render with finite values (nearly
    all) writes only the values that changed since the last render and joins.

    The page adds ``[agent] labels`` (``agent_labels``) to every series, as the
    outputs add them to what they push; a sample's own label of the same name wins.
    """

    def __init__(
        self,
        on_replace: Callable[[str, list[Sample]], None] | None = None,
        agent_labels: Labels = (),
        *,
        on_run: Callable[[str, list[Sample], bool], None] | None = None,
    ) -> None:
        """``on_replace(instance, samples)`` sees each run; ``on_run(instance, samples, unchanged)``
        also learns whether the run has the very series of the instance's last one."""
        self._agent_labels = agent_labels
        self._by_instance: dict[str, list[Sample]] = {}
        if on_run is None and on_replace is not None:
            on_run = lambda instance, samples, _unchanged: on_replace(instance, samples)  # noqa: E731
        self._on_run = on_run
        self._page: bytes | None = None
        self._prefixes: dict[tuple[str, Labels], str] = {}
        # per family: its TYPE line and (instance position, sample index, series text) per series
        self._layout: list[tuple[str, list[tuple[int, int, str]]]] | None = None
        self._parts: list[str] = [""]  # the page between its values (see _compile)
        self._last: tuple[tuple[float, ...], list[str]] = ((), [])  # the last values written, and their text
        self._pick: Callable[[list[float]], tuple[float, ...]] = _no_values

    def replace(self, instance: str, samples: list[Sample]) -> list[Sample] | None:
        """Returns the run replaced when ``samples`` has its very series (the pipeline's staleness
        tracker then needs no comparison of its own), else None."""
        before = self._by_instance.get(instance)
        self._by_instance[instance] = samples  # a known instance keeps its position
        self._page = None
        if before is None or not same_series(before, samples):
            self._layout = None
            before = None
        if self._on_run is not None:
            self._on_run(instance, samples, before is not None)
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
                self._compile(self._layout)
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

    def _compile(self, layout: list[tuple[str, list[tuple[int, int, str]]]]) -> None:
        offsets = [0]
        for samples in self._by_instance.values():
            offsets.append(offsets[-1] + len(samples))
        # the page's text between values, each value's slot after its literal: [text, value, text, ...]
        parts: list[str] = []
        order: list[int] = []
        between = ""
        for type_line, members in layout:
            between += type_line + "\n"
            for i, j, prefix in members:
                parts += (between + prefix, "")
                order.append(offsets[i] + j)
                between = "\n"
        parts.append(between)
        self._parts = parts
        if len(order) > 1:
            self._pick = itemgetter(*order)
        else:
            self._pick = (lambda flat: (flat[order[0]],)) if order else _no_values

    def _render(self) -> str:
        values = self._pick(list(map(_VALUE, chain.from_iterable(self._by_instance.values()))))
        total = sum(values)
        if total - total != 0:
            return self._render_each()  # NaN and the infinities have names of their own
        # every value finite: repr is its text. Most values are those of the last render (a
        # counter that did not move, a gauge that holds): their text is kept, by position, as long
        # as the value and its type are the same (7 and 7.0 are equal, written apart; so are
        # 0.0 and -0.0, hence a zero is always written again)
        texts = kept_texts(values, *self._last, repr)
        self._last = values, texts
        parts = self._parts
        parts[1::2] = texts
        return "".join(parts)

    def _render_each(self) -> str:
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


def kept_texts(
    values: Sequence[float], last_values: Sequence[float], last_texts: list[str], write: Callable[[float], str]
) -> list[str]:
    """Each value's text, ``write(value)``, or the last render's text where the value at that position is the
    same, of the same type (7 and 7.0 are equal, written apart) and not zero (0.0 and -0.0 are equal, written
    apart): most values of a page hold between renders. Every value is written when the count changed."""
    if len(last_values) != len(values):
        return list(map(write, values))
    return [
        text if value == last and value and value.__class__ is last.__class__ else write(value)
        for value, last, text in zip(values, last_values, last_texts, strict=True)
    ]


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


_VALUE = attrgetter("value")


def _no_values(flat: list[float]) -> tuple[float, ...]:
    return ()
