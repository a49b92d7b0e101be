"""node_exporter's ``uname`` and ``os`` collectors: what the kernel and the distribution say they are."""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from agent.plugin import Emitter
from agent.sysfs import read_bytes

from .base import Roots, Unavailable

UNAME_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")
OS_FIELDS = {  # label -> os-release key
    "build_id": "BUILD_ID",
    "id": "ID",
    "id_like": "ID_LIKE",
    "image_id": "IMAGE_ID",
    "image_version": "IMAGE_VERSION",
    "name": "NAME",
    "pretty_name": "PRETTY_NAME",
    "variant": "VARIANT",
    "variant_id": "VARIANT_ID",
    "version": "VERSION",
    "version_codename": "VERSION_CODENAME",
    "version_id": "VERSION_ID",
}
_MAJOR_MINOR = re.compile(r"^[0-9]+\.?[0-9]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOUBLE_QUOTED_ESCAPES = {'"', "\\", "$", "`"}


class _Utsname(ctypes.Structure):
    """Linux ``struct utsname``: six NUL-terminated fields of 65 bytes."""

    _fields_ = tuple((name, ctypes.c_char * 65) for name in UNAME_FIELDS)


class UnameCollector:
    """The uname(2) system call, as node_exporter makes it (so the host name is this UTS namespace's)."""

    name = "uname"

    def __init__(self, roots: Roots) -> None:
        self._uname = None

    def collect(self, emit: Emitter) -> None:
        if self._uname is None:
            self._uname = ctypes.CDLL(None, use_errno=True).uname
        buf = _Utsname()
        if self._uname(ctypes.byref(buf)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"uname: {os.strerror(code)}")
        labels = tuple(sorted((name, getattr(buf, name).decode(errors="replace")) for name in UNAME_FIELDS))
        emit.gauge("node_uname_info", 1, labels, unit="1")


class OsReleaseCollector:
    """``/etc/os-release``, else ``/usr/lib/os-release``, under the rootfs; parsed again only when its mtime moves."""

    name = "os"

    def __init__(self, roots: Roots) -> None:
        self._paths = (roots.rootfs / "etc" / "os-release", roots.rootfs / "usr" / "lib" / "os-release")
        self._cached: tuple[Path, int, tuple, tuple | None] | None = None  # path, mtime, info labels, version

    def collect(self, emit: Emitter) -> None:
        info, version = self._release()
        emit.gauge("node_os_info", 1, info, unit="1")
        if version is not None:
            emit.gauge("node_os_version", version[1], version[0], unit="1")

    def _release(self) -> tuple[tuple, tuple | None]:
        for path in self._paths:
            try:
                mtime = os.stat(path).st_mtime_ns
            except FileNotFoundError:
                continue
            cached = self._cached
            if cached is not None and cached[0] == path and cached[1] == mtime:
                return cached[2], cached[3]
            fields = parse_os_release(read_bytes(path).decode(errors="replace"))
            info = tuple((label, fields.get(key, "")) for label, key in sorted(OS_FIELDS.items()))
            match = _MAJOR_MINOR.match(fields.get("VERSION_ID", ""))
            number = float(match.group()) if match else 0.0
            version = None
            if number > 0:
                version = (tuple((k, fields.get(OS_FIELDS[k], "")) for k in ("id", "id_like", "name")), number)
            self._cached = (path, mtime, info, version)
            return info, version
        raise Unavailable("no os-release file (" + ", ".join(map(str, self._paths)) + ")")


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines with shell quoting (os-release(5)); a malformed line raises ValueError."""
    fields: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, rest = line.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise ValueError(f"line {number}: expected KEY=value, got {line[:60]!r}")
        fields[key] = _shell_value(rest, number)
    return fields


def _shell_value(text: str, number: int) -> str:
    out: list[str] = []
    i, quote = 0, ""
    while i < len(text):
        char = text[i]
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                out.append(char)
        elif quote == '"':
            if char == '"':
                quote = ""
            elif char == "\\" and text[i + 1 : i + 2] in _DOUBLE_QUOTED_ESCAPES:
                i += 1
                out.append(text[i])
            else:
                out.append(char)
        elif char in "'\"":
            quote = char
        elif char == "\\" and i + 1 < len(text):
            i += 1
            out.append(text[i])
        elif char.isspace():
            if text[i:].strip().startswith("#"):
                break  # a trailing comment
            raise ValueError(f"line {number}: unquoted space in value {text[:60]!r}")
        else:
            out.append(char)
        i += 1
    if quote:
        raise ValueError(f"line {number}: unterminated {quote} quote in {text[:60]!r}")
    return "".join(out)
