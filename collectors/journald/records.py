"""Journal entries to log records: body, time, severity, stream labels, attributes, redaction.

Runs on the collector instance's worker thread. The unit and the syslog
identifier become stream labels (few per host); the fields the user chose
become attributes; messages are redacted per stream (unit, or identifier), so
a private key logged over several entries is masked across them.
"""

from __future__ import annotations

import collections

from agent.model import Labels, LogRecord, merge_labels, severity_number
from agent.plugin import CollectorContext, Redactor, StreamRedactor
from collectors.journald.export import Entry

# PRIORITY -> (severity text, OpenTelemetry severity number); README.md has the table. The
# text is the journal's own name; the number is the one the project gives that level word.
SEVERITY = {
    str(priority).encode(): (text, severity_number(text))
    for priority, text in enumerate(("EMERG", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG"))
}


class RecordBuilder:
    """Called with a list of entries, returns their records; one per collector instance."""

    def __init__(self, context: CollectorContext, fields: list[str]) -> None:
        self.context, self.fields = context, fields
        self._labels: dict[tuple[bytes, bytes], Labels] = {}
        redactor: Redactor | None = context.redactor
        self._streams: StreamRedactor | None = redactor.streams() if redactor is not None else None

    def __call__(self, entries: list[Entry]) -> list[LogRecord]:
        clock, fields, invalid = self.context.clock, self.fields, 0
        rows = []
        for entry in entries:
            message = entry.get("MESSAGE")
            if message is None:
                continue  # nothing to show (a few internal entries); the cursor still moves past it
            try:
                body = message.decode()
            except UnicodeDecodeError:
                body, invalid = message.decode("utf-8", "replace"), invalid + 1
            stamp = entry.get("_SOURCE_REALTIME_TIMESTAMP") or entry.get("__REALTIME_TIMESTAMP", b"")
            time_ns = int(stamp) * 1000 if stamp.isdigit() else clock()
            severity, number = SEVERITY.get(entry.get("PRIORITY", b""), ("", 0))
            unit = entry.get("_SYSTEMD_UNIT", b"")
            ident = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM", b"")
            attributes = tuple(
                sorted((name, entry[name].decode("utf-8", "replace")) for name in fields if name in entry)
            )
            rows.append((time_ns, body, self._stream(unit, ident), severity, attributes, number, unit or ident))
        if invalid and self.context.telemetry is not None:
            self.context.telemetry.log_lines_invalid_encoding.inc(invalid)
        bodies = self._redact([row[1] for row in rows], [row[6] for row in rows])
        redact = self.context.redactor.redact if self.context.redactor is not None else None
        return [
            LogRecord(t, body, labels, sev, tuple((k, redact(v)) for k, v in attrs) if redact else attrs, num)
            for (t, _, labels, sev, attrs, num, _), body in zip(rows, bodies, strict=True)
        ]

    def _stream(self, unit: bytes, ident: bytes) -> Labels:
        labels = self._labels.get((unit, ident))
        if labels is None:
            own = [("unit", unit.decode("utf-8", "replace"))] if unit else []
            if ident:
                own.append(("identifier", ident.decode("utf-8", "replace")))
            if len(self._labels) > 10_000:  # identifiers are chosen by programs: keep the cache bounded
                self._labels.clear()
            labels = self._labels[(unit, ident)] = merge_labels(self.context.static_labels, tuple(sorted(own)))
        return labels

    def _redact(self, bodies: list[str], keys: list[bytes]) -> list[str]:
        """Per stream (a unit, or an identifier), so a private key spread over entries is masked across them."""
        if self._streams is None or not bodies:
            return bodies
        groups: dict[bytes, list[int]] = collections.defaultdict(list)
        for i, key in enumerate(keys):
            groups[key].append(i)
        out = list(bodies)
        for key, indexes in groups.items():
            for i, text in zip(indexes, self._streams([bodies[i] for i in indexes], key.decode()), strict=True):
                out[i] = text
        return out
