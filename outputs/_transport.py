"""How the push outputs' HTTP client sends a request: the :class:`Transport` seam.

:class:`outputs._http.HttpClient` keeps everything about a request that is the
agent's business (headers, credentials, masking, what a status means) and hands
the bytes to a transport: :class:`outputs._asyncio_transport.AsyncioTransport` in
the agent, a scripted one in unit tests that only need an answer, not a wire
(prometheus_client's ``handler`` argument is the same seam).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol


class Headers(Mapping[str, str]):
    """An answer's header fields, looked up by name in any case (HTTP names are case-insensitive)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, str]) -> None:
        self._fields = {name.lower(): value for name, value in fields.items()}

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportError(Exception):
    """A request that could not be completed (refused, reset, TLS); the message says how."""


class Transport(Protocol):
    """How :class:`HttpClient` sends a POST: a connection pool and its lifecycle.

    ``start`` gets the TLS setting (a context, or True: the transport's verifying
    default) and the total deadline of one request; ``post`` returns the answer
    with at most ``limit`` bytes of body and raises ``TimeoutError`` past the
    deadline, ``OSError`` or :class:`TransportError` when the request could not
    be completed. ``close`` is idempotent.
    """

    async def start(self, *, tls: ssl.SSLContext | bool, timeout: float) -> None: ...

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, server_hostname: str | None, limit: int
    ) -> Response: ...

    async def close(self) -> None: ...
