"""A file truncated (copytruncate's second step) or rewritten from its start while open.

Its descriptor is kept: what is written from now on is read from offset 0 as a
new generation with a key of its own, and the old generation is retired to
:class:`~collectors.logs.identity.Generations`, so the rotated copy, if it
turns up, continues where it stopped (see ``copies.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from collectors.logs.identity import FP_BYTES, FileId
from collectors.logs.tracker import Tracker

FRESH = ("key", "id", "head", "pos", "framer", "multiline", "twin", "copied")
"""What a new generation starts afresh; the rest (descriptor, name, labels, timers) is the file's."""


def replaced(t: Tracker, st: os.stat_result) -> bool:
    """Was the file truncated, or rewritten from its start, since it was last looked at? A change of
    size or modification time only prompts the look (and is remembered)."""
    stamp = (st.st_size, st.st_mtime_ns)
    if stamp == t.last_stat:
        return False
    gone = st.st_size < t.pos or (t.last_stat[0] >= 0 and not same_start(t))
    t.last_stat = stamp
    return gone


def same_start(t: Tracker) -> bool:
    """Does the open file still start with the bytes fingerprinted (not truncated and rewritten)?
    Compared with those bytes as kept, not by the fingerprint nor ``hash()`` (hashing the 1 KiB costs 30
    times a comparison): a round reading a line from each of many files makes this check once per file."""
    if t.id.fp_len == 0:
        return True
    try:
        head = os.pread(t.fd, t.id.fp_len, 0)
    except OSError:
        return True
    return head == t.head


def restart(t: Tracker, key: str, fresh: Callable[[str, str, FileId, int, bytes, int], Tracker]) -> None:
    """``t`` becomes generation ``key``, read from offset 0; ``fresh(key, name, file id, fd, head,
    offset)`` makes a tracker in the state of a newly opened file, whose fresh parts ``t`` takes."""
    try:
        head = os.pread(t.fd, FP_BYTES, 0)
        st = os.fstat(t.fd)
    except OSError:
        head, st = b"", None
    new = fresh(key, t.name, FileId.of(t.path, st, head), t.fd, head, 0)
    for name in FRESH:
        setattr(t, name, getattr(new, name))
