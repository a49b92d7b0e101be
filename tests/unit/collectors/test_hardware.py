"""hardware collector on a fixture tree laid out as real machines lay out /sys: coretemp, an nct6779 Super I/O,
an NVMe drive's sensor, an ACPI power meter, thermal zones and cooling devices, intel_pstate and acpi-cpufreq,
a laptop battery, mains and a USB-C port, an EDAC memory controller, RAPL zones, DMI and an NVMe controller.
That node_exporter 1.5 reads the same tree to the same series is checked by the parity test."""

from __future__ import annotations

import errno
import logging
import re
import shutil
from pathlib import Path

import pytest

from agent.config import convert
from collectors.hardware import inventory, power, thermal
from collectors.hardware.hardware import Config, HardwareCollector
from tests.support import FIXTURES, by_series, collect_once, collector_context

FIX = FIXTURES / "hardware"
PARTS = ("hwmon", "thermal_zone", "cpufreq", "powersupplyclass", "edac", "rapl", "dmi", "nvme")
README = Path(__file__).parents[3] / "collectors" / "hardware" / "README.md"


def hardware(tmp_path: Path, sys: Path = FIX / "sys", **options) -> HardwareCollector:
    return HardwareCollector(convert(options, Config), collector_context(tmp_path, sys_root=sys))


def only(part: str, **options) -> dict:
    return {name: name == part for name in PARTS} | options


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "fixture"
    shutil.copytree(FIX, root, symlinks=True)
    return root / "sys"


async def test_every_part_on_the_fixture_and_the_readme_lists_every_name(tmp_path):
    emitter = await collect_once(hardware(tmp_path))
    assert emitter.errors == []
    # label tuples are canonical (sorted, names unique): equality and series identity depend on it
    assert all(list(s.labels) == sorted(dict(s.labels).items()) for s in emitter.samples)
    names = {s.name for s in emitter.samples}
    for prefix in ("node_hwmon_", "node_thermal_", "node_cooling_", "node_cpu_", "node_power_supply_", "node_edac_",
                   "node_rapl_", "node_dmi_", "node_nvme_"):  # fmt: skip
        assert any(name.startswith(prefix) for name in names), prefix
    listed = set(re.findall(r"`(node_[a-zA-Z0-9_]+)`", README.read_text()))
    assert names - listed == set()


async def test_hwmon_names_units_and_chip_labels_as_node_exporter(tmp_path):
    emitter = await collect_once(hardware(tmp_path, **only("hwmon")))
    assert emitter.errors == []
    series = by_series(emitter.samples)

    def at(name, chip, sensor):
        return series[(name, (("chip", chip), ("sensor", sensor)))]

    assert at("node_hwmon_temp_celsius", "platform_coretemp_0", "temp1") == 45.0
    assert at("node_hwmon_temp_crit_alarm_celsius", "platform_coretemp_0", "temp2") == 0  # node_exporter's quirk
    assert at("node_hwmon_temp_celsius", "nvme_nvme0", "temp1") == pytest.approx(38.85)
    assert at("node_hwmon_temp_min_celsius", "nvme_nvme0", "temp1") == pytest.approx(-273.15)
    assert at("node_hwmon_in_volts", "platform_nct6775_656", "in0") == pytest.approx(1.016)
    assert at("node_hwmon_fan_rpm", "platform_nct6775_656", "fan1") == 1250
    assert at("node_hwmon_fan_target_rpm", "platform_nct6775_656", "fan1") == 1300
    assert at("node_hwmon_pwm", "platform_nct6775_656", "pwm1") == 128
    assert at("node_hwmon_intrusion_alarm", "platform_nct6775_656", "intrusion0") == 1
    assert at("node_hwmon_voltage_regulator_version", "platform_nct6775_656", "vrm0") == 12
    assert at("node_hwmon_update_interval_seconds", "platform_nct6775_656", "update_interval0") == 1
    meter = "lnxsybus:00_acpi000d:00"
    assert at("node_hwmon_power_average_watt", meter, "power1") == 345
    assert at("node_hwmon_power_accuracy", meter, "power1") == pytest.approx(0.095)
    assert at("node_hwmon_energy_joule_total", meter, "energy1") == pytest.approx(1234.56789)
    assert at("node_hwmon_curr_amps", meter, "curr1") == 1.5
    assert not any(name == "node_hwmon_fan_div" for name, _ in series)  # "N/A": skipped as node_exporter does
    kinds = {s.name: s.kind for s in emitter.samples}
    assert kinds["node_hwmon_energy_joule_total"] == "counter" and kinds["node_hwmon_temp_celsius"] == "gauge"
    chips = {
        dict(labels)["chip"]: dict(labels)["chip_name"] for name, labels in series if name == "node_hwmon_chip_names"
    }
    assert chips == {
        "platform_coretemp_0": "coretemp",
        "platform_nct6775_656": "nct6779",
        "nvme_nvme0": "nvme",
        meter: "power_meter",
        "virtual_chip": "virtual_chip",  # no device link: the cleaned name file
    }
    label = (("chip", "platform_coretemp_0"), ("label", "Package id 0"), ("sensor", "temp1"))
    assert series[("node_hwmon_sensor_label", label)] == 1


async def test_hwmon_chip_without_device_or_name_is_named_after_its_directory(tmp_path):
    sys = copy_tree(tmp_path)
    (sys / "devices/virtual/hwmon/hwmon5/name").unlink()
    emitter = await collect_once(hardware(tmp_path, sys=sys, **only("hwmon")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    assert series[("node_hwmon_temp_celsius", (("chip", "hwmon5"), ("sensor", "temp1")))] == 20
    assert not any(dict(labels).get("chip") == "hwmon5" for name, labels in series if name == "node_hwmon_chip_names")


async def test_thermal_zones_and_cooling_devices(tmp_path):
    emitter = await collect_once(hardware(tmp_path, **only("thermal_zone")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    assert series[("node_thermal_zone_temp", (("type", "x86_pkg_temp"), ("zone", "0")))] == 48
    assert series[("node_thermal_zone_temp", (("type", "acpitz"), ("zone", "1")))] == 27.8
    powerclamp = (("name", "1"), ("type", "intel_powerclamp"))
    assert series[("node_cooling_device_cur_state", powerclamp)] == -1  # idle injection off: as the driver says
    assert series[("node_cooling_device_max_state", powerclamp)] == 50


async def test_a_zone_without_data_is_skipped_silently_and_a_broken_one_reported(tmp_path, monkeypatch):
    real = thermal.read_attr

    def flaky(path: str) -> str:
        if path.endswith("thermal_zone0/temp"):
            raise OSError(errno.ENODATA, "No data available", path)
        return real(path)

    monkeypatch.setattr(thermal, "read_attr", flaky)
    emitter = await collect_once(hardware(tmp_path, **only("thermal_zone")))
    assert emitter.errors == []
    assert {dict(s.labels)["zone"] for s in emitter.samples if s.name == "node_thermal_zone_temp"} == {"1"}
    sys = copy_tree(tmp_path)
    (sys / "class/thermal/thermal_zone1/temp").write_text("hot\n")
    (sys / "class/thermal/cooling_device0/cur_state").unlink()
    emitter = await collect_once(hardware(tmp_path, sys=sys, **only("thermal_zone")))
    assert sorted(e.split(" ", 2)[1] for e in emitter.errors) == ["cooling", "thermal"]
    series = by_series(emitter.samples)
    assert series[("node_cooling_device_max_state", (("name", "1"), ("type", "intel_powerclamp")))] == 50
    assert [s.name for s in emitter.samples].count("node_cooling_device_cur_state") == 1


async def test_cpufreq(tmp_path, monkeypatch):
    emitter = await collect_once(hardware(tmp_path, **only("cpufreq")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    assert series[("node_cpu_scaling_frequency_hertz", (("cpu", "0"),))] == 1.8e9
    assert series[("node_cpu_frequency_max_hertz", (("cpu", "0"),))] == 3.6e9
    assert series[("node_cpu_frequency_hertz", (("cpu", "1"),))] == 2.4e9
    assert ("node_cpu_frequency_hertz", (("cpu", "0"),)) not in series  # intel_pstate has no cpuinfo_cur_freq
    assert not any(labels == (("cpu", "2"),) for _, labels in series)  # offline, no cpufreq directory
    real = thermal.read_attr

    def root_only(path: str) -> str:
        if path.endswith("cpu1/cpufreq/cpuinfo_cur_freq"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        if path.endswith("cpu1/cpufreq/scaling_cur_freq"):
            raise OSError(errno.EIO, "Input/output error", path)
        return real(path)

    monkeypatch.setattr(thermal, "read_attr", root_only)
    emitter = await collect_once(hardware(tmp_path, **only("cpufreq")))
    series = by_series(emitter.samples)
    assert ("node_cpu_frequency_hertz", (("cpu", "1"),)) not in series  # root-only: silent, as node_exporter
    assert ("node_cpu_scaling_frequency_hertz", (("cpu", "1"),)) not in series
    assert series[("node_cpu_frequency_max_hertz", (("cpu", "1"),))] == 2.4e9
    assert len(emitter.errors) == 1 and "scaling_cur_freq" in emitter.errors[0]


async def test_power_supplies(tmp_path):
    emitter = await collect_once(hardware(tmp_path, **only("powersupplyclass")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    bat = (("power_supply", "BAT0"),)
    assert series[("node_power_supply_energy_watthour", bat)] == pytest.approx(38.16)
    assert series[("node_power_supply_voltage_volt", bat)] == pytest.approx(12.096)
    assert series[("node_power_supply_power_watt", bat)] == pytest.approx(8.412)
    assert series[("node_power_supply_capacity", bat)] == 84
    assert series[("node_power_supply_cyclecount", bat)] == 212
    assert series[("node_power_supply_temp_celsius", bat)] == 29.5  # tenths of a degree
    assert series[("node_power_supply_online", (("power_supply", "AC"),))] == 1
    infos = {dict(labels)["power_supply"]: dict(labels) for name, labels in series if name == "node_power_supply_info"}
    assert infos["AC"] == {"power_supply": "AC", "type": "Mains"}  # only the labels the supply has
    assert infos["BAT0"]["status"] == "Discharging" and infos["BAT0"]["technology"] == "Li-poly"
    assert infos["ucsi-source-psy-USBC000:001"]["usb_type"] == "[C] PD PD_PPS"
    ignored = await collect_once(hardware(tmp_path, **only("powersupplyclass", powersupply_ignored_supplies="^ucsi")))
    assert {dict(s.labels)["power_supply"] for s in ignored.samples} == {"AC", "BAT0"}


async def test_a_power_supply_with_an_odd_value_keeps_its_other_series(tmp_path):
    sys = copy_tree(tmp_path)
    (sys / "class/power_supply/BAT0/capacity").write_text("unknown\n")
    emitter = await collect_once(hardware(tmp_path, sys=sys, **only("powersupplyclass")))
    series = by_series(emitter.samples)
    bat = (("power_supply", "BAT0"),)
    assert ("node_power_supply_capacity", bat) not in series
    assert series[("node_power_supply_cyclecount", bat)] == 212
    assert len(emitter.errors) == 1 and "capacity" in emitter.errors[0]


async def test_edac(tmp_path):
    emitter = await collect_once(hardware(tmp_path, **only("edac")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    assert series[("node_edac_correctable_errors_total", (("controller", "0"),))] == 3
    assert series[("node_edac_csrow_correctable_errors_total", (("controller", "0"), ("csrow", "0")))] == 2
    assert series[("node_edac_csrow_correctable_errors_total", (("controller", "0"), ("csrow", "unknown")))] == 1
    assert all(s.kind == "counter" for s in emitter.samples)
    sys = copy_tree(tmp_path)
    (sys / "devices/system/edac/mc/mc0/csrow1/ue_count").unlink()
    broken = await collect_once(hardware(tmp_path, sys=sys, **only("edac")))
    assert broken.samples == [] and len(broken.errors) == 1 and "controller 0" in broken.errors[0]


async def test_rapl_zones_named_and_indexed_as_node_exporter(tmp_path):
    emitter = await collect_once(hardware(tmp_path, **only("rapl")))
    assert emitter.errors == []
    base = f"{FIX}/sys/class/powercap"
    series = by_series(emitter.samples)
    assert (
        series[("node_rapl_package_joules_total", (("index", "1"), ("path", f"{base}/intel-rapl:1")))] == 98765.432109
    )
    assert series[("node_rapl_core_joules_total", (("index", "1"), ("path", f"{base}/intel-rapl:1:0")))] == 34567.890123
    assert series[("node_rapl_dram_joules_total", (("index", "0"), ("path", f"{base}/intel-rapl:0:2")))] == 9876.54321
    assert len(series) == 6
    labelled = await collect_once(hardware(tmp_path, **only("rapl", rapl_zone_label=True)))
    zones = sorted(dict(s.labels)["rapl_zone"] for s in labelled.samples)
    assert {s.name for s in labelled.samples} == {"node_rapl_joules_total"}
    assert zones == ["core", "core", "dram", "package", "package", "uncore"]


async def test_root_only_rapl_counters_are_no_error_and_said_once(tmp_path, caplog, monkeypatch):
    real = power.read_attr

    def as_user(path: str) -> str:  # energy_uj is mode 0400 since Linux 5.10
        if path.endswith("energy_uj"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(power, "read_attr", as_user)
    collector = hardware(tmp_path, **only("rapl"))
    with caplog.at_level(logging.INFO):
        first = await collect_once(collector)
        second = await collect_once(collector)
    assert first.errors == [] and second.errors == [] and first.samples == [] and second.samples == []
    assert sum("readable by root only" in r.getMessage() for r in caplog.records) == 1


async def test_dmi_is_read_once_and_root_only_fields_are_left_out(tmp_path, monkeypatch):
    sys = copy_tree(tmp_path)
    real = inventory.read_attr

    def as_user(path: str) -> str:
        if path.endswith(("board_serial", "product_serial", "product_uuid", "chassis_serial")):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(inventory, "read_attr", as_user)
    collector = hardware(tmp_path, sys=sys, **only("dmi"))
    first = await collect_once(collector)
    (sys / "class/dmi/id/bios_version").write_text("changed\n")
    second = await collect_once(collector)
    assert first.errors == [] and len(first.samples) == 1
    assert first.samples[0].labels == second.samples[0].labels
    labels = dict(first.samples[0].labels)
    assert labels["system_vendor"] == "LENOVO" and labels["bios_version"] == "N2IETA5W (1.47 )"
    assert not {"board_serial", "product_serial", "product_uuid", "chassis_serial", "chassis_type"} & set(labels)


async def test_nvme(tmp_path):
    emitter = await collect_once(hardware(tmp_path, **only("nvme")))
    assert emitter.errors == []
    assert dict(emitter.samples[0].labels) == {
        "device": "nvme0",
        "firmware_revision": "2B2QEXM7",
        "model": "Samsung SSD 970 EVO Plus 1TB",
        "serial": "S4EWNX0R123456A",
        "state": "live",
    }
    sys = copy_tree(tmp_path)
    (sys / "class/nvme/nvme0/model").unlink()
    broken = await collect_once(hardware(tmp_path, sys=sys, **only("nvme")))
    assert broken.samples == [] and len(broken.errors) == 1 and broken.errors[0].startswith("nvme:")


async def test_a_host_without_any_of_this_hardware(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    emitter = await collect_once(hardware(tmp_path, sys=empty))
    assert emitter.samples == [] and emitter.errors == []


async def test_a_part_that_raises_does_not_stop_the_others(tmp_path, monkeypatch):
    def boom(*args):
        raise RuntimeError("a driver we never met")

    monkeypatch.setattr(inventory, "nvme", boom)
    emitter = await collect_once(hardware(tmp_path))
    assert emitter.errors == ["nvme: RuntimeError: a driver we never met"]
    assert any(s.name == "node_dmi_info" for s in emitter.samples)


def test_numbered_entries_are_what_go_glob_prefix_digit_star_finds(tmp_path):
    import glob

    from agent.sysfs import numbered

    for name in (
        "thermal_zone10",
        "thermal_zone2",
        "thermal_zone",
        "thermal_zonex1",
        ".thermal_zone3",
        "cooling_device0",
    ):
        (tmp_path / name).mkdir()
    (tmp_path / "thermal_zone7-broken").symlink_to(tmp_path / "missing")
    found = numbered(str(tmp_path), "thermal_zone")
    assert [path for _, path in found] == sorted(glob.glob(f"{tmp_path}/thermal_zone[0-9]*"))
    assert [number for number, _ in found] == ["10", "2", "7-broken"]  # sorted as paths, as Go's Glob sorts
    assert numbered(str(tmp_path / "absent"), "cpu") == []


async def test_thermal_zones_and_cooling_devices_come_from_one_listing_per_run(tmp_path, monkeypatch):
    """/sys/class/thermal is listed once a run for both (a listing costs 4 µs, about 13 once the
    caches went cold between two runs), with the same series as two listings."""
    import os

    import agent.sysfs

    collector = hardware(tmp_path, **only("thermal_zone"))
    before = await collect_once(collector)
    real_listdir, listed = os.listdir, []

    def listdir(path="."):
        listed.append(str(path))
        return real_listdir(path)

    monkeypatch.setattr(agent.sysfs.os, "listdir", listdir)
    emitter = await collect_once(collector)
    assert emitter.errors == []
    assert {s.name for s in emitter.samples} >= {"node_thermal_zone_temp", "node_cooling_device_cur_state"}
    assert by_series(emitter.samples).keys() == by_series(before.samples).keys()
    assert [path for path in listed if path.endswith("/class/thermal")] == [str(FIX / "sys" / "class" / "thermal")]


def test_numbered_groups_are_numbered_for_each_prefix(tmp_path):
    from agent.sysfs import numbered, numbered_groups

    for name in ("thermal_zone1", "thermal_zone0", "cooling_device3", "cooling_devicex", "thermal_zone"):
        (tmp_path / name).mkdir()
    zones, devices = numbered_groups(str(tmp_path), "thermal_zone", "cooling_device")
    assert zones == numbered(str(tmp_path), "thermal_zone") and [n for n, _ in zones] == ["0", "1"]
    assert devices == numbered(str(tmp_path), "cooling_device") and [n for n, _ in devices] == ["3"]
    assert numbered_groups(str(tmp_path / "absent"), "a", "b") == [[], []]


async def test_hardware_that_appears_is_looked_for_once_a_minute_and_what_goes_away_ends_at_once(tmp_path):
    """A part that found nothing looks again only after RECHECK_NOTHING_FOUND (node_exporter looks at each
    scrape): on a host without most of this hardware, a run costs no failed lookups."""
    from agent.plugin import RECHECK_NOTHING_FOUND

    now = [10**18]
    sys = tmp_path / "sys"
    (sys / "class").mkdir(parents=True)
    collector = HardwareCollector(
        convert(only("nvme"), Config), collector_context(tmp_path, sys_root=sys, clock=lambda: now[0])
    )
    assert (await collect_once(collector)).samples == []
    shutil.copytree(FIX / "sys" / "class" / "nvme", sys / "class" / "nvme", symlinks=True)
    now[0] += int((RECHECK_NOTHING_FOUND - 1) * 1e9)
    assert (await collect_once(collector)).samples == []  # not looked for yet
    now[0] += int(1e9)
    assert [s.name for s in (await collect_once(collector)).samples] == ["node_nvme_info"]
    shutil.rmtree(sys / "class" / "nvme")
    now[0] += int(1e9)
    assert (await collect_once(collector)).samples == []  # gone: its series end with this run
