"""The checkpoint journal: an append-only file of checksummed records continuing one snapshot.

The checkpoint file is a full snapshot, replaced atomically. Between two snapshots each write
appends only what changed to this journal, one record a write (``fdatasync``), so a write at
2,000 files costs the few hundred entries a second moved, not all of them. The snapshot names the
journal that continues it by an id the journal's header repeats: a journal with another id (left
by a crash between a snapshot's rename and the journal's restart, or by an older snapshot) is not
read. The records hold what the caller encodes (``checkpoint.py``); this module only frames them.

Format: a header line ``hostwatch-checkpoint-journal <id>``, then one line per record:
``<crc32 of the body, 8 hex digits> <body>``, the body one line of JSON. A last record without its
newline, or with a checksum that does not match, is a torn append (a crash or a full disk in the
middle of a write): it and anything after it are not read, and :func:`read` says how many bytes
that was. Blocking: called off the event loop.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

MAGIC = b"hostwatch-checkpoint-journal "


def record(body: bytes) -> bytes:
    """One record's line; ``body`` must hold no newline (JSON's strings escape theirs)."""
    return b"%08x %s\n" % (zlib.crc32(body), body)


def read(path: Path, journal_id: str) -> tuple[list[bytes], int]:
    """The bodies of the journal's whole records, when its header names ``journal_id`` (none
    otherwise, or when there is no journal), and the bytes of a torn tail left unread (0: none).
    Raises OSError for a journal that exists but cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    first = data.find(b"\n")
    if first < 0 or data[:first] != MAGIC + journal_id.encode():
        return [], 0  # another snapshot's, or restarted and torn before its header was whole
    bodies: list[bytes] = []
    start = first + 1
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            break
        line = data[start:end]
        crc, body = line[:8], line[9:]
        if line[8:9] != b" " or crc != b"%08x" % zlib.crc32(body):
            break
        bodies.append(body)
        start = end + 1
    return bodies, len(data) - start


class JournalFile:
    """The journal being written: restarted for each snapshot, appended to between them. One writer
    at a time (the caller's lock); ``size`` is its bytes so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fd = -1

    def open(self) -> None:
        """Open (create) the file. Done before the snapshot that names it is written, so the directory
        fsync of that write makes the file's name durable too. Raises OSError."""
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def restart(self, journal_id: str) -> None:
        """Empty it and write the header naming ``journal_id`` (durably). Raises OSError."""
        os.ftruncate(self._fd, 0)
        self.size = 0
        self.append(MAGIC + journal_id.encode() + b"\n")

    def append(self, data: bytes) -> None:
        """Append ``data`` durably. Raises OSError (a part may have been written: a torn tail)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fdatasync(self._fd)
        self.size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
