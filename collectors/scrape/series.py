"""From a scraped series to the series hostwatch stores: target labels, relabeling, limits.

Runs once per new series (the scrape cache keeps the answer), in Prometheus'
order: target labels are attached (``honor_labels`` decides who wins a
clash; the loser of a scraped label is kept as ``exported_<name>``), then
``metric_relabel_configs``, then the label limits. Empty label values mean
"no such label" in Prometheus' data model, so they are left out.
"""

from __future__ import annotations

from agent.model import Labels
from collectors.scrape.grammar import parse_series
from collectors.scrape.relabel import Relabeler


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
