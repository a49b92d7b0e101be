"""Listing the cgroups of systemd units: every ``*.slice`` is descended into, nothing else.

systemd puts each unit's processes in a cgroup named after the unit, inside the cgroup
of its slice (``/system.slice/nginx.service``,
``/system.slice/system-getty.slice/getty@tty1.service``). A service's own sub-cgroups
are the service's business (``user@1000.service``'s user units, a container manager's
containers), so the walk does not enter them. The root cgroup is the ``-.slice`` unit.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from dataclasses import dataclass, field


def unit_name(cgroup: str) -> str:
    """The unit a cgroup path belongs to: its last component, ``-.slice`` for the root."""
    return cgroup.rsplit("/", 1)[-1] or "-.slice"


def glob_matcher(patterns: list[str]) -> re.Pattern[str] | None:
    """One compiled regular expression for shell globs on unit names (case-sensitive)."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)) if patterns else None


@dataclass
class Listing:
    found: list[tuple[str, str, int]] = field(default_factory=list)
    """(cgroup path, unit name, directory inode), depth first in name order."""
    vanished: int = 0
    """Slices that went away while being listed (units stopping)."""
    problems: list[str] = field(default_factory=list)


def list_units(mount: str, start: str, include: re.Pattern[str] | None, exclude: re.Pattern[str] | None) -> Listing:
    """The unit cgroups under ``start`` (itself included) whose names pass include and exclude."""
    listing = Listing()

    def wanted(name: str) -> bool:
        return (include is None or include.match(name) is not None) and (exclude is None or exclude.match(name) is None)

    def visit(cgroup: str) -> None:
        try:
            with os.scandir(mount + cgroup) as entries:
                children = sorted(
                    (entry.name, entry.inode()) for entry in entries if entry.is_dir(follow_symlinks=False)
                )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                listing.vanished += 1
            else:
                listing.problems.append(f"cannot list {mount + cgroup}: {exc.strerror or exc}")
            return
        prefix = cgroup.rstrip("/") + "/"
        for name, inode in children:
            if wanted(name):
                listing.found.append((prefix + name, name, inode))
            if name.endswith(".slice"):
                visit(prefix + name)

    root_name = unit_name(start)
    if wanted(root_name):
        try:
            listing.found.append((start, root_name, os.stat(mount + start).st_ino))
        except OSError as exc:
            listing.problems.append(f"cannot read {mount + start}: {exc.strerror or exc}")
            return listing
    visit(start)
    return listing
