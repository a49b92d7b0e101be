"""Who a log file is, and which earlier file (or generation of one) a newly opened file continues.

A file is known by its device and inode, checked against a fingerprint of its
first bytes (up to :data:`FP_BYTES`): an inode reused by a new file, or a file
truncated and rewritten, shows a different fingerprint; a renamed file keeps
its inode; a copy (copytruncate's rotated file, or a file moved across file
systems) shows the same fingerprint under a new inode, and holds at the old
read offset the bytes the original had there.

A *generation* is one stretch of a file's content, named by a key: truncation
starts a new one at offset 0. Generations no longer read (truncated, closed,
or saved by an earlier run) stay in :class:`Generations` for
:data:`RETAIN_SECONDS`, so a rotated copy that turns up later continues where
the old one stopped. Reading is ``tailer.py``'s.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

FP_BYTES = 1024
MIN_FP_MATCH = 64  # fingerprints shorter than this never identify a file on their own
RETAIN_SECONDS = 3600.0  # how long a closed generation is kept for a rotated copy to be matched


def fingerprint(head: bytes, length: int | None = None) -> str:
    return hashlib.blake2b(head[: FP_BYTES if length is None else length], digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class FileId:
    """A file as last seen: its path, device and inode, and the fingerprint of its first ``fp_len`` bytes."""

    path: str
    dev: int
    ino: int
    fp_len: int
    fp: str

    @classmethod
    def of(cls, path: str, st: os.stat_result | None, head: bytes) -> FileId:
        fp_len = min(len(head), FP_BYTES)
        return cls(path, st.st_dev if st else 0, st.st_ino if st else 0, fp_len, fingerprint(head, fp_len))

    @property
    def inode(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def moved(self, path: str) -> FileId:
        return FileId(path, self.dev, self.ino, self.fp_len, self.fp)

    def grown(self, head: bytes) -> FileId | None:
        """A longer fingerprint when ``head`` (the file's first bytes now) still starts with the content
        fingerprinted so far; None when it does not (or is no longer)."""
        if len(head) <= self.fp_len or fingerprint(head, self.fp_len) != self.fp:
            return None
        return self.extended(head)

    def extended(self, head: bytes) -> FileId:
        """The fingerprint of ``head``, longer than this one's, which the caller found starting with the
        bytes fingerprinted so far."""
        fp_len = min(len(head), FP_BYTES)
        # the constructor, not dataclasses.replace (which costs more than the two hashes): every file
        # grows its fingerprint a few times as it fills its first KiB
        return FileId(self.path, self.dev, self.ino, fp_len, fingerprint(head, fp_len))


@dataclass(frozen=True, slots=True)
class Opened:
    """A generation started being read: at ``offset``, continuing ``pred`` (a key, or "")."""

    key: str
    id: FileId
    offset: int
    pred: str = ""


@dataclass(frozen=True, slots=True)
class Known:
    """A generation no longer read (truncated, closed, or saved by an earlier run), kept for matching."""

    key: str
    id: FileId
    offset: int
    tail: bytes  # the bytes just before offset, which a copy must hold there too
    truncated: bool
    expires: float


@dataclass(frozen=True, slots=True)
class Match:
    """What a newly opened file continues: read it from ``offset``; ``known.truncated`` when the
    match is copytruncate's copy of a generation truncated since."""

    known: Known
    offset: int


class Head:
    """A newly opened file's first bytes, with its fingerprints at the lengths asked for, computed once."""

    def __init__(self, head: bytes) -> None:
        self.bytes = head
        self._hashes: dict[int, str] = {}

    def starts_like(self, other: FileId) -> bool:
        if other.fp_len > len(self.bytes):
            return False
        got = self._hashes.get(other.fp_len)
        if got is None:
            got = self._hashes[other.fp_len] = fingerprint(self.bytes, other.fp_len)
        return got == other.fp


class Generations:
    """The generations no longer read, by key."""

    def __init__(self, known: Iterable[Known] = ()) -> None:
        self.known = {k.key: k for k in known}

    def retire(self, key: str, file: FileId, offset: int, tail: bytes, truncated: bool, now: float) -> None:
        self.known[key] = Known(key, file, offset, tail, truncated, now + RETAIN_SECONDS)

    def expire(self, now: float) -> None:
        for key in [k for k, known in self.known.items() if known.expires < now]:
            del self.known[key]

    def same_file(self, inode: tuple[int, int], head: Head) -> Match | bool | None:
        """This very file, saved by an earlier run or closed earlier: its generation (claimed, so
        removed); False when the inode is known but its content is not (reused, or rewritten)."""
        mine = [k for k in self.known.values() if k.id.inode == inode and not k.truncated]
        for known in mine:
            if head.starts_like(known.id):
                del self.known[known.key]
                return Match(known, known.offset)
        return False if mine else None

    def copy_of(self, inode: tuple[int, int], head: Head, fd: int, size: int) -> Match | None:
        """A copy of a generation no longer read (claimed, so removed)."""
        for known in list(self.known.values()):
            if known.id.inode == inode or known.id.fp_len < MIN_FP_MATCH or not head.starts_like(known.id):
                continue
            if holds(fd, size, known.offset, known.tail):
                del self.known[known.key]
                return Match(known, known.offset)
        return None


def holds(fd: int, size: int, offset: int, tail: bytes) -> bool:
    """Does a candidate copy reach ``offset`` and hold there the bytes its original had before it?"""
    if size < offset:
        return False  # shorter than what was read: not a copy of it (or one we cannot tell)
    try:
        return not tail or os.pread(fd, len(tail), offset - len(tail)) == tail
    except OSError:
        return False


def rotation_kind(previous_fd: int) -> str:
    """A new file under a tailed name: the old one was renamed away (still linked) or deleted."""
    try:
        gone = os.fstat(previous_fd).st_nlink == 0
    except OSError:
        gone = True
    return "recreate" if gone else "rename"
