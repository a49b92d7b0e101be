"""The shared HTTP client: status mapping, Retry-After, transport failures, auth, TLS."""

from __future__ import annotations

import email.utils
import gzip
import ssl
import time

import cramjam
import msgspec
import pytest

from agent.plugin import Duration, ExportResult, ResultKind
from outputs._http import (
    REASON_MAX,
    HttpClient,
    HttpClientConfig,
    Response,
    TransportError,
    compress,
    compress_async,
    load_credentials,
    parse_retry_after,
    server_message,
    status_result,
)
from tests.unit.outputs.fakes import ScriptedTransport, closed_port, fake_backend, raw_server


def response(status: int, body: bytes = b"", **headers: str) -> Response:
    return Response(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


# ------------------------------------------------------------------ pure mapping


@pytest.mark.parametrize(
    ("status", "retry_5xx", "kind"),
    [
        (200, False, ResultKind.OK),
        (204, True, ResultKind.OK),
        (400, True, ResultKind.DROP),
        (401, True, ResultKind.DROP),
        (404, False, ResultKind.DROP),
        (413, True, ResultKind.TOO_LARGE),
        (413, False, ResultKind.TOO_LARGE),
        (429, False, ResultKind.RETRY),
        (500, True, ResultKind.RETRY),
        (500, False, ResultKind.DROP),
        (501, False, ResultKind.DROP),
        (502, False, ResultKind.RETRY),
        (503, False, ResultKind.RETRY),
        (504, False, ResultKind.RETRY),
        (507, True, ResultKind.RETRY),
        (301, True, ResultKind.DROP),
        (308, False, ResultKind.DROP),
    ],
)
def test_status_mapping(status: int, retry_5xx: bool, kind: ResultKind) -> None:
    result = status_result(response(status, b"server says no"), retry_5xx=retry_5xx)
    assert result.kind is kind
    if kind is not ResultKind.OK and not 300 <= status < 400:  # a redirect's reason names its Location
        assert result.reason == f"HTTP {status}: server says no"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusals_are_retried_only_within_the_clients_window(status: int) -> None:
    assert status_result(response(status), retry_5xx=False, auth_retry=True).kind is ResultKind.RETRY
    assert status_result(response(status), retry_5xx=True, auth_retry=False).kind is ResultKind.DROP


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_dropped_naming_its_location_without_credentials(status: int) -> None:
    location = "https://ann:hunter2@metrics.example.net:8443/api/v1/write?api_key=s3cret#x"
    result = status_result(response(status, Location=location), retry_5xx=True)
    assert result.kind is ResultKind.DROP
    assert "redirected to https://metrics.example.net:8443/api/v1/write?…" in result.reason
    assert "hunter2" not in result.reason and "ann" not in result.reason and "s3cret" not in result.reason
    assert "not followed" in result.reason
    assert status_result(response(status), retry_5xx=True).reason.startswith(f"HTTP {status}: a redirect")


def test_retry_after_seconds_and_http_date() -> None:
    assert status_result(response(429, Retry_After="7"), retry_5xx=False).after == 7.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    after = status_result(response(503, Retry_After=date), retry_5xx=False, now=now).after
    assert after is not None and 29 <= after <= 30
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0  # in the past: now
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert status_result(response(503), retry_5xx=False).after is None


def test_server_message_is_one_line_and_truncated() -> None:
    assert server_message(b"bad\n  sample:\tout of order\n") == "bad sample: out of order"
    long = server_message(b"x" * 5000)
    assert len(long) == REASON_MAX and long.endswith("…")
    assert server_message("é".encode() * 10 + b"\xff") == "é" * 10 + "\ufffd"


def test_compress_round_trips() -> None:
    body = b"metric line\n" * 1000
    assert gzip.decompress(compress(body, "gzip")) == body
    assert bytes(cramjam.snappy.decompress_raw(compress(body, "snappy"))) == body
    assert compress(body, "none") is body


async def test_compress_async_uses_the_same_formats_for_big_bodies() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: compressed on a thread
    assert gzip.decompress(await compress_async(body, "gzip")) == body
    assert bytes(cramjam.snappy.decompress_raw(await compress_async(body, "snappy"))) == body


# ------------------------------------------------------------------ config and secrets


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
        ({"basic_auth_user": "u"}, "basic_auth_user and basic_auth_password_file go together"),
        (
            {"basic_auth_user": "u", "basic_auth_password_file": "p", "bearer_token_file": "t"},
            "not both",
        ),
        ({"compression": "lz4"}, "Invalid enum value 'lz4'"),
    ],
)
def test_config_rejects_inconsistent_options(table: dict, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(table, HttpClientConfig)


def test_credentials_from_files_never_in_reprs(tmp_path) -> None:
    (tmp_path / "token").write_text("s3cr3t-token\n")
    (tmp_path / "password").write_text("hunter2\n")
    bearer = load_credentials(HttpClientConfig(bearer_token_file=str(tmp_path / "token")))
    assert bearer.authorization == "Bearer s3cr3t-token"
    config = HttpClientConfig(basic_auth_user="ann", basic_auth_password_file=str(tmp_path / "password"))
    basic = load_credentials(config)
    assert basic.authorization == "Basic " + "YW5uOmh1bnRlcjI="  # base64("ann:hunter2")
    for value in (bearer, basic):
        assert "s3cr3t" not in repr(value) and "hunter2" not in repr(value) and "YW5u" not in repr(value)
    with_headers = HttpClientConfig(headers={"X-Api-Key": "k3y-value"})
    assert "k3y-value" not in repr(with_headers) and "X-Api-Key" in repr(with_headers)


def test_empty_bearer_token_file_is_an_error_naming_the_file(tmp_path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ValueError, match="token is empty"):
        load_credentials(HttpClientConfig(bearer_token_file=str(tmp_path / "token")))


# ------------------------------------------------------------------ against fake servers


async def started(config: HttpClientConfig) -> HttpClient:
    client = HttpClient(config, version="9.8.7")
    await client.start()
    return client


async def test_headers_user_agent_and_bearer_token(tmp_path) -> None:
    (tmp_path / "token").write_text("tok-123\n")
    config = HttpClientConfig(bearer_token_file=str(tmp_path / "token"), headers={"X-Extra": "yes"})
    client = await started(config)
    try:
        async with fake_backend() as backend:
            answer = await client.post(backend.url("/push"), b"payload", {"Content-Type": "application/x-test"})
            assert isinstance(answer, Response) and answer.status == 204
            seen = backend.requests[0]
            assert (seen.method, seen.path, seen.body) == ("POST", "/push", b"payload")
            assert seen.headers["User-Agent"] == "hostwatch/9.8.7"
            assert seen.headers["Authorization"] == "Bearer tok-123"
            assert seen.headers["X-Extra"] == "yes"
            assert seen.headers["Content-Type"] == "application/x-test"
    finally:
        await client.close()
        await client.close()  # idempotent


async def test_keep_alive_reuses_the_connection() -> None:
    client = await started(HttpClientConfig())
    try:
        async with fake_backend() as backend:
            for _ in range(3):
                assert isinstance(await client.post(backend.url(), b"x"), Response)
            peers = {seen.peer for seen in backend.requests}
            assert len(backend.requests) == 3 and len(peers) == 1 and () not in peers
    finally:
        await client.close()


async def test_a_secret_echoed_by_the_server_is_masked(tmp_path) -> None:
    (tmp_path / "password").write_text("hunter2")
    config = HttpClientConfig(basic_auth_user="ann", basic_auth_password_file=str(tmp_path / "password"))
    client = await started(config)
    try:
        async with fake_backend() as backend:
            backend.reply(401, "bad credentials ann:hunter2 (header Basic YW5uOmh1bnRlcjI=)")
            answer = await client.post(backend.url(), b"x")
            assert isinstance(answer, Response)
            result = client.result(answer, retry_5xx=True)
            assert result.kind is ResultKind.RETRY  # credentials may be rotating: see the auth tests below
            assert "hunter2" not in result.reason and "YW5uOmh1bnRlcjI=" not in result.reason
            assert result.reason.startswith("HTTP 401: bad credentials ann:*** (header Basic ***) (credentials")
            assert "hunter2" not in repr(client)
    finally:
        await client.close()


async def test_a_secret_cut_by_truncation_is_not_half_shown(tmp_path) -> None:
    (tmp_path / "token").write_text("abcdefghijklmnop")
    client = await started(HttpClientConfig(bearer_token_file=str(tmp_path / "token")))
    try:
        async with fake_backend() as backend:
            backend.reply(400, "x" * 190 + " token abcdefghijklmnop refused")
            answer = await client.post(backend.url(), b"x")
            assert isinstance(answer, Response)
            reason = client.result(answer, retry_5xx=True).reason
            tail = reason.split("token ", 1)[1]  # what is left of the secret once cut: stars only
            assert set(tail) <= {"*", "…"} and tail.endswith("…")
    finally:
        await client.close()


async def test_long_response_bodies_are_read_only_up_to_the_limit() -> None:
    client = HttpClient(HttpClientConfig(), version="1", max_response_bytes=1000)
    await client.start()
    try:
        async with fake_backend() as backend:
            backend.reply(400, b"e" * 100_000)
            answer = await client.post(backend.url(), b"x")
            assert isinstance(answer, Response) and len(answer.body) == 1000
    finally:
        await client.close()


async def test_connection_refused_is_retried() -> None:
    client = await started(HttpClientConfig())
    try:
        result = await client.post(f"http://127.0.0.1:{closed_port()}/", b"x")
        assert isinstance(result, ExportResult) and result.kind is ResultKind.RETRY
        assert "Connect" in result.reason
    finally:
        await client.close()


async def test_connection_reset_mid_request_is_retried() -> None:
    client = await started(HttpClientConfig())
    try:
        async with raw_server("reset") as url:
            result = await client.post(url, b"x" * 100)
        assert isinstance(result, ExportResult) and result.kind is ResultKind.RETRY
    finally:
        await client.close()


async def test_a_server_that_never_answers_times_out_and_is_retried() -> None:
    client = await started(HttpClientConfig(timeout=Duration(0.3)))
    try:
        async with raw_server("silent") as url:
            started_at = time.monotonic()
            result = await client.post(url, b"x")
            elapsed = time.monotonic() - started_at
        assert isinstance(result, ExportResult) and result.kind is ResultKind.RETRY
        assert result.reason == "timed out after 0.3s"
        assert 0.25 <= elapsed < 3
    finally:
        await client.close()


# ------------------------------------------------------------------ TLS


def server_tls(certs, *, require_client: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    if require_client:
        context.load_verify_locations(certs.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def post_once(config: HttpClientConfig, url: str) -> Response | ExportResult:
    client = await started(config)
    try:
        return await client.post(url, b"x")
    finally:
        await client.close()


async def test_tls_verification_is_on_by_default(certs) -> None:
    async with fake_backend(server_tls(certs)) as backend:
        url = backend.url("/")
        assert url.startswith("https://127.0.0.1:")
        unknown_ca = await post_once(HttpClientConfig(), url)
        assert isinstance(unknown_ca, ExportResult) and unknown_ca.kind is ResultKind.RETRY
        assert "certificate" in unknown_ca.reason.lower()
        wrong_name = await post_once(HttpClientConfig(tls_ca=str(certs.ca)), url)  # cert is for hostwatch.test
        assert isinstance(wrong_name, ExportResult) and wrong_name.kind is ResultKind.RETRY
        right = await post_once(HttpClientConfig(tls_ca=str(certs.ca), tls_server_name=certs.server_name), url)
        assert isinstance(right, Response) and right.status == 204
        insecure = await post_once(HttpClientConfig(tls_insecure_skip_verify=True), url)
        assert isinstance(insecure, Response) and insecure.status == 204
        assert len(backend.requests) == 2


async def test_tls_client_certificate(certs) -> None:
    async with fake_backend(server_tls(certs, require_client=True)) as backend:
        base = {"tls_ca": str(certs.ca), "tls_server_name": certs.server_name}
        without = await post_once(HttpClientConfig(**base), backend.url())
        assert isinstance(without, ExportResult) and without.kind is ResultKind.RETRY
        config = HttpClientConfig(**base, tls_cert=str(certs.client_cert), tls_key=str(certs.client_key))
        with_cert = await post_once(config, backend.url())
        assert isinstance(with_cert, Response) and with_cert.status == 204
        assert len(backend.requests) == 1


# ------------------------------------------------------------- refused credentials


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rotated_token_file_is_picked_up_after_a_refusal(tmp_path, status: int) -> None:
    token = tmp_path / "token"
    token.write_text("old-token\n")
    client = HttpClient(HttpClientConfig(bearer_token_file=str(token)), version="1")
    await client.start()
    try:
        async with fake_backend() as backend:
            backend.reply(status, "token old-token expired")
            answer = await client.post(backend.url(), b"x")
            result = client.result(answer, retry_5xx=False)
            assert result.kind is ResultKind.RETRY
            assert "old-token" not in result.reason and "auth files re-read" in result.reason
            token.write_text("new-token\n")  # the secret manager rotates it
            answer = await client.post(backend.url(), b"x")
            assert client.result(answer, retry_5xx=False).kind is ResultKind.OK
            sent = [seen.headers["Authorization"] for seen in backend.requests]
            assert sent == ["Bearer old-token", "Bearer new-token"]
            # a later request keeps the new token without reading the file again
            token.unlink()
            assert (await client.post(backend.url(), b"x")).status == 204
            assert backend.requests[-1].headers["Authorization"] == "Bearer new-token"
            assert client.mask("old-token new-token") == "*** ***"  # an echoed former token stays masked
    finally:
        await client.close()


async def test_auth_refusals_are_dropped_once_the_window_has_passed(tmp_path) -> None:
    (tmp_path / "password").write_text("wrong")
    config = HttpClientConfig(basic_auth_user="ann", basic_auth_password_file=str(tmp_path / "password"))
    clock = FakeClock()
    # only the statuses matter here, not the wire: an injected transport answers
    backend = ScriptedTransport()
    client = HttpClient(config, version="1", auth_retry_seconds=300, clock=clock, transport=backend)
    await client.start()
    url = "http://backend.test/push"
    try:
        kinds = []
        for advance in (0, 299, 2):  # first refusal, still within 300 s, past it
            clock.now += advance
            backend.reply(401)
            kinds.append(client.result(await client.post(url, b"x"), retry_5xx=True))
        assert [r.kind for r in kinds] == [ResultKind.RETRY, ResultKind.RETRY, ResultKind.DROP]
        assert "still refused 300s after the first refusal" in kinds[2].reason
        assert len(backend.requests) == 3
        # a success starts the window over
        assert (await client.post(url, b"x")).status == 204
        backend.reply(403)
        assert client.result(await client.post(url, b"x"), retry_5xx=True).kind is ResultKind.RETRY
    finally:
        await client.close()


async def test_an_unreadable_auth_file_after_a_refusal_keeps_the_old_credentials(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("old-token")
    client = HttpClient(HttpClientConfig(bearer_token_file=str(token)), version="1")
    await client.start()
    try:
        async with fake_backend() as backend:
            backend.reply(401)
            await client.post(backend.url(), b"x")
            token.unlink()  # mid-rotation
            backend.reply(401)
            result = client.result(await client.post(backend.url(), b"x"), retry_5xx=True)
            assert result.kind is ResultKind.RETRY
            assert "auth files not re-read" in result.reason and str(token) in result.reason
            assert backend.requests[-1].headers["Authorization"] == "Bearer old-token"
            token.write_text("new-token")
            await client.post(backend.url(), b"x")
            assert backend.requests[-1].headers["Authorization"] == "Bearer new-token"
    finally:
        await client.close()


# ------------------------------------------------------------------ an injected transport


async def test_an_injected_transport_carries_the_requests_and_its_failures_become_retries(tmp_path) -> None:
    (tmp_path / "token").write_text("s3cret-token")
    config = HttpClientConfig(
        bearer_token_file=str(tmp_path / "token"), timeout=Duration(2.5), tls_server_name="backend.example"
    )
    transport = ScriptedTransport()
    client = HttpClient(config, version="1.2", max_response_bytes=10, transport=transport)
    with pytest.raises(RuntimeError):
        await client.post("http://backend.test/", b"x")
    await client.start()
    try:
        assert transport.started == {"tls": True, "timeout": 2.5}  # no TLS options: the library's default
        transport.reply(400, b"e" * 100)
        answer = await client.post("http://backend.test/v1/logs", b"body", {"Content-Type": "application/x"})
        assert isinstance(answer, Response) and answer.body == b"e" * 10
        seen = transport.requests[0]
        assert (seen.path, seen.body) == ("/v1/logs", b"body")
        assert seen.headers["Authorization"] == "Bearer s3cret-token" and seen.headers["User-Agent"] == "hostwatch/1.2"
        assert transport.seen_options[0] == {"server_hostname": "backend.example", "limit": 10}
        transport.fail(TimeoutError())
        transport.fail(ConnectionResetError(104, "Connection reset by peer"))
        transport.fail(TransportError("ClientPayloadError: cut off while sending s3cret-token"))
        results = [await client.post("http://backend.test/", b"x") for _ in range(3)]
        assert [r.kind for r in results if isinstance(r, ExportResult)] == [ResultKind.RETRY] * 3
        assert [r.reason for r in results if isinstance(r, ExportResult)] == [
            "timed out after 2.5s",
            "ConnectionResetError: [Errno 104] Connection reset by peer",
            "ClientPayloadError: cut off while sending ***",
        ]
    finally:
        await client.close()
        await client.close()
    assert transport.closed == 1
