"""The systemd journal: ``journalctl --output=export --follow`` as a child process, at least once.

journalctl does the journal's hard parts (file rotation, vacuuming, the
filters, a container's or copied journal with ``--directory``); this
collector reads its export-format stream (``export.py``), turns entries into
log records on the instance's worker thread (``records.py``), and hands them to the pipeline.
While an output applies backpressure ``emit.logs`` waits, nothing reads the
pipe, the pipe fills and journalctl blocks in its write: nothing is buffered
beyond one read.

The cursor of a batch's last entry is committed when every log output has
durably taken the batch (``on_durable``; see ``cursor.py``). journalctl
starts at the committed cursor with ``--cursor=`` and that first entry, sent
already, is dropped. (``--after-cursor=`` skips one entry blindly: when the
cursor's entry was vacuumed it skips the oldest entry never sent.) Whether
the cursor still exists is asked first, without filters, with a short
journalctl run; when it does not, reading starts at the oldest entry, and
that is counted and reported.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import re
import time
from typing import Annotated, Any, Literal

import msgspec

from agent.model import LogRecord
from agent.plugin import CollectorContext, Duration, Emitter, PluginConfig, Size, StreamingCollector
from collectors.journald.cursor import Ledger, Store
from collectors.journald.export import ExportFormatError, ExportParser
from collectors.journald.records import RecordBuilder

Meta = msgspec.Meta
READ_CHUNK = 256 * 1024  # also the StreamReader's limit: the pipe is left alone past twice this
MAX_RESTART_DELAY = 60.0
STEADY_SECONDS = 30.0  # a journalctl that ran this long resets the restart delay
PROBE_TIMEOUT = 30.0

LEVEL = r"(?:emerg|alert|crit|err|warning|notice|info|debug|[0-7])"
PRIORITY = re.compile(rf"{LEVEL}(?:\.\.{LEVEL})?")
FIELD = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
READ_FIELDS = ("MESSAGE", "PRIORITY", "_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_COMM", "_SOURCE_REALTIME_TIMESTAMP")


class JournaldConfig(PluginConfig):
    units: Annotated[list[str], Meta(description="Only these units (journalctl --unit; globs allowed).")] = (
        msgspec.field(default_factory=list)
    )
    identifiers: Annotated[list[str], Meta(description="Only these syslog identifiers (--identifier).")] = (
        msgspec.field(default_factory=list)
    )
    priority: Annotated[str, Meta(description='Only these priorities (--priority): "err", "0..4", "debug..err".')] = ""
    matches: Annotated[list[str], Meta(description='Journal matches, FIELD=value; "+" between groups means OR.')] = (
        msgspec.field(default_factory=list)
    )
    directory: Annotated[str, Meta(description="Read this journal directory (--directory) instead of the host's.")] = ""
    fields: Annotated[list[str], Meta(description="Journal fields sent as record attributes.")] = msgspec.field(
        default_factory=list
    )
    start_at: Annotated[Literal["end", "beginning"], Meta(description="Where to start without a saved cursor.")] = "end"
    max_field_bytes: Annotated[Size.at_least(1024), Meta(description="Longer field values are cut and counted.")] = (
        Size(256 * 1024)
    )
    journalctl: Annotated[str, Meta(description="The journalctl program.")] = "journalctl"
    restart_delay: Annotated[
        Duration, Meta(description="First wait before journalctl is started again; doubles up to 60s.")
    ] = Duration(1)

    def __post_init__(self) -> None:
        if self.priority and not PRIORITY.fullmatch(self.priority):
            raise ValueError(f'priority: {self.priority!r} is not a level or range ("err", "0..4", "debug..err")')
        for i, match in enumerate(self.matches):
            name, eq, _ = match.partition("=")
            if match != "+" and not (eq and FIELD.fullmatch(name)):
                raise ValueError(f'matches[{i}]: {match!r} is not FIELD=value (FIELD in A-Z, 0-9, _) or "+"')
        for i, name in enumerate(self.fields):
            if not FIELD.fullmatch(name):
                raise ValueError(f"fields[{i}]: {name!r} is not a journal field name (A-Z, 0-9, _)")
        for key in ("units", "identifiers"):
            for i, value in enumerate(getattr(self, key)):
                if not value or value.startswith("-"):
                    raise ValueError(f"{key}[{i}]: {value!r} is not a name")


class JournaldCollector(StreamingCollector):
    Config = JournaldConfig
    needs_redactor = True

    def __init__(self, config: JournaldConfig, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._store = Store(context.state_dir)
        self._ledger = Ledger("")
        self._position = ""  # cursor of the last entry handed on: where a new journalctl resumes
        self._since_us = 0  # start_at = "end" and no entry yet: a restart reads from here
        self._save_wanted = asyncio.Event()
        self._stopped = False
        self._emit: Emitter | None = None
        self._build = RecordBuilder(context, config.fields)
        self.proc: asyncio.subprocess.Process | None = None
        self.stats = collections.Counter()

    # ------------------------------------------------------------------ the loop

    async def run(self, emit: Emitter) -> None:
        ctx, config = self.context, self.config
        self._emit, self._stopped = emit, False
        cursor, problem = await ctx.run_blocking(self._store.load, config.directory)
        if problem:
            emit.error(problem)
        self._ledger = Ledger(cursor)
        self._position = cursor
        self._since_us = ctx.clock() // 1000
        saver = asyncio.create_task(self._saver(), name=f"cursor:{ctx.instance}")
        delay, first = config.restart_delay, True
        try:
            while True:
                began = time.monotonic()
                reason, text = await self._follow(emit, first)
                first = False
                if time.monotonic() - began > STEADY_SECONDS:
                    delay = config.restart_delay
                self._count("journal_restarts", reason)
                emit.error(f"{text}; starting it again in {delay:g}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY)
        finally:
            saver.cancel()
            self._stopped = True
            with contextlib.suppress(Exception):
                await ctx.run_blocking(self._store.save, self._ledger.committed, config.directory)

    async def _follow(self, emit: Emitter, first: bool) -> tuple[str, str]:
        """One journalctl run, until it ends; returns (reason, text) for the restart."""
        config = self.config
        try:
            position, drop = await self._start_args(emit, first)
            self.proc = proc = await asyncio.create_subprocess_exec(
                *self._command(*position, *self._filters()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=READ_CHUNK,
            )
        except FileNotFoundError:
            return "not_found", f"cannot run {config.journalctl}: not found"
        except OSError as exc:
            return "error", f"cannot run {config.journalctl}: {exc.strerror or exc}"
        stderr: collections.deque[str] = collections.deque(maxlen=5)
        drain = asyncio.create_task(_drain(proc.stderr, stderr))
        parser = ExportParser(config.max_field_bytes)
        try:
            while chunk := await proc.stdout.read(READ_CHUNK):
                try:
                    records, last, skipped = await self.context.run_blocking(self._convert, parser, chunk, drop)
                except ExportFormatError as exc:
                    return "bad_output", f"journalctl's output is not the export format ({exc})"
                if last:
                    drop = ""
                    await self._deliver(records, last, emit)
                if skipped:
                    self.context.logger.debug(
                        "%s: dropped the entry at the cursor, sent already", self.context.instance
                    )
            code = await proc.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(drain), 5)
            said = "; ".join(stderr) or "no message"
            return "exited", f"journalctl exited with status {code} ({said})"
        finally:
            self.proc = None
            drain.cancel()
            await _stop(proc)

    async def _start_args(self, emit: Emitter, first: bool) -> tuple[list[str], str]:
        """journalctl's position arguments, and the cursor whose entry to drop when it comes first."""
        cursor = self._position
        if cursor:
            if await self._cursor_exists(cursor):
                # --no-tail: with --follow, journalctl otherwise shows 10 entries from the cursor, then
                # only what is appended later (what lies beyond the 10 would wait for the next entry)
                return [f"--cursor={cursor}", "--no-tail"], cursor
            self._count("journal_cursor_lost")
            emit.error(
                f"the saved journal cursor is no longer in the journal (vacuumed or rotated away before it was"
                f" read on from): reading again from the oldest entry; entries in between may be lost ({cursor})"
            )
            return ["--no-tail"], ""
        if self.config.start_at == "beginning":
            return ["--no-tail"], ""
        if first:
            return ["--lines=0"], ""
        # journalctl ended before it sent anything: what came since the first start is still new
        return [f"--since=@{self._since_us // 1_000_000}", "--no-tail"], ""

    async def _cursor_exists(self, cursor: str) -> bool:
        """True when the journal still holds the cursor's entry (asked without filters)."""
        proc = await asyncio.create_subprocess_exec(
            *self._command(f"--cursor={cursor}", follow=False),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=READ_CHUNK,
        )
        parser = ExportParser(1024)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                while chunk := await proc.stdout.read(4096):
                    entries = parser.feed(chunk)
                    if entries:
                        return entries[0].get("__CURSOR") == cursor.encode()
                # nothing at or after the cursor: gone, unless journalctl failed (a journal it cannot
                # open says nothing about the cursor; the follower then fails and is restarted)
                return await proc.wait() != 0
        except (TimeoutError, ExportFormatError):
            return True  # cannot tell: resume at the cursor as usual
        finally:
            await _stop(proc)

    def _command(self, *args: str, follow: bool = True) -> list[str]:
        config = self.config
        wanted = sorted({*READ_FIELDS, *config.fields})
        cmd = [config.journalctl, "--output=export", "--no-pager", f"--output-fields={','.join(wanted)}"]
        if follow:
            cmd.append("--follow")
        # the host's journal with --merge: under the packaged unit's sandbox (systemd 252, the nspawn
        # test boot), journalctl --follow on the local journal alone (its default) delivered nothing;
        # the same files opened as "all journals" are followed as they should be
        cmd.append(f"--directory={config.directory}" if config.directory else "--merge")
        return [*cmd, *args]

    def _filters(self) -> list[str]:
        config = self.config
        args = [f"--unit={u}" for u in config.units] + [f"--identifier={i}" for i in config.identifiers]
        if config.priority:
            args.append(f"--priority={config.priority}")
        return [*args, "--", *config.matches] if config.matches else args

    # ------------------------------------------------------------------ entries to records

    def _convert(self, parser: ExportParser, chunk: bytes, drop: str) -> tuple[list[LogRecord], str, bool]:
        """Worker thread: parse a chunk; the records, the last entry's cursor, whether ``drop`` was dropped."""
        truncated = parser.truncated
        entries = parser.feed(chunk)
        if parser.truncated > truncated:
            self._count("journal_fields_truncated", n=parser.truncated - truncated)
        if not entries:
            return [], "", False
        last = entries[-1].get("__CURSOR", b"").decode("ascii", "replace")
        skipped = bool(drop) and entries[0].get("__CURSOR") == drop.encode()
        if skipped:
            entries = entries[1:]
        self._count("journal_entries_read", n=len(entries))
        return self._build(entries), last, skipped

    # ------------------------------------------------------------------ delivery and the cursor

    async def _deliver(self, records: list[LogRecord], last: str, emit: Emitter) -> None:
        batch = self._ledger.sent(last)
        self._position = last
        if records:
            await emit.logs(records, on_durable=functools.partial(self._acked, batch))
        else:
            self._acked(batch)

    def _acked(self, batch: list) -> None:
        """on_durable: every log output has the batch; the cursor may move past it."""
        self._ledger.acked(batch)
        if not self._ledger.dirty:
            return
        if not self._stopped:
            self._save_wanted.set()
            return
        # after run() ended, outputs still drain: save at once, the process may exit soon
        try:
            self._store.save(self._ledger.committed, self.config.directory)
            self._ledger.dirty = False
        except OSError as exc:
            self.context.logger.error("%s: cannot save the journal cursor: %s", self.context.instance, exc)

    async def _saver(self) -> None:
        """Writes the cursor file after every change, one write at a time."""
        while True:
            await self._save_wanted.wait()
            self._save_wanted.clear()
            self._ledger.dirty = False
            try:
                await self.context.run_blocking(self._store.save, self._ledger.committed, self.config.directory)
            except OSError as exc:
                if self._emit is not None:
                    self._emit.error(f"cannot save the journal cursor to {self._store.path}: {exc.strerror or exc}")
                await asyncio.sleep(1.0)
                self._save_wanted.set()  # try again, even if no acknowledgement comes

    def _count(self, attr: str, label: str = "", n: int = 1) -> None:
        self.stats[attr + (f":{label}" if label else "")] += n
        telemetry = self.context.telemetry
        if telemetry is not None:
            metric = getattr(telemetry, attr).labels(self.context.instance, *([label] if label else []))
            metric.inc(n)

    async def close(self) -> None:
        if self.proc is not None:
            await _stop(self.proc)


async def _drain(stream: Any, tail: collections.deque[str]) -> None:
    """journalctl's stderr, read so it never blocks on it; the last lines say why it ended."""
    while line := await stream.readline():
        tail.append(line.decode("utf-8", "replace").strip())


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
