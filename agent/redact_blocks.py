"""Private keys spread over lines: masked line by line, with one small state per stream.

A key block starts at a line holding ``-----BEGIN ... PRIVATE KEY-----`` (or
PGP's ``PRIVATE/SECRET KEY BLOCK``, SSH2's ``---- BEGIN ... ----``, an
OpenVPN static key) with no END after it on the same line, and ends at the
line holding the matching END marker. Every line in between is masked, whether
it arrives alone (the log tailer without ``multiline``, ``hostwatch redact``) or
inside a multi-line record (each of the record's lines is treated the same
way), so the agent and ``hostwatch redact`` give the same output for the same
lines. The body on the BEGIN line itself is the ``private-key`` rule's.

What a masked line keeps: the text before its first run of 16 or more base64
characters (a syslog prefix, a timestamp); from that run to the end of the
line is replaced. A line without such a run (a PEM header, PGP's checksum line,
a short last line) is replaced whole. Blank lines stay blank. On the END line
only base64 glued to the marker is masked.

Bounds: a block that never ends (a truncated key, or a BEGIN line planted to
hide what follows) stops after :data:`MAX_LINES` lines or :data:`MAX_BYTES`
bytes, whichever comes first, and a warning is logged. Both are many times
the largest real key (an RSA-16384 PEM is about 200 lines and 13 KB; a PGP
secret key with subkeys about 120 lines), because masking too much is better
than leaking a key; a planted BEGIN line costs at most that many lines their
tails. The state lives in memory only: a restart in the middle of a block
starts outside it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import re2

from agent.redact_rules import KEY_LABELS, SSH2_LABEL

log = logging.getLogger("hostwatch.redact")

MAX_LINES = 1000
MAX_BYTES = 256 << 10

_BEGIN = re2.compile(rf"-----BEGIN ({KEY_LABELS})-----|---- BEGIN ({SSH2_LABEL}) ----")
_RUN = re.compile(r"[A-Za-z0-9+/=]{16,}")  # one character class: linear time
_GLUED = re.compile(r"[A-Za-z0-9+/=]+\Z")
HINT = "BEGIN"  # every BEGIN marker holds it: the cheap test before any regex
HINT_SEARCH = re2.compile(HINT)  # the same test on a batch's bytes


class BlockState:
    """Where one stream stands: outside a key block, or inside one (its END marker, lines and bytes so far)."""

    __slots__ = ("end", "lines", "size")

    def __init__(self) -> None:
        self.end: str | None = None
        self.lines = 0
        self.size = 0

    @property
    def inside(self) -> bool:
        return self.end is not None


def mask_blocks(records: list[str], state: BlockState, mask: Callable[[str], str]) -> list[int]:
    """Mask the key-block lines of ``records`` in place; the indices of the records changed.

    ``mask(value)`` gives the replacement of one masked piece. Records may hold
    several lines (multiline); their lines are handled one by one, in order.
    """
    changed = []
    for i, record in enumerate(records):
        if not state.inside and HINT not in record:
            continue
        if "\n" in record:
            lines = record.split("\n")
            out = [_line(line, state, mask) for line in lines]
            if any(a is not b for a, b in zip(out, lines, strict=True)):
                records[i] = "\n".join(out)
                changed.append(i)
        else:
            out_line = _line(record, state, mask)
            if out_line is not record:
                records[i] = out_line
                changed.append(i)
    return changed


def _line(line: str, state: BlockState, mask: Callable[[str], str]) -> str:
    """One line through the block state: the same object when nothing in it is masked."""
    if state.end is None:
        if HINT in line:
            _start(line, 0, state)
        return line
    at = line.find(state.end)
    if at >= 0:
        state.end = None
        head = line[:at]
        glued = _GLUED.search(head)
        _start(line, at, state)  # another key may begin after this one's END
        return line if glued is None else head[: glued.start()] + mask(glued.group()) + line[at:]
    state.lines += 1
    state.size += len(line)
    if state.lines >= MAX_LINES or state.size >= MAX_BYTES:
        log.warning(
            "a private key block found no %r within %d lines or %d bytes; masking stops there", state.end,
            state.lines, state.size,
        )  # fmt: skip
        state.end = None
    if not line.strip():
        return line
    cr = "\r" if line.endswith("\r") else ""  # a CRLF file keeps its line ends
    body = line[:-1] if cr else line
    run = _RUN.search(body)
    return (mask(body) if run is None else body[: run.start()] + mask(body[run.start() :])) + cr


def _start(line: str, pos: int, state: BlockState) -> None:
    """Open a block at the first BEGIN marker from ``pos`` whose END is not on this line too."""
    last_end: dict[str, int] = {}  # END marker -> its last position: one search per label, not per BEGIN
    for match in _BEGIN.finditer(line, pos):
        label = match.group(1)
        end = f"-----END {label}-----" if label is not None else f"---- END {match.group(2)} ----"
        if end not in last_end:
            last_end[end] = line.rfind(end)
        if last_end[end] < match.end():
            state.end, state.lines, state.size = end, 0, 0
            return
