"""The .deb under real systemd: a clean Debian 12 root booted with ``systemd-nspawn -b``.

The tests run in order on one container, as an administrator would: install, look at the
running service, break it in the ways the unit must handle (SIGKILL, a stalled event loop, a
broken config), reload, upgrade, then purge and check nothing is left behind.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.packaging.harness import Booted, debian_root, need_commands, need_root

pytestmark = pytest.mark.e2e

UNIT = "hostwatch.service"
CONF = "/etc/hostwatch/hostwatch.toml"
# what a boot, dpkg and the journal change by themselves; the package must leave nothing else
NOISE = re.compile(
    r"^/(var/log/|var/lib/dpkg/|var/lib/systemd/|var/cache/|var/lib/apt/|etc/ld\.so\.cache"
    r"|etc/(passwd|group|shadow|gshadow)-$)"
)


@pytest.fixture(scope="module")
def box(packages, tmp_path_factory):
    need_root()
    need_commands("systemd-nspawn", "nsenter", "debootstrap")
    work = tmp_path_factory.mktemp("deb-nspawn")
    root = debian_root(work / "root")
    (root / "root/hostwatch.deb").write_bytes(packages.deb.read_bytes())
    booted = Booted(root, f"hw-deb-{uuid.uuid4().hex[:8]}", work / "console.log").boot()
    try:
        booted.before = file_list(booted)
        yield booted
    finally:
        booted.close()


def file_list(box: Booted) -> set[str]:
    out = box.sh("find / -xdev -not -path /root/hostwatch.deb -print").stdout
    return set(out.splitlines())


def main_pid(box: Booted) -> int:
    return int(box.show(UNIT, "MainPID")["MainPID"])


def journal(box: Booted, since: str = "") -> str:
    return box.sh(f"journalctl -u {UNIT} --no-pager -o cat {since}", check=False).stdout


def test_install_creates_user_state_and_enables_the_unit(box: Booted) -> None:
    done = box.sh("dpkg -i /root/hostwatch.deb")
    assert "Setting up hostwatch" in done.stdout
    groups = box.sh("id -nG hostwatch").stdout.split()
    assert groups[0] == "hostwatch" and "adm" in groups
    assert box.sh("getent passwd hostwatch | cut -d: -f6,7").stdout.strip() == "/var/lib/hostwatch:/usr/sbin/nologin"
    assert box.sh("stat -c '%U:%G %a' /var/lib/hostwatch").stdout.strip() == "hostwatch:hostwatch 750"
    assert box.sh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    # the config is a conffile, and the shipped one validates
    assert CONF in box.sh("dpkg-query -W -f='${Conffiles}' hostwatch").stdout
    assert "configuration OK" in box.sh(f"hostwatch check --config {CONF}").stdout
    # --man=no: the root has no man-db to look up Documentation=man:hostwatch(1) with
    verify = box.sh(f"systemd-analyze verify --man=no /lib/systemd/system/{UNIT}", check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_service_is_active_with_notify_status_and_watchdog(box: Booted) -> None:
    def active():
        props = box.show(UNIT, "ActiveState", "Type", "StatusText", "WatchdogUSec", "User")
        return props if props["ActiveState"] == "active" else None

    props = box.wait(active, what="active")
    assert props["Type"] == "notify"
    assert props["StatusText"].startswith("running: 9 collectors, 0 outputs"), props
    assert props["WatchdogUSec"] == "30s"
    assert props["User"] == "hostwatch"


def test_ready_health_and_metrics_answer(box: Booted) -> None:
    assert box.http("/ready")[0] == 200
    assert box.http("/health")[0] == 200
    status, body = box.wait(lambda: (r := box.http("/metrics"))[1].count("node_load1 ") and r, what="host metrics")
    assert status == 200
    assert re.search(r'^node_filesystem_avail_bytes\{device="[^"]+",fstype="[^"]+",mountpoint="/"\} \d', body, re.M)
    # the sandbox lets the read-only adjtimex through: the clock-not-synchronising alerts have data
    assert re.search(r"^node_timex_sync_status \d", body, re.M), "node_timex_* missing under the unit"
    assert re.search(r"^node_uname_info\{", body, re.M)
    detailed = json.loads(box.http("/health/detailed")[1])
    assert all(c["errors"] == 0 for c in detailed["collectors"].values()), detailed["collectors"]


def test_the_agent_process_is_confined(box: Booted) -> None:
    pid = main_pid(box)
    status = dict(line.split(":", 1) for line in box.sh(f"cat /proc/{pid}/status").stdout.splitlines() if ":" in line)
    assert int(status["CapEff"].strip(), 16) == 0 and int(status["CapBnd"].strip(), 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # filter mode: SystemCallFilter=
    # its own mount namespace: /etc and /opt read-only even for root in it, the state dir writable
    inside = f"nsenter --target {pid} --mount -- /bin/sh -c"
    assert "Read-only file system" in box.sh(f"{inside} 'touch /etc/hostwatch/probe' 2>&1", check=False).stdout
    assert "Read-only file system" in box.sh(f"{inside} 'touch /opt/hostwatch/probe' 2>&1", check=False).stdout
    box.sh(f"{inside} 'touch /var/lib/hostwatch/probe && rm /var/lib/hostwatch/probe'")
    assert box.sh(f"{inside} 'ls -A /home /root 2>&1'", check=False).stdout.split() == ["/home:", "/root:"]


PROBE = r"""#!/bin/sh
# Runs with hostwatch.service's own settings (User=, groups, sandbox); prints one line per check.
try() { if sh -c "$2" >/dev/null 2>&1; then echo "$1 yes"; else echo "$1 no"; fi; }
try read_adm_log 'cat /var/log/hw-probe.log'
try read_proc 'cat /proc/meminfo /proc/stat /proc/net/dev'
try read_sys 'ls /sys/class/net /sys/block'
try read_config 'cat /etc/hostwatch/hostwatch.toml'
try write_etc 'touch /etc/hostwatch/probe'
try write_usr 'touch /usr/probe'
try write_state 'touch /var/lib/hostwatch/probe && rm /var/lib/hostwatch/probe'
try write_tmp 'touch /tmp/probe'
try read_root_home 'cat /root/secret'
try see_host_devices 'test -e /dev/vda || test -e /dev/sda || test -e /dev/mem'
echo "uid $(id -un) groups $(id -nG)"
"""


def test_the_sandbox_reads_proc_sys_and_var_log_and_writes_only_its_state(box: Booted) -> None:
    """A oneshot copy of the installed unit (same user, groups and sandbox) runs a probe."""
    box.sh(
        "echo 'hw line' > /var/log/hw-probe.log"
        " && chown root:adm /var/log/hw-probe.log && chmod 0640 /var/log/hw-probe.log"
    )
    box.sh("echo secret > /root/secret && chmod 600 /root/secret")
    box.sh(f"cat > /usr/local/bin/hw-probe <<'EOF'\n{PROBE}EOF\nchmod 755 /usr/local/bin/hw-probe")
    box.sh(
        f"sed -e '/^Exec/d' -e '/^Type=/d' -e '/^WatchdogSec=/d' -e '/^Restart/d' /lib/systemd/system/{UNIT}"
        " > /etc/systemd/system/hw-probe.service"
        " && sed -i 's|^\\[Service\\]|[Service]\\nType=oneshot\\nExecStart=/usr/local/bin/hw-probe|'"
        " /etc/systemd/system/hw-probe.service"
        " && systemctl daemon-reload && systemctl start hw-probe.service"
    )
    out = box.sh("journalctl -u hw-probe.service --no-pager -o cat").stdout
    box.sh("rm -f /etc/systemd/system/hw-probe.service /usr/local/bin/hw-probe /root/secret && systemctl daemon-reload")
    results = dict(line.split(" ", 1) for line in out.splitlines() if line.count(" ") == 1)
    assert results == {
        "read_adm_log": "yes",
        "read_proc": "yes",
        "read_sys": "yes",
        "read_config": "yes",
        "write_etc": "no",
        "write_usr": "no",
        "write_state": "yes",
        "write_tmp": "yes",  # its own PrivateTmp
        "read_root_home": "no",
        "see_host_devices": "no",
    }, out
    # PrivateUsers=yes maps only root and hostwatch, so adm shows as nogroup inside; the kernel
    # still checks the real group, as read_adm_log shows
    assert re.search(r"^uid hostwatch groups hostwatch \S+$", out, re.M), out


def test_logs_in_var_log_are_read_by_the_agent(box: Booted) -> None:
    probe = (
        "cat > /etc/hostwatch/conf.d/90-logs.toml <<EOF\n[[collectors.logs]]\n"
        'paths = ["/var/log/hw-probe.log"]\nstart_at = "beginning"\nEOF\n'
    )
    box.sh(probe)
    check = box.sh(f"hostwatch check --config {CONF}", check=False)
    if check.returncode != 0:
        box.sh("rm /etc/hostwatch/conf.d/90-logs.toml")
        if "collectors.logs" in check.stderr and "unknown" in check.stderr:
            pytest.skip("no logs collector in this build; /var/log readability is shown by the sandbox probe")
        raise AssertionError(check.stderr)
    try:
        box.sh(f"systemctl reload {UNIT}")
        box.wait(
            lambda: re.search(r"^hostwatch_log_lines_read_total(\{[^}]*\})? [1-9]", box.http("/metrics")[1], re.M),
            what="log lines read from /var/log/hw-probe.log (root:adm 0640)",
        )
    finally:
        box.sh(f"rm -f /etc/hostwatch/conf.d/90-logs.toml && systemctl reload {UNIT}")


def test_reload_applies_a_new_config_and_refuses_a_broken_one(box: Booted) -> None:
    pid = main_pid(box)
    box.sh("printf '[[collectors.memory]]\\nalias = \"memory-reloaded\"\\n' > /etc/hostwatch/conf.d/50-reload.toml")
    box.sh(f"systemctl reload {UNIT}")
    box.wait(lambda: "memory-reloaded" in box.http("/health/detailed")[1], what="the reloaded collector")
    assert main_pid(box) == pid
    assert "configuration reloaded" in journal(box)

    box.sh("printf '[[collectors.memory]]\\nalias = 5\\n' > /etc/hostwatch/conf.d/60-broken.toml")
    refused = box.sh(f"systemctl reload {UNIT}", check=False)
    assert refused.returncode != 0
    assert "collectors.memory[1].alias" in journal(box) or "alias" in journal(box)
    assert main_pid(box) == pid and box.show(UNIT, "ActiveState")["ActiveState"] == "active"
    assert box.http("/ready")[0] == 200
    box.sh("rm /etc/hostwatch/conf.d/50-reload.toml /etc/hostwatch/conf.d/60-broken.toml")
    box.sh(f"systemctl reload {UNIT}")


def test_sigkill_of_the_main_process_is_restarted(box: Booted) -> None:
    pid = main_pid(box)
    restarts = int(box.show(UNIT, "NRestarts")["NRestarts"])
    box.sh(f"kill -KILL {pid}")
    box.wait(
        lambda: main_pid(box) not in (0, pid) and box.show(UNIT, "ActiveState")["ActiveState"] == "active",
        what="restart",
    )
    assert int(box.show(UNIT, "NRestarts")["NRestarts"]) == restarts + 1
    box.wait(lambda: box.http("/ready")[0] == 200, what="ready after restart")


def test_a_stalled_event_loop_is_caught_by_the_watchdog(box: Booted) -> None:
    """SIGSTOP freezes the loop (and every thread): no WATCHDOG=1 any more, so systemd aborts it."""
    box.sh(
        f"mkdir -p /etc/systemd/system/{UNIT}.d"
        f" && printf '[Service]\\nWatchdogSec=3s\\n' > /etc/systemd/system/{UNIT}.d/watchdog.conf"
    )
    box.sh(f"systemctl daemon-reload && systemctl restart {UNIT}")
    try:
        pid = main_pid(box)
        # a live loop keeps pinging: several periods pass without a restart
        box.wait(lambda: box.http("/ready")[0] == 200, what="ready")
        box.sh("sleep 4")
        assert main_pid(box) == pid
        box.sh(f"kill -STOP {pid}")
        box.wait(lambda: main_pid(box) not in (0, pid), timeout=20, what="watchdog restart")
        text = journal(box)
        assert "Watchdog timeout" in text and "Failed with result 'watchdog'" in text
        # PYTHONFAULTHANDLER=1: the SIGABRT leaves every thread's stack in the journal
        assert "most recent call first" in text
    finally:
        box.sh(f"rm -r /etc/systemd/system/{UNIT}.d && systemctl daemon-reload && systemctl restart {UNIT}")
    box.wait(lambda: box.http("/ready")[0] == 200, what="ready after the watchdog test")


def test_a_broken_config_fails_the_unit_with_its_errors_and_no_restart_loop(box: Booted) -> None:
    box.sh(f"cp {CONF} /root/good.toml && printf '[[outputs.loki]]\\nurll = \"http://127.0.0.1:1\"\\n' >> {CONF}")
    box.sh("journalctl --rotate --vacuum-time=1s >/dev/null 2>&1 || true", check=False)
    cursor = box.sh("journalctl -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p'", check=False).stdout.strip()
    try:
        assert box.sh(f"systemctl restart {UNIT}", check=False).returncode != 0
        box.sh("sleep 6")  # RestartSec=2s: a loop would have restarted by now
        props = box.show(UNIT, "ActiveState", "Result", "NRestarts", "ExecMainStatus")
        assert props == {"ActiveState": "failed", "Result": "exit-code", "NRestarts": "0", "ExecMainStatus": "2"}
        text = journal(box, f"--after-cursor='{cursor}'" if cursor else "")
        assert "outputs.loki[0].urll: unknown key; did you mean url?" in text
        assert text.count("Starting hostwatch.service") == 1, text
    finally:
        box.sh(
            f"cp /root/good.toml {CONF} && rm /root/good.toml"
            f" && systemctl reset-failed {UNIT} && systemctl start {UNIT}"
        )
    box.wait(lambda: box.http("/ready")[0] == 200, what="ready after restoring the config")


def test_upgrade_keeps_the_edited_config_and_the_state(box: Booted) -> None:
    box.sh(f'sed -i \'s/^  # interval = "10s"/  interval = "5s"/\' {CONF} && grep -q \'^  interval = "5s"\' {CONF}')
    box.sh("echo kept > /var/lib/hostwatch/marker && chown hostwatch: /var/lib/hostwatch/marker")
    pid = main_pid(box)
    done = box.sh("dpkg -i /root/hostwatch.deb")  # same version again: prerm upgrade, postinst configure
    assert "Unpacking hostwatch" in done.stdout
    assert box.sh(f"grep -c '^  interval = \"5s\"' {CONF}").stdout.strip() == "1"
    assert box.sh("cat /var/lib/hostwatch/marker").stdout.strip() == "kept"
    box.wait(lambda: main_pid(box) not in (0, pid) and box.http("/ready")[0] == 200, what="restarted after upgrade")


def test_stop_and_purge_leave_nothing_behind(box: Booted) -> None:
    box.sh(f"systemctl stop {UNIT}")
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    assert "Stopping" in journal(box) and box.sh(f"journalctl -u {UNIT} -o cat | grep -c stopped", check=False).stdout
    box.sh("echo 'extra = 1' > /etc/hostwatch/conf.d/admin.toml")  # an admin's file goes with purge too
    box.sh("dpkg --purge hostwatch")
    assert box.sh("getent passwd hostwatch", check=False).returncode == 2
    assert box.sh("getent group hostwatch", check=False).returncode == 2
    assert "hostwatch" not in box.sh("getent group adm").stdout
    assert box.sh(f"systemctl is-enabled {UNIT}", check=False).stdout.strip() in ("", "not-found")
    box.sh("rm -f /var/log/hw-probe.log")
    left = sorted(p for p in file_list(box) - box.before if not NOISE.match(p))
    gone = sorted(p for p in box.before - file_list(box) if not NOISE.match(p))
    assert left == [] and gone == [], (left, gone)
    # /etc/passwd- and the like are shadow's backups of the state before userdel: rewritten at
    # the next account change, not the package's to touch
    mentions = box.sh(
        "grep -rl hostwatch /etc /opt /usr/bin /lib/systemd /var/lib --exclude-dir=dpkg --exclude='*-' 2>/dev/null",
        check=False,
    ).stdout.split()
    assert mentions == []
