"""Which files a logs instance opens: planted symlinks, FIFOs, the agent's own secrets, unreadable files."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.config import ConfigError, convert, loads_config
from agent.emitter import RunEmitter
from agent.runtime import secret_paths
from collectors.logs.logs import LogsCollector
from tests.support import collector_context
from tests.unit.collectors.test_logs_collector import Sink, append, start, until


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


async def run_with(tmp_path: Path, logs: Path, paths: list[str] | None = None, **options) -> tuple[Sink, object]:
    (logs / "app.log").write_text("")
    sink = Sink()
    run = await start(tmp_path, sink, paths or [str(logs / "*.log")], start_at="beginning", **options)
    append(logs / "app.log", ["the real log"])
    await until(lambda: "the real log" in sink.bodies())
    await asyncio.sleep(0.3)  # another scan: a refused file is not retried into a second report
    await run.stop()
    return sink, run


@pytest.mark.parametrize(
    ("target", "reason"),
    [("/proc/self/environ", "system"), ("/etc/passwd", "symlink_outside"), ("/dev/zero", "not_regular")],
)
async def test_a_planted_symlink_to_a_system_or_outside_file_is_never_read(tmp_path, logs, target, reason) -> None:
    (logs / "evil.log").symlink_to(target)
    sink, run = await run_with(tmp_path, logs)
    assert sink.bodies(logs / "evil.log") == []
    assert run.collector.stats["files_refused"] == {reason: 1}, "counted once, not at every scan"
    assert len(run.emitter.errors) == 1 and str(logs / "evil.log") in str(run.emitter.errors[0])


async def test_a_symlink_or_hard_link_to_the_agents_secret_file_is_never_read(tmp_path, logs) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-token-value\n")
    (logs / "token.log").symlink_to(secret)
    os.link(secret, logs / "hard.log")
    sink = Sink()
    (logs / "app.log").write_text("the real log\n")
    config = convert(
        {"paths": [str(logs / "*.log")], "start_at": "beginning", "glob_interval": "200ms"}, LogsCollector.Config
    )
    context = collector_context(tmp_path, denied_paths=frozenset({str(secret)}))
    collector = LogsCollector(config, context)
    emitter = RunEmitter(0, (), sink)
    task = asyncio.create_task(collector.run(emitter))
    await until(lambda: sink.records)
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert all("s3cr3t" not in body for body in sink.bodies())
    assert sink.bodies() == ["the real log"]
    assert collector.stats["files_refused"] == {"secret": 2}


async def test_a_symlink_to_a_file_inside_the_globs_or_the_allow_list_is_read(tmp_path, logs) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "inside.log").write_text("inside the globs\n")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "x.log").write_text("allowed target\n")
    (logs / "inside-link.log").symlink_to(other / "inside.log")
    (logs / "allowed-link.log").symlink_to(allowed / "x.log")
    sink, run = await run_with(
        tmp_path,
        logs,
        [str(logs / "*.log"), str(other / "*.log")],
        follow_symlinks_to=[str(allowed / "*.log")],
    )
    assert sink.bodies(logs / "allowed-link.log") == ["allowed target"]
    # the link and its target are one file: read once, under whichever name was found first
    assert sorted(sink.bodies()) == ["allowed target", "inside the globs", "the real log"]
    assert sum(run.collector.stats["files_refused"].values()) == 0


async def test_a_fifo_matching_the_glob_is_never_opened_and_blocks_nothing(tmp_path, logs) -> None:
    os.mkfifo(logs / "pipe.log")
    _sink, run = await run_with(tmp_path, logs)
    assert run.collector.stats["files_refused"] == {"not_regular": 1}
    assert "FIFO" in str(run.emitter.errors[0])


async def test_a_symlinked_directory_matched_by_a_wildcard_is_not_followed(tmp_path, logs) -> None:
    secret_dir = tmp_path / "private"
    secret_dir.mkdir()
    (secret_dir / "app.log").write_text("private data\n")
    (logs / "real").mkdir()
    (logs / "real" / "app.log").write_text("")
    (logs / "planted").symlink_to(secret_dir, target_is_directory=True)
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "*" / "app.log")], start_at="beginning")
    append(logs / "real" / "app.log", ["real line"])
    await until(lambda: sink.records)
    await run.stop()
    assert sink.bodies() == ["real line"]
    assert run.collector.stats["files_refused"] == {"symlink_outside": 1}


async def test_a_symlink_in_the_configured_directory_itself_is_trusted(tmp_path) -> None:
    real_dir = tmp_path / "data" / "log"
    real_dir.mkdir(parents=True)
    (tmp_path / "varlog").symlink_to(real_dir, target_is_directory=True)  # like /var/log -> /data/log
    (real_dir / "app.log").write_text("")
    sink = Sink()
    run = await start(tmp_path, sink, [str(tmp_path / "varlog" / "*.log")], start_at="beginning")
    append(real_dir / "app.log", ["through the configured directory"])
    await until(lambda: sink.records)
    await run.stop()
    assert sink.bodies() == ["through the configured directory"]
    assert sum(run.collector.stats["files_refused"].values()) == 0


def test_the_engine_denies_the_config_files_and_every_secret_file(tmp_path) -> None:
    token, key = tmp_path / "token", tmp_path / "client.key"
    for secret in (token, key, tmp_path / "pw", tmp_path / "client.crt"):
        secret.write_text("x\n")  # `check` wants them readable
    config = loads_config(
        textwrap.dedent(f"""
            [[outputs.loki]]
            url = "http://127.0.0.1:3100/loki/api/v1/push"
            bearer_token_file = "{token}"
            [[outputs.otlp]]
            endpoint = "http://127.0.0.1:4318"
            basic_auth_user = "u"
            basic_auth_password_file = "{tmp_path / "pw"}"
            tls_cert = "{tmp_path / "client.crt"}"
            tls_key = "{key}"
        """)
    )
    denied = secret_paths(config)
    assert {str(token), str(key), str(tmp_path / "pw")} <= denied
    assert str(tmp_path / "client.crt") not in denied, "a certificate is public"


async def test_an_unreadable_file_is_reported_counted_and_read_once_allowed(tmp_path, logs) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    locked = logs / "locked.log"
    locked.write_text("kept\n")
    locked.chmod(0)
    sink = Sink()
    run = await start(tmp_path, sink, [str(logs / "*.log")], start_at="beginning")
    await until(lambda: run.emitter.errors)
    locked.chmod(0o644)
    await until(lambda: sink.bodies(locked) == ["kept"])
    await run.stop()
    assert run.collector.stats["file_errors"]["open"] >= 1


def test_an_exclude_glob_that_backtracks_in_re_is_linear_on_re2() -> None:
    script = textwrap.dedent("""
        from collectors.logs.discovery import Patterns
        patterns = Patterns(["/var/log/*"], ["*a*a*a*a*a*a*a*a*a*a*a*a*b"], False)
        print(patterns.excluded("/var/log/" + "a" * 200 + ".log"))
    """)
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_a_glob_re2_cannot_compile_is_a_config_error_naming_the_key() -> None:
    text = "[[collectors.logs]]\npaths = ['/var/log/*.log']\nexclude = ['ok', '[z-a].log']\n"
    with pytest.raises(ConfigError) as caught:
        loads_config(text)
    assert "collectors.logs[0].exclude[1]: not a valid glob" in str(caught.value)


def test_symlink_loops_under_double_star_do_not_explode_the_scan(tmp_path) -> None:
    # with glob.iglob, two links to "." make 2**40 paths: the scan never ends
    script = textwrap.dedent(f"""
        import os
        from collectors.logs.discovery import Patterns
        d = {str(tmp_path / "logs")!r}
        os.makedirs(d + "/sub")
        os.symlink(".", d + "/a")
        os.symlink("..", d + "/sub/b")
        open(d + "/sub/x.log", "w").close()
        found, problems, special = Patterns([d + "/**/*.log"], [], False).scan()
        print(sorted(found))
    """)
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr([str(tmp_path / "logs" / "sub" / "x.log")])
