"""The records of one round: the lines read from every file, redacted and parsed together.

At low rates a round holds a line or two of each of many files; a redaction call
and a parse call per file would cost more than the work itself, so the lines of
all files go through one redaction call (each file keeps its own key-block
state, see ``agent.redact.Streams.many``) and one parse pass.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable

from agent.model import Labels, LogRecord
from agent.plugin import StreamRedactor
from collectors.logs.parse import LEVEL_WORDS, Parser
from collectors.logs.stats import LogStats
from collectors.logs.tracker import Tracker

Redact = StreamRedactor
"""The redaction of a round: each file's lines with one key-block state per file key (``many``); where level
words are searched in the bytes read, the same pass finds the lines that may hold one (``many_finding``)."""


class Pending:
    """Lines read from one generation this round, and the bytes they were framed from (None when not
    all known: multiline records, flushed partial lines). A plain class: one is made per file read,
    and a dataclass's ``default_factory`` costs more than the rest of it."""

    __slots__ = ("blocks", "file", "lines")

    def __init__(self, file: Tracker, lines: list[str] | None = None, blocks: list[bytes] | None = None) -> None:
        self.file = file
        self.lines = [] if lines is None else lines
        self.blocks = blocks


class Plain:
    """The round's plain reads (see ``Tailer._read``): whole lines of files that held nothing, each file at most
    once and before any other read of it this round, side by side in lists: a round at low rates reads a line
    from each of hundreds of files, and an object per file costs more than the rest of its record."""

    __slots__ = ("blocks", "files", "groups")

    def __init__(self) -> None:
        self.files: list[Tracker] = []
        self.groups: list[list[str]] = []  # the lines of files[i]
        self.blocks: list[bytes] = []  # the bytes groups[i] was framed from


def build_records(
    pending: Iterable[Pending],
    now_ns: int,
    redact: Redact | None,
    parser: Parser,
    stats: LogStats,
    plain: Plain | None = None,
) -> list[LogRecord]:
    """Every file's lines as records; lines without a time of their own get their file's next
    nanoseconds from ``now_ns`` on (so a file's order is kept). ``plain``'s lines come first: a file
    read there may have been read again after it (a timer's read), into ``pending``."""
    records: list[LogRecord] = []
    if plain is not None and plain.files:
        records += _plain(plain, now_ns, redact, parser)
        stats.lines_read += sum(map(len, plain.groups))  # lines, as below
    framed: list[Pending] = []
    other: list[Pending] = []
    for got in pending:
        (framed if got.blocks is not None else other).append(got)
    for batch in (other, framed):  # level words are searched in bytes only where all bytes are known
        if batch:
            records += _batch(batch, now_ns, redact, parser)
            stats.lines_read += sum(len(got.lines) for got in batch)
    return records


def _plain(plain: Plain, now_ns: int, redact: Redact | None, parser: Parser) -> list[LogRecord]:
    files, groups = plain.files, plain.groups
    lines = list(itertools.chain.from_iterable(groups))
    if len(lines) > len(files) or max([t.last_ns for t in files]) >= now_ns:  # as other reads are
        return _batch(list(map(Pending, files, groups, ([block] for block in plain.blocks))), now_ns, redact, parser)
    # a line of each file, whose last record's time is before now_ns (the usual): each takes now_ns, as
    # _batch would give it, without its steps per file
    for t in files:
        t.last_ns = now_ns
    labels = [t.labels for t in files]
    return _finish(lines, labels, [now_ns] * len(lines), groups, files, plain.blocks, redact, parser)


def _batch(batch: list[Pending], now_ns: int, redact: Redact | None, parser: Parser) -> list[LogRecord]:
    lines: list[str] = []
    labels: list[Labels] = []
    times: list[int] = []
    blocks: list[bytes] | None = [] if batch[0].blocks is not None else None
    for got in batch:
        t, got_lines = got.file, got.lines
        base = t.last_ns + 1
        if base < now_ns:
            base = now_ns
        if len(got_lines) == 1:  # most at low rates: a line of each of many files
            t.last_ns = base
            lines.append(got_lines[0])
            labels.append(t.labels)
            times.append(base)
        else:
            count = len(got_lines)
            t.last_ns = base + count - 1
            lines += got_lines
            labels += [t.labels] * count
            times += range(base, base + count)
        if blocks is not None and got.blocks is not None:
            blocks += got.blocks
    files = [got.file for got in batch]
    return _finish(lines, labels, times, [got.lines for got in batch], files, blocks, redact, parser)


def _finish(
    lines: list[str],
    labels: list[Labels],
    times: list[int],
    groups: list[list[str]],
    files: list[Tracker],
    blocks: list[bytes] | None,
    redact: Redact | None,
    parser: Parser,
) -> list[LogRecord]:
    """The records of ``lines`` (``groups``, the lines of each of ``files``, together), redacted and parsed;
    ``blocks``: the bytes they were framed from, or None when not all known."""
    changed = None
    if redact is not None:
        keys = [t.key for t in files]
        if blocks is not None and parser.raw_levels:
            # one pass of RE2 over the round for the rules and the level words: the lines it stopped at
            # are the only ones that may hold a level word, the lines it rewrote among them (None: it
            # could not tell)
            redacted, candidates = redact.many_finding(groups, keys, LEVEL_WORDS)
            if candidates is not None:
                return parser.batch(redacted, labels, times, candidates=candidates)
        else:
            redacted = redact.many(groups, keys)
        if blocks is not None:
            # the lines redaction rewrote (new objects) no longer match the bytes read
            changed = list(itertools.compress(range(len(lines)), map(operator.is_not, redacted, lines)))
        lines = redacted
    # each block holds whole lines, one newline each, and together they hold every line of the batch:
    # level words are searched in one piece
    pieces = None if blocks is None else [(0, b"".join(blocks))]
    return parser.batch(lines, labels, times, pieces, changed)
