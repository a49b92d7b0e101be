"""Plugin discovery: the entry points the registry reads without importlib.metadata are the ones
importlib.metadata finds, plugins load on first use, and a broken one names itself."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from agent.registry import GROUPS, PluginLoadError, _LazyPlugins, entry_points, load_registry


def test_the_entry_points_are_the_ones_importlib_metadata_finds() -> None:
    groups = set(GROUPS.values())
    ours = entry_points(groups)
    for group in groups:
        theirs = {(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=group)}
        assert {(ep.name, ep.value) for ep in ours[group]} == theirs
        assert theirs  # the built-in plugins are there to compare


def test_a_plugin_from_another_distribution_is_found_and_loaded_on_first_use(tmp_path, monkeypatch) -> None:
    (tmp_path / "acme_plugin.py").write_text("class Probe:\n    class Inner:\n        pass\n")
    meta = tmp_path / "acme_hostwatch_plugin-1.0.dist-info"
    meta.mkdir()
    (meta / "entry_points.txt").write_text(
        "# a comment\n[console_scripts]\nacme = acme_plugin:main\n\n"
        "[hostwatch.collectors]\nprobe = acme_plugin:Probe.Inner [extra]\nbroken = acme_missing:Thing\n"
    )
    shadow = tmp_path / "second"  # the same distribution further down the path: the first one counts
    (shadow / "acme_hostwatch_plugin-2.0.dist-info").mkdir(parents=True)
    (shadow / "acme_hostwatch_plugin-2.0.dist-info" / "entry_points.txt").write_text(
        "[hostwatch.collectors]\nlater = acme_plugin:Probe\n"
    )
    monkeypatch.syspath_prepend(str(shadow))
    monkeypatch.syspath_prepend(str(tmp_path))
    found = entry_points({"hostwatch.collectors"}, [str(tmp_path), str(shadow), "/nonexistent"])
    plugins = _LazyPlugins({ep.name: ep for ep in found["hostwatch.collectors"]})
    assert sorted(plugins) == ["broken", "probe"]
    assert "acme_plugin" not in sys.modules  # nothing imported until asked for
    assert plugins["probe"] is sys.modules["acme_plugin"].Probe.Inner
    with pytest.raises(PluginLoadError, match=r"plugin 'broken' \(acme_missing:Thing\) failed to load"):
        plugins["broken"]
    assert plugins.get("nothing") is None
    del sys.modules["acme_plugin"]


def test_the_registry_has_the_built_in_plugins() -> None:
    registry = load_registry()
    assert {"logs", "cpu"} <= set(registry["collectors"]) and {"loki", "otlp"} <= set(registry["outputs"])
    assert registry["outputs"]["loki"].__name__ == "LokiOutput"
