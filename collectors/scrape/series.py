"""From a scraped series to the series hostwatch stores: target labels, relabeling, limits.

Runs once per new series (the scrape cache keeps the answer), in Prometheus'
order: target labels are attached (``honor_labels`` decides who wins a
clash; the loser of a scraped label is kept as ``exported_<name>``), then
``metric_relabel_configs``, then the label limits. Empty label values mean
"no such label" in Prometheus' data model, so they are left out. The new series
of a scrape can be resolved together (:meth:`Resolver.resolve_many`), and the
label pairs of a target's series are shared (the cache holds each pair once).
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import contains, not_

from agent.model import Labels
from collectors.scrape.grammar import split_many, split_series
from collectors.scrape.relabel import Relabeler

_PAIRS_MAX = 1 << 16
_CHUNK = 64
"""Series taken apart at once: the lists of a few dozen die young; those of thousands would live long
enough for the garbage collector to move them to its older generations and go over them again there."""


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
        # a series text no longer than this cannot hold a label name or value over the limits (nor do the
        # target labels): no need to measure each label, unless relabeling or exported_ names made new ones
        within = min(limit for limit in (name_length_limit, value_length_limit, 1 << 62) if limit)
        fits = all(len(k) <= within and len(v) <= within for k, v in target_labels)
        self._within = within if fits else -1
        # (name, value) -> itself: the series of a target share their label pairs (le="0.5", method="GET"),
        # so the cache holds each pair once, and the garbage collector has far fewer objects to go over
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}

    def resolve(self, series: str) -> tuple[str, str | None, Labels]:
        if len(self._pairs) > _PAIRS_MAX:
            self._pairs.clear()
        scraped, keys, values = split_series(series)
        labels = dict(zip(keys, values, strict=True))
        if len(labels) != len(keys):
            raise ValueError(f"a label appears twice in {scraped}")
        if "" in values:
            labels = {k: v for k, v in labels.items() if v}
        measure = self._limited and len(series) > self._within
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
            measure = self._limited
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
            measure = self._limited
        if measure or (self.label_limit and len(labels) + 1 > self.label_limit):
            self._check_limits(name, labels)
        items = sorted(labels.items())
        return scraped, name, tuple(map(self._pairs.setdefault, items, items))

    def resolve_many(self, texts: list[str]) -> dict[str, tuple[str, str | None, Labels]]:
        """:meth:`resolve` of each text, done over the list at once when they are of the usual
        shape (no relabeling, honor_labels, empty value, clash, escape or limit to look at)."""
        if len(texts) > _CHUNK:
            resolved = {}
            for start in range(0, len(texts), _CHUNK):
                resolved.update(self._resolve_many(texts[start : start + _CHUNK]))
            return resolved
        return self._resolve_many(texts)

    def _resolve_many(self, texts: list[str]) -> dict[str, tuple[str, str | None, Labels]]:
        if self.relabeler or self.honor_labels or len(texts) < 2:
            return {text: self.resolve(text) for text in texts}
        braced = list(map(contains, texts, repeat("{")))
        resolved = {text: self.resolve(text) for text in compress(texts, map(not_, braced))}
        texts = list(compress(texts, braced))
        split = split_many(texts)
        if split is None:
            return resolved | {text: self.resolve(text) for text in texts}
        names, keys, values = split
        dicts = list(map(dict, map(zip, keys, values)))
        target = self._target
        if (
            list(map(len, dicts)) != list(map(len, keys))  # a label twice
            or any(map(contains, values, repeat("")))  # empty values are left out
            or not all(map(target.keys().isdisjoint, dicts))  # a clash: exported_ names
            or (self._limited and max(map(len, texts), default=0) > self._within)
        ):
            return resolved | {text: self.resolve(text) for text in texts}
        for _ in map(dict.update, dicts, repeat(target)):
            pass
        if self.label_limit and max(map(len, dicts), default=0) + 1 > self.label_limit:
            return resolved | {text: self.resolve(text) for text in texts}
        if len(self._pairs) > _PAIRS_MAX:
            self._pairs.clear()  # a body of ever-new label values: start over rather than grow
        items = list(map(sorted, map(dict.items, dicts)))
        labels = map(tuple, map(map, repeat(self._pairs.setdefault), items, items))
        resolved.update(zip(texts, zip(names, names, labels, strict=True), strict=True))
        return resolved

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
