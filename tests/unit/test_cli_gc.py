"""The daemon's garbage-collector settings (``agent.cli``): collected less often from start, frozen once started."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from unittest import mock
from agent import cli

before = gc.get_threshold()
seen = {}

async def fake_run_agent(config_path, config, *, notifier, mask, on_ready):
    seen["threshold while starting"] = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    on_ready(object())  # what run_agent does once the agent has started
    seen["frozen"] = gc.get_freeze_count()
    return 0

with mock.patch("agent.runtime.run_agent", fake_run_agent):
    code = cli.main(["run", "--config", sys.argv[1]])
print(json.dumps([code, before, seen["threshold while starting"], seen["frozen"], cli.GC_YOUNGEST_THRESHOLD]))
"""


def test_run_collects_less_often_from_its_start_and_freezes_start_up_once_started(tmp_path) -> None:
    config = tmp_path / "hostwatch.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n')
    # in a fresh interpreter: freezing this test process would keep its garbage for good
    run = subprocess.run([sys.executable, "-c", PROBE, str(config)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    code, before, starting, frozen, configured = json.loads(run.stdout)
    assert code == 0
    assert before == [700, 10, 10] and starting == [configured, 10, 10] and configured == 10_000
    assert frozen > 1000  # the modules, the configuration and the plugins


def test_other_commands_keep_pythons_collector_settings(tmp_path) -> None:
    config = tmp_path / "hostwatch.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n')
    probe = (
        "import gc, sys; from agent import cli; cli.main(['check', '--config', sys.argv[1]]); print(gc.get_threshold())"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("(700, 10, 10)")
