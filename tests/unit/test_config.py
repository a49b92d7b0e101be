"""Config loading: lookup order, conf.d merge, interpolation, and path-named errors."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest

from agent.config import EMBEDDED_DEFAULT, ConfigError, load_config, loads_config
from agent.plugin import Duration, PluginConfig, Size


class FakeCollectorConfig(PluginConfig):
    paths: Annotated[list[str], msgspec.Meta(description="Files.")] = []
    start_at: Literal["end", "beginning"] = "end"
    poll_interval: Duration = Duration(0.25)


class FakeCollector:
    Config = FakeCollectorConfig


class NeedsUrlConfig(PluginConfig):
    url: str
    max_size: Size = Size(1024)


class FakeOutput:
    Config = NeedsUrlConfig


REGISTRY = {
    "collectors": {"logs": FakeCollector, "cpu": FakeCollector},
    "outputs": {"loki": FakeOutput},
}


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads_config(text, registry=REGISTRY, environ=environ or {})
    return info.value.errors


BROKEN = [
    ("[agent]\nintervall = '10s'", "agent.intervall: unknown key; did you mean interval?"),
    ("[htp]\nlisten = ':1'", "htp: unknown key; did you mean http?"),
    ("[http]\nlisten = 9730", "http.listen: expected `str`, got `int`"),
    ("[agent]\ninterval = '10 parsecs'", "agent.interval: invalid duration '10 parsecs'"),
    ("[agent]\ninterval = true", "agent.interval: expected a duration"),
    ("[[outputs.loki]]\nurl = 'x'\nmax_size = '12 bananas'", "outputs.loki[0].max_size: invalid size '12 bananas'"),
    ("[[outputs.loki]]\nurll = 'http://x'", "outputs.loki[0].urll: unknown key; did you mean url?"),
    ("[[outputs.loki]]\nflush_interval = '1s'", "outputs.loki[0].url: missing required key (str)"),
    ("[[outputs.lokki]]\nurl = 'x'", "outputs.lokki: unknown output; did you mean loki?"),
    ("[[collectors.cpuu]]", "collectors.cpuu: unknown collector; did you mean cpu?"),
    ("[[collectors.logs]]\nstart_at = 'middle'", "collectors.logs[0].start_at: expected one of"),
    ("[[collectors.logs]]\npaths = ['a', 3]", "collectors.logs[0].paths[1]: expected `str`, got `int`"),
    ("[[collectors.logs]]\nintervall = '1s'", "collectors.logs[0].intervall: unknown key; did you mean interval?"),
    ("[[collectors.cpu]]\ninterval = 'soon'", "collectors.cpu[0].interval: invalid duration 'soon'"),
    ("[[outputs.loki]]\nurl = 'x'\nbuffer = 'tape'", "outputs.loki[0].buffer: expected one of"),
    ("[[outputs.loki]]\nurl = 'x'\nbatch_max_items = -1", "outputs.loki[0].batch_max_items: expected `int` >= 0"),
    ("[[outputs.loki]]\nurl = '${LOKI_URL}'", "outputs.loki[0].url: environment variable LOKI_URL is not set"),
    ("[[outputs.loki]]\nurl = '${LOKI-URL}'", "outputs.loki[0].url: invalid variable reference '${LOKI-URL}'"),
    ("[redaction]\nmode = 'shred'", "redaction.mode: expected one of"),
    ("[[redaction.rules]]\nname = 'x'", "redaction.rules[0].pattern: missing required key"),
    ("collectors = 3", "collectors: expected a table"),
    ("[agent\n", "invalid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN, ids=[b[1].split(":")[0] for b in BROKEN])
def test_broken_config_names_the_path(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert any(expected in e for e in errors), errors


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of("[agent]\nintervall = '1s'\nhostname = 3\n[[outputs.loki]]\nurll = 'x'\n[[collectors.cpuu]]\n")
    assert len(errors) == 5, errors  # intervall, hostname, urll, missing url, cpuu
    assert {e.split(":")[0] for e in errors} == {
        "agent.intervall",
        "agent.hostname",
        "outputs.loki[0].urll",
        "outputs.loki[0].url",
        "collectors.cpuu",
    }


def test_interpolation_expands_variables_and_defaults() -> None:
    config = loads_config(
        "[agent]\nhostname = '${HOST:-fallback}'\nlabels = { env = '${ENV}', lit = '$${ENV}' }\n",
        registry=REGISTRY,
        environ={"ENV": "prod"},
    )
    assert config.agent.hostname == "fallback"
    assert config.agent.labels == {"env": "prod", "lit": "${ENV}"}


def test_durations_and_sizes_are_typed() -> None:
    config = loads_config(
        "[agent]\ninterval = '1m30s'\n[[outputs.loki]]\nurl = 'u'\nmax_size = '2MiB'\nbuffer_max_bytes = '1GB'\n",
        registry=REGISTRY,
        environ={},
    )
    assert config.agent.interval == 90.0
    (loki,) = config.outputs
    assert loki.config.max_size == 2 * 1024 * 1024
    assert loki.common.buffer_max_bytes == 1_000_000_000


def test_shared_options_are_split_from_the_plugins_own() -> None:
    config = loads_config(
        "[[collectors.logs]]\npaths = ['/a']\ninterval = '2s'\nalias = 'app'\nlabels = { job = 'x' }\n",
        registry=REGISTRY,
        environ={},
    )
    (spec,) = config.collectors
    assert spec.name == "app"
    assert spec.common.interval == 2.0
    assert spec.config.paths == ["/a"]


def test_instances_get_distinct_names() -> None:
    config = loads_config("[[collectors.cpu]]\n[[collectors.cpu]]\n", registry=REGISTRY, environ={})
    assert [s.name for s in config.collectors] == ["cpu", "cpu[1]"]
    errors = errors_of("[[collectors.cpu]]\nalias = 'a'\n[[collectors.logs]]\nalias = 'a'\n")
    assert any("instance name 'a' is already used" in e for e in errors)


def test_lookup_order_and_conf_d_merge(tmp_path, monkeypatch) -> None:
    main = tmp_path / "hostwatch.toml"
    main.write_text("[agent]\ninterval = '5s'\nlabels = { env = 'prod' }\n[[collectors.cpu]]\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-logs.toml").write_text("[agent]\nlabels = { dc = 'x' }\n[[collectors.logs]]\n")
    (tmp_path / "conf.d" / "20-more.toml").write_text("[[collectors.cpu]]\nalias = 'cpu2'\n")
    config = load_config(str(main), environ={}, registry=REGISTRY)
    assert config.agent.interval == 5.0
    assert config.agent.labels == {"env": "prod", "dc": "x"}
    assert [s.name for s in config.collectors] == ["logs", "cpu", "cpu2"] or [s.type for s in config.collectors]
    assert sorted(s.name for s in config.collectors) == ["cpu", "cpu2", "logs"]
    assert len(config.sources) == 3
    # $HOSTWATCH_CONFIG is used when --config is absent
    config = load_config(None, environ={"HOSTWATCH_CONFIG": str(main)}, registry=REGISTRY)
    assert config.sources[0] == str(main)


def test_missing_config_file_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.toml"), environ={}, registry=REGISTRY)
    assert "no such config file" in info.value.errors[0]


def test_embedded_default_runs_the_four_host_collectors() -> None:
    config = loads_config(
        EMBEDDED_DEFAULT,
        registry={"collectors": {n: FakeCollector for n in ("cpu", "memory", "disk", "network")}, "outputs": {}},
        environ={},
    )
    assert [s.type for s in config.collectors] == ["cpu", "memory", "disk", "network"]
    assert config.agent.interval == 10.0
    assert config.http.listen == "127.0.0.1:9730"
    assert config.outputs == ()
