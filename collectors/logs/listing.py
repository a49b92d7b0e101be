"""The files of a directory matching a glob's last part, listed again only when the directory changed.

The periodic glob scan of 2,000 files in one directory cost ``glob`` listing and
matching every name, and an ``os.stat`` of each path (about 13 ms a scan); a
file created, removed or renamed changes its directory's modification time, so
while that time stays the same the names, and the inode and type behind each
name, are the ones found last time: the scan then costs one ``stat`` of the
directory. Two things do not change the directory's time and are looked at
anew every scan: a symlink's target (it may be replaced elsewhere), a path that
could not be looked at (its permissions may change), and a directory changed
within :data:`RACY_NS` of its listing (its time may not have moved past the one
recorded yet, as git's "racily clean" entries).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RACY_NS = 2_000_000_000
"""A directory modified this recently before its listing began is listed again at the next scan."""


@dataclass(slots=True)
class Listed:
    """What one directory held for one glob part when it was last listed."""

    mtime_ns: int
    files: dict[str, os.stat_result] = field(default_factory=dict)  # regular files and special files
    links: list[str] = field(default_factory=list)  # symlinks: stat()ed at every scan
    problems: list[tuple[str, OSError]] = field(default_factory=list)


class Listings:
    """Per (directory, glob part) the matching paths and their ``stat``; see the module's docstring."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Listed] = {}

    def matches(
        self, directory: str, part: str, excluded: Callable[[str], bool], *, reuse: bool = True
    ) -> tuple[dict[str, os.stat_result], list[tuple[str, OSError]]]:
        """Paths in ``directory`` whose names match ``part`` (as ``glob`` matches: ``*`` skips hidden
        names unless ``part`` starts with a dot) and that ``excluded`` keeps, with their ``stat``
        (symlinks followed; dangling ones left out); and the paths that could not be looked at.
        ``reuse=False`` lists the directory whatever its time says (polling a network file system,
        whose clock and time granularity are the server's)."""
        key = (directory, part)
        try:
            dir_mtime = os.stat(directory).st_mtime_ns
        except OSError:
            self._cache.pop(key, None)
            return {}, []
        listed = self._cache.get(key)
        if not reuse or listed is None or listed.mtime_ns != dir_mtime:
            listed = self._list(directory, part, excluded, dir_mtime)
        found = dict(listed.files)
        problems = list(listed.problems)
        for path in listed.links:
            try:
                found[path] = os.stat(path)
            except FileNotFoundError:
                continue  # dangling
            except OSError as exc:
                problems.append((path, exc))
        return found, problems

    def _list(self, directory: str, part: str, excluded: Callable[[str], bool], dir_mtime: int) -> Listed:
        started = time.time_ns()
        listed = Listed(dir_mtime)
        hidden_ok = part.startswith(".")
        try:
            with os.scandir(directory) as entries:
                candidates = [e for e in entries if hidden_ok or not e.name.startswith(".")]
        except OSError:
            candidates = []
        names = set(fnmatch.filter([e.name for e in candidates], part))
        for entry in candidates:
            if entry.name not in names:
                continue
            path = os.path.join(directory, entry.name)
            if excluded(path):
                continue
            try:
                if entry.is_symlink():
                    listed.links.append(path)
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing
            except OSError as exc:
                listed.problems.append((path, exc))
                continue
            if not stat.S_ISDIR(st.st_mode):
                listed.files[path] = st
        key = (directory, part)
        if started - dir_mtime > RACY_NS and not listed.problems:
            self._cache[key] = listed
        else:
            self._cache.pop(key, None)  # it may change again within its time's granularity: list it anew
        return listed
