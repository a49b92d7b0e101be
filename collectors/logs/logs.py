"""Log file tailing: globs, rotation, checkpoints on acknowledgement, framing, multiline, parsing.

The collector runs until cancelled. Each round, one call on the instance's
worker thread (:meth:`Tailer.step`) scans the globs when due, reads what
changed in large chunks, frames, parses and redacts, and returns records; the
event loop hands them to the pipeline with ``emit.logs`` (which waits while a
full output buffer applies backpressure, pausing the reading) and goes back to
waiting for inotify events or its next timer.

Checkpoints move only when the pipeline says every log output has durably
taken a batch (``on_durable``), and are written at most once a second, or as
soon as ``SAVE_LINES`` lines were acknowledged since the last write, so a crash
sends again the batches in flight and at most about a round's acknowledged lines. A write appends
the entries that changed to the checkpoint journal; a full snapshot is written when the journal has
outgrown the last one, after a failed write, and at shutdown. See ``checkpoint.py`` for the ledger
and its files, ``tailer.py`` for file identity and rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import threading
import time
from typing import Annotated, Any, Literal

import msgspec
import re2

from agent.plugin import (
    CollectorContext,
    Duration,
    Emitter,
    PluginConfig,
    Redactor,
    Size,
    StreamingCollector,
)
from collectors.logs.access import Access
from collectors.logs.checkpoint import Ledger, Mark, Store
from collectors.logs.discovery import NETWORK_FS, Patterns, Watcher, filesystem_type, glob_regex
from collectors.logs.multiline import check_pattern
from collectors.logs.records import Redact
from collectors.logs.stats import LogMetrics, LogStats
from collectors.logs.tailer import StepResult, Tailer

ROUND_GAP = 0.25
"""Seconds at most from the start of one round to the next at low rates (none when a round ran out of
budget)."""
ROUND_LINES = 250
"""At higher rates rounds come sooner, about this many lines each: the lines of one round are
acknowledged together, and a crash sends the unacknowledged ones again."""
SAVE_INTERVAL = 1.0
"""Seconds at least between two checkpoint writes, unless ``SAVE_LINES`` lines were acknowledged since
the last one: at low rates one write a second, at higher rates about one per round, so a crash sends
again at most about a round's lines more than the batches in flight."""
SAVE_LINES = ROUND_LINES
"""Acknowledged lines that make the next checkpoint write due at once."""


def round_gap(lines: int, seconds: float) -> float:
    """How long after its start the next round may start, given the lines the last one read in
    ``seconds`` since the one before it."""
    if lines <= 0 or seconds <= 0:
        return ROUND_GAP
    return min(ROUND_GAP, ROUND_LINES * seconds / lines)


class Multiline(PluginConfig):
    start_pattern: Annotated[
        str, msgspec.Meta(description="A line matching this regex starts a new record; others continue it.")
    ] = ""
    continuation_pattern: Annotated[
        str, msgspec.Meta(description="A line matching this regex continues the previous record; others start one.")
    ] = ""
    max_lines: Annotated[int, msgspec.Meta(description="Lines per record at most; more start a new record.", ge=1)] = (
        500
    )
    max_bytes: Annotated[Size, msgspec.Meta(description="Bytes per record at most; more start a new record.")] = Size(
        1024 * 1024
    )
    flush_timeout: Annotated[
        Duration, msgspec.Meta(description="Emit the last record after this long without a new line.")
    ] = Duration(1)

    def __post_init__(self) -> None:
        if self.start_pattern and self.continuation_pattern:
            raise ValueError("multiline: set start_pattern or continuation_pattern, not both")
        for name in ("start_pattern", "continuation_pattern"):
            problem = check_pattern(getattr(self, name))
            if problem:
                raise ValueError(f"{name}: {problem}")


class LogsCollector(StreamingCollector):
    needs_redactor = True

    class Config(PluginConfig):
        paths: Annotated[list[str], msgspec.Meta(description="Files to tail: globs, `**` for any depth.")]
        exclude: Annotated[
            list[str], msgspec.Meta(description="Globs of files to leave out; without a `/` they match the name.")
        ] = msgspec.field(default_factory=list)
        start_at: Annotated[
            Literal["end", "beginning"],
            msgspec.Meta(description="Where to start in files already there at start-up without a checkpoint."),
        ] = "end"
        format: Annotated[
            Literal["raw", "json", "logfmt"], msgspec.Meta(description="How to parse each line (or record).")
        ] = "raw"
        detect_severity: Annotated[
            bool, msgspec.Meta(description="raw: recognise ERROR, WARN, [error] ... near the start of a line.")
        ] = True
        encoding: Annotated[
            Literal["utf-8", "latin-1", "utf-16", "utf-16le", "utf-16be"],
            msgspec.Meta(description="Character encoding of the files; utf-16 follows the byte order mark."),
        ] = "utf-8"
        max_line_bytes: Annotated[
            Size.at_least(16), msgspec.Meta(description="Longer lines are cut to this size and counted.")
        ] = Size(256 * 1024)
        partial_line_timeout: Annotated[
            Duration, msgspec.Meta(description="A last line without a newline is sent after this long.")
        ] = Duration(1)
        multiline: Annotated[Multiline, msgspec.Meta(description="Joining lines into records.")] = msgspec.field(
            default_factory=Multiline
        )
        glob_interval: Annotated[Duration, msgspec.Meta(description="How often the globs are expanded again.")] = (
            Duration(10)
        )
        watch: Annotated[
            Literal["auto", "inotify", "poll"],
            msgspec.Meta(description="Change notification; auto polls on network file systems."),
        ] = "auto"
        poll_interval: Annotated[Duration, msgspec.Meta(description="How often files are checked when polling.")] = (
            Duration(0.25)
        )
        rotate_wait: Annotated[
            Duration, msgspec.Meta(description="How long a rotated-away or deleted file is watched after its end.")
        ] = Duration(5)
        follow_symlinks_to: Annotated[
            list[str],
            msgspec.Meta(
                description="Globs of files a symlink found by `paths` may point at, besides the `paths` globs"
                " themselves (never /proc, /sys, /dev or the agent's secret files)."
            ),
        ] = msgspec.field(default_factory=list)
        include_compressed: Annotated[
            bool, msgspec.Meta(description="Also read compressed files (.gz, .zst ...), as raw bytes.")
        ] = False

        def __post_init__(self) -> None:
            if not self.paths:
                raise ValueError("paths: at least one glob is required")
            for key in ("paths", "exclude", "follow_symlinks_to"):
                for i, pattern in enumerate(getattr(self, key)):
                    try:
                        glob_regex(pattern)
                    except re2.error as exc:
                        detail = exc.args[0] if exc.args else exc
                        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
                        raise ValueError(f"{key}[{i}]: not a valid glob: {pattern!r} ({detail})") from None

    def __init__(self, config: LogsCollector.Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self.stats = LogStats()
        self._metrics = LogMetrics(context.telemetry, context.instance) if context.telemetry is not None else None
        self._ledger: Ledger | None = None
        self._store = Store(context.state_dir)
        self._save_wanted = asyncio.Event()
        self._unsaved_lines = 0  # acknowledged since the last checkpoint write
        self._late_lock = threading.Lock()  # acknowledgements after run() ended: saved on a thread
        self._late: tuple[list[Any], int] | None = None  # a snapshot and when it was taken (see Store.save)
        self._taken = itertools.count(1)  # the order snapshots are taken in
        self._late_writing = False
        self._stopped = False
        self._emit: Emitter | None = None
        self._tailer: Tailer | None = None
        self.polling = False

    # ------------------------------------------------------------------ the loop

    async def run(self, emit: Emitter) -> None:
        ctx, config = self.context, self.config
        run = ctx.run_blocking
        self._emit, self._stopped = emit, False
        loaded = await run(self._store.load)
        if loaded.problem:
            emit.error(loaded.problem)
        if loaded.corrupt:
            self.stats.checkpoint_corrupt += 1
        if loaded.torn:
            self.stats.checkpoint_torn += 1
            ctx.logger.warning(
                "%s: checkpoint journal %s: a torn record at its end (%d bytes) not read; its files resume "
                "from the entries before it (their lines since then are sent again)",
                ctx.instance,
                self._store.journal_path,
                loaded.torn,
            )
        saved = loaded.files
        now = time.monotonic()
        ledger = self._ledger = Ledger(saved, now)
        patterns = Patterns(config.paths, config.exclude, config.include_compressed)
        run_id = format(ctx.clock() // 1_000_000, "x")
        access = Access(patterns, config.follow_symlinks_to, ctx.denied_paths, {str(ctx.proc_root), str(ctx.sys_root)})
        tailer = self._tailer = Tailer(
            config,
            patterns,
            ctx.static_labels,
            self.stats,
            ctx.clock,
            self._redactor(),
            saved,
            now,
            run_id,
            resume=loaded,
            access=access,
        )
        wake = asyncio.Event()
        watcher: Watcher | None = None
        plan: dict[str, bool] = {}
        saver = asyncio.create_task(self._saver(), name=f"checkpoints:{ctx.instance}")
        try:
            if config.watch != "poll":
                watcher, plan = await self._start_watcher(wake, patterns)
            self.polling = tailer.polling = watcher is None
            next_scan = next_poll = 0.0
            started = time.monotonic()
            backlog = False  # the last round ran out of budget: a backlog is being read
            while True:
                now, since = time.monotonic(), started
                started = now
                scan, dirty = watcher.take() if watcher is not None else (False, set())
                scan = scan or now >= next_scan
                poll_due = now >= next_poll
                if poll_due:
                    next_poll = now + config.poll_interval
                result = await run(tailer.step, now, scan, dirty, scan or (self.polling and poll_due), poll_due)
                if scan:
                    next_scan = now + config.glob_interval
                    if watcher is not None and (new_plan := patterns.watch_plan()) != plan:
                        plan = new_plan
                        for text in await run(watcher.sync, plan):
                            emit.error(text)
                # the round that reads a backlog to its end asks the outputs to send what is pending now: its
                # rest is not the start of a low-rate batch (which waits flush_interval for more lines) but
                # the last of lines a backend could have had already
                await self._deliver(result, ledger, emit, flush=backlog and not result.more)
                backlog = result.more
                if result.more:
                    await asyncio.sleep(0)
                    continue
                # lines arriving now wait for the next round with those of the other files: a round
                # (worker hop, delivery, a batch into the pipeline) costs the same for 1 line as for 500
                if (gap := now + round_gap(len(result.records), now - since) - time.monotonic()) > 0:
                    await asyncio.sleep(gap)
                deadline = next_scan
                if self.polling or any(t.polled for t in tailer.attention):  # symlinked files wait there
                    deadline = min(deadline, next_poll)
                if result.due is not None:
                    deadline = min(deadline, result.due)
                timeout = deadline - time.monotonic()
                if timeout > 0 and not wake.is_set():
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns normally when
                    # the event is set just as the task is cancelled, and the collector never stops
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await wake.wait()
                wake.clear()
        finally:
            saver.cancel()
            self._stopped = True
            self._tailer = None
            with contextlib.suppress(Exception):
                await run(self._shutdown, tailer, watcher, ledger.snapshot(time.monotonic()), next(self._taken))

    async def _start_watcher(self, wake: asyncio.Event, patterns: Patterns) -> tuple[Watcher | None, dict[str, bool]]:
        """inotify, unless the files live where it sees nothing (or it cannot be had)."""
        plan = patterns.watch_plan()
        if self.config.watch == "auto":
            mounts = self.context.proc_root / "self" / "mounts"
            kinds = await self.context.run_blocking(lambda: {filesystem_type(d, mounts) for d in plan})
            remote = kinds & NETWORK_FS
            if remote:
                self.context.logger.info(
                    "%s: polling every %gs: files on %s", self.context.instance, self.config.poll_interval, remote
                )
                return None, plan
        watcher = Watcher(asyncio.get_running_loop(), wake, patterns.matches)
        try:
            problems = await self.context.run_blocking(watcher.sync, plan)
        except Exception as exc:  # no inotify at all (a sandbox, an exhausted instance limit)
            await self.context.run_blocking(watcher.stop)
            self._emit.error(f"inotify unavailable ({exc}); polling every {self.config.poll_interval:g}s")
            return None, plan
        for text in problems:
            self._emit.error(f"{text}; polling every {self.config.poll_interval:g}s instead")
        if problems:
            await self.context.run_blocking(watcher.stop)
            return None, plan
        return watcher, plan

    async def _deliver(self, result: StepResult, ledger: Ledger, emit: Emitter, flush: bool = False) -> None:
        for opened in result.opened:
            ledger.opened(opened)
        for key, file in result.identity.items():
            ledger.identity(key, file)
        for key in result.claimed:
            ledger.claimed(key)
        for text in result.errors:
            emit.error(text)
        for text in result.notes:
            self.context.logger.info("%s: %s", self.context.instance, text)
        self._push_metrics(result.files)
        if result.records:
            marks = result.sent
            ledger.sent_many(marks)
            on_durable = functools.partial(self._acked, marks, len(result.records))
            await emit.logs(result.records, on_durable=on_durable, flush=flush)
        for key, mark in result.skipped.items():
            ledger.skipped(key, mark)
        now = time.monotonic()
        for key in result.closed:
            ledger.closed(key, now)
        if ledger.dirty:
            self._save_wanted.set()

    # ------------------------------------------------------------------ checkpoints

    def _acked(self, marks: dict[str, Mark], lines: int) -> None:
        """on_durable: every log output has these records; the checkpoint may move past them."""
        ledger = self._ledger
        if ledger is None:
            return
        ledger.acked(marks)
        if not self._stopped:
            self._unsaved_lines += lines
            self._save_wanted.set()
            return
        # after run() ended, outputs still drain: save soon, the process may exit soon; on a thread of
        # its own (not daemonic: the interpreter waits for it at exit), never fsync on the event loop
        with self._late_lock:
            self._late = (ledger.snapshot(time.monotonic()), next(self._taken))
            if self._late_writing:
                return  # the running writer takes the newest snapshot next
            self._late_writing = True
        threading.Thread(target=self._write_late, name=f"checkpoints:{self.context.instance}").start()

    def _write_late(self) -> None:
        while True:
            with self._late_lock:
                late, self._late = self._late, None
                if late is None:
                    self._late_writing = False
                    return
            try:
                self._store.save(*late)
            except OSError as exc:
                self.context.logger.error("%s: cannot save checkpoints: %s", self.context.instance, exc)

    async def _saver(self) -> None:
        """Writes the checkpoint file after changes, one write at a time: at most one per
        ``SAVE_INTERVAL``, sooner once ``SAVE_LINES`` lines were acknowledged since the last."""
        wanted = self._save_wanted
        last = -SAVE_INTERVAL
        while True:
            await wanted.wait()
            wanted.clear()
            while (wait := last + SAVE_INTERVAL - time.monotonic()) > 0 and self._unsaved_lines < SAVE_LINES:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await wanted.wait()
                wanted.clear()
            ledger = self._ledger
            if ledger is None:
                continue
            self._unsaved_lines = 0
            last = time.monotonic()
            store = self._store
            try:
                if store.appendable:  # what changed since the last write, appended
                    await self.context.run_blocking(store.append, ledger.changes(last), next(self._taken))
                else:  # a snapshot (the first, or the journal outgrew it, or an append failed)
                    await self.context.run_blocking(store.save, ledger.restart(last), next(self._taken), True)
            except OSError as exc:
                self.stats.file_errors["checkpoint"] += 1
                if self._emit is not None:
                    self._emit.error(f"cannot save checkpoints to {self._store.path}: {exc.strerror or exc}")
                await asyncio.sleep(1.0)

    def _shutdown(self, tailer: Tailer, watcher: Watcher | None, snapshot: list[Any], taken: int) -> None:
        if watcher is not None:
            watcher.stop()
        tailer.close_all()
        try:
            self._store.save(snapshot, taken)  # a snapshot needing no journal
        finally:
            self._store.close()

    async def status(self) -> dict[str, Any]:
        """For the status page: each open file's size, read offset and the bytes not read yet.

        Runs on the worker thread, between two rounds of :meth:`Tailer.step`, which owns the files."""
        tailer = self._tailer
        if tailer is None:
            return {"files": []}
        return {"files": await self.context.run_blocking(_files_behind, tailer)}

    # ------------------------------------------------------------------ helpers

    def _redactor(self) -> Redact | None:
        redactor: Redactor | None = self.context.redactor
        # per file: a private key spread over lines is masked across reads; a round's files in one call
        return None if redactor is None else redactor.streams()

    def _push_metrics(self, files: int) -> None:
        if self._metrics is not None:
            self._metrics.push(self.stats, files)


def _files_behind(tailer: Tailer) -> list[dict[str, Any]]:
    files = []
    for t in tailer.trackers.values():
        if t.fd < 0:
            continue
        try:
            size = os.fstat(t.fd).st_size
        except OSError:
            continue  # the next round reports it
        behind = max(0, size - t.pos)
        rotated = t.orphan_since is not None  # renamed or deleted, read to its end before it is let go
        files.append({"path": t.name, "size_bytes": size, "offset": t.pos, "behind_bytes": behind, "rotated": rotated})
    files.sort(key=lambda f: f["path"])
    return files
