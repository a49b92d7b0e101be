"""Typed config values: durations, sizes, and checks the config loader runs on fields.

Their bounds are part of the type, so every option declared with one gets
them, in every plugin: a ``Duration`` is finite and positive, a ``Size`` at
least one byte; ``Size.at_least("1MiB")`` raises the floor. Plugins import
these through :mod:`agent.plugin`. This module imports nothing of the project
(:mod:`agent.plugin` depends on it).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import stat
from typing import Any, ClassVar
from urllib.parse import urlsplit

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
}


class Duration(float):
    """A config duration in seconds: ``"500ms"``, ``"10s"``, ``"1m30s"``, ``"1h"``, or a number of seconds.

    Bounds are part of the type, so every option declared with it gets them
    from the config loader: finite, at most 365 days, and at least
    :attr:`minimum` (1 ms): an interval or timeout of zero busy-loops or fails
    every run. Declare :class:`DurationOrZero` where 0 means "off" or "never".
    """

    minimum: ClassVar[float] = 0.001
    maximum: ClassVar[float] = 365 * 86400.0

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError('expected a duration like "10s"')
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = _parse_duration(value.strip())
        else:
            raise ValueError(f'expected a duration like "10s", got {type(value).__name__}')
        if not math.isfinite(seconds):
            raise ValueError(f"duration must be finite: {_shown(value)}")
        if seconds < 0:
            raise ValueError(f"duration must not be negative: {_shown(value)}")
        if seconds == 0 and cls.minimum > 0:
            raise ValueError(f"duration must be greater than 0: {_shown(value)}")
        if seconds < cls.minimum:
            raise ValueError(f"duration must be at least {cls.minimum * 1000:g}ms: {_shown(value)}")
        if seconds > cls.maximum:
            raise ValueError(f"duration must be at most 365d: {_shown(value)}")
        return cls(seconds)


class DurationOrZero(Duration):
    """A :class:`Duration` for which 0 has a meaning the option documents ("never", "at once")."""

    minimum: ClassVar[float] = 0.0


def _parse_duration(text: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)", "", text).strip():
        raise ValueError(f'invalid duration {_shown(text)}; use e.g. "500ms", "10s", "1m30s"')
    return sum(float(num) * _DURATION_UNITS[unit] for num, unit in parts)


class Size(int):
    """A config size in bytes: ``"256MiB"``, ``"10MB"``, ``"64KiB"``, or a number of bytes.

    At least :attr:`minimum` (1 byte; a size of 0 holds nothing) and at most
    1 PiB. A field that needs a larger floor declares ``Size.at_least("1MiB")``.
    """

    minimum: ClassVar[int] = 1
    maximum: ClassVar[int] = 1024**5

    @classmethod
    def parse(cls, value: object) -> Size:
        if isinstance(value, bool):
            raise ValueError('expected a size like "256MiB"')
        if isinstance(value, int):
            number = value
        elif isinstance(value, str):
            match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
            unit = match.group(2).lower() if match else ""
            if not match or unit not in _SIZE_UNITS:
                raise ValueError(f'invalid size {_shown(value)}; use e.g. "256MiB", "10MB", "4096"')
            scaled = float(match.group(1)) * _SIZE_UNITS[unit]
            number = int(scaled) if scaled <= cls.maximum else cls.maximum + 1  # "1e400"-sized: no overflow
        else:
            raise ValueError(f'expected a size like "256MiB", got {type(value).__name__}')
        if number < 0:
            raise ValueError(f"size must not be negative: {_shown(value)}")
        if number < cls.minimum:
            raise ValueError(f"size must be at least {format_size(cls.minimum)}: {_shown(value)}")
        if number > cls.maximum:
            raise ValueError(f"size must be at most 1PiB: {_shown(value)}")
        return cls(number)

    @classmethod
    def at_least(cls, minimum: int | str) -> type[Size]:
        """A Size type with a floor, for ``Annotated[Size.at_least("1KiB"), ...]``."""
        return _floored_size(cls, int(Size.parse(minimum)))


@functools.cache
def _floored_size(base: type[Size], floor: int) -> type[Size]:
    # one class per floor, so equal declarations share a type
    return type(f"{base.__name__}AtLeast{floor}", (base,), {"minimum": floor, "__doc__": base.__doc__})


def _shown(value: object) -> str:
    """A value for an error message, cut short: a 400-digit size need not be echoed whole."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_size(n: int) -> str:
    """``1048576`` -> ``"1MiB"``: sizes in messages read like the config."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B" if n < 1024 else f"{n / 1024:.1f}KiB"


class FieldCheck:
    """Field metadata the config loader runs on the converted value.

    ``Annotated[str, msgspec.Meta(description=...), readable_file]``: msgspec
    ignores it, the loader calls :meth:`check` and reports a ``ValueError``
    under the key's path. For checks that need the machine (a file exists),
    which a config built in a test must not depend on.
    """

    def check(self, value: Any) -> None:
        raise NotImplementedError


class ReadableFile(FieldCheck):
    """The option names a file the agent reads (a secret, a certificate): empty, or a regular
    file that can be opened now, so ``hostwatch check`` and a reload catch a missing one."""

    def check(self, value: Any) -> None:
        if not value:
            return
        try:
            fd = os.open(value, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang the check
        except OSError as exc:
            raise ValueError(f"cannot read {value}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{value} is not a regular file")
        finally:
            os.close(fd)


readable_file = ReadableFile()


def check_url(url: str, key: str, schemes: tuple[str, ...] = ("http", "https"), *, host: bool = True) -> None:
    """Raise ``ValueError("key: ...")`` unless ``url`` has one of ``schemes``, a host (unless
    ``host`` is False), a valid port and no whitespace. Messages never show a password."""
    shown = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError(f"{key}: must not contain spaces or control characters: {shown!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise ValueError(f"{key}: {exc}: {shown!r}") from None
    if parts.scheme.lower() not in schemes:
        wanted = " or ".join(f"{s}://" for s in schemes)
        raise ValueError(f"{key}: must start with {wanted}: {shown!r}")
    if host and not parts.hostname:
        raise ValueError(f"{key}: has no host: {shown!r}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 and re.search(r":[^/@\]]*$", parts.netloc):  # a port was written: 0, too big, not a number
        raise ValueError(f"{key}: invalid port (1-65535): {shown!r}")


class LabelNames(FieldCheck):
    """The keys of a ``labels`` table are valid label names and none is reserved.

    Valid: ``[a-zA-Z_][a-zA-Z0-9_]*`` (Prometheus and Loki take no other). Always
    reserved: names starting with ``__`` (``__name__`` is the metric name) and
    ``instance`` (the host: ``[agent] hostname``); ``reserved`` adds more.
    """

    def __init__(self, *reserved: str, hint: str = "") -> None:
        self.reserved = frozenset(reserved) | {"instance"}
        self.hint = hint

    def check(self, value: Any) -> None:
        for name in value:
            if not _LABEL_NAME.fullmatch(name):
                raise ValueError(f"invalid label name {name!r}: use letters, digits and _, not starting with a digit")
            if name.startswith("__"):
                raise ValueError(f"label name {name!r} is reserved: names starting with __ are internal")
            if name in self.reserved:
                where = "[agent] hostname" if name == "instance" else self.hint
                raise ValueError(f"label name {name!r} is reserved: set it with {where}")


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class AbsolutePath(FieldCheck):
    """Empty (the default), or an absolute path: a relative one would depend on the working directory."""

    def check(self, value: Any) -> None:
        if value and not os.path.isabs(value):
            raise ValueError(f"must be an absolute path, got {value!r}")


absolute_path = AbsolutePath()


class HttpHeaders(FieldCheck):
    """Header names are HTTP tokens and values hold no line break or other control character
    (a CR/LF would smuggle a header of its own into every request)."""

    def check(self, value: Any) -> None:
        for name, text in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"invalid header name {name!r}: letters, digits and !#$%&'*+-.^_`|~ only")
            if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
                raise ValueError(f"header {name!r}: the value must not contain CR, LF or other control characters")


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
http_headers = HttpHeaders()


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); ``[::1]:9730`` for IPv6; empty host: every interface.

    Raises ``ValueError`` for anything the server could not bind.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'must be host:port with a port 0-65535 (e.g. "127.0.0.1:9730"), got {listen!r}')
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unclosed [ in {listen!r}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address, in {listen!r}") from None
    elif host and not _is_ip(host) and not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is neither an IP address nor a host name, in {listen!r}")
    return host, int(port)


def listen_is_loopback(listen: str) -> bool:
    """True when the server would only be reachable from this host (an empty host means all interfaces)."""
    host, _ = parse_listen(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # empty (every interface) or a name that may resolve anywhere


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class ListenAddress(FieldCheck):
    """``host:port`` the health server can bind, or empty (no server)."""

    def check(self, value: Any) -> None:
        if value:
            parse_listen(value)


listen_address = ListenAddress()
