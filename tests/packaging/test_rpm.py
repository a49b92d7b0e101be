"""The .rpm: its file list, scriptlets and dependencies, then installed with rpm into a clean root.

``rpm --root`` runs the scriptlets chrooted in a copy of the same Debian 12 root the deb test
boots (rpm's dependencies are Debian's packages there, so ``--nodeps``); ``rpm -V`` checks what
landed against the package, and the root is then booted to see that %post enabled the unit.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.packaging.harness import Booted, Packages, debian_root, need_commands, need_root

pytestmark = pytest.mark.e2e


def rpm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["rpm", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def rpm_root(packages: Packages, tmp_path_factory) -> Path:
    need_root()
    need_commands("rpm", "debootstrap")
    root = debian_root(tmp_path_factory.mktemp("rpm") / "root")
    rpm("--root", str(root), "--initdb")
    return root


def test_file_list_config_files_and_dependencies(packages: Packages) -> None:
    need_commands("rpm")
    files = set(rpm("-qlp", str(packages.rpm)).stdout.split())
    for path in (
        "/usr/bin/hostwatch",
        "/opt/hostwatch/bin/hostwatch",
        "/opt/hostwatch/pyvenv.cfg",
        "/usr/lib/systemd/system/hostwatch.service",
        "/etc/hostwatch/hostwatch.toml",
        "/etc/hostwatch/conf.d",
        "/var/lib/hostwatch",
        "/usr/share/man/man1/hostwatch.1.gz",
    ):
        assert path in files, path
    assert not [f for f in files if f.startswith("/lib/")], "the rpm uses /usr/lib, not /lib"
    assert rpm("-qcp", str(packages.rpm)).stdout.split() == ["/etc/hostwatch/hostwatch.toml"]
    # byte code for every module, compiled for the installed paths
    assert any(f.endswith("agent/__pycache__/cli.cpython-311.pyc") for f in files)
    requires = rpm("-qp", "--requires", str(packages.rpm)).stdout.splitlines()
    assert "/usr/bin/python3.11" in requires and "shadow-utils" in requires
    assert any(r.startswith("libc.so.6(GLIBC_") for r in requires), requires
    scripts = rpm("-qp", "--scripts", str(packages.rpm)).stdout
    assert "preinstall scriptlet" in scripts and "useradd --system" in scripts
    assert "systemctl enable hostwatch.service" in scripts and "[ -d /run/systemd/system ]" in scripts
    assert "systemctl --no-reload disable --now hostwatch.service" in scripts


def test_install_runs_the_scriptlets_and_verifies(packages: Packages, rpm_root: Path) -> None:
    root = str(rpm_root)
    done = rpm("--root", root, "-i", "--nodeps", str(packages.rpm), check=False)
    assert done.returncode == 0, done.stderr
    assert rpm("--root", root, "-q", "hostwatch").stdout.startswith("hostwatch-")
    # %pre made the user (in adm) before the files landed, so rpm gave it the state directory
    passwd = (rpm_root / "etc/passwd").read_text()
    line = next(entry for entry in passwd.splitlines() if entry.startswith("hostwatch:"))
    uid, gid = int(line.split(":")[2]), int(line.split(":")[3])
    adm = next(entry for entry in (rpm_root / "etc/group").read_text().splitlines() if entry.startswith("adm:"))
    assert "hostwatch" in adm.split(":")[3].split(",")
    state = (rpm_root / "var/lib/hostwatch").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (uid, gid, 0o750)
    # %post enabled the unit offline (no systemd running in a chroot) and started nothing
    wants = rpm_root / "etc/systemd/system/multi-user.target.wants/hostwatch.service"
    # (Debian's systemctl names the unit by /lib, the same file in a merged-/usr root)
    assert wants.is_symlink() and str(wants.readlink()).endswith("/lib/systemd/system/hostwatch.service")
    target = rpm_root / str(wants.readlink()).lstrip("/")
    assert (rpm_root / "usr/lib/systemd/system/hostwatch.service").samefile(target)
    # every file as packaged: digests, sizes, modes, owners, links (--nodeps: the dependencies
    # are Debian's packages in this root, unknown to rpm's database)
    verify = rpm("--root", root, "-V", "--nodeps", "hostwatch", check=False)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout
    # the agent runs from its environment with the root's /usr/bin/python3.11
    check = subprocess.run(
        ["chroot", root, "/usr/bin/hostwatch", "check", "--config", "/etc/hostwatch/hostwatch.toml"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "configuration OK" in check.stdout, check.stderr


def test_the_enabled_unit_starts_when_the_root_boots(rpm_root: Path, tmp_path: Path) -> None:
    need_commands("systemd-nspawn", "nsenter")
    booted = Booted(rpm_root, f"hw-rpm-{uuid.uuid4().hex[:8]}", tmp_path / "console.log").boot()
    try:
        booted.wait(lambda: booted.show("hostwatch.service", "ActiveState")["ActiveState"] == "active", what="active")
        assert booted.http("/ready")[0] == 200
    finally:
        booted.close()


def test_verify_reports_an_edited_config_and_erase_keeps_it(rpm_root: Path) -> None:
    root = str(rpm_root)
    conf = rpm_root / "etc/hostwatch/hostwatch.toml"
    conf.write_text(conf.read_text() + "\n# edited by the admin\n")
    verify = rpm("--root", root, "-V", "--nodeps", "hostwatch", check=False)
    assert verify.returncode == 1
    assert [line.split()[-2:] for line in verify.stdout.splitlines()] == [["c", "/etc/hostwatch/hostwatch.toml"]]
    done = rpm("--root", root, "-e", "hostwatch", check=False)
    assert done.returncode == 0, done.stderr
    assert rpm("--root", root, "-q", "hostwatch", check=False).returncode == 1
    assert not (rpm_root / "opt/hostwatch").exists() and not (rpm_root / "usr/bin/hostwatch").exists()
    assert not (rpm_root / "etc/systemd/system/multi-user.target.wants/hostwatch.service").exists()
    # %config(noreplace): an edited config survives as .rpmsave
    assert "# edited by the admin" in (rpm_root / "etc/hostwatch/hostwatch.toml.rpmsave").read_text()
