"""Staleness markers end pushed series at once, with the agent as a process and a real Prometheus.

Without markers a series that stopped (an unmounted file system) stays queryable for
Prometheus' 5-minute lookback, and "file system almost full" keeps firing on a mount
that is gone. Here a tmpfs is mounted, seen by the disk collector and pushed over
remote-write; once it is unmounted, Prometheus must answer nothing for it within a few
seconds, and once the agent stops, nothing for any of its series.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess

pytestmark = [pytest.mark.e2e, pytest.mark.peers]


def _present(prometheus, promql: str) -> bool:
    return bool(prometheus.query(promql, at=time.time()))


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout:g}s")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_unmounted_filesystem_and_shutdown_end_their_series(prometheus, tmp_path: Path) -> None:
    mountpoint = tmp_path / "stale-mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "hw-stale", str(mountpoint)], check=True)
    mounted = True
    agent = AgentProcess(
        tmp_path,
        '[[collectors.disk]]\ninterval = "1s"\n[[collectors.memory]]\ninterval = "1s"\n'
        f'[[outputs.remote_write]]\nurl = "{prometheus.remote_write_url}"\nflush_interval = "200ms"\n',
    )
    fs = f'node_filesystem_avail_bytes{{mountpoint="{mountpoint}"}}'
    mem = 'node_memory_MemTotal_bytes{job="hostwatch"}'
    try:
        agent.start()
        _until(lambda: _present(prometheus, fs) and _present(prometheus, mem), 20, "series pushed")
        subprocess.run(["umount", str(mountpoint)], check=True)
        mounted = False
        # the lookback is 5 minutes: gone within seconds can only be the marker
        _until(lambda: not _present(prometheus, fs), 15, "the unmounted file system's series ended")
        assert _present(prometheus, mem), "an unrelated series must stay"
        assert agent.stop() == 0
        _until(lambda: not _present(prometheus, mem), 15, "every series ended at shutdown")
        # the raw samples are still there: a marker ends the series, it deletes nothing
        assert prometheus.query(f"count_over_time({mem}[5m])", at=time.time())
    finally:
        agent.close()
        if mounted:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
