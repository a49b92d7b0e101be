"""Checkpoints: how far each file has been durably delivered, kept across restarts.

The :class:`Ledger` lives on the event loop. For every file (and every
generation of a file: a truncated file starts a new one) it knows the offset
handed to the pipeline (``emitted``) and the offset every log output has
durably taken (``committed``): only the pipeline's acknowledgement moves
``committed``, so a restart resumes at a point nothing before which can be
lost, and at most the records between ``committed`` and the crash are sent
twice.

A file that continues another one (a rotated copy found by its fingerprint)
names it as ``pred``: while the predecessor still has records in flight, the
successor's saved offset is held at the predecessor's, since both offsets
count the same bytes.

The :class:`Store` keeps the ledger in the instance's ``state_dir``: a full
snapshot, ``checkpoints.json``, written atomically (temporary file, fsync,
rename, fsync of the directory), and between two snapshots a journal of the
entries that changed, ``checkpoints.journal`` (``checkpoint_journal.py``), one
appended record (fdatasync) a write. A snapshot is written again once the
journal outgrows it (:data:`JOURNAL_FACTOR`), and at shutdown. A checkpoint that
cannot be used costs duplicates, never loss:

* a file that cannot be read or parsed at all is renamed aside and reported,
  and every file the globs find at start-up is read from its beginning,
  whatever ``start_at`` says (the lines written while the agent was down are
  in there);
* an entry that cannot be used (wrong types, negative offsets) is dropped and
  its file, when the entry still names one, is read from its beginning; when
  it names none, every file found at start-up is.

Either case is counted once (``hostwatch_log_checkpoint_corrupt_total``). A torn
record at the journal's end (a crash or a full disk in the middle of an append)
is not read: its files resume from what the records before it say, acknowledged
earlier (counted in ``hostwatch_log_checkpoint_journal_torn_total``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgspec

from agent.statefile import set_aside, write_atomically
from collectors.logs import checkpoint_journal
from collectors.logs.checkpoint_journal import JournalFile
from collectors.logs.identity import MIN_FP_MATCH, RETAIN_SECONDS, FileId, Opened

FORMAT_VERSION = 1
MAX_CLOSED = 1000
JOURNAL_FACTOR = 8
"""A snapshot is written again once the journal holds this many times its bytes (and at least
:data:`JOURNAL_MIN_BYTES`): at 2,000 files each written a line every two seconds, about every half
minute; reading that much at start-up takes milliseconds."""
JOURNAL_MIN_BYTES = 1 << 20


class Mark(NamedTuple):
    """A point in a file: an offset, and the bytes just before it (b"" when unknown)."""

    offset: int
    tail: bytes


NO_MARK = Mark(-1, b"")


class Saved(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One file in the checkpoint file."""

    key: str
    path: str
    dev: int
    ino: int
    fp_len: int
    fp: str
    offset: int
    tail: str = ""
    closed: bool = False
    closed_at: float = 0.0

    @property
    def file_id(self) -> FileId:
        return FileId(self.path, self.dev, self.ino, self.fp_len, self.fp)

    @property
    def tail_bytes(self) -> bytes:
        return _unhex(self.tail)


class _File(msgspec.Struct):
    version: int
    files: list[Saved]
    journal: str = ""
    """The id of the journal that continues this snapshot ("" for none)."""


class _Envelope(msgspec.Struct):
    """The file with its entries left undecoded, so one bad entry spoils only itself."""

    version: int
    files: list[msgspec.Raw]
    journal: str = ""


class Changes(msgspec.Struct, frozen=True, omit_defaults=True):
    """One journal record: what changed since the write before."""

    moved: list[tuple[str, int, bytes]] = []
    """(key, offset, tail) of entries whose offset moved, all else as last written: most, at low rates."""
    files: list[Saved] = []
    """Entries new or changed otherwise (renamed, a longer fingerprint, closed), whole."""
    gone: list[str] = []
    """Keys of entries forgotten."""


_encode = msgspec.json.Encoder().encode
_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_entry = msgspec.json.Decoder(Saved).decode
_decode_changes = msgspec.json.Decoder(Changes).decode
_decode_any = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Loaded:
    """What :meth:`Store.load` found."""

    files: list[Saved]
    problem: str = ""
    """To report once ("" when none)."""
    resume_all: bool = False
    """The checkpoint was lost: every file found at start-up is read from its beginning."""
    resume_paths: frozenset[str] = frozenset()
    """Files whose entry was damaged: read from their beginning."""
    torn: int = 0
    """Bytes of a torn journal tail left unread (0: none): its files resume from earlier entries."""

    @property
    def corrupt(self) -> bool:
        return self.resume_all or bool(self.resume_paths)


@dataclass(slots=True)
class Entry:
    key: str
    id: FileId
    committed: int
    emitted: int
    tail: bytes = b""  # the bytes before ``committed``, for matching a copy after a restart
    inflight: int = 0
    deferred: Mark = NO_MARK
    pred: str = ""
    closed: bool = False
    closed_at: float = 0.0
    claimed: bool = False


class Ledger:
    """Offsets per file generation; loop thread only.

    It keeps what changed since the last :meth:`changes` or :meth:`snapshot`, so a write after a round
    that read from 20 of 2,000 files appends 20 entries (:class:`Changes`), not 2,000."""

    def __init__(self, saved: list[Saved], now: float) -> None:
        self.entries: dict[str, Entry] = {}
        for s in saved:
            self.entries[s.key] = Entry(
                s.key, s.file_id, s.offset, s.offset, s.tail_bytes, closed=True, closed_at=s.closed_at or now
            )
        self.dirty = False
        self._stale: set[str] = set(self.entries)  # keys whose saved form may have changed
        self._renewed: dict[str, None] = dict.fromkeys(self.entries)  # of them, more than their offset (ordered)
        self._gone: list[str] = []  # keys forgotten since
        self._closed: set[str] = set(self.entries)
        self._successors: dict[str, set[str]] = {}  # pred key -> keys held at its offset

    def opened(self, opened: Opened) -> None:
        self.entries[opened.key] = Entry(opened.key, opened.id, opened.offset, opened.offset, pred=opened.pred)
        if opened.pred:
            self._successors.setdefault(opened.pred, set()).add(opened.key)
        self._renew(opened.key)

    def closed(self, key: str, now: float) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            entry.closed, entry.closed_at = True, now
            self._closed.add(key)
            self._renew(key)

    def claimed(self, key: str) -> None:
        """A saved or closed entry now continues as another file's generation."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.claimed = True
            self._stale.add(key)
            self.dirty = True

    def identity(self, key: str, file: FileId) -> None:
        entry = self.entries.get(key)
        if entry is not None and entry.id != file:
            entry.id = file
            self._renew(key)

    def _renew(self, key: str) -> None:
        self._stale.add(key)
        self._renewed[key] = None
        self.dirty = True

    def sent(self, key: str, end: int) -> None:
        """Records up to ``end`` were handed to the pipeline; an acknowledgement follows."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.inflight += 1
            entry.emitted = max(entry.emitted, end)
            if key in self._successors:
                self._stale.add(key)  # a copy continuing it is held at its offset now

    def sent_many(self, marks: dict[str, Mark]) -> None:
        """:meth:`sent` for each file of a round, up to its mark's offset: one call, as a round at low
        rates hands on a line or two of each of hundreds of files."""
        entries, successors, stale = self.entries, self._successors, self._stale
        for key, mark in marks.items():
            entry = entries.get(key)
            if entry is not None:
                entry.inflight += 1
                if mark[0] > entry.emitted:
                    entry.emitted = mark[0]
                if successors and key in successors:
                    stale.add(key)

    def skipped(self, key: str, mark: Mark) -> None:
        """Bytes up to ``mark`` produced no record: done once the records before them are."""
        entry = self.entries.get(key)
        if entry is None:
            return
        entry.emitted = max(entry.emitted, mark[0])
        if entry.inflight:
            if mark[0] > entry.deferred[0]:
                entry.deferred = mark
        elif mark[0] > entry.committed:
            entry.committed, entry.tail = mark
            self._stale.add(key)
            self.dirty = True

    def acked(self, marks: dict[str, Mark]) -> None:
        """Every log output durably took the records of one ``emit.logs`` call."""
        for key, (end, tail) in marks.items():
            entry = self.entries.get(key)
            if entry is None:
                continue
            entry.inflight -= 1
            if end > entry.committed:
                entry.committed, entry.tail = end, tail
            if entry.inflight == 0 and entry.deferred[0] > entry.committed:
                entry.committed, entry.tail = entry.deferred
                entry.deferred = NO_MARK
        self._stale.update(marks)
        self.dirty = True

    def offset(self, entry: Entry) -> int:
        """The offset to save: held back while a predecessor still has records in flight."""
        pred = self.entries.get(entry.pred) if entry.pred else None
        if pred is not None and pred.committed < pred.emitted:
            return min(entry.committed, pred.committed)
        return entry.committed

    def snapshot(self, now: float) -> list[Saved]:
        """What to write, every entry; forgets closed entries nobody needs any more."""
        self._forget(now)
        self.dirty = False
        return [self._saved(e) for e in self.entries.values()]

    def restart(self, now: float) -> list[Saved]:
        """:meth:`snapshot`, for a write that starts a journal: the next :meth:`changes` are those made
        after it."""
        saved = self.snapshot(now)
        self._stale, self._renewed, self._gone = set(), {}, []
        return saved

    def changes(self, now: float) -> Changes:
        """What changed since the last call or :meth:`snapshot` (for :meth:`Store.append`); forgets
        closed entries nobody needs any more."""
        self._forget(now)
        self.dirty = False
        stale, renewed, gone = self._stale, self._renewed, self._gone
        self._stale, self._renewed, self._gone = set(), {}, []
        successors = self._successors
        for key in [k for k in stale if k in successors]:
            stale |= successors[key]  # a copy held at its offset moves with it
        entries = self.entries
        moved = []
        for key in stale:
            e = entries.get(key)
            if e is None or key in renewed:
                continue
            if e.pred:
                offset = self.offset(e)
                moved.append((key, offset, e.tail if offset == e.committed else b""))
            else:
                moved.append((key, e.committed, e.tail))
        files = [self._saved(entries[key]) for key in renewed if key in entries]
        return Changes(moved, files, gone)

    def _saved(self, e: Entry) -> Saved:
        offset = self.offset(e)
        tail = e.tail.hex() if offset == e.committed else ""
        f = e.id
        return Saved(e.key, f.path, f.dev, f.ino, f.fp_len, f.fp, offset, tail, e.closed, e.closed_at)

    def _forget(self, now: float) -> None:
        """Drop closed entries nobody needs any more: claimed, unmatchable, too old, or too many."""
        for key in list(self._closed):
            entry = self.entries[key]
            if entry.inflight == 0 and (
                entry.claimed or entry.id.fp_len < MIN_FP_MATCH or now - entry.closed_at > RETAIN_SECONDS
            ):
                self._drop(key)
        if len(self._closed) > MAX_CLOSED:
            oldest = sorted((self.entries[k] for k in self._closed), key=lambda e: e.closed_at)
            for entry in oldest[: len(oldest) - MAX_CLOSED]:
                if entry.inflight == 0:
                    self._drop(entry.key)

    def _drop(self, key: str) -> None:
        entry = self.entries.pop(key)
        self._closed.discard(key)
        self._stale.discard(key)
        self._renewed.pop(key, None)
        self._gone.append(key)
        self._stale |= self._successors.pop(key, set())  # no longer held at its offset
        if entry.pred in self._successors:
            self._successors[entry.pred].discard(key)


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


class Store:
    """``checkpoints.json`` and its journal in the instance's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "checkpoints.json"
        self.journal_path = state_dir / "checkpoints.journal"
        self._journal = JournalFile(self.journal_path)
        self._lock = threading.Lock()  # one write at a time: they share the temporary file and the journal
        self._written = 0  # when the snapshot in the file was taken (see save)
        self._appending = False  # the journal continues the snapshot written last
        self._limit = 0  # the journal's bytes that make the next write a snapshot

    @property
    def appendable(self) -> bool:
        """Can the next write be :meth:`append` (else :meth:`save`, with ``journal=True``): a journal
        continues the snapshot written last, no append has failed since, and it is not due to be
        folded into a snapshot yet."""
        return self._appending and self._journal.size < self._limit

    def load(self) -> Loaded:
        """The saved entries (the snapshot with its journal) and what to resume from the start; never
        raises for a bad file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Loaded([])
        except OSError as exc:
            return Loaded(
                [],
                f"cannot read checkpoint file {self.path}: {exc.strerror or exc}; "
                "files found at start-up are read from their beginning",
                resume_all=True,
            )
        try:
            envelope = _decode_envelope(data)
            if envelope.version != FORMAT_VERSION:
                raise ValueError(f"unknown format version {envelope.version}")
        except (msgspec.DecodeError, ValueError) as exc:
            where = set_aside(self.path)
            return Loaded(
                [],
                f"checkpoint file {self.path} is corrupt ({exc}); {where}; "
                "files found at start-up are read from their beginning",
                resume_all=True,
            )
        files: dict[str, Saved] = {}
        damaged: set[str] = set()
        nameless = 0
        for raw in envelope.files:
            entry = _entry(raw)
            if entry is not None:
                files[entry.key] = entry
                continue
            path = _path_of(raw)
            if path:
                damaged.add(path)
            else:
                nameless += 1
        torn = self._replay(envelope.journal, files) if envelope.journal else 0
        what = ""
        if damaged or nameless:
            what = f"{len(damaged) + nameless} damaged entries in checkpoint file {self.path} dropped; "
            if nameless:
                what += "files found at start-up are read from their beginning"
            else:
                what += "read from their beginning: " + ", ".join(sorted(damaged)[:5])
                what += f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        return Loaded(list(files.values()), what, resume_all=nameless > 0, resume_paths=frozenset(damaged), torn=torn)

    def _replay(self, journal_id: str, files: dict[str, Saved]) -> int:
        """Apply the journal continuing the snapshot to its entries; returns the bytes of a torn tail
        left unread (a record that does not decode counts as torn, and so does what follows it)."""
        path = self.journal_path
        try:
            bodies, torn = checkpoint_journal.read(path, journal_id)
        except OSError:
            return max(1, _size(path))  # the records after the snapshot are lost: their lines sent again
        for i, body in enumerate(bodies):
            try:
                changes = _decode_changes(body)
            except msgspec.DecodeError:
                changes = None
            if changes is None or not all(map(_valid, changes.files)) or any(m[1] < 0 for m in changes.moved):
                return sum(len(b) + 10 for b in bodies[i:]) + torn  # 10: a line's checksum, space, newline
            for key in changes.gone:
                files.pop(key, None)
            for s in changes.files:
                files[s.key] = s
            for key, offset, tail in changes.moved:
                s = files.get(key)
                if s is not None:
                    files[key] = msgspec.structs.replace(s, offset=offset, tail=tail.hex())
        return torn

    def save(self, entries: Sequence[Saved], taken: int = 0, journal: bool = False) -> None:
        """Atomically replace the checkpoint file, and with ``journal`` start a journal continuing it
        (:meth:`append`). Raises OSError.

        ``taken``: the order the snapshot was taken in (0: none, always written). At shutdown three
        writers meet, each on a thread of its own: the periodic write (its task cancelled, its thread
        still writing), the shutdown's, and the late acknowledgements'. Writes go one at a time, and a
        snapshot older than the one already written is skipped, so the file never ends behind what
        was acknowledged (which sent those lines again after a clean restart)."""
        with self._lock:
            if taken and taken <= self._written:
                return
            self._appending = False
            journal_id = ""
            if journal:
                try:
                    self._journal.open()  # before the snapshot: its directory fsync makes the name durable
                    journal_id = os.urandom(8).hex()
                except OSError:
                    pass  # a snapshot without a journal: the next write is a snapshot again
            else:
                self._journal.close()
            data = _encode(_File(FORMAT_VERSION, entries, journal_id))
            write_atomically(self.path, data)
            self._written = max(self._written, taken)
            if journal_id:
                try:
                    self._journal.restart(journal_id)
                except OSError:
                    self._journal.close()
                    return
                self._limit = max(JOURNAL_MIN_BYTES, JOURNAL_FACTOR * len(data))
                self._appending = True

    def append(self, changes: Changes, taken: int = 0) -> None:
        """Append what changed since the last write to the journal (what :attr:`appendable` allows).
        Raises OSError, and the next write must be a snapshot then. ``taken``: as for :meth:`save`; a
        journal a newer snapshot replaced meanwhile is not appended to (that snapshot holds these
        changes)."""
        record = checkpoint_journal.record(_encode(changes))
        with self._lock:
            if (taken and taken <= self._written) or not self._appending:
                return
            try:
                self._journal.append(record)
            except OSError:
                self._appending = False
                raise
            self._written = max(self._written, taken)

    def close(self) -> None:
        """Close the journal (a snapshot written without one needs none)."""
        with self._lock:
            self._appending = False
            self._journal.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _entry(raw: msgspec.Raw) -> Saved | None:
    """One entry, or None when it cannot be trusted."""
    try:
        entry = _decode_entry(raw)
    except msgspec.DecodeError:
        return None
    return entry if _valid(entry) else None


def _valid(entry: Saved) -> bool:
    if min(entry.offset, entry.fp_len, entry.dev, entry.ino) < 0 or not entry.key:
        return False
    try:
        bytes.fromhex(entry.tail)
    except ValueError:
        return False
    return True


def _path_of(raw: msgspec.Raw) -> str:
    """The path a damaged entry names, if it still names one."""
    try:
        value = _decode_any(raw)
    except msgspec.DecodeError:
        return ""
    path = value.get("path") if isinstance(value, dict) else None
    return path if isinstance(path, str) and path.startswith("/") else ""
