"""The contract between hostwatch's engine and its plugins.

A plugin is a class registered under an entry point:

* ``hostwatch.collectors``: a :class:`PeriodicCollector` (the engine calls
  :meth:`PeriodicCollector.collect` every ``interval``) or a
  :class:`StreamingCollector` (the engine calls :meth:`StreamingCollector.run`
  once and cancels it on shutdown).
* ``hostwatch.outputs``: an :class:`Output`, which turns immutable batches into
  requests to one backend and reports an :class:`ExportResult`.

Every plugin class declares ``Config``: a frozen ``msgspec.Struct`` with
``forbid_unknown_fields=True`` whose fields are its options (documented with
``Annotated[..., msgspec.Meta(description=...)]``). The engine validates the
user's table against it (naming the path of every bad key) after splitting off
the options every plugin shares (``interval``, ``timeout``, ``labels``,
``alias`` for collectors; batching, buffering and retry for outputs), so plugin
configs stay small.

Rules a plugin keeps:

* Importing its module has no side effects; work starts in ``start``/``run``.
* Collectors never see queues, outputs or the pipeline: they write to an
  :class:`Emitter`. Outputs never sleep, retry or buffer: they answer
  ``ok`` / ``retry`` / ``drop`` / ``too_large`` and the engine does the rest.
* Nothing blocking runs on the event loop: file reads, psutil, ``statvfs`` go
  through :attr:`CollectorContext.run_blocking`, which runs them on the
  instance's own worker thread, so a hung NFS mount stalls only that instance
  (or, for a collector that sets ``shares_worker``, on a thread shared by the
  interval's /proc and /sys readers, which a stuck call leaves for a thread of
  its own).
* ``close()`` is idempotent and may be called without ``start()``.

This module imports nothing from the project except :mod:`agent.model` and
:mod:`agent.config.values` (typed option values: durations, sizes, file checks),
two leaf modules (the :mod:`agent.config` package around the latter imports no
other part of the project when loaded); :class:`Redactor`'s signature names
``agent.redact_blocks.BlockState`` for type checkers only.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

import msgspec

# Re-exported (``X as X``): plugins declare their options with these.
from agent.config.values import Duration as Duration
from agent.config.values import DurationOrZero as DurationOrZero
from agent.config.values import FieldCheck as FieldCheck
from agent.config.values import ReadableFile as ReadableFile
from agent.config.values import Size as Size
from agent.config.values import check_url as check_url
from agent.config.values import http_headers as http_headers
from agent.config.values import readable_file as readable_file

if TYPE_CHECKING:  # only for the annotations: at run time the module stays a leaf
    from agent.telemetry import Telemetry
from agent.model import Labels, LogRecord, Sample, Signal, Span

if TYPE_CHECKING:
    from agent.redact_blocks import BlockState

T = TypeVar("T")


class PluginConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every plugin's ``Config``: frozen, keyword-only, unknown keys rejected.

    Document each field with ``Annotated[T, msgspec.Meta(description=...)]``;
    use :class:`Duration` (positive; :class:`DurationOrZero` where 0 means
    "never") and :class:`Size` (``Size.at_least(...)`` for a floor) for
    durations and sizes, and add :data:`readable_file` to the metadata of a
    path the plugin reads, so a missing file fails ``hostwatch check``.
    Cross-field rules go in ``__post_init__`` and raise ``ValueError("key: ...")``
    so the error names the key; a rule a test may break on purpose (a tiny
    buffer) goes in ``check_config(self)``, which only the config loader calls.
    """


class StreamRedactor(Protocol):
    """Redaction for interleaved streams (a log collector's files): one key-block state per ``key``."""

    def __call__(self, lines: list[str], key: str) -> list[str]: ...

    def many(self, groups: list[list[str]], keys: list[str]) -> list[str]:
        """The lines of several streams (``groups[i]`` of stream ``keys[i]``) redacted, in one
        flat list: as a call per stream, in one pass where no stream is inside a key block."""
        ...

    def many_finding(self, groups: list[list[str]], keys: list[str], find: str) -> tuple[list[str], list[int] | None]:
        """:meth:`many`, and the indices (in the flat list, ascending) of the lines where the RE2
        pattern ``find`` may match: every line it matches in, perhaps others. None when not known;
        the caller then searches every line itself. The engine's finds them in its own pass over
        the text, so that a collector looking for ``find`` too need not make another."""
        ...


@runtime_checkable
class Redactor(Protocol):
    """The redaction service a collector gets as ``context.redactor``: masks secrets and
    personal data in text. The engine's is ``agent.redact.Redactor`` (RE2 rules from
    ``[redaction]``); plugins and ``hostwatch redact`` depend on this protocol only, so a
    test may hand in any object with these methods. All are thread-safe.
    """

    def redact(self, text: str) -> str:
        """One text; a private key block inside it (several lines) is masked line by line."""
        ...

    def redact_lines(self, lines: list[str], state: BlockState | None = None) -> list[str]:
        """Many texts at once, much cheaper per text than :meth:`redact`. ``state`` carries
        a key block from one call to the next (None: only within this call). Texts left
        unchanged are returned as the same objects."""
        ...

    def streams(self) -> StreamRedactor:
        """A :class:`StreamRedactor`: :meth:`redact_lines` with one state per stream key,
        so a private key spread over several reads of a file is masked across them."""
        ...

    def safe_cut(self, text: str, at: int) -> int:
        """An index >= ``at`` where ``text`` can be cut without splitting a secret."""
        ...


class Emitter(Protocol):
    """Where a collector writes what it produces.

    Metric methods are synchronous and cheap (they append to the current
    collection run) and may be called from the collector's worker thread while
    ``collect`` awaits it. A sample without ``time_ns`` gets the time the run
    started, so all samples of one run share a timestamp, as in a scrape.
    Samples emitted by one ``collect`` call replace that instance's previous
    ones in ``/metrics``: a series not emitted again disappears.
    """

    #: The time the run started (Unix ns): the timestamp of the samples a
    #: collector builds itself and hands to :meth:`add`, so they share the run's.
    time_ns: int

    #: The samples this run has emitted so far, in order; collectors only read it
    #: (:func:`run_parts` tells from its length whether a part found anything).
    samples: list[Sample]

    def gauge(
        self, name: str, value: float, labels: Labels = (), *, unit: str = "", time_ns: int | None = None
    ) -> None: ...

    def counter(
        self, name: str, value: float, labels: Labels = (), *, unit: str = "", time_ns: int | None = None
    ) -> None: ...

    def add(self, samples: Sequence[Sample]) -> None:
        """Emit ready-made samples (labels must already be canonical)."""

    async def logs(
        self, records: Sequence[LogRecord], *, on_durable: Callable[[], None] | None = None, flush: bool = False
    ) -> None:
        """Hand log records to the pipeline.

        Returns once the pipeline has accepted them; while an output whose
        buffer is full applies backpressure (``when_full = "block"``) this
        waits, which is how a tailer pauses. ``on_durable`` is called on the
        event loop, exactly once, when every log output has durably taken
        all of ``records`` (written to its disk buffer with the fsync policy
        met, or delivered), or has counted them as dropped. A log collector
        advances its checkpoints only from this callback.

        ``flush=True`` says someone is waiting for that callback (the OTLP
        receiver's client): the outputs seal their pending batch at once rather
        than after ``flush_interval``, trading batch size for the wait. A
        source that only records the acknowledgement (a log tailer) leaves it
        off, so its lines travel in large batches.
        """

    async def publish(
        self, samples: Sequence[Sample], *, on_durable: Callable[[], None] | None = None, flush: bool = False
    ) -> None:
        """Hand samples straight to the pipeline, for streaming collectors.

        Periodic collectors use ``gauge``/``counter``/``add`` instead. The
        acknowledgement and ``flush`` work as for :meth:`logs`. With the default
        ``when_full = "drop_oldest"`` of metrics outputs this never waits (a full
        buffer drops its oldest batch, counted); an output set to ``"block"``
        makes it wait for room, pausing the source.
        """

    async def spans(
        self, spans: Sequence[Span], *, on_durable: Callable[[], None] | None = None, flush: bool = False
    ) -> None:
        """Hand trace spans to the pipeline, for streaming collectors (the OTLP receiver).

        Works as :meth:`logs` (``flush`` too): waits while a full trace buffer applies
        backpressure, and ``on_durable`` is called once every output that takes
        traces has durably taken all of ``spans`` (or counted them dropped).
        """

    def error(self, error: BaseException | str) -> None:
        """Report a problem that did not stop the run (counted, logged once)."""


@dataclass(frozen=True, slots=True)
class CollectorContext:
    """What the engine gives a collector instance besides its config."""

    instance: str
    """Instance name for logs and self-metrics: the alias, or ``type`` / ``type[N]``."""
    logger: logging.Logger
    clock: Callable[[], int]
    """Current time in integer nanoseconds (injectable for tests)."""
    proc_root: Path
    sys_root: Path
    rootfs: Path
    """Root of the host file system (``/``, or ``/host`` in a container)."""
    state_dir: Path
    """A directory this instance owns for checkpoints; created by the engine."""
    run_blocking: Callable[..., Awaitable[Any]]
    """``await run_blocking(fn, *args)`` runs ``fn`` on this instance's worker thread."""
    redactor: Redactor | None = None
    telemetry: Telemetry | None = None
    """The agent's self-metrics, typed and declared (``agent.telemetry``); None in unit tests."""
    static_labels: Labels = ()
    """The instance's ``labels``: the engine adds them to samples, log collectors
    put them on their streams."""
    agent_labels: Labels = ()
    """``[agent] labels``, for a collector whose own label model must see them (the
    scrape collector: target labels, which ``honor_labels`` and relabeling act on).
    Others leave them alone: they are added once, where data leave the agent (each
    output in its backend's model, and ``/metrics``)."""
    denied_paths: frozenset[str] = frozenset()
    """Files no collector may read or ship: the configuration files and every
    plugin's secret files (``*_file`` options such as ``bearer_token_file``,
    ``tls_key``), as absolute paths."""
    interval: float = 10.0
    """The instance's ``interval`` in seconds (its own, else ``[agent] interval``)."""
    timeout: float = 10.0
    """The instance's ``timeout`` in seconds: the engine abandons a run that takes longer.
    A collector that waits on many peers (scrape targets) uses it to give up on a
    slow one in time to still report the others."""


class PeriodicCollector(abc.ABC):
    """A collector the engine runs every ``interval``.

    ``collect`` should do its blocking work in one ``run_blocking`` call. It
    is bounded by the instance's ``timeout``: when that passes the run is
    abandoned, counted as an error, and the next run happens on schedule.
    """

    Config: ClassVar[type]
    streaming: ClassVar[bool] = False
    needs_redactor: ClassVar[bool] = False
    """True: the engine builds the configured redaction service and puts it in the context."""
    served_on_metrics: ClassVar[bool] = True
    """False: the samples go to the outputs only, not to ``/metrics`` (the ``internal``
    collector's are the agent's own metrics, which ``/metrics`` serves already)."""
    shares_worker: ClassVar[bool] = False
    """True: ``run_blocking`` only reads /proc and /sys, which answer at once, so the engine
    runs the calls of all such instances of one interval in one batch on one thread. Leave
    it False when a call may wait on a mount, a device or the network (``disk``, files in a
    user's directory): such an instance keeps a worker thread of its own."""

    def __init__(self, config: Any, context: CollectorContext) -> None:
        self.config = config
        self.context = context

    async def start(self) -> None:
        """Open connections or resources. Failing here is a collector error, retried next run."""

    @abc.abstractmethod
    async def collect(self, emit: Emitter) -> None:
        """Produce one round of samples."""

    async def close(self) -> None:
        """Release resources. Idempotent."""

    async def status(self) -> dict[str, Any] | None:
        """Optional: what the status page shows of this instance beyond its runs, e.g. a log
        tailer's ``{"files": [{"path", "size_bytes", "offset", "behind_bytes"}, ...]}``.

        Called only when the page is requested, from the event loop: blocking work goes through
        ``run_blocking`` (which also orders it after the instance's current blocking call)."""
        return None


class StreamingCollector(abc.ABC):
    """A collector that runs until cancelled (log tailing)."""

    Config: ClassVar[type]
    streaming: ClassVar[bool] = True
    needs_redactor: ClassVar[bool] = False
    """True: the engine builds the configured redaction service and puts it in the context."""

    def __init__(self, config: Any, context: CollectorContext) -> None:
        self.config = config
        self.context = context

    @abc.abstractmethod
    async def run(self, emit: Emitter) -> None:
        """Produce until cancelled; save state on the way out (``finally``)."""

    async def close(self) -> None:
        """Release resources. Idempotent."""

    async def status(self) -> dict[str, Any] | None:
        """Optional: what the status page shows of this instance beyond its runs, e.g. a log
        tailer's ``{"files": [{"path", "size_bytes", "offset", "behind_bytes"}, ...]}``.

        Called only when the page is requested, from the event loop: blocking work goes through
        ``run_blocking`` (which also orders it after the instance's current blocking call)."""
        return None


Collector = PeriodicCollector | StreamingCollector

Part = Callable[["Emitter", Callable[[str], None]], None]
"""One independent part of a collector (a node_exporter sub-collector): ``part(emit, report)``."""


RECHECK_NOTHING_FOUND = 60.0
"""Seconds a part that found nothing (its files absent: no such hardware, module not loaded) is left
out before it looks again; see :class:`IdleParts`."""


class IdleParts:
    """The parts of a collector that found nothing on their last look, and when each looks again.

    node_exporter looks for every sub-collector's files at each scrape; most hosts lack most
    of them (bonding, InfiniBand, ZFS, NFS, NVMe...), and each such look costs a failed path
    lookup and the part's Python every run, for nothing. A part that reported no series and
    no problem is left out for ``recheck`` seconds, then tried again: hardware that appears
    (a module loaded, a device plugged in) is reported at most ``recheck`` seconds late;
    series that go away end at once, since only a part that found nothing is left out.
    Nothing cheaper says reliably that something appeared: procfs leaves a directory's mtime
    as it is when an entry comes, sysfs changes it only for some directories, and
    ``/proc/modules`` misses built-in drivers and hotplugged devices; hence a time. ``clock``
    is in nanoseconds (the collector context's); a clock that steps back by more than
    ``recheck`` makes the parts look again at once.
    """

    def __init__(self, clock: Callable[[], int], recheck: float = RECHECK_NOTHING_FOUND) -> None:
        self.clock = clock
        self._recheck = int(recheck * 1e9)
        self._until: dict[str, int] = {}  # part -> clock time it looks again at

    def idle(self, name: str, now: int) -> bool:
        """True while the part is to be left out at ``now``."""
        until = self._until.get(name)
        return until is not None and 0 < until - now <= self._recheck

    def looked(self, name: str, now: int, found: bool) -> None:
        if found:
            self._until.pop(name, None)
        else:
            self._until[name] = now + self._recheck


def run_parts(parts: Iterable[tuple[str, Part]], emit: Emitter, idle: IdleParts | None = None) -> list[str]:
    """Run a collector's parts in turn, on its worker thread; the problems, each prefixed by its part.

    A part that reports or raises loses only its own series: the others still export, and
    the collector hands the list to ``emit.error`` once back on the event loop. With ``idle``,
    a part that found nothing is left out until it is due to look again (see :class:`IdleParts`).
    """
    errors: list[str] = []
    samples = emit.samples
    now = idle.clock() if idle is not None else 0
    for name, part in parts:
        if idle is not None and idle.idle(name, now):
            continue
        before, reported = len(samples), len(errors)

        def report(message: str, name: str = name) -> None:
            errors.append(f"{name}: {message}")

        try:
            part(emit, report)
        except Exception as exc:  # a driver or layout never met: this part fails, the others go on
            report(f"{type(exc).__name__}: {exc}")
        if idle is not None:
            idle.looked(name, now, len(samples) > before or len(errors) > reported)
    return errors


class ResultKind(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    DROP = "drop"
    TOO_LARGE = "too_large"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an output says about one batch.

    * ``ok``: delivered. ``rejected`` > 0 reports a partial success (OTLP):
      those items are counted as dropped, the rest as sent, nothing retried.
    * ``retry``: may succeed later (connection error, timeout, 429, 5xx).
      ``after`` is the server's ``Retry-After`` in seconds, if it sent one.
    * ``drop``: can never succeed (a 4xx): the batch is counted and dropped.
    * ``too_large``: the backend refused the size (413): the engine splits
      the batch in halves and sends each.
    * ``error``: the engine's verdict when ``export`` raised (a bug); outputs
      never return it. The batch is tried again a few times, then dropped
      and counted as ``error`` (not ``rejected``).
    ``reason`` is a short human text (status and the server's message).
    """

    kind: ResultKind
    reason: str = ""
    after: float | None = None
    rejected: int = 0

    @classmethod
    def ok(cls, rejected: int = 0, reason: str = "") -> ExportResult:
        return cls(ResultKind.OK, reason, None, rejected)

    @classmethod
    def retry(cls, reason: str, after: float | None = None) -> ExportResult:
        return cls(ResultKind.RETRY, reason, after)

    @classmethod
    def drop(cls, reason: str) -> ExportResult:
        return cls(ResultKind.DROP, reason)

    @classmethod
    def too_large(cls, reason: str) -> ExportResult:
        return cls(ResultKind.TOO_LARGE, reason)

    @classmethod
    def error(cls, reason: str) -> ExportResult:
        return cls(ResultKind.ERROR, reason)


@dataclass(frozen=True, slots=True)
class Batch:
    """Items of one signal, in the order they were produced: what an output is handed.

    ``prepared`` is what this output's :meth:`Output.prepare` returned for these
    items, when the engine called it ahead of ``export``; None otherwise (always
    for the halves of a batch split after ``too_large``).
    """

    signal: Signal
    items: Sequence[Sample] | Sequence[LogRecord] | Sequence[Span]
    prepared: Any = None

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class OutputContext:
    """What the engine gives an output instance besides its config."""

    instance: str
    logger: logging.Logger
    clock: Callable[[], int]
    hostname: str
    """The ``instance`` label and OTLP ``host.name``."""
    job: str = "hostwatch"
    agent_labels: Labels = ()
    """``[agent] labels``: the output adds them to everything it sends, in its backend's
    model (series or stream labels; OTLP resource attributes). The items it is handed
    do not carry them: this is the one place they are added (``/metrics`` adds them to
    its page likewise). An item's own label of the same name wins."""
    version: str = "0"
    machine_id: str = ""
    telemetry: Telemetry | None = None
    secrets: tuple[str, ...] = field(default=())
    """Values read from secret files, for the engine to mask in logs."""


class Output(abc.ABC):
    """Sends batches to one backend.

    ``signals`` lists what the output accepts; the pipeline routes only those.
    ``export`` must not raise for expected failures (HTTP status, connection
    errors, timeouts): it maps them to an :class:`ExportResult`. An exception
    is treated as a bug: logged with its traceback, the batch tried again a few
    times, then dropped and counted.

    Labels: every output adds ``job``, ``instance`` (:attr:`OutputContext.hostname`)
    and ``[agent] labels`` (:attr:`OutputContext.agent_labels`) in its backend's
    model (series labels, stream labels, OTLP resource attributes); the items it
    is handed carry only their own and their collector instance's labels.
    """

    Config: ClassVar[type]
    signals: ClassVar[frozenset[Signal]]

    def __init__(self, config: Any, context: OutputContext) -> None:
        self.config = config
        self.context = context

    async def start(self) -> None:
        """Create clients; no network I/O that can fail the agent's start."""

    def prepare(self, batch: Batch) -> Any:
        """Optional: work ``export`` can do ahead for ``batch`` (encoding, compressing).

        While one request is in flight the engine calls this, on the event loop, with
        the next queued batch, and hands the return value back as ``batch.prepared``
        when it exports that batch (every attempt of it). Keep it synchronous and
        short. A failing ``prepare`` is ignored (``export`` finds ``prepared`` None
        and does the work itself). The default prepares nothing and returns None.
        """
        return None

    @abc.abstractmethod
    async def export(self, batch: Batch) -> ExportResult: ...

    async def close(self) -> None:
        """Release clients. Idempotent."""
