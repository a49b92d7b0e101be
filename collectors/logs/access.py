"""Which files a logs instance may open: symlinks, special files and the agent's own secrets.

Whoever can write in a tailed directory can plant a symlink there, and
whatever it points at would be shipped. The policy:

* Symlinks in the directories named in ``paths`` before the first wildcard
  (``/var/log`` in ``/var/log/app/*.log``) are the operator's and are trusted.
* A file reached through any other symlink (the file itself, or a directory a
  wildcard matched) is opened only when its real path matches the instance's
  ``paths`` globs (and no ``exclude``) or a ``follow_symlinks_to`` glob.
* Never a file under ``/proc``, ``/sys`` or ``/dev`` (nor the configured
  ``proc_root``/``sys_root``), whatever the globs say.
* Never the agent's own secret files: the configuration files and the
  outputs' password, token and key files (``CollectorContext.denied_paths``),
  recognised by their real path and by their inode, so a hard link is
  refused too.
* Only regular files: a FIFO would block a reader, a device may act on open.

The checks run on the opened file, not on the name: the path is opened with
``O_PATH`` (no read access, no device side effects), checked through its
``/proc/self/fd`` link and ``fstat``, and only then reopened for reading
through that same descriptor, so swapping a link between check and open
gains nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from collectors.logs.discovery import Patterns, fixed_prefix, glob_regex

SYSTEM_ROOTS = ("/proc", "/sys", "/dev")


class Refused(Exception):
    """A file the policy does not allow; ``reason`` is the metric label."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


class Access:
    def __init__(
        self,
        patterns: Patterns,
        follow_symlinks_to: Iterable[str],
        denied_paths: Iterable[str],
        system_roots: Iterable[str] = (),
    ) -> None:
        self.patterns = patterns
        self._allow = [glob_regex(os.path.abspath(p)) for p in follow_symlinks_to]
        self._denied_paths = frozenset(denied_paths)
        self._roots = tuple({r.rstrip("/") or "/" for r in (*SYSTEM_ROOTS, *system_roots)})
        self._denied_real: set[str] = set()
        self._denied_ids: set[tuple[int, int]] = set()
        self._trusted: list[tuple[str, str]] = []  # (configured directory, its real path) where they differ

    def refresh(self) -> None:
        """Look again at the secret files and the configured directories (worker thread, each scan)."""
        real, ids = set(), set()
        for path in self._denied_paths:
            real.add(os.path.realpath(path))
            try:
                st = os.stat(path)
            except OSError:
                continue
            ids.add((st.st_dev, st.st_ino))
        self._denied_real, self._denied_ids = real, ids
        trusted = []
        for pattern in self.patterns.paths:
            prefix = fixed_prefix(pattern)
            resolved = os.path.realpath(prefix)
            if resolved != prefix:
                trusted.append((prefix, resolved))
        self._trusted = trusted

    def open(self, path: str) -> int:
        """A read-only descriptor of ``path``; raises Refused, or OSError as ``os.open`` would."""
        probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            st = os.fstat(probe)
            real = _real_path(probe, path)
            self._check(path, real, st)
            try:
                return os.open(f"/proc/self/fd/{probe}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except FileNotFoundError:  # no /proc mounted: the name, checked again after the open
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
                again = os.fstat(fd)
                if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                    os.close(fd)
                    raise Refused("symlink_outside", f"{path} changed while it was checked; not read") from None
                return fd
        finally:
            os.close(probe)

    def check_type(self, path: str, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
            raise Refused("not_regular", f"{path} is a {kind}, not a regular file; never opened")

    def _check(self, path: str, real: str, st: os.stat_result) -> None:
        self.check_type(path, st)
        via = f"{path} (-> {real})" if real != path else path
        if any(real == root or real.startswith(root + "/") for root in self._roots):
            raise Refused("system", f"{via} is under {', '.join(SYSTEM_ROOTS)}; never read")
        if real in self._denied_real or (st.st_dev, st.st_ino) in self._denied_ids:
            raise Refused("secret", f"{via} is one of the agent's configuration or secret files; never read")
        if real != path and not self._inside(real):
            raise Refused(
                "symlink_outside",
                f"{via}: a symlink to a file outside the paths globs; not followed (see follow_symlinks_to)",
            )

    def _inside(self, real: str) -> bool:
        """Is a symlink's target one the configuration asks for?"""
        candidates = [real]
        for prefix, resolved in self._trusted:
            if real.startswith(resolved.rstrip("/") + "/"):
                candidates.append(prefix.rstrip("/") + real[len(resolved.rstrip("/")) :])
        return any(self.patterns.matches(c) or any(r.match(c) for r in self._allow) for c in candidates)


def _real_path(fd: int, path: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "directory",
}
