"""systemd unit states over D-Bus, with node_exporter's ``--collector.systemd`` names and rules.

One run: the manager's Version and SystemState and ListUnits (name, load,
active and sub state of every unit in one call), then only the unit properties
the series need (a service's Type, a socket's connection counts, a timer's last
trigger; see :func:`collectors.systemd.units.plan_reads`), pipelined in windows
of :data:`WINDOW` calls, so a run costs a handful of round trips rather than one
per property. The D-Bus connection (dbus-fast, asyncio) is kept between runs;
one that dropped since the last run (dbus-daemon restarted) is replaced at once,
in the same run. A bus that cannot be reached exports no systemd series and
counts one collector error per run (logged once), never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

import msgspec
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusFastError

from agent.plugin import CollectorContext, Emitter, PeriodicCollector, PluginConfig
from collectors.systemd.units import (
    COUNTER,
    MIN_VERSION_SYSTEM_STATE,
    Options,
    Read,
    UnitFilter,
    build_rows,
    compile_anchored,
    parse_list_units,
    parse_version,
    plan_reads,
)

WINDOW = 64  # calls in flight at once: well under dbus-daemon's default of 128 pending replies per connection
SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
# a unit unloaded between ListUnits and the Get, or a property an older systemd lacks (NRefused < 239):
# node_exporter leaves those series out without an error, and so does this collector
_EXPECTED_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownProperty",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.freedesktop.DBus.Error.InvalidArgs",
    }
)


class Config(PluginConfig):
    bus_address: Annotated[
        str,
        msgspec.Meta(description="D-Bus address of the system bus, where systemd answers (unix:path=...)."),
    ] = "unix:path=/run/dbus/system_bus_socket"
    unit_include: Annotated[
        str, msgspec.Meta(description="RE2 pattern of unit names to export; anchored at both ends.")
    ] = ".+"
    unit_exclude: Annotated[
        str, msgspec.Meta(description="RE2 pattern of unit names not to export; anchored at both ends.")
    ] = r".+\.(automount|device|mount|scope|slice)"
    enable_restarts_metrics: Annotated[
        bool, msgspec.Meta(description="Export node_systemd_service_restart_total (services' NRestarts).")
    ] = False
    enable_start_time_metrics: Annotated[
        bool, msgspec.Meta(description="Export node_systemd_unit_start_time_seconds.")
    ] = False
    enable_task_metrics: Annotated[
        bool, msgspec.Meta(description="Export node_systemd_unit_tasks_current and _tasks_max of services.")
    ] = False

    def __post_init__(self) -> None:
        if not self.bus_address.startswith(("unix:", "tcp:")):
            raise ValueError(f"bus_address: expected a D-Bus address like unix:path=/run/...: {self.bus_address!r}")
        if "/run/systemd/private" in self.bus_address:
            raise ValueError(
                "bus_address: systemd's private socket is a direct connection without a bus daemon, "
                "which this collector's D-Bus client cannot use; give the system bus"
            )
        for key in ("unit_include", "unit_exclude"):
            try:
                compile_anchored(getattr(self, key))
            except ValueError as exc:
                raise ValueError(f"{key}: not a valid RE2 pattern: {exc}") from None


class SystemdError(Exception):
    """systemd answered a manager call with a D-Bus error, or the connection went away mid-run."""


_LOST = (OSError, EOFError, DBusFastError, SystemdError, TimeoutError)


class SystemdCollector(PeriodicCollector):
    Config = Config

    def __init__(self, config: Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        self._bus: MessageBus | None = None
        self._filter = UnitFilter(config.unit_include, config.unit_exclude)
        self._options = Options(
            restarts=config.enable_restarts_metrics,
            start_time=config.enable_start_time_metrics,
            tasks=config.enable_task_metrics,
        )

    async def collect(self, emit: Emitter) -> None:
        for attempt in (1, 2):
            reused = self._bus is not None
            try:
                rows, problems = await self._read()
            except _LOST as exc:
                await self._drop()
                if reused and attempt == 1:
                    continue  # the kept connection died since the last run: one fresh connection now
                emit.error(f"systemd over D-Bus at {self.config.bus_address}: {_describe(exc)}; no systemd series")
                return
            except BaseException:  # cancelled by the run's timeout: replies may still be on their way
                self._forget()
                raise
            for row in rows:
                (emit.counter if row.kind == COUNTER else emit.gauge)(row.name, row.value, row.labels, unit=row.unit)
            for problem in problems:
                emit.error(problem)
            return

    async def close(self) -> None:
        await self._drop()

    async def _read(self) -> tuple[list, list[str]]:
        bus = await self._connected()
        version_text, state, listed = await asyncio.gather(
            self._manager_get(bus, "Version"),
            self._manager_get(bus, "SystemState"),
            self._list_units(bus),
        )
        version = parse_version(version_text)
        all_units, malformed = parse_list_units(listed[0])
        selected = [unit for unit in all_units if self._filter.keep(unit)]
        values, failed = await self._get_all(bus, plan_reads(selected, version[0], self._options))
        problems = [f"ListUnits: {malformed} malformed row(s) skipped"] if malformed else []
        problems += [f"systemd unit properties unreadable ({name}): those series are left out" for name in failed]
        if not isinstance(state, str) and version[0] >= MIN_VERSION_SYSTEM_STATE:
            problems.append("systemd manager property SystemState unreadable: node_systemd_system_running left out")
        return build_rows(all_units, selected, version, state, values, self._options), problems

    async def _connected(self) -> MessageBus:
        if self._bus is not None and not self._bus.connected:
            await self._drop()
        if self._bus is None:
            bus = MessageBus(bus_address=self.config.bus_address)
            try:
                await bus.connect()
            except BaseException:
                bus.disconnect()
                raise
            self._bus = bus
        return self._bus

    def _forget(self) -> MessageBus | None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
        return bus

    async def _drop(self) -> None:
        bus = self._forget()
        if bus is not None:
            # let the reader see the closed socket and unregister itself from the loop
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(bus.wait_for_disconnect(), 1.0)

    async def _list_units(self, bus: MessageBus) -> list:
        return _checked(await bus.call(_call(MANAGER_PATH, MANAGER, "ListUnits")), "ListUnits")

    async def _manager_get(self, bus: MessageBus, prop: str) -> Any:
        reply = await bus.call(_call(MANAGER_PATH, PROPERTIES, "Get", "ss", [MANAGER, prop]))
        if reply is None:
            raise SystemdError("the D-Bus connection closed")
        # node_exporter treats a missing Version as 0 and a missing SystemState as an error: so does build_rows
        return reply.body[0].value if reply.message_type is MessageType.METHOD_RETURN else None

    async def _get_all(self, bus: MessageBus, reads: list[Read]) -> tuple[dict[tuple[str, str], Any], set[str]]:
        values: dict[tuple[str, str], Any] = {}
        failed: set[str] = set()
        for start in range(0, len(reads), WINDOW):
            window = reads[start : start + WINDOW]
            replies = await asyncio.gather(
                *(bus.call(_call(r.path, PROPERTIES, "Get", "ss", [r.interface, r.prop])) for r in window)
            )
            for read, reply in zip(window, replies, strict=True):
                if reply is None:
                    raise SystemdError("the D-Bus connection closed")
                if reply.message_type is MessageType.METHOD_RETURN:
                    values[(read.unit, read.prop)] = reply.body[0].value
                elif reply.error_name not in _EXPECTED_ERRORS:
                    failed.add(reply.error_name or "no error name")
        return values, failed


def _call(path: str, interface: str, member: str, signature: str = "", body: list | None = None) -> Message:
    return Message(
        destination=SYSTEMD, path=path, interface=interface, member=member, signature=signature, body=body or []
    )


def _checked(reply: Message | None, what: str) -> list:
    if reply is None:
        raise SystemdError("the D-Bus connection closed")
    if reply.message_type is not MessageType.METHOD_RETURN:
        detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise SystemdError(f"{what}: {reply.error_name}: {detail}".rstrip(": "))
    return reply.body


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
