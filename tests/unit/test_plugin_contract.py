"""Contract tests over the registry: every installed plugin, found through its entry point.

For each: its sample parses into its config type with every documented default
uncommented; an unknown key fails with its path; its README shows the sample;
closing is idempotent. Collectors that run without a server emit only metric names
their README lists. Outputs map 429/5xx/refused connections to retry, 401/403 to
retry (credentials may be rotating: a rewritten token file is read again), redirects
and other 4xx to drop and 413 to too_large, against a scripted local server.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import socket
import tomllib
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import ConfigError, parse_config
from agent.emitter import RunEmitter
from agent.model import LogRecord, Sample, Signal
from agent.plugin import Batch, ResultKind
from agent.registry import load_registry
from agent.telemetry import Telemetry
from tests.support import collector_context, output_context

REGISTRY = load_registry()
PLUGINS = [(kind, name) for kind in ("collectors", "outputs") for name in sorted(REGISTRY[kind])]
# collectors that need a server, a directory or a source of their own to produce anything
NEEDS_PEER = {"queue_redis", "queue_rabbitmq", "queue_spool", "logs", "journald", "sequence"}
# collectors of hardware a VM lacks: their own tests check their README against fixture trees
NEEDS_HARDWARE = {"hardware"}
COMMENTED_DEFAULT = re.compile(r"^(\s*)# (\w+ = .*)$")


def plugin_dir(kind: str, name: str) -> Path:
    module = importlib.import_module(REGISTRY[kind][name].__module__)
    return Path(module.__file__).parent


def sample_text(kind: str, name: str) -> str:
    folder = plugin_dir(kind, name)
    own = folder / f"{name}.sample.toml"
    return (own if own.exists() else folder / "sample.toml").read_text()


def uncommented(sample: str) -> str:
    """The sample with every documented `# key = default` line made live."""
    return "\n".join(COMMENTED_DEFAULT.sub(r"\1\2", line) for line in sample.splitlines())


def instance_table(kind: str, name: str, text: str) -> dict:
    tables = tomllib.loads(text)[kind][name]
    return tables[0] if isinstance(tables, list) else tables


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_sample_documents_valid_defaults(kind: str, name: str) -> None:
    text = uncommented(sample_text(kind, name))
    table = instance_table(kind, name, text)
    config = parse_config({kind: {name: [table]}}, environ={}, registry=REGISTRY)
    specs = config.collectors if kind == "collectors" else config.outputs
    assert [s.type for s in specs] == [name]
    documented = set(table)
    fields = {f.encode_name for f in __import__("msgspec").structs.fields(REGISTRY[kind][name].Config)}
    undocumented = fields - documented
    assert not undocumented, f"{name}: options missing from its sample: {sorted(undocumented)}"


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_unknown_key_names_its_path(kind: str, name: str) -> None:
    table = instance_table(kind, name, uncommented(sample_text(kind, name)))
    table["definitely_not_an_option"] = 1
    with pytest.raises(ConfigError) as info:
        parse_config({kind: {name: [table]}}, environ={}, registry=REGISTRY)
    assert f"{kind}.{name}[0].definitely_not_an_option: unknown key" in "\n".join(info.value.errors)


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_readme_shows_the_sample(kind: str, name: str) -> None:
    readme = (plugin_dir(kind, name) / "README.md").read_text()
    sample = sample_text(kind, name).strip()
    assert sample in readme, f"{name}: README.md does not embed its sample verbatim"


def readme_metric_names(kind: str, name: str) -> set[str]:
    readme = (plugin_dir(kind, name) / "README.md").read_text()
    return set(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", readme))


COLLECTORS_HERE = [n for n in sorted(REGISTRY["collectors"]) if n not in NEEDS_PEER | NEEDS_HARDWARE]


@pytest.mark.parametrize("name", COLLECTORS_HERE)
async def test_collector_emits_only_what_its_readme_lists(name: str, tmp_path) -> None:
    cls = REGISTRY["collectors"][name]
    table = instance_table("collectors", name, uncommented(sample_text("collectors", name)))
    spec = parse_config({"collectors": {name: [table]}}, environ={}, registry=REGISTRY).collectors[0]
    collector = cls(spec.config, collector_context(tmp_path, telemetry=Telemetry()))
    emitter = RunEmitter(1)
    await collector.start()
    await collector.collect(emitter)
    await collector.close()
    await collector.close()  # idempotent
    names = {s.name for s in emitter.samples}
    assert names, f"{name} produced nothing on this host"
    unlisted = names - readme_metric_names("collectors", name)
    assert not unlisted, f"{name} emits metrics its README does not list: {sorted(unlisted)}"


@pytest.mark.parametrize("name", sorted(REGISTRY["collectors"]))
async def test_collector_close_without_start_is_harmless(name: str, tmp_path) -> None:
    cls = REGISTRY["collectors"][name]
    table = instance_table("collectors", name, uncommented(sample_text("collectors", name)))
    spec = parse_config({"collectors": {name: [table]}}, environ={}, registry=REGISTRY).collectors[0]
    collector = cls(spec.config, collector_context(tmp_path))
    await collector.close()
    await collector.close()


STATUS_CASES = [
    (429, ResultKind.RETRY),
    (503, ResultKind.RETRY),
    (502, ResultKind.RETRY),
    (504, ResultKind.RETRY),
    (400, ResultKind.DROP),
    (404, ResultKind.DROP),
    (413, ResultKind.TOO_LARGE),
    (401, ResultKind.RETRY),  # within the window for rotating credentials
    (403, ResultKind.RETRY),
    (301, ResultKind.DROP),
    (302, ResultKind.DROP),
    (307, ResultKind.DROP),
    (308, ResultKind.DROP),
]


def output_for(name: str, url: str, **options):
    cls = REGISTRY["outputs"][name]
    table = instance_table("outputs", name, uncommented(sample_text("outputs", name)))
    table.update(options)
    for key in ("url", "endpoint"):
        if key in table:
            table[key] = url if key == "url" or name != "otlp" else url.rsplit("/", 1)[0]
    if name == "otlp":
        table["protocol"] = "http"
    spec = parse_config({"outputs": {name: [table]}}, environ={}, registry=REGISTRY).outputs[0]
    return cls(spec.config, output_context(name))


def any_batch(output) -> Batch:
    if Signal.METRICS in output.signals:
        return Batch(Signal.METRICS, [Sample("up", 1.0, "gauge", (("a", "b"),), 1_700_000_000_000_000_000)])
    return Batch(Signal.LOGS, [LogRecord(1_700_000_000_000_000_000, "hello", (("job", "x"),))])


async def serve(handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("name", sorted(REGISTRY["outputs"]))
async def test_output_maps_statuses_to_results(name: str) -> None:
    status = {"code": 200}

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        moved = {"Location": "http://user:pw@elsewhere.example/push"} if 300 <= status["code"] < 400 else None
        return web.Response(status=status["code"], text="scripted", headers=moved)

    runner, port = await serve(handler)
    path = {"remote_write": "/api/v1/write", "loki": "/loki/api/v1/push"}.get(name, "/v1/metrics")
    output = output_for(name, f"http://127.0.0.1:{port}{path}")
    await output.start()
    try:
        for code, expected in STATUS_CASES:
            status["code"] = code
            result = await output.export(any_batch(output))
            assert result.kind is expected, (code, result)
            if 300 <= code < 400:
                assert "redirected to http://elsewhere.example/push" in result.reason, result.reason
                assert "pw" not in result.reason
    finally:
        await output.close()
        await output.close()  # idempotent
        await runner.cleanup()


@pytest.mark.parametrize("name", sorted(REGISTRY["outputs"]))
async def test_output_reads_a_rotated_token_file_after_a_401(name: str, tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("old\n")
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(status=204 if seen[-1] == "Bearer new" else 401, text="token expired")

    server, port = await serve(handler)
    path = {"remote_write": "/api/v1/write", "loki": "/loki/api/v1/push"}.get(name, "/v1/metrics")
    output = output_for(name, f"http://127.0.0.1:{port}{path}", bearer_token_file=str(token))
    await output.start()
    try:
        assert (await output.export(any_batch(output))).kind is ResultKind.RETRY
        token.write_text("new\n")  # a secret manager rotates the token
        assert (await output.export(any_batch(output))).kind is ResultKind.OK
        assert seen == ["Bearer old", "Bearer new"]
    finally:
        await output.close()
        await server.cleanup()


@pytest.mark.parametrize("name", sorted(REGISTRY["outputs"]))
async def test_output_maps_a_refused_connection_to_retry(name: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket closes
    output = output_for(name, f"http://127.0.0.1:{port}/push")
    await output.start()
    try:
        result = await asyncio.wait_for(output.export(any_batch(output)), 15)
        assert result.kind is ResultKind.RETRY
    finally:
        await output.close()
