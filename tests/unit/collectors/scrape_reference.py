"""The line-by-line exposition parser hostwatch used before the bulk one, kept unchanged as the oracle
of tests/unit/collectors/test_scrape_bulk.py: the bulk parse must give the same samples, counts,
cache and errors for any body. (``scan`` here empties ``previous`` as it goes.) ``Resolver`` is the
series resolver it was used with, for the benchmark's before/after comparison.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from agent.model import Labels, Sample
from collectors.scrape.relabel import Relabeler

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_CACHE_MAX = 4096  # distinct metric names and label keys remembered (a hostile body has millions)
SERIES_PER_SAMPLE_LIMIT = 4
"""Distinct series (kept or not) a body may hold, per sample of ``sample_limit``."""
SKIP = "skip"
"""Kind of a ``_created`` series: not a sample."""

# suffix -> kind, per family type; "" is the family's own name
_SUFFIXES: dict[str, dict[str, str]] = {
    "counter": {"_total": "counter", "": "counter", "_created": SKIP},
    "gauge": {"": "gauge"},
    "histogram": {"_bucket": "counter", "_sum": "counter", "_count": "counter", "_created": SKIP},
    "gaugehistogram": {"_bucket": "gauge", "_gsum": "gauge", "_gcount": "gauge"},
    "summary": {"": "gauge", "_sum": "counter", "_count": "counter", "_created": SKIP},
    "info": {"_info": "gauge"},
    "stateset": {"": "gauge"},
    "unknown": {"": "gauge"},
    "untyped": {"": "gauge"},
}
_STRIPPABLE = ("_total", "_bucket", "_count", "_sum", "_created", "_gsum", "_gcount", "_info")
_HAS_CREATED = frozenset({"counter", "histogram", "summary"})


class ExpositionError(ValueError):
    """The body is not valid exposition; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


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


def parse_series(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``name{a="b",...}`` -> name and label pairs in written order. Raises ``ValueError``."""
    brace = text.find("{")
    name = (text if brace < 0 else text[:brace]).strip()
    if name not in _names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name[:80]!r}")
        if len(_names) < _CACHE_MAX:
            _names.add(name)
    if brace < 0:
        return name, []
    body = text[brace + 1 :].rstrip()
    if not body.endswith("}"):
        raise ValueError(f"unterminated label set of {name}")
    body = body[:-1]
    if "\\" in body:
        return name, _labels_escaped(name, body)
    parts = body.split('"')
    if len(parts) % 2 == 0:
        raise ValueError(f"unbalanced quotes in the labels of {name}")
    tail = parts.pop()
    if tail and tail.strip() not in ("", ","):
        raise ValueError(f"unexpected {tail.strip()[:40]!r} in the labels of {name}")
    if not parts:
        return name, []
    # between two values comes ',key=': with a comma in front of the first, every key looks alike
    parts[0] = "," + parts[0]
    raws = parts[::2]
    keys = list(map(_keys.get, raws))
    if None in keys:
        keys = [key or _label_key(raw, name) for key, raw in zip(keys, raws, strict=True)]
    return name, list(zip(keys, parts[1::2], strict=True))


_names: set[str] = set()
_keys: dict[str, str] = {}


def _label_key(raw: str, metric: str) -> str:
    """``,le=`` -> ``le``: the text between two label values; cached, it repeats endlessly."""
    text = raw.strip()
    if not text.startswith(","):
        raise ValueError(f"expected ',' between the labels of {metric}, got {raw[:40]!r}")
    text = text[1:].lstrip()
    if not text.endswith("="):
        raise ValueError(f'expected label="value" in {metric}, got {raw[1:41]!r}')
    key = text[:-1].rstrip()
    if not _LABEL_NAME.fullmatch(key):
        raise ValueError(f"invalid label name {key[:80]!r} in {metric}")
    if len(_keys) < _CACHE_MAX:
        _keys[raw] = key
    return key


def _labels_escaped(metric: str, body: str) -> list[tuple[str, str]]:
    """The careful path for label values with backslash escapes."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(body)
    while True:
        eq = body.find("=", i)
        if eq < 0:
            if body[i:].strip(" ,"):
                raise ValueError(f"unexpected {body[i:][:40]!r} in the labels of {metric}")
            return pairs
        key = _label_key(("," if not pairs else "") + body[i : eq + 1], metric)
        quote = body.find('"', eq)
        if quote < 0 or body[eq + 1 : quote].strip():
            raise ValueError(f"label {key} of {metric}: value not quoted")
        value: list[str] = []
        j = quote + 1
        while True:
            if j >= n:
                raise ValueError(f"label {key} of {metric}: unterminated value")
            c = body[j]
            if c == '"':
                break
            if c == "\\" and j + 1 < n:
                nxt = body[j + 1]
                value.append(_ESCAPES.get(nxt, "\\" + nxt))
                j += 2
                continue
            value.append(c)
            j += 1
        pairs.append((key, "".join(value)))
        i = j + 1


def kind_of(name: str, types: dict[str, str]) -> str:
    """``counter``, ``gauge`` or :data:`SKIP` for a sample name, given the ``# TYPE`` lines so far."""
    if name.endswith("_created"):
        base = name[:-8]
        if types.get(name, "gauge") == "gauge" and (
            types.get(base) in _HAS_CREATED or types.get(base + "_total") == "counter"
        ):
            return SKIP
    family = types.get(name)
    if family is not None and "" in _SUFFIXES.get(family, {}):
        return _SUFFIXES[family][""]
    for suffix in _STRIPPABLE:
        if name.endswith(suffix):
            family = types.get(name[: -len(suffix)])
            kind = _SUFFIXES.get(family, {}).get(suffix) if family else None
            if kind is not None:
                return kind
    return "gauge"


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
) -> Scan:
    """Parse ``text`` into ``Sample`` rows; each series text goes through ``previous``, else ``resolve``.

    ``resolve(series_text)`` returns ``(metric_name, name, labels)``, or
    ``(metric_name, None, ())`` to drop the series (counted in ``dropped``); it may
    raise ``ValueError`` (an :class:`ExpositionError` with the line number, the
    original as its ``__cause__``). ``previous`` is the last scrape's cache and
    is emptied (entries move to ``current``, the next scrape's cache, so series
    that vanished are forgotten). Samples are stamped ``time_ns`` unless they
    carry a timestamp and ``honor_timestamps``. ``max_samples`` (> 0) stops
    parsing once exceeded.
    """
    out = Scan()
    rows = out.rows
    append = rows.append
    types: dict[str, str] = {}
    kinds: dict[str, str] = {}
    current_get = current.get
    take = previous.pop
    if openmetrics:
        text = _until_eof(text)
    limit = max_samples if text.count("\n") >= max_samples else 0  # fewer lines than the limit: no need to count
    # series never seen before, relabeling dropped or _created ones included: bounds the cache
    series_cap = SERIES_PER_SAMPLE_LIMIT * max_samples
    for line in chain.from_iterable(_blocks(text)):
        if not line:
            continue
        if line[0] == "#":
            if line.startswith("# TYPE "):
                _type_line(line, text, types, kinds)
            continue
        if openmetrics and " # " in line:
            line = _without_exemplar(line)
        end = line.rfind("}") + 1  # the value and timestamp hold no brace: this one closes the labels
        if not end:
            end = line.find(" ")
            if end < 0:
                end = len(line)
        series = line[:end]
        entry = take(series, None)
        fresh = entry is None
        if fresh:
            if current_get(series) is not None:
                out.duplicates += 1  # they count against sample_limit, as in Prometheus
                if limit and len(rows) + out.duplicates > limit:
                    out.truncated = True
                    break
                continue
            try:
                entry = resolve(series)
            except ValueError as exc:
                raise ExpositionError(_number(text, line), str(exc)) from exc
            if series_cap and len(current) >= series_cap:
                out.truncated = out.too_many_series = True
                break
        current[series] = entry
        try:
            kind = kinds[entry[0]]
        except KeyError:
            kind = kinds[entry[0]] = kind_of(entry[0], types)
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
            value, stamp = _value_and_stamp(line, end, text, openmetrics, honor_timestamps, time_ns)
            append(Sample(name, value, kind, entry[2], stamp))
        if fresh:
            out.new_series += 1
        if limit and len(rows) > limit:
            out.truncated = True
            break
    out.samples = len(rows) + out.dropped
    return out


def _value_and_stamp(line: str, end: int, text: str, openmetrics: bool, honor: bool, time_ns: int) -> tuple[float, int]:
    fields = line[end:].split()
    try:
        if len(fields) != 2:
            raise ValueError
        value = float(fields[0])
        # OpenMetrics timestamps are seconds, the text format's milliseconds
        stamp = (round(float(fields[1]) * 1000) if openmetrics else int(fields[1])) * 1_000_000  # ms, as Prometheus
    except ValueError:
        raise ExpositionError(_number(text, line), f"bad value or timestamp {line[end:].strip()[:60]!r}") from None
    return value, stamp if honor else time_ns


def _number(text: str, line: str) -> int:
    """1-based number of ``line`` (its first occurrence) in ``text``, for an error message."""
    at = text.find(line)
    return text.count("\n", 0, at) + 1 if at >= 0 else 0


def _blocks(text: str, size: int = 1 << 18) -> Iterator[list[str]]:
    """The lines of ``text``, about ``size`` characters at a time: a body of millions of tiny
    lines never becomes one list of millions of strings (the parse may stop early)."""
    start, length = 0, len(text)
    while start < length:
        end = text.find("\n", start + size)
        end = length if end < 0 else end + 1
        yield text[start:end].split("\n")
        start = end


def _until_eof(text: str) -> str:
    """The body before OpenMetrics' ``# EOF``, which must end it."""
    body = text.rstrip()
    if body != "# EOF" and not body.endswith("\n# EOF"):
        raise ExpositionError(text.count("\n") + 1, "OpenMetrics body does not end with # EOF (cut short?)")
    return body[:-5]


def _type_line(line: str, text: str, types: dict[str, str], kinds: dict[str, str]) -> None:
    parts = line.split()
    if len(parts) != 4:
        raise ExpositionError(_number(text, line), f"malformed TYPE line {line[:80]!r}")
    name, family = parts[2], parts[3].lower()
    if family not in _SUFFIXES:
        raise ExpositionError(_number(text, line), f"unknown metric type {family[:40]!r} of {name[:80]}")
    types[name] = family
    # a name resolved before this line (invalid order, tolerated) must be looked up again
    for suffix in ("", *_STRIPPABLE):
        kinds.pop(name + suffix, None)


def _without_exemplar(line: str) -> str:
    """The sample line with its ``# {...} value [ts]`` exemplar cut off (a label value may hold `` # ``)."""
    end = 0
    if "{" in line.split(" ", 1)[0]:
        # skip over quoted label values: an exemplar starts after the series' closing brace
        i, n, quoted = line.index("{") + 1, len(line), False
        while i < n:
            c = line[i]
            if quoted:
                if c == "\\":
                    i += 1
                elif c == '"':
                    quoted = False
            elif c == '"':
                quoted = True
            elif c == "}":
                end = i + 1
                break
            i += 1
    cut = line.find(" # ", end)
    return line if cut < 0 else line[:cut]


class LabelLimitError(ValueError):
    """A series breaks label_limit, label_name_length_limit or label_value_length_limit."""


class Resolver:
    """``resolve(series_text)`` -> ``(scraped name, name, labels)``; name is None when relabeling dropped it."""

    def __init__(
        self,
        target_labels: Labels,
        *,
        honor_labels: bool,
        relabeler: Relabeler,
        label_limit: int = 0,
        name_length_limit: int = 0,
        value_length_limit: int = 0,
    ) -> None:
        self.target_labels = target_labels
        self.honor_labels = honor_labels
        self.relabeler = relabeler
        self.label_limit = label_limit
        self.name_length_limit = name_length_limit
        self.value_length_limit = value_length_limit
        self._target = dict(target_labels)
        self._limited = bool(label_limit or name_length_limit or value_length_limit)

    def resolve(self, series: str) -> tuple[str, str | None, Labels]:
        scraped, pairs = parse_series(series)
        labels = dict(pairs)
        if len(labels) != len(pairs):
            raise ValueError(f"a label appears twice in {scraped}")
        if "" in labels.values():
            labels = {k: v for k, v in labels.items() if v}
        if self.honor_labels:
            for key, value in self.target_labels:
                labels.setdefault(key, value)
        elif not self._target.keys().isdisjoint(labels):
            for key in labels.keys() & self._target.keys():
                exported = "exported_" + key
                while exported in labels:
                    exported = "exported_" + exported
                labels[exported] = labels[key]
            labels.update(self._target)
        else:
            labels.update(self._target)
        name = scraped
        if self.relabeler:
            labels["__name__"] = name
            relabeled = self.relabeler.apply(labels)
            if relabeled is None:
                return scraped, None, ()
            name = relabeled.pop("__name__", "")
            if not name:
                return scraped, None, ()  # a rule removed the name: Prometheus drops such a series too
            labels = relabeled
        if self._limited:
            self._check_limits(name, labels)
        return scraped, name, tuple(sorted(labels.items()))

    def _check_limits(self, name: str, labels: dict[str, str]) -> None:
        if self.label_limit and len(labels) + 1 > self.label_limit:  # + 1: the name, as Prometheus counts
            raise LabelLimitError(f"{name} has {len(labels) + 1} labels, more than label_limit = {self.label_limit}")
        limit = self.name_length_limit
        if limit and max(map(len, labels), default=0) > limit:
            key = max(labels, key=len)
            raise LabelLimitError(f"{name}: label name {key[:40]}... is longer than label_name_length_limit = {limit}")
        limit = self.value_length_limit
        if limit and max(map(len, labels.values()), default=0) > limit:
            key = max(labels, key=lambda k: len(labels[k]))
            raise LabelLimitError(
                f"{name}: the value of label {key} is {len(labels[key])} characters long,"
                f" more than label_value_length_limit = {limit}"
            )
