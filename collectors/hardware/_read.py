"""Reading /sys and /proc files the way node_exporter (procfs ``util``) reads them.

Kept inside this folder on purpose: plugins never import each other.
"""

from __future__ import annotations

import errno
import os

# A sysfs attribute the driver does not implement, or cannot report in the
# device's current state (speed or carrier of a down link: EINVAL), or that only
# root may read: node_exporter leaves the series out and reports nothing.
ABSENT = frozenset((errno.ENOENT, errno.EACCES, errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL, errno.ENODATA))
# The device or file went away between listing and reading.
GONE = frozenset((errno.ENOENT, errno.ENODEV, errno.ENXIO))


def read_attr(path: str) -> str:
    """One ``read`` of a sysfs attribute, whitespace trimmed.

    A single read (no retry loop): some drivers answer EAGAIN forever.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    with open(path, "rb", buffering=0) as f:
        return f.read().decode("utf-8", "replace")


def parse_int(text: str) -> int:
    """An integer as Go's ``strconv.ParseInt(s, 0, 64)`` reads it: ``0x`` hex, a leading ``0`` octal."""
    try:
        return int(text, 0)
    except ValueError:
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits[0] == "0" and digits.isdigit():
            value = int(digits, 8)
            return -value if text.startswith("-") else value
        raise


def list_dir(path: str) -> list[str]:
    """Entry names, sorted as Go's ``os.ReadDir`` returns them."""
    return sorted(os.listdir(path))


def numbered(directory: str, prefix: str) -> list[tuple[str, str]]:
    """(suffix, path) of the entries of ``directory`` named ``<prefix><digit>...``, sorted: what Go's
    ``filepath.Glob(directory + "/<prefix>[0-9]*")`` finds, without glob's pattern machinery (a third of
    the cost of a run that finds nothing). None when the directory cannot be listed, as Glob."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    start = len(prefix)
    return [
        (name[start:], f"{directory}/{name}")
        for name in sorted(names)
        if name.startswith(prefix) and len(name) > start and name[start] in _DIGITS
    ]


_DIGITS = frozenset("0123456789")
