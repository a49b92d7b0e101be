"""Reading /sys and /proc files the way node_exporter (procfs ``util``) reads them.

A shared service for collectors (like :mod:`agent.model` and :mod:`agent.plugin`, a plugin
may import it): the node_exporter ports read attributes, list directories and parse
numbers the same way, and plugins never import each other. Blocking: call these from
``run_blocking``, never on the event loop. Imports nothing from the project.
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
    """One ``read`` of a sysfs attribute, whitespace trimmed (procfs ``SysReadFile``).

    A single read (no retry loop): some drivers answer EAGAIN forever.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)


def read_raw(path: str) -> bytes:
    """:func:`read_attr` without decoding: the bytes, ASCII whitespace trimmed (numbers)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).strip()
    finally:
        os.close(fd)


def read_bytes(path: str | os.PathLike) -> bytes:
    """A whole file (a /proc table), as bytes: ``os.read`` skips the buffered-file layers, a third
    of the cost of reading a /proc file through ``open``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    """A whole file (a /proc table), undecodable bytes replaced."""
    with open(path, "rb", buffering=0) as f:
        return f.read().decode("utf-8", "replace")


def list_dir(path: str) -> list[str]:
    """Entry names, sorted as Go's ``os.ReadDir`` returns them."""
    return sorted(os.listdir(path))


def numbered(directory: str, prefix: str) -> list[tuple[str, str]]:
    """(suffix, path) of the entries of ``directory`` named ``<prefix><digit>...``, sorted: what Go's
    ``filepath.Glob(directory + "/<prefix>[0-9]*")`` finds, without glob's pattern machinery (a third of
    the cost of a run that finds nothing). Empty when the directory cannot be listed, as Glob."""
    return numbered_groups(directory, prefix)[0]


def numbered_groups(directory: str, *prefixes: str) -> list[list[tuple[str, str]]]:
    """:func:`numbered` for each of ``prefixes``, from one listing of ``directory`` (``thermal_zone``
    and ``cooling_device`` share /sys/class/thermal: a listing less per run)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return [[] for _ in prefixes]
    groups = []
    for prefix in prefixes:
        start = len(prefix)
        groups.append(
            [
                (name[start:], f"{directory}/{name}")
                for name in names
                if name.startswith(prefix) and len(name) > start and name[start] in _DIGITS
            ]
        )
    return groups


_DIGITS = frozenset("0123456789")


def entries(directory: str, containing: str = "", below: str = "") -> list[str]:
    """Sorted ``<directory>/<name><below>`` paths, as ``glob.glob(f"{directory}/*{containing}*{below}")``
    finds them (hidden names left out; with ``below``, only where that path exists), without glob's
    pattern machinery: most runs find nothing, and glob was most of their cost."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []  # no such directory (module not loaded), as glob
    paths = [f"{directory}/{name}{below}" for name in names if name[:1] != "." and containing in name]
    return [path for path in paths if os.path.lexists(path)] if below else paths


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


def parse_uint(text: str) -> int:
    """Go's ``strconv.ParseUint(s, 10, 64)``: decimal digits only, no sign, no spaces."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"not an unsigned integer: {text!r}")
    value = int(text)
    if value >= 1 << 64:
        raise ValueError(f"out of range: {text!r}")
    return value


def parse_uint32(text: str) -> int:
    """:func:`parse_uint` limited to 32 bits (``strconv.ParseUint(s, 10, 32)``)."""
    value = parse_uint(text)
    if value >= 1 << 32:
        raise ValueError(f"out of range for 32 bits: {text!r}")
    return value
