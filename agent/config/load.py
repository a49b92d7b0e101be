"""Finding, reading and merging the configuration files, then validating them into a :class:`Config`.

Lookup order: ``--config PATH``, then ``$HOSTWATCH_CONFIG``, then
``/etc/hostwatch/hostwatch.toml``; ``*.toml`` files in a ``conf.d/`` directory
beside the main file are merged into it in name order (tables merge key by
key, plugin arrays are concatenated). With no file at all the embedded default
runs. Strings are interpolated (:mod:`agent.config.interpolation`) before the
schema walk (:mod:`agent.config.validation`) reports every problem at once,
each with the path of the key (``outputs.loki[0].urll: unknown key; did you
mean url?``). Values that would only fail once the agent runs are errors here
too, declared on the fields (:mod:`agent.config.values`). Valid but risky
settings (``listen`` off loopback) become :attr:`Config.warnings`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.interpolation import interpolate
from agent.config.schema import (
    AgentSection,
    CollectorCommon,
    Config,
    HttpSection,
    OutputCommon,
    PluginSpec,
    RedactionSection,
)
from agent.config.validation import struct_fields, unknown_key, validate
from agent.config.values import listen_is_loopback

DEFAULT_PATH = Path("/etc/hostwatch/hostwatch.toml")

EMBEDDED_DEFAULT = """\
# hostwatch's embedded default: host metrics every 10 s, served on /metrics, with the
# collectors node_exporter 1.5 enables by default on Linux, under the same names.
[agent]
interval = "10s"

[http]
listen = "127.0.0.1:9730"

[[collectors.cpu]]
[[collectors.memory]]
[[collectors.disk]]
[[collectors.network]]
[[collectors.netclass]]
[[collectors.hardware]]
[[collectors.system]]
exclude = ["processes", "interrupts"]
[[collectors.storage]]
[[collectors.textfile]]
"""


class ConfigError(Exception):
    """One or more configuration problems; ``errors`` holds one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


_TOP = {"agent": AgentSection, "http": HttpSection, "redaction": RedactionSection}
_PLUGIN_KINDS = ("collectors", "outputs")


def find_config_files(path: str | None, environ: Mapping[str, str]) -> list[Path]:
    """The files to read, in merge order; empty for the embedded default."""
    main = Path(path) if path else Path(environ["HOSTWATCH_CONFIG"]) if environ.get("HOSTWATCH_CONFIG") else None
    if main is None:
        if not DEFAULT_PATH.exists():
            return []
        main = DEFAULT_PATH
    if not main.is_file():
        raise ConfigError([f"{main}: no such config file"])
    conf_d = main.parent / "conf.d"
    extra = sorted(conf_d.glob("*.toml")) if conf_d.is_dir() else []
    return [main, *extra]


def load_config(
    path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    registry: Mapping[str, Mapping[str, type]] | None = None,
) -> Config:
    """Find, read, merge, interpolate and validate. Raises :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    files = find_config_files(path, environ)
    errors: list[str] = []
    if not files:
        raw, sources = tomllib.loads(EMBEDDED_DEFAULT), ("<embedded default>",)
    else:
        raw = {}
        for file in files:
            try:
                merge_tables(raw, _parse_toml(file.read_bytes().decode("utf-8"), f"{file}: "))
            except ConfigError as exc:
                errors.extend(exc.errors)
            except UnicodeDecodeError as exc:
                errors.append(
                    f"{file}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
                )
            except OSError as exc:
                errors.append(f"{file}: cannot read: {exc.strerror}")
        sources = tuple(str(f) for f in files)
    if errors:
        raise ConfigError(errors)
    return parse_config(raw, environ=environ, registry=registry, sources=sources)


def _parse_toml(text: str, where: str = "") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{where}invalid TOML: {exc}"]) from None
    except RecursionError:  # tomllib recurses once per level of nesting
        raise ConfigError([f"{where}invalid TOML: arrays or inline tables nested too deeply"]) from None


def loads_config(text: str, **kwargs: Any) -> Config:
    """Validate a TOML document (tests, ``hostwatch check`` on stdin)."""
    return parse_config(_parse_toml(text), sources=("<string>",), **kwargs)


def merge_tables(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Deep-merge ``extra`` into ``base``: tables merge, arrays of plugin tables concatenate."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_tables(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list) and all(isinstance(v, dict) for v in value):
            base[key].extend(value)
        else:
            base[key] = value


def parse_config(
    raw: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    registry: Mapping[str, Mapping[str, type]] | None = None,
    sources: tuple[str, ...] = (),
) -> Config:
    environ = os.environ if environ is None else environ
    if registry is None:
        from agent.registry import load_registry

        registry = load_registry()
    try:
        return _parse_config(raw, environ, registry, sources)
    except RecursionError:  # a document tomllib still parsed, nested deeper than the walk goes
        raise ConfigError(["arrays or tables nested too deeply"]) from None


def _parse_config(
    raw: Mapping[str, Any],
    environ: Mapping[str, str],
    registry: Mapping[str, Mapping[str, type]],
    sources: tuple[str, ...],
) -> Config:
    errors: list[str] = []
    raw = interpolate(raw, environ, "", errors)
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TOP:
            sections[key] = validate(value, _TOP[key], key, errors)
        elif key not in _PLUGIN_KINDS:
            errors.append(unknown_key(key, [*_TOP, *_PLUGIN_KINDS]))
    specs: dict[str, list[PluginSpec]] = {kind: [] for kind in _PLUGIN_KINDS}
    for kind in _PLUGIN_KINDS:
        table = raw.get(kind, {})
        if not isinstance(table, dict):
            errors.append(f"{kind}: expected a table of plugin arrays like [[{kind}.NAME]]")
            continue
        common_type = CollectorCommon if kind == "collectors" else OutputCommon
        known = registry.get(kind, {})
        for type_name, instances in table.items():
            path = f"{kind}.{type_name}"
            if type_name not in known:
                errors.append(unknown_key(path, list(known), what=kind[:-1]))
                continue
            if isinstance(instances, dict):
                instances = [instances]
            if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
                errors.append(f"{path}: expected an array of tables ([[{path}]])")
                continue
            try:
                plugin = known[type_name]
            except Exception as exc:  # PluginLoadError: a broken install names the plugin
                errors.append(f"{path}: {exc}")
                continue
            for index, table_ in enumerate(instances):
                spec = _plugin_spec(kind, type_name, index, table_, plugin, common_type, errors)
                if spec is not None:
                    specs[kind].append(spec)
    _check_unique_names(specs, errors)
    if "redaction" in raw:  # compiling RE2 costs start-up time: only when configured
        from agent.redact import check_rules

        errors.extend(check_rules(sections.get("redaction") or RedactionSection()))
    if errors:
        raise ConfigError(errors)
    http = sections.get("http") or HttpSection()
    return Config(
        agent=sections.get("agent") or AgentSection(),
        http=http,
        redaction=sections.get("redaction") or RedactionSection(),
        collectors=tuple(specs["collectors"]),
        outputs=tuple(specs["outputs"]),
        sources=sources,
        warnings=tuple(_warnings(http)),
        environ=environ,
    )


def _warnings(http: HttpSection) -> list[str]:
    if http.listen and not listen_is_loopback(http.listen):
        return [
            f"http.listen: {http.listen!r} is not a loopback address: /metrics and /health/detailed"
            " (versions, paths, errors) are reachable from the network; firewall the port or listen on 127.0.0.1"
        ]
    return []


def _plugin_spec(
    kind: str, type_name: str, index: int, table: dict[str, Any], plugin: type, common_type: type, errors: list[str]
) -> PluginSpec | None:
    path = f"{kind}.{type_name}[{index}]"
    config_type = plugin.Config
    common_names = {f.name for f in struct_fields(common_type)}
    plugin_names = {f.encode_name for f in struct_fields(config_type)}
    common_part = {k: v for k, v in table.items() if k in common_names and k not in plugin_names}
    own_part = {k: v for k, v in table.items() if k not in common_part}
    before = len(errors)
    common = validate(common_part, common_type, path, errors)
    config = validate(own_part, config_type, path, errors, extra_known=common_names)
    if len(errors) != before:
        return None
    return PluginSpec(kind, type_name, index, common, config, plugin)


def _check_unique_names(specs: dict[str, list[PluginSpec]], errors: list[str]) -> None:
    for items in specs.values():
        seen: dict[str, str] = {}
        for spec in items:
            if spec.name in seen:
                errors.append(
                    f"{spec.path}: instance name {spec.name!r} is already used by {seen[spec.name]}; set an alias"
                )
            seen[spec.name] = spec.path
