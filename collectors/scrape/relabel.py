"""``metric_relabel_configs``: Prometheus' relabeling rules on scraped series, on RE2.

A rule sees the series as a label map with the metric name under ``__name__``,
after the target labels were attached, exactly where Prometheus applies
``metric_relabel_configs``. The regex is anchored at both ends, as Prometheus'
is; ``$1``, ``${1}``, ``$name`` and ``${name}`` in ``replacement`` (and
``target_label``) expand to the regex's groups the way Go's ``Regexp.Expand``
does. Rules run once per series, not per sample: the scrape cache keeps the
result while the target keeps exposing the series.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import re2

from agent.plugin import PluginConfig

Desc = msgspec.Meta
_LABEL_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_LABEL_NAME_REST = _LABEL_NAME_FIRST | frozenset("0123456789")


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # errors come back as config errors, not on stderr
    return options


def valid_label_name(name: str) -> bool:
    return bool(name) and name[0] in _LABEL_NAME_FIRST and all(c in _LABEL_NAME_REST for c in name)


class RelabelRule(PluginConfig):
    """One rule, with Prometheus' field names and defaults."""

    action: Annotated[
        Literal["replace", "keep", "drop", "labeldrop", "labelkeep", "labelmap"],
        Desc(description="What the rule does."),
    ] = "replace"
    source_labels: Annotated[
        list[str], Desc(description="Labels whose values, joined by separator, the regex is matched against.")
    ] = msgspec.field(default_factory=list)
    separator: Annotated[str, Desc(description="Joins the source label values.")] = ";"
    regex: Annotated[str, Desc(description="RE2 regex, anchored at both ends.")] = "(.*)"
    target_label: Annotated[str, Desc(description="Label replace writes to ($1 ... expanded).")] = ""
    replacement: Annotated[str, Desc(description="Value replace writes ($1, ${name} expanded).")] = "$1"

    def __post_init__(self) -> None:
        try:
            re2.compile(self.regex, _options())  # alone first, so an error quotes the user's pattern
            re2.compile(f"^(?:{self.regex})$", _options())
        except re2.error as exc:
            message = exc.args[0] if exc.args else exc
            if isinstance(message, bytes):
                message = message.decode("utf-8", "replace")
            raise ValueError(f"regex: {message}") from None
        if self.action == "replace" and not self.target_label:
            raise ValueError("target_label: the replace action needs one")
        if self.action in ("keep", "drop") and not self.source_labels:
            raise ValueError(f"source_labels: the {self.action} action needs them")
        if self.action in ("labeldrop", "labelkeep") and (self.source_labels or self.target_label):
            raise ValueError(f"{self.action} matches label names: source_labels and target_label do not apply")


class Relabeler:
    """Compiled rules; :meth:`apply` maps a label dict to the new one, or None (dropped)."""

    def __init__(self, rules: list[RelabelRule]) -> None:
        self.rules = [(rule, re2.compile(f"^(?:{rule.regex})$", _options())) for rule in rules]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, labels: dict[str, str]) -> dict[str, str] | None:
        for rule, regex in self.rules:
            action = rule.action
            if action in ("labeldrop", "labelkeep"):
                keep = action == "labelkeep"
                labels = {k: v for k, v in labels.items() if (regex.match(k) is not None) == keep}
                continue
            if action == "labelmap":
                for name, value in list(labels.items()):
                    match = regex.match(name)
                    if match is not None:
                        target = expand(rule.replacement, match)
                        if valid_label_name(target):
                            labels[target] = value
                continue
            joined = rule.separator.join(labels.get(name, "") for name in rule.source_labels)
            match = regex.match(joined)
            if action == "keep":
                if match is None:
                    return None
            elif action == "drop":
                if match is not None:
                    return None
            elif match is not None:  # replace
                target = expand(rule.target_label, match)
                if not (valid_label_name(target) or target == "__name__"):
                    continue
                value = expand(rule.replacement, match)
                if value:
                    labels[target] = value
                else:
                    labels.pop(target, None)
        return labels


def expand(template: str, match) -> str:
    """Go's ``Regexp.Expand``: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``; unknown groups are empty."""
    if "$" not in template:
        return template
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = template[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt == "{":
            close = template.find("}", i + 2)
            if close < 0:
                out.append(c)
                i += 1
                continue
            name, i = template[i + 2 : close], close + 1
        else:
            j = i + 1
            while j < n and template[j] in _LABEL_NAME_REST:
                j += 1
            if j == i + 1:
                out.append(c)
                i += 1
                continue
            name, i = template[i + 1 : j], j
        out.append(_group(match, name))
    return "".join(out)


def _group(match, name: str) -> str:
    try:
        value = match.group(int(name) if name.isdigit() else name)
    except (IndexError, KeyError, ValueError, re2.error):
        return ""
    return value or ""
