"""Small state files a plugin keeps across restarts (a checkpoint, a cursor): replaced
atomically, and set aside when they cannot be read back.

A shared service for plugins (like :mod:`agent.sysfs`, a plugin may import it). Blocking:
call these off the event loop. Imports nothing from the project.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash or power loss leaves the old file or
    the new one, never a torn one: a temporary file beside it, fsync, rename, fsync of the
    directory (the rename itself is durable only then). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def set_aside(path: Path) -> str:
    """Rename a file that does not parse to ``<name>.corrupt-<time>``, kept for a person to
    look at and out of the next start's way; returns what happened, for the report."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        os.replace(path, aside)
    except OSError as exc:
        return f"could not be moved aside ({exc.strerror})"
    return f"moved to {aside.name}"
