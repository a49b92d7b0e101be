"""An open file being tailed, as the tailer and its helpers (copies, truncation) see it."""

from __future__ import annotations

from dataclasses import dataclass

from agent.model import Labels
from collectors.logs.checkpoint import Mark
from collectors.logs.framing import Framer
from collectors.logs.identity import FileId
from collectors.logs.multiline import Multiline


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
    head: bytes = b""  # the file's first ``id.fp_len`` bytes: compared, a cheap check that it still starts so
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


def tracker_resume(t: Tracker) -> Mark:
    """Offset just past the last record produced, and the bytes before it (empty when unknown)."""
    if t.multiline is not None and t.multiline.held:
        return Mark(t.multiline.start, b"")
    return Mark(t.framer.consumed, t.framer.tail)


def waits(t: Tracker) -> bool:
    """Does the file need a look next round even without an event?"""
    return (
        t.more
        or t.orphan_since is not None
        or t.polled
        or bool(t.framer.pending)
        or (t.multiline is not None and t.multiline.held)
        or t.twin is not None
    )
