"""The grammar of the Prometheus text format 0.0.4 and OpenMetrics 1.0, line by line: pure, no I/O.

A series text (``name{a="b",...}``) is taken apart by :func:`parse_series`; a sample's kind
follows the ``# TYPE`` lines as the remote-write path sees them (:func:`kind_of`): counter,
histogram ``_bucket``/``_sum``/``_count`` and summary ``_sum``/``_count`` are counters;
gauges, summary quantiles, gauge histograms, info, stateset and untyped series are gauges.
``_created`` series of counters, histograms and summaries (OpenMetrics, or the ``X_created``
gauges prometheus_client writes in the text format) are start times, not samples
(:data:`SKIP`). Exemplars are ignored. :mod:`collectors.scrape.exposition` parses a whole body.
"""

from __future__ import annotations

import re
from itertools import chain, repeat
from operator import add, and_, contains, getitem, itemgetter

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_CACHE_MAX = 4096  # distinct metric names and label keys remembered (a hostile body has millions)
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


def parse_series(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``name{a="b",...}`` -> name and label pairs in written order. Raises ``ValueError``."""
    name, keys, values = split_series(text)
    return name, list(zip(keys, values, strict=True))


def split_series(text: str) -> tuple[str, list[str], list[str]]:
    """``name{a="b",...}`` -> name, label names and label values in written order. Raises ``ValueError``."""
    brace = text.find("{")
    name = (text if brace < 0 else text[:brace]).strip()
    if name not in _names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name[:80]!r}")
        if len(_names) < _CACHE_MAX:
            _names.add(name)
    if brace < 0:
        return name, [], []
    body = text[brace + 1 :].rstrip()
    if not body.endswith("}"):
        raise ValueError(f"unterminated label set of {name}")
    body = body[:-1]
    if "\\" in body:
        pairs = _labels_escaped(name, body)
        return name, [k for k, _ in pairs], [v for _, v in pairs]
    parts = body.split('"')
    if len(parts) % 2 == 0:
        raise ValueError(f"unbalanced quotes in the labels of {name}")
    tail = parts.pop()
    if tail and tail.strip() not in ("", ","):
        raise ValueError(f"unexpected {tail.strip()[:40]!r} in the labels of {name}")
    if not parts:
        return name, [], []
    # between two values comes ',key=': with a comma in front of the first, every key looks alike
    parts[0] = "," + parts[0]
    raws = parts[::2]
    keys = list(map(_keys.get, raws))
    if None in keys:
        keys = [key or _label_key(raw, name) for key, raw in zip(keys, raws, strict=True)]
    return name, keys, parts[1::2]


_names: set[str] = set()
_keys: dict[str, str] = {}


def split_many(texts: list[str]) -> tuple[list[str], list[list[str]], list[list[str]]] | None:
    """:func:`split_series` of many ``name{k="v",...}`` texts at once, with C-level calls over the
    list, for the usual shape only: a brace, no escapes, no space around the name, nothing after the
    last value. None: one of them is not of that shape (or not valid), take them one by one."""
    if any(map(contains, texts, repeat("\\"))):
        return None
    parts = list(map(str.partition, texts, repeat("{")))
    names = list(map(itemgetter(0), parts))
    if not _names.issuperset(names):
        for name in set(names).difference(_names):
            if len(_names) >= _CACHE_MAX or not _NAME.fullmatch(name):
                return None
            _names.add(name)
    rests = list(map(itemgetter(2), parts))
    if not all(map(str.endswith, rests, repeat("}"))):
        return None
    # between two values comes ',key=': with a comma in front of the first, every key looks alike
    split = list(map(str.split, map(add, repeat(","), map(getitem, rests, repeat(_BEFORE_BRACE))), repeat('"')))
    if not all(map(and_, map(len, split), repeat(1))) or list(map(itemgetter(-1), split)).count("") != len(split):
        return None  # unbalanced quotes, or something after the last value
    raws = list(map(getitem, split, repeat(_RAW_KEYS)))
    keys = list(map(list, map(map, repeat(_keys.get), raws)))
    if any(map(contains, keys, repeat(None))):
        try:
            for raw in set(chain.from_iterable(raws)).difference(_keys):
                _label_key(raw, "a series")
        except ValueError:
            return None
        keys = list(map(list, map(map, repeat(_keys.get), raws)))
        if any(map(contains, keys, repeat(None))):
            return None  # the cache of label names is full
    return names, keys, list(map(getitem, split, repeat(_VALUES)))


_BEFORE_BRACE = slice(None, -1)
_RAW_KEYS = slice(0, -1, 2)
_VALUES = slice(1, None, 2)


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


def value_and_stamp(line: str, end: int, text: str, openmetrics: bool, honor: bool, time_ns: int) -> tuple[float, int]:
    fields = line[end:].split()
    try:
        if len(fields) != 2:
            raise ValueError
        value = float(fields[0])
        # OpenMetrics timestamps are seconds, the text format's milliseconds
        stamp = (round(float(fields[1]) * 1000) if openmetrics else int(fields[1])) * 1_000_000  # ms, as Prometheus
    except ValueError:
        raise ExpositionError(line_number(text, line), f"bad value or timestamp {line[end:].strip()[:60]!r}") from None
    return value, stamp if honor else time_ns


def line_number(text: str, line: str) -> int:
    """1-based number of ``line`` (its first occurrence) in ``text``, for an error message."""
    at = text.find(line)
    return text.count("\n", 0, at) + 1 if at >= 0 else 0


def until_eof(text: str) -> str:
    """The body before OpenMetrics' ``# EOF``, which must end it."""
    body = text.rstrip()
    if body != "# EOF" and not body.endswith("\n# EOF"):
        raise ExpositionError(text.count("\n") + 1, "OpenMetrics body does not end with # EOF (cut short?)")
    return body[:-5]


def type_line(line: str, text: str, types: dict[str, str], kinds: dict[str, str]) -> None:
    parts = line.split()
    if len(parts) != 4:
        raise ExpositionError(line_number(text, line), f"malformed TYPE line {line[:80]!r}")
    name, family = parts[2], parts[3].lower()
    if family not in _SUFFIXES:
        raise ExpositionError(line_number(text, line), f"unknown metric type {family[:40]!r} of {name[:80]}")
    types[name] = family
    forget_kinds(name, kinds)


def type_line_name(line: str) -> str:
    """The metric name of a valid ``# TYPE`` line."""
    return line.split()[2]


def forget_kinds(name: str, kinds: dict[str, str]) -> None:
    """After ``# TYPE name``: a name resolved before this line (invalid order, tolerated) must be looked up again."""
    for suffix in ("", *_STRIPPABLE):
        kinds.pop(name + suffix, None)


def without_exemplar(line: str) -> str:
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
