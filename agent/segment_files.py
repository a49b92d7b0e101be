"""The disk buffer's directory: careful file access, and what it holds at start.

The directory may hold anything an operator, a full disk or an attacker left there:
a segment or the cursor may be a directory, a FIFO (opening it for reading blocks),
a device or a symlink. :func:`read_regular` reads only regular files and never
follows a symlink; :func:`open_regular` opens or creates one the same way;
:func:`set_aside` renames what is in the way to ``<name>.corrupt``, so the agent
keeps going and the operator can look at it. :func:`recover` reads the cursor and
indexes every segment after it, counting (never stopping at) what it cannot read.
All of these block: the queue calls them on its worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from agent.segments import Damage, Ref, scan

log = logging.getLogger("hostwatch.buffer")

CURSOR = "cursor"
_MAX_NAME_DIGITS = 19  # a segment number is persisted as u64 in the cursor


class NotRegularFile(OSError):
    def __init__(self, path: Path, mode: int) -> None:
        kind = "directory" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "special file"
        super().__init__(errno.EINVAL, f"is a {kind}, not a regular file", str(path))


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:010d}.seg"


def segment_number(path: Path) -> int | None:
    """The number in a segment's name (``0000000042.seg``), None for any other name."""
    stem = path.stem
    if path.suffix != ".seg" or not (stem.isascii() and stem.isdigit()) or len(stem) > _MAX_NAME_DIGITS:
        return None
    return int(stem)


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file; never follows a symlink, never blocks on a FIFO."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped between lstat and open
            raise NotRegularFile(path, mode)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def open_regular(path: Path, flags: int) -> int:
    """Open (or create) a regular file of ours; whatever else is in the way is set aside first."""
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(2):
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                fd = os.open(path, flags, 0o600)
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    return fd
                os.close(fd)  # swapped between lstat and open
        except FileNotFoundError:
            return os.open(path, flags, 0o600)
        aside = set_aside(path)
        log.error("buffer %s: %s is not a regular file; set aside as %s", path.parent, path.name, aside)
    raise NotRegularFile(path, os.lstat(path).st_mode)


def set_aside(path: Path) -> Path | None:
    """Rename ``path`` to ``<name>.corrupt`` (``.corrupt.N`` when taken); None if that fails."""
    for n in range(100):
        target = path.with_name(f"{path.name}.corrupt" + (f".{n}" if n else ""))
        if os.path.lexists(target):
            continue
        try:
            os.rename(path, target)
        except OSError:
            return None
        return target
    return None


def remove(path: Path) -> None:
    """Delete a segment; a directory in its place is set aside. Other errors are raised."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # not ours, and in the way of the numbering
        set_aside(path)


def write_cursor(fd: int, position: tuple[int, int]) -> None:
    # overwritten in place: 20 bytes in an existing block need no free space
    body = struct.pack("<QQ", *position)
    os.pwrite(fd, body + struct.pack("<I", zlib.crc32(body)), 0)


# ------------------------------------------------------------------ at start


@dataclass
class Recovered:
    """What a buffer directory holds at start."""

    refs: list[Ref] = field(default_factory=list)
    retired_until: tuple[int, int] = (0, 0)
    write_segment: int = 1
    corrupt_records: int = 0
    corrupt_items: int = 0


def recover(directory: Path, numbers: list[int]) -> Recovered:
    """Index the intact records after the cursor in segments ``numbers``; count and set aside
    the rest; delete segments with nothing left to deliver (space a full disk needs)."""
    cursor_segment, cursor_offset = _read_cursor(directory)
    found = Recovered(retired_until=(cursor_segment, cursor_offset))
    damaged: list[tuple[str, Damage]] = []
    for number in numbers:
        path = segment_path(directory, number)
        if number < cursor_segment:
            _remove_quietly(path)  # retired before a crash
            continue
        start = cursor_offset if number == cursor_segment else 0
        damage = _scan_segment(path, number, start, is_last=number == numbers[-1], into=found.refs)
        if damage.records:
            damaged.append((path.name, damage))
    found.write_segment = (numbers[-1] + 1) if numbers else max(cursor_segment, 1)
    _account(directory, damaged, found)
    first_needed = found.refs[0].segment if found.refs else found.write_segment
    for number in numbers:
        if cursor_segment <= number < first_needed:  # all retired, or only damage
            _remove_quietly(segment_path(directory, number))
    return found


def _read_cursor(directory: Path) -> tuple[int, int]:
    path = directory / CURSOR
    try:
        raw = read_regular(path)
    except FileNotFoundError:
        return 0, 0
    except OSError as exc:
        aside = set_aside(path) if isinstance(exc, NotRegularFile) or exc.errno == errno.ELOOP else None
        log.error(
            "buffer %s: unreadable cursor (%s)%s; replaying from the oldest segment",
            directory,
            exc.strerror or exc,
            f", set aside as {aside.name}" if aside else "",
        )
        return 0, 0
    try:
        segment, offset, crc = struct.unpack_from("<QQI", raw)
        if zlib.crc32(raw[:16]) != crc:
            raise ValueError("checksum mismatch")
    except (struct.error, ValueError) as exc:
        log.error("buffer %s: damaged cursor (%s): replaying from the oldest segment", directory, exc)
        return 0, 0
    return segment, offset


def _scan_segment(path: Path, number: int, start: int, *, is_last: bool, into: list[Ref]) -> Damage:
    try:
        data = read_regular(path)
    except OSError as exc:
        return _unreadable_segment(path, exc)
    refs, damage, good_end = scan(data, start, number)
    into.extend(refs)
    if damage.records and good_end < len(data) and is_last:
        try:  # cut the torn tail, so it is not counted again at the next start
            with open(path, "r+b") as f:
                f.truncate(good_end)
        except OSError as exc:
            log.warning("buffer %s: cannot cut the torn tail of %s: %s", path.parent, path.name, exc)
    return damage


def _unreadable_segment(path: Path, exc: OSError) -> Damage:
    """A segment that vanished, or that is not a readable file: set aside, counted, and on we go."""
    size, aside = 0, None
    if not isinstance(exc, FileNotFoundError):
        try:
            st = os.lstat(path)
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        except OSError:
            pass
        aside = set_aside(path)
    why = f"cannot be read ({exc.strerror or exc})" + (f", set aside as {aside.name}" if aside else "")
    return Damage(records=1, unknown_records=1, unknown_bytes=size, why=why)


def _account(directory: Path, damaged: list[tuple[str, Damage]], found: Recovered) -> None:
    """Count the damage; items behind damaged headers are estimated at the intact records' size per item."""
    intact_items = sum(ref.items for ref in found.refs)
    per_item = sum(ref.length for ref in found.refs) / intact_items if intact_items else 0.0
    for name, damage in damaged:
        guessed = damage.unknown_records
        if damage.unknown_bytes and per_item:
            guessed = max(guessed, round(damage.unknown_bytes / per_item))
        items = damage.items + guessed
        found.corrupt_records += damage.records
        found.corrupt_items += items
        log.error(
            "buffer %s: segment %s %s: %d record(s) holding %d item(s)%s are lost and counted; "
            "delivery goes on with the intact records",
            directory,
            name,
            damage.why,
            damage.records,
            items,
            f" ({guessed} estimated from the size)" if damage.unknown_records else "",
        )


def _remove_quietly(path: Path) -> None:
    try:
        remove(path)
    except OSError as exc:  # retried after the next delivered batch
        log.warning("buffer %s: cannot delete %s: %s", path.parent, path.name, exc.strerror or exc)
