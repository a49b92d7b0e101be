"""The cgroup collector on hand-made cgroup v2 trees, and on this machine's own cgroup."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
import tomllib
from pathlib import Path

import msgspec
import pytest

import collectors.cgroup.cgroup as cgroup_module
import collectors.cgroup.files as files_module
import collectors.cgroup.walk as cgroup_walk
from agent.config import validate
from agent.emitter import RunEmitter
from collectors.cgroup.cgroup import CgroupCollector
from collectors.cgroup.files import CgroupFiles
from tests.support import FIXTURES, by_series, collect_once, collector_context

TREES = FIXTURES / "cgroup"
SERVICE = "/system.slice/hostwatch.service"
PLUGIN = Path(CgroupCollector.__module__.replace(".", "/")).parent


def make(tmp_path: Path, tree: Path, **options) -> CgroupCollector:
    config = msgspec.convert(options, CgroupCollector.Config)
    return CgroupCollector(config, collector_context(tmp_path, proc_root=tree / "proc", sys_root=tree / "sys"))


def keyed(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def psi_totals(path: Path) -> dict[str, int]:
    """{"some": total, "full": total} in microseconds."""
    return {line.split()[0]: int(line.rsplit("total=", 1)[1]) for line in path.read_text().splitlines()}


def expected_from(directory: Path, labels: dict[str, str], dev_block: Path) -> dict[tuple[str, tuple], float]:
    """What cAdvisor would export for a cgroup directory, derived here independently of the collector."""

    def key(name: str, **extra: str) -> tuple[str, tuple]:
        return (name, tuple(sorted({**labels, **extra}.items())))

    def limit(file: str) -> int:
        text = (directory / file).read_text().strip()
        return 0 if text == "max" or int(text) > 2**62 else int(text)

    cpu, mem, events = (
        keyed(directory / "cpu.stat"),
        keyed(directory / "memory.stat"),
        keyed(directory / "memory.events"),
    )
    quota, period = (directory / "cpu.max").read_text().split()
    weight = int((directory / "cpu.weight").read_text())
    current = int((directory / "memory.current").read_text())
    want = {
        key("container_cpu_usage_seconds_total", cpu="total"): cpu["usage_usec"] / 1e6,
        key("container_cpu_user_seconds_total"): cpu["user_usec"] / 1e6,
        key("container_cpu_system_seconds_total"): cpu["system_usec"] / 1e6,
        key("container_spec_cpu_period"): int(period),
        key("container_spec_cpu_shares"): 2 + (weight - 1) * 262142 // 9999,
        key("container_memory_usage_bytes"): current,
        key("container_memory_working_set_bytes"): current - mem["inactive_file"],
        key("container_memory_rss"): mem["anon"],
        key("container_memory_cache"): mem["file"],
        key("container_memory_mapped_file"): mem["file_mapped"],
        key("container_memory_swap"): int((directory / "memory.swap.current").read_text()),
        key("container_memory_max_usage_bytes"): int((directory / "memory.peak").read_text()),
        key("container_spec_memory_limit_bytes"): limit("memory.max"),
        key("container_spec_memory_swap_limit_bytes"): limit("memory.swap.max"),
        key("container_spec_memory_reservation_limit_bytes"): limit("memory.min"),
        key("container_oom_events_total"): events["oom_kill"],
        key("container_threads"): int((directory / "pids.current").read_text()),
        key("container_threads_max"): limit("pids.max"),
        key("container_processes"): len((directory / "cgroup.procs").read_text().split()),
    }
    if quota != "max":
        want[key("container_spec_cpu_quota")] = int(quota)
        want[key("container_cpu_cfs_periods_total")] = cpu["nr_periods"]
        want[key("container_cpu_cfs_throttled_periods_total")] = cpu["nr_throttled"]
        want[key("container_cpu_cfs_throttled_seconds_total")] = cpu["throttled_usec"] / 1e6
    for failure in ("pgfault", "pgmajfault"):
        for scope in ("container", "hierarchy"):
            want[key("container_memory_failures_total", failure_type=failure, scope=scope)] = mem[failure]
    for line in (directory / "io.stat").read_text().splitlines():
        device, *pairs = line.split()
        stats = dict(pair.split("=") for pair in pairs)
        uevent = dev_block / device / "uevent"
        name = "/dev/" + re.search(r"DEVNAME=(\S+)", uevent.read_text())[1] if uevent.exists() else device
        for field, metric in (
            ("rbytes", "reads_bytes"),
            ("wbytes", "writes_bytes"),
            ("rios", "reads"),
            ("wios", "writes"),
        ):
            want[key(f"container_fs_{metric}_total", device=name)] = int(stats[field])
    for resource in ("cpu", "memory", "io"):
        totals = psi_totals(directory / f"{resource}.pressure")
        want[key(f"container_pressure_{resource}_waiting_seconds_total")] = totals["some"] / 1e6
        want[key(f"container_pressure_{resource}_stalled_seconds_total")] = totals["full"] / 1e6
    return want


def copy_tree(tmp_path: Path, name: str = "unified") -> Path:
    tree = tmp_path / name
    shutil.copytree(TREES / name, tree)
    return tree


async def test_own_cgroup_values_match_the_fixture(tmp_path):
    tree = TREES / "unified"
    emitter = await collect_once(make(tmp_path, tree))
    assert emitter.errors == []
    directory = tree / "sys/fs/cgroup" / SERVICE.lstrip("/")
    want = expected_from(directory, {"id": SERVICE}, tree / "sys/dev/block")
    assert by_series(emitter.samples) == want
    assert len(emitter.samples) == len(want)
    values = by_series(emitter.samples)
    # spot checks against the raw files: a resolved device, an unresolved one, a limit, the working set
    ident = (("id", SERVICE),)
    assert values[("container_fs_reads_bytes_total", (("device", "/dev/sda"), *ident))] == 1839104
    assert values[("container_fs_reads_bytes_total", (("device", "253:1"), *ident))] == 4096
    assert values[("container_spec_memory_swap_limit_bytes", ident)] == 0  # memory.swap.max is "max"
    assert values[("container_memory_working_set_bytes", ident)] == 66490368 - 15523840


async def test_kinds_and_units(tmp_path):
    emitter = await collect_once(make(tmp_path, TREES / "unified"))
    for sample in emitter.samples:
        assert sample.kind == ("counter" if sample.name.endswith("_total") else "gauge"), sample.name
        if sample.name.endswith("_seconds_total"):
            assert sample.unit == "s", sample.name
        elif sample.name.endswith("_bytes") or sample.name.endswith("_bytes_total"):
            assert sample.unit == "By", sample.name


async def test_name_label_and_configured_path(tmp_path):
    tree = copy_tree(tmp_path)
    other = tree / "sys/fs/cgroup/system.slice/nginx.service"
    other.mkdir()
    (other / "cpu.stat").write_text("usage_usec 7000000\nuser_usec 5000000\nsystem_usec 2000000\n")
    (other / "memory.current").write_text("1048576\n")
    emitter = await collect_once(make(tmp_path, tree, path="/system.slice/nginx.service", name="nginx"))
    assert emitter.errors == []
    base = {"id": "/system.slice/nginx.service", "name": "nginx"}
    assert by_series(emitter.samples) == {
        ("container_cpu_usage_seconds_total", tuple(sorted({**base, "cpu": "total"}.items()))): 7.0,
        ("container_cpu_user_seconds_total", tuple(sorted(base.items()))): 5.0,
        ("container_cpu_system_seconds_total", tuple(sorted(base.items()))): 2.0,
        ("container_memory_usage_bytes", tuple(sorted(base.items()))): 1048576,
        ("container_memory_working_set_bytes", tuple(sorted(base.items()))): 1048576,  # no memory.stat: all of it
    }


async def test_hybrid_hierarchy_and_root_cgroup(tmp_path):
    """systemd's hybrid mode: v2 at fs/cgroup/unified with only core files, the agent in its root."""
    tree = TREES / "hybrid"
    emitter = await collect_once(make(tmp_path, tree))
    assert emitter.errors == []
    unified = tree / "sys/fs/cgroup/unified"
    cpu = keyed(unified / "cpu.stat")
    want = {
        ("container_cpu_usage_seconds_total", (("cpu", "total"), ("id", "/"))): cpu["usage_usec"] / 1e6,
        ("container_cpu_user_seconds_total", (("id", "/"),)): cpu["user_usec"] / 1e6,
        ("container_cpu_system_seconds_total", (("id", "/"),)): cpu["system_usec"] / 1e6,
        ("container_processes", (("id", "/"),)): len((unified / "cgroup.procs").read_text().split()),
    }
    for resource in ("cpu", "memory", "io"):
        totals = psi_totals(unified / f"{resource}.pressure")
        want[(f"container_pressure_{resource}_waiting_seconds_total", (("id", "/"),))] = totals["some"] / 1e6
        want[(f"container_pressure_{resource}_stalled_seconds_total", (("id", "/"),))] = totals["full"] / 1e6
    assert by_series(emitter.samples) == want


async def test_cgroup_v1_only_host_is_a_clear_error(tmp_path):
    emitter = await collect_once(make(tmp_path, TREES / "v1only"))
    assert emitter.samples == []
    assert len(emitter.errors) == 1
    assert "cgroup v2 only" in str(emitter.errors[0]) and "v1" in str(emitter.errors[0])


async def test_no_v2_line_in_proc_self_cgroup_is_an_error(tmp_path):
    tree = copy_tree(tmp_path)
    (tree / "proc/self/cgroup").write_text("4:memory:/agent\n")
    emitter = await collect_once(make(tmp_path, tree))
    assert emitter.samples == [] and len(emitter.errors) == 1 and "0::" in str(emitter.errors[0])


async def test_unknown_path_is_an_error_every_run(tmp_path):
    collector = make(tmp_path, TREES / "unified", path="/system.slice/gone.service")
    for _ in range(2):
        emitter = await collect_once(collector)
        assert emitter.samples == [] and len(emitter.errors) == 1
        assert "/system.slice/gone.service not found" in str(emitter.errors[0])


async def test_unlimited_cgroup(tmp_path):
    """No quota: no CFS series and no quota gauge; limits of "max" (or above 2^62) export as 0."""
    tree = copy_tree(tmp_path)
    directory = tree / "sys/fs/cgroup" / SERVICE.lstrip("/")
    (directory / "cpu.max").write_text("max 100000\n")
    (directory / "memory.max").write_text("max\n")
    (directory / "memory.min").write_text("9223372036854771712\n")  # PAGE_COUNTER_MAX in bytes, as some kernels show
    (directory / "pids.max").write_text("max\n")
    emitter = await collect_once(make(tmp_path, tree))
    assert emitter.errors == []
    values = {name: value for (name, _), value in by_series(emitter.samples).items()}
    assert values["container_spec_cpu_period"] == 100000
    for absent in (
        "container_spec_cpu_quota",
        "container_cpu_cfs_periods_total",
        "container_cpu_cfs_throttled_periods_total",
    ):
        assert absent not in values
    assert values["container_spec_memory_limit_bytes"] == 0
    assert values["container_spec_memory_reservation_limit_bytes"] == 0
    assert values["container_threads_max"] == 0
    assert by_series(emitter.samples) == expected_from(directory, {"id": SERVICE}, tree / "sys/dev/block")


async def test_controllers_not_enabled_are_absent_not_errors(tmp_path):
    tree = copy_tree(tmp_path)
    directory = tree / "sys/fs/cgroup" / SERVICE.lstrip("/")
    for file in directory.iterdir():
        if not file.name.startswith(("cpu.stat", "cgroup.")):
            file.unlink()
    emitter = await collect_once(make(tmp_path, tree))
    assert emitter.errors == []
    assert {s.name for s in emitter.samples} == {
        "container_cpu_usage_seconds_total",
        "container_cpu_user_seconds_total",
        "container_cpu_system_seconds_total",
        "container_processes",
    }


async def test_working_set_never_negative(tmp_path):
    tree = copy_tree(tmp_path)
    directory = tree / "sys/fs/cgroup" / SERVICE.lstrip("/")
    (directory / "memory.current").write_text("1000\n")  # below inactive_file, as a racy read can show
    emitter = await collect_once(make(tmp_path, tree))
    values = {name: value for (name, _), value in by_series(emitter.samples).items()}
    assert values["container_memory_usage_bytes"] == 1000
    assert values["container_memory_working_set_bytes"] == 0


async def test_malformed_and_unreadable_files_are_reported_and_the_rest_emitted(tmp_path):
    tree = copy_tree(tmp_path)
    directory = tree / "sys/fs/cgroup" / SERVICE.lstrip("/")
    with (directory / "cpu.stat").open("a") as f:
        f.write("nr_bursts lots\nstray\n")
    with (directory / "io.stat").open("a") as f:
        f.write("8:16 rbytes=12 wbytes=oops\n")
    (directory / "cpu.pressure").write_text("some avg10=0.00 total=500\nfull avg10=0.00\n")
    (directory / "memory.current").unlink()
    (directory / "memory.current").mkdir()  # exists but cannot be read as a file
    (directory / "pids.max").write_text("lots\n")
    emitter = await collect_once(make(tmp_path, tree))
    errors = sorted(map(str, emitter.errors))
    assert len(errors) == 5, errors
    assert any("cpu.stat: skipped 2 malformed line(s)" in e and "nr_bursts" in e for e in errors)
    assert any("io.stat: skipped 1 malformed line(s)" in e and "8:16" in e for e in errors)
    assert any("cpu.pressure: skipped 1 malformed line(s)" in e for e in errors)
    assert any(e.startswith("cannot read") and "memory.current" in e for e in errors)
    assert any("pids.max: skipped 1" in e for e in errors)
    values = {(name, dict(labels).get("device")): value for (name, labels), value in by_series(emitter.samples).items()}
    cpu = keyed(TREES / "unified/sys/fs/cgroup" / SERVICE.lstrip("/") / "cpu.stat")
    assert values[("container_cpu_usage_seconds_total", None)] == cpu["usage_usec"] / 1e6
    assert values[("container_pressure_cpu_waiting_seconds_total", None)] == 500 / 1e6
    assert ("container_pressure_cpu_stalled_seconds_total", None) not in values
    assert ("container_fs_reads_bytes_total", "8:16") not in values
    assert ("container_fs_reads_bytes_total", "/dev/sda") in values
    assert ("container_memory_usage_bytes", None) not in values
    assert ("container_memory_rss", None) in values
    assert ("container_threads_max", None) not in values and ("container_threads", None) in values


async def test_own_cgroup_is_looked_up_every_run(tmp_path):
    tree = copy_tree(tmp_path)
    collector = make(tmp_path, tree)
    first = await collect_once(collector)
    assert {dict(s.labels)["id"] for s in first.samples} == {SERVICE}
    (tree / "proc/self/cgroup").write_text("0::/system.slice\n")  # the service manager moved the agent
    (tree / "sys/fs/cgroup/system.slice/cpu.stat").write_text("usage_usec 1\nuser_usec 1\nsystem_usec 0\n")
    second = await collect_once(collector)
    assert second.errors == []
    assert {dict(s.labels)["id"] for s in second.samples} == {"/system.slice"}


@pytest.mark.parametrize("path", ["system.slice/x.service", "/a/../../etc", "/a/\0"])
def test_invalid_path_is_a_config_error(path):
    errors: list[str] = []
    assert validate({"path": path}, CgroupCollector.Config, "collectors.cgroup[0]", errors) is None
    assert len(errors) == 1 and "collectors.cgroup[0]" in errors[0] and "path" in errors[0]


async def test_one_blocking_call_per_collect(tmp_path):
    calls = []
    context = collector_context(tmp_path, proc_root=TREES / "unified/proc", sys_root=TREES / "unified/sys")

    async def run_blocking(fn, *args):
        calls.append(fn)
        return fn(*args)

    collector = CgroupCollector(CgroupCollector.Config(), dataclasses.replace(context, run_blocking=run_blocking))
    for _ in range(2):
        calls.clear()
        emitter = await collect_once(collector)
        assert len(calls) == 1 and emitter.samples


def test_sample_parses_and_readme_shows_it():
    sample = (PLUGIN / "sample.toml").read_text()
    # uncomment the "# key = default" lines (not the "##" prose) and parse the result
    uncommented = re.sub(r"^(\s*)# (\w+ = )", r"\1\2", sample, flags=re.M)
    (options,) = tomllib.loads(uncommented)["collectors"]["cgroup"]
    assert set(options) == {f.name for f in msgspec.structs.fields(CgroupCollector.Config)}
    assert msgspec.convert(options, CgroupCollector.Config) == CgroupCollector.Config()
    assert sample.strip() in (PLUGIN / "README.md").read_text()


async def test_readme_table_lists_exactly_what_the_full_fixture_emits(tmp_path):
    emitter = await collect_once(make(tmp_path, TREES / "unified"))
    readme = (PLUGIN / "README.md").read_text()
    documented = set(re.findall(r"^\| `(container_\w+)`", readme, re.M))
    assert len(documented) == 34
    assert {s.name for s in emitter.samples} == documented


def _read_cpu_usage(directory: Path) -> float:
    return keyed_lenient(directory / "cpu.stat")["usage_usec"] / 1e6


def keyed_lenient(path: Path) -> dict[str, int]:
    return {p[0]: int(p[1]) for p in (line.split() for line in path.read_text().splitlines()) if len(p) == 2}


def _this_machines_cgroup() -> tuple[str, Path] | None:
    """The agent's (this test process's) cgroup v2 directory, or None without cgroup v2."""
    base = Path("/sys/fs/cgroup")
    mount = next((d for d in (base, base / "unified") if (d / "cgroup.controllers").is_file()), None)
    lines = [line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")]
    if mount is None or not lines:
        return None
    path = lines[0][3:]
    return path, mount / path.lstrip("/")


async def test_this_machines_own_cgroup(tmp_path):
    found = _this_machines_cgroup()
    if found is None:
        pytest.skip("cgroup v2 is not mounted on this machine (no cgroup.controllers under /sys/fs/cgroup)")
    path, directory = found
    collector = CgroupCollector(CgroupCollector.Config(), collector_context(tmp_path))
    before = _read_cpu_usage(directory) if (directory / "cpu.stat").exists() else None
    emitter = await collect_once(collector)
    after = _read_cpu_usage(directory) if (directory / "cpu.stat").exists() else None
    assert emitter.errors == []
    assert emitter.samples, "a cgroup v2 directory always has cpu.stat or cgroup.procs"
    assert {dict(s.labels)["id"] for s in emitter.samples} == {path}
    values = {
        name: value for (name, labels), value in by_series(emitter.samples).items() if "device" not in dict(labels)
    }
    if before is not None:
        # cumulative CPU time read by the collector lies between two reads taken around it
        assert before <= values["container_cpu_usage_seconds_total"] <= after
    if (directory / "memory.current").exists():
        usage = values["container_memory_usage_bytes"]
        assert usage > 0 and 0 <= values["container_memory_working_set_bytes"] <= usage
    procs = values["container_processes"]
    assert procs >= 1  # this test process itself is in it


# ---- mode = "units": every systemd unit's cgroup ------------------------------------------------

FULL = TREES / "unified/sys/fs/cgroup" / SERVICE.lstrip("/")  # a service with every interface file
UNIT_CGROUPS = [
    "/system.slice",
    "/system.slice/nginx.service",
    "/system.slice/cron.service",
    "/system.slice/system-getty.slice",
    "/system.slice/system-getty.slice/getty@tty1.service",
    "/user.slice",
    "/user.slice/user-1000.slice",
    "/user.slice/user-1000.slice/user@1000.service",
]
NOT_UNITS = [  # a scope, and a service's own sub-cgroups (the user manager's units)
    "/init.scope",
    "/user.slice/user-1000.slice/session-1.scope",
    "/user.slice/user-1000.slice/user@1000.service/app.slice",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
]


def unit_tree(tmp_path: Path, cgroups: list[str]) -> Path:
    """A cgroup v2 tree whose every given cgroup holds a copy of the full service's files; the root
    has what a real root has (cpu.stat, io.stat, memory.stat, pressure, cgroup.procs)."""
    tree = tmp_path / "tree"
    mount = tree / "sys/fs/cgroup"
    shutil.copytree(TREES / "unified/sys/dev", tree / "sys/dev")
    mount.mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    for name in ("cpu.stat", "io.stat", "memory.stat", "cpu.pressure", "memory.pressure", "io.pressure"):
        shutil.copy(FULL / name, mount / name)
    (mount / "cgroup.procs").write_text("1\n")
    for cgroup in cgroups:
        shutil.copytree(FULL, mount / cgroup.lstrip("/"), dirs_exist_ok=True)
    return tree


def units(tmp_path: Path, tree: Path, **options) -> CgroupCollector:
    return make(tmp_path, tree, mode="units", **options)


def ids(emitter) -> set[str]:
    return {dict(s.labels)["id"] for s in emitter.samples if s.name.startswith("container_")}


def skipped(emitter) -> dict[str, float]:
    return {dict(s.labels)["reason"]: s.value for s in emitter.samples if s.name == "hostwatch_cgroup_skipped_total"}


async def test_units_mode_reports_every_service_and_slice_with_unit_names(tmp_path):
    tree = unit_tree(tmp_path, UNIT_CGROUPS + NOT_UNITS)
    emitter = await collect_once(units(tmp_path, tree))
    assert emitter.errors == []
    assert ids(emitter) == {"/", *UNIT_CGROUPS}
    names = {dict(s.labels)["id"]: dict(s.labels)["name"] for s in emitter.samples}
    assert names["/"] == "-.slice"
    assert names["/system.slice/system-getty.slice/getty@tty1.service"] == "getty@tty1.service"
    # each unit's series are exactly cAdvisor's for its files, with name = the unit
    values = by_series(emitter.samples)
    mount = tree / "sys/fs/cgroup"
    for cgroup in UNIT_CGROUPS:
        want = expected_from(mount / cgroup.lstrip("/"), {"id": cgroup, "name": names[cgroup]}, tree / "sys/dev/block")
        got = {key: value for key, value in values.items() if dict(key[1])["id"] == cgroup}
        assert got == want, cgroup
    root = {name for (name, labels), _ in values.items() if dict(labels)["id"] == "/"}
    assert "container_memory_usage_bytes" not in root and "container_cpu_usage_seconds_total" in root
    assert skipped(emitter) == {}


async def test_units_mode_include_exclude_and_path(tmp_path):
    tree = unit_tree(tmp_path, UNIT_CGROUPS + NOT_UNITS)
    emitter = await collect_once(units(tmp_path, tree, include=["*.service", "*.scope"], exclude=["getty@*"]))
    assert ids(emitter) == {
        "/init.scope",
        "/system.slice/nginx.service",
        "/system.slice/cron.service",
        "/user.slice/user-1000.slice/user@1000.service",
        "/user.slice/user-1000.slice/session-1.scope",
    }
    for path in ("/system.slice", "/system.slice/"):
        emitter = await collect_once(units(tmp_path, tree, path=path, include=["*"]))
        assert emitter.errors == []
        assert ids(emitter) == {cgroup for cgroup in UNIT_CGROUPS if cgroup.startswith("/system.slice")}
        assert {dict(s.labels)["name"] for s in emitter.samples if dict(s.labels)["id"] == "/system.slice"} == {
            "system.slice"
        }
    emitter = await collect_once(units(tmp_path, tree, path="/nothing.slice"))
    assert emitter.samples == [] and "/nothing.slice not found" in str(emitter.errors[0])


async def test_units_mode_bound_is_counted_and_reported(tmp_path):
    tree = unit_tree(tmp_path, UNIT_CGROUPS)
    collector = units(tmp_path, tree, max_cgroups=3)
    await collector.start()
    for run in (1, 2):
        emitter = RunEmitter(time.time_ns())
        await collector.collect(emitter)
        # path order: the root, then /system.slice and its first child
        assert ids(emitter) == {"/", "/system.slice", "/system.slice/cron.service"}
        assert len(emitter.errors) == 1 and "max_cgroups = 3" in emitter.errors[0]
        assert skipped(emitter) == {"over_limit": 6 * run}  # 9 unit cgroups, 3 read


async def test_units_mode_service_vanishing_between_listing_and_reading(tmp_path, monkeypatch, caplog):
    """A unit stopping: its cgroup is removed after the walk listed it, before or while it is read.
    Nothing of it is reported (never half a cgroup), it is counted, logged once, and not an error."""
    tree = unit_tree(tmp_path, UNIT_CGROUPS)
    mount = tree / "sys/fs/cgroup"
    gone_before = mount / "system.slice/cron.service"
    gone_during = mount / "system.slice/nginx.service"
    real_list, real_text = cgroup_module.list_units, CgroupFiles.text
    removed: list[Path] = []

    def list_then_remove(*args):
        listing = real_list(*args)
        if not removed:
            removed.append(gone_before)
            shutil.rmtree(gone_before)
        return listing

    def text_then_remove(self, name):
        text = real_text(self, name)
        if name == "cpu.stat" and gone_during.exists() and os.path.samefile(f"/proc/self/fd/{self.fd}", gone_during):
            shutil.rmtree(gone_during)  # cpu.stat was read, the rest is gone
        return text

    monkeypatch.setattr(cgroup_module, "list_units", list_then_remove)
    monkeypatch.setattr(CgroupFiles, "text", text_then_remove)
    collector = units(tmp_path, tree)
    await collector.start()
    caplog.set_level(logging.INFO)
    emitter = RunEmitter(time.time_ns())
    await collector.collect(emitter)
    assert emitter.errors == []
    assert ids(emitter) == {"/", *UNIT_CGROUPS} - {"/system.slice/cron.service", "/system.slice/nginx.service"}
    assert skipped(emitter) == {"vanished": 2}
    # both come back (restarted), with new directories: cron is read in full, nginx vanishes again
    shutil.copytree(FULL, gone_before)
    shutil.copytree(FULL, gone_during)
    emitter = RunEmitter(time.time_ns())
    await collector.collect(emitter)
    assert ids(emitter) == {"/", *UNIT_CGROUPS} - {"/system.slice/nginx.service"}
    assert skipped(emitter) == {"vanished": 3}  # nginx vanished again after its cpu.stat
    assert sum("went away while being read" in r.getMessage() for r in caplog.records) == 1


async def test_units_mode_replaced_cgroup_mid_read_is_dropped(tmp_path, monkeypatch):
    """Stopped and started again while being read: a new directory of the same name, other numbers."""
    tree = unit_tree(tmp_path, UNIT_CGROUPS)
    target = tree / "sys/fs/cgroup/system.slice/nginx.service"
    real_text = CgroupFiles.text
    done = []

    def replace_after_cpu_stat(self, name):
        text = real_text(self, name)
        if name == "cpu.stat" and not done and os.path.samefile(f"/proc/self/fd/{self.fd}", target):
            done.append(1)
            shutil.rmtree(target)
            target.mkdir()
            (target / "cpu.stat").write_text("usage_usec 1\n")
        return text

    monkeypatch.setattr(CgroupFiles, "text", replace_after_cpu_stat)
    emitter = await collect_once(units(tmp_path, tree))
    assert "/system.slice/nginx.service" not in ids(emitter)
    assert skipped(emitter) == {"vanished": 1} and emitter.errors == []


async def test_units_mode_unreadable_and_malformed_files_one_error_each(tmp_path):
    tree = unit_tree(tmp_path, UNIT_CGROUPS)
    mount = tree / "sys/fs/cgroup"
    for cgroup in ("system.slice/nginx.service", "system.slice/cron.service"):
        (mount / cgroup / "memory.stat").unlink()
        (mount / cgroup / "memory.stat").mkdir()  # exists, cannot be read as a file
    (mount / "system.slice/cron.service/cpu.stat").write_text("usage_usec lots\nuser_usec 1\n")
    (mount / "system.slice/nginx.service/cpu.stat").write_text("usage_usec 5\nuser_usec 1\nstray\nsystem_usec ?\n")
    emitter = await collect_once(units(tmp_path, tree))
    errors = sorted(map(str, emitter.errors))
    assert len(errors) == 2, errors  # one per file and kind of problem, however many cgroups have it
    assert errors[0].startswith("cpu.stat in 2 cgroup(s), e.g. ") and "cron.service/cpu.stat: skipped 1" in errors[0]
    assert errors[1].startswith("memory.stat in 2 cgroup(s), e.g. cannot read ") and "Is a directory" in errors[1]
    assert ids(emitter) == {"/", *UNIT_CGROUPS}  # every cgroup still reported, without what failed
    values = {(n, dict(labels)["id"]) for (n, labels) in by_series(emitter.samples)}
    assert ("container_memory_rss", "/system.slice/nginx.service") not in values
    assert ("container_memory_usage_bytes", "/system.slice/nginx.service") in values
    assert ("container_cpu_usage_seconds_total", "/system.slice/cron.service") not in values
    assert ("container_cpu_user_seconds_total", "/system.slice/cron.service") in values


async def test_units_mode_unlistable_slice_is_an_error(tmp_path, monkeypatch):
    tree = unit_tree(tmp_path, UNIT_CGROUPS)
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("/user.slice"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(cgroup_walk.os, "scandir", scandir)
    emitter = await collect_once(units(tmp_path, tree))
    assert len(emitter.errors) == 1 and "cannot list" in emitter.errors[0] and "user.slice" in emitter.errors[0]
    assert "/user.slice" in ids(emitter) and "/user.slice/user-1000.slice" not in ids(emitter)


async def test_units_mode_limits_are_kept_and_refreshed(tmp_path):
    """Limits are read when a cgroup first appears, every SPEC_REFRESH_RUNS runs, and when it is re-created."""
    tree = unit_tree(tmp_path, ["/system.slice", "/system.slice/nginx.service"])
    service = tree / "sys/fs/cgroup/system.slice/nginx.service"
    collector = units(tmp_path, tree, path="/system.slice")
    await collector.start()

    async def limit_and_usage() -> tuple[float, float]:
        emitter = RunEmitter(time.time_ns())
        await collector.collect(emitter)
        values = {n: v for (n, labels), v in by_series(emitter.samples).items() if dict(labels)["id"].endswith("ce")}
        return values["container_spec_memory_limit_bytes"], values["container_memory_usage_bytes"]

    assert await limit_and_usage() == (268435456, 66490368)
    (service / "memory.max").write_text("1048576\n")
    (service / "memory.current").write_text("4096\n")
    runs = [await limit_and_usage() for _ in range(2 * cgroup_module.SPEC_REFRESH_RUNS)]
    assert runs[0] == (268435456, 4096)  # usage is read every run, the limit is not
    assert runs[-1] == (1048576, 4096)  # but within the refresh period
    # a restart re-creates the cgroup (a new directory): its limits are read at once
    shutil.rmtree(service)
    shutil.copytree(FULL, service)
    (service / "memory.max").write_text("2097152\n")
    assert await limit_and_usage() == (2097152, 66490368)


async def test_units_mode_reads_only_what_changes(tmp_path, monkeypatch):
    """After the first run: per cgroup, the directory and its usage files, no limits, no absent files."""
    tree = unit_tree(tmp_path, ["/system.slice", "/system.slice/nginx.service"])
    (tree / "sys/fs/cgroup/system.slice/nginx.service/memory.peak").unlink()  # kernel < 5.19
    opened: list[str] = []
    real_open = files_module.os.open

    def counting_open(path, flags, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files_module.os, "open", counting_open)
    collector = units(tmp_path, tree, path="/system.slice")
    await collector.start()
    for _ in range(2):
        opened.clear()
        await collector.collect(RunEmitter(time.time_ns()))
    usage_files = {
        "cpu.stat", "memory.current", "memory.stat", "memory.swap.current", "memory.events", "io.stat",
        "pids.current", "cgroup.procs", "cpu.pressure", "memory.pressure", "io.pressure",
    }  # fmt: skip
    # the slice and the service: a directory each, then their usage files; the service's memory.peak is
    # known to be absent
    directories = [str(tree / "sys/fs/cgroup" / s) for s in ("system.slice", "system.slice/nginx.service")]
    assert sorted(opened) == sorted([*directories, *usage_files, "memory.peak", *usage_files])


WAIT = ("waiting", "stalled")


async def test_units_mode_on_a_hybrid_host(tmp_path, caplog):
    """Hybrid: v2 carries no controllers; CPU time, processes and pressure are all there is, said once."""
    tree = copy_tree(tmp_path, "hybrid")
    unified = tree / "sys/fs/cgroup/unified"
    shutil.copytree(unified, tmp_path / "copy", ignore=shutil.ignore_patterns("cgroup.controllers"))
    shutil.copytree(tmp_path / "copy", unified / "system.slice/ssh.service")
    caplog.set_level(logging.WARNING)
    collector = units(tmp_path, tree)
    await collector.start()
    for _ in range(2):
        emitter = RunEmitter(time.time_ns())
        await collector.collect(emitter)
        assert emitter.errors == []
        assert ids(emitter) == {"/", "/system.slice/ssh.service"}
        assert {s.name for s in emitter.samples} == {
            "container_cpu_usage_seconds_total",
            "container_cpu_user_seconds_total",
            "container_cpu_system_seconds_total",
            "container_processes",
            *(f"container_pressure_{r}_{s}_seconds_total" for r in ("cpu", "memory", "io") for s in WAIT),
        }
    assert sum("hybrid mode" in r.getMessage() for r in caplog.records) == 1


async def test_units_mode_on_a_cgroup_v1_only_host(tmp_path):
    emitter = await collect_once(units(tmp_path, TREES / "v1only"))
    assert emitter.samples == [] and len(emitter.errors) == 1 and "cgroup v2 only" in emitter.errors[0]


def test_name_option_is_for_single_mode_only():
    errors: list[str] = []
    assert validate({"mode": "units", "name": "x"}, CgroupCollector.Config, "collectors.cgroup[0]", errors) is None
    assert len(errors) == 1 and "name" in errors[0]


async def test_units_mode_cost_with_200_services(tmp_path):
    """The figure in the README: one collect() over 200 services (fixture copies of a full service)."""
    services = [f"/system.slice/svc-{i:03}.service" for i in range(200)]
    tree = unit_tree(tmp_path, ["/system.slice", *services])
    collector = units(tmp_path, tree)
    await collector.start()
    first = RunEmitter(time.time_ns())
    await collector.collect(first)
    assert len(ids(first)) == 202 and first.errors == []
    runs, cpu = 20, time.process_time()
    for _ in range(runs):
        emitter = RunEmitter(time.time_ns())
        collector._collect(emitter)  # the worker call itself, no thread hop
    cost_ms = (time.process_time() - cpu) * 1e3 / runs
    print(f"\ncgroup units collect(): 202 cgroups, {len(emitter.samples)} samples, {cost_ms:.1f} ms CPU per run")
    assert len(emitter.samples) == len(first.samples)
    assert cost_ms < 250  # generous for a shared CI machine; the README gives the measured figure


async def test_units_mode_on_this_machines_hierarchy(tmp_path):
    """The real cgroupfs of the test machine, every cgroup at the top (include "*"): the root's CPU
    time lies between two reads of its cpu.stat taken around the run."""
    base = Path("/sys/fs/cgroup")
    mount = next((d for d in (base, base / "unified") if (d / "cgroup.controllers").is_file()), None)
    if mount is None:
        pytest.skip("cgroup v2 is not mounted on this machine")
    collector = CgroupCollector(CgroupCollector.Config(mode="units", include=["*"]), collector_context(tmp_path))

    def tops() -> set[str]:
        return {entry.name for entry in os.scandir(mount) if entry.is_dir()}

    tops_before, before = tops(), keyed_lenient(mount / "cpu.stat")["usage_usec"] / 1e6
    emitter = await collect_once(collector)
    tops_after, after = tops(), keyed_lenient(mount / "cpu.stat")["usage_usec"] / 1e6
    assert emitter.errors == []
    names = {dict(s.labels)["id"]: dict(s.labels)["name"] for s in emitter.samples if s.name.startswith("container")}
    assert names["/"] == "-.slice"
    assert {f"/{top}" for top in tops_before & tops_after} <= set(names)  # present throughout: reported
    root = (("cpu", "total"), ("id", "/"), ("name", "-.slice"))
    assert before <= by_series(emitter.samples)[("container_cpu_usage_seconds_total", root)] <= after
