"""How the push outputs' HTTP client sends a request: the :class:`Transport` seam.

:class:`outputs._http.HttpClient` keeps everything about a request that is the
agent's business (headers, credentials, masking, what a status means) and hands
the bytes to a transport: :class:`AiohttpTransport` in the agent, a scripted one
in unit tests that only need an answer, not a wire (prometheus_client's
``handler`` argument is the same seam).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportError(Exception):
    """A request that could not be completed (refused, reset, TLS); the message says how."""


class Transport(Protocol):
    """How :class:`HttpClient` sends a POST: a connection pool and its lifecycle.

    ``start`` gets the TLS setting (a context, or True: the library's verifying
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


class AiohttpTransport:
    """The default :class:`Transport`: one aiohttp session, keep-alive, redirects not followed."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self, *, tls: ssl.SSLContext | bool, timeout: float) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, limit=8, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=timeout),
            auto_decompress=True,
            raise_for_status=False,
        )

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, server_hostname: str | None, limit: int
    ) -> Response:
        if self._session is None:
            raise RuntimeError("AiohttpTransport.post before start()")
        try:
            async with self._session.post(
                url, data=body, headers=headers, server_hostname=server_hostname, allow_redirects=False
            ) as resp:
                return Response(resp.status, resp.headers, await _read(resp, limit))
        except TimeoutError:  # aiohttp's timeouts are ClientErrors too: keep them timeouts
            raise
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16384):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]
