"""Finding the files to tail, and hearing about changes to them.

:class:`Patterns` expands ``paths`` globs (``*``, ``?``, ``[...]`` and ``**``
for any number of directories), drops ``exclude`` matches and compressed
rotations, and says which directories to watch. :class:`Watcher` watches them
with watchdog (inotify on Linux) and tells the collector which files changed
and when a directory changed (a file appeared, moved or vanished: time to
re-scan); where inotify cannot see changes (network file systems) or cannot be
had (its watch limit), the collector polls instead.

The watchdog threads only record paths and wake the event loop once per
burst; the collector then reads the changed files in its worker thread.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import stat
import threading
from collections.abc import Callable
from pathlib import Path

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".z", ".br", ".lzma", ".7z", ".tgz")
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18", b"PK\x03\x04")
# where inotify does not report changes made by other machines
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs", "davfs", "virtiofs"}
)
_MAGIC = re.compile(r"[*?\[]")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching whole paths the way ``pattern`` does; ``**`` spans directories."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def is_compressed(path: str, head: bytes = b"") -> bool:
    """A compressed rotation (``app.log.2.gz``), by its suffix or its first bytes."""
    return path.lower().endswith(COMPRESSED_SUFFIXES) or (bool(head) and head.startswith(COMPRESSED_MAGIC))


class Patterns:
    """The instance's ``paths`` and ``exclude`` globs."""

    def __init__(self, paths: list[str], exclude: list[str], include_compressed: bool) -> None:
        self.paths = [os.path.abspath(os.path.expanduser(p)) for p in paths]
        self._include = [glob_regex(p) for p in self.paths]
        # an exclude glob without a slash applies to the file's name, in any directory
        self._exclude = [(glob_regex(e), "/" not in e) for e in exclude]
        self.include_compressed = include_compressed

    def matches(self, path: str) -> bool:
        return any(r.match(path) for r in self._include) and not self.excluded(path)

    def excluded(self, path: str) -> bool:
        if not self.include_compressed and is_compressed(path):
            return True
        name = path.rsplit("/", 1)[-1]
        return any(r.match(name if by_name else path) for r, by_name in self._exclude)

    def scan(self) -> tuple[dict[str, os.stat_result], list[tuple[str, OSError]]]:
        """Regular files matching now (symlinks followed), and the paths that could not be looked at."""
        found: dict[str, os.stat_result] = {}
        problems: list[tuple[str, OSError]] = []
        for pattern in self.paths:
            for path in glob.iglob(pattern, recursive=True):
                if path in found or self.excluded(path):
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # vanished since the directory was listed, or a dangling symlink
                except OSError as exc:
                    problems.append((path, exc))
                    continue
                if stat.S_ISREG(st.st_mode):
                    found[path] = st
        return found, problems

    def watch_plan(self) -> dict[str, bool]:
        """Directory -> watch recursively; the nearest existing ancestor stands in for a missing one."""
        plan: dict[str, bool] = {}
        for pattern in self.paths:
            parts = pattern.split("/")
            fixed = next((i for i, part in enumerate(parts) if _MAGIC.search(part)), len(parts) - 1)
            base = "/".join(parts[:fixed]) or "/"
            recursive = fixed < len(parts) - 1
            while not os.path.isdir(base):
                parent = os.path.dirname(base)
                if parent == base:
                    break
                base, recursive = parent, False
            plan[base] = plan.get(base, False) or recursive
        # a directory under a recursively watched one is covered already
        covered = [d for d, r in plan.items() if r]
        return {d: r for d, r in plan.items() if not any(d != c and d.startswith(c.rstrip("/") + "/") for c in covered)}


def filesystem_type(path: str, mounts_file: Path) -> str:
    """The type of the file system holding ``path``, from a mounts table (``/proc/self/mounts``)."""
    best, kind = "", ""
    try:
        text = mounts_file.read_text()
    except OSError:
        return ""
    real = os.path.realpath(path)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


class Watcher:
    """Change notification through watchdog; ``take()`` hands over what happened since the last call."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event, relevant: Callable[[str], bool]) -> None:
        self.relevant = relevant
        """Whether a file path matters (matches the globs); events on other files are ignored."""
        self._loop = loop
        self._wake = wake
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._rescan = False
        self._signalled = False
        self._observer = None
        self._watches: dict[str, object] = {}

    def sync(self, plan: dict[str, bool]) -> list[str]:
        """Watch exactly the planned directories (worker thread: adding watches walks directories)."""
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
        )
        from watchdog.observers.inotify import InotifyObserver

        problems = []
        if self._observer is None:
            self._observer = InotifyObserver()
            self._observer.start()
        wanted = {(d, r) for d, r in plan.items()}
        for key in list(self._watches):
            if key not in wanted or not os.path.isdir(key[0]):
                self._observer.unschedule(self._watches.pop(key))
        kinds = [
            FileModifiedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileMovedEvent,
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
        ]
        for directory, recursive in sorted(wanted - set(self._watches)):
            try:
                self._watches[(directory, recursive)] = self._observer.schedule(
                    _Handler(self), directory, recursive=recursive, event_filter=kinds
                )
            except OSError as exc:
                problems.append(f"cannot watch {directory}: {exc.strerror or exc}")
        return problems

    def note(self, path: str, rescan: bool) -> None:
        """From watchdog's thread: remember, and wake the loop once per burst."""
        with self._lock:
            if rescan:
                self._rescan = True
            else:
                self._dirty.add(path)
            if self._signalled:
                return
            self._signalled = True
        self._loop.call_soon_threadsafe(self._wake.set)

    def take(self) -> tuple[bool, set[str]]:
        with self._lock:
            rescan, dirty = self._rescan, self._dirty
            self._rescan, self._dirty, self._signalled = False, set(), False
        return rescan, dirty

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        self._watches.clear()
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)


class _Handler:
    """A minimal watchdog handler: watchdog only calls ``dispatch``."""

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def dispatch(self, event) -> None:  # type: ignore[no-untyped-def]
        watcher = self._watcher
        src = os.fsdecode(event.src_path)
        if event.is_directory:
            watcher.note(src, True)
        elif event.event_type == "modified":
            if watcher.relevant(src):
                watcher.note(src, False)
        elif watcher.relevant(src) or (event.event_type == "moved" and watcher.relevant(os.fsdecode(event.dest_path))):
            watcher.note(src, True)  # a file appeared, moved or vanished: scan the globs again
