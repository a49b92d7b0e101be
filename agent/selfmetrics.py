"""Typed metric objects for the agent's own metrics, and their text for ``/metrics``.

A :class:`Counter`, :class:`Gauge` or :class:`Summary` is declared once with its
name, help and label names, and keeps the text of its family: the HELP and TYPE
lines and each series' name-and-labels are built when the family or series is
created; a change only marks the family, and the next render formats that
family's values again, nothing else. The text is byte for byte what
prometheus_client's ``generate_latest`` wrote for the same metrics (the page's
contract: ``_total`` on counters, ``_count``/``_sum`` on summaries, labels sorted
by name, values as Go writes them, no ``_created`` series), without its
``collect()`` and the objects it builds on every scrape.

Updates may come from worker threads (the redactor counts in them): each family
has a lock, held for an update and for re-rendering the family.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import threading
import time
import weakref
from collections.abc import Iterator
from typing import NamedTuple

from agent.exposition import go_float, kept_texts

# label values come from configuration (instance names) and from peers (signals, reasons)
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})


class SampleValue(NamedTuple):
    """One series' current value, shaped as prometheus_client's samples (readers of ``collect()``)."""

    name: str
    labels: dict[str, str]
    value: float


class Family(NamedTuple):
    """A family as ``collect()`` returns it: ``name`` without ``_total``, as prometheus_client names it."""

    name: str
    type: str
    documentation: str
    samples: list[SampleValue]


def _series_prefix(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name + " "
    inner = ",".join(f'{k}="{v.translate(_ESCAPES)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}} "


def _head(name: str, kind: str, documentation: str) -> str:
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


class _Series:
    """One series of a family; the family's lock guards its values."""

    __slots__ = ("_family", "labels", "value")

    def __init__(self, family: Metric, labels: dict[str, str]) -> None:
        self._family = family
        self.labels = labels
        self.value = 0.0


class CounterSeries(_Series):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        family = self._family
        with family._lock:
            self.value += amount
            family._text = None


class GaugeSeries(_Series):
    __slots__ = ()

    def set(self, value: float) -> None:
        value = float(value)
        family = self._family
        with family._lock:
            # the same value again (an instance's sample count, run after run, 0 for a collector with
            # no hardware to report) leaves the family's text as it is; 0.0 and -0.0 are equal but
            # written apart, so a zero keeps it only with the same sign
            if value != self.value or (value == 0.0 and math.copysign(1.0, value) != math.copysign(1.0, self.value)):
                self.value = value
                family._text = None

    def inc(self, amount: float = 1) -> None:
        family = self._family
        with family._lock:
            self.value += amount
            family._text = None

    def dec(self, amount: float = 1) -> None:
        self.inc(-amount)

    def set_to_current_time(self) -> None:
        self.set(time.time())


class SummarySeries(_Series):
    """A count and a sum of observations (no quantiles, as prometheus_client's Summary)."""

    __slots__ = ("count",)

    def __init__(self, family: Metric, labels: dict[str, str]) -> None:
        super().__init__(family, labels)
        self.count = 0.0

    def observe(self, amount: float) -> None:
        family = self._family
        with family._lock:
            self.count += 1
            self.value += amount
            family._text = None


class Metric:
    """A declared family: its series by label values; one series from the start when it has no labels."""

    kind = ""
    series_type: type[_Series] = _Series

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] | list[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _Series] = {}
        self._prefixes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._text: str | None = None
        self._head = _head(self.exposed_name, self.kind, documentation)
        if not self.labelnames:
            self._add(())

    @property
    def exposed_name(self) -> str:
        return self.name

    def sample_names(self) -> tuple[str, ...]:
        return (self.name,)

    def labels(self, *values: object, **named: object) -> _Series:
        """The series of these label values (positional, or by name), created at 0 on first use."""
        if named:
            if values or set(named) != set(self.labelnames):
                raise ValueError(f"{self.name}: labels are {self.labelnames}")
            values = tuple(named[n] for n in self.labelnames)
        series = self._series.get(values)  # label values are strings nearly always: no conversion
        if series is None or not values:
            key = tuple(str(v) for v in values)
            if not self.labelnames or len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label value(s) expected, got {len(key)}")
            with self._lock:
                series = self._series.get(key) or self._add(key)
        return series

    def _add(self, key: tuple[str, ...]) -> _Series:
        labels = dict(zip(self.labelnames, key, strict=True))
        series = self._series[key] = self.series_type(self, labels)
        self._prefixes[key] = tuple(_series_prefix(name, labels) for name in self.sample_names())
        self._text = None
        return series

    def _only(self) -> _Series:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._series[()]

    def text(self) -> str:
        """The family's exposition text, formatted again only after a change."""
        text = self._text
        if text is None:
            with self._lock:
                text = self._text = self._head + "".join(self._lines())
        return text

    def _lines(self) -> Iterator[str]:
        prefixes = self._prefixes
        for key, series in self._series.items():
            yield f"{prefixes[key][0]}{go_float(series.value)}\n"

    def samples(self) -> list[SampleValue]:
        with self._lock:
            return [
                SampleValue(name, dict(series.labels), value)
                for series in self._series.values()
                for name, value in zip(self.sample_names(), self._values(series), strict=True)
            ]

    def _values(self, series: _Series) -> tuple[float, ...]:
        return (series.value,)

    def family(self) -> Family:
        return Family(self.name, self.kind, self.documentation, self.samples())


class Counter(Metric):
    kind = "counter"
    series_type = CounterSeries

    @property
    def exposed_name(self) -> str:
        return self.name + "_total"

    def sample_names(self) -> tuple[str, ...]:
        return (self.name + "_total",)

    def labels(self, *values: object, **named: object) -> CounterSeries:
        return super().labels(*values, **named)  # type: ignore[return-value]

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)  # type: ignore[attr-defined]


class Gauge(Metric):
    kind = "gauge"
    series_type = GaugeSeries

    def labels(self, *values: object, **named: object) -> GaugeSeries:
        return super().labels(*values, **named)  # type: ignore[return-value]

    def set(self, value: float) -> None:
        self._only().set(value)  # type: ignore[attr-defined]

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)  # type: ignore[attr-defined]

    def dec(self, amount: float = 1) -> None:
        self._only().dec(amount)  # type: ignore[attr-defined]

    def set_to_current_time(self) -> None:
        self._only().set_to_current_time()  # type: ignore[attr-defined]


class Summary(Metric):
    kind = "summary"
    series_type = SummarySeries

    def sample_names(self) -> tuple[str, ...]:
        return (self.name + "_count", self.name + "_sum")

    def labels(self, *values: object, **named: object) -> SummarySeries:
        return super().labels(*values, **named)  # type: ignore[return-value]

    def observe(self, amount: float) -> None:
        self._only().observe(amount)  # type: ignore[attr-defined]

    def _lines(self) -> Iterator[str]:
        prefixes = self._prefixes
        for key, series in self._series.items():
            count, total = prefixes[key]
            yield f"{count}{go_float(series.count)}\n{total}{go_float(series.value)}\n"  # type: ignore[attr-defined]

    def _values(self, series: _Series) -> tuple[float, ...]:
        return (series.count, series.value)  # type: ignore[attr-defined]


class ProcessMetrics:
    """``process_*``: CPU, memory and descriptors of the agent, as prometheus_client's ProcessCollector.

    Read on every render, on the event loop: ``/proc/self/stat`` and
    ``/proc/self/fd`` are made from the kernel's memory of this process and
    never wait for a device, and one read costs less than a hop to a thread.
    Where /proc is missing the family is left out, as the ProcessCollector does.
    """

    _FIXED = (
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
        ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
        ("process_open_fds", "gauge", "Number of open file descriptors."),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
    )

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._stat = f"{proc}/self/stat"
        # each series' HELP and TYPE lines and its name: its line is this and its value's text
        self._prefixes = [f"{_head(name, kind, doc)}{name} " for name, kind, doc in self._FIXED]
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._pagesize = resource.getpagesize()
        self._btime = self._boot_time()
        # /proc/self/stat kept open and read at offset 0 (the kernel writes it anew for each read):
        # an open and a close less per scrape; only on the real /proc, whose files are not replaced
        self._stat_fd: int | None = None
        # /proc/self/fd kept open too, for its size (see _open_fds): an fstat of a descriptor instead
        # of a path walk through /proc/self, which costs about 30 µs when the caches went cold
        # between two scrapes, against 4
        self._fd_dir: int | None = None
        real_proc = os.path.realpath(proc) == "/proc"
        self._fd_size_counts = real_proc  # see _open_fds
        if self._btime and real_proc:
            with contextlib.suppress(OSError):
                self._stat_fd = os.open(self._stat, os.O_RDONLY | os.O_CLOEXEC)
                weakref.finalize(self, os.close, self._stat_fd)
            with contextlib.suppress(OSError):
                self._fd_dir = os.open(f"{proc}/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                weakref.finalize(self, os.close, self._fd_dir)
        # the last values written and their texts: most (start time, limit, memory) hold between scrapes
        self._last: tuple[list[float], list[str]] = ([], [])

    def _boot_time(self) -> float:
        try:
            with open(f"{self._proc}/stat", "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    def values(self) -> list[float]:
        """The six values in order; fewer when /proc cannot be read (none, or the first four)."""
        if not self._btime:
            return []
        try:
            parts = self._read_stat().split(b")")[-1].split()
        except OSError:
            return []
        ticks = self._ticks
        out = [
            float(parts[20]),
            float(parts[21]) * self._pagesize,
            float(parts[19]) / ticks + self._btime,
            float(parts[11]) / ticks + float(parts[12]) / ticks,
        ]
        try:
            open_fds = self._open_fds()
        except OSError:
            return out
        # the soft limit, as /proc/self/limits' "Max open files" says it, without reading that file
        return [*out, float(open_fds), float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])]

    def _open_fds(self) -> int:
        """The descriptors open, as a listing of ``/proc/self/fd`` counts them (prometheus_client and
        node_exporter list it; the listing's own descriptor is among them).

        Since Linux 6.2 the directory's size is that count, kept by the kernel, without the
        listing's descriptor: one ``stat`` instead of a directory read that makes an entry per
        descriptor (about 20 µs at the agent's 60-odd). An older kernel says 0 (a process always
        has descriptors open), and the directory is listed.

        The directory is read through a descriptor kept open (``fstat``): that descriptor is one
        of those counted, as a listing's own would be, and a listing counts it too."""
        path = f"{self._proc}/self/fd"
        if self._fd_size_counts:
            size = os.fstat(self._fd_dir).st_size if self._fd_dir is not None else os.stat(path).st_size
            if size > 0:
                return size + 1  # and the listing's own descriptor
            self._fd_size_counts = False
        return len(os.listdir(path))

    def _read_stat(self) -> bytes:
        if self._stat_fd is not None:
            with contextlib.suppress(OSError):  # never seen for the process' own file: then the plain way
                return os.pread(self._stat_fd, 8192, 0)  # one call: safe from any thread, no shared offset
        # os.open, not open(): no fstat and isatty calls for a file read whole at once
        fd = os.open(self._stat, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, 8192)
        finally:
            os.close(fd)

    def text(self) -> str:
        values = self.values()
        texts = kept_texts(values, *self._last, go_float)
        self._last = values, texts
        return "".join(f"{prefix}{text}\n" for prefix, text in zip(self._prefixes, texts, strict=False))

    def families(self) -> list[Family]:
        out = []
        for (name, kind, doc), value in zip(self._FIXED, self.values(), strict=False):
            family = name.removesuffix("_total") if kind == "counter" else name
            out.append(Family(family, kind, doc, [SampleValue(name, {}, value)]))
        return out


class MetricRegistry:
    """The declared families in order, the process metrics first; renders the page and answers reads."""

    def __init__(self, process: ProcessMetrics | None = None) -> None:
        self.process = process
        self._metrics: dict[str, Metric] = {}

    def register(self, metric: Metric) -> Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is declared already")
        self._metrics[metric.name] = metric
        return metric

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def render(self) -> bytes:
        """The page of every family, as ``generate_latest`` wrote it."""
        parts = [self.process.text()] if self.process is not None else []
        parts += [metric.text() for metric in self._metrics.values()]
        return "".join(parts).encode()

    def collect(self) -> list[Family]:
        """Every family with its current values (the ``internal`` collector, tests)."""
        out = self.process.families() if self.process is not None else []
        return out + [metric.family() for metric in self._metrics.values()]

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One series' value by its exposed name (``..._total``, ``..._count``), or None: as prometheus_client's."""
        wanted = labels or {}
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return sample.value
        return None
