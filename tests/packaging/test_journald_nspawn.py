"""The packaged agent ships the journal under real systemd and journald, through kill -9, rotation and vacuum.

A clean Debian 12 root is booted with ``systemd-nspawn -b`` sharing the host's network, so the
agent inside reaches a real VictoriaLogs on the host's loopback. The .deb is installed with dpkg
(the unit as shipped: its sandbox, ``SupplementaryGroups=adm systemd-journal``), the agent reads
the journal with the ``journald`` collector, filtered to one unit that logs 2,000 numbered lines
a second to its standard output (journald's stream). While it ships, the agent is killed with
SIGKILL five times (systemd restarts it), and the journal is rotated and vacuumed. Then every
number is read back from VictoriaLogs: none may be missing, and numbers seen twice may come to
at most one batch per kill.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid

import pytest

from tests.packaging.harness import Booted, debian_root, need_commands, need_root
from tests.support import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.peers]

UNIT = "hostwatch.service"
RATE = 2_000  # lines per second
SECONDS = 45
TOTAL = RATE * SECONDS
BATCH = 500  # the Loki output's batch_max_items
# one after the other, GAP seconds apart (a kill counts from the restart before it)
EVENTS = ("kill", "kill", "rotate", "vacuum", "kill", "kill", "kill")
GAP = 3.5
KILLS = EVENTS.count("kill")

WRITER = """#!/usr/bin/python3.11
import sys, time
rate, total = int(sys.argv[1]), int(sys.argv[2])
start, seq, out = time.monotonic(), 0, sys.stdout
while seq < total:
    n = min(rate // 100, total - seq)
    out.write("".join(f"seq={seq + i:08d} journald writer line padded to a realistic length\\n" for i in range(n)))
    out.flush()
    seq += n
    delay = start + seq / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""

# journald's rate limit (10,000 lines per 30 s per unit by default) would drop most of the lines.
# LogRateLimitIntervalSec=0 in the unit is the usual switch, but journald reads it from an extended
# attribute of the unit's cgroup, which the container's cgroup v1 hierarchy may not take: journald's
# own setting is turned off too
JOURNALD_CONF = "[Journal]\nRateLimitIntervalSec=0\n"
WRITER_UNIT = f"""[Unit]
Description=numbered lines for the journald collector test
[Service]
ExecStart=/usr/local/bin/hw-seq {RATE} {TOTAL}
SyslogIdentifier=hw-seq
LogRateLimitIntervalSec=0
"""


def agent_config(port: int, loki_url: str) -> str:
    return f"""
[http]
listen = "127.0.0.1:{port}"
[[collectors.journald]]
units = ["hw-seq.service"]
start_at = "beginning"
fields = ["_PID"]
[[outputs.loki]]
url = "{loki_url}"
batch_max_items = {BATCH}
flush_interval = "200ms"
"""


@pytest.fixture
def box(packages, tmp_path):
    need_root()
    need_commands("systemd-nspawn", "nsenter", "debootstrap")
    root = debian_root(tmp_path / "root")
    (root / "root/hostwatch.deb").write_bytes(packages.deb.read_bytes())
    booted = Booted(root, f"hw-jd-{uuid.uuid4().hex[:8]}", tmp_path / "console.log", private_network=False).boot()
    try:
        yield booted
    finally:
        booted.close()


def main_pid(box: Booted) -> int:
    props = box.show(UNIT, "MainPID", "ActiveState")
    return int(props["MainPID"]) if props["ActiveState"] == "active" else 0


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def row_count(vl) -> int:
    rows = vl.query("* | stats count() as n")
    return int(rows[0]["n"]) if rows else 0


def test_journal_shipping_survives_kill_9_rotation_and_vacuum(box: Booted, victoria_logs, tmp_path) -> None:
    port = free_port()
    box.sh("mkdir -p /etc/hostwatch/conf.d")
    (box.root / "etc/hostwatch/conf.d/90-journald.toml").write_text(agent_config(port, victoria_logs.loki_push_url))
    box.sh("dpkg -i /root/hostwatch.deb")
    assert "systemd-journal" in box.sh("id -nG hostwatch").stdout.split()
    first = box.wait(lambda: main_pid(box), what="hostwatch active")
    box.wait(lambda: _answers(port), what="the agent's HTTP listener on the host's loopback")

    (box.root / "usr/local/bin/hw-seq").write_text(WRITER)
    (box.root / "usr/local/bin/hw-seq").chmod(0o755)
    (box.root / "etc/systemd/system/hw-seq.service").write_text(WRITER_UNIT)
    box.sh("mkdir -p /etc/systemd/journald.conf.d")
    (box.root / "etc/systemd/journald.conf.d/90-hw-no-ratelimit.conf").write_text(JOURNALD_CONF)
    box.sh("systemctl restart systemd-journald && systemctl daemon-reload && systemctl start hw-seq.service")
    pids, vacuumed, restarts = [first], "", []
    for what in EVENTS:
        time.sleep(GAP)
        if what == "rotate":
            box.sh("journalctl --rotate")
        elif what == "vacuum":
            vacuumed = box.sh("journalctl --vacuum-size=1 2>&1").stdout
        else:
            # five restarts in two minutes would hit the unit's StartLimitBurst=5, which is there
            # to stop crash loops: reset-failed clears the count, as an administrator would
            box.sh(f"systemctl reset-failed {UNIT}; systemctl kill --signal=KILL --kill-who=main {UNIT}")
            began = time.monotonic()
            # 2 s of RestartSec=; up to 30 s more where the container's systemd misses that the unit's
            # cgroup emptied (cgroup v1 sends no such event into a container; it then waits for
            # TimeoutStopSec=)
            box.wait(lambda: main_pid(box) not in (0, pids[-1]), timeout=60, what="restart")
            restarts.append(round(time.monotonic() - began, 1))
            pids.append(main_pid(box))
    assert "Deleted archived journal" in vacuumed, vacuumed
    box.wait(lambda: box.show("hw-seq.service", "ActiveState")["ActiveState"] != "active", timeout=SECONDS + 60,
             what="the writer's end")  # fmt: skip
    assert len(set(pids)) == KILLS + 1
    suppressed = box.sh("journalctl -u systemd-journald --no-pager -o cat | grep Suppressed", check=False).stdout
    assert not suppressed, f"journald itself dropped lines: {suppressed}"

    deadline = time.monotonic() + 120
    while row_count(victoria_logs) < TOTAL and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(3)  # stragglers
    rows = victoria_logs.query("* | fields _msg, unit, identifier", limit=TOTAL * 2)
    seqs = [int(row["_msg"][4:12]) for row in rows if row.get("_msg", "").startswith("seq=")]
    missing = set(range(TOTAL)) - set(seqs)
    duplicates = len(seqs) - len(set(seqs))
    kept = box.sh(
        "journalctl -u hw-seq.service -o cat --no-pager | grep -c ^seq=; journalctl -u hw-seq.service"
        " -o cat --no-pager | grep ^seq= | sed -n '1p;$p'; ls -la /var/log/journal/*/",
        check=False,
    ).stdout
    said = box.sh(f"journalctl -u {UNIT} --no-pager -o cat | grep -i -e journal -e error | tail -30", check=False)
    metrics = http_get(f"http://127.0.0.1:{port}/metrics")
    journal = kept + said.stdout + "".join(line + "\n" for line in metrics.splitlines() if "journal" in line[:40])
    print(f"{TOTAL} lines at {RATE}/s, {KILLS} kills (restarts took {restarts} s), rotate + vacuum: "
          f"{len(missing)} lost, {duplicates} duplicates (limit {KILLS * BATCH})")  # fmt: skip
    assert not missing, f"{len(missing)} lines lost, e.g. {sorted(missing)[:5]}\n{journal}"
    assert duplicates <= KILLS * BATCH, f"{duplicates} duplicates\n{journal}"
    # the unit's lines carry its stream labels; --unit also matches systemd's own messages about the
    # unit ("Started hw-seq.service"), which come from init.scope
    streams = {(row.get("unit"), row.get("identifier")) for row in rows if row.get("_msg", "").startswith("seq=")}
    assert streams == {("hw-seq.service", "hw-seq")}
    assert 'hostwatch_journal_entries_read_total{collector="journald"}' in metrics
    assert not re.search(r"^hostwatch_journal_cursor_lost_total\{[^}]*\} [1-9]", metrics, re.M)  # rotation, vacuum


def _answers(port: int) -> bool:
    try:
        return json.loads(http_get(f"http://127.0.0.1:{port}/health/detailed")) is not None
    except OSError:
        return False
