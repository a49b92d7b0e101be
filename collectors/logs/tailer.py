"""Reading the files being tailed: one round at a time, on the instance's worker thread.

Each file is kept open, so a file renamed or deleted by rotation is still read
to its end; it is closed once it has been gone from the globs and silent for
``rotate_wait``. Which file is which, and where a newly found file starts, is
``identity.py``'s: a truncated file starts a new generation at offset 0 and the
old one is retired to :class:`~collectors.logs.identity.Generations`, so a
rotated copy that turns up later continues where it stopped.
:meth:`Tailer.step` does one round: scan the globs if asked, read what changed
(only the files with an event, or more to read, or a timer), frame, parse and
redact, and return the records with the offsets they bring each generation to.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import operator
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.model import Labels, LogRecord, merge_labels
from collectors.logs.access import Access, Refused
from collectors.logs.checkpoint import NO_MARK, Loaded, Mark, Saved
from collectors.logs.discovery import Patterns, is_compressed
from collectors.logs.framing import Framer, resolve_encoding
from collectors.logs.identity import (
    FP_BYTES,
    MIN_FP_MATCH,
    RETAIN_SECONDS,
    FileId,
    Generations,
    Head,
    Known,
    Opened,
    holds,
    rotation_kind,
    same_content,
)
from collectors.logs.multiline import Multiline
from collectors.logs.parse import Parser
from collectors.logs.stats import LogStats

Redact = Callable[[list[list[str]], list[str]], list[str]]
"""(each file's lines, their files' keys) -> every line redacted, in one list; one key-block state per key."""

CHUNK = 1 << 20  # bytes per read call
STEP_BYTES = 2 << 20  # bytes per step over all files, so acknowledgements and timers keep up


@dataclass(slots=True, eq=False)
class Tracker:
    """An open file, read as the generation ``key``."""

    key: str
    name: str  # the path it was found under: the ``filename`` label
    id: FileId  # its path now, inode and fingerprint
    fd: int
    pos: int  # next byte to read
    framer: Framer
    multiline: Multiline | None
    labels: Labels
    polled: bool  # a symlink: inotify on the link's directory does not see the target change
    last_data: float
    last_stat: tuple[int, int] = (-1, -1)
    last_ns: int = 0
    orphan_since: float | None = None
    more: bool = True
    twin: Twin | None = None  # a copy of a live file (copytruncate's, before the truncation is seen)
    copied: bool = False  # a twin copy exists: held data of the old content is read there

    @property
    def path(self) -> str:
        return self.id.path


@dataclass(frozen=True, slots=True)
class Twin:
    """The live original a copy follows, and its generation key when they were linked."""

    original: Tracker
    key: str


@dataclass(slots=True)
class Pending:
    """Lines read from one generation this round, and their bytes per piece (None when not all known)."""

    file: Tracker
    lines: list[str] = field(default_factory=list)
    blocks: list[tuple[int, bytes]] | None = field(default_factory=list)


@dataclass
class StepResult:
    records: list[LogRecord] = field(default_factory=list)
    sent: dict[str, Mark] = field(default_factory=dict)
    """Key -> end offset of its last record here (and the bytes before it, or b"")."""
    skipped: dict[str, Mark] = field(default_factory=dict)
    """Key -> offset reached without a record (an overlong line's tail, a copy catching up)."""
    opened: list[Opened] = field(default_factory=list)
    identity: dict[str, FileId] = field(default_factory=dict)
    """Key -> its file's identity, when it changed (renamed, longer fingerprint)."""
    closed: list[str] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    more: bool = False
    due: float | None = None  # monotonic time a timer (partial line, multiline, rotate_wait) expires
    files: int = 0


class Tailer:
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
        self.config = config
        self.patterns = patterns
        self.static_labels = static_labels
        self.stats = stats
        self.clock = clock
        self.redact = redact
        self.parser = Parser(config.format, config.detect_severity, stats)
        self.trackers: dict[str, Tracker] = {}
        self.by_inode: dict[tuple[int, int], Tracker] = {}
        self.by_path: dict[str, Tracker] = {}
        # files a round looks at without an event: more to read, rotated away, a held partial line or
        # record (its timer), symlinked (polled); an ordered set
        self.attention: dict[Tracker, None] = {}
        self.generations = Generations(
            Known(s.key, s.file_id, s.offset, s.tail_bytes, False, now + RETAIN_SECONDS) for s in saved
        )
        # files read from their beginning when found at start-up: those with a checkpoint entry, and
        # after a damaged checkpoint (``checkpoint.Loaded``) the files of bad entries, or all of them
        self.saved_paths = {s.path for s in saved} | set(resume.resume_paths if resume else ())
        self.resume_all = resume is not None and resume.resume_all
        self.ignored: set[tuple[int, int]] = set()  # compressed by their first bytes
        self.reported: dict[str, str] = {}  # path -> problem already reported
        self.access = access or Access(patterns, (), ())
        self.refused: dict[str, str] = {}  # path -> why it is not opened, counted and reported once
        self.scanned = False
        self.polling = False
        self._run_id = run_id
        self._serial = 0
        self._rr = 0
        ml = config.multiline
        self._multiline = (ml.start_pattern or ml.continuation_pattern) and ml

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
        if check_all:
            targets = list(self.trackers.values())
        else:  # only what changed or waits: a round costs the same with 20 files as with 2,000
            targets = [t for t in self.attention if t.more or t.orphan_since is not None or (poll_links and t.polled)]
            targets += [t for p in dirty if (t := self.by_path.get(p)) is not None and not t.more]
        if len(targets) > 1:  # take turns when the budget runs out
            self._rr = (self._rr + 1) % len(targets)
            targets = targets[self._rr :] + targets[: self._rr]
        budget = STEP_BYTES
        now_ns = self.clock()
        pending: dict[str, Pending] = {}
        looked = dict.fromkeys(targets)
        order = list(looked)
        for i, tracker in enumerate(order):
            if tracker.fd < 0:
                continue
            budget -= self._pump(tracker, now, res, pending, budget)
            if budget <= 0:
                res.more = True
                for rest in order[i + 1 :]:
                    rest.more = True  # its event is taken: read it next round, not at its next event
                break
        looked.update(self.attention)
        self._timers(now, res, pending, looked)
        self._build(res, pending, now_ns)
        for t in looked:
            if t.fd >= 0 and _waits(t):
                self.attention[t] = None
            else:
                self.attention.pop(t, None)
        res.more = res.more or any(t.more for t in self.attention)
        res.files = len(self.trackers)
        return res

    # ------------------------------------------------------------------ discovery

    def _scan(self, now: float, res: StepResult) -> None:
        self.access.refresh()
        found, problems, special = self.patterns.scan()
        for path, exc in problems:
            self._problem(path, "stat", exc, res)
        for path, st in special.items():
            try:
                self.access.check_type(path, st)
            except Refused as refused:
                self._refuse(path, refused, res)
        for path in [p for p in self.refused if p not in found and p not in special]:
            del self.refused[path]  # gone: if it comes back, it is looked at (and reported) anew
        seen: set[str] = set()
        for path, st in found.items():
            tracker = self.by_inode.get((st.st_dev, st.st_ino))
            if tracker is None:
                if (st.st_dev, st.st_ino) in self.ignored:
                    continue
                previous = self.by_path.get(path)
                tracker = self._open(path, now, res)
                if tracker is None:
                    continue
                if previous is not None and previous is not tracker and previous.key in self.trackers:
                    self._count_rotation(previous)
            seen.add(tracker.key)
            self.by_path[path] = tracker
            if tracker.orphan_since is not None:
                tracker.orphan_since = None
        for path in [p for p in self.by_path if p not in found]:
            del self.by_path[path]
        for path, tracker in self.by_path.items():
            if self.by_path.get(tracker.path) is not tracker:  # renamed: name it by where it is now
                tracker.id = tracker.id.moved(path)
                res.identity[tracker.key] = tracker.id
        for tracker in self.trackers.values():
            if tracker.key not in seen and tracker.orphan_since is None:
                tracker.orphan_since = now  # renamed or deleted: read to the end, then let go
                tracker.more = True
                self.attention[tracker] = None
        self.generations.expire(now)
        self.scanned = True

    def _paths_moved(self) -> bool:
        """Polling: has any tracked path come to name another file (or none)?"""
        for path, tracker in self.by_path.items():
            try:
                st = os.stat(path)
            except OSError:
                return True
            if (st.st_dev, st.st_ino) != tracker.id.inode:
                return True
        return False

    def _count_rotation(self, previous: Tracker) -> None:
        self.stats.rotations[rotation_kind(previous.fd)] += 1

    def _open(self, path: str, now: float, res: StepResult) -> Tracker | None:
        try:
            fd = self.access.open(path)
        except Refused as refused:
            self._refuse(path, refused, res)
            return None
        except OSError as exc:
            if exc.errno == errno.EMFILE and _raise_file_limit():
                return self._open(path, now, res)
            if exc.errno != errno.ENOENT:
                self._problem(path, "open", exc, res)
            return None
        try:
            st = os.fstat(fd)
            head = os.pread(fd, FP_BYTES, 0)
        except OSError as exc:
            os.close(fd)
            self._problem(path, "read", exc, res)
            return None
        ident = (st.st_dev, st.st_ino)
        existing = self.by_inode.get(ident)
        if existing is not None:  # it moved between the scan and the open
            os.close(fd)
            return existing
        if not self.patterns.include_compressed and is_compressed(path, head):
            self.ignored.add(ident)
            os.close(fd)
            return None
        if self.reported.pop(path, None):
            res.notes.append(f"{path} is readable again")
        self.refused.pop(path, None)
        offset, pred, twin = self._start(path, st, fd, head, res)
        self._serial += 1
        key = f"{self._run_id}.{self._serial}"
        tracker = self._new_tracker(key, path, FileId.of(path, st, head), fd, head, offset, now)
        tracker.twin = twin
        self.trackers[key] = tracker
        self.by_inode[ident] = tracker
        self.attention[tracker] = None
        res.opened.append(Opened(key, tracker.id, offset, pred))
        return tracker

    def _new_tracker(self, key: str, name: str, file: FileId, fd: int, head: bytes, offset: int, now: float) -> Tracker:
        config = self.config
        encoding = resolve_encoding(config.encoding, head)
        ml = self._multiline
        multiline = None
        if ml:
            multiline = Multiline(ml.start_pattern, ml.continuation_pattern, ml.max_lines, ml.max_bytes)
            multiline.reset(offset)
        return Tracker(
            key=key,
            name=name,
            id=file,
            fd=fd,
            pos=offset,
            framer=Framer(encoding, config.max_line_bytes, self.stats, offset, ends=multiline is not None),
            multiline=multiline,
            labels=merge_labels(self.static_labels, (("filename", name),)),
            polled=os.path.islink(file.path),
            last_data=now,
        )

    def _start(
        self, path: str, st: os.stat_result, fd: int, head: bytes, res: StepResult
    ) -> tuple[int, str, Twin | None]:
        """Where to start reading a newly opened file: (offset, predecessor key, live original)."""
        inode = (st.st_dev, st.st_ino)
        first = Head(head)
        # 1. this very file, saved by an earlier run or closed earlier in this one
        match = self.generations.same_file(inode, first)
        if match is False:
            return 0, "", None  # the inode was reused, or the file rewritten: new content
        if match is None and len(head) >= MIN_FP_MATCH:
            # 2. a copy of a file being read right now (copytruncate copied it; truncation not seen yet)
            for tracker in self.trackers.values():
                if tracker.id.fp_len >= MIN_FP_MATCH and tracker.twin is None and first.starts_like(tracker.id):
                    offset, tail = tracker_resume(tracker)
                    if holds(fd, st.st_size, offset, tail):
                        self.stats.rotations["copytruncate"] += 1
                        tracker.copied = True
                        return offset, tracker.key, Twin(tracker, tracker.key)
            # 3. a copy of a generation no longer read (truncated, or saved by an earlier run)
            match = self.generations.copy_of(inode, first, fd, st.st_size)
            if match is not None and match.known.truncated:
                self.stats.rotations["copytruncate"] += 1
        if match:
            res.claimed.append(match.known.key)
            return match.offset, match.known.key, None
        # 4. new to us: read from the start, except for files already there when we first looked
        if path in self.saved_paths or self.scanned or self.resume_all or self.config.start_at == "beginning":
            return 0, "", None
        return _line_start_before(fd, st.st_size), "", None

    # ------------------------------------------------------------------ reading

    def _pump(self, t: Tracker, now: float, res: StepResult, pending: dict[str, Pending], budget: int) -> int:
        """Read what is new in one file; returns the bytes read."""
        try:
            st = os.fstat(t.fd)
        except OSError as exc:
            self._problem(t.path, "read", exc, res)
            return 0
        if t.twin is not None and self._follow_twin(t, res, st.st_size):
            return 0  # a copy of a live file: its original reads these bytes
        stamp = (st.st_size, st.st_mtime_ns)
        if stamp != t.last_stat:
            if st.st_size < t.pos or (t.last_stat[0] >= 0 and not same_content(t.fd, t.id)):
                self._truncated(t, now, res, pending)
            t.last_stat = stamp
        read = 0
        while read < budget:
            want = min(CHUNK, budget - read)
            try:
                data = os.pread(t.fd, want, t.pos)
            except OSError as exc:
                self._problem(t.path, "read", exc, res)
                break
            if not data:
                break
            t.pos += len(data)
            read += len(data)
            self._lines(t, t.framer.feed(data), res, pending)
            if len(data) < want:
                break
        t.more = read >= budget
        if read:
            t.last_data = now
            self.stats.bytes_read += read
            # in steps (64, 128 ... bytes), not at every read: a file growing a line at a time would
            # otherwise cost a read of its head, a hash and a checkpoint write per line
            if t.id.fp_len < FP_BYTES and t.pos >= min(FP_BYTES, max(2 * t.id.fp_len, MIN_FP_MATCH)):
                self._grow_fingerprint(t, res)
        return read

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
        got = pending.get(t.key)
        if got is None:
            got = pending[t.key] = Pending(t)
        if got.blocks is not None:
            if block is None:
                got.blocks = None
            else:
                got.blocks.append((len(got.lines), block))
        got.lines.extend(lines)
        res.sent[t.key] = Mark(end, tail)

    def _grow_fingerprint(self, t: Tracker, res: StepResult) -> None:
        try:
            head = os.pread(t.fd, FP_BYTES, 0)
        except OSError:
            return
        grown = t.id.grown(head)
        if grown is not None:
            t.id = grown
            res.identity[t.key] = grown

    def _follow_twin(self, t: Tracker, res: StepResult, size: int) -> bool:
        """While its original is read, a copy only keeps up with it; True while that lasts."""
        twin = t.twin
        assert twin is not None
        original = twin.original
        if original.key != twin.key or original.fd < 0:
            t.twin = None  # the original was truncated or closed: the copy reads on alone
            return False
        ahead, tail = tracker_resume(original)
        ahead = min(ahead, size)  # the original grew past the copy: all of the copy is covered
        if ahead > t.pos and not t.framer.pending and not (t.multiline and t.multiline.held):
            t.pos = ahead
            t.framer = Framer(t.framer.codec, self.config.max_line_bytes, self.stats, ahead, ends=t.framer.ends)
            t.framer.tail = tail
            if t.multiline is not None:
                t.multiline.reset(ahead)
            res.skipped[t.key] = Mark(ahead, tail)
        return True

    def _truncated(self, t: Tracker, now: float, res: StepResult, pending: dict[str, Pending]) -> None:
        """The file was truncated (copytruncate) or rewritten: a new generation from offset 0."""
        self.stats.truncations += 1
        if not t.copied:
            self._flush(t, res, pending)  # the held tail belongs to the old content
        for other in self.trackers.values():
            if other.twin is not None and other.twin.original is t:
                with contextlib.suppress(OSError):  # catch the copy up to all the original read
                    self._follow_twin(other, res, os.fstat(other.fd).st_size)
        offset, tail = tracker_resume(t)
        old_key = t.key
        self.generations.retire(old_key, t.id, offset, tail, True, now)
        res.closed.append(old_key)
        del self.trackers[old_key]
        try:
            head = os.pread(t.fd, FP_BYTES, 0)
            st = os.fstat(t.fd)
        except OSError:
            head, st = b"", None
        self._serial += 1
        file = FileId.of(t.path, st, head) if st is not None else FileId.of(t.path, None, b"")
        fresh = self._new_tracker(f"{self._run_id}.{self._serial}", t.name, file, t.fd, head, 0, now)
        for name in ("key", "id", "pos", "framer", "multiline", "twin", "copied"):
            setattr(t, name, getattr(fresh, name))
        self.trackers[t.key] = t
        res.opened.append(Opened(t.key, t.id, 0))
        for other in self.trackers.values():
            if other.twin is not None and other.twin.original is t:
                other.more = True  # a copy of the old content: it reads on alone from now on
                self.attention[other] = None

    # ------------------------------------------------------------------ timers

    def _timers(self, now: float, res: StepResult, pending: dict[str, Pending], looked: dict[Tracker, None]) -> None:
        config = self.config
        partial_after = config.partial_line_timeout
        flush_after = config.multiline.flush_timeout
        due: float | None = None
        for t in list(looked):
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

    def close_all(self) -> None:
        for t in self.trackers.values():
            try:
                os.close(t.fd)
            except OSError:
                pass
        self.trackers.clear()
        self.attention.clear()
        self.by_inode.clear()
        self.by_path.clear()

    # ------------------------------------------------------------------ records

    def _build(self, res: StepResult, pending: dict[str, Pending], now_ns: int) -> None:
        """The records of every file read this round: one redaction call and one parse pass for all
        of them (at low rates a round holds a line or two of each of many files)."""
        if not pending:
            return
        framed = [got for got in pending.values() if got.blocks is not None]
        if len(framed) < len(pending):  # lines whose bytes are not all known (multiline, flushed) apart
            self._build_batch(res, [got for got in pending.values() if got.blocks is None], now_ns)
            if not framed:
                return
        self._build_batch(res, framed, now_ns)

    def _build_batch(self, res: StepResult, batch: list[Pending], now_ns: int) -> None:
        lines: list[str] = []
        labels: list[Labels] = []
        times: list[int] = []
        blocks: list[bytes] | None = [] if batch[0].blocks is not None else None
        for got in batch:
            t, count = got.file, len(got.lines)
            base = max(now_ns, t.last_ns + 1)
            t.last_ns = base + count - 1
            lines += got.lines
            labels += [t.labels] * count
            times += range(base, base + count)
            if blocks is not None and got.blocks is not None:
                blocks += [block for _index, block in got.blocks]
        changed = None
        if self.redact is not None:
            redacted = self.redact([got.lines for got in batch], [got.file.key for got in batch])
            if blocks is not None:
                # the lines redaction rewrote (new objects) no longer match the bytes read
                changed = list(itertools.compress(range(len(lines)), map(operator.is_not, redacted, lines)))
            lines = redacted
        # each piece holds whole lines, one newline each, and together they hold every line of the batch:
        # level words are searched in one piece
        pieces = None if blocks is None else [(0, b"".join(blocks))]
        res.records.extend(self.parser.batch(lines, labels, times, pieces, changed))
        self.stats.lines_read += len(lines)

    # ------------------------------------------------------------------ helpers

    def _refuse(self, path: str, refused: Refused, res: StepResult) -> None:
        if self.refused.get(path) != refused.reason:
            self.refused[path] = refused.reason
            self.stats.files_refused[refused.reason] += 1
            res.errors.append(str(refused))

    def _problem(self, path: str, op: str, exc: OSError, res: StepResult) -> None:
        self.stats.file_errors[op] += 1
        text = f"cannot {op} {path}: {exc.strerror or exc}"
        if self.reported.get(path) != text:
            self.reported[path] = text
            res.errors.append(text + ("; retried at every scan" if op != "read" else "; retried"))


def _waits(t: Tracker) -> bool:
    """Does the file need a look next round even without an event?"""
    return (
        t.more
        or t.orphan_since is not None
        or t.polled
        or bool(t.framer.pending)
        or (t.multiline is not None and t.multiline.held)
        or t.twin is not None
    )


def tracker_resume(t: Tracker) -> Mark:
    """Offset just past the last record produced, and the bytes before it (empty when unknown)."""
    if t.multiline is not None and t.multiline.held:
        return Mark(t.multiline.start, b"")
    return Mark(t.framer.consumed, t.framer.tail)


def _line_start_before(fd: int, size: int) -> int:
    """``start_at = "end"``: the end of the file, or the start of its incomplete last line."""
    if size == 0:
        return 0
    back = min(size, 64 * 1024)
    try:
        tail = os.pread(fd, back, size - back)
    except OSError:
        return size
    nl = tail.rfind(b"\n")
    return size - back + nl + 1 if nl >= 0 else size


def _raise_file_limit() -> bool:
    """Many files are open: raise the soft open-file limit to the hard one, once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft * 4, 65536)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                return True
            except (ValueError, OSError):
                return False
    return False
