"""``/proc/mdstat``: node_exporter's ``mdadm`` collector (``node_md_*``).

The parse follows procfs 0.8 (what node_exporter 1.5 links) line for line,
including what it rejects: a status line without ``[n/m] [UU_]`` or a sync
line without ``finish=``/``speed=`` fails the whole file there too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.plugin import Emitter
from agent.sysfs import read_text

Report = Callable[[str], None]

_STATUS = re.compile(r"(\d+) blocks .*\[(\d+)/(\d+)\] \[([U_]+)\]", re.ASCII)
_SYNCED = re.compile(r"\((\d+)/\d+\)", re.ASCII)
_PERCENT = re.compile(r"= (.+)%", re.ASCII)
_FINISH = re.compile(r"finish=(.+)min", re.ASCII)
_SPEED = re.compile(r"speed=(.+)[A-Z]", re.ASCII)
# node_md_state's label for each activity state procfs reports
_STATES = (("active", "active"), ("inactive", "inactive"), ("recovering", "recovering"),
           ("resyncing", "resync"), ("checking", "check"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Array:
    name: str
    state: str
    active: int
    total: int
    failed: int
    spare: int
    blocks: int
    synced: int


def _status(device_line: str, status_line: str) -> tuple[int, int, int]:
    """(active, total, size) from an array's first two lines."""
    fields = status_line.split()
    if not fields:
        raise ValueError(f"unexpected status line {status_line!r}")
    size = int(fields[0]) if fields[0].isascii() and fields[0].isdigit() else None
    if size is None:
        raise ValueError(f"unexpected status line {status_line!r}")
    if "raid0" in device_line or "linear" in device_line:
        total = device_line.count("[")  # only member disks carry a [n] there
        return total, total, size
    if "inactive" in device_line:
        return 0, 0, size
    match = _STATUS.search(status_line)
    if not match:
        raise ValueError(f"couldn't find all the substring matches: {status_line}")
    return int(match[3]), int(match[2]), size


def _synced_blocks(line: str) -> int:
    """Blocks done from a recovery/resync/check line; every other field must parse as well."""
    blocks = _SYNCED.search(line)
    percent, finish, speed = _PERCENT.search(line), _FINISH.search(line), _SPEED.search(line)
    if not (blocks and percent and finish and speed):
        raise ValueError(f"unexpected recovery line: {line.strip()}")
    for text in (percent[1].strip(), finish[1], speed[1]):
        float(text)  # procfs parses them (and fails on garbage) though node_exporter exports none
    return int(blocks[1])


def parse(text: str) -> list[Array]:
    arrays: list[Array] = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip() or line[0] == " " or line.startswith(("Personalities", "unused")):
            continue
        fields = line.split()
        if len(fields) < 3:
            raise ValueError(f"not enough fields in md line (expected at least 3): {line}")
        name, state = fields[0], fields[2]
        if len(lines) <= i + 3:
            raise ValueError(f"too few lines for md device {name}")
        active, total, size = _status(line, lines[i + 1])
        sync_line = lines[i + 3] if "bitmap" in lines[i + 2] else lines[i + 2]
        synced = size
        if "recovery" in sync_line or "resync" in sync_line or "check" in sync_line:
            if "recovery" in sync_line:
                state = "recovering"
            elif "check" in sync_line:
                state = "checking"
            else:
                state = "resyncing"
            if "PENDING" in sync_line or "DELAYED" in sync_line:
                synced = 0
            else:
                try:
                    synced = _synced_blocks(sync_line)
                except ValueError as exc:
                    raise ValueError(f"md device {name}: {exc}") from None
        arrays.append(Array(name, state, active, total, line.count("(F)"), line.count("(S)"), size, synced))
    return arrays


def mdadm(proc_root: str, emit: Emitter, report: Report) -> None:
    path = f"{proc_root}/mdstat"
    try:
        text = read_text(path)
    except FileNotFoundError:
        return  # no md driver loaded: nothing to say, like node_exporter
    except OSError as exc:
        report(f"{path}: {exc.strerror}")
        return
    try:
        arrays = parse(text)
    except ValueError as exc:
        report(f"{path}: {exc}")
        return
    for md in arrays:
        device = (("device", md.name),)
        emit.gauge("node_md_disks_required", md.total, device, unit="1")
        for state, count in (("active", md.active), ("failed", md.failed), ("spare", md.spare)):
            emit.gauge("node_md_disks", count, (("device", md.name), ("state", state)), unit="1")
        for state, label in _STATES:
            emit.gauge(
                "node_md_state", 1 if md.state == state else 0, (("device", md.name), ("state", label)), unit="1"
            )
        emit.gauge("node_md_blocks", md.blocks, device, unit="1")
        emit.gauge("node_md_blocks_synced", md.synced, device, unit="1")
