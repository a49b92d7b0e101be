"""The Prometheus text format (0.0.4), parsed with the rules node_exporter 1.5 applies to textfiles.

node_exporter reads ``*.prom`` files with Go's ``expfmt.TextParser``; a file that
parses there must parse here with the same families, and a file it rejects
must be rejected here, so a cron job's output behaves the same under both.
The rules that surprise people, kept on purpose:

* the last line must end with a newline ("unexpected end of input stream");
* blanks after a value are read as the start of a timestamp (an error), and
  nothing may follow a timestamp;
* ``# TYPE`` must come before the family's first sample, at most once; one
  ``# HELP`` per family; other comments are ignored;
* label values know three escapes (``\\\\``, ``\\"``, ``\\n``), HELP text two;
* ``_sum``/``_count`` (and ``_bucket``) lines join an earlier summary
  (histogram) family; their ``quantile`` and ``le`` labels must be floats;
* samples with a timestamp are parsed here; the collector rejects such a file.

:func:`parse` returns families; :func:`flatten` turns them into the series
node_exporter exports for them (missing labels filled with ``""``, histogram
buckets sorted with ``+Inf`` added, ``le``/``quantile`` formatted as Go does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

TYPES = ("counter", "gauge", "summary", "untyped", "histogram")
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_LABEL_CHARS = _NAME_START | frozenset("0123456789")
_METRIC_START = _NAME_START | {":"}
_METRIC_CHARS = _LABEL_CHARS | {":"}
_BLANK = " \t"
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class ParseError(ValueError):
    """A file node_exporter would reject; the message names the line like expfmt does."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"text format parsing error in line {line}: {message}")


@dataclass(slots=True)
class Metric:
    labels: dict[str, str]
    value: float = 0.0
    timestamp_ms: int | None = None
    count: int = 0
    total: float = 0.0  # _sum
    points: dict[float, float] = field(default_factory=dict)  # quantile or bucket bound -> value


@dataclass(slots=True)
class Family:
    name: str
    type: str | None = None
    help: str | None = None
    metrics: list[Metric] = field(default_factory=list)
    grouped: dict[tuple, Metric] = field(default_factory=dict)  # summaries and histograms by label set


def parse(text: str) -> dict[str, Family]:
    """The families of one file, in order of appearance; raises :class:`ParseError`."""
    families: dict[str, Family] = {}
    lines = text.split("\n")
    if lines[-1].strip(_BLANK):
        raise ParseError(len(lines), "unexpected end of input stream")
    for number, line in enumerate(lines[:-1], 1):
        rest = line.lstrip(_BLANK)
        if not rest:
            continue
        if rest[0] == "#":
            _comment(rest[1:], families, number)
        else:
            _sample(rest, families, number)
    return {name: family for name, family in families.items() if family.metrics}


def _family_for(name: str, families: dict[str, Family]) -> tuple[Family, str]:
    """The family a line's name belongs to, and which part it is: "", "sum", "count" or "bucket"."""
    found = families.get(name)
    if found is not None:
        return found, ""
    for suffix, kinds in (("_count", ("summary", "histogram")), ("_sum", ("summary", "histogram"))):
        if len(name) > len(suffix) and name.endswith(suffix):
            base = families.get(name[: -len(suffix)])
            if base is not None and base.type in kinds:
                return base, suffix[1:]
    if len(name) > 7 and name.endswith("_bucket"):
        base = families.get(name[:-7])
        if base is not None and base.type == "histogram":
            return base, "bucket"
    family = families[name] = Family(name)
    return family, ""


def _take(text: str, allowed: frozenset[str], start: frozenset[str]) -> tuple[str, str]:
    if not text or text[0] not in start:
        return "", text
    end = 1
    while end < len(text) and text[end] in allowed:
        end += 1
    return text[:end], text[end:]


def _comment(text: str, families: dict[str, Family], number: int) -> None:
    text = text.lstrip(_BLANK)
    keyword, blank, rest = _split_blank(text)
    if keyword not in ("HELP", "TYPE") or not blank:
        return  # an ordinary comment, or a keyword alone on its line
    name, rest = _take(rest.lstrip(_BLANK), _METRIC_CHARS, _METRIC_START)
    if not rest:
        return
    if rest[0] not in _BLANK:
        raise ParseError(number, "invalid metric name in comment")
    family, _ = _family_for(name, families)
    rest = rest.lstrip(_BLANK)
    if not rest:
        return
    if keyword == "HELP":
        if family.help is not None:
            raise ParseError(number, f"second HELP line for metric name {family.name!r}")
        family.help = _unescape_help(rest, number)
        return
    if family.type is not None:
        raise ParseError(number, f"second TYPE line for metric name {family.name!r}, or TYPE reported after samples")
    if rest.lower() not in TYPES:
        raise ParseError(number, f"unknown metric type {rest!r}")
    family.type = rest.lower()


def _split_blank(text: str) -> tuple[str, str, str]:
    """``text`` split at its first blank or tab: (token, the blank or "", the rest after it)."""
    for i, char in enumerate(text):
        if char in _BLANK:
            return text[:i], char, text[i + 1 :]
    return text, "", ""


def _sample(text: str, families: dict[str, Family], number: int) -> None:
    name, rest = _take(text, _METRIC_CHARS, _METRIC_START)
    if not name:
        raise ParseError(number, "invalid metric name")
    family, part = _family_for(name, families)
    if family.type is None:
        family.type = "untyped"
    rest = rest.lstrip(_BLANK)
    labels: dict[str, str] = {}
    special: float | None = None  # the quantile or le of a summary or histogram line
    if rest.startswith("{"):
        labels, special, rest = _labels(rest[1:], family, number)
    value_text, blank, rest = _split_blank(rest)
    value = _float(value_text)
    if value is None:
        raise ParseError(number, f"expected float as value, got {value_text!r}")
    timestamp = None
    if blank:
        stamp_text, after, tail = _split_blank(rest.lstrip(_BLANK))
        if not _is_int(stamp_text):
            raise ParseError(number, f"expected integer as timestamp, got {stamp_text!r}")
        if after or tail:
            raise ParseError(number, f"spurious string after timestamp: {(after + tail)!r}")
        timestamp = int(stamp_text)
    if family.type in ("summary", "histogram"):
        key = tuple(sorted(labels.items()))
        metric = family.grouped.get(key)
        if metric is None:
            metric = family.grouped[key] = Metric(labels)
            family.metrics.append(metric)
        if part == "count":
            metric.count = _to_uint(value)
        elif part == "sum":
            metric.total = value
        elif special is not None:
            metric.points[special] = value if family.type == "summary" else _to_uint(value)
    else:
        metric = Metric(labels, value)
        family.metrics.append(metric)
    if timestamp is not None:
        metric.timestamp_ms = timestamp


def _labels(text: str, family: Family, number: int) -> tuple[dict[str, str], float | None, str]:
    """Labels up to the closing brace; returns them, the special label's value, and the text after ``}``."""
    labels: dict[str, str] = {}
    seen: set[str] = set()
    special = None
    special_name = {"summary": "quantile", "histogram": "le"}.get(family.type or "")
    while True:
        text = text.lstrip(_BLANK)
        if text.startswith("}"):
            return labels, special, text[1:].lstrip(_BLANK)
        name, text = _take(text, _LABEL_CHARS, _NAME_START)
        if not name:
            raise ParseError(number, f"invalid label name for metric {family.name!r}")
        if name == "__name__":
            raise ParseError(number, 'label name "__name__" is reserved')
        text = text.lstrip(_BLANK)
        if not text.startswith("="):
            found = text[:1] or "\n"
            raise ParseError(number, f"expected '=' after label name, found {found!r}")
        if name in seen and name != special_name:
            raise ParseError(number, f"duplicate label names for metric {family.name!r}")
        text = text[1:].lstrip(_BLANK)
        if not text.startswith('"'):
            found = text[:1] or "\n"
            raise ParseError(number, f"expected '\"' at start of label value, found {found!r}")
        value, text = _label_value(text[1:], number)
        if name == special_name:
            special = _float(value)
            if special is None:
                raise ParseError(number, f"expected float as value for {name!r} label, got {value!r}")
        else:
            seen.add(name)
            labels[name] = value
        text = text.lstrip(_BLANK)
        if text.startswith(","):
            text = text[1:]
        elif text.startswith("}"):
            continue
        else:
            raise ParseError(number, f"unexpected end of label value {value!r}")


def _label_value(text: str, number: int) -> tuple[str, str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            return "".join(out), text[i + 1 :]
        if char == "\\":
            escaped = text[i + 1 : i + 2]
            if escaped not in _ESCAPES:
                raise ParseError(number, f"invalid escape sequence '\\{escaped}'")
            out.append(_ESCAPES[escaped])
            i += 2
            continue
        out.append(char)
        i += 1
    raise ParseError(number, f"label value {''.join(out)!r} contains unescaped new-line")


def _unescape_help(text: str, number: int) -> str:
    """HELP text knows two escapes, ``\\\\`` and ``\\n``."""
    if "\\" not in text:
        return text
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        escaped = next(chars, "")
        if escaped in ("\\", "n"):
            out.append(_ESCAPES[escaped])
        else:  # also a backslash that ends the line
            raise ParseError(number, f"invalid escape sequence '\\{escaped}'")
    return "".join(out)


def _float(text: str) -> float | None:
    """Go's ``strconv.ParseFloat`` as expfmt calls it: no ``p``/``_``, no out-of-range values."""
    if not text or not text.isascii() or any(c in "pP_" or c.isspace() for c in text):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if math.isinf(value) and text.lstrip("+-").lower() not in ("inf", "infinity"):
        return None  # 1e999: Go reports a range error
    return value


def _is_int(text: str) -> bool:
    digits = text[1:] if text[:1] in "+-" else text
    return digits.isascii() and digits.isdigit() and -(2**63) <= int(text) < 2**63


def _to_uint(value: float) -> int:
    """Go's uint64(float64) for the values a count can sensibly hold."""
    if math.isnan(value) or value < 0:
        return 0
    return int(min(value, 2.0**64 - 1))


def go_float(value: float) -> str:
    """A float as Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` writes it (``le``/``quantile`` values).

    Shortest digits; exponent form when the decimal exponent is below -4 or at
    least 6 (Go fixes the precision for that choice at 6 for shortest output),
    so ``1e+06``, ``100000``, ``0.0001``, ``1e-05``.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent)  # where the decimal point sits in digits
    exp = point - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


Series = tuple[str, str, tuple[tuple[str, str], ...], float]
"""(name, kind, sorted labels, value): one series as the collector emits it."""


def has_timestamps(families: dict[str, Family]) -> bool:
    return any(metric.timestamp_ms is not None for family in families.values() for metric in family.metrics)


def flatten(families: dict[str, Family]) -> list[Series]:
    """The series node_exporter exports for these families.

    Within a family every series carries every label name used in it (absent
    ones as ``""``, which Prometheus treats as no label). Counters stay
    counters; gauges and untyped series are gauges; a summary becomes its
    quantile gauges plus ``_sum`` and ``_count`` counters, a histogram its
    ``_bucket`` counters (sorted by bound, ``+Inf`` added when missing) plus
    ``_sum`` and ``_count``.
    """
    out: list[Series] = []
    for family in families.values():
        names = {label for metric in family.metrics for label in metric.labels}
        name, kind = family.name, family.type
        for metric in family.metrics:
            base = {label: metric.labels.get(label, "") for label in names}
            if kind in ("counter", "gauge", "untyped"):
                out.append((name, "counter" if kind == "counter" else "gauge", _sorted(base), metric.value))
                continue
            special = "quantile" if kind == "summary" else "le"
            part_kind = "gauge" if kind == "summary" else "counter"
            suffix = "" if kind == "summary" else "_bucket"
            points = sorted(metric.points.items())
            for bound, value in points:
                out.append((name + suffix, part_kind, _sorted({**base, special: go_float(bound)}), float(value)))
            if kind == "histogram" and not any(math.isinf(bound) and bound > 0 for bound, _ in points):
                out.append((name + suffix, part_kind, _sorted({**base, special: "+Inf"}), float(metric.count)))
            out.append((name + "_sum", "counter", _sorted(base), metric.total))
            out.append((name + "_count", "counter", _sorted(base), float(metric.count)))
    return out


def _sorted(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))
