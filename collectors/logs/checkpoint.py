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

The :class:`Store` writes the ledger to ``checkpoints.json`` in the instance's
``state_dir`` atomically (temporary file, fsync, rename, fsync of the
directory). A checkpoint that cannot be used costs duplicates, never loss:

* a file that cannot be read or parsed at all is renamed aside and reported,
  and every file the globs find at start-up is read from its beginning,
  whatever ``start_at`` says (the lines written while the agent was down are
  in there);
* an entry that cannot be used (wrong types, negative offsets) is dropped and
  its file, when the entry still names one, is read from its beginning; when
  it names none, every file found at start-up is.

Either case is counted once (``hostwatch_log_checkpoint_corrupt_total``).
"""

from __future__ import annotations

import threading
from binascii import hexlify
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgspec

from agent.statefile import set_aside, write_atomically
from collectors.logs.identity import MIN_FP_MATCH, RETAIN_SECONDS, FileId, Opened

FORMAT_VERSION = 1
MAX_CLOSED = 1000


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


class _Envelope(msgspec.Struct):
    """The file with its entries left undecoded, so one bad entry spoils only itself."""

    version: int
    files: list[msgspec.Raw]


_encode = msgspec.json.Encoder().encode
_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_entry = msgspec.json.Decoder(Saved).decode
_decode_any = msgspec.json.Decoder().decode
# what an entry's encoding ends with after its head (``"offset":``) at the defaults
_DEFAULT_REST = b'0,"tail":"","closed":false,"closed_at":0.0}'
_REST = b'%s%d,"tail":"%s","closed":%s,"closed_at":%s}'
_OPEN_REST = b'%s%d,"tail":"%s","closed":false,"closed_at":0.0}'  # _REST of an open entry saved at its own offset
_UNENCODED = msgspec.Raw(b"")  # a new entry's place, encoded before it is written (it is stale)


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
    head: bytes = b""  # its encoded form up to the offset, made again only when its identity changes


class Ledger:
    """Offsets per file generation; loop thread only.

    Each entry's encoded form is cached and encoded again only when the entry (or the predecessor its
    saved offset is held at) changed, so writing the checkpoint of 2,000 files after a round that read
    from 20 of them encodes 20 entries, not 2,000."""

    def __init__(self, saved: list[Saved], now: float) -> None:
        self.entries: dict[str, Entry] = {}
        for s in saved:
            self.entries[s.key] = Entry(
                s.key, s.file_id, s.offset, s.offset, s.tail_bytes, closed=True, closed_at=s.closed_at or now
            )
        self.dirty = False
        # key -> its entry encoded, in the order of ``entries`` (a key enters and leaves both together),
        # so the whole list is a copy of its values
        self._encoded: dict[str, msgspec.Raw] = dict.fromkeys(self.entries, _UNENCODED)
        self._stale: set[str] = set(self.entries)  # keys whose encoded form may be out of date
        self._closed: set[str] = set(self.entries)
        self._successors: dict[str, set[str]] = {}  # pred key -> keys held at its offset

    def opened(self, opened: Opened) -> None:
        self.entries[opened.key] = Entry(opened.key, opened.id, opened.offset, opened.offset, pred=opened.pred)
        self._encoded.setdefault(opened.key, _UNENCODED)
        if opened.pred:
            self._successors.setdefault(opened.pred, set()).add(opened.key)
        self._stale.add(opened.key)
        self.dirty = True

    def closed(self, key: str, now: float) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            entry.closed, entry.closed_at = True, now
            self._closed.add(key)
            self._stale.add(key)
            self.dirty = True

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
            entry.head = b""
            self._stale.add(key)
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
        """What to write; forgets closed entries nobody needs any more."""
        self._forget(now)
        self.dirty = False
        return [self._saved(e) for e in self.entries.values()]

    def encoded(self, now: float) -> list[msgspec.Raw]:
        """:meth:`snapshot`, each entry already encoded (for :meth:`Store.save`): only the entries that
        changed since the last call are encoded again."""
        self._forget(now)
        self.dirty = False
        stale, self._stale = self._stale, set()
        for key in [k for k in stale if k in self._successors]:
            stale |= self._successors[key]
        cache, entries, rest, raw = self._encoded, self.entries, _OPEN_REST, msgspec.Raw
        for key in stale:
            e = entries.get(key)
            if e is None:
                continue
            if e.head and not e.pred and not e.closed:  # most: an open file that continues none
                cache[key] = raw(rest % (e.head, e.committed, hexlify(e.tail)))
            else:
                cache[key] = self._encode(e)
        return list(cache.values())

    def _saved(self, e: Entry) -> Saved:
        offset = self.offset(e)
        tail = e.tail.hex() if offset == e.committed else ""
        f = e.id
        return Saved(e.key, f.path, f.dev, f.ino, f.fp_len, f.fp, offset, tail, e.closed, e.closed_at)

    def _encode(self, e: Entry) -> msgspec.Raw:
        """``_encode(self._saved(e))``, made of the entry's encoded head (what changes only with its
        identity) and its offset and after: about a third of the cost of encoding a :class:`Saved` (one
        entry per file read at low rates, where each read brings a line)."""
        if not e.head:
            whole = _encode(Saved(e.key, e.id.path, e.id.dev, e.id.ino, e.id.fp_len, e.id.fp, 0))
            e.head = whole[: -len(_DEFAULT_REST)]
        offset = self.offset(e) if e.pred else e.committed
        tail = hexlify(e.tail) if offset == e.committed else b""
        at = _encode(e.closed_at) if e.closed_at else b"0.0"
        return msgspec.Raw(_REST % (e.head, offset, tail, b"true" if e.closed else b"false", at))

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
        self._encoded.pop(key, None)
        self._stale.discard(key)
        self._stale |= self._successors.pop(key, set())  # no longer held at its offset
        if entry.pred in self._successors:
            self._successors[entry.pred].discard(key)


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


class Store:
    """``checkpoints.json`` in the instance's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "checkpoints.json"
        self._lock = threading.Lock()  # one write at a time: they share the temporary file
        self._written = 0  # when the snapshot in the file was taken (see save)

    def load(self) -> Loaded:
        """The saved entries and what to resume from the start; never raises for a bad file."""
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
        files: list[Saved] = []
        damaged: set[str] = set()
        nameless = 0
        for raw in envelope.files:
            entry = _entry(raw)
            if entry is not None:
                files.append(entry)
                continue
            path = _path_of(raw)
            if path:
                damaged.add(path)
            else:
                nameless += 1
        if not damaged and not nameless:
            return Loaded(files)
        what = f"{len(damaged) + nameless} damaged entries in checkpoint file {self.path} dropped; "
        if nameless:
            what += "files found at start-up are read from their beginning"
        else:
            what += "read from their beginning: " + ", ".join(sorted(damaged)[:5])
            what += f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        return Loaded(files, what, resume_all=nameless > 0, resume_paths=frozenset(damaged))

    def save(self, entries: Sequence[Saved | msgspec.Raw], taken: int = 0) -> None:
        """Atomically replace the checkpoint file (entries as :class:`Saved`, or already encoded by
        :meth:`Ledger.encoded`). Raises OSError.

        ``taken``: the order the snapshot was taken in (0: none, always written). At shutdown three
        writers meet, each on a thread of its own: the periodic write (its task cancelled, its thread
        still writing), the shutdown's, and the late acknowledgements'. Writes go one at a time, and a
        snapshot older than the one already written is skipped, so the file never ends behind what
        was acknowledged (which sent those lines again after a clean restart)."""
        data = _encode(_File(FORMAT_VERSION, entries))
        with self._lock:
            if taken and taken <= self._written:
                return
            write_atomically(self.path, data)
            self._written = max(self._written, taken)


def _entry(raw: msgspec.Raw) -> Saved | None:
    """One entry, or None when it cannot be trusted."""
    try:
        entry = _decode_entry(raw)
        bytes.fromhex(entry.tail)
    except (msgspec.DecodeError, ValueError):
        return None
    if min(entry.offset, entry.fp_len, entry.dev, entry.ino) < 0 or not entry.key:
        return None
    return entry


def _path_of(raw: msgspec.Raw) -> str:
    """The path a damaged entry names, if it still names one."""
    try:
        value = _decode_any(raw)
    except msgspec.DecodeError:
        return ""
    path = value.get("path") if isinstance(value, dict) else None
    return path if isinstance(path, str) and path.startswith("/") else ""
