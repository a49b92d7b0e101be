"""Static checks of what the packages ship: the unit's exposure, lintian, rpmlint, scripts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.harness import REPO, Packages, need_commands

UNIT = REPO / "systemd/hostwatch.service"


def security(unit: Path) -> subprocess.CompletedProcess:
    # --threshold is on systemd's internal 0-100 scale: 15 is an exposure of 1.5. The unit is
    # passed as a path: a bare name would be looked up (and scored) as an unknown unit.
    return subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=15", str(unit)],
        capture_output=True,
        text=True,
    )


def test_unit_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    need_commands("systemd-analyze")
    done = security(UNIT)
    score = float(re.search(r"Overall exposure level for hostwatch.service: (\d+\.\d)", done.stdout).group(1))
    assert done.returncode == 0 and score <= 1.5, done.stdout


def test_the_gate_fails_a_unit_scoring_above_it(tmp_path: Path) -> None:
    """The same unit less three settings scores above 1.5, and the same command rejects it."""
    need_commands("systemd-analyze")
    weaker = tmp_path / "hostwatch.service"
    kept = [
        line
        for line in UNIT.read_text().splitlines()
        if not line.startswith(("ProtectSystem=", "PrivateUsers=", "SystemCallFilter="))
    ]
    weaker.write_text("\n".join(kept) + "\n")
    done = security(weaker)
    score = float(re.search(r"Overall exposure level for hostwatch.service: (\d+\.\d)", done.stdout).group(1))
    assert score > 1.5
    assert done.returncode != 0


def test_deb_is_lintian_clean(packages: Packages) -> None:
    need_commands("lintian")
    done = subprocess.run(
        ["lintian", "--pedantic", "--display-info", "--fail-on", "error,warning,info,pedantic", str(packages.deb)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_rpm_is_rpmlint_clean(packages: Packages) -> None:
    need_commands("rpmlint")
    done = subprocess.run(
        ["rpmlint", "-c", str(REPO / "packaging/rpmlint.toml"), str(packages.rpm)], capture_output=True, text=True
    )
    assert done.returncode == 0 and "0 errors, 0 warnings" in done.stdout, done.stdout


def test_maintainer_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck missing: run `bash tests/packaging/install.sh`")
    scripts = sorted((REPO / "packaging/scripts").glob("*/*"))
    assert len(scripts) == 7
    done = subprocess.run(["shellcheck", "--shell=sh", *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    others = [REPO / "packaging/build.sh", *sorted((REPO / "tests/packaging").glob("*.sh"))]
    done = subprocess.run(["shellcheck", *map(str, others)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_deb_contents_and_control(packages: Packages) -> None:
    info = subprocess.run(["dpkg-deb", "--info", str(packages.deb)], capture_output=True, text=True).stdout
    depends = re.search(r"^ Depends: (.*)$", info, re.M).group(1).split(", ")
    assert depends[:2] == ["python3.11", "passwd"] and any(d.startswith("libc6 (>= 2.") for d in depends)
    listing = subprocess.run(["dpkg-deb", "--contents", str(packages.deb)], capture_output=True, text=True).stdout
    assert "./usr/bin/hostwatch -> /opt/hostwatch/bin/hostwatch" in listing
    assert "./lib/systemd/system/hostwatch.service" in listing
    conffiles = subprocess.run(["dpkg-deb", "--info", str(packages.deb), "conffiles"], capture_output=True, text=True)
    assert conffiles.stdout.split() == ["/etc/hostwatch/hostwatch.toml"]
