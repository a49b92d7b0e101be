"""disk collector on fixture trees: filesystem (statvfs injected) and diskstats."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from agent.config import convert
from agent.emitter import RunEmitter
from collectors.disk.disk import Config, DiskCollector
from tests.support import FIXTURES, by_series, collect_once, collector_context

FIX = FIXTURES / "disk"
PROC = FIX / "proc"
ROOTFS = FIX / "rootfs"

FS_METRICS = {
    "node_filesystem_size_bytes", "node_filesystem_free_bytes", "node_filesystem_avail_bytes",
    "node_filesystem_files", "node_filesystem_files_free", "node_filesystem_readonly", "node_filesystem_device_error",
}  # fmt: skip


def make_stat(seed: int) -> os.statvfs_result:
    """A distinct statvfs result: bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax."""
    return os.statvfs_result((4096, 4096, 1000 * seed, 600 * seed, 500 * seed, 70 * seed, 30 * seed, 30 * seed, 0, 255))


def fixture_mounts() -> list[list[str]]:
    return [line.split() for line in (PROC / "1" / "mounts").read_text().splitlines()]


class FakeStatvfs:
    """statvfs seam: results by path, exceptions for some, one path that hangs until released."""

    def __init__(self, results: dict[str, os.statvfs_result], raises: dict[str, OSError] | None = None) -> None:
        self.results = results
        self.raises = raises or {}
        self.hang: str | None = None
        self.release = threading.Event()
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, path: str) -> os.statvfs_result:
        with self.lock:
            self.calls.append(path)
        if path == self.hang:
            self.release.wait(30)
        if path in self.raises:
            raise self.raises[path]
        return self.results[path]


def disk(tmp_path: Path, fake: FakeStatvfs, proc: Path = PROC, rootfs: Path = ROOTFS, **options) -> DiskCollector:
    config = convert(options, Config)
    context = collector_context(tmp_path, proc_root=proc, rootfs=rootfs)
    return DiskCollector(config, context, statvfs=fake)


async def collect(collector: DiskCollector) -> RunEmitter:
    """One run without close(): the collector keeps its stuck-mount state between runs."""
    emitter = RunEmitter(time.time_ns())
    await collector.collect(emitter)
    return emitter


def statvfs_path(mountpoint: str) -> str:
    """Where the collector must statvfs a mount point: under rootfs, joined like filepath.Join."""
    return os.path.normpath(f"{ROOTFS}/{mountpoint}")


def fs_labels(device: str, fstype: str, mountpoint: str) -> tuple[tuple[str, str], ...]:
    return (("device", device), ("fstype", fstype), ("mountpoint", mountpoint))


# Mount points the fixture has that node_exporter's defaults keep, with their mount table fields decoded.
KEPT = {
    "/": ("/dev/vda", "ext4", "rw"),
    "/mnt/tools": ("tools", "tmpfs", "ro"),
    "/run": ("tmpfs", "tmpfs", "rw"),
    "/mnt/my disk": ("tmpfs", "tmpfs", "ro"),
    "/srv/data": ("my device", "ext4", "rw"),
    "/srv/secret": ("/dev/sdb1", "xfs", "rw"),
    "/srv/gone": ("/dev/sdc1", "ext4", "rw"),
    "/mnt/nfs": ("server:/export", "nfs4", "rw"),
}


def kept_from_fixture() -> dict[str, tuple[str, str, str]]:
    """Cross-check KEPT against the fixture's raw lines (escapes, options)."""
    found = {}
    for device, mountpoint, fstype, options, *_ in fixture_mounts():
        mountpoint = mountpoint.replace("\\040", " ")
        if mountpoint in KEPT:
            found[mountpoint] = (device.replace("\\040", " "), fstype, "ro" if "ro" in options.split(",") else "rw")
    return found


def test_fixture_has_the_mounts_the_tests_expect():
    assert kept_from_fixture() == KEPT


async def test_filesystem_values_labels_and_default_excludes(tmp_path):
    ok = {mp: make_stat(i) for i, mp in enumerate(KEPT, 1) if mp not in ("/srv/secret", "/srv/gone")}
    fake = FakeStatvfs(
        {statvfs_path(mp): st for mp, st in ok.items()},
        raises={
            statvfs_path("/srv/secret"): PermissionError(errno.EACCES, "Permission denied"),
            statvfs_path("/srv/gone"): FileNotFoundError(errno.ENOENT, "No such file or directory"),
        },
    )
    emitter = await collect_once(disk(tmp_path, fake))
    assert emitter.errors == []
    series = by_series([s for s in emitter.samples if s.name.startswith("node_filesystem_")])

    # Excluded mount points (/proc, /sys, /dev/*, /run/credentials/*, /var/lib/docker/*) and fs types
    # (squashfs, cgroup, binfmt_misc ...) are never statted; the duplicate "/" line is statted once.
    assert sorted(fake.calls) == sorted(statvfs_path(mp) for mp in KEPT)
    assert {dict(labels)["mountpoint"] for _, labels in series} == set(KEPT)

    for mp, st in ok.items():
        device, fstype, mode = KEPT[mp]
        labels = fs_labels(device, fstype, mp)
        assert series[("node_filesystem_size_bytes", labels)] == st.f_blocks * st.f_bsize
        assert series[("node_filesystem_free_bytes", labels)] == st.f_bfree * st.f_bsize
        assert series[("node_filesystem_avail_bytes", labels)] == st.f_bavail * st.f_bsize
        assert series[("node_filesystem_files", labels)] == st.f_files
        assert series[("node_filesystem_files_free", labels)] == st.f_ffree
        assert series[("node_filesystem_readonly", labels)] == (1 if mode == "ro" else 0)
        assert series[("node_filesystem_device_error", labels)] == 0

    # A statvfs error (EACCES, ENOENT) is a device error, as in node_exporter, and nothing else for it.
    for mp in ("/srv/secret", "/srv/gone"):
        labels = fs_labels(*KEPT[mp][:2], mp)
        assert series[("node_filesystem_device_error", labels)] == 1
        assert [name for name, lab in series if lab == labels] == ["node_filesystem_device_error"]

    kinds = {s.name: (s.kind, s.unit) for s in emitter.samples if s.name.startswith("node_filesystem_")}
    assert set(kinds) == FS_METRICS
    assert all(kind == "gauge" for kind, _ in kinds.values())
    assert kinds["node_filesystem_avail_bytes"][1] == "By"


async def test_space_in_device_and_mount_point_is_decoded(tmp_path):
    fake = FakeStatvfs({statvfs_path(mp): make_stat(3) for mp in KEPT})
    series = by_series((await collect_once(disk(tmp_path, fake))).samples)
    assert statvfs_path("/mnt/my disk") in fake.calls
    assert series[("node_filesystem_readonly", fs_labels("tmpfs", "tmpfs", "/mnt/my disk"))] == 1
    assert series[("node_filesystem_size_bytes", fs_labels("my device", "ext4", "/srv/data"))] == 3000 * 4096
    assert series[("node_filesystem_readonly", fs_labels("my device", "ext4", "/srv/data"))] == 0


async def test_hung_statvfs_is_bounded_then_skipped_while_stuck(tmp_path):
    fake = FakeStatvfs({statvfs_path(mp): make_stat(i) for i, mp in enumerate(KEPT, 1)})
    fake.hang = statvfs_path("/mnt/nfs")
    collector = disk(tmp_path, fake, mount_timeout="1s", stat_workers=2)
    nfs = fs_labels("server:/export", "nfs4", "/mnt/nfs")
    root = fs_labels("/dev/vda", "ext4", "/")
    try:
        started = time.monotonic()
        first = await collect(collector)
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 3.0
        series = by_series(first.samples)
        assert series[("node_filesystem_device_error", nfs)] == 1
        assert ("node_filesystem_size_bytes", nfs) not in series
        assert series[("node_filesystem_size_bytes", root)] == make_stat(1).f_blocks * 4096  # others still reported
        assert len(first.errors) == 1 and "/mnt/nfs" in first.errors[0] and "stuck" in first.errors[0]
        assert collector.stuck_mount_points == {"/mnt/nfs"}

        # While its call hangs the mount is not statted again, and the run does not wait for it.
        started = time.monotonic()
        second = await collect(collector)
        assert time.monotonic() - started < 0.5  # well under mount_timeout: it did not wait
        assert fake.calls.count(fake.hang) == 1
        series = by_series(second.samples)
        assert series[("node_filesystem_device_error", nfs)] == 1
        assert series[("node_filesystem_device_error", root)] == 0
        assert second.errors == []

        # Once the hung call returns the mount is statted again.
        fake.release.set()
        deadline = time.monotonic() + 5
        while collector.stuck_mount_points and time.monotonic() < deadline:
            time.sleep(0.01)
        series = by_series((await collect(collector)).samples)
        assert fake.calls.count(fake.hang) == 2
        assert series[("node_filesystem_device_error", nfs)] == 0
        assert series[("node_filesystem_size_bytes", nfs)] == fake.results[fake.hang].f_blocks * 4096
    finally:
        fake.release.set()
        await collector.close()


async def test_hung_call_first_in_line_starves_nobody_once_stuck(tmp_path):
    proc = tmp_path / "proc" / "1"
    proc.mkdir(parents=True)
    (proc / "mounts").write_text("server:/a /nfs nfs4 rw 0 0\n/dev/vda / ext4 rw 0 0\n/dev/vdb /data xfs rw 0 0\n")
    (proc.parent / "diskstats").write_text("")
    fake = FakeStatvfs({"/nfs": make_stat(1), "/": make_stat(2), "/data": make_stat(3)})
    fake.hang = "/nfs"
    collector = disk(tmp_path, fake, proc=tmp_path / "proc", rootfs=Path("/"), mount_timeout="500ms", stat_workers=1)
    try:
        # The only worker hangs on /nfs: the others are not started this run, reported as one error, no series.
        first = await collect(collector)
        series = by_series([s for s in first.samples if s.name.startswith("node_filesystem")])
        assert {dict(lab)["mountpoint"] for _, lab in series} == {"/nfs"}
        assert sorted(first.errors, key=len) == [
            "statvfs not started for 2 mount(s): every worker was busy",
            "statvfs(/nfs) did not return within 0.5s; marked stuck until it does",
        ]
        # A replacement worker took the stuck thread's place: the next runs report everything else.
        for _ in range(2):
            emitter = await collect(collector)
            series = by_series([s for s in emitter.samples if s.name.startswith("node_filesystem")])
            assert series[("node_filesystem_size_bytes", fs_labels("/dev/vda", "ext4", "/"))] == 2000 * 4096
            assert series[("node_filesystem_size_bytes", fs_labels("/dev/vdb", "xfs", "/data"))] == 3000 * 4096
            assert series[("node_filesystem_device_error", fs_labels("server:/a", "nfs4", "/nfs"))] == 1
        assert collector._pool.threads == 2  # one worker + the one the stuck call holds, however many runs
        assert fake.calls.count("/nfs") == 1
    finally:
        fake.release.set()
        await collector.close()


async def test_mount_table_falls_back_to_proc_mounts(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mounts").write_text("/dev/vdb /data xfs ro,noatime 0 0\nproc /proc proc rw 0 0\n")
    fake = FakeStatvfs({"/data": make_stat(2)})
    emitter = await collect_once(disk(tmp_path, fake, proc=proc, rootfs=Path("/")))
    series = by_series([s for s in emitter.samples if s.name.startswith("node_filesystem")])
    labels = fs_labels("/dev/vdb", "xfs", "/data")
    assert fake.calls == ["/data"]
    assert series[("node_filesystem_readonly", labels)] == 1
    assert series[("node_filesystem_size_bytes", labels)] == 2000 * 4096
    assert {lab for _, lab in series} == {labels}
    # Without /proc/diskstats in this tree, that part is reported as an error; filesystems are unaffected.
    assert len(emitter.errors) == 1 and "diskstats" in emitter.errors[0]


async def test_container_rootfs_prefix_is_stripped_from_labels(tmp_path):
    proc = tmp_path / "proc" / "1"
    proc.mkdir(parents=True)
    (proc / "mounts").write_text(
        "/dev/vda /host ext4 rw 0 0\n/dev/vdb /host/srv ext4 rw 0 0\n/dev/vdc /boot ext4 rw 0 0\n"
    )
    fake = FakeStatvfs({"/host": make_stat(1), "/host/srv": make_stat(2), "/host/boot": make_stat(3)})
    emitter = await collect_once(disk(tmp_path, fake, proc=tmp_path / "proc", rootfs=Path("/host")))
    mountpoints = {dict(s.labels)["mountpoint"] for s in emitter.samples if s.name == "node_filesystem_size_bytes"}
    assert mountpoints == {"/", "/srv", "/boot"}
    assert sorted(fake.calls) == ["/host", "/host/boot", "/host/srv"]


async def test_mount_filters_are_options(tmp_path):
    fake = FakeStatvfs({statvfs_path(mp): make_stat(1) for mp in KEPT} | {statvfs_path("/snap/core/1"): make_stat(1)})
    collector = disk(tmp_path, fake, mount_points_exclude="^/(srv|mnt)/", fs_types_exclude="^(tmpfs|proc|sysfs)$")
    emitter = await collect_once(collector)
    mountpoints = {dict(s.labels)["mountpoint"] for s in emitter.samples if s.name == "node_filesystem_device_error"}
    # /dev and /proc are kept now unless their type is excluded: devtmpfs, devpts, cgroup...
    assert "/snap/core/1" in mountpoints and "/" in mountpoints
    assert not any(mp.startswith(("/srv/", "/mnt/")) for mp in mountpoints)
    assert "/run" not in mountpoints and "/proc" not in mountpoints


# ---------------------------------------------------------------- diskstats


def diskstats_rows() -> dict[str, list[str]]:
    return {parts[2]: parts for parts in (line.split() for line in (PROC / "diskstats").read_text().splitlines())}


async def test_diskstats_values_scaled_like_node_exporter(tmp_path):
    emitter = await collect_once(disk(tmp_path, FakeStatvfs({}), mount_points_exclude="."))
    series = by_series(emitter.samples)
    devices = {dict(labels)["device"] for name, labels in series if name.startswith("node_disk_")}
    rows = diskstats_rows()
    # Default exclude: loop*, partitions (sda1, nvme0n1p1); zram0, dm-0 and whole disks stay.
    assert devices == {"vda", "zram0", "sda", "nvme0n1", "dm-0"}
    assert any(name.startswith("loop") for name in rows) and "sda1" in rows and "nvme0n1p1" in rows

    vda = [int(v) for v in rows["vda"][3:]]
    dev = (("device", "vda"),)
    assert len(vda) == 17
    assert series[("node_disk_reads_completed_total", dev)] == vda[0]
    assert series[("node_disk_reads_merged_total", dev)] == vda[1]
    assert series[("node_disk_read_bytes_total", dev)] == vda[2] * 512
    assert series[("node_disk_read_time_seconds_total", dev)] == vda[3] * 0.001
    assert series[("node_disk_writes_completed_total", dev)] == vda[4]
    assert series[("node_disk_writes_merged_total", dev)] == vda[5]
    assert series[("node_disk_written_bytes_total", dev)] == vda[6] * 512
    assert series[("node_disk_write_time_seconds_total", dev)] == vda[7] * 0.001
    assert series[("node_disk_io_now", dev)] == vda[8]
    assert series[("node_disk_io_time_seconds_total", dev)] == vda[9] * 0.001
    assert series[("node_disk_io_time_weighted_seconds_total", dev)] == vda[10] * 0.001
    assert series[("node_disk_discards_completed_total", dev)] == vda[11]
    assert series[("node_disk_discards_merged_total", dev)] == vda[12]
    assert series[("node_disk_discarded_sectors_total", dev)] == vda[13]  # sectors, not bytes, as node_exporter
    assert series[("node_disk_discard_time_seconds_total", dev)] == vda[14] * 0.001
    assert series[("node_disk_flush_requests_total", dev)] == vda[15]
    assert series[("node_disk_flush_requests_time_seconds_total", dev)] == vda[16] * 0.001

    # Older kernels: 11 fields (no discards, no flushes), 15 fields (no flushes): only what the line has.
    per_device = {
        d: {n for n, lab in series if lab == (("device", d),) and not n.startswith("node_disk_ata_")}
        for d in ("sda", "nvme0n1", "vda")
    }
    assert len(rows["sda"]) - 3 == 11 and len(per_device["sda"]) == 11
    assert len(rows["nvme0n1"]) - 3 == 15 and len(per_device["nvme0n1"]) == 15
    assert "node_disk_discards_completed_total" not in per_device["sda"]
    assert "node_disk_flush_requests_total" not in per_device["nvme0n1"]
    assert len(per_device["vda"]) == 17

    kinds = {s.name: s.kind for s in emitter.samples}
    units = {s.name: s.unit for s in emitter.samples}
    assert units["node_disk_read_bytes_total"] == "By" and units["node_disk_read_time_seconds_total"] == "s"
    assert units["node_disk_reads_completed_total"] == "1"
    assert kinds["node_disk_io_now"] == "gauge" and kinds["node_disk_info"] == "gauge"
    assert all(kind == "counter" for name, kind in kinds.items() if name.endswith("_total"))


def udev(name: str) -> dict[str, str]:
    props = {}
    for line in (ROOTFS / "run" / "udev" / "data" / name).read_text().splitlines():
        if line.startswith("E:"):
            key, _, value = line[2:].partition("=")
            props[key] = value
    return props


async def test_disk_info_from_udev(tmp_path):
    series = by_series((await collect_once(disk(tmp_path, FakeStatvfs({}), mount_points_exclude="."))).samples)
    info = {dict(labels)["device"]: dict(labels) for name, labels in series if name == "node_disk_info"}
    vda, sda = udev("b254:0"), udev("b8:0")
    assert info["vda"] == {
        "device": "vda", "major": "254", "minor": "0", "model": vda["ID_MODEL"], "path": vda["ID_PATH"],
        "revision": vda["ID_REVISION"], "serial": vda["ID_SERIAL_SHORT"], "wwn": vda["ID_WWN"],
    }  # fmt: skip
    assert info["sda"]["serial"] == sda["SCSI_IDENT_SERIAL"]  # preferred over ID_SERIAL_SHORT
    assert info["zram0"] == {
        "device": "zram0",
        "major": "253",
        "minor": "0",
        "model": "",
        "path": "",
        "revision": "",
        "serial": "",
        "wwn": "",
    }  # fmt: skip  (no udev file)

    fs_info = {labels: v for (name, labels), v in series.items() if name == "node_disk_filesystem_info"}
    assert fs_info == {
        (("device", "vda"), ("type", vda["ID_FS_TYPE"]), ("usage", vda["ID_FS_USAGE"]),
         ("uuid", vda["ID_FS_UUID"]), ("version", vda["ID_FS_VERSION"])): 1,
        (("device", "dm-0"), ("type", "xfs"), ("usage", ""), ("uuid", ""), ("version", "")): 1,
    }  # fmt: skip
    dm = udev("b253:1")
    assert series[(
        "node_disk_device_mapper_info",
        (("device", "dm-0"), ("lv_layer", ""), ("lv_name", dm["DM_LV_NAME"]), ("name", dm["DM_NAME"]),
         ("uuid", dm["DM_UUID"]), ("vg_name", dm["DM_VG_NAME"])),
    )] == 1  # fmt: skip

    vda_dev, sda_dev = (("device", "vda"),), (("device", "sda"),)
    assert series[("node_disk_ata_write_cache", vda_dev)] == float(vda["ID_ATA_WRITE_CACHE"])
    assert series[("node_disk_ata_write_cache_enabled", vda_dev)] == float(vda["ID_ATA_WRITE_CACHE_ENABLED"])
    assert series[("node_disk_ata_rotation_rate_rpm", vda_dev)] == float(vda["ID_ATA_ROTATION_RATE_RPM"])
    assert series[("node_disk_ata_write_cache", sda_dev)] == 1
    # "yes" is not a number and ID_ATA_ROTATION_RATE_RPM is absent: skipped, as node_exporter does.
    assert ("node_disk_ata_write_cache_enabled", sda_dev) not in series
    assert ("node_disk_ata_rotation_rate_rpm", sda_dev) not in series


async def test_without_udev_data_info_labels_are_empty(tmp_path):
    rootfs = tmp_path / "emptyroot"
    rootfs.mkdir()
    series = by_series(
        (await collect_once(disk(tmp_path, FakeStatvfs({}), rootfs=rootfs, mount_points_exclude="."))).samples
    )
    info = [dict(labels) for name, labels in series if name == "node_disk_info"]
    assert len(info) == 5
    assert all(i["model"] == i["serial"] == i["path"] == i["wwn"] == i["revision"] == "" for i in info)
    assert not any(name.startswith(("node_disk_ata", "node_disk_filesystem_info")) for name, _ in series)


async def disk_devices(tmp_path: Path, **options) -> set[str]:
    collector = disk(tmp_path, FakeStatvfs({}), mount_points_exclude=".", **options)
    return {
        dict(s.labels)["device"] for s in (await collect_once(collector)).samples if s.name.startswith("node_disk_")
    }


async def test_device_filters(tmp_path):
    assert await disk_devices(tmp_path, devices_exclude="", devices_include="^(loop0|sda1)$") == {"loop0", "sda1"}
    excluded = await disk_devices(tmp_path, devices_exclude="^(z?ram|dm-)")
    assert "zram0" not in excluded and "dm-0" not in excluded and {"loop0", "sda1", "vda"} <= excluded


async def test_unreadable_diskstats_is_an_error_not_a_crash(tmp_path):
    proc = tmp_path / "proc"
    shutil.copytree(PROC, proc)
    (proc / "diskstats").unlink()
    fake = FakeStatvfs({statvfs_path(mp): make_stat(1) for mp in KEPT})
    emitter = await collect_once(disk(tmp_path, fake, proc=proc))
    assert len(emitter.errors) == 1 and "diskstats" in emitter.errors[0]
    assert any(s.name == "node_filesystem_size_bytes" for s in emitter.samples)


@pytest.mark.parametrize("key", ["mount_points_exclude", "fs_types_exclude", "devices_exclude", "devices_include"])
def test_invalid_regex_is_a_config_error(key):
    with pytest.raises(msgspec.ValidationError, match=key):
        msgspec.convert({key: "(unclosed"}, Config)


async def test_malformed_diskstats_line_is_reported_others_kept(tmp_path):
    proc = tmp_path / "proc"
    shutil.copytree(PROC, proc)
    with (proc / "diskstats").open("a") as f:
        f.write("   8      16 sdb 1 2 three 4 5 6 7 8 9 10 11\n   8      32 sdc 1 2\n")
    emitter = await collect_once(disk(tmp_path, FakeStatvfs({}), proc=proc, mount_points_exclude="."))
    assert emitter.errors == [
        "malformed diskstats line: '   8      16 sdb 1 2 three 4 5 6 7 8 9 10 11'",
        "malformed diskstats line: '   8      32 sdc 1 2'",
    ]
    devices = {dict(s.labels)["device"] for s in emitter.samples if s.name.startswith("node_disk_")}
    assert devices == {"vda", "zram0", "sda", "nvme0n1", "dm-0"}


async def test_readme_lists_every_emitted_metric(tmp_path):
    fake = FakeStatvfs({statvfs_path(mp): make_stat(1) for mp in KEPT})
    names = {s.name for s in (await collect_once(disk(tmp_path, fake))).samples}
    text = (Path(sys.modules[DiskCollector.__module__].__file__).parent / "README.md").read_text()
    assert len(names) == 30
    assert all(f"`{name}`" in text for name in names)


async def test_label_tuples_are_kept_between_runs(tmp_path):
    """Each mount's and device's label tuple is the very object of the last run, so the
    engine's comparison of two runs (agent.model.same_series) answers by identity."""
    fake = FakeStatvfs({statvfs_path(mp): make_stat(i) for i, mp in enumerate(KEPT, 1)})
    collector = disk(tmp_path, fake)
    first, second = await collect(collector), await collect(collector)
    await collector.close()
    pairs = list(zip(first.samples, second.samples, strict=True))
    assert {a.name for a, _ in pairs} >= {"node_filesystem_size_bytes", "node_disk_read_bytes_total"}
    assert all(a.labels == b.labels and a.labels is b.labels for a, b in pairs)


async def test_a_changed_mount_table_or_udev_file_is_seen_by_the_next_run(tmp_path):
    """The mount table's parse and each device's udev properties are kept between runs while their
    source is unchanged: a new mount, and a udev file replaced (as udev writes it: a new file renamed
    over the old), show in the very next run."""
    root = tmp_path / "tree"
    shutil.copytree(FIX, root, symlinks=True)
    proc, rootfs = root / "proc", root / "rootfs"
    fake = FakeStatvfs({str(rootfs): make_stat(1), f"{rootfs}/data": make_stat(2)})
    (proc / "1" / "mounts").write_text("/dev/vda / ext4 rw 0 0\n")
    collector = disk(tmp_path, fake, proc=proc, rootfs=rootfs)
    try:
        first = await collect(collector)
        mounts = {dict(s.labels)["mountpoint"] for s in first.samples if s.name == "node_filesystem_size_bytes"}
        assert mounts == {"/"}
        old = [dict(s.labels) for s in first.samples if s.name == "node_disk_info" and ("device", "vda") in s.labels]
        (proc / "1" / "mounts").write_text("/dev/vda / ext4 rw 0 0\n/dev/vdb /data xfs ro 0 0\n")
        data = rootfs / "run" / "udev" / "data"
        new = data / "b254:0.tmp"
        new.write_text(data.joinpath("b254:0").read_text().replace("E:ID_MODEL=", "E:ID_MODEL=new-"))
        new.rename(data / "b254:0")
        second = await collect(collector)
        series = by_series(second.samples)
        assert series[("node_filesystem_readonly", fs_labels("/dev/vdb", "xfs", "/data"))] == 1
        info = [dict(s.labels) for s in second.samples if s.name == "node_disk_info" and ("device", "vda") in s.labels]
        assert info[0]["model"] == "new-" + old[0]["model"]
    finally:
        await collector.close()


def test_one_worker_takes_a_runs_calls_and_the_others_join_when_one_hangs():
    from collectors.disk.stat_pool import HELP_AFTER, StatPool

    threads: list[int] = []
    release = threading.Event()

    def statvfs(path: str) -> str:
        threads.append(threading.get_ident())
        if path == "/hung":
            release.wait(30)
        return path

    pool = StatPool(statvfs, 3)
    try:
        jobs = [(f"/m{i}", f"/m{i}") for i in range(6)]
        for _ in range(3):
            threads.clear()
            results = pool.run(jobs, 5)
            assert results.stats == {key: key for key, _ in jobs}
            assert len(set(threads)) == 1  # one wake-up per run, not one per mount
        threads.clear()
        started = time.monotonic()
        results = pool.run([("/hung", "/hung"), *jobs], 1)
        assert HELP_AFTER <= time.monotonic() - started < 1.5 and results.timed_out == ["/hung"]
        assert results.stats == {key: key for key, _ in jobs} and not results.not_started
        assert len(set(threads)) >= 2  # the others finished the run while the first hung
    finally:
        release.set()
        pool.close()


def test_a_run_wakes_only_the_worker_that_takes_its_calls():
    """The idle workers are not woken by a run that one worker finishes in time (on a shared queue the
    worker taking the run woke a second one on its way out, for nothing)."""
    from collectors.disk.stat_pool import StatPool

    def wake_ups(thread: threading.Thread) -> int:  # times the kernel ran the thread (schedstat's third field)
        return int(Path(f"/proc/self/task/{thread.native_id}/schedstat").read_text().split()[2])

    pool = StatPool(lambda path: path, 3)
    try:
        jobs = [("/a", "/a"), ("/b", "/b")]
        pool.run(jobs, 5)  # the threads start and settle
        time.sleep(0.05)
        workers = [t for t in threading.enumerate() if t.name == "hostwatch-statvfs"]
        assert len(workers) == 3
        before = {t: wake_ups(t) for t in workers}
        for _ in range(20):
            assert pool.run(jobs, 5).stats == {"/a": "/a", "/b": "/b"}
        woken = [t for t in workers if wake_ups(t) != before[t]]
        assert len(woken) == 1, f"{len(woken)} workers ran"
    finally:
        pool.close()
