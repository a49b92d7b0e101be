"""Config loading: lookup order, conf.d merge, interpolation, and path-named errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import pytest

from agent.config import EMBEDDED_DEFAULT, ConfigError, load_config, loads_config
from agent.plugin import Duration, DurationOrZero, PluginConfig, Size


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


def test_embedded_default_runs_node_exporters_default_collectors() -> None:
    """With the real plugins: node_exporter 1.5's default Linux collectors, under hostwatch's plugins."""
    config = loads_config(EMBEDDED_DEFAULT, environ={})
    types = [s.type for s in config.collectors]
    assert types == ["cpu", "memory", "disk", "network", "netclass", "hardware", "system", "storage", "textfile"]
    system = next(s for s in config.collectors if s.type == "system")
    assert sorted(system.config.exclude) == ["interrupts", "processes"]  # not default in node_exporter 1.5
    assert config.agent.interval == 10.0
    assert config.http.listen == "127.0.0.1:9730"
    assert config.outputs == ()


# ------------------------------------------- values that fail at run: rejected by `check` (issue 10)

LOKI = '[[outputs.loki]]\nurl = "http://127.0.0.1:3100/loki/api/v1/push"\n'
LOGS = '[[collectors.logs]]\npaths = ["/var/log/app/*.log"]\n'
MISSING = "/nonexistent/hostwatch-test/secret"

# (config text, the error expected, with the key's path), checked against the real plugins
REJECTED = [
    # zero or tiny sizes: log delivery stalled silently
    (LOKI + "batch_max_bytes = 0", "outputs.loki[0].batch_max_bytes: size must be at least 1KiB"),
    (LOKI + "buffer_max_bytes = 0", "outputs.loki[0].buffer_max_bytes: size must be at least 64KiB"),
    (LOKI + "buffer_max_bytes = 100", "outputs.loki[0].buffer_max_bytes: size must be at least 64KiB"),
    (
        LOKI + 'buffer_max_bytes = "2MiB"',
        "outputs.loki[0].buffer_max_bytes: 2MiB cannot hold one full batch; it must be >= batch_max_bytes (4MiB)",
    ),
    (LOKI + 'batch_max_bytes = "1e400TB"', "outputs.loki[0].batch_max_bytes: invalid size"),
    (LOKI + f'buffer_max_bytes = "{"9" * 400}TB"', "outputs.loki[0].buffer_max_bytes: size must be at most 1PiB"),
    (LOGS + "max_line_bytes = 0", "collectors.logs[0].max_line_bytes: size must be at least 16B"),
    # zero, negative and non-finite durations: busy loops and collectors dying silently
    ('[agent]\ninterval = "0s"', "agent.interval: duration must be greater than 0"),
    ("[agent]\ninterval = nan", "agent.interval: duration must be finite"),
    ("[agent]\ninterval = inf", "agent.interval: duration must be finite"),
    ("[agent]\ninterval = -5", "agent.interval: duration must not be negative"),
    ('[agent]\ninterval = "1us"', "agent.interval: duration must be at least 1ms"),
    ('[agent]\ninterval = "400d"', "agent.interval: duration must be at most 365d"),
    ("[agent]\nshutdown_timeout = -inf", "agent.shutdown_timeout: duration must be finite"),
    ('[[collectors.cpu]]\ninterval = "0s"', "collectors.cpu[0].interval: duration must be greater than 0"),
    ('[[collectors.cpu]]\ntimeout = "0s"', "collectors.cpu[0].timeout: duration must be greater than 0"),
    ('[[collectors.disk]]\nmount_timeout = "0s"', "collectors.disk[0].mount_timeout: duration must be greater than 0"),
    (LOGS + 'glob_interval = "0s"', "collectors.logs[0].glob_interval: duration must be greater than 0"),
    (LOGS + 'poll_interval = "0s"', "collectors.logs[0].poll_interval: duration must be greater than 0"),
    (LOGS + "poll_interval = nan", "collectors.logs[0].poll_interval: duration must be finite"),
    (LOGS + 'partial_line_timeout = "0s"', "collectors.logs[0].partial_line_timeout: duration must be greater"),
    (LOGS + 'rotate_wait = "0s"', "collectors.logs[0].rotate_wait: duration must be greater than 0"),
    (
        LOGS + 'multiline = { start_pattern = "^x", flush_timeout = "0s" }',
        "collectors.logs[0].multiline.flush_timeout: duration must be greater than 0",
    ),
    (LOKI + 'timeout = "0s"', "outputs.loki[0].timeout: duration must be greater than 0"),
    (LOKI + 'flush_interval = "0s"', "outputs.loki[0].flush_interval: duration must be greater than 0"),
    (LOKI + 'retry_initial = "0s"', "outputs.loki[0].retry_initial: duration must be greater than 0"),
    (LOKI + 'retry_max = "0s"', "outputs.loki[0].retry_max: duration must be greater than 0"),
    (LOKI + "retry_max = inf", "outputs.loki[0].retry_max: duration must be finite"),
    (LOKI + 'retry_initial = "1m"', "outputs.loki[0].retry_initial: 60s is longer than retry_max (30s)"),
    # listen
    ('[http]\nlisten = "garbage"', "http.listen: must be host:port with a port 0-65535"),
    ('[http]\nlisten = ":99999"', "http.listen: must be host:port with a port 0-65535"),
    ('[http]\nlisten = "no such host:80"', "http.listen: 'no such host' is neither an IP address nor a host name"),
    ('[http]\nlisten = "[zz]:80"', "http.listen: 'zz' is not an IPv6 address"),
    # headers
    (LOKI + 'headers = { "X-Tenant" = "a\\r\\nX-Injected: 1" }', "outputs.loki[0].headers: header 'X-Tenant'"),
    (LOKI + 'headers = { "X Tenant" = "a" }', "outputs.loki[0].headers: invalid header name 'X Tenant'"),
    (LOKI + 'headers = { "" = "a" }', "outputs.loki[0].headers: invalid header name ''"),
    # URLs
    ('[[outputs.loki]]\nurl = "http://loki host:3100/p"', "outputs.loki[0].url: must not contain spaces"),
    ('[[outputs.loki]]\nurl = "http://loki:99999/p"', "outputs.loki[0].url: invalid port (1-65535)"),
    ('[[outputs.loki]]\nurl = "http://loki:http/p"', "outputs.loki[0].url: invalid port (1-65535)"),
    ('[[outputs.loki]]\nurl = "loki:3100/p"', "outputs.loki[0].url: must start with http:// or https://"),
    ('[[outputs.loki]]\nurl = "http:///p"', "outputs.loki[0].url: has no host"),
    ('[[outputs.remote_write]]\nurl = "http://[::1/w"', "outputs.remote_write[0].url: Invalid IPv6 URL"),
    ('[[outputs.otlp]]\nendpoint = "otel:4318"', "outputs.otlp[0].endpoint: must start with http:// or https://"),
    (
        '[[outputs.otlp]]\nprotocol = "grpc"\nendpoint = "otel:70000"',
        "outputs.otlp[0].endpoint: invalid port (1-65535)",
    ),
    ('[[collectors.queue_rabbitmq]]\nurl = "rabbit:15672"', "collectors.queue_rabbitmq[0].url: must start with"),
    ('[[collectors.queue_redis]]\nurl = "redis://r:0/0"', "collectors.queue_redis[0].url: invalid port"),
    # secret and TLS files that are not there
    (LOKI + f'bearer_token_file = "{MISSING}"', f"outputs.loki[0].bearer_token_file: cannot read {MISSING}"),
    (
        LOKI + f'basic_auth_user = "u"\nbasic_auth_password_file = "{MISSING}"',
        f"outputs.loki[0].basic_auth_password_file: cannot read {MISSING}",
    ),
    (LOKI + f'tls_ca = "{MISSING}"', "outputs.loki[0].tls_ca: cannot read"),
    (LOKI + 'tls_ca = "/"', "outputs.loki[0].tls_ca: / is not a regular file"),
    (
        LOKI + f'tls_cert = "{MISSING}.crt"\ntls_key = "{MISSING}.key"',
        "outputs.loki[0].tls_key: cannot read",
    ),
    (f'[[collectors.queue_redis]]\npassword_file = "{MISSING}"', "collectors.queue_redis[0].password_file: cannot"),
    (f'[[collectors.queue_rabbitmq]]\ntls_ca = "{MISSING}"', "collectors.queue_rabbitmq[0].tls_ca: cannot read"),
    # label names
    ('[agent]\nlabels = { __name__ = "x" }', "agent.labels: label name '__name__' is reserved"),
    ('[agent]\nlabels = { __meta = "x" }', "agent.labels: label name '__meta' is reserved"),
    ('[agent]\nlabels = { "" = "x" }', "agent.labels: invalid label name ''"),
    ('[agent]\nlabels = { "team-name" = "x" }', "agent.labels: invalid label name 'team-name'"),
    ('[agent]\nlabels = { "1st" = "x" }', "agent.labels: invalid label name '1st'"),
    ('[agent]\nlabels = { instance = "x" }', "agent.labels: label name 'instance' is reserved: set it with [agent]"),
    ('[agent]\nlabels = { job = "x" }', "agent.labels: label name 'job' is reserved: set it with [agent] job"),
    ('[[collectors.cpu]]\nlabels = { instance = "x" }', "collectors.cpu[0].labels: label name 'instance' is reserved"),
    ('[[collectors.cpu]]\nlabels = { __name__ = "x" }', "collectors.cpu[0].labels: label name '__name__' is reserved"),
    # paths
    ('[agent]\nstate_dir = "var/lib/hostwatch"', "agent.state_dir: must be an absolute path"),
    ('[agent]\nproc_root = "host/proc"', "agent.proc_root: must be an absolute path"),
    # deep nesting: a RecursionError in the TOML parser
    ("a = " + "[" * 5000 + "]" * 5000, "invalid TOML: arrays or inline tables nested too deeply"),
]


@pytest.mark.parametrize(("text", "expected"), REJECTED, ids=[r[1].split(":")[0] + ":" + r[0][-24:] for r in REJECTED])
def test_values_that_fail_at_run_are_config_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(text, environ={})  # the real plugins' Config types
    assert any(expected in e for e in info.value.errors), info.value.errors


def test_bounds_leave_meaningful_values_alone(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    config = loads_config(
        '[agent]\nshutdown_timeout = "0s"\nlabels = { env = "prod", _x = "y" }\n'
        '[http]\nlisten = "[::1]:0"\n'
        '[[collectors.cpu]]\nlabels = { job = "node" }\ninterval = "1ms"\n'
        + LOKI
        + f'retry_max_elapsed = "0s"\nbatch_max_items = 0\nbatch_max_bytes = "1MiB"\nbuffer_max_bytes = "1MiB"\n'
        f'bearer_token_file = "{token}"\nheaders = {{ "X-Scope-OrgID" = "a\\tb" }}\n',
        environ={},
    )
    (loki,) = config.outputs
    assert (loki.common.retry_max_elapsed, loki.common.batch_max_items) == (0, 0)  # 0: never / the default
    assert loki.common.buffer_max_bytes == loki.common.batch_max_bytes == 1024 * 1024
    assert config.agent.shutdown_timeout == 0
    assert config.collectors[0].common.labels == {"job": "node"}
    assert config.warnings == ()


def test_every_bad_value_of_a_section_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(
            '[agent]\ninterval = "0s"\nstate_dir = "rel"\n[http]\nlisten = "x"\n'
            + LOKI
            + 'timeout = "0s"\nbatch_max_bytes = 0\nheaders = { "a b" = "c" }\n',
            environ={},
        )
    paths = {e.split(":")[0] for e in info.value.errors}
    assert paths == {
        "agent.interval",
        "agent.state_dir",
        "http.listen",
        "outputs.loki[0].timeout",
        "outputs.loki[0].batch_max_bytes",
        "outputs.loki[0].headers",
    }, info.value.errors


def test_url_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        loads_config('[[outputs.loki]]\nurl = "http://admin:hunter2@loki:99999/p"', environ={})
    assert "outputs.loki[0].url: invalid port" in info.value.errors[0]
    assert "hunter2" not in "\n".join(info.value.errors) and "admin:***@loki" in info.value.errors[0]


@pytest.mark.parametrize(
    ("listen", "warned"),
    [
        *[(listen, True) for listen in ("0.0.0.0:9730", ":9730", "[::]:9730", "10.1.2.3:9730", "node1:9730")],
        *[(listen, False) for listen in ("127.0.0.1:9730", "127.0.0.2:9730", "[::1]:9730", "localhost:9730", "")],
    ],
)
def test_a_listen_address_off_loopback_is_a_warning(listen: str, warned: bool) -> None:
    config = loads_config(f'[http]\nlisten = "{listen}"\n', registry=REGISTRY, environ={})
    assert bool(config.warnings) == warned
    if warned:
        assert config.warnings[0].startswith("http.listen: ") and "not a loopback address" in config.warnings[0]


def test_duration_and_size_types_bound_every_value() -> None:
    for bad in (0, "0s", float("nan"), float("inf"), -1, "-1s", "1ns"):
        with pytest.raises(ValueError):
            Duration.parse(bad)
    assert DurationOrZero.parse("0s") == 0
    with pytest.raises(ValueError):
        DurationOrZero.parse(float("nan"))
    for bad in (0, -1, "0B", "9" * 400 + "TB", 2**70):
        with pytest.raises(ValueError):
            Size.parse(bad)
    assert Size.at_least("1KiB").parse("2KiB") == 2048
    with pytest.raises(ValueError, match="at least 1KiB"):
        Size.at_least("1KiB").parse(1000)
    assert Size.at_least("1KiB") is Size.at_least(1024)  # one type per floor


# ----------------------------------------------- `hostwatch check` as a process: exit 2, no traceback

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # `python -m agent.cli` from this checkout (not the installed script): the same code the test imports
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


CLI_CASES = [
    ("listen-garbage", b'[http]\nlisten = "garbage"\n', "http.listen: must be host:port"),
    ("listen-port", b'[http]\nlisten = ":99999"\n', "http.listen: must be host:port"),
    ("huge-size", (LOKI + f'buffer_max_bytes = "{"9" * 400}TB"\n').encode(), "outputs.loki[0].buffer_max_bytes:"),
    ("deep", ("a = " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested too deeply"),
    ("not-utf8", b'[agent]\nhostname = "h\xff\xfe"\n', "not UTF-8 (byte 0xff at offset 21)"),
    ("zero-batch", (LOKI + "batch_max_bytes = 0\n").encode(), "outputs.loki[0].batch_max_bytes: size must be"),
    ("secret-file", (LOKI + f'bearer_token_file = "{MISSING}"\n').encode(), "outputs.loki[0].bearer_token_file:"),
    ("crlf-header", (LOKI + 'headers = { "X-A" = "a\\r\\nB: c" }\n').encode(), "outputs.loki[0].headers:"),
    ("interval-nan", b"[agent]\ninterval = nan\n", "agent.interval: duration must be finite"),
]


@pytest.mark.parametrize(("name", "content", "expected"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_check_exits_2_naming_the_key(tmp_path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / f"{name}.toml"
    path.write_bytes(content)
    result = run_cli("check", "--config", str(path))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr


def test_check_warns_when_listen_is_not_loopback(tmp_path) -> None:
    path = tmp_path / "open.toml"
    path.write_text('[http]\nlisten = "0.0.0.0:9730"\n')
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "config warning: http.listen: '0.0.0.0:9730' is not a loopback address" in result.stderr


def test_run_logs_the_warning_at_start(tmp_path) -> None:
    from tests.e2e.agentproc import AgentProcess

    agent = AgentProcess(tmp_path, "", listen_host="0.0.0.0")
    try:
        agent.start()
        assert agent.stop() == 0
    finally:
        agent.close()
    lines = agent.stderr().splitlines()  # JSON lines (stderr is a file); the warning comes before "started"
    warning = [json.loads(line) for line in lines if "not a loopback address" in line]
    assert warning and warning[0]["level"].upper() == "WARNING", lines


def test_a_table_nested_deeper_than_the_walk_is_an_error_not_a_crash() -> None:
    from agent.config import parse_config

    deep: dict = {}
    for _ in range(5000):  # a dict built in Python (conf.d merge, embedding): no parser stopped it
        deep = {"x": deep}
    with pytest.raises(ConfigError) as info:
        parse_config({"agent": {"labels": deep}}, environ={}, registry=REGISTRY)
    assert info.value.errors == ["arrays or tables nested too deeply"]


def test_hostname_and_state_dir_are_resolved_once_when_the_config_is_built(monkeypatch) -> None:
    """Every output, collector and endpoint of one configuration sees the same host name and
    state directory, taken from the environment the configuration was read in."""
    import socket

    calls: list[int] = []
    monkeypatch.setattr(socket, "gethostname", lambda: calls.append(1) or f"host{len(calls)}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/from/the/process")
    config = loads_config("", registry=REGISTRY, environ={"XDG_STATE_HOME": "/from/the/config/env"})
    assert [config.hostname, config.hostname, config.hostname] == ["host1"] * 3
    assert config.state_dir == Path("/from/the/config/env/hostwatch")
    monkeypatch.setenv("XDG_STATE_HOME", "/changed/later")
    assert config.state_dir == Path("/from/the/config/env/hostwatch")
    assert len(calls) == 1
    named = loads_config("[agent]\nhostname = 'web-1'\nstate_dir = '/srv/hw'\n", registry=REGISTRY, environ={})
    assert (named.hostname, named.state_dir) == ("web-1", Path("/srv/hw"))


def test_docs_command_prints_a_plugins_sample_from_its_schema(capsys) -> None:
    """`python -m agent.config.docs NAME`: the description as ## prose, the default as `# key = value`."""
    from agent.config.docs import main

    assert main(["cpu"]) == 0
    printed = capsys.readouterr().out
    assert "[[collectors.cpu]]" in printed
    assert "  # guest = true\n" in printed
    assert "  ## Export node_cpu_guest_seconds_total" in printed
    assert main(["outputs", "loki"]) == 0
    assert '  url = ""  # required\n' in capsys.readouterr().out
    assert main(["no_such_plugin"]) == 2
    assert "unknown plugin" in capsys.readouterr().err
