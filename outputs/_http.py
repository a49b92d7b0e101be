"""The HTTP client every push output shares.

One :class:`HttpClient` per output instance: a keep-alive connection pool,
a total timeout per request, TLS (CA, client certificate, server name,
verification on unless ``tls_insecure_skip_verify``), basic auth or a bearer
token read from files at :meth:`HttpClient.start`, a ``User-Agent`` with the
version, and gzip/snappy request bodies.

Outputs never sleep or retry. :meth:`HttpClient.post` returns the response,
or an :class:`ExportResult` ``retry`` for what went wrong on the way
(connection refused or reset, timeout); :func:`status_result` maps a status
code to the result the engine acts on. Secret values are kept out of reprs
and are masked in every reason text this module builds.

A 401 or 403 is retried for ``AUTH_RETRY_SECONDS`` after the first refusal
(a success starts that over), and every request after a refusal re-reads the
auth files first: a token file that a secret manager rewrites is picked up
without a restart, and nothing is dropped while the new one is on its way.
A redirect is not followed (the body would be posted to an address nobody
configured): it is dropped, and the reason names where it pointed.

The bytes go over a :class:`outputs._transport.Transport` (the seam
prometheus_client's ``handler`` is): :class:`outputs._asyncio_transport.AsyncioTransport`
by default; a test hands ``HttpClient`` one of its own to script answers and failures
without a server.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Annotated, Literal

import cramjam
import msgspec

from agent.httpauth import Credentials as Credentials
from agent.httpauth import build_ssl_context as build_ssl_context
from agent.httpauth import load_credentials as load_credentials
from agent.httpauth import read_secret as read_secret
from agent.plugin import Duration, ExportResult, PluginConfig, http_headers, readable_file
from agent.plugin import check_url as _check_url
from outputs._asyncio_transport import AsyncioTransport
from outputs._transport import Response as Response  # re-exported: the outputs take it from here
from outputs._transport import Transport, TransportError

Desc = msgspec.Meta
REASON_MAX = 200
# Compressing a body this big would hold the event loop for milliseconds: do it on a thread.
_THREAD_COMPRESS_BYTES = 256 * 1024
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_AUTH_STATUSES = frozenset({401, 403})
# how long refused credentials are retried: covers a secret manager rewriting a token file
# a little after the server stopped taking the old one, and no more (a wrong password
# configured for good must not hold the buffer forever)
AUTH_RETRY_SECONDS = 300.0


class HttpClientConfig(PluginConfig):
    """Connection options every push output takes."""

    timeout: Annotated[Duration, Desc(description="Deadline of one request, connecting included.")] = Duration(10)
    headers: Annotated[dict[str, str], Desc(description="Extra request headers."), http_headers] = msgspec.field(
        default_factory=dict
    )
    tls_ca: Annotated[str, Desc(description="PEM file of the CAs to trust; empty: the system's."), readable_file] = ""
    tls_cert: Annotated[
        str, Desc(description="PEM client certificate for mutual TLS (with tls_key)."), readable_file
    ] = ""
    tls_key: Annotated[str, Desc(description="PEM private key of tls_cert."), readable_file] = ""
    tls_server_name: Annotated[
        str, Desc(description="Name the server's certificate must match (and SNI); empty: the URL's host.")
    ] = ""
    tls_insecure_skip_verify: Annotated[bool, Desc(description="Accept any server certificate (tests only).")] = False
    basic_auth_user: Annotated[str, Desc(description="HTTP basic auth user (with basic_auth_password_file).")] = ""
    basic_auth_password_file: Annotated[
        str, Desc(description="File holding the basic auth password."), readable_file
    ] = ""
    bearer_token_file: Annotated[
        str, Desc(description="File holding a token sent as Authorization: Bearer."), readable_file
    ] = ""
    compression: Annotated[
        Literal["", "none", "gzip", "snappy"],
        Desc(description="Request body compression; empty: the output's default."),
    ] = ""

    def __repr__(self) -> str:
        # header values may carry API keys: show their names only
        fields = ", ".join(
            f"{name}={{{', '.join(f'{k!r}: ***' for k in self.headers)}}}"
            if name == "headers"
            else f"{name}={getattr(self, name)!r}"
            for name in self.__struct_fields__
        )
        return f"{type(self).__name__}({fields})"

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if bool(self.basic_auth_user) != bool(self.basic_auth_password_file):
            raise ValueError("basic_auth_user and basic_auth_password_file go together")
        if self.basic_auth_user and self.bearer_token_file:
            raise ValueError("use basic auth or a bearer token, not both")


def check_url(url: str, what: str = "url") -> None:
    """Raise ``ValueError("url: ...")`` unless ``url`` is an http(s) URL with a host, a valid
    port and no whitespace (for ``__post_init__``; the loader puts the key in the path)."""
    _check_url(url, what, ("http", "https"))


# ----------------------------------------------------------------- secrets and TLS


# Credentials, read_secret, load_credentials and build_ssl_context live in agent.httpauth
# (the scrape collector uses them too); re-exported here for the outputs.


# ------------------------------------------------------------ bodies and answers


def compress(body: bytes, kind: str) -> bytes:
    """``kind`` is ``gzip``, ``snappy`` (the block format remote-write and Loki use) or ``none``."""
    if kind == "gzip":
        return gzip.compress(body, compresslevel=1, mtime=0)
    if kind == "snappy":
        return bytes(cramjam.snappy.compress_raw(body))
    return body


async def compress_async(body: bytes, kind: str) -> bytes:
    """:func:`compress`, on a thread when the body is big enough to stall the loop."""
    if kind == "none" or len(body) < _THREAD_COMPRESS_BYTES:
        return compress(body, kind)
    return await asyncio.to_thread(compress, body, kind)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # the HTTP-date form only: the email package costs ~4 ms of start-up

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def shorten(text: str) -> str:
    """``text`` on one line, at most ``REASON_MAX`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"


def _unmasked(text: str) -> str:
    return text


def server_message(body: bytes, mask: Callable[[str], str] = _unmasked) -> str:
    """The start of a server's error text, on one line; masked before it is cut, so no secret is half shown."""
    return shorten(mask(body[: REASON_MAX * 8].decode("utf-8", "replace")))


def safe_location(location: str) -> str:
    """A redirect's target for a reason text: no user info, no query (either may hold a secret)."""
    try:
        parts = urllib.parse.urlsplit(location.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unparsable address"
    if ":" in host:
        host = f"[{host}]"
    where = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else parts.path
    return where + ("?…" if parts.query else "")


def status_result(
    response: Response,
    *,
    retry_5xx: bool,
    message: str | None = None,
    now: float | None = None,
    mask: Callable[[str], str] = _unmasked,
    auth_retry: bool = False,
) -> ExportResult:
    """Map an HTTP status to an :class:`ExportResult`.

    2xx: ok. 413: too_large. 429, 502, 503, 504 (and every other 5xx when
    ``retry_5xx``): retry, honouring ``Retry-After``. 401 and 403: retry while
    ``auth_retry`` (the client's window for rotating credentials), else drop.
    3xx: drop, the reason naming the ``Location``. Other statuses: drop.
    ``message`` replaces the body as the server's words in the reason.
    """
    status = response.status
    if 200 <= status < 300:
        return ExportResult.ok()
    if 300 <= status < 400:
        location = response.headers.get("Location")
        where = f"redirected to {shorten(mask(safe_location(location)))}" if location else "a redirect"
        return ExportResult.drop(f"HTTP {status}: {where}; redirects are not followed: configure that address")
    text = server_message(response.body, mask) if message is None else shorten(mask(message))
    reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status == 413:
        return ExportResult.too_large(reason)
    if status in _RETRY_STATUSES or (retry_5xx and 500 <= status < 600) or (auth_retry and status in _AUTH_STATUSES):
        return ExportResult.retry(reason, parse_retry_after(response.headers.get("Retry-After"), now))
    return ExportResult.drop(reason)


# --------------------------------------------------------------------- the client


class HttpClient:
    """POSTs bodies for one output instance; see the module docstring."""

    def __init__(
        self,
        config: HttpClientConfig,
        *,
        version: str,
        max_response_bytes: int = 64 * 1024,
        auth_retry_seconds: float = AUTH_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.version = version
        self.max_response_bytes = max_response_bytes
        self.auth_retry_seconds = auth_retry_seconds
        self.clock = clock
        self.transport: Transport = transport if transport is not None else AsyncioTransport()
        self._started = False
        self._credentials = Credentials()
        self._former_secrets: tuple[str, ...] = ()  # still masked: a server may echo an old token
        self._base_headers: dict[str, str] = {}
        self._refused_since: float | None = None  # first 401/403 since the last success
        self._reread_due = False
        self._reread_problem = ""

    def __repr__(self) -> str:
        return f"<HttpClient started={self._started}>"

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._credentials.secrets + self._former_secrets

    def mask(self, text: str) -> str:
        """``text`` with every secret value (current or replaced) replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    async def read_credentials(self) -> Credentials:
        """Read the auth files (on a thread) and keep them for the headers and for masking."""
        credentials = await asyncio.to_thread(load_credentials, self.config)
        former = [s for s in self._credentials.secrets + self._former_secrets if s not in credentials.secrets]
        self._former_secrets = tuple(former[:8])
        self._credentials = credentials
        if self._base_headers and credentials.authorization:
            self._base_headers = {**self._base_headers, "Authorization": credentials.authorization}
        return credentials

    @property
    def authorization(self) -> str:
        """The ``Authorization`` value in use (empty without auth files)."""
        return self._credentials.authorization

    def refused(self) -> None:
        """Note a refusal of the credentials (HTTP 401/403, gRPC UNAUTHENTICATED or
        PERMISSION_DENIED): it opens the retry window unless one is open, and the auth
        files are read again before the next request."""
        if self._refused_since is None:
            self._refused_since = self.clock()
        self._reread_due = bool(self.config.bearer_token_file or self.config.basic_auth_password_file)

    def accepted(self) -> None:
        """Note a success: the next refusal opens a new window."""
        self._refused_since = None

    async def refresh_credentials(self) -> bool:
        """Read the auth files again if a refusal asked for it; True when new ones were read.

        A file that cannot be read now (a rotation half done) keeps the credentials in
        use, says so in the next refusal's reason, and is tried again next time.
        """
        if not self._reread_due:
            return False
        try:
            await self.read_credentials()
        except (OSError, ValueError) as exc:  # the messages name the file, never its content
            self._reread_problem = shorten(self.mask(f"auth files not re-read: {exc}"))
            return False
        self._reread_due = False
        self._reread_problem = ""
        return True

    def refusal_result(self, reason: str, after: float | None = None) -> ExportResult:
        """A refusal of the credentials: retry within ``auth_retry_seconds`` of the first
        refusal since the last success, drop after that (the reason says which)."""
        since = self._refused_since
        within = since is None or self.clock() - since < self.auth_retry_seconds
        window = f"{self.auth_retry_seconds:g}s"
        if within:
            note = f"credentials refused; retried for up to {window}"
            if self.config.bearer_token_file or self.config.basic_auth_password_file:
                note += ", auth files re-read before each try"
        else:
            note = f"credentials still refused {window} after the first refusal"
        if self._reread_problem:
            note += f"; {self._reread_problem}"
        reason = f"{reason} ({note})"
        return ExportResult.retry(reason, after) if within else ExportResult.drop(reason)

    async def start(self) -> None:
        """Read secret files, build the TLS context and start the transport (no network I/O)."""
        if self._started:
            return
        config = self.config
        await self.read_credentials()
        # without TLS options the transport's verifying default (the system's CAs) is the same
        # thing, built on the first https:// request only: it costs ~30 ms of CPU
        own = config.tls_ca or config.tls_cert or config.tls_insecure_skip_verify
        tls: ssl.SSLContext | bool = await asyncio.to_thread(build_ssl_context, config) if own else True
        headers = {"User-Agent": f"hostwatch/{self.version}", **config.headers}
        if self._credentials.authorization:
            headers["Authorization"] = self._credentials.authorization
        self._base_headers = headers
        await self.transport.start(tls=tls, timeout=float(config.timeout))
        self._started = True

    async def post(self, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> Response | ExportResult:
        """POST ``body`` (already compressed) with the base headers plus ``headers``.

        Returns the response (status, headers, at most ``max_response_bytes``
        of body), or ``ExportResult.retry`` when the request could not be
        completed: connection refused or reset, TLS failure, timeout.
        """
        if not self._started:
            raise RuntimeError("HttpClient.post before start()")
        await self.refresh_credentials()
        all_headers = {**self._base_headers, **headers} if headers else self._base_headers
        try:
            response = await self.transport.post(
                url,
                body,
                all_headers,
                server_hostname=self.config.tls_server_name or None,
                limit=self.max_response_bytes,
            )
        except TimeoutError:
            return ExportResult.retry(f"timed out after {float(self.config.timeout):g}s")
        except TransportError as exc:
            return ExportResult.retry(shorten(self.mask(str(exc))))
        except OSError as exc:
            return ExportResult.retry(shorten(self.mask(f"{type(exc).__name__}: {exc}")))
        if 200 <= response.status < 300:
            self.accepted()
        elif response.status in _AUTH_STATUSES:
            self.refused()
        return response

    def result(self, response: Response, *, retry_5xx: bool, message: str | None = None) -> ExportResult:
        """:func:`status_result` with secrets masked in the reason; a 401/403 is
        :meth:`refusal_result` (retried within the window for rotating credentials)."""
        result = status_result(response, retry_5xx=retry_5xx, message=message, mask=self.mask)
        if response.status in _AUTH_STATUSES:
            return self.refusal_result(result.reason, parse_retry_after(response.headers.get("Retry-After")))
        return result

    async def close(self) -> None:
        started, self._started = self._started, False
        if started:
            await self.transport.close()
