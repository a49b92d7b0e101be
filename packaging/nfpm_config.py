"""Render packaging/nfpm.yaml for one build: placeholders and honest library dependencies.

The bundled wheels carry compiled extension modules that link against system libraries
(libc, libstdc++, libgcc_s ...). Their ELF headers say which ones (``NEEDED``) and which
symbol versions they use; a library that a wheel vendors next to itself is not a
dependency. The Debian names come from ``dpkg -S`` on this (Debian) build machine, with a
``(>= 2.NN)`` on libc6 from the newest ``GLIBC_`` version used; the rpm names are the ones
rpm's own dependency generator would write (``libc.so.6(GLIBC_2.28)(64bit)``).

Usage: nfpm_config.py --root STAGE --template nfpm.yaml --out build.yaml KEY=VALUE ...
Stdlib only; run by packaging/build.sh with the target's interpreter.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

_PLACEHOLDER = re.compile(r"\$\{(HW_[A-Z_]+)\}")
_VERSION = re.compile(r"^\s+0x[0-9a-f]+ 0x[0-9a-f]+ \d+ (\S+)$")


def elf_files(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def needed_libraries(files: list[Path]) -> dict[str, set[str]]:
    """soname -> symbol versions referenced, over every ELF file not satisfied from the tree."""
    vendored = {p.name for p in files}
    needs: dict[str, set[str]] = {}
    for path in files:
        out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True, check=True).stdout
        current = None
        for line in out.splitlines():
            if line.strip().startswith("NEEDED"):
                needs.setdefault(line.split()[1], set())
            elif line.strip().startswith("required from "):
                current = line.strip()[len("required from ") : -1]
            elif current and (m := _VERSION.match(line)):
                needs.setdefault(current, set()).add(m.group(1))
            elif not line.startswith(" "):
                current = None
    return {name: versions for name, versions in needs.items() if name not in vendored}


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def library_path(soname: str) -> str:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    machine = os.uname().machine.replace("_", "-")
    candidates = [line.rsplit(" => ", 1)[1] for line in out.splitlines() if line.strip().startswith(soname + " ")]
    for path in candidates:  # the native one: ldconfig tags entries with their ABI
        if machine in path or "x86-64" in path:
            return path
    if not candidates:
        raise SystemExit(f"{soname}: needed by a bundled extension module but not found on this machine")
    return candidates[0]


def debian_package(path: str) -> str:
    """The package owning ``path`` (or what it resolves to; /lib and /usr/lib are one here)."""
    for candidate in dict.fromkeys([path, os.path.realpath(path)]):
        for variant in (candidate, candidate.replace("/usr/lib/", "/lib/", 1)):
            done = subprocess.run(["dpkg", "-S", variant], capture_output=True, text=True)
            if done.returncode == 0:
                return done.stdout.split(":", 1)[0].strip()
    raise SystemExit(f"{path}: no Debian package owns it")


def dependencies(needs: dict[str, set[str]], bits: str) -> tuple[list[str], list[str]]:
    floors: dict[str, str] = {}  # Debian package -> newest GLIBC_ version used ("" for none)
    rpm: list[str] = []
    for soname in sorted(needs):
        versions = sorted(needs[soname], key=_version_key)
        rpm.append(f"{soname}()({bits})")
        if versions:
            rpm.append(f"{soname}({versions[-1]})({bits})")
        package = debian_package(library_path(soname))
        glibc = [v.removeprefix("GLIBC_") for v in versions if v.startswith("GLIBC_")]
        floor = floors.setdefault(package, "")
        if package == "libc6" and glibc and _version_key(glibc[-1]) > _version_key(floor):
            floors[package] = glibc[-1]
    deb = [f"{name} (>= {floor})" if floor else name for name, floor in sorted(floors.items())]
    return deb, rpm


def render(template: str, values: dict[str, str], lists: dict[str, list[str]]) -> str:
    out = []
    for line in template.splitlines():
        m = re.fullmatch(r"(\s*- )\$\{(HW_[A-Z_]+)\}\s*", line)
        if m and m.group(2) in lists:
            out.extend(f"{m.group(1)}{item}" for item in lists[m.group(2)])
            continue

        def value(match: re.Match[str]) -> str:
            try:
                return values[match.group(1)]
            except KeyError:
                raise SystemExit(f"no value for ${{{match.group(1)}}}") from None

        out.append(line if line.lstrip().startswith("#") else _PLACEHOLDER.sub(value, line))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the staged tree whose ELF files are scanned")
    parser.add_argument("--template", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--extra", action="append", default=[], help="SRC=DST: one more tree in the contents")
    parser.add_argument("values", nargs="*", help="HW_NAME=value")
    args = parser.parse_args(argv)
    values = dict(item.split("=", 1) for item in args.values)
    bits = "64bit" if sys.maxsize > 2**32 else "32bit"
    deb, rpm = dependencies(needed_libraries(elf_files(args.root)), bits)
    text = render(args.template.read_text(), values, {"HW_DEB_LIBS": deb, "HW_RPM_LIBS": rpm})
    for extra in args.extra:  # optional trees (alert rules, dashboards) present in this checkout
        src, dst = extra.split("=", 1)
        entry = f"  - src: {src}\n    dst: {dst}\n    type: tree\n"
        text = text.replace("\noverrides:\n", f"\n{entry}\noverrides:\n", 1)
    args.out.write_text(text)
    print(f"deb depends on: {', '.join(deb)}", file=sys.stderr)
    print(f"rpm requires: {', '.join(rpm)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
