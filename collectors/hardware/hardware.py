"""Hardware sensors and inventory, named as node_exporter names them.

One plugin stands for node_exporter's ``hwmon``, ``thermal_zone``,
``cpufreq``, ``powersupplyclass``, ``edac``, ``rapl``, ``dmi`` and ``nvme``
collectors, each switched on or off like its ``--collector.<name>`` flag. All
run in one worker call per interval; a failing part is reported and the others
still export. DMI data do not change while the host runs: they are read once.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated

import msgspec

from agent.model import Labels
from agent.plugin import CollectorContext, Emitter, IdleParts, PeriodicCollector, PluginConfig, run_parts

from . import hwmon, inventory, power, thermal


class Config(PluginConfig):
    hwmon: Annotated[bool, msgspec.Meta(description="node_hwmon_* from /sys/class/hwmon.")] = True
    thermal_zone: Annotated[
        bool, msgspec.Meta(description="node_thermal_zone_temp and node_cooling_device_* from /sys/class/thermal.")
    ] = True
    cpufreq: Annotated[bool, msgspec.Meta(description="node_cpu_frequency_* and node_cpu_scaling_frequency_*.")] = True
    powersupplyclass: Annotated[bool, msgspec.Meta(description="node_power_supply_* from /sys/class/power_supply.")] = (
        True
    )
    powersupply_ignored_supplies: Annotated[
        str, msgspec.Meta(description="Power supplies (regex) left out; node_exporter's default '^$'.")
    ] = "^$"
    edac: Annotated[bool, msgspec.Meta(description="node_edac_* memory error counters.")] = True
    rapl: Annotated[bool, msgspec.Meta(description="node_rapl_*_joules_total from /sys/class/powercap.")] = True
    rapl_zone_label: Annotated[
        bool, msgspec.Meta(description="One node_rapl_joules_total with a rapl_zone label instead of one per zone.")
    ] = False
    dmi: Annotated[bool, msgspec.Meta(description="node_dmi_info from /sys/class/dmi/id.")] = True
    nvme: Annotated[bool, msgspec.Meta(description="node_nvme_info from /sys/class/nvme.")] = True

    def __post_init__(self) -> None:
        try:
            re.compile(self.powersupply_ignored_supplies)
        except re.error as exc:
            raise ValueError(f"powersupply_ignored_supplies: invalid regex: {exc}") from None


class HardwareCollector(PeriodicCollector):
    shares_worker = True  # reads /proc and /sys only
    Config = Config

    def __init__(self, config: Config, context: CollectorContext) -> None:
        super().__init__(config, context)
        sys = str(context.sys_root)
        self._logged: set[str] = set()
        self._dmi: Labels | None = None
        parts = {
            "hwmon": partial(hwmon.hwmon, sys),
            "thermal_zone": partial(thermal.thermal_zone, sys),
            "cpufreq": partial(thermal.cpufreq, sys),
            "powersupplyclass": partial(power.powersupplyclass, sys, re.compile(config.powersupply_ignored_supplies)),
            "edac": partial(inventory.edac, sys),
            "rapl": power.Rapl(sys, config.rapl_zone_label, self._log_once),
            "dmi": self._emit_dmi,
            "nvme": partial(inventory.nvme, sys),
        }
        self._parts = [(name, part) for name, part in parts.items() if getattr(config, name)]
        self._idle = IdleParts(context.clock)  # hardware a host lacks: looked for once a minute

    async def collect(self, emit: Emitter) -> None:
        for error in await self.context.run_blocking(run_parts, self._parts, emit, self._idle):
            emit.error(error)

    def _emit_dmi(self, emit: Emitter, report) -> None:
        if self._dmi is None:
            self._dmi = inventory.dmi_labels(str(self.context.sys_root))
        if self._dmi:
            emit.gauge("node_dmi_info", 1.0, self._dmi)

    def _log_once(self, message: str) -> None:
        """A state of the host rather than a failure (root-only files): said once, not counted as an error."""
        if message not in self._logged:
            self._logged.add(message)
            self.context.logger.info("%s", message)
