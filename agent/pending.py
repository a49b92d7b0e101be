"""What a lane gathered and has not sealed yet: the items, their sizes, and the sources waiting on them."""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from agent.model import LogRecord, Sample, Span

log = logging.getLogger("hostwatch.delivery")


def item_size(item: Sample | LogRecord | Span) -> int:
    """Approximate encoded size, cheap enough to compute per item."""
    if type(item) is Span:
        return 24 + len(item.span) + len(item.resource) + len(item.scope)
    labels = item.labels
    size = 24 + sum(len(k) + len(v) for k, v in labels) if labels else 24
    if type(item) is Sample:
        return size + len(item.name)
    return size + len(item.body) + (sum(len(k) + len(v) for k, v in item.attributes) if item.attributes else 0)


def item_sizes(items: Sequence[Any]) -> list[int]:
    """``[item_size(i) for i in items]``, with little Python code per log record.

    Records share label tuples (a file's lines share one, for as long as the file is read): a batch
    of one tuple sizes it once; a batch of many (a line of each of many files, at low rates) looks
    each up in :data:`_LABEL_SIZES`, so a record costs about a lookup and a ``len`` of its body.
    """
    if not items or type(items[0]) is not LogRecord:
        return list(map(item_size, items))
    try:
        labels = [r.labels for r in items]
        if labels.count(labels[0]) == len(labels):
            base = _labels_size(labels[0])
            sizes = [base + len(r.body) for r in items]
        else:
            known = _LABEL_SIZES
            if len(known) > _LABEL_SIZES_MAX:
                known.clear()  # bounded: label sets come and go (files rotated away, other sources)
            sizes = []
            for r in items:
                size = known.get(r.labels)
                if size is None:
                    size = known[r.labels] = _labels_size(r.labels)
                sizes.append(size + len(r.body))
        if any([r.attributes for r in items]):
            for i, record in enumerate(items):
                if record.attributes:
                    sizes[i] += sum(len(k) + len(v) for k, v in record.attributes)
    except (AttributeError, TypeError):  # not all of them log records (or labels not as declared)
        return list(map(item_size, items))
    return sizes


_LABEL_SIZES: dict[Any, int] = {}
"""Label tuple -> its share of a record's size, kept across calls (item_sizes)."""
_LABEL_SIZES_MAX = 4096


def _labels_size(labels: Any) -> int:
    """``item_size``'s share for a label tuple: 24, and the length of every name and value."""
    return 24 + sum([len(k) + len(v) for k, v in labels]) if labels else 24


class AckToken:
    """Counts down the lanes that still have to take a source's records durably."""

    __slots__ = ("callback", "remaining")

    def __init__(self, remaining: int, callback: Callable[[], None]) -> None:
        self.remaining = remaining
        self.callback = callback

    def done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            try:
                self.callback()
            except Exception:
                log.exception("acknowledgement callback failed")


class PendingItems:
    """A lane's items not sealed into a batch yet, oldest first.

    Each token is kept with a mark: the number of pending items up to and including
    the ones it covers. A token is done once every item before its mark has left
    (queued durably, delivered, or counted as dropped).
    """

    __slots__ = ("bare_end", "items", "nbytes", "since", "sizes", "tokens")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.sizes: list[int] = []  # item_size of each item, computed once
        self.nbytes = 0
        self.tokens: list[tuple[int, AckToken]] = []
        self.since = 0.0  # when the oldest pending item arrived (monotonic)
        # the items before this mark may hold some added without a token: no source can send those again
        self.bare_end = 0

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def add(self, items: Sequence[Any], sizes: list[int], token: AckToken | None) -> None:
        if not self.items:
            self.since = time.monotonic()
        self.items.extend(items)
        self.sizes += sizes
        self.nbytes += sum(sizes)
        if token is not None:
            self.tokens.append((len(self.items), token))
        elif items:
            self.bare_end = len(self.items)

    def full(self, max_items: int, max_bytes: int) -> bool:
        return len(self.items) >= max_items or self.nbytes >= max_bytes

    def shed(self, target_bytes: int) -> int:
        """Drop the oldest items until at most ``target_bytes`` are left; how many went.

        A token whose items all went stays, marked at 0: it is done with the next batch.
        """
        shed, freed = 0, 0
        for size in self.sizes:
            if self.nbytes - freed <= target_bytes:
                break
            shed += 1
            freed += size
        del self.items[:shed], self.sizes[:shed]
        self.nbytes -= freed
        self.bare_end = max(0, self.bare_end - shed)
        self.tokens = [(max(0, end - shed), token) for end, token in self.tokens]
        return shed

    def cut(self, max_items: int, max_bytes: int) -> tuple[list[Any], int, list[AckToken], bool]:
        """Take the oldest batch's worth: (items, their bytes, the tokens it releases, whether every
        item came with a token: its sources send it again until their tokens are done).

        At most ``max_items``; the byte bound cuts after the last item that still fits,
        but a batch always takes at least one item.
        """
        sizes = self.sizes
        count = min(len(sizes), max_items)
        size = sum(sizes[:count])
        if size > max_bytes and count > 1:
            count = max(1, bisect.bisect_right(list(itertools.accumulate(sizes[:count])), max_bytes))
            size = sum(sizes[:count])
        items, self.items = self.items[:count], self.items[count:]
        self.sizes = sizes[count:]
        self.nbytes -= size
        # the sources whose items are all in this batch or earlier ones are released with it
        tokens = [token for end, token in self.tokens if end <= count]
        self.tokens = [(end - count, token) for end, token in self.tokens if end > count]
        self.since = time.monotonic()
        replayable = self.bare_end == 0
        self.bare_end = max(0, self.bare_end - count)
        return items, size, tokens, replayable

    def put_back(self, items: list[Any], nbytes: int, tokens: list[AckToken], replayable: bool = False) -> None:
        """Return a cut batch that could not be queued, in front of what is pending."""
        if self.bare_end or not replayable:
            self.bare_end += len(items)
        self.items[:0] = items
        self.sizes[:0] = item_sizes(items)
        self.nbytes += nbytes
        count = len(items)  # token marks index into the items: everything after moves back
        self.tokens = [(count, t) for t in tokens] + [(end + count, t) for end, t in self.tokens]

    def clear(self) -> None:
        self.items, self.sizes, self.nbytes, self.tokens, self.bare_end = [], [], 0, [], 0
