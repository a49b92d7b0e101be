"""Following a copy of a live file: copytruncate copies the file, then truncates it.

Between the copy and the truncation both files hold the same bytes. The copy
is recognised by its fingerprint and by holding, at the original's read offset,
the bytes the original had there (:func:`find_original`); until the truncation
is seen it only keeps pace with the original, which reads those bytes
(:func:`follow_original`). Once the original is truncated or closed, the copy
reads on alone from where the original stopped, so the lines written between
the copy and the truncation are read once, from the copy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

from collectors.logs.checkpoint import Mark
from collectors.logs.framing import Framer
from collectors.logs.identity import MIN_FP_MATCH, Head, holds
from collectors.logs.stats import LogStats
from collectors.logs.tracker import Tracker, Twin, tracker_resume


def find_original(trackers: Iterable[Tracker], first: Head, fd: int, size: int) -> Twin | None:
    """The live file a newly opened one is a copy of (same first bytes, and the bytes before the
    original's read offset at the same place), or None."""
    for tracker in trackers:
        if tracker.id.fp_len >= MIN_FP_MATCH and tracker.twin is None and first.starts_like(tracker.id):
            offset, tail = tracker_resume(tracker)
            if holds(fd, size, offset, tail):
                return Twin(tracker, tracker.key)
    return None


def follow_original(t: Tracker, skipped: dict[str, Mark], size: int, max_line_bytes: int, stats: LogStats) -> bool:
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
        t.framer = Framer(t.framer.codec, max_line_bytes, stats, ahead, ends=t.framer.ends)
        t.framer.tail = tail
        if t.multiline is not None:
            t.multiline.reset(ahead)
        skipped[t.key] = Mark(ahead, tail)
    return True


def copies_of(trackers: Iterable[Tracker], original: Tracker) -> Iterator[Tracker]:
    return (other for other in trackers if other.twin is not None and other.twin.original is original)


def catch_up(
    trackers: Iterable[Tracker], original: Tracker, skipped: dict[str, Mark], max_line_bytes: int, stats: LogStats
) -> None:
    """The original is about to be truncated: its copies catch up to all it read of the old content."""
    for other in copies_of(trackers, original):
        with contextlib.suppress(OSError):
            follow_original(other, skipped, os.fstat(other.fd).st_size, max_line_bytes, stats)
