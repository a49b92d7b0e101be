"""Finding the files to tail, and hearing about changes to them.

:class:`Patterns` expands ``paths`` globs (``*``, ``?``, ``[...]`` and ``**``
for any number of directories), drops ``exclude`` matches and compressed
rotations, and says which directories to watch. :class:`Watcher` watches them
with inotify and tells the collector which files changed and when a directory
changed (a file appeared, moved or vanished: time to re-scan); where inotify
cannot see changes (network file systems) or cannot be had (its watch limit),
the collector polls instead.

The watcher's thread only records paths and wakes the event loop once per
burst; the collector then reads the changed files in its worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import glob
import os
import re
import select
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import re2

from collectors.logs.listing import Listings

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".z", ".br", ".lzma", ".7z", ".tgz")
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18", b"PK\x03\x04")
# where inotify does not report changes made by other machines
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs", "davfs", "virtiofs"}
)
_MAGIC = re.compile(r"[*?\[]")


def glob_regex(pattern: str) -> Any:
    """An RE2 regex matching whole paths the way ``pattern`` does; ``**`` spans directories.

    RE2, not ``re``: file names come from whoever can write in the watched directories, and
    several ``*`` in a row make a backtracking engine polynomial in the name's length."""
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
    options = re2.Options()
    options.log_errors = False
    return re2.compile("(?s)" + "".join(out) + r"\z", options)


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
        self._listings = Listings()

    def matches(self, path: str) -> bool:
        return any(r.match(path) for r in self._include) and not self.excluded(path)

    def excluded(self, path: str) -> bool:
        if not self.include_compressed and is_compressed(path):
            return True
        name = path.rsplit("/", 1)[-1]
        return any(r.match(name if by_name else path) for r, by_name in self._exclude)

    def scan(
        self, reuse: bool = True
    ) -> tuple[dict[str, os.stat_result], list[tuple[str, OSError]], dict[str, os.stat_result]]:
        """Regular files matching now (symlinks followed), the paths that could not be looked at, and
        the special files (FIFOs, sockets, devices) matching: never opened, reported. A glob wild only
        in its last part reuses its directory's listing while the directory's time is unchanged
        (``listing.py``); ``reuse=False`` (polling) lists it anew."""
        found: dict[str, os.stat_result] = {}
        problems: list[tuple[str, OSError]] = []
        special: dict[str, os.stat_result] = {}
        for pattern in self.paths:
            directory, part = os.path.split(pattern)
            if _MAGIC.search(part) and not _MAGIC.search(directory):  # /var/log/app/*.log: listed once
                listed, failed = self._listings.matches(directory, part, self.excluded, reuse=reuse)
                problems += failed
                for path, st in listed.items():
                    if path not in found:
                        (found if stat.S_ISREG(st.st_mode) else special)[path] = st
                continue
            for path in expand(pattern):
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
                elif not stat.S_ISDIR(st.st_mode):
                    special[path] = st
        return found, problems, special

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


def expand(pattern: str) -> Iterator[str]:
    """The paths a glob matches now, like ``glob.iglob(recursive=True)``, but ``**`` never enters a
    symlinked directory: with ``glob``, two links to ``.`` planted in a tailed tree make 2**40 paths."""
    if "**" not in pattern:
        yield from glob.iglob(pattern)
        return
    head = pattern[: pattern.index("**")].rstrip("/") or "/"
    regex = glob_regex(pattern)
    hidden_ok = pattern.rsplit("/", 1)[-1].startswith(".")
    for base in glob.iglob(head) if _MAGIC.search(head) else [head]:
        if not os.path.isdir(base):
            continue
        for current, dirs, files in os.walk(base):  # followlinks=False
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # as glob: wildcards skip hidden names
            for name in files if hidden_ok else (f for f in files if not f.startswith(".")):
                path = os.path.join(current, name)
                if regex.match(path):
                    yield path


def fixed_prefix(pattern: str) -> str:
    """The directory of a glob before its first wildcard: ``/var/log`` of ``/var/log/*/x.log``."""
    parts = pattern.split("/")
    fixed = next((i for i, part in enumerate(parts) if _MAGIC.search(part)), len(parts) - 1)
    return "/".join(parts[:fixed]) or "/"


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
    """Change notification through inotify; ``take()`` hands over what happened since the last call.

    One thread reads the inotify descriptor. After each read it waits
    :data:`COALESCE_SECONDS` before reading again: meanwhile the kernel merges
    repeated identical events (a file appended to line by line gives one
    IN_MODIFY per pause, not one per write), so a busy file costs a few wake-ups
    a second, not work per write. Once it has woken the loop, it reads nothing
    more until the loop has taken the changes (or :data:`PENDING_SECONDS`
    passed): the loop paces its rounds, so reading sooner only costs wake-ups.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event, relevant: Callable[[str], bool]) -> None:
        self._relevant = relevant
        self._relevance: dict[str, bool] = {}  # per path: a busy file's events cost no glob match each
        # an IN_MODIFY/IN_ATTRIB event's bytes (watch, mask, name) -> its path, "" when irrelevant: most
        # events are another write to a known file; emptied whenever a watch descriptor changes meaning
        self._modified: dict[bytes, str] = {}
        self._loop = loop
        self._wake = wake
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._rescan = False
        self._signalled = False
        self._taken = threading.Event()  # set by take() (and stop()): the thread may read again
        self._fd = -1
        self._stop_r = self._stop_w = -1
        self._thread: threading.Thread | None = None
        self._roots: dict[str, bool] = {}  # the plan being watched: directory -> recursively
        self._dir_of: dict[int, str] = {}  # watch descriptor -> directory
        self._wd_of: dict[str, int] = {}

    def sync(self, plan: dict[str, bool]) -> list[str]:
        """Watch exactly the planned directories (worker thread: adding watches walks directories)."""
        if self._fd < 0:
            self._open()
        problems: list[str] = []
        with self._lock:
            self._roots = dict(plan)
            gone = [(d, wd) for d, wd in self._wd_of.items() if not self._covered(d)]
            for directory, wd in gone:  # forgotten first: their IN_IGNORED then asks for nothing
                del self._wd_of[directory]
                self._dir_of.pop(wd, None)
            if gone:
                self._modified.clear()
        for _directory, wd in gone:
            _libc().inotify_rm_watch(self._fd, wd)
        for directory, recursive in sorted(plan.items()):
            problems += self._watch_tree(directory, recursive)
        return problems

    def relevant(self, path: str) -> bool:
        """Whether a file path matters (matches the globs); events on other files are ignored."""
        known = self._relevance.get(path)
        if known is None:
            if len(self._relevance) >= 65536:
                self._relevance.clear()  # bounded: many short-lived names
            known = self._relevance[path] = self._relevant(path)
        return known

    def note(self, path: str, rescan: bool) -> None:
        """Remember a change, and wake the loop once per burst."""
        self._note({path} if not rescan else set(), rescan)

    def take(self) -> tuple[bool, set[str]]:
        with self._lock:
            rescan, dirty = self._rescan, self._dirty
            self._rescan, self._dirty, self._signalled = False, set(), False
        self._taken.set()
        return rescan, dirty

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        self._taken.set()
        if thread is not None:
            thread.join(timeout=5)
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1
        with self._lock:
            self._dir_of.clear()
            self._wd_of.clear()

    # ---------------------------------------------------------------- internals

    def _open(self) -> None:
        libc = _libc()
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="hw-inotify", daemon=True)
        self._thread.start()

    def _covered(self, directory: str) -> bool:
        """Is ``directory`` one the plan asks to watch (a root, or under a recursive root)?"""
        for root, recursive in self._roots.items():
            if directory == root or (recursive and directory.startswith(root.rstrip("/") + "/")):
                return True
        return False

    def _watch_tree(self, directory: str, recursive: bool) -> list[str]:
        problems = []
        for current in _walk(directory) if recursive else [directory]:
            if current in self._wd_of:
                continue
            wd = _libc().inotify_add_watch(self._fd, os.fsencode(current), _WATCH_MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOENT, errno.ENOTDIR) and current != directory:
                    continue  # gone again, or not a directory after all
                problems.append(f"cannot watch {current}: {os.strerror(err)}")
                continue
            with self._lock:
                self._dir_of[wd] = current
                self._wd_of[current] = wd
                self._modified.clear()
        return problems

    def _note(self, dirty: set[str], rescan: bool) -> None:
        with self._lock:
            self._rescan = self._rescan or rescan
            self._dirty |= dirty
            if self._signalled or not (self._rescan or self._dirty):
                return
            self._signalled = True
        self._loop.call_soon_threadsafe(self._wake.set)

    def _run(self) -> None:
        fd, stop = self._fd, self._stop_r
        while True:
            ready, _, _ = select.select([fd, stop], [], [])
            if stop in ready:
                return
            chunks = []
            while True:
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                except OSError:
                    return
                chunks.append(data)
                if len(data) < (1 << 16) - 4096:
                    break
            if chunks:
                self._handle(b"".join(chunks))
            # while the loop has not taken what was noted (it paces its rounds), reading sooner gains nothing
            with self._lock:
                signalled = self._signalled
            if signalled:
                self._taken.wait(PENDING_SECONDS)
            self._taken.clear()
            if select.select([stop], [], [], COALESCE_SECONDS)[0]:
                return

    def _handle(self, data: bytes) -> None:
        if self._modified and self._known_writes(data):
            return
        dirty: set[str] = set()
        rescan = False
        new_dirs: list[str] = []
        seen: set[bytes] = set()
        modified = self._modified
        pos, end = 0, len(data)
        while pos + _HEAD <= end:
            # most events are another write to a known file: its bytes find its path, nothing unpacked
            (length,) = _LENGTH.unpack_from(data, pos + _HEAD - 4)
            raw = data[pos : pos + _HEAD + length]
            pos += _HEAD + length
            known = modified.get(raw)
            if known is not None:
                if known:
                    dirty.add(known)
                continue
            if raw in seen:  # the same event again (two busy files take turns, so the kernel merged none)
                continue
            seen.add(raw)
            wd, mask, _cookie, _length = _EVENT.unpack_from(raw)
            name = raw[_HEAD:].split(b"\0", 1)[0]
            if mask & (_IN_Q_OVERFLOW | _IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT):
                with self._lock:  # events were lost, or a watched directory went away
                    if mask & _IN_IGNORED and wd in self._dir_of:
                        self._wd_of.pop(self._dir_of.pop(wd), None)
                        self._modified.clear()
                rescan = True
                continue
            with self._lock:
                directory = self._dir_of.get(wd)
            if directory is None or not name:
                continue
            path = os.path.join(directory, os.fsdecode(name))
            if mask & _IN_ISDIR:
                rescan = True  # a directory appeared, moved or vanished: the globs may match anew
                if mask & (_IN_CREATE | _IN_MOVED_TO):
                    new_dirs.append(path)
            elif mask & (_IN_MODIFY | _IN_ATTRIB):
                relevant = self.relevant(path)
                if relevant:
                    dirty.add(path)
                with self._lock:
                    if self._dir_of.get(wd) == directory:  # still what the descriptor means
                        if len(modified) >= 65536:
                            modified.clear()
                        modified[raw] = path if relevant else ""
            elif self.relevant(path):
                rescan = True  # a file appeared, moved or vanished
        for directory in new_dirs:
            with self._lock:
                wanted = self._covered(directory)
            if wanted:
                self._watch_tree(directory, True)  # a failure here: the periodic scans still see its files
        self._note(dirty, rescan)

    def _known_writes(self, data: bytes) -> bool:
        """The usual read at low rates: another write to each of many known files, every event the same
        size (names of one length, as rotation-free log names mostly are). Noted without a Python step per
        event, as :meth:`_handle` would note them; False, with nothing noted, for anything else."""
        size = _HEAD + _LENGTH.unpack_from(data, _HEAD - 4)[0] if len(data) >= _HEAD else 0
        if not size or size % 4 or len(data) % size:
            return False
        if set(memoryview(data).cast("I")[_HEAD // 4 - 1 :: size // 4]) != {size - _HEAD}:
            return False  # names of other lengths: the events cannot be cut at a fixed size
        paths = set(map(self._modified.get, [data[at : at + size] for at in range(0, len(data), size)]))
        if None in paths:
            return False  # an event of another kind, or a file not known yet
        paths.discard("")  # files the globs do not match
        self._note(paths, False)
        return True


def _walk(top: str) -> list[str]:
    """``top`` and every directory under it."""
    found = [top]
    for current, dirs, _files in os.walk(top):
        found += [os.path.join(current, d) for d in dirs]
    return found


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


COALESCE_SECONDS = 0.02
"""How long the watcher thread pauses after each read, letting the kernel merge repeated events."""
PENDING_SECONDS = 1.0
"""How long at most the thread waits for the loop to take the changes noted before it reads again (the
loop may be held back by a full buffer; a queue that overflows meanwhile costs a rescan, not events)."""
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_HEAD = _EVENT.size
_LENGTH = struct.Struct("I")  # its last field: the length of the name after it
_IN_MODIFY, _IN_ATTRIB, _IN_MOVED_FROM, _IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
_IN_CREATE, _IN_DELETE, _IN_DELETE_SELF, _IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
_IN_UNMOUNT, _IN_Q_OVERFLOW, _IN_IGNORED, _IN_ONLYDIR, _IN_ISDIR = 0x2000, 0x4000, 0x8000, 0x1000000, 0x40000000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_WATCH_MASK = (
    _IN_MODIFY | _IN_ATTRIB | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF
) | _IN_ONLYDIR
