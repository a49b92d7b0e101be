"""The agent's own configuration sections and the validated :class:`Config`.

Each field's ``msgspec.Meta(description=...)`` is its documentation: the README's
Configuration section and ``python -m agent.config.docs`` render it. The options every
collector or output takes (:class:`CollectorCommon`, :class:`OutputCommon`) are split off
a plugin's table before the plugin's own ``Config`` sees it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from agent.config.values import (
    Duration,
    DurationOrZero,
    LabelNames,
    Size,
    absolute_path,
    format_size,
    listen_address,
)

Desc = msgspec.Meta
# Floors of an output's sizes: below them a batch is a few samples and the buffer holds nothing
# (64 KiB is also the disk buffer's smallest segment).
MIN_BATCH_BYTES, MIN_BUFFER_BYTES = "1KiB", "64KiB"


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every section: frozen, keyword-only, unknown keys rejected (as ``agent.plugin.PluginConfig``)."""


class AgentSection(Section):
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


class HttpSection(Section):
    listen: Annotated[
        str, Desc(description="host:port of the health and /metrics server; empty disables it."), listen_address
    ] = "127.0.0.1:9730"


class RedactionRule(Section):
    name: Annotated[str, Desc(description="Rule name: the `rule` label and the [REDACTED:name] mark.")]
    pattern: Annotated[
        str, Desc(description="RE2 syntax; with a group named `value` only that part is replaced, else the match.")
    ]
    replace: Annotated[str, Desc(description="Replacement text; empty: [REDACTED:name] (or the hash).")] = ""


class RedactionSection(Section):
    sets: Annotated[list[str], Desc(description="Built-in rule sets: secrets, pii, network.")] = msgspec.field(
        default_factory=lambda: ["secrets", "pii"]
    )
    mode: Annotated[
        Literal["replace", "hash"],
        Desc(description="replace: [REDACTED:rule]; hash: [HASH:rule:hex], a keyed hash that still correlates."),
    ] = "replace"
    rules: Annotated[list[RedactionRule], Desc(description="Custom rules, tried before the built-in ones.")] = []


class CollectorCommon(Section):
    """Options every collector instance takes; split off before the plugin's own."""

    interval: Annotated[Duration | None, Desc(description="Collection interval; default [agent] interval.")] = None
    timeout: Annotated[
        Duration | None, Desc(description="A run taking longer is abandoned and counted; default the interval.")
    ] = None
    labels: Annotated[
        dict[str, str], Desc(description="Added to this instance's samples and streams."), LabelNames()
    ] = {}
    alias: Annotated[str, Desc(description="Instance name in logs and self-metrics.")] = ""


class OutputCommon(Section):
    """Options every output instance takes; split off before the plugin's own."""

    alias: Annotated[str, Desc(description="Instance name in logs, self-metrics and the buffer's directory.")] = ""
    flush_interval: Annotated[
        Duration,
        Desc(
            description="Send a partial batch after this long; a log lane idle this long sends its first lines at once."
        ),
    ] = Duration(1)
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
    buffer_write_delay: Annotated[
        DurationOrZero,
        Desc(
            description="A disk buffer holds a batch whose sources can send it again (log files, journald) in memory"
            " this long: delivered by then, it is never written; 0: every batch is written before it is sent."
        ),
    ] = DurationOrZero(1)
    fsync: Annotated[
        Literal["batch", "interval", "never"],
        Desc(description="When the disk buffer syncs to disk: every batch, about once a second, or never."),
    ] = "batch"
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
    """A validated configuration.

    ``hostname`` and ``state_dir`` are resolved once, when the Config is built (from
    ``environ``, the environment the file was read in; default ``os.environ``), so every
    output, collector and endpoint of one configuration sees the same values.
    """

    agent: AgentSection
    http: HttpSection
    redaction: RedactionSection
    collectors: tuple[PluginSpec, ...]
    outputs: tuple[PluginSpec, ...]
    sources: tuple[str, ...]  # files read, or ("<embedded default>",)
    warnings: tuple[str, ...] = ()  # valid but risky: printed by `check`, logged at start
    environ: InitVar[Mapping[str, str] | None] = None
    hostname: str = field(init=False)  # [agent] hostname, or the machine's host name
    state_dir: Path = field(init=False)  # [agent] state_dir, or the default for this user

    def __post_init__(self, environ: Mapping[str, str] | None) -> None:
        environ = os.environ if environ is None else environ
        object.__setattr__(self, "hostname", self.agent.hostname or socket.gethostname())
        object.__setattr__(self, "state_dir", resolve_state_dir(self.agent.state_dir, environ))


def resolve_state_dir(configured: str, environ: Mapping[str, str]) -> Path:
    """``[agent] state_dir``; empty: /var/lib/hostwatch as root, else ``$XDG_STATE_HOME/hostwatch``."""
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/hostwatch")
    base = environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "hostwatch"
