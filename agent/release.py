"""Telling sources in order: a durable queue's acknowledgements never overtake one another.

A disk buffer may hold a batch in memory while a later one is already written (see
``agent.buffer``). A log file's checkpoint moves to the end of the lines it is told about,
so telling the later batch's sources first would move a checkpoint past lines that are
only in memory. :class:`InOrderRelease` tells each batch's sources (its ``tokens``) once the
batch is safe (on disk, delivered or dropped) and every batch put before it is too.
"""

from __future__ import annotations

import collections
from typing import Any


class InOrderRelease:
    """The batches put whose sources are not told yet, in the order put."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: collections.deque[list[Any]] = collections.deque()  # [batch, safe]

    def put(self, batch: Any, *, safe: bool) -> None:
        """A batch enters the queue: told at once when it is safe and nothing before it waits."""
        if safe and not self._waiting:
            _tell(batch)
        else:
            self._waiting.append([batch, safe])

    def safe(self, batch: Any) -> None:
        """``batch`` is on disk, delivered or dropped (a batch told already is ignored)."""
        waiting = self._waiting
        for entry in waiting:
            if entry[0] is batch:
                entry[1] = True
                break
        while waiting and waiting[0][1]:
            _tell(waiting.popleft()[0])


def _tell(batch: Any) -> None:
    tokens, batch.tokens = batch.tokens, []
    for token in tokens:
        token.done()
