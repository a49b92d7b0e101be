"""The cpu collector on /proc and /sys fixture trees."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import msgspec
import pytest

from collectors.cpu.cpu import CpuCollector
from tests.support import FIXTURES, by_series, collect_once, collector_context

PROC = FIXTURES / "proc"
HZ = os.sysconf("SC_CLK_TCK")
# the columns of a cpuN line in /proc/stat, in the kernel's order (proc(5)), then guest and guest_nice
MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def make(tmp_path: Path, proc: Path, sys_root: Path | None = None, **options) -> CpuCollector:
    config = msgspec.convert(options, CpuCollector.Config)
    return CpuCollector(config, collector_context(tmp_path, proc_root=proc, sys_root=sys_root or tmp_path / "nosys"))


def cpu_series(cpu: str, mode: str, name: str = "node_cpu_seconds_total") -> tuple[str, tuple]:
    return (name, (("cpu", cpu), ("mode", mode)))


def expected_from_stat(text: str) -> dict[tuple[str, tuple], float]:
    """What node_exporter derives from a well-formed /proc/stat, written out plainly."""
    want = {}
    for line in text.splitlines():
        key, *values = line.split()
        if key.startswith("cpu") and key != "cpu":
            ticks = [int(v) for v in values] + [0] * (10 - len(values))
            for mode, tick in zip(MODES, ticks[:8], strict=True):
                want[cpu_series(key[3:], mode)] = tick / HZ
            want[cpu_series(key[3:], "user", "node_cpu_guest_seconds_total")] = ticks[8] / HZ
            want[cpu_series(key[3:], "nice", "node_cpu_guest_seconds_total")] = ticks[9] / HZ
        elif key == "intr":
            want[("node_intr_total", ())] = int(values[0])
        else:
            name = {
                "ctxt": "node_context_switches_total",
                "processes": "node_forks_total",
                "btime": "node_boot_time_seconds",
                "procs_running": "node_procs_running",
                "procs_blocked": "node_procs_blocked",
            }.get(key)
            if name:
                want[(name, ())] = int(values[0])
    return want


def expected_load(text: str) -> dict[tuple[str, tuple], float]:
    one, five, fifteen = (float(v) for v in text.split()[:3])
    return {("node_load1", ()): one, ("node_load5", ()): five, ("node_load15", ()): fifteen}


@pytest.mark.parametrize("tree", ["host", "offline_cpu", "old_kernel"])
async def test_values_match_the_fixture(tmp_path, tree):
    want = expected_from_stat((PROC / tree / "stat").read_text()) | expected_load((PROC / tree / "loadavg").read_text())
    emitter = await collect_once(make(tmp_path, PROC / tree))
    assert emitter.errors == []
    assert by_series(emitter.samples) == pytest.approx(want)
    assert len(emitter.samples) == len(want)  # no duplicate series


async def test_names_types_and_labels_are_node_exporters(tmp_path):
    """The host fixture yields exactly the families node_exporter 1.5 exported on that host."""
    reference = {}
    for line in (PROC / "host" / "node_exporter_families.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, kind, *labels = line.split()
            if not name.startswith(("node_memory_", "node_vmstat_")):
                reference[name] = (kind, set(labels[0].split(",")) if labels else set())
    emitter = await collect_once(make(tmp_path, PROC / "host"))
    ours = {s.name: (s.kind, {k for k, _ in s.labels}) for s in emitter.samples}
    assert ours == reference


async def test_units(tmp_path):
    emitter = await collect_once(make(tmp_path, PROC / "host"))
    units = {s.name: s.unit for s in emitter.samples}
    assert units["node_cpu_seconds_total"] == units["node_cpu_guest_seconds_total"] == "s"
    assert units["node_boot_time_seconds"] == "s"
    assert {units[n] for n in ("node_load1", "node_intr_total", "node_forks_total", "node_procs_running")} == {"1"}


async def test_offline_cpu_has_no_series(tmp_path):
    emitter = await collect_once(make(tmp_path, PROC / "offline_cpu"))
    cpus = {dict(s.labels)["cpu"] for s in emitter.samples if s.name == "node_cpu_seconds_total"}
    assert cpus == {"0", "1", "3"}
    values = by_series(emitter.samples)
    assert values[cpu_series("3", "idle")] == 4000 / HZ
    assert values[cpu_series("0", "user", "node_cpu_guest_seconds_total")] == 10 / HZ


async def test_garbled_lines_are_counted_and_the_rest_emitted(tmp_path):
    stat = (PROC / "garbled" / "stat").read_text().splitlines()
    emitter = await collect_once(make(tmp_path, PROC / "garbled"))
    names = {s.name for s in emitter.samples}
    cpus = {dict(s.labels)["cpu"] for s in emitter.samples if s.name == "node_cpu_seconds_total"}
    assert cpus == {"0"}  # cpu1 has a bad number, cpu2 is truncated, cpuX is no CPU
    assert "node_intr_total" not in names and "node_procs_blocked" not in names
    cpu0 = stat[1].split()
    values = by_series(emitter.samples)
    assert values[cpu_series("0", "system")] == int(cpu0[3]) / HZ
    assert values[("node_context_switches_total", ())] == int(stat[6].split()[1])
    assert not any(n.startswith("node_load") for n in names)
    assert len(emitter.errors) == 2
    stat_error, load_error = map(str, emitter.errors)
    assert "skipped 4 malformed line(s)" in stat_error and "cpu1" in stat_error
    assert "loadavg" in load_error


async def test_missing_file_reports_and_keeps_the_rest(tmp_path):
    emitter = await collect_once(make(tmp_path, PROC / "missing_files"))  # has stat, no loadavg
    assert len(emitter.errors) == 1 and "loadavg" in str(emitter.errors[0])
    assert ("node_forks_total", ()) in by_series(emitter.samples)
    emitter = await collect_once(make(tmp_path, tmp_path / "empty"))
    assert emitter.samples == [] and len(emitter.errors) == 2


async def test_cpus_filter_and_guest_off(tmp_path):
    emitter = await collect_once(make(tmp_path, PROC / "offline_cpu", cpus=[3], guest=False))
    cpu_samples = [s for s in emitter.samples if s.name.startswith("node_cpu_")]
    assert {s.name for s in cpu_samples} == {"node_cpu_seconds_total"}
    assert {dict(s.labels)["cpu"] for s in cpu_samples} == {"3"}
    assert len(cpu_samples) == len(MODES)


def write_stat(proc: Path, cpu0: list[int]) -> None:
    proc.mkdir(exist_ok=True)
    (proc / "stat").write_text(f"cpu0 {' '.join(map(str, cpu0))}\nctxt 1\n")
    (proc / "loadavg").write_text("0 0 0 1/1 1\n")


async def test_counters_never_step_back_unless_the_cpu_was_replugged(tmp_path):
    proc = tmp_path / "proc"
    collector = make(tmp_path, proc)
    runs = []
    # idle steps back by 1 tick (kernel jitter), then iowait drops; then idle
    # falls by far more than 3 s: the CPU came back from offline, counters restarted.
    for ticks in (
        [10, 0, 5, 1000, 50, 0, 0, 0, 0, 0],
        [12, 0, 6, 999, 40, 0, 0, 0, 0, 0],
        [14, 0, 7, 1001, 41, 0, 0, 0, 0, 0],
        [1, 0, 1, 2, 0, 0, 0, 0, 0, 0],
    ):
        write_stat(proc, ticks)
        runs.append(by_series((await collect_once(collector)).samples))
    idle, iowait, user = (cpu_series("0", m) for m in ("idle", "iowait", "user"))
    assert [run[idle] for run in runs] == [1000 / HZ, 1000 / HZ, 1001 / HZ, 2 / HZ]
    assert [run[iowait] for run in runs] == [50 / HZ, 50 / HZ, 50 / HZ, 0.0]
    assert [run[user] for run in runs] == [10 / HZ, 12 / HZ, 14 / HZ, 1 / HZ]


def make_sys(root: Path, isolated: str, topology: dict[int, tuple[int, int, int, int]]) -> Path:
    """``topology``: cpu -> (package, core, core throttles, package throttles)."""
    base = root / "devices" / "system" / "cpu"
    base.mkdir(parents=True)
    (base / "isolated").write_text(isolated + "\n")
    for cpu, (package, core, core_count, package_count) in topology.items():
        (base / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (base / f"cpu{cpu}" / "thermal_throttle").mkdir()
        (base / f"cpu{cpu}" / "topology" / "physical_package_id").write_text(f"{package}\n")
        (base / f"cpu{cpu}" / "topology" / "core_id").write_text(f"{core}\n")
        (base / f"cpu{cpu}" / "thermal_throttle" / "core_throttle_count").write_text(f"{core_count}\n")
        (base / f"cpu{cpu}" / "thermal_throttle" / "package_throttle_count").write_text(f"{package_count}\n")
    (base / "cpufreq").mkdir()  # not a CPU
    return root


async def test_isolated_cpus_and_thermal_throttles_from_sysfs(tmp_path):
    # two packages; cpu0 and cpu2 are hyperthreads of package 0 core 0 (counted once)
    topology = {0: (0, 0, 7, 11), 1: (0, 1, 3, 11), 2: (0, 0, 7, 11), 3: (1, 0, 5, 13)}
    sys_root = make_sys(tmp_path / "sys", "1-2,3", topology)
    emitter = await collect_once(make(tmp_path, PROC / "offline_cpu", sys_root))
    values = by_series(emitter.samples)
    assert {k: v for k, v in values.items() if k[0] == "node_cpu_isolated"} == {
        ("node_cpu_isolated", (("cpu", str(cpu)),)): 1.0 for cpu in (1, 2, 3)
    }
    cores = {(str(p), str(c)): n for p, c, n, _ in topology.values()}
    assert {k: v for k, v in values.items() if k[0] == "node_cpu_core_throttles_total"} == {
        ("node_cpu_core_throttles_total", (("core", c), ("package", p))): n for (p, c), n in cores.items()
    }
    packages = {str(p): n for p, _, _, n in topology.values()}
    assert {k: v for k, v in values.items() if k[0] == "node_cpu_package_throttles_total"} == {
        ("node_cpu_package_throttles_total", (("package", p),)): n for p, n in packages.items()
    }
    assert emitter.errors == []


async def test_one_blocking_call_per_collect(tmp_path):
    calls = []
    context = collector_context(tmp_path, proc_root=PROC / "host", sys_root=tmp_path)

    async def run_blocking(fn, *args):
        calls.append(fn)
        return fn(*args)

    collector = CpuCollector(CpuCollector.Config(), dataclasses.replace(context, run_blocking=run_blocking))
    await collector.start()
    calls.clear()
    emitter = await collect_once(collector)
    assert len(calls) == 1 and emitter.samples
