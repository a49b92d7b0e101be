"""Spool directories as queues: files waiting in a mail queue, an upload or print spool.

File contents are never read. Counting uses only ``os.scandir``, whose entries
carry the file type from the directory listing (``d_type``), so a count costs one
``getdents`` walk and no ``stat``. ``total_bytes`` and ``oldest_age`` need one
``stat`` per counted file (``DirEntry.stat``); each can be turned off for very
large spools. The whole scan runs in one call on the instance's worker thread.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from agent.model import labels_from
from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig
from collectors.queue._common import MESSAGE_UNIT, MESSAGES, OLDEST_AGE

BYTES = "queue_bytes"


class Config(PluginConfig):
    paths: Annotated[
        list[str], msgspec.Meta(description="Spool directories; glob patterns match several (one queue each).")
    ] = msgspec.field(default_factory=list)
    include: Annotated[list[str], msgspec.Meta(description="Glob patterns of file names that count.")] = msgspec.field(
        default_factory=lambda: ["*"]
    )
    exclude: Annotated[
        list[str], msgspec.Meta(description="Glob patterns of file and subdirectory names to leave out.")
    ] = msgspec.field(default_factory=list)
    recursive: Annotated[bool, msgspec.Meta(description="Count files in subdirectories too.")] = True
    total_bytes: Annotated[bool, msgspec.Meta(description="Sum file sizes (one stat per file).")] = True
    oldest_age: Annotated[bool, msgspec.Meta(description="Report the oldest file's age (one stat per file).")] = True


@dataclass(slots=True)
class DirStats:
    files: int = 0
    bytes: int = 0
    oldest_mtime_ns: int | None = None
    errors: list[str] = field(default_factory=list)
    listed: bool = True
    """False when the directory itself could not be listed: nothing is reported for it."""


class SpoolQueueCollector(PeriodicCollector):
    Config = Config

    def __init__(self, config: Config, context: CollectorContext, *, scandir: Callable = os.scandir) -> None:
        super().__init__(config, context)
        self._scandir = scandir  # a seam: tests simulate unreadable directories and vanishing files
        self._include = _names_regex(config.include)
        self._exclude = _names_regex(config.exclude) if config.exclude else None

    async def collect(self, emit: Emitter) -> None:
        results = await self.context.run_blocking(self._scan_all)
        now_ns = self.context.clock()
        for directory, stats in results.items():
            for message in stats.errors:
                self.context.logger.warning(message)
                emit.error(message)
            if not stats.listed:
                continue
            labels = labels_from({"system": "spool", "queue": directory})
            ready = labels_from({"system": "spool", "queue": directory, "state": "ready"})
            emit.gauge(MESSAGES, stats.files, ready, unit=MESSAGE_UNIT)
            if self.config.total_bytes:
                emit.gauge(BYTES, stats.bytes, labels, unit="By")
            if self.config.oldest_age:
                oldest = stats.oldest_mtime_ns
                emit.gauge(OLDEST_AGE, 0.0 if oldest is None else max(0.0, (now_ns - oldest) / 1e9), labels, unit="s")

    def _scan_all(self) -> dict[str, DirStats]:
        """Scan every configured directory; keys are the paths as the user wrote them (the labels)."""
        # In a container the host's file system is mounted at rootfs (/host): look there.
        rootfs = str(self.context.rootfs)
        results: dict[str, DirStats] = {}
        for pattern in self.config.paths:
            host_pattern = os.path.join(rootfs, pattern.lstrip("/")) if rootfs != "/" else pattern
            if any(c in pattern for c in "*?["):
                found = sorted(p for p in glob.glob(host_pattern) if os.path.isdir(p))
                directories = [(p, "/" + os.path.relpath(p, rootfs) if rootfs != "/" else p) for p in found]
            else:
                directories = [(host_pattern, pattern)]
            for path, label in directories:
                if label not in results:
                    results[label] = self._scan(path, label)
        return results

    def _scan(self, root: str, label: str) -> DirStats:
        """Walk one spool; the loop is the hot path with 100,000 files, so it keeps to locals."""
        stats = DirStats()
        need_stat, recursive = self.config.total_bytes or self.config.oldest_age, self.config.recursive
        include = None if "*" in self.config.include else self._include.fullmatch
        exclude = self._exclude.fullmatch if self._exclude else None
        files = size = 0
        oldest = None
        pending = [root]
        while pending:
            directory = pending.pop()
            try:
                with self._scandir(directory) as entries:
                    for entry in entries:
                        if exclude is not None and exclude(entry.name):
                            continue
                        if entry.is_file(follow_symlinks=False):
                            if include is not None and not include(entry.name):
                                continue
                            if need_stat:
                                try:
                                    st = entry.stat(follow_symlinks=False)
                                except FileNotFoundError:
                                    continue  # taken off the queue while we looked: not queued any more
                                size += st.st_size
                                if oldest is None or st.st_mtime_ns < oldest:
                                    oldest = st.st_mtime_ns
                            files += 1
                        elif recursive and entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
            except FileNotFoundError:
                if directory == root:
                    stats.listed = False
                    stats.errors.append(f"spool {label}: directory does not exist")
                # A subdirectory removed during the scan held nothing queued any more.
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                if directory == root:
                    stats.listed = False
                    stats.errors.append(f"spool {label}: cannot list the directory: {reason}")
                else:
                    stats.errors.append(f"spool {label}: cannot list {directory}: {reason}; counts are incomplete")
        stats.files, stats.bytes, stats.oldest_mtime_ns = files, size, oldest
        return stats


def _names_regex(patterns: list[str]) -> re.Pattern[str]:
    """One compiled alternation of the globs: one regex call per file name, not one per pattern."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")
