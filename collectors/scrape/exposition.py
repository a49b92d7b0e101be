"""A whole exposition body to samples, fast for what a scrape repeats: pure, no I/O.

A target exposes the same series every time, mostly in the same order. So the
sample lines between two comment lines are handled as one list, with C-level
calls over the whole list (``str.startswith``, ``str.rpartition``, ``dict.get``,
``float``, ``Sample`` through ``map``) instead of Python code per line:

- in step with the previous body (its :class:`Plan`), a line is checked to start
  with the series text the same line had last time, and its value is the rest;
  the series' kind, name and labels are taken from the plan as they are;
- out of step (a series came, went or moved), the lines are looked for in the
  plan elsewhere (by their first line's series), and followed from there;
- otherwise a line is cut at its last space and the series text looked up in the
  cache the caller keeps from one scrape to the next; only a series never seen
  before is taken apart (:func:`~collectors.scrape.grammar.parse_series`) and
  handed to the caller's ``resolve`` (target labels, relabeling). Prometheus'
  own scrape cache works the same way, keyed by the series' bytes;
- anything else (a timestamp, an exemplar, a duplicate, a malformed line, a
  limit about to be reached) goes to the line-by-line parse, which the others
  give way to whenever they cannot be sure to give the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import compress, repeat
from operator import add, and_, contains, getitem, is_, is_not, itemgetter
from typing import Any

from agent.model import Labels, Sample
from collectors.scrape.grammar import (
    SKIP,
    ExpositionError,
    forget_kinds,
    kind_of,
    line_number,
    parse_series,
    type_line,
    type_line_name,
    until_eof,
    value_and_stamp,
    without_exemplar,
)

__all__ = ["SERIES_PER_SAMPLE_LIMIT", "SKIP", "ExpositionError", "Plan", "Scan", "kind_of", "parse_series", "scan"]

SERIES_PER_SAMPLE_LIMIT = 4
"""Distinct series (kept or not) a body may hold, per sample of ``sample_limit``."""


@dataclass(slots=True)
class Plan:
    """A body's sample lines in order, what the next body of the target is compared with.

    Built only from a body whose every line took the fast paths (no duplicate, no
    timestamp, no exemplar), so its series texts are distinct and each in the cache."""

    keys: list[str] = field(default_factory=list)
    """The series text of each line, its key in the cache."""
    prefixes: list[str] = field(default_factory=list)
    """What the line starts with: its series text, and a space after a bare name."""
    cuts: list[slice] = field(default_factory=list)
    """Where the value starts: after the prefix."""
    scraped: list[str] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    labels: list[Labels] = field(default_factory=list)
    keep: list[bool] = field(default_factory=list)
    skipped: int = 0
    """Lines not kept (``_created``, or dropped by relabeling)."""
    types: list[tuple[int, str]] = field(default_factory=list)
    """Each ``# TYPE`` line, with the number of sample lines before it: the kinds hold while these do."""


@dataclass(slots=True)
class Scan:
    """What one body held: its samples and counts."""

    rows: list[Sample] = field(default_factory=list)
    samples: int = 0
    """Sample lines, ``_created`` ones excluded (``scrape_samples_scraped``)."""
    created: int = 0
    dropped: int = 0
    """Samples ``resolve`` dropped (relabeling); not in ``rows``."""
    duplicates: int = 0
    new_series: int = 0
    """Series the previous scrape's cache did not hold (``scrape_series_added``)."""
    truncated: bool = False
    """Parsing stopped at ``max_samples``, or at ``SERIES_PER_SAMPLE_LIMIT`` times as many series."""
    too_many_series: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    """The next scrape's cache: ``current``, or ``previous`` when the body had exactly its series."""
    plan: Plan | None = None
    """What the next body is compared with, if this one allows it."""


def scan(
    text: str,
    *,
    openmetrics: bool,
    resolve: Callable[[str], Any],
    previous: dict[str, Any],
    current: dict[str, Any],
    time_ns: int,
    honor_timestamps: bool = True,
    max_samples: int = 0,
    plan: Plan | None = None,
    resolve_many: Callable[[list[str]], dict[str, Any]] | None = None,
) -> Scan:
    """Parse ``text`` into ``Sample`` rows; each series text goes through ``previous``, else ``resolve``.

    ``resolve(series_text)`` returns ``(metric_name, name, labels)``, or
    ``(metric_name, None, ())`` to drop the series (counted in ``dropped``); it may
    raise ``ValueError`` (an :class:`ExpositionError` with the line number, the
    original as its ``__cause__``). ``previous`` is the last scrape's cache and is
    not changed; ``current`` receives this body's series, the next scrape's cache
    (so series that vanished are forgotten), except when the body held exactly
    ``plan``'s series (``previous`` is then ``Scan.cache``, as it is). ``plan``
    is ``Scan.plan`` of the last scrape, with ``previous`` its cache. Samples are
    stamped ``time_ns`` unless they carry a timestamp and ``honor_timestamps``.
    ``max_samples`` (> 0) stops parsing once exceeded. ``resolve_many(texts)``, if
    given, is ``{text: resolve(text) for text in texts}`` done faster.
    """
    if openmetrics:
        text = until_eof(text)
    limit = max_samples if text.count("\n") >= max_samples else 0  # fewer lines than the limit: no need to count
    scanner = _Scanner(text, openmetrics, resolve, previous, current, time_ns, honor_timestamps, limit, max_samples)
    if resolve_many is not None:
        scanner.resolve_many = resolve_many
    if plan is None:
        scanner.next_plan = Plan()
    else:
        scanner.plan = plan
    try:
        for block in _blocks(text):
            scanner.block(block)
        scanner.finish()
    except _Stop:
        pass
    out = scanner.out
    out.samples = len(out.rows) + out.dropped
    return out


class _Stop(Exception):
    """Parsing stopped early (``sample_limit``, or too many series); ``Scan.truncated`` says so."""


_first = itemgetter(0)
_second = itemgetter(1)
_third = itemgetter(2)


class _Cuts(dict):
    """Length -> ``slice(length, None)``, made once: lines of the same length share one."""

    def __missing__(self, length: int) -> slice:
        cut = self[length] = slice(length, None)
        return cut


_cuts = _Cuts()


class _Scanner:
    """One body's parse: see the module's docstring for the ways a run of lines is taken."""

    def __init__(
        self,
        text: str,
        openmetrics: bool,
        resolve: Callable[[str], Any],
        previous: dict[str, Any],
        current: dict[str, Any],
        time_ns: int,
        honor: bool,
        limit: int,
        max_samples: int,
    ) -> None:
        self.text = text
        self.openmetrics = openmetrics
        self.resolve = resolve
        self.resolve_many = lambda texts: {text: resolve(text) for text in texts}
        self.previous = previous
        self.current = current
        self.time_ns = time_ns
        self.honor = honor
        self.limit = limit
        # series never seen before, relabeling dropped or _created ones included: bounds the cache
        self.series_cap = SERIES_PER_SAMPLE_LIMIT * max_samples
        self.out = Scan(cache=current)
        self.types: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.plan: Plan | None = None
        """The previous body's plan while this body follows it line for line."""
        self.at = 0
        """Sample lines so far; while in step, also the position in ``plan``."""
        self.type_at = 0
        """``# TYPE`` lines so far, while in step."""
        self.next_plan: Plan | None = None
        """This body's plan, once out of step (until a line needs the line-by-line parse)."""
        self.left: Plan | None = None
        """The previous body's plan once out of step, for :meth:`follow`."""
        self.position = 0
        """Where in ``left`` the next line is expected."""
        self.positions: dict[str, int] | None = None

    def block(self, block: str) -> None:
        """Some whole lines of the body: comment lines one by one, the sample lines between them in bulk."""
        start, length = 0, len(block)
        while start < length:
            if block[start] == "#":
                end = block.find("\n", start)
                end = length if end < 0 else end
                line = block[start:end]
                if line.startswith("# TYPE "):
                    self.type_line(line)
                start = end + 1
                continue
            cut = block.find("\n#", start)
            end = length if cut < 0 else cut + 1
            lines = block[start:end].split("\n")
            start = end
            if not lines[-1]:
                lines.pop()
            if "" in lines:
                lines = list(filter(None, lines))
            if not lines:
                continue
            if (self.plan is None or not self.in_step(lines)) and not self.follow(lines):
                if self.usual(lines[0]):
                    self.bulk(lines)
                else:  # the run is likely all of the first line's shape (timestamps, say): no bulk attempt
                    self.careful(lines)
            self.at += len(lines)

    def usual(self, line: str) -> bool:
        """Is the line of the shape :meth:`bulk` takes, ``series value``?"""
        end = line.rfind("}") + 1 or line.find(" ")
        return 0 < end == line.rfind(" ") and not (self.openmetrics and " # " in line)

    def type_line(self, line: str) -> None:
        plan = self.plan
        if plan is not None:
            if self.type_at < len(plan.types) and plan.types[self.type_at] == (self.at, line):
                self.type_at += 1
            else:
                self.out_of_step()
        if self.next_plan is not None:
            self.next_plan.types.append((self.at, line))
        type_line(line, self.text, self.types, self.kinds)

    def in_step(self, lines: list[str]) -> bool:
        """The lines are the plan's next ones, with new values: their samples are added. False: out of step."""
        plan, at = self.plan, self.at
        end = at + len(lines)
        if (
            end > len(plan.keys)
            or (self.type_at < len(plan.types) and plan.types[self.type_at][0] < end)  # a TYPE line is missing
            or not all(map(str.startswith, lines, plan.prefixes[at:end]))
        ):
            self.out_of_step()
            return False
        try:
            values = list(map(float, map(getitem, lines, plan.cuts[at:end])))
        except ValueError:  # a timestamp, an exemplar, a bad value: not the plan's shape
            self.out_of_step()
            return False
        out = self.out
        samples = map(Sample, plan.names[at:end], values, plan.kinds[at:end], plan.labels[at:end], repeat(self.time_ns))
        if not plan.skipped:
            kept = len(lines)
            if self.limit and len(out.rows) + kept > self.limit:
                self.out_of_step()
                return False
            out.rows.extend(samples)
            return True
        keep = plan.keep[at:end]
        kept = keep.count(True)
        if self.limit and len(out.rows) + kept > self.limit:
            self.out_of_step()
            return False
        out.rows.extend(compress(samples, keep))
        created = plan.kinds[at:end].count(SKIP)
        out.created += created
        out.dropped += len(lines) - kept - created
        return True

    def out_of_step(self) -> None:
        """This body leaves the plan: the cache of what was read so far, the kinds as the
        line-by-line parse would have them, and this body's plan so far."""
        plan, at, type_at = self.plan, self.at, self.type_at
        self.plan = None
        self.left, self.position = plan, at
        keys = plan.keys[:at]
        self.current.update(zip(keys, map(self.previous.get, keys), strict=True))
        kinds: dict[str, str] = {}
        start = 0
        for position, line in plan.types[:type_at]:
            kinds.update(zip(plan.scraped[start:position], plan.kinds[start:position], strict=True))
            forget_kinds(type_line_name(line), kinds)
            start = position
        kinds.update(zip(plan.scraped[start:at], plan.kinds[start:at], strict=True))
        self.kinds = kinds
        keep = plan.keep[:at]
        self.next_plan = Plan(
            keys,
            plan.prefixes[:at],
            plan.cuts[:at],
            plan.scraped[:at],
            plan.names[:at],
            plan.kinds[:at],
            plan.labels[:at],
            keep,
            at - keep.count(True),
            plan.types[:type_at],
        )

    def follow(self, lines: list[str]) -> bool:
        """Out of step: are these lines the previous body's lines, elsewhere (a series came or went
        before them)? Then their series, names and labels are taken from there, as :meth:`bulk`
        would find them in the cache, and kinds as :meth:`bulk` works them out. False: they are not."""
        plan = self.left
        if plan is None:
            return False
        key = lines[0].rpartition(" ")[0]
        at = self.position
        if at >= len(plan.keys) or plan.keys[at] != key:
            if self.positions is None:
                self.positions = dict(zip(plan.keys, range(len(plan.keys)), strict=True))
            at = self.positions.get(key, -1)
            if at < 0:
                return False
        end = at + len(lines)
        if end > len(plan.keys) or not all(map(str.startswith, lines, plan.prefixes[at:end])):
            return False
        try:
            values = list(map(float, map(getitem, lines, plan.cuts[at:end])))
        except ValueError:
            return False
        keys = plan.keys[at:end]
        entries = list(map(self.previous.get, keys))
        if None in entries:
            return False  # not from this cache
        scraped, names = plan.scraped[at:end], plan.names[at:end]
        kinds, keep, kept = self._kinds(scraped, names)
        out = self.out
        if self.limit and len(out.rows) + kept + out.duplicates > self.limit:
            return False
        if not self._add_series(keys, entries):
            return False
        labels = plan.labels[at:end]
        self._add_samples(names, values, kinds, labels, keep, kept)
        self.position = end
        following = self.next_plan
        if following is not None:
            following.keys += keys
            following.prefixes += plan.prefixes[at:end]
            following.cuts += plan.cuts[at:end]
            self._extend(following, scraped, names, kinds, labels, keep, kept)
        return True

    def _kinds(self, scraped: list[str], names: list[str | None]) -> tuple[list[str], list[bool] | None, int]:
        """Kinds of the lines' series, as the line-by-line parse works them out, and which lines are kept."""
        memo = self.kinds
        kinds = list(map(memo.get, scraped))
        if None in kinds:
            for name in set(scraped).difference(memo):
                memo[name] = kind_of(name, self.types)
            kinds = list(map(memo.__getitem__, scraped))
        if SKIP in kinds or None in names:
            keep = list(map(and_, map(is_not, kinds, repeat(SKIP)), map(is_not, names, repeat(None))))
            return kinds, keep, keep.count(True)
        return kinds, None, len(kinds)

    def _add_series(self, keys: list[str], entries: list[Any]) -> bool:
        """Into the next cache; False (and nothing added): a series is there twice."""
        current = self.current
        before = len(current)
        current.update(zip(keys, entries, strict=True))
        if len(current) - before != len(keys):  # the new keys went in last: take them out
            for _ in range(len(current) - before):
                current.popitem()
            return False
        return True

    def _add_samples(self, names: list, values: list[float], kinds: list[str], labels: list, keep, kept: int) -> None:
        out = self.out
        samples = map(Sample, names, values, kinds, labels, repeat(self.time_ns))
        if keep is None:
            out.rows.extend(samples)
        else:
            out.rows.extend(compress(samples, keep))
            created = kinds.count(SKIP)
            out.created += created
            out.dropped += len(values) - kept - created

    @staticmethod
    def _extend(plan: Plan, scraped: list, names: list, kinds: list, labels: list, keep, kept: int) -> None:
        plan.scraped += scraped
        plan.names += names
        plan.kinds += kinds
        plan.labels += labels
        plan.keep += [True] * len(kinds) if keep is None else keep
        plan.skipped += len(kinds) - kept

    def finish(self) -> None:
        plan = self.plan
        if plan is not None:
            if self.at == len(plan.keys):  # every line as last time: the cache and plan hold
                self.out.cache = self.previous
                if self.type_at < len(plan.types):
                    plan = replace(plan, types=plan.types[: self.type_at])
                self.out.plan = plan
                return
            self.out_of_step()  # series vanished at the end
        self.out.plan = self.next_plan

    def bulk(self, lines: list[str]) -> None:
        """Lines cut at their last space, series looked up in the cache (or resolved); any
        line not of the shape ``series value`` sends the run to :meth:`careful`."""
        parts = list(map(str.rpartition, lines, repeat(" ")))
        keys = list(map(_first, parts))
        entries = list(map(self.previous.get, keys))
        fresh: dict[str, Any] = {}
        if None in entries and not self._resolve_new(lines, keys, entries, fresh):
            return self.careful(lines)
        try:
            values = list(map(float, map(_third, parts)))
        except ValueError:
            return self.careful(lines)
        scraped, names = list(map(_first, entries)), list(map(_second, entries))
        kinds, keep, kept = self._kinds(scraped, names)
        out = self.out
        if self.limit and len(out.rows) + kept + out.duplicates > self.limit:
            return self.careful(lines)  # it stops at the very line
        if not self._add_series(keys, entries):
            return self.careful(lines)
        labels = list(map(_third, entries))
        self._add_samples(names, values, kinds, labels, keep, kept)
        memo = self.kinds
        for name, stored, _ in fresh.values():
            if stored is not None and memo[name] is not SKIP:
                out.new_series += 1
        following = self.next_plan
        if following is not None:
            prefixes = [key if key[-1] == "}" else key + " " for key in keys]
            following.keys += keys
            following.prefixes += prefixes
            following.cuts += map(_cuts.__getitem__, map(len, prefixes))
            self._extend(following, scraped, names, kinds, labels, keep, kept)

    def _resolve_new(self, lines: list[str], keys: list[str], entries: list[Any], fresh: dict[str, Any]) -> bool:
        """Resolve the series the cache lacks into ``entries``; False: leave the run to :meth:`careful`."""
        if self.series_cap and len(self.current) + len(keys) > self.series_cap:
            return False  # the cap may be reached within this run: stop at the very line
        openmetrics = self.openmetrics
        misses = list(compress(range(len(entries)), map(is_, entries, repeat(None))))
        new = list(map(lines.__getitem__, misses))
        if openmetrics and any(map(contains, new, repeat(" # "))):
            return False  # an exemplar, perhaps
        # the series text must be what the line-by-line parse cuts: up to the last "}" (or the first
        # space of a bare name), which must be right before the last space, where the key was cut
        closes = list(map(str.rfind, new, repeat("}")))
        if -1 in closes:
            if not all(map(self.usual, new)):
                return False
        elif list(map(add, closes, repeat(1))) != list(map(str.rfind, new, repeat(" "))):
            return False
        try:
            fresh.update(self.resolve_many(list(dict.fromkeys(map(keys.__getitem__, misses)))))
        except ValueError:
            return False  # the line-by-line parse names the line
        if len(misses) == len(entries):
            entries[:] = map(fresh.__getitem__, keys)
        else:
            for at in misses:
                entries[at] = fresh[keys[at]]
        return True

    def careful(self, lines: list[str]) -> None:
        """The line-by-line parse of a run of sample lines (no comments, no empty lines)."""
        self.next_plan = None  # a line of another shape: the next body cannot follow this one in bulk
        out = self.out
        rows = out.rows
        append = rows.append
        text, current, limit, series_cap, time_ns = self.text, self.current, self.limit, self.series_cap, self.time_ns
        kinds = self.kinds
        get = self.previous.get
        for line in lines:
            if self.openmetrics and " # " in line:
                line = without_exemplar(line)
            end = line.rfind("}") + 1  # the value and timestamp hold no brace: this one closes the labels
            if not end:
                end = line.find(" ")
                if end < 0:
                    end = len(line)
            series = line[:end]
            if series in current:
                out.duplicates += 1  # they count against sample_limit, as in Prometheus
                if limit and len(rows) + out.duplicates > limit:
                    out.truncated = True
                    raise _Stop
                continue
            entry = get(series)
            fresh = entry is None
            if fresh:
                try:
                    entry = self.resolve(series)
                except ValueError as exc:
                    raise ExpositionError(line_number(text, line), str(exc)) from exc
                if series_cap and len(current) >= series_cap:
                    out.truncated = out.too_many_series = True
                    raise _Stop
            current[series] = entry
            try:
                kind = kinds[entry[0]]
            except KeyError:
                kind = kinds[entry[0]] = kind_of(entry[0], self.types)
            if kind is SKIP:
                out.created += 1
                continue
            name = entry[1]
            if name is None:
                out.dropped += 1
                continue
            try:
                append(Sample(name, float(line[end:]), kind, entry[2], time_ns))  # no timestamp: the usual line
            except ValueError:
                value, stamp = value_and_stamp(line, end, text, self.openmetrics, self.honor, time_ns)
                append(Sample(name, value, kind, entry[2], stamp))
            if fresh:
                out.new_series += 1
            if limit and len(rows) > limit:
                out.truncated = True
                raise _Stop


def _blocks(text: str, size: int = 1 << 18) -> Iterator[str]:
    """Whole lines of ``text``, about ``size`` characters at a time: a body of millions of tiny
    lines never becomes one list of millions of strings (the parse may stop early)."""
    start, length = 0, len(text)
    while start < length:
        end = text.find("\n", start + size)
        end = length if end < 0 else end + 1
        yield text[start:end]
        start = end
