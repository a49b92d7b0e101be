"""Staleness: tell push backends when a series ends, as Prometheus' own scraper does.

A scraping Prometheus writes a staleness marker the moment a series is missing
from a scrape, so a removed interface or an unmounted file system vanishes from
queries at once. Pushed data has no scrape: without markers, a series that
stopped lingers for the 5-minute lookback and alerts such as "file system
almost full" keep firing on a mount that is gone. The tracker below compares
each periodic run of a collector instance with its previous one and yields a
:data:`~agent.model.STALE_NAN` sample for every series that disappeared, and
one for every series still alive when the agent stops or the instance is
removed.

Only periodic runs are tracked: each run is the instance's whole current
state. A streaming source publishes increments, so absence means nothing there.
"""

from __future__ import annotations

from agent.model import STALE_NAN, Labels, MetricKind, Sample, same_series

SeriesInfo = tuple[MetricKind, str]  # kind and unit, kept so the marker encodes like the series
SeriesKey = tuple[str, Labels]


class SeriesTracker:
    """The series each periodic collector instance produced on its last run."""

    def __init__(self) -> None:
        self._last: dict[str, dict[SeriesKey, SeriesInfo]] = {}
        self._last_run: dict[str, list[Sample]] = {}

    def update(
        self, instance: str, samples: list[Sample], time_ns: int, same_as: list[Sample] | None = None
    ) -> list[Sample]:
        """Remember this run's series; return markers for the ones the previous run had and this lacks.

        ``same_as``: a run already known to have exactly the series of ``samples`` (the one
        ``/metrics`` replaced); when it is the last run seen here, no comparison is needed."""
        last_run = self._last_run.get(instance)
        self._last_run[instance] = samples
        if last_run is not None and (last_run is same_as or same_series(last_run, samples)):
            return []  # the usual run: the very series of the last one, in the same order
        current = {(s.name, s.labels): (s.kind, s.unit) for s in samples}
        previous = self._last.get(instance)
        self._last[instance] = current
        if not previous or previous.keys() <= current.keys():  # nothing ended: the usual run
            return []
        return _markers(((key, info) for key, info in previous.items() if key not in current), time_ns)

    def end(self, instance: str, time_ns: int) -> list[Sample]:
        """The instance stopped (removed by a reload): every series it had ends now."""
        self._last_run.pop(instance, None)
        return _markers(self._last.pop(instance, {}).items(), time_ns)

    def end_all(self, time_ns: int) -> list[Sample]:
        """The agent stops: every tracked series ends now."""
        return [marker for instance in list(self._last) for marker in self.end(instance, time_ns)]

    def series_count(self) -> int:
        return sum(len(series) for series in self._last.values())


def _markers(series, time_ns: int) -> list[Sample]:
    return [Sample(name, STALE_NAN, kind, labels, time_ns, unit) for (name, labels), (kind, unit) in series]
