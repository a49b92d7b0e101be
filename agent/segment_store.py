"""The disk buffer's files, as its worker thread sees them: the segment being written,
the read position ("cursor"), reading a record back, deleting delivered segments.

:class:`SegmentStore` is the file side of ``agent.buffer.DiskQueue`` (which keeps
the index of queued records, the cache and the counts, on the event loop). Every
method here blocks, and the queue calls each one on its own worker thread, never
on the event loop. A write that fails part way is cut off again so the segment
stays valid; a directory deleted under the agent is made again.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Protocol

from agent.segment_files import (
    CURSOR,
    NotRegularFile,
    open_regular,
    remove,
    segment_number,
    segment_path,
    write_cursor,
)
from agent.segments import HEADER, Ref, header, parse_at

log = logging.getLogger("hostwatch.buffer")

# a buffer directory the agent may not write to: a setup error, said at start
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


class Decoder(Protocol):
    """What reads a record's payload back into its items (a ``msgspec.msgpack.Decoder(list[...])``,
    or ``agent.stored_records.LogRecordsDecoder``); raises ``msgspec.DecodeError`` on bad bytes."""

    def decode(self, buffer: Any) -> list[Any]: ...


class BufferUnavailable(OSError):
    """The disk buffer's directory cannot be used at all (read-only, not a directory)."""

    def __str__(self) -> str:
        return str(self.args[-1])


class SegmentStore:
    """The segment files under ``directory``; see the module docstring."""

    def __init__(self, directory: Path, *, fsync: str, segment_bytes: int, decoder: Decoder) -> None:
        self.directory = directory
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._decoder = decoder
        self._write_segment = 0
        self._write_fd: int | None = None
        self._write_size = 0
        self._last_fsync = 0.0
        self._cursor_fd: int | None = None
        self._short_of_space = False  # a write failed: reclaim delivered space eagerly from now on
        self._said: set[str] = set()  # problems logged once

    def _segment_path(self, number: int) -> Path:
        return segment_path(self.directory, number)

    def _segment_numbers(self) -> list[int]:
        return sorted(n for path in self.directory.iterdir() if (n := segment_number(path)) is not None)

    def _open_first_write_segment(self) -> None:
        """Open the segment to write now, so a buffer that can never be written is said at start."""
        try:
            self._roll_sync()
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise BufferUnavailable(
                    exc.errno,
                    f"disk buffer {self.directory} is not writable ({exc.strerror}); "
                    'make it writable or set buffer = "memory" for this output',
                ) from exc
            # a full disk may have room later: writes try again (and count what they cannot write)
            log.warning("buffer %s: cannot open a segment to write yet: %s", self.directory, exc.strerror or exc)

    def _append_sync(self, payload: bytes, items: int, created_ns: int) -> Ref:
        if self._write_fd is None or self._write_size >= self.segment_bytes:
            self._roll_sync()
        head = header(payload, items, created_ns)
        offset = self._write_size
        try:
            self._write_all(head, payload)
            self._sync_if_due()
        except OSError:
            # a partial write (ENOSPC) leaves a torn record: cut it so the segment stays valid
            try:
                os.ftruncate(self._write_fd, offset)
            except OSError:  # the torn bytes stay: go on in a new segment, so offsets stay true
                self._close_write_segment()
            raise
        length = len(head) + len(payload)
        self._write_size += length
        return Ref(self._write_segment, offset, length, items, (created_ns // 1_000_000) * 1_000_000)

    def _reclaim_and_append_sync(self, error: OSError, payload: bytes, items: int, created_ns: int) -> Ref:
        """Called when every record written is retired: every segment can go, then write again."""
        freed = [n for n in self._segment_numbers() if n < self._write_segment]
        if self._write_fd is not None and self._write_size:
            freed.append(self._write_segment)
            self._close_write_segment()
        if not freed:
            raise error  # nothing to give back
        for number in freed:
            self._remove(self._segment_path(number))
        log.info(
            "buffer %s: a write failed (%s) with every record delivered; %d delivered segment(s) deleted to make room",
            self.directory,
            error.strerror or error,
            len(freed),
        )
        return self._append_sync(payload, items, created_ns)

    def _write_all(self, *chunks: bytes) -> None:
        """Unbuffered, so a failed write leaves nothing behind to fail again at close. The
        chunks (a record's header and payload) go in one call, not joined first: a batch's
        payload is megabytes, and joining costs a copy and a transient allocation."""
        written = os.writev(self._write_fd, chunks)
        if written < sum(map(len, chunks)):  # a short write (rare): the rest one piece at a time
            view = memoryview(b"".join(chunks))[written:]
            while view:
                view = view[os.write(self._write_fd, view) :]

    def _sync_if_due(self) -> None:
        if self.fsync == "batch":
            os.fsync(self._write_fd)
        elif self.fsync == "interval" and time.monotonic() - self._last_fsync >= 1.0:
            os.fsync(self._write_fd)
            self._last_fsync = time.monotonic()

    def _close_write_segment(self) -> None:
        """Done with the segment being written: the next write opens the next one."""
        fd, self._write_fd = self._write_fd, None
        self._write_segment += 1
        self._write_size = 0
        if fd is not None:
            os.close(fd)

    def _roll_sync(self) -> None:
        if self._write_fd is not None:
            self._close_write_segment()
        path = self._segment_path(self._write_segment)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            self._write_fd = open_regular(path, flags)
        except FileNotFoundError:  # the directory itself was deleted (a clean-up of state_dir)
            log.error("buffer %s: the directory is gone; made again", self.directory)
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._cursor_fd is not None:  # the cursor went with it: write a new one
                fd, self._cursor_fd = self._cursor_fd, None
                os.close(fd)
            self._write_fd = open_regular(path, flags)
        self._write_size = os.fstat(self._write_fd).st_size

    def _read_sync(self, ref: Ref) -> list[Any]:
        path = self._segment_path(ref.segment)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise NotRegularFile(path, mode)
            data = os.pread(fd, ref.length, ref.offset)
        finally:
            os.close(fd)
        if parse_at(data, 0, ref.segment) is None:
            raise ValueError("checksum mismatch")
        return self._decoder.decode(memoryview(data)[HEADER.size :])

    def _commit_sync(self, position: tuple[int, int], drained: bool) -> None:
        if drained and self._short_of_space and self._write_size and position == self._write_end():
            # a disk that was full once: a delivered write segment goes now, not only when a
            # write fails, which may be while a batch is in flight (and cost that write)
            self._close_write_segment()
        if drained and position[0] < self._write_segment:
            # every record indexed is retired, and an append not yet indexed is in the write
            # segment: the segments before it (a replay's, the last rolled one) are all delivered
            position = (self._write_segment, 0)
        failed: OSError | None = None
        try:
            self._write_cursor_sync(position)
        except OSError as exc:
            failed = exc
        # delivered segments go even when the cursor cannot be saved: a stale cursor only
        # replays (duplicates), while keeping them would keep a full disk full
        for number in self._segment_numbers():
            if number < position[0]:
                self._remove(self._segment_path(number))
        if failed is not None:
            raise failed

    def _write_end(self) -> tuple[int, int]:
        return (self._write_segment, self._write_size)

    def _write_cursor_sync(self, position: tuple[int, int]) -> None:
        if self._cursor_fd is None:
            self._cursor_fd = open_regular(self.directory / CURSOR, os.O_RDWR | os.O_CREAT)
        write_cursor(self._cursor_fd, position)

    def _remove(self, path: Path) -> None:
        try:
            remove(path)
        except OSError as exc:
            self._say(f"remove:{exc.errno}", "cannot delete delivered segment %s: %s", path.name, exc.strerror)

    def _say(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.error("buffer %s: " + message + " (said once)", self.directory, *args)

    def _close_files_sync(self) -> None:
        for fd in (self._write_fd, self._cursor_fd):
            if fd is None:
                continue
            try:
                if self.fsync != "never":
                    os.fsync(fd)
            except OSError as exc:  # the data is written; only its flush to the device failed
                log.error("buffer %s: fsync at close failed: %s", self.directory, exc.strerror or exc)
            finally:
                os.close(fd)
        self._write_fd = self._cursor_fd = None
