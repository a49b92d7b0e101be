"""The journal position: which cursor every log output durably holds, kept across restarts.

:class:`Ledger` lives on the event loop. Each ``emit.logs`` call is one batch
with the cursor of its last entry; a batch's acknowledgement (``on_durable``)
may come before an earlier one's when outputs differ in speed, so the
committed cursor moves only over the longest run of acknowledged batches from
the oldest: everything before it is durable, and a restart resumes right
after it, sending again at most the batches that were in flight.

:class:`Store` keeps the committed cursor in ``cursor.json`` in the instance's
state directory, written atomically (temporary file, fsync, rename, fsync of
the directory), with the journal directory it belongs to: a cursor of another
journal is not used.
"""

from __future__ import annotations

import collections
from pathlib import Path

import msgspec

from agent.statefile import set_aside, write_atomically

FORMAT_VERSION = 1


class Saved(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    version: int
    cursor: str
    directory: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Saved).decode


class Ledger:
    """Batches in flight, oldest first; loop thread only."""

    def __init__(self, committed: str) -> None:
        self.committed = committed
        self.dirty = False
        self._batches: collections.deque[list] = collections.deque()  # [cursor, acked]

    def sent(self, cursor: str) -> list:
        """A batch ending at ``cursor`` was handed to the pipeline; pass the result to :meth:`acked`."""
        batch = [cursor, False]
        self._batches.append(batch)
        return batch

    def acked(self, batch: list) -> None:
        batch[1] = True
        while self._batches and self._batches[0][1]:
            self.committed = self._batches.popleft()[0]
            self.dirty = True

    @property
    def in_flight(self) -> int:
        return len(self._batches)


class Store:
    """``cursor.json`` in the instance's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "cursor.json"

    def load(self, directory: str) -> tuple[str, str]:
        """The saved cursor for ``directory`` ("" for none), and a problem to report ("" when none)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return "", ""
        except OSError as exc:
            return "", f"cannot read {self.path}: {exc.strerror or exc}; starting without a cursor"
        try:
            saved = _decode(data)
            if saved.version != FORMAT_VERSION:
                raise ValueError(f"unknown format version {saved.version}")
        except (msgspec.DecodeError, ValueError) as exc:
            where = set_aside(self.path)
            return "", f"cursor file {self.path} is corrupt ({exc}); {where}; starting without a cursor"
        if saved.directory != directory:
            where = saved.directory or "the local journal"
            return "", f"the saved cursor belongs to {where}, not this journal: starting without it"
        return saved.cursor, ""

    def save(self, cursor: str, directory: str) -> None:
        """Atomically replace the cursor file. Raises OSError."""
        write_atomically(self.path, _encode(Saved(FORMAT_VERSION, cursor, directory)))
