"""What a logs instance counts, and the self-metrics it declares for them.

The worker thread adds to one :class:`LogStats` (framing, parsing, reading,
rotation); after each round the event loop pushes what grew to the
``hostwatch_log_*`` metrics (:class:`LogMetrics`). The names and labels are a
contract: the shipped dashboards and alert rules query them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

# stats field -> (metric name without _total, help, label name or "")
_COUNTERS = {
    "lines_read": ("hostwatch_log_lines_read", "Log lines read from files.", ""),
    "bytes_read": ("hostwatch_log_bytes_read", "Bytes read from log files.", ""),
    "rotations": (
        "hostwatch_log_rotations",
        "Log file rotations recognised, by kind (rename, copytruncate, recreate).",
        "kind",
    ),
    "truncations": ("hostwatch_log_truncations", "Log files found truncated or rewritten in place.", ""),
    "lines_truncated": ("hostwatch_log_lines_truncated", "Log lines cut at max_line_bytes.", ""),
    "lines_invalid": (
        "hostwatch_log_lines_invalid_encoding",
        "Log lines with bytes invalid in their encoding, replaced by U+FFFD.",
        "",
    ),
    "parse_failures": (
        "hostwatch_log_parse_failures",
        "json/logfmt log lines that did not parse (sent as raw lines).",
        "",
    ),
    "file_errors": (
        "hostwatch_log_file_errors",
        "Log files that could not be opened or read, and failed checkpoint writes, by reason.",
        "reason",
    ),
    "files_refused": (
        "hostwatch_log_files_refused",
        "Files matching a log glob that are never opened, by reason (not_regular, symlink_outside, system, secret).",
        "reason",
    ),
    "checkpoint_corrupt": (
        "hostwatch_log_checkpoint_corrupt",
        "Log checkpoint files found unreadable or damaged; their files are read again from the start.",
        "",
    ),
    "checkpoint_torn": (
        "hostwatch_log_checkpoint_journal_torn",
        "Torn records found at the end of a log checkpoint journal at start-up (a crash or a full disk in the"
        " middle of a write), not read: their files resume from the entries before them.",
        "",
    ),
}


@dataclass(slots=True)
class LogStats:
    """Counts of one logs instance since it started."""

    lines_read: int = 0
    bytes_read: int = 0
    lines_truncated: int = 0
    lines_invalid: int = 0
    truncations: int = 0
    parse_failures: int = 0
    checkpoint_corrupt: int = 0
    checkpoint_torn: int = 0
    rotations: Counter[str] = field(default_factory=Counter)
    """By kind: rename, copytruncate, recreate."""
    file_errors: Counter[str] = field(default_factory=Counter)
    """By operation: open, read, stat, checkpoint."""
    files_refused: Counter[str] = field(default_factory=Counter)
    """By reason: not_regular, symlink_outside, system, secret."""

    def __getitem__(self, name: str) -> Any:
        """A count by its field name (tests and reports)."""
        if name not in _FIELDS:
            raise KeyError(name)
        return getattr(self, name)


_FIELDS = frozenset(f.name for f in fields(LogStats))


class LogMetrics:
    """The ``hostwatch_log_*`` metrics, declared on the agent's telemetry by the plugin.

    Several instances share them (the registry holds one of each name); each
    pushes the growth of its own :class:`LogStats`."""

    def __init__(self, telemetry: Any, instance: str) -> None:
        self._counters = {
            key: telemetry.counter(name, text, (label,) if label else ())
            for key, (name, text, label) in _COUNTERS.items()
        }
        self._files = telemetry.gauge(
            "hostwatch_log_files", "Log files open (tailed), by collector instance.", ("collector",)
        ).labels(instance)
        self._pushed = LogStats()

    def push(self, stats: LogStats, files: int) -> None:
        pushed = self._pushed
        for key, metric in self._counters.items():
            value, before = getattr(stats, key), getattr(pushed, key)
            if isinstance(value, Counter):
                for label, count in value.items():
                    if count > before[label]:
                        metric.labels(label).inc(count - before[label])
                        before[label] = count
            elif value > before:
                metric.inc(value - before)
                setattr(pushed, key, value)
        self._files.set(files)
