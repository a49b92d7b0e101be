"""Helpers for the package tests: build the packages, make Debian roots, boot them under systemd.

A :class:`Booted` container is a clean Debian 12 root (tests/packaging/debroot.sh, cached)
booted with ``systemd-nspawn -b``; commands run in it through ``nsenter`` into its init's
namespaces, so no machined, D-Bus or systemd is needed on the host. Its network is private
(only its own loopback): the agent inside listens on 127.0.0.1:9730 without touching the host.
With ``private_network=False`` it shares the host's network instead, so the agent inside reaches
a test server on the host's loopback (its own listener then needs a free port).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REQUIRE = os.environ.get("HOSTWATCH_REQUIRE_PACKAGES") == "1"


def unavailable(reason: str) -> None:
    """Skip with ``reason``; with HOSTWATCH_REQUIRE_PACKAGES=1 (make test-packages) fail instead."""
    if REQUIRE:
        pytest.fail(f"{reason} (HOSTWATCH_REQUIRE_PACKAGES=1)", pytrace=False)
    pytest.skip(reason)


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (dpkg, rpm --root, systemd-nspawn)")


def need_commands(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        unavailable(f"missing {', '.join(missing)}: run `bash tests/packaging/install.sh` (apt-get)")


@dataclass(frozen=True)
class Packages:
    deb: Path
    rpm: Path
    tools: Path  # bin directory of the packaging tools' venv (nfpm, uv, hadolint)


def build_packages() -> Packages:
    """packaging/build.sh (a no-op when its inputs did not change), then the two paths."""
    done = subprocess.run(["bash", str(REPO / "packaging/build.sh")], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"packaging/build.sh failed:\n{done.stderr[-4000:]}", pytrace=False)
    tools = subprocess.run(
        ["bash", str(REPO / "packaging/build.sh"), "--print-tools"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = Path(os.environ.get("HOSTWATCH_PKG_OUT", REPO / "dist"))
    debs, rpms = sorted(out.glob("hostwatch_*.deb")), sorted(out.glob("hostwatch-*.rpm"))
    assert len(debs) == 1 and len(rpms) == 1, (debs, rpms)
    return Packages(debs[0], rpms[0], Path(tools))


def debian_root(dest: Path) -> Path:
    """A fresh copy of the cached debootstrap root at ``dest``."""
    done = subprocess.run(["bash", str(HERE / "debroot.sh")], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        unavailable(f"no Debian root: tests/packaging/debroot.sh failed: {done.stderr.strip()[-800:]}")
    tarball = done.stdout.strip().splitlines()[-1]
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(dest), "--numeric-owner", "-xf", tarball], check=True)
    return dest


# the container has no curl: its Python (the package's dependency) asks the agent
HTTP_GET = """#!/usr/bin/python3.11
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen("http://127.0.0.1:9730" + sys.argv[1], timeout=5) as r:
        print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode())
except OSError as e:
    print(0); print(e)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Booted:
    """A root booted with ``systemd-nspawn -b``; :meth:`sh` runs a shell script in it."""

    def __init__(
        self, root: Path, name: str, log: Path, *, binds_ro: tuple[str, ...] = (), private_network: bool = True
    ) -> None:
        self.root, self.name, self.log = root, name, log
        self.binds_ro = binds_ro  # read-only bind mounts, nspawn's "HOST_PATH[:CONTAINER_PATH]"
        self.private_network = private_network
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def boot(self, timeout: float = 90.0) -> Booted:
        getter = self.root / "usr/local/bin/hw-get"
        getter.parent.mkdir(parents=True, exist_ok=True)
        getter.write_text(HTTP_GET)
        getter.chmod(0o755)
        cmd = [
            "systemd-nspawn",
            "--directory", str(self.root),
            "--machine", self.name,
            "--boot",
            # no machined or host systemd here: no registration, no transient scope
            "--register=no",
            "--keep-unit",
            *(["--private-network"] if self.private_network else []),
            "--console=passive",
            "--quiet",
            # nspawn's own filter refuses adjtimex(2) (glibc calls clock_adjtime) to a container
            # without CAP_SYS_TIME, which no host does to its services; allowed here (reading only:
            # setting the time still needs the capability) so the unit's own sandbox decides
            "--system-call-filter=adjtimex clock_adjtime",
            *(f"--bind-ro={path}" for path in self.binds_ro),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                unavailable(f"systemd-nspawn -b exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                unavailable(f"systemd-nspawn -b: no init process in {timeout:g}s: {self.log_tail()}")
            for child in _children(self.proc.pid):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    self.leader = child
            time.sleep(0.1)
        while True:
            answer = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout)
            state = answer.stdout.strip() or answer.stderr.strip()
            # init found before it opened its control socket: systemctl cannot connect yet
            if answer.stdout.strip() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if state not in ("running", "degraded"):
            failed = self.sh("systemctl --failed --no-legend", check=False).stdout
            self.close()
            unavailable(f"the container did not finish booting ({state!r}); failed units: {failed}")
        return self

    def sh(self, script: str, *, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run ``script`` with /bin/sh as root inside the container (every namespace of its init)."""
        done = subprocess.run(
            ["nsenter", "--target", str(self.leader), "--all", "/bin/sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "SYSTEMD_PAGER": ""},
        )
        if check and done.returncode != 0:
            raise AssertionError(f"in container: {script!r} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait(self, predicate, timeout: float = 30.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.2)
        journal = self.sh("journalctl -u hostwatch --no-pager -n 40", check=False).stdout
        raise AssertionError(f"{what} not reached in {timeout:g}s (last: {last!r})\n{journal}")

    def http(self, path: str) -> tuple[int, str]:
        """GET on the agent's port inside the container (status 0: no answer)."""
        out = self.sh(f"/usr/local/bin/hw-get {path}", check=False).stdout
        status, _, body = out.partition("\n")
        return int(status or 0), body

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def close(self, grace: float = 5.0) -> None:
        """Power off: a first SIGTERM makes nspawn ask init for a clean shutdown; a box is thrown away
        after its test, so one that is still halting after ``grace`` seconds (a container's systemd
        can wait out stop timeouts for units whose cgroup events it never sees) gets the second
        SIGTERM, on which nspawn kills everything in the container at once."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for wait in (grace, 10.0):
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
