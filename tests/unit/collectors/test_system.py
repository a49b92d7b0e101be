"""The system collector on /proc, /sys and rootfs fixture trees (tests/fixtures/system)."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
from pathlib import Path

import msgspec
import pytest

from agent.config import ConfigError, parse_config
from agent.procfiles import KeptFiles
from agent.registry import load_registry
from collectors.system.base import Roots, Unavailable
from collectors.system.clock import STA_NANO, TimexCollector
from collectors.system.info import parse_os_release
from collectors.system.system import ALL, SystemCollector
from tests.support import FIXTURES, by_series, collect_once, collector_context

TREES = FIXTURES / "system"


def make(tmp_path: Path, tree: str, **options) -> SystemCollector:
    root = TREES / tree
    config = msgspec.convert(options, SystemCollector.Config)
    context = collector_context(tmp_path, proc_root=root / "proc", sys_root=root / "sys", rootfs=root / "rootfs")
    return SystemCollector(config, context)


def success(samples) -> dict[str, float]:
    return {dict(s.labels)["collector"]: s.value for s in samples if s.name == "node_scrape_collector_success"}


def series(samples, name: str) -> dict[tuple, float]:
    return {labels: value for (n, labels), value in by_series(samples).items() if n == name}


async def test_host_tree_has_node_exporters_families(tmp_path):
    """Names, types and label names equal what node_exporter 1.5 exported on the host the tree comes from."""
    reference = {}
    for line in (TREES / "host" / "node_exporter_families.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, kind, *labels = line.split()
            reference[name] = (kind, set(labels[0].split(",")) if labels else set())
    emitter = await collect_once(make(tmp_path, "host"))
    assert emitter.errors == []
    ours = {s.name: (s.kind, {k for k, _ in s.labels}) for s in emitter.samples}
    ours = {name: value for name, value in ours.items() if not name.startswith("node_scrape_collector_")}
    assert ours == reference
    assert success(emitter.samples) == {name: 0.0 if name == "schedstat" else 1.0 for name in ALL}


async def test_host_tree_values(tmp_path):
    tree = TREES / "host"
    emitter = await collect_once(make(tmp_path, "host"))
    values = by_series(emitter.samples)
    allocated, _, maximum = (tree / "proc/sys/fs/file-nr").read_text().split()
    assert values[("node_filefd_allocated", ())] == int(allocated)
    assert values[("node_filefd_maximum", ())] == int(maximum)
    assert values[("node_entropy_available_bits", ())] == int(
        (tree / "proc/sys/kernel/random/entropy_avail").read_text()
    )
    cpu_some = (tree / "proc/pressure/cpu").read_text().split("total=")[1].split()[0]
    assert values[("node_pressure_cpu_waiting_seconds_total", ())] == int(cpu_some) / 1e6
    assert values[("node_os_version", (("id", "debian"), ("id_like", ""), ("name", "Debian GNU/Linux")))] == 12
    current = (tree / "sys/devices/system/clocksource/clocksource0/current_clocksource").read_text().strip()
    assert values[("node_time_clocksource_current_info", (("clocksource", current), ("device", "0")))] == 1
    # processes: 1 (3 task dirs), 2 (a kernel thread); thread count from stat field 20
    assert values[("node_processes_pids", ())] == 2
    assert values[("node_processes_max_processes", ())] == int((tree / "proc/sys/kernel/pid_max").read_text())
    assert sum(series(emitter.samples, "node_processes_threads_state").values()) == 4


async def test_uname_is_the_system_call(tmp_path):
    emitter = await collect_once(make(tmp_path, "host", collectors=["uname"]))
    ((labels, value),) = series(emitter.samples, "node_uname_info").items()
    uts = os.uname()
    assert value == 1
    assert dict(labels) == {
        "sysname": uts.sysname,
        "nodename": uts.nodename,
        "release": uts.release,
        "version": uts.version,
        "machine": uts.machine,
        "domainname": Path("/proc/sys/kernel/domainname").read_text().strip(),
    }


async def test_time_and_zone(tmp_path):
    before = time.time()
    emitter = await collect_once(make(tmp_path, "host", collectors=["time"]))
    now = series(emitter.samples, "node_time_seconds")[()]
    assert before <= now <= time.time()
    ((labels, offset),) = series(emitter.samples, "node_time_zone_offset_seconds").items()
    assert labels == (("time_zone", time.localtime(now).tm_zone),)
    assert offset == time.localtime(now).tm_gmtoff


async def test_bare_metal_tree(tmp_path):
    """Hand-made layouts this VM lacks: schedstat, a 5.4 cpu pressure file, four clocksources, usr/lib/os-release."""
    emitter = await collect_once(make(tmp_path, "bare_metal", exclude=["timex", "uname"]))
    assert emitter.errors == []
    samples = emitter.samples
    assert series(samples, "node_schedstat_running_seconds_total") == {
        (("cpu", "0"),): 1145.393433463,
        (("cpu", "1"),): 1010.813389112,
        (("cpu", "3"),): 999e-9,
    }
    assert series(samples, "node_schedstat_waiting_seconds_total")[(("cpu", "1"),)] == 83.542036924
    assert series(samples, "node_schedstat_timeslices_total")[(("cpu", "0"),)] == 3911870
    assert series(samples, "node_pressure_cpu_waiting_seconds_total") == {(): 987.654321}
    assert series(samples, "node_pressure_io_stalled_seconds_total") == {(): 2.5}
    # Go's Glob order is lexical: clocksource10 comes before clocksource2
    current = series(samples, "node_time_clocksource_current_info")
    assert sorted(dict(k)["device"] for k in current) == ["0", "1", "2", "3"]
    available = series(samples, "node_time_clocksource_available_info")
    assert (("clocksource", "jiffies"), ("device", "2")) in available
    assert (("clocksource", "hpet"), ("device", "0")) in available
    info = dict(next(iter(series(samples, "node_os_info"))))
    assert info["variant"] == 'Server "edge"'
    assert info["id_like"] == "debian"
    assert info["pretty_name"] == "Ubuntu 22.04.4 LTS"
    assert series(samples, "node_os_version") == {(("id", "ubuntu"), ("id_like", "debian"), ("name", "Ubuntu")): 22.04}
    assert series(samples, "node_filefd_maximum") == {(): 9223372036854775807.0}


async def test_interrupts_labels_follow_node_exporter(tmp_path):
    emitter = await collect_once(make(tmp_path, "bare_metal", collectors=["interrupts"]))
    got = series(emitter.samples, "node_interrupts_total")
    # info is the chip, devices the rest of the line (the trigger type too), as node_exporter splits it
    shared = (("devices", "16-fasteoi ehci_hcd:usb1, i801_smbus"), ("info", "IO-APIC"), ("type", "16"))
    assert got[(("cpu", "2"), *shared)] == 331044  # the third column is CPU3: cpu is the position
    assert got[(("cpu", "0"), ("devices", ""), ("info", "Local timer interrupts"), ("type", "LOC"))] == 90872340
    assert got[(("cpu", "1"), ("devices", "524288-edge nvme0q1"), ("info", "PCI-MSI"), ("type", "124"))] == 5112923
    assert not [k for k in got if dict(k)["type"] in ("ERR", "MIS")]
    assert len(got) == 8 * 3


async def test_processes_states_and_odd_command_names(tmp_path):
    emitter = await collect_once(make(tmp_path, "bare_metal", collectors=["processes"]))
    samples = emitter.samples
    assert series(samples, "node_processes_state") == {(("state", "S"),): 1, (("state", "D"),): 1}
    assert series(samples, "node_processes_threads_state") == {
        (("thread_state", "S"),): 1,
        (("thread_state", "R"),): 1,
        (("thread_state", "Z"),): 1,
        (("thread_state", "D"),): 1,
    }
    assert series(samples, "node_processes_threads") == {(): 4}  # 3 + 1 from stat field 20
    assert series(samples, "node_processes_max_threads") == {(): 1031009}


async def test_features_the_host_lacks_are_not_errors_and_are_logged_once(tmp_path, caplog):
    collector = make(tmp_path, "minimal", exclude=["timex", "uname"])
    caplog.set_level(logging.INFO)
    first = await collect_once(collector)
    second = await collect_once(collector)
    assert first.errors == [] and second.errors == []
    assert success(first.samples) == {
        "entropy": 1.0,
        "filefd": 1.0,
        "interrupts": 1.0,
        "os": 0.0,
        "pressure": 0.0,
        "processes": 1.0,
        "schedstat": 0.0,
        "time": 1.0,
    }
    names = {s.name for s in first.samples}
    assert not [n for n in names if n.startswith(("node_pressure_", "node_schedstat_", "node_os_"))]
    assert "node_time_clocksource_current_info" not in names and "node_time_seconds" in names
    unavailable = [r.getMessage() for r in caplog.records if "not available" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in unavailable) == [
        "system collector os",
        "system collector pressure",
        "system collector schedstat",
    ]


async def test_garbled_tree_reports_each_part_and_keeps_the_rest(tmp_path):
    collector = make(tmp_path, "garbled", exclude=["timex", "uname"])
    emitter = await collect_once(collector)
    failed = sorted(str(e).split(":")[0] for e in emitter.errors)
    assert failed == ["entropy", "filefd", "interrupts", "os", "pressure", "processes", "time"]
    assert success(emitter.samples)["schedstat"] == 1.0
    # the bad schedstat lines are skipped, as by node_exporter; the good one stays
    assert series(emitter.samples, "node_schedstat_running_seconds_total") == {(("cpu", "2"),): 5.0}
    assert "node_time_seconds" in {s.name for s in emitter.samples}
    again = await collect_once(collector)
    assert [str(e) for e in again.errors] == [str(e) for e in emitter.errors]  # same text: logged once


async def test_a_missing_proc_file_is_an_error_not_a_crash(tmp_path):
    collector = make(tmp_path, "minimal", collectors=["filefd", "entropy"])
    collector._parts[0]._path = tmp_path / "gone"  # the file vanishes (an exotic container)
    emitter = await collect_once(collector)
    assert [str(e).split(":")[0] for e in emitter.errors] == ["filefd"]
    assert success(emitter.samples) == {"filefd": 0.0, "entropy": 1.0}


async def test_pressure_disabled_at_boot_is_unavailable(tmp_path, monkeypatch):
    def refuse(self, path, size=4096):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(KeptFiles, "read", refuse)  # the pressure files are read through kept descriptors
    emitter = await collect_once(make(tmp_path, "host", collectors=["pressure"]))
    assert emitter.errors == []
    assert success(emitter.samples) == {"pressure": 0.0}


def fake_adjtimex(state: int, errno_value: int = 0, **fields):
    def call(pointer):
        if errno_value:
            ctypes.set_errno(errno_value)
            return -1
        for key, value in fields.items():
            setattr(pointer._obj, key, value)
        return state

    return call


def run_timex(adjtimex) -> dict:
    class Emit:
        samples: dict = {}

        def gauge(self, name, value, labels=(), **_):
            self.samples[name] = value

        counter = gauge

    emit = Emit()
    emit.samples = {}
    TimexCollector(Roots(Path("/proc"), Path("/sys"), Path("/")), adjtimex).collect(emit)
    return emit.samples


def test_timex_units_follow_node_exporter():
    got = run_timex(
        fake_adjtimex(
            0,
            offset=-1500,
            freq=-655360,
            maxerror=250000,
            esterror=1000,
            status=0x2001,  # STA_PLL | STA_NANO
            constant=7,
            tick=10000,
            jitter=2000,
            ppsfreq=65536,
            stabil=131072,
            shift=4,
            jitcnt=3,
            tai=37,
        )
    )
    assert got["node_timex_sync_status"] == 1
    assert got["node_timex_offset_seconds"] == -1500 / 1e9  # STA_NANO: nanoseconds
    assert got["node_timex_pps_jitter_seconds"] == 2000 / 1e9
    assert got["node_timex_frequency_adjustment_ratio"] == pytest.approx(1 - 10 / 1e6)
    assert got["node_timex_maxerror_seconds"] == 0.25
    assert got["node_timex_tick_seconds"] == 0.01
    assert got["node_timex_pps_frequency_hertz"] == pytest.approx(1e-6)
    assert got["node_timex_pps_stability_hertz"] == pytest.approx(2e-6)
    assert got["node_timex_status"] == 0x2001 and got["node_timex_tai_offset_seconds"] == 37
    assert got["node_timex_pps_jitter_total"] == 3 and got["node_timex_pps_shift_seconds"] == 4
    micro = run_timex(fake_adjtimex(5, offset=-1500, status=0x40))
    assert micro["node_timex_offset_seconds"] == -1500 / 1e6  # no STA_NANO: microseconds
    assert micro["node_timex_sync_status"] == 0  # TIME_ERROR
    assert STA_NANO == 0x2000


def test_timex_eperm_is_unavailable_and_other_errors_fail():
    with pytest.raises(Unavailable, match="ProtectClock") as info:
        run_timex(fake_adjtimex(0, errno.EPERM))
    assert info.value.warn  # a sandbox hides the clock alerts' input: say so louder than "no PSI"
    with pytest.raises(OSError, match="adjtimex"):
        run_timex(fake_adjtimex(0, errno.EINVAL))


def test_real_adjtimex_reads_this_host():
    got = run_timex(None)
    assert got["node_timex_sync_status"] in (0, 1)
    assert 0 < got["node_timex_tick_seconds"] < 1


def test_os_release_quoting():
    text = '# comment\nA=plain\nB="double \\"quoted\\" \\$x"\nC=\'single "kept"\'\nD="x" # trailing\n\nE=\n'
    assert parse_os_release(text) == {"A": "plain", "B": 'double "quoted" $x', "C": 'single "kept"', "D": "x", "E": ""}
    for bad in ("NOEQUALS\n", 'A="open\n', "A=two words\n", "1A=x\n"):
        with pytest.raises(ValueError):
            parse_os_release(bad)


def test_config_names_unknown_parts():
    registry = load_registry()
    with pytest.raises(ConfigError) as info:
        parse_config({"collectors": {"system": [{"exclude": ["uname", "ntp"]}]}}, environ={}, registry=registry)
    assert "collectors.system[0]" in "\n".join(info.value.errors)
    assert "ntp" in "\n".join(info.value.errors)


async def test_collectors_and_exclude_select_parts(tmp_path):
    emitter = await collect_once(make(tmp_path, "host", collectors=["filefd", "entropy", "os"], exclude=["os"]))
    assert set(success(emitter.samples)) == {"filefd", "entropy"}
    assert {s.name for s in emitter.samples} - {
        "node_scrape_collector_success",
        "node_scrape_collector_duration_seconds",
    } == {
        "node_filefd_allocated",
        "node_filefd_maximum",
        "node_entropy_available_bits",
        "node_entropy_pool_size_bits",
    }


async def test_a_refused_adjtimex_is_a_warning_once_not_an_error(tmp_path, caplog):
    collector = make(tmp_path, "host", collectors=["timex"])
    collector._parts[0]._adjtimex = fake_adjtimex(0, errno.EPERM)
    caplog.set_level(logging.INFO)
    runs = [await collect_once(collector) for _ in range(3)]
    assert all(run.errors == [] and success(run.samples) == {"timex": 0.0} for run in runs)
    assert not [s for run in runs for s in run.samples if s.name.startswith("node_timex_")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ProtectClock" in warnings[0].getMessage()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a proc instance needs root")
def test_processes_refuses_to_count_under_hidepid(tmp_path):
    """The packaged unit mounts /proc with hidepid (ProtectProc=invisible): counts of only the agent's
    own processes would look plausible and be wrong, so the part reports itself unavailable."""
    import subprocess

    from collectors.system.processes import ProcessesCollector

    mnt = tmp_path / "proc"
    mnt.mkdir()
    # a new proc instance (Linux 5.8+) with its own options; the host's /proc is left as it is
    subprocess.run(["mount", "-t", "proc", "-o", "hidepid=invisible", "proc", str(mnt)], check=True)
    try:
        roots = Roots(proc=mnt, sys=Path("/sys"), rootfs=Path("/"))
        with pytest.raises(Unavailable, match="hidepid=invisible") as raised:
            ProcessesCollector(roots).collect(None)
        assert raised.value.warn
        assert "hidepid" not in Path("/proc/self/mountinfo").read_text().split(" /proc ")[1].split("\n")[0]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def test_a_part_the_host_lacks_is_tried_again_once_a_minute_and_reports_success_0_meanwhile(tmp_path):
    """Unavailable (no schedstat) is remembered for RECHECK_NOTHING_FOUND: the runs between say success 0
    as before, without looking."""
    from agent.plugin import RECHECK_NOTHING_FOUND

    now = [10**18]
    calls = []
    root = TREES / "minimal"
    context = collector_context(
        tmp_path, proc_root=root / "proc", sys_root=root / "sys", rootfs=root / "rootfs", clock=lambda: now[0]
    )
    collector = SystemCollector(msgspec.convert({"collectors": ["schedstat"]}, SystemCollector.Config), context)
    look = collector._parts[0].collect

    def counted(emit):
        calls.append(now[0])
        return look(emit)

    collector._parts[0].collect = counted
    for step in (0, RECHECK_NOTHING_FOUND - 1, 1):
        now[0] += int(step * 1e9)
        emitter = await collect_once(collector)
        assert success(emitter.samples) == {"schedstat": 0.0} and emitter.errors == []
        assert [s.name for s in emitter.samples] == [
            "node_scrape_collector_duration_seconds",
            "node_scrape_collector_success",
        ]
    assert len(calls) == 2  # the first run and the one a minute later
