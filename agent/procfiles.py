"""Reading /proc and /sys files through descriptors kept open from one run to the next.

Opening a sysfs attribute or a /proc file costs more than reading it (a path walk, a
kernfs or seq_file open, then a close): about 5 µs of kernel time against 2 for the read.
A read at offset 0 makes the kernel generate the content again (seq_file starts over at
offset 0, sysfs calls the attribute's ``show``), so a kept descriptor gives fresh values.
A descriptor whose file went away (its device was removed) answers ENODEV: it is closed
and the path opened again, which finds the new device of that name or nothing.

A /proc table (a seq_file) hands out whole lines, at most a page of them per read, so a
read that returned less than asked is not the end of it: one more read finds the end.
That read is cheap for most files, but for a table the kernel walks from the start on
every read (``/proc/net/udp`` walks the whole UDP socket hash table, empty or not) it
costs as much again. A caller that knows how long the table's lines can be says so
(``record``): a first read that left room for another line in its page is the whole table.
Most of /proc's small files (``stat``, ``meminfo``, ``loadavg``, ``net/snmp``,
``net/netstat``, ``net/sockstat``, ``pressure/*``) are printed in one go (``single_open``:
the kernel makes the whole text, then hands out what was asked): for those
(``in_one_go``) a read that returned less than asked is all of it.

Only files of the /proc and /sys mounts are kept open.

:class:`TokenLayout` is the other half of a cheap read: a file's layout, kept from one read
to the next, so that its numbers are picked by position instead of parsed line by line. A file on a disk (a fixture
tree, a ``proc_root`` copied somewhere) may be replaced by a rename, and a kept
descriptor would go on reading the old one: those are opened for every read.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from operator import itemgetter

# The file behind a kept descriptor is gone (sysfs: ENODEV; a /proc/PID file: ESRCH).
_STALE = frozenset((errno.ENODEV, errno.ESRCH, errno.ENXIO, errno.ESTALE))
# A seq_file's buffer is at least a page (4 KiB, more on machines with larger pages), and
# a read fills it with whole lines until the next would not fit: one that stopped earlier
# than a line's length before the page's end stopped at the end of the table.
_PAGE = 4096


class KeptFiles:
    """Reads files by path, keeping up to ``limit`` descriptors open between runs.

    Used from one thread at a time (a collector's worker). Call :meth:`sweep` once per
    run: it closes the descriptors that run did not read (devices that went away, parts
    switched off), so their number follows what is read. Past ``limit`` a file is opened
    for each read, as without this class: a host with hundreds of interfaces does not spend
    its descriptors (the log tailer needs them) on sysfs attributes. :meth:`close` releases
    everything.
    """

    __slots__ = ("_devices", "_fds", "_limit", "_roots", "_run")

    def __init__(self, limit: int = 128, kernel_roots: tuple[str, ...] = ("/proc", "/sys")) -> None:
        self._fds: dict[str, list[int]] = {}  # path -> [fd, run that last read it]
        self._limit = limit
        self._run = 0
        self._devices: frozenset[int] | None = None  # st_dev of kernel_roots, looked up at first use
        self._roots = kernel_roots

    def read(self, path: str, size: int = 4096, record: int = 0, in_one_go: bool = False) -> bytes:
        """The whole file. ``size`` is the expected size: one read of that many bytes is
        enough for a sysfs attribute (at most a page), more reads follow until end of file.
        ``record``: the longest line the file can hold (a /proc table), so that a first read
        ending more than that before a page's end is known to be the whole file.
        ``in_one_go``: the kernel prints the file in one go, so a read shorter than ``size``
        is the whole file."""
        kept = self._fds.get(path)
        if kept is None:
            return self._first_read(path, size, record, in_one_go)
        kept[1] = self._run
        try:
            return _read_all(kept[0], size, record, in_one_go)
        except OSError as exc:
            if exc.errno not in _STALE:
                raise
        self._drop(path)
        return self._first_read(path, size, record, in_one_go)

    def chunks(self, path: str, record: int, size: int = 65536) -> Iterator[bytes]:
        """The file in pieces (lines may be cut between two), for a /proc table that can be
        megabytes (a busy host's sockets) and is parsed as it comes: the first piece is a page,
        the whole table when it left room for another ``record``-byte line; then up to ``size``
        bytes each. A descriptor that went stale before the first piece is opened again."""
        kept = self._fds.get(path)
        fd = None
        if kept is not None:
            kept[1] = self._run
            try:
                data = os.pread(kept[0], _PAGE, 0)
                fd = kept[0]
            except OSError as exc:
                if exc.errno not in _STALE:
                    raise
                self._drop(path)
        if fd is None:
            fd = self._open(path)
            try:
                data = os.pread(fd, _PAGE, 0)
            except BaseException:
                os.close(fd)
                raise
            if not self._keep(path, fd):  # a file on a disk, or past the limit: read on, then close
                yield from _pieces(fd, data, record, size, close=True)
                return
        yield from _pieces(fd, data, record, size, close=False)

    def read_once(self, path: str) -> bytes:
        """One read of at most a page (a sysfs attribute): no second read to find the end."""
        kept = self._fds.get(path)
        if kept is not None:
            kept[1] = self._run
            try:
                return os.pread(kept[0], 4096, 0)
            except OSError as exc:
                if exc.errno not in _STALE:
                    raise
            self._drop(path)
        fd = self._open(path)
        try:
            return os.pread(fd, 4096, 0)
        finally:
            self._keep_or_close(path, fd)

    def sweep(self) -> None:
        """End of a run: close what the run did not read."""
        run = self._run
        for path in [path for path, kept in self._fds.items() if kept[1] != run]:
            self._drop(path)
        self._run = run + 1

    def close(self) -> None:
        for path in list(self._fds):
            self._drop(path)

    def __len__(self) -> int:
        return len(self._fds)

    def _first_read(self, path: str, size: int, record: int = 0, in_one_go: bool = False) -> bytes:
        fd = self._open(path)
        try:
            return _read_all(fd, size, record, in_one_go)
        finally:
            self._keep_or_close(path, fd)

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def _keep_or_close(self, path: str, fd: int) -> None:
        if not self._keep(path, fd):
            os.close(fd)

    def _keep(self, path: str, fd: int) -> bool:
        """Keep ``fd`` for ``path`` if it is a kernel file and the limit allows; True if kept."""
        if len(self._fds) < self._limit and os.fstat(fd).st_dev in self._kernel_devices():
            self._fds[path] = [fd, self._run]
            return True
        return False

    def _kernel_devices(self) -> frozenset[int]:
        if self._devices is None:
            devices = set()
            for root in self._roots:
                try:
                    devices.add(os.stat(root).st_dev)
                except OSError:
                    pass  # no /sys in this container: nothing of it to keep
            self._devices = frozenset(devices)
        return self._devices

    def _drop(self, path: str) -> None:
        kept = self._fds.pop(path, None)
        if kept is not None:
            os.close(kept[0])


def _read_all(fd: int, size: int, record: int = 0, in_one_go: bool = False) -> bytes:
    # A seq_file hands out at most its buffer (a page or so) per read however much is asked,
    # so a short read is not the end: read on until a read returns nothing, unless the file
    # is printed in one go or its lines are known to be short enough that another would have fit.
    data = os.pread(fd, size, 0)
    if not data or (len(data) < size and (in_one_go or (record and len(data) + record < _PAGE))):
        return data
    chunks = [data]
    offset = len(data)
    while True:
        more = os.pread(fd, max(size, 4096), offset)
        if not more:
            return b"".join(chunks) if len(chunks) > 1 else data
        chunks.append(more)
        offset += len(more)


def _pieces(fd: int, first: bytes, record: int, size: int, *, close: bool) -> Iterator[bytes]:
    """``first`` (read at offset 0), then the rest of the file from ``fd``; ``close``: fd is ours."""
    try:
        if not first:
            return
        yield first
        if len(first) + record < _PAGE:
            return
        offset = len(first)
        while more := os.pread(fd, size, offset):
            yield more
            offset += len(more)
    finally:
        if close:
            os.close(fd)


class TokenLayout:
    """Where a /proc file's numbers sit among its tokens (``text.split()``), as a collector's line
    parser found them, so that the next read of a file laid out the same is not parsed line by line.

    The layout holds the positions of the numbers the collector reads, and every other token that
    is not an integer (the field names, ``kB``, ``Tcp:`` ...) as it was. A later read matches when
    it has as many lines and tokens and the same words at the same places: its numbers are then
    where they were, picked with one ``itemgetter`` and converted with one ``map`` (a kernel's
    files keep their layout while it runs; a new field or a malformed line breaks the match and
    the collector parses that read line by line, reporting what it finds, and lays it out anew).
    """

    __slots__ = ("_count", "_lines", "_numbers_at", "_word_at", "_words")

    def __init__(self, tokens: list, lines: int, numbers: list[int]) -> None:
        """``numbers``: the positions, in ``tokens``, of the numbers the collector reads, in its order."""
        read = set(numbers)
        words = [i for i, token in enumerate(tokens) if i not in read and not _is_integer(token)]
        self._count, self._lines = len(tokens), lines
        self._word_at, self._words = _getter(words), tuple(tokens[i] for i in words)
        self._numbers_at = _getter(numbers)

    def numbers(self, tokens: list, lines: int, convert: Callable = int) -> list | None:
        """The numbers of a read laid out the same (``lines``: its count of newlines), each through
        ``convert`` (``int``, or ``float`` where the line parser reads floats); None when the read is
        laid out otherwise or ``convert`` refuses one of them."""
        if len(tokens) != self._count or lines != self._lines or self._word_at(tokens) != self._words:
            return None
        try:
            return list(map(convert, self._numbers_at(tokens)))
        except ValueError:
            return None


def _is_integer(token: str | bytes) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _getter(positions: list[int]) -> Callable[[list], tuple]:
    """``itemgetter(*positions)``, always answering a tuple (itemgetter of one position answers the item)."""
    if len(positions) > 1:
        return itemgetter(*positions)
    if positions:
        at = positions[0]
        return lambda items: (items[at],)
    return lambda items: ()
