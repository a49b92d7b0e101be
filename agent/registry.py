"""Finds plugins through entry points; the engine never imports one by name.

The entry points are read from the metadata directories of the distributions on ``sys.path``
(``*.dist-info`` and ``*.egg-info``: their ``entry_points.txt``), the way
``importlib.metadata`` finds them, without importing it: that import (email, zipfile, csv and
more) and its scan cost the agent 25-35 ms of start-up, where this reads a directory listing
and a few small files. A distribution that two ``sys.path`` entries hold counts once, the
first (as ``importlib.metadata`` has it); distributions installed as zip files are not read.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from functools import cache
from typing import NamedTuple

GROUPS = {"collectors": "hostwatch.collectors", "outputs": "hostwatch.outputs"}
_METADATA_DIRS = (".dist-info", ".egg-info")


class PluginLoadError(Exception):
    pass


class EntryPoint(NamedTuple):
    """``name = module:attribute`` from an ``entry_points.txt``."""

    name: str
    value: str

    def load(self) -> type:
        module, _, attribute = self.value.partition(":")
        found = importlib.import_module(module.strip())
        for part in attribute.split("[", 1)[0].strip().split(".") if attribute else ():  # "[extras]" are not ours
            found = getattr(found, part)
        return found


@cache
def load_registry() -> dict[str, dict[str, type]]:
    """``{"collectors": {name: class}, "outputs": {name: class}}`` from installed entry points.

    A plugin that fails to import is reported when it is configured, not at
    start-up of an agent that does not use it.
    """
    found = entry_points(set(GROUPS.values()))
    return {kind: _LazyPlugins({ep.name: ep for ep in found[group]}) for kind, group in GROUPS.items()}


def entry_points(groups: set[str], path: list[str] | None = None) -> dict[str, list[EntryPoint]]:
    """The entry points of ``groups`` declared by the distributions on ``path`` (``sys.path``)."""
    found: dict[str, list[EntryPoint]] = {group: [] for group in groups}
    seen: set[str] = set()
    for entry in sys.path if path is None else path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # not a directory (a zip file), or gone
            continue
        for name in names:
            if not name.endswith(_METADATA_DIRS):
                continue
            project = re.sub(r"[-_.]+", "-", name.rsplit(".", 1)[0].split("-", 1)[0]).lower()
            if project in seen:
                continue
            seen.add(project)
            try:
                with open(os.path.join(entry or ".", name, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:  # a distribution without entry points
                continue
            for group, point in _parse(text):
                if group in found:
                    found[group].append(point)
    return found


def _parse(text: str) -> list[tuple[str, EntryPoint]]:
    """``entry_points.txt``: ``[group]`` sections of ``name = value`` lines."""
    points, group = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
            continue
        name, sep, value = line.partition("=")
        if sep and group:
            points.append((group, EntryPoint(name.strip(), value.strip())))
    return points


class _LazyPlugins(dict):
    """Maps names to entry points, loading each class on first access."""

    def __init__(self, eps: dict) -> None:
        super().__init__(eps)
        self._loaded: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        if name not in self._loaded:
            ep = super().__getitem__(name)
            try:
                self._loaded[name] = ep.load()
            except Exception as exc:  # a broken third-party plugin must name itself
                raise PluginLoadError(f"plugin {name!r} ({ep.value}) failed to load: {exc}") from exc
        return self._loaded[name]

    def get(self, name: str, default=None):
        if name not in self:
            return default
        return self[name]
