"""Reading one cgroup v2 directory's interface files, cheaply and without raising.

Files are opened relative to a descriptor of the cgroup directory (no path walk per
file) with plain ``os`` calls: at a few hundred cgroups per run, the per-file cost of
``pathlib`` and buffered I/O is most of the collector's.

A file that does not exist is not a problem: interface files appear only for the
controllers enabled for the cgroup (the root cgroup has few), and pressure files answer
EOPNOTSUPP with PSI off. Such names go into ``absent``, which a caller may keep between
runs to skip them. Any other failure, and malformed content, is collected in
``problems`` as ``(file, message)``: "cannot read: ..." or "skipped N malformed line(s) ...".
"""

from __future__ import annotations

import errno
import os

_ABSENT = frozenset({errno.ENOENT, errno.EOPNOTSUPP, errno.ENODEV})
_CHUNK = 65536
NO_LIMIT = 1 << 62  # cAdvisor's specMemoryValue: bigger limits mean "none" and export as 0


class CgroupFiles:
    """The interface files of one cgroup directory, open through a directory descriptor."""

    __slots__ = ("absent", "fd", "missing", "problems")

    def __init__(self, directory: str, absent: set[str]) -> None:
        # raises OSError (ENOENT: the cgroup is gone) for the caller to classify
        self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.absent = absent
        self.missing = False  # a file found absent this time that was not known to be
        self.problems: list[tuple[str, str]] = []  # (file name, what went wrong)

    def close(self) -> None:
        os.close(self.fd)

    def text(self, name: str) -> str | None:
        if name in self.absent:
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                data = os.read(fd, _CHUNK)
                if len(data) == _CHUNK:  # only cgroup.procs of a crowded cgroup gets here
                    parts = [data]
                    while chunk := os.read(fd, _CHUNK):
                        parts.append(chunk)
                    data = b"".join(parts)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in _ABSENT:
                self.absent.add(name)
                self.missing = True
            else:
                self.problems.append((name, f"cannot read: {exc.strerror or exc}"))
            return None
        return data.decode("ascii", "replace")

    def malformed(self, name: str, bad: int, first: str) -> None:
        self.problems.append((name, f"skipped {bad} malformed line(s), first: {first[:80]!r}"))

    def number(self, name: str, *, limit: bool = False) -> int | None:
        """A one-value file; with ``limit``, ``max`` (no limit) reads as 0, as cAdvisor exports it."""
        text = self.text(name)
        if text is None:
            return None
        value = text.strip()
        if limit and value == "max":
            return 0
        if not value.isdigit():
            self.malformed(name, 1, value)
            return None
        return 0 if limit and int(value) > NO_LIMIT else int(value)

    def keyed(self, name: str, wanted: frozenset[str]) -> dict[str, int]:
        """The ``wanted`` keys of a flat-keyed file (``key value`` lines: cpu.stat, memory.stat ...)."""
        text = self.text(name)
        if not text:
            return {}
        tokens = text.split()
        if len(tokens) == 2 * text.count("\n"):  # two fields a line (the usual case): no per-line work
            pairs = iter(tokens)
            every = dict(zip(pairs, pairs, strict=True))
            values = {key: every[key] for key in wanted if key in every}
            if all(value.isdigit() for value in values.values()):
                return {key: int(value) for key, value in values.items()}
        found: dict[str, int] = {}
        bad, first = 0, ""
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if value.isdigit():
                if key in wanted:
                    found[key] = int(value)
            elif line.strip():
                bad, first = bad + 1, first or line
        if bad:
            self.malformed(name, bad, first)
        return found
