"""Metrics that cron jobs and scripts write to ``*.prom`` files, as node_exporter's textfile collector reads them.

Each run lists the configured directories (glob patterns allowed, as in
node_exporter 1.5) on the worker thread, reads every ``*.prom`` file in name
order and parses it with node_exporter's rules (:mod:`.parse`). A file that
cannot be opened, is not a regular file, is larger than ``max_file_size``,
holds NUL bytes or invalid UTF-8 (binary), does not parse, or carries sample
timestamps is left out whole, sets ``node_textfile_scrape_error`` to 1 and is
reported as a collector error (counted, logged once per distinct problem);
the other files are unaffected. A file is parsed again only when its inode,
size, mtime or ctime changed, so an unchanged directory costs a ``stat`` per
file per run.

Across files, the first file (in directory then name order) wins: a series
already exported is dropped, and a family whose type differs from the one an
earlier file gave it is dropped whole; both are counted and reported, as
node_exporter's registry drops them while gathering.
"""

from __future__ import annotations

import glob
import os
import stat
from collections import Counter
from typing import Annotated

import msgspec

from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig, Size

from .parse import ParseError, Series, flatten, has_timestamps, parse

# the collector's own families: a file may not write them
RESERVED = frozenset({"node_textfile_mtime_seconds", "node_textfile_scrape_error", "hostwatch_textfile_errors_total"})
Parsed = list[tuple[str, str, list[Series]]]
"""(family name, family type, its series) for one file."""


class FileProblem(Exception):
    """Why one file was left out; ``reason`` is the label of hostwatch_textfile_errors_total."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TextfileCollector(PeriodicCollector):
    class Config(PluginConfig):
        directories: Annotated[
            list[str],
            msgspec.Meta(
                description="Directories whose *.prom files are read (node_exporter's "
                "--collector.textfile.directory); glob patterns allowed. Empty: no files, "
                "node_textfile_scrape_error 0."
            ),
        ] = msgspec.field(default_factory=list)
        max_file_size: Annotated[
            Size, msgspec.Meta(description="A larger file is left out and counted (reason too_large).")
        ] = Size(16 * 1024 * 1024)

    def __init__(self, config: TextfileCollector.Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        # path -> (stat key, parsed families or the problem that left the file out, mtime seconds)
        self._cache: dict[str, tuple[tuple[int, ...], Parsed | FileProblem, float]] = {}
        self._errors: Counter[str] = Counter()
        self._labels = (("collector", context.instance),)

    async def collect(self, emit: Emitter) -> None:
        if not self.config.directories and not self._errors:
            # nothing to read (the embedded default): no thread hop for one constant series
            emit.gauge("node_textfile_scrape_error", 0.0, unit="1")
            return
        await self.context.run_blocking(self._collect, emit)

    def _collect(self, emit: Emitter) -> None:
        failed = False
        types: dict[str, str] = {}
        seen: set[tuple[str, tuple]] = set()
        mtimes: list[tuple[str, float]] = []
        visited: set[str] = set()
        for directory in self._directories():
            try:
                names = sorted(os.listdir(directory))
            except OSError as exc:
                failed = True
                self._problem(emit, FileProblem("directory", f"cannot read directory {directory}: {exc.strerror}"))
                continue
            for name in names:
                if not name.endswith(".prom"):
                    continue
                path = os.path.join(directory, name)
                visited.add(path)
                try:
                    parsed, mtime = self._read(path)
                except FileProblem as problem:
                    failed = True
                    self._problem(emit, problem)
                    continue
                self._emit_file(emit, path, parsed, types, seen)
                mtimes.append((path, mtime))
        for path in self._cache.keys() - visited:
            del self._cache[path]  # files that went away
        for path, mtime in sorted(mtimes):
            emit.gauge("node_textfile_mtime_seconds", mtime, (("file", path),), unit="s")
        emit.gauge("node_textfile_scrape_error", 1.0 if failed else 0.0, unit="1")
        for reason, count in sorted(self._errors.items()):
            emit.counter("hostwatch_textfile_errors_total", count, (*self._labels, ("reason", reason)), unit="1")

    def _directories(self) -> list[str]:
        found: list[str] = []
        for pattern in self.config.directories:
            # as node_exporter: a pattern that matches nothing is read as a plain path (and fails)
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else []
            found.extend(matches or [pattern])
        return list(dict.fromkeys(found))

    def _read(self, path: str) -> tuple[Parsed, float]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block the run
        except OSError as exc:
            raise FileProblem("read", f"{path}: cannot open: {exc.strerror}") from None
        try:
            before = os.fstat(fd)
            key = (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns)
            cached = self._cache.get(path)
            if cached is not None and cached[0] == key:
                _, result, mtime = cached
            else:
                result, mtime = self._load(fd, path, before)
                self._cache[path] = (key, result, mtime)
        finally:
            os.close(fd)
        if isinstance(result, FileProblem):
            raise result
        return result, mtime

    def _load(self, fd: int, path: str, info: os.stat_result) -> tuple[Parsed | FileProblem, float]:
        mtime = float(info.st_mtime_ns // 1_000_000_000)
        limit = self.config.max_file_size
        if not stat.S_ISREG(info.st_mode):
            return FileProblem("read", f"{path}: not a regular file"), mtime
        if info.st_size > limit:
            return FileProblem("too_large", f"{path}: {info.st_size} bytes, more than max_file_size {limit}"), mtime
        try:
            chunks, size = [], 0
            while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            return FileProblem("read", f"{path}: cannot read: {exc.strerror}"), mtime
        data = b"".join(chunks)
        if len(data) > limit:  # it grew while we read
            return FileProblem("too_large", f"{path}: more than max_file_size {limit} bytes"), mtime
        if b"\0" in data:
            return FileProblem("binary", f"{path}: binary content (NUL bytes), not the text format"), mtime
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return FileProblem("binary", f"{path}: not UTF-8 text (byte {exc.start})"), mtime
        try:
            families = parse(text)
        except ParseError as exc:
            return FileProblem("parse", f"{path}: {exc}"), mtime
        if has_timestamps(families):
            message = f"{path}: contains unsupported client-side timestamps, skipping entire file"
            return FileProblem("timestamp", message), mtime
        # mtime after parsing, as node_exporter stats the file: a failure never looks fresh
        mtime = float(os.fstat(fd).st_mtime_ns // 1_000_000_000)
        return [(name, family.type or "untyped", flatten({name: family})) for name, family in families.items()], mtime

    def _emit_file(
        self, emit: Emitter, path: str, parsed: Parsed, types: dict[str, str], seen: set[tuple[str, tuple]]
    ) -> None:
        duplicates = 0
        for family, kind, series in parsed:
            if family in RESERVED:
                self._problem(emit, FileProblem("conflict", f"{path}: {family} is the textfile collector's own metric"))
                continue
            earlier = types.setdefault(family, kind)
            if earlier != kind:
                self._problem(
                    emit, FileProblem("conflict", f"{path}: {family} is a {kind} here, a {earlier} in an earlier file")
                )
                continue
            for name, sample_kind, labels, value in series:
                if (name, labels) in seen:
                    duplicates += 1
                    continue
                seen.add((name, labels))
                if sample_kind == "counter":
                    emit.counter(name, value, labels)
                else:
                    emit.gauge(name, value, labels)
        if duplicates:
            problem = FileProblem("duplicate", f"{path}: {duplicates} series already exported, dropped")
            self._problem(emit, problem, duplicates)

    def _problem(self, emit: Emitter, problem: FileProblem, count: int = 1) -> None:
        self._errors[problem.reason] += count
        emit.error(str(problem))
