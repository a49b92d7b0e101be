"""Memory and paging statistics, named as node_exporter's meminfo and vmstat collectors name them.

Each run reads ``/proc/meminfo`` and ``/proc/vmstat`` in one worker call.
Every meminfo field becomes a gauge: ``Field: N kB`` is
``node_memory_Field_bytes`` (N x 1024, unit ``By``), a field without a unit
(``HugePages_Total``) is ``node_memory_Field`` (a count), and a parenthesised
part turns into an underscore part (``Active(anon)`` is ``Active_anon``), the
rule node_exporter 1.5 applies. The /proc/vmstat fields selected by
``vmstat_fields`` (node_exporter's ``--collector.vmstat.fields``) become
``node_vmstat_<field>``. node_exporter exports those as *untyped*; they are
gauges here, which is how Prometheus and OpenTelemetry treat untyped series,
and keeps Prometheus clients from appending ``_total`` to the names.

/proc/meminfo keeps its layout while the kernel runs: a read laid out as the last one
(the same field names and units at the same places, :class:`agent.procfiles.TokenLayout`)
has its numbers picked by position and its samples made with one ``map``; the line
parser runs on a first read and whenever the layout moved.

Metric names are derived once per field name and cached, so the regex of
``vmstat_fields`` runs once per distinct field, never per line per run. The
kernel's set of vmstat fields is fixed while it runs, so after the first run
only the few selected lines are looked up (``bytes.find``) instead of splitting
all ~200, while the file has as many lines as at the last full scan; a changed
line count or a selected field not found sends the run back to the full scan.
"""

from __future__ import annotations

import re
from itertools import repeat
from typing import Annotated

import msgspec

from agent.model import Sample
from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig
from agent.procfiles import KeptFiles, TokenLayout

DEFAULT_VMSTAT_FIELDS = r"^(oom_kill|pgpg|pswp|pg.*fault).*"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_INVALID: tuple[str, str] = ("", "")


class MemoryCollector(PeriodicCollector):
    shares_worker = True  # reads /proc and /sys only

    class Config(PluginConfig):
        vmstat_fields: Annotated[
            str,
            msgspec.Meta(
                description="Regular expression searched in each /proc/vmstat field name; matching fields are "
                "exported as node_vmstat_<field> (node_exporter's --collector.vmstat.fields). Empty: no vmstat."
            ),
        ] = DEFAULT_VMSTAT_FIELDS

        def __post_init__(self) -> None:
            try:
                re.compile(self.vmstat_fields)
            except re.error as exc:
                raise ValueError(f"vmstat_fields: invalid regular expression: {exc}") from None

    def __init__(self, config: MemoryCollector.Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._meminfo = str(context.proc_root / "meminfo")
        self._vmstat = str(context.proc_root / "vmstat")
        self._files = KeptFiles()  # the two files of every run, opened once
        self._fields = re.compile(config.vmstat_fields) if config.vmstat_fields else None
        self._mem_names: dict[bytes, tuple[str, str]] = {}
        self._vm_names: dict[bytes, str | None] = {}
        self._vm_lines: list[tuple[bytes, str]] | None = None  # (b"\nfield ", name) of the selected fields
        self._vm_line_count = -1
        # meminfo's layout at its last clean read, the names, units and factors of its samples
        self._mem_layout: tuple[TokenLayout, tuple[str, ...], tuple[str, ...], tuple[float, ...]] | None = None

    async def collect(self, emit: Emitter) -> None:
        now = emit.time_ns  # the run's time, on the samples this collector makes itself
        await self.context.run_blocking(self._collect, emit, now)

    async def close(self) -> None:
        # on the worker thread, after any run still reading them: a descriptor closed under a
        # read could be reused by another open and read in its place
        if len(self._files):
            await self.context.run_blocking(self._files.close)

    def _collect(self, emit: Emitter, now: int) -> None:
        data = self._read(self._meminfo, emit)
        if data is not None:
            self._meminfo_samples(data, emit, now)
        if self._fields is not None:
            data = self._read(self._vmstat, emit)
            if data is not None:
                self._parse_vmstat(data, emit)
        self._files.sweep()

    def _read(self, path: str, emit: Emitter) -> bytes | None:
        """The whole file, or None (reported)."""
        try:
            # meminfo is printed in one go; vmstat is a table of short lines
            return self._files.read(path, 8192, in_one_go=path == self._meminfo, record=128)
        except OSError as exc:
            emit.error(f"cannot read {path}: {exc}")
            return None

    def _meminfo_samples(self, data: bytes, emit: Emitter, now: int) -> None:
        tokens, lines = data.split(), data.count(b"\n")
        kept = self._mem_layout
        numbers = None if kept is None else kept[0].numbers(tokens, lines, float)  # as the line parser reads them
        if kept is None or numbers is None:
            self._mem_layout = None
            self._parse_meminfo(data, emit, tokens, lines)
            return
        _, names, units, factors = kept
        values = map(float.__mul__, numbers, factors)
        emit.add(list(map(Sample, names, values, repeat("gauge"), repeat(()), repeat(now), units)))

    def _parse_meminfo(self, data: bytes, emit: Emitter, tokens: list[bytes], lines: int) -> None:
        names = self._mem_names
        bad, first_bad = 0, b""
        at = 0  # where the line's first token is among the file's
        read, exports = [], []  # the positions of the numbers, (name, unit, factor) of their samples
        for line in data.splitlines():
            fields = line.split()
            start, at = at, at + len(fields)
            if not fields:
                continue  # some kernels print blank lines
            pair = names.get(fields[0]) or self._mem_name(fields[0])
            try:
                if pair is _INVALID:
                    raise ValueError(line)
                value = float(fields[1])
                if len(fields) == 3:  # node_exporter presumes the unit is kB, the only one the kernel uses
                    emit.gauge(pair[1], value * 1024, unit="By")
                    exports.append((pair[1], "By", 1024.0))
                elif len(fields) == 2:
                    emit.gauge(pair[0], value, unit="1")
                    exports.append((pair[0], "1", 1.0))
                else:
                    raise ValueError(line)
                read.append(start + 1)
            except (ValueError, IndexError):
                bad += 1
                first_bad = first_bad or line[:80]
        if bad:
            _report(emit, self._meminfo, bad, first_bad)
        elif read:  # laid out cleanly: the next reads need not be parsed line by line while it holds
            self._mem_layout = (
                TokenLayout(tokens, lines, read),
                tuple(name for name, _, _ in exports),
                tuple(unit for _, unit, _ in exports),
                tuple(factor for _, _, factor in exports),
            )

    def _mem_name(self, key: bytes) -> tuple[str, str]:
        """``b"Active(anon):"`` -> (``node_memory_Active_anon``, ``node_memory_Active_anon_bytes``)."""
        text = key.decode(errors="replace")
        pair = _INVALID
        if text.endswith(":"):
            text = text[:-1]
            # node_exporter 1.5 rewrites `\((.*)\)` to `_$1`: the first "(" up to the last ")"
            start, end = text.find("("), text.rfind(")")
            if 0 <= start < end:
                text = f"{text[:start]}_{text[start + 1 : end]}{text[end + 1 :]}"
            if _METRIC_NAME.fullmatch(text):
                pair = (f"node_memory_{text}", f"node_memory_{text}_bytes")
        self._mem_names[key] = pair
        return pair

    def _parse_vmstat(self, data: bytes, emit: Emitter) -> None:
        line_count = data.count(b"\n")
        if line_count == self._vm_line_count and self._find_vmstat(b"\n" + data, emit):
            return
        names = self._vm_names
        selected: list[tuple[bytes, str]] = []
        bad, first_bad = 0, b""
        for line in data.splitlines():
            fields = line.split()
            if not fields:
                continue
            key = fields[0]
            name = names[key] if key in names else self._vm_name(key)
            if name is None:
                continue  # not selected by vmstat_fields
            try:
                if not name or len(fields) != 2:
                    raise ValueError(line)
                emit.gauge(name, float(fields[1]), unit="1")
                selected.append((b"\n" + key + b" ", name))
            except ValueError:
                bad += 1
                first_bad = first_bad or line[:80]
        self._vm_lines, self._vm_line_count = (selected, line_count) if not bad else (None, -1)
        if bad:
            _report(emit, self._vmstat, bad, first_bad)

    def _find_vmstat(self, data: bytes, emit: Emitter) -> bool:
        """Read the known selected fields; False (nothing emitted) when one is missing or malformed."""
        values = []
        for needle, name in self._vm_lines or ():
            start = data.find(needle)
            if start < 0:
                return False
            start += len(needle)
            end = data.find(b"\n", start)
            try:
                values.append((name, float(data[start:end] if end >= 0 else data[start:])))
            except ValueError:
                return False
        for name, value in values:
            emit.gauge(name, value, unit="1")
        return True

    def _vm_name(self, key: bytes) -> str | None:
        """The metric name of a selected field, None when not selected, "" for a garbled name."""
        text = key.decode(errors="replace")
        name: str | None = None
        if self._fields is not None and self._fields.search(text):
            name = f"node_vmstat_{text}" if _METRIC_NAME.fullmatch(text) else ""
        self._vm_names[key] = name
        return name


def _report(emit: Emitter, path: str, bad: int, first: bytes) -> None:
    emit.error(f"{path}: skipped {bad} malformed line(s), first: {first.decode(errors='replace')!r}")
