"""What every sub-collector of the system plugin shares: its inputs and its two ways to fail."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.procfiles import KeptFiles
from agent.sysfs import read_bytes


@dataclass(frozen=True, slots=True)
class Roots:
    proc: Path
    sys: Path
    rootfs: Path
    files: KeptFiles = field(default_factory=KeptFiles)
    """/proc and /sys files read every run, through descriptors kept open (the collector sweeps it)."""


class Unavailable(Exception):
    """The host lacks the feature (no PSI, no schedstat, adjtimex refused): no series, not an error.

    node_exporter calls this "no data": the sub-collector reports success 0 and
    logs at debug level. Here it is logged once, and not counted as a collector
    error, so a kernel built without the feature does not keep an alert firing.
    ``warn`` marks what a deployment choice caused and an operator should fix
    (a sandbox refusing adjtimex hides the clock-synchronisation alerts' input):
    logged as a warning instead of at info level.
    """

    def __init__(self, message: str, *, warn: bool = False) -> None:
        super().__init__(message)
        self.warn = warn


def read_uint(path: Path | str, files: KeptFiles | None = None) -> int:
    """A file holding one unsigned integer, as node_exporter's readUintFromFile reads it."""
    text = (files.read_once(path) if files is not None else read_bytes(path)).strip()
    if not text.isdigit():
        raise ValueError(f"{path}: expected an unsigned integer, got {text[:40]!r}")
    return int(text)
