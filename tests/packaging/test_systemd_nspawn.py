"""The systemd collector beside node_exporter's ``--collector.systemd``, inside a booted systemd.

A clean Debian 12 root (tests/packaging/debroot.sh) booted with ``systemd-nspawn -b`` gets a few
units of its own: one that fails, one that crashes twice and is restarted (``Restart=always``),
a socket that accepted a connection, a timer that fired, and 60 idle template instances so
ListUnits returns about 220 units. The host's node_exporter binary and the checkout with the
test venv's packages are bind-mounted read-only; the container's own python3.11 runs
``hostwatch once`` on them. node_exporter and hostwatch must export the same families, types,
label sets and unit states (values bracketed by two node_exporter scrapes around hostwatch's run).
"""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.packaging.harness import REPO, Booted, debian_root, need_commands, need_root, unavailable

pytestmark = pytest.mark.e2e

# Debian's node_exporter build adds "target" to the default unit-exclude; upstream 1.5's default (hostwatch's)
# is spelled out so both sides apply the same rule
BASE_FLAGS = (
    "--collector.disable-defaults --collector.systemd --collector.systemd.enable-restarts-metrics "
    "--collector.systemd.enable-start-time-metrics --collector.systemd.enable-task-metrics"
)
NODE_EXPORTER_FLAGS = BASE_FLAGS + " --collector.systemd.unit-exclude='.+\\.(automount|device|mount|scope|slice)'"
HOSTWATCH_CONFIG = """
[[collectors.systemd]]
enable_restarts_metrics = true
enable_start_time_metrics = true
enable_task_metrics = true
"""
UNITS = {
    # exits 1 once: failed, and the system "degraded"
    "hw-fails.service": "[Service]\nExecStart=/bin/false\n",
    # crashes on its first two starts, then stays up: active with NRestarts=2
    "hw-restarted.service": (
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=always\nRestartSec=100ms\n"
        "ExecStart=/bin/sh -c 'n=$(cat /run/hw-n 2>/dev/null || echo 0); echo $((n+1)) >/run/hw-n; "
        '[ "$n" -ge 2 ] && exec sleep infinity; exit 1\'\n'
    ),
    "hw-echo.socket": "[Socket]\nListenStream=127.0.0.1:7777\nAccept=yes\n",
    "hw-echo@.service": "[Service]\nExecStart=/bin/true\nStandardInput=socket\n",
    "hw-tick.timer": "[Timer]\nOnActiveSec=1s\nAccuracySec=1ms\n",
    "hw-tick.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    "hw-idle@.service": "[Service]\nExecStart=/bin/sleep infinity\n",
}
IDLE_INSTANCES = 60
FAMILIES = {
    f"node_systemd_{name}"
    for name in [
        "version",
        "units",
        "system_running",
        "unit_state",
        "unit_start_time_seconds",
        "unit_tasks_current",
        "unit_tasks_max",
        "service_restart_total",
        "socket_accepted_connections_total",
        "socket_current_connections",
        "socket_refused_connections_total",
        "timer_last_trigger_seconds",
    ]
}
CONNECT = "import socket; socket.create_connection(('127.0.0.1', 7777), 5).close()"
GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


def node_exporter_binary() -> Path:
    for name in ("prometheus-node-exporter", "node_exporter"):
        if found := shutil.which(name):
            return Path(found).resolve()
    unavailable("no node_exporter binary (apt-get install prometheus-node-exporter)")
    raise AssertionError  # unreachable


# where the checkout, the venv's packages and node_exporter appear inside (not under /home or /root,
# which the shipped unit's ProtectHome= hides)
SRC, PACKAGES, EXPORTER = "/opt/hw/src", "/opt/hw/site-packages", "/opt/hw/node_exporter"
PYTHON_ENV = f"PYTHONPATH={SRC}:{PACKAGES} PYTHONDONTWRITEBYTECODE=1"


class Box:
    """The booted container plus the commands that run hostwatch and node_exporter inside it."""

    def __init__(self, booted: Booted) -> None:
        self.booted = booted
        self.exporter = EXPORTER
        self.env = PYTHON_ENV

    def hostwatch_once(self, config: str) -> tuple[str, str]:
        (self.booted.root / "root/hostwatch.toml").write_text(config)
        done = self.booted.sh(f"{self.env} python3.11 -m agent.cli once --config /root/hostwatch.toml", check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    def probe(self, *args: str) -> dict:
        script = f"{SRC}/tests/packaging/systemd_probe.py"
        done = self.booted.sh(f"{self.env} python3.11 {script} {' '.join(args)}", timeout=300)
        return json.loads(done.stdout)

    def node_exporter(self) -> str:
        return self.booted.sh(f'python3.11 -c "{GET}" http://127.0.0.1:9100/metrics').stdout


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    need_root()
    need_commands("systemd-nspawn", "nsenter", "debootstrap")
    exporter = node_exporter_binary()
    if sys.version_info[:2] != (3, 11):
        unavailable("the test venv must be Python 3.11, the container's, to lend it its compiled packages")
    packages = sysconfig.get_paths()["purelib"]
    work = tmp_path_factory.mktemp("systemd-nspawn")
    root = debian_root(work / "root")
    for name, text in UNITS.items():
        (root / "etc/systemd/system" / name).write_text(text)
    binds = (f"{REPO}:{SRC}", f"{packages}:{PACKAGES}", f"{exporter}:{EXPORTER}")
    booted = Booted(root, f"hw-sd-{uuid.uuid4().hex[:8]}", work / "console.log", binds_ro=binds).boot()
    try:
        idle = " ".join(f"hw-idle@{i}.service" for i in range(IDLE_INSTANCES))
        booted.sh(f"systemctl start hw-echo.socket hw-tick.timer hw-restarted.service {idle}")
        booted.sh("systemctl start hw-fails.service", check=False)
        booted.sh(f'python3.11 -c "{CONNECT}"')
        booted.sh(
            f"systemd-run --unit=node-exporter {EXPORTER} --web.listen-address=127.0.0.1:9100 {NODE_EXPORTER_FLAGS}"
        )
        settled = (
            "systemctl show -p NRestarts -p ActiveState hw-restarted.service; "
            "systemctl show -p ActiveState hw-fails.service; systemctl show -p LastTriggerUSecMonotonic hw-tick.timer; "
            "systemctl list-units --all --no-legend 'hw-echo@*'; "
            f'python3.11 -c "{GET}" http://127.0.0.1:9100/metrics >/dev/null && echo exporter-up'
        )
        want = "NRestarts=2\nActiveState=active\nActiveState=failed\n"
        booted.wait(
            lambda: (
                (out := booted.sh(settled, check=False).stdout).startswith(want)
                and "LastTriggerUSecMonotonic=0\n" not in out
                and "hw-echo@" not in out
                and out.endswith("exporter-up\n")
            ),
            timeout=60,
            what="test units settled and node_exporter up",
        )
        yield Box(booted)
    finally:
        booted.close()


def parse(text: str) -> dict[tuple[str, str], dict[frozenset, float]]:
    """node_systemd_* series: (sample name, family type) -> {label set: value}."""
    families: dict[tuple[str, str], dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("node_systemd_"):
                families.setdefault((sample.name, family.type), {})[frozenset(sample.labels.items())] = sample.value
    return families


def value(families: dict, metric: str, /, **labels: str) -> float:
    found = [
        v
        for (n, _), series in families.items()
        if n == metric
        for k, v in series.items()
        if k == frozenset(labels.items())
    ]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def test_same_families_types_labels_and_states_as_node_exporter(box: Box) -> None:
    before = parse(box.node_exporter())
    ours_text, errors = box.hostwatch_once(HOSTWATCH_CONFIG)
    after = parse(box.node_exporter())
    ours = parse(ours_text)
    assert not errors.strip(), errors
    assert set(ours) == set(before) == set(after), sorted(set(ours) ^ set(before))
    for family, series in ours.items():
        assert set(series) == set(before[family]) == set(after[family]), (family, set(series) ^ set(before[family]))
        for labels, got in series.items():
            low, high = sorted((before[family][labels], after[family][labels]))
            assert low <= got <= high, (family, dict(labels), got, low, high)
    # what the scene set up, as both see it
    units = sum(1 for _ in value_names(ours, "node_systemd_unit_state")) // 5
    assert units >= 150, units
    for families in (before, ours):
        assert value(families, "node_systemd_unit_state", name="hw-fails.service", state="failed", type="simple") == 1
        assert (
            value(families, "node_systemd_unit_state", name="hw-restarted.service", state="active", type="simple") == 1
        )
        assert value(families, "node_systemd_service_restart_total", name="hw-restarted.service") == 2
        assert value(families, "node_systemd_system_running") == 0  # degraded by hw-fails
        assert value(families, "node_systemd_units", state="failed") == 1
        assert value(families, "node_systemd_socket_accepted_connections_total", name="hw-echo.socket") == 1
        assert value(families, "node_systemd_timer_last_trigger_seconds", name="hw-tick.timer") > time.time() - 3600
    # every family node_exporter 1.5 has, but unit_tasks_current: the container's services run without
    # TasksAccounting, and both leave out systemd's "no value"
    assert {name for name, _ in ours} == FAMILIES - {"node_systemd_unit_tasks_current"}


def value_names(families: dict, name: str):
    for (n, _), series in families.items():
        if n == name:
            yield from series


def test_unit_filters_select_what_node_exporters_select(box: Box) -> None:
    include, exclude = "hw-.+", ".+@.+"  # anchored at both ends on both sides
    box.booted.sh(
        f"systemd-run --unit=node-exporter-filtered {box.exporter} --web.listen-address=127.0.0.1:9101 "
        f"{BASE_FLAGS} --collector.systemd.unit-include='{include}' "
        f"--collector.systemd.unit-exclude='{exclude}'"
    )
    try:
        theirs = box.booted.wait(
            lambda: box.booted.sh(f'python3.11 -c "{GET}" http://127.0.0.1:9101/metrics', check=False).stdout,
            what="the filtered node_exporter",
        )
    finally:
        box.booted.sh("systemctl stop node-exporter-filtered", check=False)
    ours = box.hostwatch_once(HOSTWATCH_CONFIG + f'unit_include = "{include}"\nunit_exclude = "{exclude}"\n')[0]
    names = [
        {dict(labels)["name"] for labels in value_names(parse(text), "node_systemd_unit_state")}
        for text in (theirs, ours)
    ]
    assert (
        names[0]
        == names[1]
        == {"hw-fails.service", "hw-restarted.service", "hw-echo.socket", "hw-tick.timer", "hw-tick.service"}
    )


def test_cost_of_one_collect_with_about_200_units(box: Box) -> None:
    result = box.probe("cost", "20")
    print(f"\nsystemd collect(): {result}")
    assert result["first"]["errors"] == [] and result["last"]["errors"] == []
    assert result["last"]["units"] >= 150
    assert result["cpu_ms"] < 100, result  # generous: measured ~10-20 ms on a shared 2-core VM


def test_reconnects_when_the_bus_restarts(box: Box) -> None:
    result = box.probe("reconnect")
    assert result["before"]["errors"] == [] and result["before"]["samples"] > 0
    # the kept connection died with dbus-daemon; the same run opened a new one
    assert result["after"]["errors"] == [], result
    assert result["after"]["samples"] > 0


def test_no_bus_exports_nothing_and_says_why(box: Box) -> None:
    out, errors = box.hostwatch_once('[[collectors.systemd]]\nbus_address = "unix:path=/run/no-such-bus"\n')
    assert "node_systemd" not in out
    assert "systemd over D-Bus at unix:path=/run/no-such-bus: FileNotFoundError" in errors, errors


def test_the_shipped_units_sandbox_lets_it_read_systemd(box: Box) -> None:
    """hostwatch.service's user, groups and sandbox (PrivateUsers, ProtectSystem=strict, the syscall
    filter, AF_UNIX ...) on a oneshot that runs ``hostwatch once``: the system bus is still reachable."""
    unit = (REPO / "systemd/hostwatch.service").read_text()
    sandbox = unit[unit.index("\nUser=") : unit.index("\n[Install]")]
    box.booted.sh("getent passwd hostwatch || useradd --system --no-create-home --shell /usr/sbin/nologin hostwatch")
    (box.booted.root / "etc/hostwatch").mkdir(exist_ok=True)
    (box.booted.root / "etc/hostwatch/hostwatch.toml").write_text("[[collectors.systemd]]\n")
    (box.booted.root / "etc/systemd/system/hw-sandboxed.service").write_text(
        "[Service]\nType=oneshot\n"
        f"Environment={PYTHON_ENV}\n"
        "ExecStart=/usr/bin/python3.11 -m agent.cli once --config /etc/hostwatch/hostwatch.toml\n"
        "StandardOutput=file:/run/hw-sandboxed.out\nStandardError=file:/run/hw-sandboxed.err\n" + sandbox
    )
    box.booted.sh("systemctl daemon-reload && systemctl start hw-sandboxed.service")
    assert box.booted.sh("cat /run/hw-sandboxed.err").stdout.strip() == ""
    out = parse(box.booted.sh("cat /run/hw-sandboxed.out").stdout)
    assert value(out, "node_systemd_unit_state", name="hw-fails.service", state="failed", type="simple") == 1
