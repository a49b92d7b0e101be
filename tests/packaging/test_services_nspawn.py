"""Per-service resources (the cgroup collector, ``mode = "units"``) inside a booted systemd.

A clean Debian 12 root (tests/packaging/debroot.sh) booted with ``systemd-nspawn -b`` runs real
units: one burning CPU, one holding 64 MiB, one doing direct I/O, one killed by the OOM killer
under ``MemoryMax=``, and 200 idle template instances. The checkout and the test venv's packages
are bind-mounted read-only; the container's own python3.11 runs ``hostwatch once`` on them.

Every value is checked against systemd (``systemctl show``: the unit's ``ControlGroup``, and
``CPUUsageNSec``, ``MemoryCurrent``, ``IOReadBytes``, ``TasksCurrent``, ``Result`` where systemd
accounts them) and against the cgroup files, bracketed by two reads around hostwatch's run.

Where the host runs systemd's hybrid mode (cgroup v1 holds the controllers) the container's
cgroup v2 tree has none: systemd accounts nothing there and only CPU time, processes and
pressure exist per unit; the memory, I/O and OOM test skips, saying so.
"""

from __future__ import annotations

import json
import shlex
import sys
import sysconfig
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.packaging.harness import REPO, Booted, debian_root, need_commands, need_root, unavailable

pytestmark = pytest.mark.e2e

SRC, PACKAGES = "/opt/hw/src", "/opt/hw/site-packages"
PYTHON_ENV = f"PYTHONPATH={SRC}:{PACKAGES} PYTHONDONTWRITEBYTECODE=1"
PY = "/usr/bin/python3.11"
UNITS = {
    "hw-burn.service": f"[Service]\nExecStart={PY} /usr/local/bin/hw-burn\nCPUQuota=30%\n",
    "hw-hold.service": (
        "[Service]\nMemoryAccounting=yes\n"
        f'ExecStart={PY} -c \'import time; b = bytearray(64 << 20); b[::4096] = b"x" * (len(b) // 4096); '
        "time.sleep(1e6)'\n"
    ),
    "hw-io.service": (
        "[Service]\nIOAccounting=yes\nExecStartPre=/bin/dd if=/dev/urandom of=/var/tmp/hw-io bs=1M count=16\n"
        "ExecStart=/bin/sh -c 'while :; do dd if=/var/tmp/hw-io of=/dev/null bs=1M iflag=direct 2>/dev/null; "
        "sleep 0.2; done'\n"
    ),
    "hw-oom.service": (
        "[Service]\nType=oneshot\nMemoryMax=32M\nMemorySwapMax=0\n"
        f"ExecStart={PY} -c 'b = bytearray(128 << 20); b[::4096] = b\"x\" * (len(b) // 4096)'\n"
    ),
    "hw-idle@.service": "[Service]\nExecStart=/bin/sleep infinity\n",
}
# busy 30% of the time on its own (where CPUQuota= cannot act: the machine is shared), in one process
BURN = """import time
while True:
    start = time.monotonic()
    while time.monotonic() - start < 0.03:
        pass
    time.sleep(0.07)
"""
IDLE_INSTANCES = 200
CONFIG = '[[collectors.cgroup]]\nmode = "units"\n'


class Box:
    def __init__(self, booted: Booted) -> None:
        self.booted = booted
        found = booted.sh("test -f /sys/fs/cgroup/cgroup.controllers && echo unified || echo hybrid").stdout
        self.mount = "/sys/fs/cgroup" if found.strip() == "unified" else "/sys/fs/cgroup/unified"

    def hostwatch_once(self, config: str = CONFIG) -> tuple[str, str]:
        (self.booted.root / "root/hostwatch.toml").write_text(config)
        done = self.booted.sh(f"{PYTHON_ENV} {PY} -m agent.cli once --config /root/hostwatch.toml", check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    def cgroup_file(self, cgroup: str, name: str) -> str | None:
        done = self.booted.sh(f"cat {self.mount}{cgroup}/{name}", check=False)
        return done.stdout if done.returncode == 0 else None

    def keyed(self, cgroup: str, name: str) -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in (self.cgroup_file(cgroup, name) or "").splitlines())}

    def probe(self, *args: str, timeout: float = 300) -> dict:
        script = f"{SRC}/tests/packaging/cgroup_probe.py"
        return json.loads(self.booted.sh(f"{PYTHON_ENV} {PY} {script} {' '.join(args)}", timeout=timeout).stdout)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    need_root()
    need_commands("systemd-nspawn", "nsenter", "debootstrap")
    if sys.version_info[:2] != (3, 11):
        unavailable("the test venv must be Python 3.11, the container's, to lend it its compiled packages")
    packages = sysconfig.get_paths()["purelib"]
    work = tmp_path_factory.mktemp("services-nspawn")
    root = debian_root(work / "root")
    for name, text in UNITS.items():
        (root / "etc/systemd/system" / name).write_text(text)
    (root / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/local/bin/hw-burn").write_text(BURN)
    binds = (f"{REPO}:{SRC}", f"{packages}:{PACKAGES}")
    booted = Booted(root, f"hw-svc-{uuid.uuid4().hex[:8]}", work / "console.log", binds_ro=binds).boot()
    try:
        idle = " ".join(f"hw-idle@{i}.service" for i in range(IDLE_INSTANCES))
        booted.sh(f"systemctl start hw-burn.service hw-hold.service hw-io.service {idle}", timeout=180)
        booted.sh("systemctl start hw-oom.service", check=False)
        box = Box(booted)
        # the holder has touched its 64 MiB, the reader has read its file at least once
        booted.wait(
            lambda: (
                (box.cgroup_file("/system.slice/hw-io.service", "cpu.stat") or "")
                and int(box.keyed("/system.slice/hw-burn.service", "cpu.stat").get("usage_usec", 0)) > 500_000
            ),
            timeout=60,
            what="the burner has used half a second of CPU",
        )
        yield box
    finally:
        booted.close()


def parse(text: str) -> dict[str, dict[frozenset, float]]:
    """container_* and hostwatch_cgroup_* series: sample name -> {label set: value}."""
    series: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("container_", "hostwatch_cgroup")):
                series.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return series


def of_unit(series: dict, name: str, unit: str, **extra: str) -> float:
    found = [v for labels, v in series.get(name, {}).items() if ("name", unit) in labels and extra.items() <= labels]
    assert len(found) == 1, (name, unit, extra, found)
    return found[0]


def assert_no_errors(box: Box, stderr: str) -> None:
    """Nothing on stderr but, on a hybrid host, the one line that says what cannot be reported there."""
    lines = stderr.strip().splitlines()
    if box.mount.endswith("unified"):
        assert len(lines) == 1 and "hybrid mode" in lines[0], lines
    else:
        assert lines == [], lines


def active_units(box: Box) -> dict[str, str]:
    """unit -> ControlGroup, for every active service and slice systemd lists (its own view)."""
    names = box.booted.sh(
        "systemctl list-units --type=service,slice --state=active --no-legend --plain | awk '{print $1}'"
    ).stdout.split()
    out = box.booted.sh("systemctl show -p Id -p ControlGroup -- " + " ".join(map(shlex.quote, names))).stdout
    units = {}
    for block in out.split("\n\n"):  # one block per unit, properties in systemctl's own order
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("ControlGroup"):
            units[props["Id"]] = props["ControlGroup"]
    # an active slice with nothing running below it has a ControlGroup but no cgroup (systemd made none,
    # or removed it): there is nothing to read for it
    check = " ".join(f"test -d {box.mount}{shlex.quote(c)} && echo {shlex.quote(u)};" for u, c in units.items())
    existing = set(box.booted.sh(check, check=False).stdout.split())
    return {unit: cgroup for unit, cgroup in units.items() if unit in existing}


def test_every_active_service_and_slice_systemd_lists_is_reported(box: Box) -> None:
    before = active_units(box)
    text, errors = box.hostwatch_once()
    after = active_units(box)
    assert_no_errors(box, errors)
    ours = {(dict(labels)["name"], dict(labels)["id"]) for labels in parse(text)["container_cpu_usage_seconds_total"]}
    stable = set(before.items()) & set(after.items())
    assert len(stable) >= IDLE_INSTANCES + 5, len(stable)
    # systemd's ControlGroup is our `id`, its unit our `name`; the root is -.slice
    assert stable <= ours, sorted(stable - ours)[:10]
    assert ("-.slice", "/") in ours
    # (not "only those": containers booted side by side with --keep-unit share one cgroup tree, so
    # another test's container's units can show up here too)
    assert all(name.endswith((".service", ".slice")) for name, _ in ours)


def process_cpu_seconds(box: Box, pid: str) -> float:
    """utime + stime of one process from /proc/PID/stat, the kernel's per-task accounting."""
    fields = box.booted.sh(f"cat /proc/{pid}/stat").stdout.rsplit(")", 1)[1].split()
    ticks = int(box.booted.sh("getconf CLK_TCK").stdout)
    return (int(fields[11]) + int(fields[12])) / ticks


def test_cpu_time_of_a_burning_service(box: Box) -> None:
    cgroup = "/system.slice/hw-burn.service"
    pid = box.booted.show("hw-burn.service", "MainPID")["MainPID"]
    before = box.keyed(cgroup, "cpu.stat")
    process_before = process_cpu_seconds(box, pid)
    systemd_before = box.booted.show("hw-burn.service", "CPUUsageNSec")["CPUUsageNSec"]
    text, _ = box.hostwatch_once()
    after = box.keyed(cgroup, "cpu.stat")
    process_after = process_cpu_seconds(box, pid)
    systemd_after = box.booted.show("hw-burn.service", "CPUUsageNSec")["CPUUsageNSec"]
    series = parse(text)
    usage = of_unit(series, "container_cpu_usage_seconds_total", "hw-burn.service", cpu="total")
    assert before["usage_usec"] / 1e6 <= usage <= after["usage_usec"] / 1e6
    user = of_unit(series, "container_cpu_user_seconds_total", "hw-burn.service")
    assert before["user_usec"] / 1e6 <= user <= after["user_usec"] / 1e6
    system = of_unit(series, "container_cpu_system_seconds_total", "hw-burn.service")
    assert before["system_usec"] / 1e6 <= system <= after["system_usec"] / 1e6
    assert usage > 0.3  # it has burnt for a while
    # the one process in it, as the scheduler counts it (in clock ticks; its start-up before exec aside)
    assert process_before - 0.1 <= usage <= process_after + 0.1, (process_before, usage, process_after)
    if systemd_before != "[not set]":  # systemd accounts CPU (unified mode): the same counter
        assert int(systemd_before) / 1e9 <= usage + 1e-6 and usage <= int(systemd_after) / 1e9 + 1e-6
    if "nr_throttled" in after and box.cgroup_file(cgroup, "cpu.max") not in (None, "max 100000\n"):
        # CPUQuota=30%: CFS statistics, bracketed too
        throttled = of_unit(series, "container_cpu_cfs_throttled_periods_total", "hw-burn.service")
        assert before["nr_throttled"] <= throttled <= after["nr_throttled"]
        assert of_unit(series, "container_spec_cpu_quota", "hw-burn.service") == 30000


def test_processes_and_pressure(box: Box) -> None:
    cgroup = "/system.slice/hw-hold.service"
    pid = box.booted.show("hw-hold.service", "MainPID")["MainPID"]
    pressure_before = box.cgroup_file("/system.slice/hw-burn.service", "cpu.pressure")
    text, _ = box.hostwatch_once()
    pressure_after = box.cgroup_file("/system.slice/hw-burn.service", "cpu.pressure")
    series = parse(text)
    assert (box.cgroup_file(cgroup, "cgroup.procs") or "").split() == [pid]
    assert of_unit(series, "container_processes", "hw-hold.service") == 1
    assert of_unit(series, "container_processes", "hw-idle@7.service") == 1
    if pressure_before is not None:
        totals = [int(text.split("total=")[1].split()[0]) / 1e6 for text in (pressure_before, pressure_after)]
        waiting = of_unit(series, "container_pressure_cpu_waiting_seconds_total", "hw-burn.service")
        assert totals[0] <= waiting <= totals[1]


def test_memory_io_and_oom_kills_against_systemd(box: Box) -> None:
    controllers = box.cgroup_file("/system.slice", "cgroup.subtree_control") or ""
    if not {"memory", "io", "pids"} <= set(controllers.split()):
        pytest.skip(
            "the container's cgroup v2 tree has no memory/io/pids controller (the host runs systemd's hybrid "
            f"mode: cgroup v1 holds them; /system.slice enables {controllers.split()}); systemd accounts nothing "
            "there either"
        )
    props = ("MemoryCurrent", "IOReadBytes", "TasksCurrent")
    hold, io = "/system.slice/hw-hold.service", "/system.slice/hw-io.service"
    before = {u: box.booted.show(u, *props) for u in ("hw-hold.service", "hw-io.service")}
    files_before = {c: int(box.cgroup_file(c, "memory.current")) for c in (hold, io)}
    oom_before = box.keyed("/system.slice", "memory.events")["oom_kill"]
    text, errors = box.hostwatch_once()
    after = {u: box.booted.show(u, *props) for u in ("hw-hold.service", "hw-io.service")}
    files_after = {c: int(box.cgroup_file(c, "memory.current")) for c in (hold, io)}
    oom_after = box.keyed("/system.slice", "memory.events")["oom_kill"]
    series = parse(text)
    for unit, cgroup in (("hw-hold.service", hold), ("hw-io.service", io)):
        usage = of_unit(series, "container_memory_usage_bytes", unit)
        # memory moves both ways: within what systemd and the file showed around our read
        seen = [int(before[unit]["MemoryCurrent"]), int(after[unit]["MemoryCurrent"])]
        seen += [files_before[cgroup], files_after[cgroup]]
        assert min(seen) <= usage <= max(seen), (unit, usage, seen)
        assert 0 <= of_unit(series, "container_memory_working_set_bytes", unit) <= usage
        assert of_unit(series, "container_processes", unit) >= 1
        tasks = of_unit(series, "container_threads", unit)
        assert int(before[unit]["TasksCurrent"]) - 1 <= tasks <= int(after[unit]["TasksCurrent"]) + 1
    assert of_unit(series, "container_memory_usage_bytes", "hw-hold.service") >= 64 << 20
    # I/O: systemd's IOReadBytes is the sum over devices of io.stat rbytes, as ours is
    reads = sum(
        v for labels, v in series["container_fs_reads_bytes_total"].items() if ("name", "hw-io.service") in labels
    )
    low, high = int(before["hw-io.service"]["IOReadBytes"]), int(after["hw-io.service"]["IOReadBytes"])
    assert low <= reads <= high, (low, reads, high)
    # the OOM killer ended hw-oom under MemoryMax=32M: systemd says so, and so do we
    assert box.booted.show("hw-oom.service", "Result")["Result"] == "oom-kill"
    # a oneshot's cgroup is gone once it failed: its count lives on in the slice above it (v2's
    # memory.events is hierarchical)
    oom_slice = of_unit(series, "container_oom_events_total", "system.slice")
    assert oom_slice >= 1 and oom_before <= oom_slice <= oom_after
    assert_no_errors(box, errors)


def test_cost_of_one_collect_with_about_200_services(box: Box) -> None:
    result = box.probe("cost", "20")
    print(f"\ncgroup units collect(): {result}")
    assert result["first"]["errors"] == [] and result["last"]["errors"] == []
    assert result["last"]["cgroups"] >= IDLE_INSTANCES + 5
    assert result["cpu_ms"] < 250, result  # generous: a shared 2-core VM; the README gives the figure


def test_units_starting_and_stopping_during_the_walk(box: Box) -> None:
    """Transient units come and go as fast as systemd can make them while collections run: no error,
    no crash, every run reports the steady units; the ones caught half-read are counted."""
    churn = (
        "i=0; while [ ! -e /run/hw-churn-stop ]; do i=$((i+1)); "
        "systemd-run --quiet --unit=hw-churn-$i /bin/true >/dev/null 2>&1; done"
    )
    box.booted.sh(f"rm -f /run/hw-churn-stop; (nohup sh -c '{churn}' >/dev/null 2>&1 &)")
    try:
        time.sleep(1)
        result = box.probe("churn", "40")
    finally:
        box.booted.sh("touch /run/hw-churn-stop")
    print(f"\nunits collect() under churn: {result}")
    assert result["runs"] == 40 and result["errors"] == []
    assert min(result["cgroups"]) >= IDLE_INSTANCES + 5
