"""Joining lines into multi-line records (stack traces, wrapped messages).

Two ways to say where a record starts, as Fluent Bit and Vector do:

* ``start_pattern``: a line matching it begins a new record; any other line
  continues the current one (``^\\[\\d{4}-`` for Laravel, ``^\\d{4}-\\d\\d-\\d\\d``
  for most frameworks);
* ``continuation_pattern``: a line matching it continues the current record;
  any other line begins a new one (``^\\s`` for Java and Python tracebacks).

The last record is held until the next one starts, or until ``flush_timeout``
passes without a new line. A record reaching ``max_lines`` or ``max_bytes`` is
emitted as it is and the following lines start a new record, so a runaway
trace costs bounded memory and loses nothing.

Patterns use Python's ``re``: google-re2's per-call overhead (about 3 µs
against 0.2 µs for an anchored pattern) would dominate the per-line cost, and
these patterns come from the operator's own configuration.
"""

from __future__ import annotations

import re


class Multiline:
    """Multi-line state of one file; lines come with their end offsets in the file."""

    __slots__ = ("_lines", "_max_bytes", "_max_lines", "_nbytes", "_pattern", "_starts", "end", "since", "start")

    def __init__(self, start_pattern: str, continuation_pattern: str, max_lines: int, max_bytes: int) -> None:
        if start_pattern:
            self._pattern, self._starts = re.compile(start_pattern), True
        else:
            self._pattern, self._starts = re.compile(continuation_pattern), False
        self._max_lines = max(1, max_lines)
        self._max_bytes = max(1, max_bytes)
        self._lines: list[str] = []
        self._nbytes = 0
        self.end = 0
        """File offset just past the held record."""
        self.start = 0
        """File offset where the held record begins (the end of the last one emitted)."""
        self.since = 0.0
        """When the held record last grew (monotonic seconds)."""

    @property
    def held(self) -> bool:
        return bool(self._lines)

    def feed(self, lines: list[str], ends: list[int], now: float) -> tuple[list[str], list[int]]:
        """Complete records among what was held and ``lines``, with the end offset of each."""
        records: list[str] = []
        record_ends: list[int] = []
        search = self._pattern.search
        starts = self._starts
        held, nbytes, prev_end = self._lines, self._nbytes, self.end
        for line, end in zip(lines, ends, strict=True):
            size = end - prev_end
            prev_end = end
            begins = (search(line) is not None) is starts
            if held and (begins or len(held) >= self._max_lines or nbytes + size > self._max_bytes):
                records.append("\n".join(held))
                record_ends.append(end - size)
                held, nbytes = [], 0
            if not held:
                self.start = end - size
            held.append(line)
            nbytes += size
        self._lines, self._nbytes, self.end = held, nbytes, prev_end
        if lines:
            self.since = now
        return records, record_ends

    def flush(self) -> tuple[str, int] | None:
        """The held record, at ``flush_timeout`` or when the file goes away."""
        if not self._lines:
            return None
        record = "\n".join(self._lines)
        self._lines, self._nbytes, self.start = [], 0, self.end
        return record, self.end

    def reset(self, offset: int) -> None:
        self._lines, self._nbytes, self.end, self.start = [], 0, offset, offset
