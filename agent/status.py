"""The status page's data: a short history of the host and the outputs, and ``/status.json``.

The history costs next to nothing while nobody looks. It is fed by the
pipeline with each collector run ``/metrics`` keeps anyway: runs of instances
that produce none of the few host series the charts use are recognised by their
first sample's name and skipped at the cost of one dictionary lookup; the cpu,
memory, disk and network runs add one point each to a bounded ring, from the
positions of their inputs in the run, found again only when the run's series
are not those of the last one. The outputs' counters are read at
the same pace (a few integers per output). Everything else, the JSON document
included, is built only when ``/status.json`` is requested.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent import __version__
from agent.model import Sample

log = logging.getLogger("hostwatch.status")

WINDOW_SECONDS = 15 * 60
MAX_POINTS = 900  # 15 minutes at a 1 s interval; a faster interval keeps less time, never more points
PROBLEMS_KEPT = 30
HOOK_TIMEOUT = 2.0  # a collector's status hook runs on its worker thread, which a hung mount can hold

# Block devices and interfaces whose traffic is also counted on another one (device mapper and
# md sit on disks; veth pairs and bridges carry what a physical interface carries too).
_VIRTUAL_DISK = re.compile(r"^(dm-|md|loop|ram|zram|sr|fd|nbd)")
_VIRTUAL_NET = re.compile(r"^(lo$|veth|docker|br-|virbr|cni|flannel|cali|vxlan|kube-)")

# sample name -> chart it feeds
_CHART_OF = {
    "node_cpu_seconds_total": "cpu",
    "node_memory_MemTotal_bytes": "memory",
    "node_memory_MemAvailable_bytes": "memory",
    "node_memory_Cached_bytes": "memory",
    "node_memory_Buffers_bytes": "memory",
    "node_memory_SwapTotal_bytes": "memory",
    "node_memory_SwapFree_bytes": "memory",
    "node_disk_read_bytes_total": "disk",
    "node_disk_written_bytes_total": "disk",
    "node_network_receive_bytes_total": "network",
    "node_network_transmit_bytes_total": "network",
}
CHARTS = {  # name -> (series, unit)
    "cpu": (("user", "system", "iowait", "steal"), "percent"),
    "memory": (("used", "cache", "swap used"), "bytes"),
    "disk": (("read", "written"), "bytes/s"),
    "network": (("received", "sent"), "bytes/s"),
}
OUTPUT_SERIES = ("sent", "dropped", "queued", "fill")  # items/s, items/s, items, percent
_CPU_GROUP = {"user": 0, "nice": 0, "system": 1, "irq": 1, "softirq": 1, "iowait": 2, "steal": 3}


class Ring:
    """Points ``(time in seconds, values)`` of the last ``window`` seconds, ``capacity`` at most."""

    def __init__(self, series: Sequence[str], window: float = WINDOW_SECONDS, capacity: int = MAX_POINTS) -> None:
        self.series = tuple(series)
        self.window = window
        self._points: collections.deque[tuple[float, tuple[float | None, ...]]] = collections.deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._points)

    @property
    def last_time(self) -> float | None:
        return self._points[-1][0] if self._points else None

    def add(self, t: float, values: Sequence[float | None]) -> None:
        points = self._points
        t = round(t, 3)  # milliseconds: enough for a chart, shorter JSON
        if points and t <= points[-1][0]:
            return  # a clock step back: keep the axis monotonic
        points.append((t, tuple(v if v is None or math.isfinite(v) else None for v in values)))
        cutoff = t - self.window
        while points[0][0] < cutoff:
            points.popleft()

    def columns(self, now: float | None = None) -> list[list[float | None]]:
        """The chart library's layout: ``[times, first series, second series, ...]``."""
        cutoff = (time.time() if now is None else now) - self.window
        points = [p for p in self._points if p[0] >= cutoff]
        columns: list[list[float | None]] = [[t for t, _ in points]]
        for i in range(len(self.series)):
            columns.append([values[i] for _, values in points])
        return columns


class Rates:
    """Per-second rates of counter totals between one call and the next (None after a reset)."""

    def __init__(self) -> None:
        self._last: dict[Any, tuple[float, tuple[float, ...]]] = {}

    def __call__(self, key: Any, t: float, totals: tuple[float, ...]) -> tuple[float | None, ...] | None:
        last = self._last.get(key)
        self._last[key] = (t, totals)
        if last is None or t <= last[0]:
            return None
        span = t - last[0]
        return tuple(None if now < then else (now - then) / span for now, then in zip(totals, last[1], strict=True))

    def forget(self, gone: Callable[[Any], bool]) -> None:
        for key in [k for k in self._last if gone(k)]:
            del self._last[key]


class History:
    """The rings behind the charts: host cpu, memory, disk, network, and each output.

    ``observe`` is :class:`LatestSamples`' hook; ``outputs`` returns each output's
    ``(sent items, dropped items, queued items, buffer fill 0..1)``.
    """

    def __init__(self, outputs: Callable[[], dict[str, tuple[int, int, int, float]]] | None = None) -> None:
        self.charts = {name: Ring(series) for name, (series, _) in CHARTS.items()}
        self.outputs: dict[str, Ring] = {}
        self._outputs_source = outputs
        self._feeds: dict[str, tuple[str, frozenset[str]]] = {}  # instance -> (first sample name, charts)
        # (chart, instance) -> where the chart's inputs were in the instance's last run
        self._inputs: dict[tuple[str, str], list[list[int]]] = {}
        self._owner: dict[str, str] = {}  # chart -> the instance that feeds it
        self._rates = Rates()
        self._outputs_at = 0.0
        self._failed = False

    def observe(self, instance: str, samples: list[Sample], unchanged: bool = False) -> None:
        """A run of ``instance``; ``unchanged``: it has the very series of the instance's last run
        (as the pipeline found them), so the positions of the charts' inputs are those of then."""
        try:
            self._observe(instance, samples, unchanged)
        except Exception:  # a bug here must not cost a collector its run, nor /metrics its samples
            if not self._failed:
                self._failed = True
                log.exception("status page history: cannot take a point from %s; its charts may have gaps", instance)

    def _observe(self, instance: str, samples: list[Sample], unchanged: bool) -> None:
        if not samples:
            return
        first = samples[0].name
        feeds = self._feeds.get(instance)
        if feeds is None or feeds[0] != first:
            feeds = (first, frozenset(_CHART_OF[s.name] for s in samples if s.name in _CHART_OF))
            self._feeds[instance] = feeds
            if len(self._feeds) > 10_000:  # instances come and go with reloads: stay bounded
                self._feeds.clear()
                self._inputs.clear()
        if not feeds[1]:
            return
        t = round(samples[0].time_ns / 1e9, 3)  # as the ring keeps it
        for chart in feeds[1]:
            owner = self._owner.setdefault(chart, instance)
            ring = self.charts[chart]
            if owner != instance:  # two instances of one collector: the first one draws
                if ring.last_time is not None and t - ring.last_time < 120:
                    continue
                self._owner[chart] = instance
            before = ring.last_time
            inputs = self._inputs.get((chart, instance)) if unchanged else None
            if inputs is None:
                inputs = self._inputs[(chart, instance)] = _inputs_of(chart, samples)
            self._add(chart, instance, t, samples, inputs)
            if before is not None and ring.last_time == t:
                self._sample_outputs(t, t - before)

    def _add(self, chart: str, instance: str, t: float, samples: list[Sample], inputs: list[list[int]]) -> None:
        ring = self.charts[chart]
        # each input: the sum of the samples at its positions (the memory fields: the last one)
        if chart == "memory":
            total, available, cached, buffers, swap_total, swap_free = (
                samples[at[-1]].value if at else None for at in inputs
            )
            if total is None or available is None:
                return
            cache = (cached or 0.0) + (buffers or 0.0)
            swap = (swap_total or 0.0) - (swap_free or 0.0)
            ring.add(t, (total - available, cache, swap))
            return
        sums = tuple(sum([samples[i].value for i in at]) for at in inputs)
        if chart == "cpu":
            rates = self._rates((chart, instance), t, sums)
            if rates is not None and rates[0]:
                ring.add(t, tuple(None if r is None else round(100 * r / rates[0], 2) for r in rates[1:]))
            return
        rates = self._rates((chart, instance), t, sums)
        if rates is not None:
            ring.add(t, tuple(None if r is None else round(r, 1) for r in rates))

    def _sample_outputs(self, t: float, step: float) -> None:
        """One point per output, at the pace of the fastest host chart."""
        if self._outputs_source is None or t - self._outputs_at < 0.9 * step:
            return
        self._outputs_at = t
        current = self._outputs_source()
        for name in [n for n in self.outputs if n not in current]:
            del self.outputs[name]
        self._rates.forget(lambda key: key[0] == "output" and key[1] not in current)
        for name, (sent, dropped, queued, fill) in current.items():
            ring = self.outputs.get(name)
            if ring is None:
                ring = self.outputs[name] = Ring(OUTPUT_SERIES)
            rates = self._rates(("output", name), t, (sent, dropped)) or (None, None)
            ring.add(t, (_round(rates[0]), _round(rates[1]), queued, round(100 * fill, 2)))


_MEMORY_INPUTS = (
    "node_memory_MemTotal_bytes",
    "node_memory_MemAvailable_bytes",
    "node_memory_Cached_bytes",
    "node_memory_Buffers_bytes",
    "node_memory_SwapTotal_bytes",
    "node_memory_SwapFree_bytes",
)
_TRAFFIC_INPUTS = {
    "disk": (("node_disk_read_bytes_total", "node_disk_written_bytes_total"), _VIRTUAL_DISK),
    "network": (("node_network_receive_bytes_total", "node_network_transmit_bytes_total"), _VIRTUAL_NET),
}


def _inputs_of(chart: str, samples: list[Sample]) -> list[list[int]]:
    """Where a chart's inputs are in a run: for each, the positions of the samples it adds up.
    cpu: all CPU time, then user, system, iowait and steal; disk and network: read (received)
    and written (sent) of the devices that are not virtual; memory: one field each."""
    if chart == "memory":
        return [[i for i, s in enumerate(samples) if s.name == name] for name in _MEMORY_INPUTS]
    if chart == "cpu":
        inputs: list[list[int]] = [[], [], [], [], []]
        for i, s in enumerate(samples):
            if s.name == "node_cpu_seconds_total":
                inputs[0].append(i)
                group = _CPU_GROUP.get(_label(s, "mode"))
                if group is not None:
                    inputs[group + 1].append(i)
        return inputs
    names, virtual = _TRAFFIC_INPUTS[chart]
    return [
        [i for i, s in enumerate(samples) if s.name == name and not virtual.match(_label(s, "device"))]
        for name in names
    ]


def _label(sample: Sample, key: str) -> str:
    for k, v in sample.labels:
        if k == key:
            return v
    return ""


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def output_totals(pipeline: Any) -> dict[str, tuple[int, int, int, float]]:
    """Each running output's sent and dropped items so far, queued items and fullest lane's fill."""
    return pipeline.totals()


class RecentProblems(logging.Handler):
    """The agent's last warnings and errors, for the status page (masked when shown)."""

    def __init__(self, kept: int = PROBLEMS_KEPT) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[tuple[float, str, str, str]] = collections.deque(maxlen=kept)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        source = record.name.removeprefix("hostwatch.")
        self.records.append((record.created, record.levelname.lower(), source, message))


# ------------------------------------------------------------------ the document


async def build_status(agent: Any) -> dict[str, Any]:
    """``/status.json``: what the page and ``hostwatch status`` show, secrets masked."""
    detailed = agent.detailed()  # masked already
    now = time.time()
    history: History = agent.history
    outputs = []
    for name, info in detailed["outputs"].items():
        ring = history.outputs.get(name)
        columns = ring.columns(now) if ring is not None else [[] for _ in range(len(OUTPUT_SERIES) + 1)]
        latest = _last_values(columns)
        outputs.append(
            {
                "name": name,
                **info,
                "sent_per_second": latest[0],
                "dropped_per_second": latest[1],
                "buffer_fill_percent": latest[3],
                "history": {"series": list(OUTPUT_SERIES), "data": columns},
            }
        )
    collectors = [{"name": name, **info} for name, info in detailed["collectors"].items()]
    problems = [
        {"time": _iso(created), "level": level, "source": source, "message": message}
        for created, level, source, message in reversed(agent.problems.records)
    ]
    document = {
        "status": detailed["status"],
        "reasons": detailed["reasons"],
        "version": __version__,
        "hostname": agent.config.hostname,
        "uptime_seconds": detailed["uptime_seconds"],
        "time": _iso(now),
        "window_seconds": WINDOW_SECONDS,
        "last_reload": detailed["last_reload"],
        "charts": {
            name: {"series": list(CHARTS[name][0]), "unit": CHARTS[name][1], "data": ring.columns(now)}
            for name, ring in history.charts.items()
        },
        "host": host_summary(agent.latest.samples()),
        "outputs": outputs,
        "collectors": collectors,
        "log_files": await log_files(agent),
        "problems": problems,
    }
    return agent.mask.mask_all(document)


def host_summary(samples: Iterable[Sample]) -> dict[str, Any]:
    """Current values for the page's header and the file system table (built on request)."""
    summary: dict[str, Any] = {"load1": None, "memory_total_bytes": None, "cpus": None}
    cpus: set[str] = set()
    filesystems: dict[tuple[str, str], dict[str, Any]] = {}
    for s in samples:
        if not math.isfinite(s.value):
            continue
        if s.name == "node_load1":
            summary["load1"] = s.value
        elif s.name == "node_memory_MemTotal_bytes":
            summary["memory_total_bytes"] = s.value
        elif s.name == "node_cpu_seconds_total":
            cpus.add(_label(s, "cpu"))
        elif s.name in ("node_filesystem_size_bytes", "node_filesystem_avail_bytes"):
            key = (_label(s, "mountpoint"), _label(s, "device"))
            entry = filesystems.setdefault(key, {"mountpoint": key[0], "device": key[1], "fstype": _label(s, "fstype")})
            entry["size_bytes" if s.name.endswith("size_bytes") else "avail_bytes"] = s.value
    summary["cpus"] = len(cpus) or None
    summary["filesystems"] = [
        {**fs, "used_percent": round(100 * (1 - fs["avail_bytes"] / fs["size_bytes"]), 1)}
        for _, fs in sorted(filesystems.items())
        if fs.get("size_bytes") and "avail_bytes" in fs
    ]
    return summary


async def log_files(agent: Any) -> list[dict[str, Any]]:
    """Each log collector's files and the bytes not read yet, from the plugins' ``status()`` hooks."""
    found: list[dict[str, Any]] = []
    for name, (_, runner) in list(agent.runners.items()):
        hook = getattr(runner.collector, "status", None)
        if hook is None:
            continue
        try:
            async with asyncio.timeout(HOOK_TIMEOUT):
                report = await hook()
        except TimeoutError:
            found.append({"collector": name, "error": f"no answer within {HOOK_TIMEOUT:g}s (its worker is busy)"})
            continue
        except Exception as exc:
            found.append({"collector": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        for entry in (report or {}).get("files", []):
            found.append({"collector": name, **entry})
    return found


def _last_values(columns: list[list[float | None]]) -> list[float | None]:
    return [series[-1] if series else None for series in columns[1:]]


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
