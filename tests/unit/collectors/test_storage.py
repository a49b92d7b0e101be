"""storage collector on a fixture tree laid out as real machines lay out /proc and /sys: nine md arrays in every
state, a bcache set, two Btrfs filesystems, two XFS filesystems, ZFS kstats and pools, NFS client and server
statistics, SCSI tape drives and an SELinux host. That node_exporter 1.5 reads the same tree to the same series
is checked by the parity test."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from agent.config import convert
from collectors.storage import bcache, btrfs_ioctl, mdadm
from collectors.storage.storage import PARTS, Config, StorageCollector
from tests.support import FIXTURES, by_series, collect_once, collector_context

FIX = FIXTURES / "storage"
README = Path(__file__).parents[3] / "collectors" / "storage" / "README.md"


def storage(tmp_path: Path, root: Path = FIX, **options) -> StorageCollector:
    context = collector_context(tmp_path, proc_root=root / "proc", sys_root=root / "sys", rootfs=root / "rootfs")
    return StorageCollector(convert(options, Config), context)


def only(part: str, **options) -> dict:
    return {name: name == part for name in PARTS} | options


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "fixture"
    shutil.copytree(FIX, root, symlinks=True)
    return root


async def test_every_part_on_the_fixture_and_the_readme_lists_every_name(tmp_path):
    emitter = await collect_once(storage(tmp_path, bcache_priority_stats=True))
    assert emitter.errors == []
    assert all(list(s.labels) == sorted(dict(s.labels).items()) for s in emitter.samples)
    names = {s.name for s in emitter.samples}
    for prefix in ("node_md_", "node_bcache_", "node_btrfs_", "node_xfs_", "node_zfs_", "node_nfs_", "node_nfsd_",
                   "node_tape_", "node_selinux_"):  # fmt: skip
        assert any(name.startswith(prefix) for name in names), prefix
    readme = README.read_text()
    listed = set(re.findall(r"`(node_[a-zA-Z0-9_]+)`", readme))
    # the kstat families are open-ended: the README documents them as node_zfs_<kstat>_<name> with the kstat list
    kstats = re.findall(r"`([a-z_]+)`(?: \([a-z_]+\))?", readme.split("`node_zfs_<kstat>_<name>`")[1].split("\n")[0])
    dynamic = (*(f"node_zfs_{k}_" for k in kstats), "node_zfs_zpool_")
    assert {name for name in names - listed if not name.startswith(dynamic)} == set()


async def test_md_arrays_in_every_state_as_node_exporter_reports_them(tmp_path):
    emitter = await collect_once(storage(tmp_path, **only("mdadm")))
    assert emitter.errors == []
    series = by_series(emitter.samples)

    def disks(device: str, state: str) -> float:
        return series[("node_md_disks", (("device", device), ("state", state)))]

    def state_of(device: str) -> str:
        states = [dict(k)["state"] for (n, k), v in series.items() if n == "node_md_state" and v == 1
                  and dict(k)["device"] == device]  # fmt: skip
        return states[0] if states else "none"

    def required(device: str) -> float:
        return series[("node_md_disks_required", (("device", device),))]

    # raid5 recovering onto a third disk (bitmap line after the sync line): degraded until done
    assert state_of("md127") == "recovering" and required("md127") - disks("md127", "active") == 1
    assert series[("node_md_blocks_synced", (("device", "md127"),))] == 83220736
    # raid1 with a failed member: the node-mixin's NodeRAIDDiskFailure and NodeRAIDDegraded both fire
    assert state_of("md1") == "active" and disks("md1", "failed") == 1 and required("md1") - disks("md1", "active") == 1
    assert state_of("md2") == "resync" and state_of("md3") == "check" and disks("md3", "spare") == 1
    assert state_of("md4") == "resync" and series[("node_md_blocks_synced", (("device", "md4"),))] == 0  # DELAYED
    assert required("md5") == 2 and disks("md5", "active") == 2  # raid0 counts its members
    assert state_of("md6") == "inactive" and required("md6") == 0 and disks("md6", "spare") == 2
    assert state_of("md8") == "active"  # "active (auto-read-only)": the third word counts
    assert {dict(k)["device"] for n, k in series if n == "node_md_blocks"} == {
        f"md{i}" for i in (127, 1, 2, 3, 4, 5, 6, 7, 8)
    }
    assert all(s.kind == "gauge" for s in emitter.samples)


@pytest.mark.parametrize(
    "broken",
    [
        "md9 : active raid1 sda1[0]\n      1046528 blocks super 1.2 [2/1]\n\n\n",  # no [UU] map
        "md9 : active raid1 sda1[0] sdb1[1]\n      1046528 blocks super 1.2 [2/2] [UU]\n"
        "      [=>...]  recovery =  8.5% (83220736/976630272)\n\n",  # sync line without finish=/speed=
        "md9 : active\n",  # the array's lines cut short
    ],
)
async def test_a_malformed_mdstat_is_reported_once_and_the_other_parts_still_export(tmp_path, broken):
    root = copy_tree(tmp_path)
    (root / "proc" / "mdstat").write_text("Personalities : [raid1]\n" + broken + "unused devices: <none>\n")
    emitter = await collect_once(storage(tmp_path, root))
    assert len(emitter.errors) == 1 and str(emitter.errors[0]).startswith("mdadm: ")
    names = {s.name for s in emitter.samples}
    assert not any(name.startswith("node_md_") for name in names)
    assert "node_nfs_rpcs_total" in names and "node_xfs_read_calls_total" in names


async def test_nothing_there_exports_nothing_and_reports_nothing(tmp_path):
    empty = tmp_path / "empty"
    for sub in ("proc", "sys", "rootfs"):
        (empty / sub).mkdir(parents=True)
    emitter = await collect_once(storage(tmp_path, empty))
    assert emitter.errors == []
    assert [(s.name, s.value) for s in emitter.samples] == [("node_selinux_enabled", 0)]


async def test_an_unreadable_file_is_reported_and_the_rest_exports(tmp_path):
    root = copy_tree(tmp_path)
    (root / "proc" / "net" / "rpc" / "nfs").unlink()
    (root / "proc" / "net" / "rpc" / "nfs").mkdir()  # read() fails with EISDIR, as an odd driver might
    emitter = await collect_once(storage(tmp_path, root))
    assert len(emitter.errors) == 1 and "nfs: " in str(emitter.errors[0])
    names = {s.name for s in emitter.samples}
    assert "node_nfs_rpcs_total" not in names and "node_nfsd_server_rpcs_total" in names


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("512", 512), ("1.3M", 1 * 2**20 + int(3 / 10.24 * 2**20)), ("1.5k", 1524), ("24.3k", 24876),
     ("-12.4k", -12688), ("5.1G", int((5 + 1 / 10.24) * 2**30)), ("2x", 0), ("1.2.3k", 1024 + int(2 / 10.24 * 1024))],
)  # fmt: skip
def test_bcache_sizes_read_back_as_procfs_reads_them(text, value):
    assert bcache.dehumanize(text) == value


async def test_bcache_set_backing_and_cache_devices(tmp_path):
    emitter = await collect_once(storage(tmp_path, **only("bcache")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    uuid = ("uuid", "deaddd54-c735-46d5-868e-f331c5fd7c74")
    bdev, cache = (("backing_device", "bdev0"), uuid), (("cache_device", "cache0"), uuid)
    assert series[("node_bcache_btree_read_average_duration_seconds", (uuid,))] == pytest.approx(1305e-9)
    assert series[("node_bcache_writeback_rate", bdev)] == 1150976
    assert series[("node_bcache_writeback_rate_proportional_term", bdev)] == -12688
    assert series[("node_bcache_bypassed_bytes_total", bdev)] == 4399104
    assert series[("node_bcache_metadata_written_bytes_total", cache)] == 512
    assert not any(name.startswith("node_bcache_priority_stats") for name, _ in series)  # off by default


async def test_bcache_without_writeback_debug_fails_that_set_only(tmp_path):
    root = copy_tree(tmp_path)
    next((root / "sys" / "fs" / "bcache").glob("*-*/bdev0/writeback_rate_debug")).unlink()
    emitter = await collect_once(storage(tmp_path, root))
    assert len(emitter.errors) == 1 and "bcache: cache set deaddd54" in str(emitter.errors[0])
    names = {s.name for s in emitter.samples}
    assert not any(name.startswith("node_bcache_") for name in names) and "node_btrfs_info" in names


async def test_btrfs_allocation_and_devices(tmp_path):
    emitter = await collect_once(storage(tmp_path, **only("btrfs")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    raid5 = "7f07c59f-6136-449c-ab87-e1cf2328731b"
    labels = (("block_group_type", "data"), ("mode", "raid5"), ("uuid", raid5))
    assert series[("node_btrfs_allocation_ratio", labels)] == 1.5  # three devices
    assert series[("node_btrfs_info", (("label", ""), ("uuid", raid5)))] == 1
    assert series[("node_btrfs_device_size_bytes", (("device", "loop24"), ("uuid", raid5)))] == 20971520 * 512
    assert (
        series[("node_btrfs_size_bytes", (("block_group_type", "metadata"), ("mode", "dup"), ("uuid", raid5)))]
        == 429391872
    )


def test_btrfs_mounts_from_pid1_or_the_fallback_with_escapes_undone(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mounts").write_text(
        "/dev/sda1 / ext4 rw 0 0\n/dev/sdb /srv/my\\040data btrfs rw,relatime 0 0\n/dev/sdc /x btrfs ro 0 0\n"
    )
    assert btrfs_ioctl.btrfs_mounts(str(proc)) == [("/dev/sdb", "/srv/my data"), ("/dev/sdc", "/x")]  # hidepid
    (proc / "1").mkdir()
    (proc / "1" / "mounts").write_text("/dev/sdd /data btrfs rw 0 0\n")
    assert btrfs_ioctl.btrfs_mounts(str(proc)) == [("/dev/sdd", "/data")]


async def test_btrfs_mount_that_cannot_be_asked_falls_back_to_sysfs_silently(tmp_path):
    root = copy_tree(tmp_path)
    (root / "proc" / "1").mkdir()
    # listed as mounted, but the mount point is an ordinary directory: the ioctls cannot answer
    (root / "rootfs" / "srv").mkdir()
    (root / "proc" / "1" / "mounts").write_text("/dev/sdb /srv btrfs rw 0 0\n/dev/loop24 /nowhere btrfs rw 0 0\n")
    emitter = await collect_once(storage(tmp_path, root, **only("btrfs")))
    assert emitter.errors == []
    names = {s.name for s in emitter.samples}
    assert "node_btrfs_device_size_bytes" in names and "node_btrfs_device_errors_total" not in names


async def test_xfs_counters_and_a_malformed_device(tmp_path):
    root = copy_tree(tmp_path)
    stats = root / "sys" / "fs" / "xfs" / "dm-3" / "stats" / "stats"
    stats.write_text(stats.read_text().replace("rw 28 2", "rw 28 2 7"))  # procfs requires exactly two
    emitter = await collect_once(storage(tmp_path, root, **only("xfs")))
    assert len(emitter.errors) == 1 and "xfs: dm-3" in str(emitter.errors[0])
    series = by_series(emitter.samples)
    sda1 = (("device", "sda1"),)
    assert series[("node_xfs_write_calls_total", sda1)] == 107739  # the kernel prints writes first
    assert series[("node_xfs_read_calls_total", sda1)] == 94045
    assert series[("node_xfs_vnode_active_total", sda1)] == 92601
    assert {dict(k)["device"] for _, k in series} == {"sda1"}  # the global stats/stats is not a device
    assert all(s.kind == "counter" for s in emitter.samples)


async def test_zfs_kstats_pools_and_datasets(tmp_path):
    emitter = await collect_once(storage(tmp_path, **only("zfs")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    assert series[("node_zfs_arc_hits", ())] == 8772612
    assert series[("node_zfs_fm_erpt_dropped", ())] == 18  # "erpt-dropped"
    assert series[("node_zfs_zpool_nread", (("zpool", "tank"),))] == 1884160
    assert series[("node_zfs_zpool_dataset_nwritten", (("dataset", "tank/home"), ("zpool", "tank")))] == 12302
    assert series[("node_zfs_zpool_state", (("state", "degraded"), ("zpool", "backup")))] == 1
    assert series[("node_zfs_zpool_state", (("state", "online"), ("zpool", "backup")))] == 0
    assert not any(name.startswith("node_zfs_vdev_cache_") for name, _ in series)  # kstat absent: skipped


async def test_a_zfs_kstat_without_header_fails_that_file_only(tmp_path):
    root = copy_tree(tmp_path)
    arc = root / "proc" / "spl" / "kstat" / "zfs" / "arcstats"
    arc.write_text("\n".join(arc.read_text().splitlines()[2:]))
    emitter = await collect_once(storage(tmp_path, root, **only("zfs")))
    assert [str(e) for e in emitter.errors] == ["zfs: arcstats: did not parse a single 'arcstats' metric"]
    names = {s.name for s in emitter.samples}
    assert "node_zfs_arc_hits" not in names and "node_zfs_zfetch_hits" in names


async def test_nfs_client_and_server(tmp_path):
    emitter = await collect_once(storage(tmp_path, **only("nfs", nfsd=True)))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    assert series[("node_nfs_packets_total", (("protocol", "tcp"),))] == 18628
    assert series[("node_nfs_requests_total", (("method", "GetAttr"), ("proto", "3")))] == 4084749
    assert series[("node_nfs_requests_total", (("method", "Clone"), ("proto", "4")))] == 0
    assert series[("node_nfsd_packets_total", (("proto", "tcp"),))] == 18628
    assert series[("node_nfsd_requests_total", (("method", "PutFH"), ("proto", "4")))] == 9609
    assert ("node_nfsd_requests_total", (("method", "Null"), ("proto", "3"))) not in series
    assert series[("node_nfsd_server_threads", ())] == 8
    assert series[("node_nfsd_disk_bytes_read_total", ())] == 157286400


async def test_an_unknown_nfs_line_fails_like_procfs(tmp_path):
    root = copy_tree(tmp_path)
    path = root / "proc" / "net" / "rpc" / "nfsd"
    path.write_text(path.read_text() + "wdeleg_getattr 3\n")  # kernels since 6.6: accepted, not exported
    emitter = await collect_once(storage(tmp_path, root, **only("nfsd")))
    assert emitter.errors == [] and emitter.samples
    path.write_text(path.read_text() + "proc5 2 0 0\n")
    emitter = await collect_once(storage(tmp_path, root, **only("nfsd")))
    assert len(emitter.errors) == 1 and "unknown NFS metric line 'proc5'" in str(emitter.errors[0])
    assert emitter.samples == []


async def test_tapes_skip_aliases_and_honour_the_ignore_pattern(tmp_path):
    emitter = await collect_once(storage(tmp_path, **only("tapestats")))
    series = by_series(emitter.samples)
    assert {dict(k)["device"] for _, k in series} == {"st0", "st1"}
    assert series[("node_tape_io_time_seconds_total", (("device", "st0"),))] == pytest.approx(9247.01108772)
    assert series[("node_tape_io_now", (("device", "st1"),))] == 1
    emitter = await collect_once(storage(tmp_path, **only("tapestats", tapestats_ignored_devices="^st1$")))
    assert {dict(k)["device"] for _, k in by_series(emitter.samples)} == {"st0"}


async def test_selinux_modes(tmp_path):
    emitter = await collect_once(storage(tmp_path, **only("selinux")))
    assert by_series(emitter.samples) == {
        ("node_selinux_enabled", ()): 1,
        ("node_selinux_config_mode", ()): 0,  # SELINUX=permissive
        ("node_selinux_current_mode", ()): 1,  # enforce = 1
    }
    root = copy_tree(tmp_path)
    (root / "proc" / "self" / "attr" / "current").write_text("kernel\0")
    emitter = await collect_once(storage(tmp_path, root, **only("selinux")))
    assert by_series(emitter.samples) == {("node_selinux_enabled", ()): 0}


def test_config_rejects_a_bad_regex():
    with pytest.raises(ValueError, match="tapestats_ignored_devices"):
        convert({"tapestats_ignored_devices": "(("}, Config)


def test_mdstat_parse_of_an_empty_file():
    assert mdadm.parse("") == []


def test_entries_are_what_glob_finds(tmp_path):
    import glob

    from agent.sysfs import entries

    for name in ("b-uuid-2", "a-uuid-1", "register", ".hidden-x", "sdb", "sda"):
        (tmp_path / name).mkdir()
    (tmp_path / "sda" / "stats").mkdir()
    (tmp_path / "sda" / "stats" / "stats").write_text("")
    (tmp_path / "dangling-link").symlink_to(tmp_path / "missing")
    assert entries(str(tmp_path), containing="-") == sorted(glob.glob(f"{tmp_path}/*-*"))
    assert entries(str(tmp_path), below="/stats/stats") == sorted(glob.glob(f"{tmp_path}/*/stats/stats"))
    assert entries(str(tmp_path / "absent"), containing="-") == []
