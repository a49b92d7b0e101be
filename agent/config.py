"""Loading and validating hostwatch's TOML configuration.

Lookup order: ``--config PATH``, then ``$HOSTWATCH_CONFIG``, then
``/etc/hostwatch/hostwatch.toml``; ``*.toml`` files in a ``conf.d/`` directory
beside the main file are merged into it in name order (tables merge key by
key, plugin arrays are concatenated). With no file at all the embedded default
runs. ``${VAR}`` and ``${VAR:-default}`` are expanded in string values
(``$${`` writes a literal ``${``).

Validation walks the typed schema itself instead of stopping at msgspec's
first error, so a user sees every problem at once, each with the path of the
key (``outputs.loki[0].urll: unknown key; did you mean url?``); the walker is
:mod:`agent.config_validate`. Values that would only fail once the agent runs
are errors here too, declared on the fields (:mod:`agent.config_types`):
zero or non-finite durations, sizes below a floor, an unbindable ``listen``,
reserved label names, relative paths, header injection, bad URLs, secret and
TLS files that cannot be read. Valid but risky settings (``listen`` off
loopback) become :attr:`Config.warnings`.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from agent.config_types import (
    Duration,
    DurationOrZero,
    LabelNames,
    Size,
    absolute_path,
    format_size,
    listen_address,
    listen_is_loopback,
)
from agent.config_validate import convert as convert  # re-exported for tests of plugin configs
from agent.config_validate import unknown_key, validate
from agent.plugin import PluginConfig

DEFAULT_PATH = Path("/etc/hostwatch/hostwatch.toml")
Desc = msgspec.Meta

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


Struct = PluginConfig  # every section is frozen and rejects unknown keys
# Floors of an output's sizes: below them a batch is a few samples and the buffer holds nothing
# (64 KiB is also the disk buffer's smallest segment).
MIN_BATCH_BYTES, MIN_BUFFER_BYTES = "1KiB", "64KiB"


class AgentSection(Struct):
    interval: Annotated[Duration, Desc(description="Default collection interval.")] = Duration(10)
    hostname: Annotated[
        str, Desc(description="The `instance` label and OTLP host.name; empty: the machine's host name.")
    ] = ""
    job: Annotated[str, Desc(description="The `job` label on pushed series and streams.")] = "hostwatch"
    labels: Annotated[
        dict[str, str],
        Desc(description="Added to every sample and every log stream."),
        LabelNames("job", hint="[agent] job"),
    ] = {}
    state_dir: Annotated[
        str,
        Desc(description="Checkpoints and disk buffers; empty: /var/lib/hostwatch as root, else a per-user state dir."),
        absolute_path,
    ] = ""
    shutdown_timeout: Annotated[
        DurationOrZero, Desc(description="How long outputs may deliver after SIGTERM; 0: leave it all buffered.")
    ] = DurationOrZero(10)
    proc_root: Annotated[
        str, Desc(description="Where /proc is mounted (a container sees the host's under /host/proc)."), absolute_path
    ] = "/proc"
    sys_root: Annotated[str, Desc(description="Where /sys is mounted."), absolute_path] = "/sys"
    rootfs: Annotated[str, Desc(description="Where the host's root file system is mounted."), absolute_path] = "/"
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Desc(description="Agent log level.")] = "info"


class HttpSection(Struct):
    listen: Annotated[
        str, Desc(description="host:port of the health and /metrics server; empty disables it."), listen_address
    ] = "127.0.0.1:9730"


class RedactionRule(Struct):
    name: Annotated[str, Desc(description="Rule name: the `rule` label and the [REDACTED:name] mark.")]
    pattern: Annotated[
        str, Desc(description="RE2 syntax; with a group named `value` only that part is replaced, else the match.")
    ]
    replace: Annotated[str, Desc(description="Replacement text; empty: [REDACTED:name] (or the hash).")] = ""


class RedactionSection(Struct):
    sets: Annotated[list[str], Desc(description="Built-in rule sets: secrets, pii, network.")] = msgspec.field(
        default_factory=lambda: ["secrets", "pii"]
    )
    mode: Annotated[
        Literal["replace", "hash"],
        Desc(description="replace: [REDACTED:rule]; hash: [HASH:rule:hex], a keyed hash that still correlates."),
    ] = "replace"
    rules: Annotated[list[RedactionRule], Desc(description="Custom rules, tried before the built-in ones.")] = []


class CollectorCommon(Struct):
    """Options every collector instance takes; split off before the plugin's own."""

    interval: Annotated[Duration | None, Desc(description="Collection interval; default [agent] interval.")] = None
    timeout: Annotated[
        Duration | None, Desc(description="A run taking longer is abandoned and counted; default the interval.")
    ] = None
    labels: Annotated[
        dict[str, str], Desc(description="Added to this instance's samples and streams."), LabelNames()
    ] = {}
    alias: Annotated[str, Desc(description="Instance name in logs and self-metrics.")] = ""


class OutputCommon(Struct):
    """Options every output instance takes; split off before the plugin's own."""

    alias: str = ""
    flush_interval: Annotated[Duration, Desc(description="Send a partial batch after this long.")] = Duration(1)
    batch_max_items: Annotated[
        int, Desc(description="Items per request at most; 0: 2000 for metrics, 10000 for log records.", ge=0)
    ] = 0
    batch_max_bytes: Annotated[
        Size.at_least(MIN_BATCH_BYTES), Desc(description="Approximate bytes per request at most.")
    ] = Size(4 * 1024 * 1024)
    buffer: Annotated[
        Literal["disk", "memory", ""], Desc(description="Queue kind; empty: disk when state_dir is writable.")
    ] = ""
    buffer_max_bytes: Annotated[
        Size.at_least(MIN_BUFFER_BYTES), Desc(description="Bound of the output's queue; at least batch_max_bytes.")
    ] = Size(256 * 1024 * 1024)
    when_full: Annotated[
        Literal["block", "drop_oldest", ""], Desc(description="Empty: drop_oldest for metrics, block for logs.")
    ] = ""
    fsync: Literal["batch", "interval", "never"] = "batch"
    retry_initial: Annotated[Duration, Desc(description="First backoff.")] = Duration(1)
    retry_max: Annotated[Duration, Desc(description="Longest backoff; also caps Retry-After.")] = Duration(30)
    retry_max_elapsed: Annotated[
        DurationOrZero, Desc(description="Give a batch up after retrying this long; 0: never (keep it buffered).")
    ] = DurationOrZero(0)
    ready_failure_threshold: Annotated[
        int, Desc(description="Consecutive failed attempts before /ready reports the output.", ge=1)
    ] = 3
    ready_buffer_ratio: Annotated[
        float, Desc(description="/ready fails when the buffer is fuller than this.", ge=0, le=1)
    ] = 0.9

    def check_config(self) -> None:
        """Cross-field rules the loader applies (not ``__post_init__``: tests build tiny ones directly)."""
        # A batch larger than the whole buffer never fits: logs would wait for room forever.
        if self.buffer_max_bytes < self.batch_max_bytes:
            raise ValueError(
                f"buffer_max_bytes: {format_size(self.buffer_max_bytes)} cannot hold one full batch; it must be"
                f" >= batch_max_bytes ({format_size(self.batch_max_bytes)})"
            )
        if self.retry_initial > self.retry_max:
            raise ValueError(f"retry_initial: {self.retry_initial:g}s is longer than retry_max ({self.retry_max:g}s)")


@dataclass(frozen=True)
class PluginSpec:
    """One configured plugin instance."""

    kind: str  # "collectors" | "outputs"
    type: str  # the plugin's registered name
    index: int
    common: Any  # CollectorCommon | OutputCommon
    config: Any  # the plugin's own Config
    plugin: type

    @property
    def name(self) -> str:
        return self.common.alias or (self.type if self.index == 0 else f"{self.type}[{self.index}]")

    @property
    def path(self) -> str:
        return f"{self.kind}.{self.type}[{self.index}]"


@dataclass(frozen=True)
class Config:
    agent: AgentSection
    http: HttpSection
    redaction: RedactionSection
    collectors: tuple[PluginSpec, ...]
    outputs: tuple[PluginSpec, ...]
    sources: tuple[str, ...]  # files read, or ("<embedded default>",)
    warnings: tuple[str, ...] = ()  # valid but risky: printed by `check`, logged at start

    @property
    def hostname(self) -> str:
        return self.agent.hostname or socket.gethostname()

    @property
    def state_dir(self) -> Path:
        if self.agent.state_dir:
            return Path(self.agent.state_dir)
        if os.geteuid() == 0:
            return Path("/var/lib/hostwatch")
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return Path(base) / "hostwatch"


_TOP = {"agent": AgentSection, "http": HttpSection, "redaction": RedactionSection}
_PLUGIN_KINDS = ("collectors", "outputs")


# ---------------------------------------------------------------- loading


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
    common_names = {f.name for f in msgspec.structs.fields(common_type)}
    plugin_names = {f.encode_name for f in msgspec.structs.fields(config_type)}
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


# ------------------------------------------------------------ interpolation

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


def interpolate(value: Any, environ: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string, recording errors by path."""
    if isinstance(value, str):
        if "$" not in value:
            return value

        def expand(match: re.Match[str]) -> str:
            text = match.group(0)
            if text == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name is None:
                errors.append(
                    f"{path or '<root>'}: invalid variable reference {text!r}; use ${{NAME}} or ${{NAME:-default}}"
                )
                return text
            if name in environ and (environ[name] != "" or default is None):
                return environ[name]
            if default is not None:
                return default
            errors.append(f"{path}: environment variable {name} is not set (use ${{{name}:-default}} for a fallback)")
            return text

        return _VAR.sub(expand, value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ, f"{path}.{k}" if path else k, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value
