"""Reading /proc and /sys files the way node_exporter (procfs) reads them.

Kept inside this folder on purpose: plugins never import each other.
"""

from __future__ import annotations

import os


def read_text(path: str) -> str:
    with open(path, "rb", buffering=0) as f:
        return f.read().decode("utf-8", "replace")


def read_attr(path: str) -> str:
    """One ``read`` of a sysfs attribute, whitespace trimmed (procfs ``SysReadFile``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)


def parse_uint(text: str) -> int:
    """Go's ``strconv.ParseUint(s, 10, 64)``: decimal digits only, no sign, no spaces."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"not an unsigned integer: {text!r}")
    value = int(text)
    if value >= 1 << 64:
        raise ValueError(f"out of range: {text!r}")
    return value


def parse_uint32(text: str) -> int:
    value = parse_uint(text)
    if value >= 1 << 32:
        raise ValueError(f"out of range for 32 bits: {text!r}")
    return value


def list_dir(path: str) -> list[str]:
    """Entry names, sorted as Go's ``os.ReadDir`` returns them."""
    return sorted(os.listdir(path))


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
