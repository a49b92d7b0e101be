"""``/sys/class/thermal`` and cpufreq: node_exporter's ``thermal_zone`` and ``cpufreq`` collectors."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import numbered, numbered_groups, read_attr

Report = Callable[[str], None]

# cpufreq file -> metric; kHz in sysfs, Hz exported
_CPUFREQ = (
    ("cpuinfo_cur_freq", "node_cpu_frequency_hertz"),
    ("cpuinfo_min_freq", "node_cpu_frequency_min_hertz"),
    ("cpuinfo_max_freq", "node_cpu_frequency_max_hertz"),
    ("scaling_cur_freq", "node_cpu_scaling_frequency_hertz"),
    ("scaling_min_freq", "node_cpu_scaling_frequency_min_hertz"),
    ("scaling_max_freq", "node_cpu_scaling_frequency_max_hertz"),
)


def thermal_zone(sys_root: str, emit: Emitter, report: Report) -> None:
    # zones and cooling devices from one listing of the directory, not one each
    zones, cooling_devices = numbered_groups(f"{sys_root}/class/thermal", "thermal_zone", "cooling_device")
    for zone, path in zones:
        try:
            kind = read_attr(f"{path}/type")
            read_attr(f"{path}/policy")  # node_exporter requires it: a zone without one is broken
            temp = int(read_attr(f"{path}/temp"))
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # a zone whose sensor is not ready: node_exporter skips it silently
                report(f"thermal zone {zone}: {exc.strerror}: {exc.filename}")
            continue
        except ValueError as exc:
            report(f"thermal zone {zone}: {exc}")
            continue
        emit.gauge("node_thermal_zone_temp", temp / 1000.0, (("type", kind), ("zone", zone)), unit="Cel")
    for device, path in cooling_devices:
        try:
            kind = read_attr(f"{path}/type")
            max_state = int(read_attr(f"{path}/max_state"))
            cur_state = int(read_attr(f"{path}/cur_state"))
        except (OSError, ValueError) as exc:
            report(f"cooling device {device}: {getattr(exc, 'strerror', None) or exc}")
            continue
        labels = (("name", device), ("type", kind))
        emit.gauge("node_cooling_device_cur_state", cur_state, labels, unit="1")
        emit.gauge("node_cooling_device_max_state", max_state, labels, unit="1")


def cpufreq(sys_root: str, emit: Emitter, report: Report) -> None:
    for cpu, path in numbered(f"{sys_root}/devices/system/cpu", "cpu"):
        if not os.path.isdir(f"{path}/cpufreq"):
            continue  # no frequency scaling (VMs): nothing to report
        labels = (("cpu", cpu),)
        for name, metric in _CPUFREQ:
            try:
                khz = int(read_attr(f"{path}/cpufreq/{name}"))
            except OSError as exc:
                # cpuinfo_cur_freq is root-only, some drivers lack files: node_exporter leaves them out
                if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM):
                    report(f"cpu{cpu} {name}: {exc.strerror}")
                continue
            except ValueError:
                report(f"cpu{cpu} {name}: not a number")
                continue
            emit.gauge(metric, khz * 1000.0, labels, unit="Hz")
