"""The emitter one periodic collection run writes to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from agent.model import Labels, LogRecord, Sample, Span, merge_labels

LogSink = Callable[[Sequence[LogRecord], Callable[[], None] | None], Awaitable[None]]
SampleSink = Callable[[Sequence[Sample], Callable[[], None] | None], Awaitable[None]]
SpanSink = Callable[[Sequence[Span], Callable[[], None] | None], Awaitable[None]]


class RunEmitter:
    """Collects the samples of one run; the runtime hands them on when the run ends.

    ``static_labels`` (the instance's ``labels``) are merged into every sample;
    the collector's own labels win on a clash, as node_exporter's do over target
    labels. ``[agent] labels`` are not added here: the outputs and ``/metrics``
    add them where data leave the agent.
    """

    __slots__ = ("_log_sink", "_sample_sink", "_span_sink", "errors", "samples", "static_labels", "time_ns")

    def __init__(
        self,
        time_ns: int,
        static_labels: Labels = (),
        log_sink: LogSink | None = None,
        sample_sink: SampleSink | None = None,
        span_sink: SpanSink | None = None,
    ) -> None:
        self.time_ns = time_ns
        self.static_labels = static_labels
        self.samples: list[Sample] = []
        self.errors: list[BaseException | str] = []
        self._log_sink = log_sink
        self._sample_sink = sample_sink
        self._span_sink = span_sink

    def gauge(
        self, name: str, value: float, labels: Labels = (), *, unit: str = "", time_ns: int | None = None
    ) -> None:
        if self.static_labels:
            labels = merge_labels(self.static_labels, labels)
        self.samples.append(Sample(name, float(value), "gauge", labels, time_ns or self.time_ns, unit))

    def counter(
        self, name: str, value: float, labels: Labels = (), *, unit: str = "", time_ns: int | None = None
    ) -> None:
        if self.static_labels:
            labels = merge_labels(self.static_labels, labels)
        self.samples.append(Sample(name, float(value), "counter", labels, time_ns or self.time_ns, unit))

    def add(self, samples: Sequence[Sample]) -> None:
        self.samples.extend(self._with_static(samples))

    def _with_static(self, samples: Sequence[Sample]) -> Sequence[Sample]:
        static = self.static_labels
        if not static:
            return samples
        return [Sample(s.name, s.value, s.kind, merge_labels(static, s.labels), s.time_ns, s.unit) for s in samples]

    async def logs(
        self, records: Sequence[LogRecord], *, on_durable: Callable[[], None] | None = None, flush: bool = False
    ) -> None:
        if self._log_sink is None:
            if on_durable is not None:
                on_durable()
            return
        await (self._log_sink(records, on_durable, True) if flush else self._log_sink(records, on_durable))

    async def publish(
        self, samples: Sequence[Sample], *, on_durable: Callable[[], None] | None = None, flush: bool = False
    ) -> None:
        samples = self._with_static(samples)
        if self._sample_sink is None:
            self.samples.extend(samples)
            if on_durable is not None:
                on_durable()
            return
        await (self._sample_sink(samples, on_durable, True) if flush else self._sample_sink(samples, on_durable))

    async def spans(
        self, spans: Sequence[Span], *, on_durable: Callable[[], None] | None = None, flush: bool = False
    ) -> None:
        if self._span_sink is None:  # a test, or `hostwatch once`: nothing takes traces
            if on_durable is not None:
                on_durable()
            return
        await (self._span_sink(spans, on_durable, True) if flush else self._span_sink(spans, on_durable))

    def error(self, error: BaseException | str) -> None:
        self.errors.append(error)
