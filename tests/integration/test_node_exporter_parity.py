"""hostwatch's host collectors against a real node_exporter on the same host.

For each hostwatch collector a node_exporter runs with only its counterpart
collectors. hostwatch's collector runs in-process twice, before and after the
scrape, so for every series the two reads bracket node_exporter's moment:
counters must fall inside the bracket (plus a hair of slack), gauges inside it
plus a tolerance for what moves within the tens of milliseconds between reads.
Families, types, label names and label values must match exactly.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.emitter import RunEmitter
from agent.registry import PluginLoadError, load_registry
from tests.peers.fixtures_node_exporter import scrape
from tests.support import FIXTURES, collector_context

pytestmark = pytest.mark.peers

COUNTERPARTS = {
    "cpu": ("cpu", "loadavg", "stat"),
    "memory": ("meminfo", "vmstat"),
    "disk": ("filesystem", "diskstats"),
    "network": ("netdev", "netstat", "sockstat"),
    "netclass": (
        "netclass",
        "softnet",
        "arp",
        "conntrack",
        "udp_queues",
        "bonding",
        "ipvs",
        "infiniband",
        "fibrechannel",
    ),
    "hardware": ("hwmon", "thermal_zone", "cpufreq", "powersupplyclass", "edac", "rapl", "dmi", "nvme"),
}
# kernel and system information, and cron jobs' textfiles (the fixture files, read by both sides)
COUNTERPARTS |= {
    "system": ("uname", "os", "time", "timex", "filefd", "entropy", "pressure", "schedstat", "processes", "interrupts"),
    "textfile": ("textfile",),
}
TEXTFILES = FIXTURES / "textfile" / "good"
CONFIGS = {"textfile": {"directories": [str(TEXTFILES)]}}
FULL_COVERAGE = set(COUNTERPARTS)
# Collectors of hardware a host (a VM) may not have: with nothing to compare on this
# host the test skips; test_matches_node_exporter_on_fixtures covers them everywhere.
HOST_MAY_LACK = {"hardware"}
# Debian patches two of node_exporter's upstream defaults (it excludes /mnt, /media
# and all of /run, and the lo interface); hostwatch keeps upstream's, which is what
# node_exporter's own releases and most fleets run, so the reference gets them too.
UPSTREAM_DEFAULTS = {
    "disk": (
        "--collector.filesystem.mount-points-exclude="
        "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)",
    ),
    "network": ("--collector.netdev.device-exclude=",),
}
UPSTREAM_DEFAULTS["textfile"] = (f"--collector.textfile.directory={TEXTFILES}",)
IGNORED = ("node_scrape_collector_", "node_exporter_build_info", "go_", "process_", "promhttp_")
# Values that do not move while the host runs: compared exactly.
EXACT = {
    "node_boot_time_seconds",
    "node_memory_MemTotal_bytes",
    "node_memory_SwapTotal_bytes",
    "node_memory_HugePages_Total",
    "node_memory_Hugepagesize_bytes",
    "node_memory_VmallocTotal_bytes",
    "node_filesystem_size_bytes",
}
# Families whose series come and go with the instant of each read (a state letter exists only
# while some process is in it): compared on the series both sides have.
TRANSIENT_SERIES = {"node_processes_state", "node_processes_threads_state"}
# node_exporter's TYPE -> the Sample kind hostwatch uses for it. Untyped has no
# counterpart: Prometheus and OpenTelemetry's Prometheus receiver treat it as a gauge.
KIND_OF = {"counter": "counter", "gauge": "gauge", "unknown": "gauge"}
MIB = 1024 * 1024


@dataclass
class Family:
    kind: str
    series: dict[frozenset, float] = field(default_factory=dict)


def tolerance(name: str, kind: str, value: float) -> float:
    """How far outside the [before, after] bracket node_exporter's value may be.

    * static values: 0;
    * counters: 0.1 %, plus two clock ticks for CPU seconds, which the kernel
      lets step back a little on tickless CPUs;
    * runnable/blocked process counts are instants: the scrape itself makes
      node_exporter's threads runnable, so up to two per CPU plus two;
    * byte gauges: 32 MiB or 2 %: page cache, slab and free memory move with
      what pytest, node_exporter and the kernel allocate between the reads;
      unit mistakes (x1000 vs x1024) are still caught by the exact totals;
    * load averages: 0.01 (the kernel rounds to hundredths);
    * other gauges (socket, inode counts ...): 2 units or 2 %, the scrape's own
      connection shows up in them.
    """
    if name in EXACT:
        return 0.0
    if name in ("node_cpu_frequency_hertz", "node_cpu_scaling_frequency_hertz"):
        return abs(value)  # the governor moves it between any two reads; exact on the fixtures
    if kind == "counter":
        return 0.001 * abs(value) + (0.02 if name.startswith("node_cpu_") else 0.0)
    if name in ("node_procs_running", "node_procs_blocked"):
        return 2.0 * (os.cpu_count() or 1) + 2.0
    if name.endswith("_bytes"):
        return max(32.0 * MIB, 0.02 * abs(value))
    if name.startswith("node_load"):
        return 0.01
    return max(2.0, 0.02 * abs(value))


def parse_node_exporter(text: str) -> dict[str, Family]:
    families: dict[str, Family] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(IGNORED):
                continue
            kind = family.type
            if kind in ("histogram", "summary"):  # hostwatch flattens them: quantiles are gauges, the rest counters
                kind = "gauge" if kind == "summary" and sample.name == family.name else "counter"
            entry = families.setdefault(sample.name, Family(kind))
            entry.series[frozenset(sample.labels.items())] = sample.value
    return families


def from_samples(emitter: RunEmitter) -> dict[str, Family]:
    families: dict[str, Family] = {}
    for sample in emitter.samples:
        if sample.name.startswith(IGNORED):
            continue
        entry = families.setdefault(sample.name, Family(sample.kind))
        key = frozenset(sample.labels)
        assert key not in entry.series, f"duplicate series {sample.name}{dict(sample.labels)}"
        entry.series[key] = sample.value
    return families


def collector_class(name: str) -> type:
    plugins = load_registry()["collectors"]
    if name not in plugins:
        pytest.skip(f"collector {name!r}: no entry point installed yet")
    try:
        return plugins[name]
    except PluginLoadError as exc:
        cause = exc.__cause__
        if isinstance(cause, ModuleNotFoundError) and (cause.name or "").startswith(f"collectors.{name}"):
            pytest.skip(f"collector {name!r}: module not written yet ({cause})")
        raise


def compare(ne: dict[str, Family], before: dict[str, Family], after: dict[str, Family]) -> list[str]:
    """Problems in the families both sides export: kind, label names, label values, values."""
    problems = []
    for name in sorted(ne.keys() & before.keys() & after.keys()):
        ref, one, two = ne[name], before[name], after[name]
        if KIND_OF.get(ref.kind) != one.kind:
            problems.append(f"{name}: kind {one.kind}, node_exporter TYPE {ref.kind}")
        ref_names = {frozenset(k for k, _ in key) for key in ref.series}
        our_names = {frozenset(k for k, _ in key) for key in one.series}
        if ref_names != our_names:
            problems.append(f"{name}: label names {sorted(map(sorted, our_names))} != {sorted(map(sorted, ref_names))}")
            continue
        if name in TRANSIENT_SERIES:
            pass
        elif ref.series.keys() != one.series.keys() and ref.series.keys() != two.series.keys():
            missing = [dict(k) for k in ref.series.keys() - one.series.keys()][:5]
            extra = [dict(k) for k in one.series.keys() - ref.series.keys()][:5]
            problems.append(f"{name}: series differ; missing {missing}, extra {extra}")
            continue
        for key, value in ref.series.items():
            seen = [fam.series[key] for fam in (one, two) if key in fam.series]
            if not seen:
                continue  # a transient series neither of our reads had
            slack = tolerance(name, one.kind, value)
            if not min(seen) - slack <= value <= max(seen) + slack:
                problems.append(f"{name}{dict(key)}: node_exporter {value!r}, hostwatch {seen} (slack {slack:g})")
    return problems


@pytest.mark.parametrize("name", list(COUNTERPARTS))
async def test_matches_node_exporter(name, node_exporter_factory, tmp_path, capsys):
    cls = collector_class(name)
    url = node_exporter_factory(COUNTERPARTS[name], *UPSTREAM_DEFAULTS.get(name, ()))
    collector = cls(msgspec.convert(CONFIGS.get(name, {}), cls.Config), collector_context(tmp_path))
    runs = []
    await collector.start()
    try:
        for step in ("before", "scrape", "after"):
            if step == "scrape":
                text = await asyncio.to_thread(scrape, url)
                continue
            emitter = RunEmitter(time.time_ns())
            await collector.collect(emitter)
            assert not emitter.errors, f"{name}: collector errors on this host: {emitter.errors}"
            runs.append(from_samples(emitter))
    finally:
        await collector.close()
    ne = parse_node_exporter(text)
    before, after = runs
    matched = sorted(ne.keys() & before.keys())
    missing = sorted(ne.keys() - before.keys())
    extra = sorted(before.keys() - ne.keys())
    with capsys.disabled():
        print(
            f"\n[parity] {name} ({', '.join(COUNTERPARTS[name])}): {len(matched)}/{len(ne)} node_exporter "
            f"families matched ({100 * len(matched) / max(len(ne), 1):.0f}%)"
            + (f"; missing {missing}" if missing else "")
            + (f"; not in node_exporter {extra}" if extra else "")
        )
    if not ne and name in HOST_MAY_LACK:
        pytest.skip(f"{name}: node_exporter finds none of this hardware on this host")
    assert ne, "node_exporter exported nothing for these collectors"
    problems = compare(ne, before, after)
    assert not problems, "\n".join(problems)
    assert not extra, f"{name} exports families node_exporter does not: {extra}"
    if name in FULL_COVERAGE:
        assert not missing, f"{name} lacks node_exporter families: {missing}"


TCP_STATES = {"established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait", "close", "close_wait",
              "last_ack", "listen", "closing", "rx_queued_bytes", "tx_queued_bytes"}  # fmt: skip


async def test_tcpstat_matches_node_exporter(node_exporter_factory, tmp_path):
    """tcpstat is off by default in both; turned on, node_tcp_connection_states agrees.

    Connections open and close between the reads (the scrape's own connection among
    them), so the set of states present may differ by one or two; the listeners
    may not. tx_queued_bytes differs by design (see the netclass README).
    """
    cls = collector_class("netclass")
    url = node_exporter_factory(("tcpstat",))
    parts = {name: False for name in COUNTERPARTS["netclass"]}
    collector = cls(cls.Config(**parts, tcpstat=True), collector_context(tmp_path))
    emitter = RunEmitter(time.time_ns())
    await collector.collect(emitter)
    text = await asyncio.to_thread(scrape, url)
    after = RunEmitter(time.time_ns())
    await collector.collect(after)
    assert not emitter.errors and not after.errors
    ne = parse_node_exporter(text)["node_tcp_connection_states"]
    ours = [from_samples(run)["node_tcp_connection_states"] for run in (emitter, after)]
    assert ne.kind == "gauge" and all(run.kind == "gauge" for run in ours)
    for run in (ne, *ours):
        assert {frozenset(k for k, _ in key) for key in run.series} == {frozenset({"state"})}
        assert {dict(key)["state"] for key in run.series} <= TCP_STATES
    listen = frozenset({("state", "listen")})
    assert (
        min(run.series[listen] for run in ours) - 2 <= ne.series[listen] <= max(run.series[listen] for run in ours) + 2
    )


FIXTURE_TREES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.parametrize("name", ["netclass", "hardware"])
async def test_matches_node_exporter_on_fixtures(name, node_exporter_factory, tmp_path):
    """Both read the same fixture tree (real layouts of hardware this host lacks): every series equal.

    node_exporter gets the tree through --path.sysfs/--path.procfs, hostwatch through
    sys_root/proc_root. Nothing moves in a fixture, so values must be identical.
    """
    cls = collector_class(name)
    tree = FIXTURE_TREES / name
    url = node_exporter_factory(COUNTERPARTS[name], f"--path.sysfs={tree / 'sys'}", f"--path.procfs={tree / 'proc'}")
    collector = cls(cls.Config(), collector_context(tmp_path, sys_root=tree / "sys", proc_root=tree / "proc"))
    emitter = RunEmitter(time.time_ns())
    await collector.start()
    await collector.collect(emitter)
    await collector.close()
    assert not emitter.errors
    ours, ne = from_samples(emitter), parse_node_exporter(await asyncio.to_thread(scrape, url))
    assert len(ne) > 20, "the fixture should exercise most families"
    assert sorted(ours) == sorted(ne)
    for family, ref in ne.items():
        assert ours[family].kind == KIND_OF[ref.kind], family
        assert ours[family].series == ref.series, family


async def test_system_parts_succeed_where_node_exporters_collectors_do(node_exporter_factory, tmp_path):
    """node_scrape_collector_success per part: 1 where node_exporter's collector worked, 0 where it had no data."""
    cls = collector_class("system")
    text = await asyncio.to_thread(scrape, node_exporter_factory(COUNTERPARTS["system"]))
    theirs = {
        s.labels["collector"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "node_scrape_collector_success"
    }
    collector = cls(cls.Config(), collector_context(tmp_path))
    emitter = RunEmitter(time.time_ns())
    await collector.collect(emitter)
    ours = {dict(s.labels)["collector"]: s.value for s in emitter.samples if s.name == "node_scrape_collector_success"}
    assert ours == theirs


@pytest.mark.parametrize("tree", ["host", "bare_metal", "minimal", "garbled"])
async def test_system_on_fixture_trees_matches_node_exporter(tree, node_exporter_factory, tmp_path):
    """Both read the same fixture tree (node_exporter through --path.procfs/sysfs/rootfs): layouts this
    machine lacks (schedstat, offline CPUs, several clocksources, usr/lib/os-release, bad content).
    The files do not move, so values must be equal (the clock aside); uname and timex are the host's
    system calls, compared by the test above."""
    cls = collector_class("system")
    root = FIXTURES / "system" / tree
    paths = (f"--path.procfs={root / 'proc'}", f"--path.sysfs={root / 'sys'}", f"--path.rootfs={root / 'rootfs'}")
    skip = {"uname", "timex"}
    if tree == "garbled":
        # node_exporter 1.5 caches a malformed os-release's mtime before parsing it: its first scrape
        # fails, every later one exports node_os_info with empty labels. hostwatch keeps failing.
        skip.add("os")
    parts = tuple(p for p in COUNTERPARTS["system"] if p not in skip)
    text = await asyncio.to_thread(scrape, node_exporter_factory(parts, *paths))
    config = msgspec.convert({"collectors": list(parts)}, cls.Config)
    context = collector_context(tmp_path, proc_root=root / "proc", sys_root=root / "sys", rootfs=root / "rootfs")
    emitter = RunEmitter(time.time_ns())
    await cls(config, context).collect(emitter)
    ne, ours = parse_node_exporter(text), from_samples(emitter)
    assert sorted(ne) == sorted(ours)
    assert not compare(ne, ours, ours)
    for name in ne.keys() - {"node_time_seconds"}:
        assert ne[name].series == pytest.approx(ours[name].series), name
    theirs = {
        s.labels["collector"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "node_scrape_collector_success"
    }
    assert theirs == {dict(s.labels)["collector"]: s.value for s in emitter.samples if s.name.endswith("_success")}


STORAGE_FIXTURE = Path(__file__).parents[1] / "fixtures" / "storage"
# node_exporter's selinux collector asks go-selinux, which reads the real /sys/fs/selinux
# and /proc/self whatever --path.* says: it is compared on the host, not on the fixture.
STORAGE_PARTS = ("mdadm", "bcache", "btrfs", "xfs", "zfs", "nfs", "nfsd", "tapestats")


async def test_storage_matches_node_exporter_on_fixtures(node_exporter_factory, tmp_path):
    """Both read tests/fixtures/storage (md arrays, bcache, btrfs, xfs, zfs, nfs, nfsd, tapes): every series equal."""
    cls = collector_class("storage")
    sys_root, proc_root = STORAGE_FIXTURE / "sys", STORAGE_FIXTURE / "proc"
    url = node_exporter_factory(
        STORAGE_PARTS, f"--path.sysfs={sys_root}", f"--path.procfs={proc_root}", "--collector.bcache.priorityStats"
    )
    config = cls.Config(selinux=False, bcache_priority_stats=True)
    collector = cls(config, collector_context(tmp_path, sys_root=sys_root, proc_root=proc_root))
    emitter = RunEmitter(time.time_ns())
    await collector.start()
    await collector.collect(emitter)
    await collector.close()
    assert not emitter.errors
    text = await asyncio.to_thread(scrape, url)
    failed = [
        line for line in text.splitlines() if line.startswith("node_scrape_collector_success") and line[-1] == "0"
    ]
    assert not failed, f"node_exporter failed on the fixture: {failed}"
    ours, ne = from_samples(emitter), parse_node_exporter(text)
    assert {name.split("_")[1] for name in ne} >= {"md", "bcache", "btrfs", "xfs", "zfs", "nfs", "nfsd", "tape"}
    assert sorted(ours) == sorted(ne)
    differ = [
        f"{family}: ours {ours[family].kind} {sorted(ours[family].series.items(), key=repr)}"
        f" != node_exporter {ref.kind} {sorted(ref.series.items(), key=repr)}"
        for family, ref in ne.items()
        if ours[family].kind != KIND_OF[ref.kind] or ours[family].series != ref.series
    ]
    assert not differ, "\n".join(differ)


async def test_storage_matches_node_exporter_on_host(node_exporter_factory, tmp_path):
    """On this host (whatever of md, NFS, ZFS ... it has, and SELinux's state): the same series and values."""
    cls = collector_class("storage")
    url = node_exporter_factory((*STORAGE_PARTS, "selinux"))
    collector = cls(cls.Config(), collector_context(tmp_path))
    emitter = RunEmitter(time.time_ns())
    await collector.collect(emitter)
    ne = parse_node_exporter(await asyncio.to_thread(scrape, url))
    after = RunEmitter(time.time_ns())
    await collector.collect(after)
    assert not emitter.errors and not after.errors
    before, later = from_samples(emitter), from_samples(after)
    assert "node_selinux_enabled" in ne, "node_exporter's selinux collector always reports"
    assert sorted(before) == sorted(ne)
    problems = compare(ne, before, later)
    assert not problems, "\n".join(problems)


@pytest.fixture
def mounted_btrfs(tmp_path):
    """A real two-device raid1 Btrfs on loop devices, mounted under /dev/shm.

    /dev is excluded from node_exporter's (and hostwatch's) filesystem collectors and
    loop devices from their diskstats, so other tests on this host do not see it.
    """
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("mkfs.btrfs") or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root, loop devices and mkfs.btrfs (btrfs-progs)")
    loops: list[str] = []
    mount_point = Path(f"/dev/shm/hostwatch-btrfs-{os.getpid()}")
    mounted = False
    try:
        for i in range(2):
            image = tmp_path / f"disk{i}.img"
            with open(image, "wb") as f:
                f.truncate(160 * 1024 * 1024)
            loops.append(subprocess.check_output(["losetup", "-f", "--show", str(image)], text=True).strip())
        subprocess.run(["mkfs.btrfs", "-q", "-L", "hostwatch", "-d", "raid1", "-m", "raid1", *loops], check=True)
        mount_point.mkdir()
        if subprocess.run(["mount", "-t", "btrfs", loops[0], str(mount_point)]).returncode != 0:
            pytest.skip("mounting a Btrfs loop device is not permitted here")
        mounted = True
        (mount_point / "data").write_bytes(os.urandom(4 * 1024 * 1024))
        subprocess.run(["sync", "-f", str(mount_point)], check=True)
        yield mount_point
    finally:
        if mounted:  # lazily: the session's node_exporter keeps the directory it asked open
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
        if mount_point.exists():
            mount_point.rmdir()
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], check=False)


async def test_storage_btrfs_ioctl_matches_node_exporter_on_a_real_mount(
    mounted_btrfs, node_exporter_factory, tmp_path
):
    """A mounted filesystem: device sizes, unused bytes and error counters over ioctl, as node_exporter reads them."""
    cls = collector_class("storage")
    url = node_exporter_factory(("btrfs",))
    parts = {name: name == "btrfs" for name in (*STORAGE_PARTS, "selinux")}
    collector = cls(cls.Config(**parts), collector_context(tmp_path))
    emitter = RunEmitter(time.time_ns())
    await collector.collect(emitter)
    assert not emitter.errors
    ours, ne = from_samples(emitter), parse_node_exporter(await asyncio.to_thread(scrape, url))
    assert "node_btrfs_device_errors_total" in ne, "node_exporter should have used the ioctls (running as root)"
    assert sorted(ours) == sorted(ne)
    differ = [
        f"{family}: ours {sorted(ours[family].series.items(), key=repr)} != {sorted(ref.series.items(), key=repr)}"
        for family, ref in ne.items()
        if ours[family].kind != KIND_OF[ref.kind] or ours[family].series != ref.series
    ]
    assert not differ, "\n".join(differ)
