"""Reading the files being tailed: one round at a time, on the instance's worker thread.

Each file is kept open, so a file renamed or deleted by rotation is still read
to its end; it is closed once it has been gone from the globs and silent for
``rotate_wait``. Finding and opening the files, and where a newly found file
starts, is ``opening.py``'s (with ``identity.py``); a truncated file starts a
new generation at offset 0 (``truncation.py``) and the old one is retired to
:class:`~collectors.logs.identity.Generations`, so a rotated copy that turns up
later continues where it stopped; a copy of a file still being read keeps pace
with it until the truncation is seen (``copies.py``).
:meth:`Tailer.step` does one round: scan the globs if asked, read what changed
(only the files with an event, or more to read, or a timer), frame, and hand
the lines of every file to ``records.py``, which redacts and parses them
together; it returns the records with the offsets they bring each generation to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from agent.model import Labels
from collectors.logs.access import Access
from collectors.logs.checkpoint import NO_MARK, Loaded, Mark, Saved
from collectors.logs.copies import catch_up, copies_of, follow_original
from collectors.logs.discovery import Patterns
from collectors.logs.identity import FP_BYTES, MIN_FP_MATCH, Opened
from collectors.logs.opening import OpenFiles, StepResult
from collectors.logs.parse import Parser
from collectors.logs.records import Pending, Plain, Redact, build_records
from collectors.logs.stats import LogStats
from collectors.logs.tracker import Tracker, tracker_resume, waits
from collectors.logs.truncation import replaced, restart, same_start

__all__ = ["StepResult", "Tailer"]

_First = tuple[bytes | None, bytes, int, bool | None]
"""A file's first read of a round, made before :meth:`Tailer._pump` was called: (its first bytes and the new
ones, or None; the new bytes; how many the read could bring; whether the file was found rewritten, or None
when not checked yet)."""

_mark = tuple.__new__
CHUNK = 1 << 20  # bytes per read call
FIRST_CHUNK = 64 << 10
"""Bytes asked for by a file's first read in a round; the next reads ask for :data:`CHUNK`. At low rates
a read brings a line: a 1 MiB buffer for it costs an ``mmap``, an ``mremap`` and a ``munmap`` besides the
read wherever the allocator's mmap threshold is below 1 MiB, as it is by default."""
STEP_BYTES = 2 << 20  # bytes per step over all files, so acknowledgements and timers keep up
FIRST_STEP_BYTES = 256 << 10
"""Bytes at most of the first round that finds something to read: a backlog found at start (a file read
from its beginning, or one that grew while the agent was stopped) sends its first lines after a short
round, and the output's first request is under way while the next rounds read at full size."""
HEAD_READ_MAX = 4096
"""A file read up to this offset has its first read of a round start at offset 0: the bytes the check that
it still starts as it did compares (and a growing fingerprint hashes) come with the new ones in one
``pread``, instead of a second one for them (a page copied costs less than a system call)."""


class Tailer(OpenFiles):
    """Reads the open files in rounds (:meth:`step`); which files those are is :class:`OpenFiles`'."""

    def __init__(
        self,
        config: Any,
        patterns: Patterns,
        static_labels: Labels,
        stats: LogStats,
        clock: Callable[[], int],
        redact: Redact | None,
        saved: list[Saved],
        now: float,
        run_id: str,
        resume: Loaded | None = None,
        access: Access | None = None,
    ) -> None:
        super().__init__(config, patterns, static_labels, stats, saved, now, run_id, resume, access)
        self.clock = clock
        self.redact = redact
        self.parser = Parser(config.format, config.detect_severity, stats)
        self._rr = 0
        self._budget = FIRST_STEP_BYTES  # STEP_BYTES once a round has read something

    # ------------------------------------------------------------------ the round

    def step(self, now: float, scan: bool, dirty: set[str], check_all: bool, poll_links: bool = False) -> StepResult:
        """One round: ``check_all`` looks at every file (polling, periodic safety net), otherwise only
        at ``dirty`` paths (inotify), files with more to read, files rotated away, and with
        ``poll_links`` symlinked files (inotify does not see their targets change)."""
        res = StepResult()
        if not scan and self.polling and check_all:
            scan = self._paths_moved()
        if scan:
            self._scan(now, res)
        if check_all:  # a file whose size and time are those of the last look has nothing new: an fstat each
            targets = [t for t in self.trackers.values() if t in self.attention or not _quiet(t)]
        else:  # only what changed or waits: a round costs the same with 20 files as with 2,000
            targets = [t for t in self.attention if t.more or t.orphan_since is not None or (poll_links and t.polled)]
            targets += [t for p in dirty if (t := self.by_path.get(p)) is not None and not t.more]
        if len(targets) > 1:  # take turns when the budget runs out
            self._rr = (self._rr + 1) % len(targets)
            targets = targets[self._rr :] + targets[: self._rr]
        budget = self._budget
        now_ns = self.clock()
        pending: dict[str, Pending] = {}
        looked = dict.fromkeys(targets)
        plain = Plain()
        left, settled = self._read(list(looked), budget, now, res, pending, plain)
        if left < budget:
            self._budget = STEP_BYTES
        looked.update(self.attention)
        # only a file that waits can have a timer due; most were read to their end and hold nothing
        waiting = [t for t in looked if t not in settled and t.fd >= 0 and waits(t)]
        self._timers(now, res, pending, waiting)
        res.records = build_records(pending.values(), now_ns, self.redact, self.parser, self.stats, plain)
        # what waits now, and what the timers' reads added (the copies of a file found truncated)
        added = [t for t in self.attention if t not in looked]
        self.attention = dict.fromkeys([t for t in waiting if t.fd >= 0 and waits(t)] + added)
        res.more = res.more or any(t.more for t in self.attention)
        res.files = len(self.trackers)
        return res

    # ------------------------------------------------------------------ reading

    def _read(
        self,
        order: list[Tracker],
        budget: int,
        now: float,
        res: StepResult,
        pending: dict[str, Pending],
        plain: Plain,
    ) -> tuple[int, set[Tracker]]:
        """Read the round's files in turn until ``budget`` bytes were read; returns the bytes left of it and
        the files read that wait for nothing (no timer of theirs can be due this round).

        Most reads at low rates are alike: a line or a few, whole, of a file looked at before that holds
        nothing (no partial line, no multiline record, not a copy of another). Those are read, checked and
        framed in this one loop, which does what :meth:`_pump` would, without its general path's calls and
        checks: a round reads a line from each of hundreds of files, and those calls cost more than the
        work. Any other file, and any read that turns out otherwise (nothing new, a partial line, a full
        buffer, a rewrite, an error), goes to :meth:`_pump`, with the bytes already read."""
        pread = os.pread  # looked up at each round, not at import: tests count reads
        settled: set[Tracker] = set()
        sent = res.sent
        add_file, add_lines, add_block = plain.files.append, plain.groups.append, plain.blocks.append
        took = 0
        for i, t in enumerate(order):
            if t.fd < 0:
                continue
            first: _First | None = None
            taken = False  # read, framed and handed on here
            if budget >= FIRST_CHUNK and t.twin is None and t.last_stat[0] >= 0:
                pos = t.pos
                try:  # as _read_new: within the file's first page from offset 0, its first bytes come too
                    if pos <= HEAD_READ_MAX:
                        whole: bytes | None = pread(t.fd, FIRST_CHUNK, 0)
                        data, want = whole[pos:], FIRST_CHUNK - pos
                    else:
                        whole, data, want = None, pread(t.fd, FIRST_CHUNK, pos), FIRST_CHUNK
                except OSError:
                    pass  # _pump reads it again, and reports the error
                else:
                    n = len(data)
                    gone = None
                    if 0 < n < want and data[-1] == 10:  # whole lines, and all there was
                        gone = not same_start(t) if whole is None else not whole.startswith(t.head)
                        framer = t.framer
                        lines = None if gone or t.key in pending else framer.plain_lines(data)
                        if lines is not None:  # what _pump's general path would make of it, in short
                            taken = True
                            t.pos = pos + n
                            add_file(t)
                            add_lines(lines)
                            add_block(data)
                            sent[t.key] = _mark(Mark, (framer.pending_at, framer.tail))
                            t.more = False
                            t.last_data = now
                            took += n
                            budget -= n
                            fid = t.id  # as _took: the fingerprint grows in steps
                            if fid.fp_len < FP_BYTES and t.pos >= min(FP_BYTES, max(2 * fid.fp_len, MIN_FP_MATCH)):
                                self._grow_fingerprint(t, res, whole)  # whole: all the file held
                            if t.orphan_since is None and not t.polled and t.multiline is None:
                                settled.add(t)  # nothing held, no timer: see waits()
                    if not taken:
                        first = (whole, data, want, gone)
            if not taken:
                budget -= self._pump(t, now, res, pending, budget, first)
            if budget <= 0:
                res.more = True
                for rest in order[i + 1 :]:
                    rest.more = True  # its event is taken: read it next round, not at its next event
                break
        self.stats.bytes_read += took
        return budget, settled

    def _pump(
        self,
        t: Tracker,
        now: float,
        res: StepResult,
        pending: dict[str, Pending],
        budget: int,
        first: _First | None = None,
    ) -> int:
        """Read what is new in one file; returns the bytes read. ``first``: the round's first read of it,
        already made (by :meth:`_read`), when ``t`` was looked at before and is no copy."""
        looked = t.twin is not None or t.last_stat[0] < 0  # a copy, or a first look: its size first
        if looked:
            try:
                st = os.fstat(t.fd)
            except OSError as exc:
                self._problem(t.path, "read", exc, res)
                return 0
            if t.twin is not None and follow_original(
                t, res.skipped, st.st_size, self.config.max_line_bytes, self.stats
            ):
                return 0  # a copy of a live file: its original reads these bytes
            if replaced(t, st):
                self._truncated(t, now, res, pending)
        read = 0
        head: bytes | None = None  # the file's first bytes, when this round's first read brought them
        while read < budget:
            gone = None
            try:
                if first is not None:
                    whole, data, want, gone = first
                    first = None
                else:
                    whole, data, want = _read_new(t, min(CHUNK if read else FIRST_CHUNK, budget - read), not looked)
            except OSError as exc:
                self._problem(t.path, "read", exc, res)
                break
            if not looked:
                # truncated or rewritten since the last look? Nothing new: its size and time tell; new
                # bytes: whether it still starts as it did (one read, not an fstat and a read, per file
                # and round: at low rates a round reads a line from each of many files)
                looked = True
                if data:
                    if gone is None:
                        gone = _rewritten(t, whole)
                    if whole is not None and not gone and (len(data) < want or len(whole) >= FP_BYTES):
                        head = whole  # all the file held then, or at least the fingerprint's bytes
                else:
                    try:
                        gone = replaced(t, os.fstat(t.fd))
                    except OSError as exc:
                        self._problem(t.path, "read", exc, res)
                        break
                if gone:
                    self._truncated(t, now, res, pending)
                    continue  # read the new generation from its start
            if not data:
                break
            t.pos += len(data)
            read += len(data)
            framer = t.framer
            lines, ends = framer.feed(data)
            if lines and ends is None:  # whole lines, no multiline: the usual read
                self._add(t, lines, framer.pending_at, framer.tail, res, pending, framer.block)
            else:
                self._lines(t, (lines, ends), res, pending)
            if len(data) < want:
                break
        t.more = read >= budget
        if read:
            self._took(t, read, now, res, head)
        return read

    def _took(self, t: Tracker, n: int, now: float, res: StepResult, head: bytes | None) -> None:
        """``n`` bytes of ``t`` were read this round; ``head``: its first bytes, when a read brought them."""
        t.last_data = now
        self.stats.bytes_read += n
        # in steps (64, 128 ... bytes), not at every read: a file growing a line at a time would
        # otherwise cost a read of its head, a hash and a checkpoint write per line (_read repeats this
        # test, and _read_new's and _rewritten's, inline: calling them cost about 2,000 instructions a read)
        if t.id.fp_len < FP_BYTES and t.pos >= min(FP_BYTES, max(2 * t.id.fp_len, MIN_FP_MATCH)):
            self._grow_fingerprint(t, res, head)

    def _lines(
        self, t: Tracker, framed: tuple[list[str], list[int] | None], res: StepResult, pending: dict[str, Pending]
    ) -> None:
        """Framed lines become pending records; their end offset is what the records bring the file to."""
        lines, ends = framed
        if t.multiline is not None and ends is not None:
            lines, ends = t.multiline.feed(lines, ends, t.last_data)
            if lines:
                self._add(t, lines, ends[-1], b"", res, pending)
            return
        framer = t.framer
        if lines:
            self._add(t, lines, framer.consumed, framer.tail, res, pending, framer.block)
        elif framer.consumed > max(res.skipped.get(t.key, NO_MARK)[0], res.sent.get(t.key, NO_MARK)[0]):
            res.skipped[t.key] = Mark(framer.consumed, framer.tail)  # bytes that made no line

    def _add(
        self,
        t: Tracker,
        lines: list[str],
        end: int,
        tail: bytes,
        res: StepResult,
        pending: dict[str, Pending],
        block: bytes | None = None,
    ) -> None:
        key = t.key
        got = pending.get(key)
        if got is None:  # most rounds at low rates: one read of one line from each of many files
            pending[key] = Pending(t, lines, None if block is None else [block])
        else:
            if got.blocks is not None:
                if block is None:
                    got.blocks = None
                else:
                    got.blocks.append(block)
            got.lines.extend(lines)
        res.sent[key] = _mark(Mark, (end, tail))  # tuple.__new__: a Mark without a Python-level call

    def _grow_fingerprint(self, t: Tracker, res: StepResult, head: bytes | None = None) -> None:
        """``head``: the file's first bytes as this round's read found them (checked to start with
        ``t.head``), or None to read them."""
        if head is None:
            try:
                head = os.pread(t.fd, FP_BYTES, 0)
            except OSError:
                return
            grown = t.id.grown(head)
        else:  # still starts with the bytes fingerprinted so far: compared, not hashed again
            grown = t.id.extended(head) if len(head) > t.id.fp_len else None
        if grown is not None:
            t.id = grown
            t.head = head[: grown.fp_len]
            res.identity[t.key] = grown

    def _truncated(self, t: Tracker, now: float, res: StepResult, pending: dict[str, Pending]) -> None:
        """The file was truncated (copytruncate) or rewritten: a new generation from offset 0."""
        self.stats.truncations += 1
        if not t.copied:
            self._flush(t, res, pending)  # the held tail belongs to the old content
        catch_up(self.trackers.values(), t, res.skipped, self.config.max_line_bytes, self.stats)
        offset, tail = tracker_resume(t)
        self.generations.retire(t.key, t.id, offset, tail, True, now)
        res.closed.append(t.key)
        del self.trackers[t.key]
        self._serial += 1
        restart(t, f"{self._run_id}.{self._serial}", lambda *fresh: self._new_tracker(*fresh, now))
        self.trackers[t.key] = t
        res.opened.append(Opened(t.key, t.id, 0))
        for other in copies_of(self.trackers.values(), t):
            other.more = True  # a copy of the old content: it reads on alone from now on
            self.attention[other] = None

    # ------------------------------------------------------------------ timers

    def _timers(self, now: float, res: StepResult, pending: dict[str, Pending], looked: list[Tracker]) -> None:
        config = self.config
        partial_after = config.partial_line_timeout
        flush_after = config.multiline.flush_timeout
        due: float | None = None
        for t in looked:
            if t.fd < 0:
                continue
            if t.framer.pending and not t.more:  # with more to read, the line's end may be unread yet
                at = t.last_data + partial_after
                if now >= at and self._pump(t, now, res, pending, STEP_BYTES):
                    at = t.last_data + partial_after  # its end came: the event was still on its way
                if now >= at and not t.more:
                    self._flush_partial(t, res, pending)
                else:
                    due = at if due is None else min(due, at)
            # a held record waits for a held partial line too: that line may still belong to it
            if t.multiline is not None and t.multiline.held and not t.framer.pending and not t.more:
                at = max(t.multiline.since, t.last_data) + flush_after
                if now >= at and self._pump(t, now, res, pending, STEP_BYTES):
                    at = max(t.multiline.since, t.last_data) + flush_after
                if now >= at and not t.more and not t.framer.pending:
                    self._flush_multiline(t, res, pending)
                else:
                    due = at if due is None else min(due, at)
            if t.orphan_since is not None and not t.more:
                at = max(t.orphan_since, t.last_data) + config.rotate_wait
                if now >= at:
                    self._close(t, now, res, pending)
                else:
                    due = at if due is None else min(due, at)
        res.due = due

    def _flush_partial(self, t: Tracker, res: StepResult, pending: dict[str, Pending]) -> None:
        got = t.framer.flush()
        if got is not None:
            line, end = got
            self._lines(t, ([line], [end] if t.multiline is not None else None), res, pending)

    def _flush_multiline(self, t: Tracker, res: StepResult, pending: dict[str, Pending]) -> None:
        got = t.multiline.flush() if t.multiline is not None else None
        if got is not None:
            record, end = got
            self._add(t, [record], end, b"", res, pending)

    def _flush(self, t: Tracker, res: StepResult, pending: dict[str, Pending]) -> None:
        self._flush_partial(t, res, pending)
        self._flush_multiline(t, res, pending)

    def _close(self, t: Tracker, now: float, res: StepResult, pending: dict[str, Pending]) -> None:
        """A file gone from the globs and quiet for rotate_wait: its last line counts, then it is let go."""
        self._flush(t, res, pending)
        offset, tail = tracker_resume(t)
        self.generations.retire(t.key, t.id, offset, tail, False, now)
        res.closed.append(t.key)
        del self.trackers[t.key]
        if self.by_inode.get(t.id.inode) is t:
            del self.by_inode[t.id.inode]
        for path in [p for p, other in self.by_path.items() if other is t]:
            del self.by_path[path]
        try:
            os.close(t.fd)
        except OSError:
            pass
        t.fd = -1


def _read_new(t: Tracker, want: int, with_head: bool) -> tuple[bytes | None, bytes, int]:
    """Up to ``want`` new bytes of ``t``: (its first bytes and the new ones, or None; the new bytes; how many
    this read could bring). ``with_head`` (a round's first read of the file) and read up to
    :data:`HEAD_READ_MAX`: from offset 0, so the bytes the start check compares come in the same pread.
    Raises OSError."""
    pos = t.pos
    if with_head and pos <= HEAD_READ_MAX and want > pos:
        whole = os.pread(t.fd, want, 0)
        return whole, whole[pos:], want - pos
    return None, os.pread(t.fd, want, pos), want


def _rewritten(t: Tracker, whole: bytes | None) -> bool:
    """Does ``t`` no longer start with the bytes fingerprinted? ``whole``: its first bytes as a read found
    them (the kept head is the fingerprinted bytes, all of them: a prefix test, not a copy), else read."""
    return not same_start(t) if whole is None else not whole.startswith(t.head)


def _quiet(t: Tracker) -> bool:
    """Nothing new since the last look: read to its size, and its size and modification time are those
    :func:`~collectors.logs.truncation.replaced` last saw (what reading it would have found out).

    A file read to its size since then has a newer time (its writes, which the read took), and reads
    bring no fstat: that time is taken here, once its first bytes show it was not rewritten to the size
    read, instead of reading it for nothing (a read, an fstat and that same check) at every scan."""
    try:
        st = os.fstat(t.fd)
    except OSError:
        return False  # reading it reports the error
    if st.st_size != t.pos:
        return False
    stamp = (st.st_size, st.st_mtime_ns)
    if stamp == t.last_stat:
        return True
    if t.last_stat[0] >= 0 and not same_start(t):
        return False  # rewritten to the size read: the read sees the time changed and starts it anew
    t.last_stat = stamp
    return True
