"""Finds plugins through entry points; the engine never imports one by name."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

GROUPS = {"collectors": "hostwatch.collectors", "outputs": "hostwatch.outputs"}


class PluginLoadError(Exception):
    pass


@cache
def load_registry() -> dict[str, dict[str, type]]:
    """``{"collectors": {name: class}, "outputs": {name: class}}`` from installed entry points.

    A plugin that fails to import is reported when it is configured, not at
    start-up of an agent that does not use it.
    """
    registry: dict[str, dict[str, type]] = {}
    for kind, group in GROUPS.items():
        registry[kind] = _LazyPlugins({ep.name: ep for ep in entry_points(group=group)})
    return registry


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
