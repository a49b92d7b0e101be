"""OTLP ``AnyValue`` and attribute lists as the strings labels and Loki metadata carry."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any

import msgspec

_INVALID_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")
_json = msgspec.json.Encoder().encode


def text(value: Any) -> str:
    """An ``AnyValue`` as text: strings as they are, numbers and booleans as JSON writes them,
    arrays and maps as JSON (as the Prometheus and Loki translations do), bytes in base64."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind is None:
        return ""
    if kind in ("array_value", "kvlist_value"):
        return _json(_plain(value))
    plain = _plain(value)
    return plain if isinstance(plain, str) else _json(plain).decode()


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "double_value":
        number = value.double_value
        return number if number == number and abs(number) != float("inf") else str(number)
    return getattr(value, kind) if kind else None


def attribute_map(attributes: Iterable[Any]) -> dict[str, str]:
    """``KeyValue`` list to ``{key: text}`` (a repeated key: the last one wins)."""
    return {kv.key: text(kv.value) for kv in attributes}


def label_name(name: str) -> str:
    """A Prometheus label name per the OTLP translation: invalid characters become ``_``,
    a leading digit gets ``key_`` in front; ``__`` names are Prometheus' own, so they get ``key``
    in front too (an attribute called ``__name__`` must not rename the series)."""
    clean = _INVALID_LABEL_CHAR.sub("_", name)
    if not clean:
        return "_"
    if clean[0].isdigit():
        return "key_" + clean
    if clean.startswith("__"):
        return "key" + clean
    return clean


def prom_labels(attributes: dict[str, str]) -> dict[str, str]:
    """Attributes as Prometheus labels; two names that sanitise alike join their values with ``;``
    (in key order), as Prometheus does."""
    labels: dict[str, str] = {}
    for key in sorted(attributes):
        name = label_name(key)
        value = attributes[key]
        labels[name] = f"{labels[name]};{value}" if name in labels else value
    return labels
