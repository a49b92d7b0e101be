"""Contract tests over the registry: every installed plugin, found through its entry point.

For each: its sample parses into its config type with every documented default
uncommented; the schema documents itself (every option has a description) and its
sample agrees with the schema (every option, its default and type, no stale key);
an unknown key fails with its path; its README shows the sample; closing is idempotent.
Collectors that run without a server emit only metric names their README lists.
Outputs map 429/5xx/refused connections to retry, 401/403 to retry (credentials may
be rotating: a rewritten token file is read again), redirects and other 4xx to drop
and 413 to too_large, against a scripted local server.
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

from agent.config import (
    AgentSection,
    CollectorCommon,
    ConfigError,
    HttpSection,
    OutputCommon,
    RedactionRule,
    RedactionSection,
    convert,
    parse_config,
)
from agent.config.docs import (
    documented_keys,
    nested_structs,
    options,
    render_sample,
    sample_problems,
    toml_parse_value,
)
from agent.emitter import RunEmitter
from agent.model import LogRecord, Sample, Signal
from agent.plugin import Batch, ResultKind
from agent.registry import load_registry
from agent.telemetry import Telemetry
from tests.support import collector_context, output_context

REGISTRY = load_registry()
PLUGINS = [(kind, name) for kind in ("collectors", "outputs") for name in sorted(REGISTRY[kind])]
# collectors that need a server, a directory or a source of their own to produce anything
# (systemd: a system bus with systemd on it; tests/packaging/test_systemd_nspawn.py checks it in a booted container)
NEEDS_PEER = {
    "queue_redis",
    "queue_rabbitmq",
    "queue_spool",
    "logs",
    "sequence",
    "systemd",
    "prometheus_scrape",
    "otlp",
    "journald",
}
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
def test_every_option_has_a_description(kind: str, name: str) -> None:
    """The schema is the documentation: each option of the plugin's Config (and of the
    Structs its options hold) carries a msgspec.Meta(description=...)."""
    config_type = REGISTRY[kind][name].Config
    bare = [
        f"{struct.__name__}.{option.key}"
        for struct in (config_type, *nested_structs(config_type))
        for option in options(struct)
        if not option.description.strip()
    ]
    assert not bare, f"{name}: options without a description: {bare}"


def test_every_agent_option_has_a_description() -> None:
    sections = (AgentSection, HttpSection, RedactionSection, RedactionRule, CollectorCommon, OutputCommon)
    bare = [f"{s.__name__}.{o.key}" for s in sections for o in options(s) if not o.description.strip()]
    assert not bare, f"options without a description: {bare}"


def sample_files(kind: str, name: str) -> list[Path]:
    """Every sample in the plugin's folder with a [[kind.name]] table (queue/ has a combined one)."""
    files = sorted(plugin_dir(kind, name).glob("*sample.toml"))
    return [f for f in files if re.search(rf"^\s*\[\[{kind}\.{name}\]\]", f.read_text(), re.M)]


SAMPLE_CASES = [(kind, name, f.name) for kind, name in PLUGINS for f in sample_files(kind, name)]


def common_type(kind: str) -> type:
    return CollectorCommon if kind == "collectors" else OutputCommon


@pytest.mark.parametrize(("kind", "name", "file"), SAMPLE_CASES)
def test_sample_agrees_with_the_schema(kind: str, name: str, file: str) -> None:
    """Every option as `# key = <schema default>` in its TOML type, under ## prose, and no
    key the plugin does not have: the sample is what users copy."""
    text = (plugin_dir(kind, name) / file).read_text()
    problems = sample_problems(text, kind, name, REGISTRY[kind][name].Config, common_type(kind))
    folder = plugin_dir(kind, name)
    assert not problems, f"{folder.parent.name}/{folder.name}/{file}:\n" + "\n".join(problems)


def test_sample_check_catches_a_wrong_default_a_stale_key_and_a_missing_option() -> None:
    sample = sample_text("outputs", "loki")
    for old, new in (
        ('# encoding = "protobuf"', '# encoding = "json"'),  # a default that is not the schema's
        ('# tenant = ""\n', ""),  # an option left out
        ('# compression = ""', '# compression = ""\n\n  ## Gone.\n  # urll = ""'),  # a stale key
        ('# timeout = "10s"', '# timeout = "ten seconds"'),  # not of the option's type
        ('  url = "http', '  # url = "http'),  # a required option shown as if it had a default
    ):
        assert old in sample
        sample = sample.replace(old, new)
    problems = sample_problems(sample, "outputs", "loki", REGISTRY["outputs"]["loki"].Config, OutputCommon)
    assert any(p.endswith('encoding = "json": the default is "protobuf"') for p in problems), problems
    assert "tenant: not documented" in problems, problems
    assert any("urll: not an option of loki" in p for p in problems), problems
    assert any('timeout = "ten seconds": not a valid value' in p for p in problems), problems
    assert any("url: required, so show it live" in p for p in problems), problems
    assert len(problems) == 5, problems


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_generated_sample_agrees_with_the_schema(kind: str, name: str) -> None:
    """`python -m agent.config.docs NAME` prints a skeleton that passes the same check,
    so every default in the registry has a TOML form."""
    config_type = REGISTRY[kind][name].Config
    generated = render_sample(kind, name, config_type)
    assert sample_problems(generated, kind, name, config_type, common_type(kind)) == []
    shown = {doc.key for doc in documented_keys(generated, f"{kind}.{name}")}
    assert shown == {option.key for option in options(config_type)}


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table_rows(heading: str) -> list[tuple[list[str], list[str]]]:
    """(keys, backticked values of the default column) per row of the option table under ``heading``."""
    section = README.read_text().split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    cells = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")]
    return [(re.findall(r"`(\w+)`", keys), re.findall(r"`([^`]+)`", default)) for keys, default in cells]


def readme_table_problems(heading: str, *sections: type) -> list[str]:
    """Rows whose default is shown as TOML, one value per key, that disagree with the schema."""
    schema = {o.key: o for section in sections for o in options(section)}
    problems = []
    for keys, values in readme_table_rows(heading):
        if len(values) != len(keys):
            continue  # a default described in words ("`2000` for metrics, `10000` for log records")
        for key, text in zip(keys, values, strict=True):
            try:
                value = convert(toml_parse_value(text), schema[key].type)
            except Exception:
                continue  # not TOML: a reference such as `[agent] interval`
            if schema[key].default is not None and value != schema[key].default:
                problems.append(f"{key}: the README says {text}, the schema {schema[key].default!r}")
    return problems


def test_readme_tables_of_shared_options_match_the_schema() -> None:
    collector_keys = {o.key for o in options(CollectorCommon)}
    documented = {key for keys, _ in readme_table_rows("### Options every collector takes") for key in keys}
    assert documented == collector_keys
    # outputs: the engine's options plus those every output's own Config has (the HTTP client's)
    every_output = set.intersection(
        *({o.key for o in options(REGISTRY["outputs"][n].Config)} for n in REGISTRY["outputs"])
    )
    documented = {key for keys, _ in readme_table_rows("### Options every output takes") for key in keys}
    assert {o.key for o in options(OutputCommon)} <= documented
    assert documented <= {o.key for o in options(OutputCommon)} | every_output, "stale keys in the README's table"
    assert readme_table_problems("### Options every collector takes", CollectorCommon) == []
    http_options = REGISTRY["outputs"]["remote_write"].Config
    assert readme_table_problems("### Options every output takes", OutputCommon, http_options) == []


def readme_toml_example(heading: str) -> str:
    return README.read_text().split(f"\n{heading}\n", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize(
    ("heading", "table", "section"),
    [
        ("## Configuration", "agent", AgentSection),
        ("## Configuration", "http", HttpSection),
        ("## Redaction", "redaction", RedactionSection),
        ("## Redaction", "redaction.rules", RedactionRule),
    ],
)
def test_readme_example_of_the_agent_sections_shows_every_option(heading: str, table: str, section: type) -> None:
    block = readme_toml_example(heading)
    shown = {doc.key for doc in documented_keys(block, table)}
    shown |= set(re.findall(rf"^\[\[?{re.escape(table)}\.(\w+)\]", block, re.M))  # [[redaction.rules]]
    assert shown == {o.key for o in options(section)}, table


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
