"""The files being tailed: finding them, opening them, where each starts, and letting them go.

:class:`OpenFiles` holds the open files (:class:`~collectors.logs.tracker.Tracker`)
by generation key, inode and path. Its glob scan opens the files that appeared
(refusing what :mod:`~collectors.logs.access` forbids), notes the ones renamed
or deleted (read to their end, let go after ``rotate_wait``), and decides where
a newly found file starts: its checkpoint, the copy of a file being read, a
retired generation (``identity.py``), its beginning or its end. Reading them in
rounds is :class:`~collectors.logs.tailer.Tailer`'s, which builds on this class.
"""

from __future__ import annotations

import errno
import os
import resource
from dataclasses import dataclass, field
from typing import Any

from agent.model import Labels, LogRecord, merge_labels
from collectors.logs.access import Access, Refused
from collectors.logs.checkpoint import Loaded, Mark, Saved
from collectors.logs.copies import find_original
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
    rotation_kind,
)
from collectors.logs.multiline import Multiline
from collectors.logs.stats import LogStats
from collectors.logs.tracker import Tracker, Twin, tracker_resume


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


class OpenFiles:
    """The instance's open files, and the scan that finds, opens and lets go of them."""

    def __init__(
        self,
        config: Any,
        patterns: Patterns,
        static_labels: Labels,
        stats: LogStats,
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
        ml = config.multiline
        self._multiline = (ml.start_pattern or ml.continuation_pattern) and ml

    def _scan(self, now: float, res: StepResult) -> None:
        self.access.refresh()
        found, problems, special = self.patterns.scan(reuse=not self.polling)
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
            head=head[: file.fp_len],
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
            twin = find_original(self.trackers.values(), first, fd, st.st_size)
            if twin is not None:
                self.stats.rotations["copytruncate"] += 1
                twin.original.copied = True
                return tracker_resume(twin.original).offset, twin.key, twin
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
