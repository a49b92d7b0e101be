"""All-or-nothing reloads (the agent in-process) and credential masking in reports and logs."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.logsetup import SecretMask, setup_logging
from agent.pipeline import ApplyError
from agent.runtime import Agent
from agent.secrets import config_secrets, mask_url_credentials


def config_file(tmp_path: Path, name: str, outputs: str) -> Path:
    path = tmp_path / name
    agent = f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "100ms"\n'
    path.write_text(f'{agent}[http]\nlisten = ""\n[[collectors.memory]]\n{outputs}')
    return path


REMOTE_WRITE = '[[outputs.remote_write]]\nurl = "http://127.0.0.1:9/api/v1/write"\nbuffer = "memory"\n'


# ------------------------------------------------------------------ reloads


@pytest.mark.parametrize(
    "breakage",
    [
        'basic_auth_user = "u"\nbasic_auth_password_file = "{tmp}/missing"\n',
        'tls_ca = "{tmp}/garbage.pem"\n',
    ],
    ids=["missing-password-file", "tls-ca-that-does-not-load"],
)
async def test_a_reload_that_cannot_start_an_output_changes_nothing(tmp_path: Path, breakage: str) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    good = load_config(str(config_file(tmp_path, "good.toml", REMOTE_WRITE)))
    extra = '[[outputs.remote_write]]\nalias = "second"\nurl = "http://127.0.0.1:9/w"\nbuffer = "memory"\n'
    broken_body = REMOTE_WRITE + breakage.format(tmp=tmp_path) + extra
    # the password file is there for `check` (the loader reads it) and gone when the reload applies
    (tmp_path / "missing").write_text("pw\n")
    broken = load_config(str(config_file(tmp_path, "broken.toml", broken_body)))
    (tmp_path / "missing").unlink()
    agent = Agent(good)
    await agent.start()
    try:
        (_, runner) = agent.pipeline.runners["remote_write"]
        collectors = dict(agent.runners)
        with pytest.raises(ApplyError, match="remote_write"):
            await agent.reload(broken)
        assert agent.config is good
        assert agent.pipeline.runners["remote_write"][1] is runner
        assert not runner.stopping and all(not t.done() for lane in runner.lanes.values() for t in lane._tasks)
        assert list(agent.pipeline.runners) == ["remote_write"]  # "second" was not started either
        assert agent.runners == collectors
        assert agent.readiness()[0] or "failing" in " ".join(agent.readiness()[1])
    finally:
        await agent.stop()


async def test_a_good_reload_after_a_failed_one_applies(tmp_path: Path) -> None:
    good = load_config(str(config_file(tmp_path, "good.toml", REMOTE_WRITE)))
    body = REMOTE_WRITE + f'basic_auth_user = "u"\nbasic_auth_password_file = "{tmp_path}/pw"\n'
    (tmp_path / "pw").write_text("pw\n")
    later = load_config(str(config_file(tmp_path, "later.toml", body)))
    (tmp_path / "pw").unlink()  # removed between `check` and the reload
    agent = Agent(good)
    await agent.start()
    try:
        with pytest.raises(ApplyError):
            await agent.reload(later)
        (tmp_path / "pw").write_text("pw\n")
        await agent.reload(later)
        assert agent.config is later
        assert agent.pipeline.runners["remote_write"][0][0].config.basic_auth_user == "u"
    finally:
        await agent.stop()


# ------------------------------------------------------------------ masking


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("InvalidUrlClientError http://admin:s3cr3t@127.0.0.1:65536/x", "http://admin:***@127.0.0.1:65536/x"),
        ("got 'ftp://u:p@ss@h/x'", "got 'ftp://u:***@h/x'"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("http://user@h/x and http://h:80/x", "http://user@h/x and http://h:80/x"),
    ],
)
def test_url_passwords_are_masked_in_any_text(text: str, masked: str) -> None:
    assert masked in mask_url_credentials(text)


async def test_health_detailed_and_ready_mask_stored_error_strings(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-123456\n")
    url = "http://admin:s3cr3t@127.0.0.1:9/api/v1/write"
    body = f'[[outputs.remote_write]]\nurl = "{url}"\nbuffer = "memory"\nbearer_token_file = "{tmp_path}/token"\n'
    agent = Agent(load_config(str(config_file(tmp_path, "c.toml", body))))
    await agent.start()
    try:
        (_, runner) = agent.pipeline.runners["remote_write"]
        # what aiohttp says of a URL it cannot use, and a server that echoes the token
        runner.note_error(f"InvalidUrlClientError: {url}")
        runner.consecutive_failures = 99
        runner.dropped(1, "rejected", "HTTP 401: bad token tok-123456")
        ok, reasons = agent.readiness()
        assert not ok and "admin:***@" in reasons[0]
        text = str(reasons) + str(agent.detailed())
        assert "s3cr3t" not in text and "tok-123456" not in text
    finally:
        await agent.stop()


def with_logging(run) -> str:
    stream = io.StringIO()
    own, root = logging.getLogger("hostwatch"), logging.getLogger()
    saved = own.handlers[:], own.level, own.propagate, root.handlers[:]
    try:
        mask = setup_logging("info", stream=stream, json_lines=True)
        run(mask)
    finally:
        own.handlers[:], own.level, own.propagate, root.handlers[:] = saved
    return stream.getvalue()


def test_logged_exceptions_and_library_warnings_are_masked() -> None:
    def run(mask: SecretMask) -> None:
        mask.add(["known-secret"])
        try:
            raise ValueError("cannot use http://admin:s3cr3t@h/x with known-secret")
        except ValueError:
            logging.getLogger("hostwatch.test").exception("failed")
        logging.getLogger("asyncio").error("Task exception: http://admin:s3cr3t@h/x")

    out = with_logging(run)
    assert "ValueError" in out and "Task exception" in out
    assert "s3cr3t" not in out and "known-secret" not in out


def test_a_reloaded_configs_secrets_join_the_mask(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("new-file-pw\n")
    body = REMOTE_WRITE.replace("127.0.0.1:9", "admin:n3wpass@127.0.0.1:9") + (
        f'basic_auth_user = "u"\nbasic_auth_password_file = "{tmp_path}/pw"\n'
    )
    new = load_config(str(config_file(tmp_path, "new.toml", body)))

    def run(mask: SecretMask) -> None:
        mask.add(["old-secret"])
        mask.add(config_secrets(new))
        log = logging.getLogger("hostwatch.test")
        log.warning("quoting n3wpass, new-file-pw and old-secret")

    out = with_logging(run)
    assert "n3wpass" not in out and "new-file-pw" not in out and "old-secret" not in out


async def test_what_arrives_while_a_changed_output_drains_goes_to_its_new_instance(tmp_path: Path) -> None:
    from agent.model import Sample

    # the backend is down: the old instance drains for the whole shutdown_timeout (100 ms)
    old = load_config(str(config_file(tmp_path, "old.toml", REMOTE_WRITE + 'flush_interval = "10ms"\n')))
    new = load_config(str(config_file(tmp_path, "new.toml", REMOTE_WRITE + 'flush_interval = "7s"\n')))
    agent = Agent(old)
    await agent.pipeline.apply(old)
    try:
        agent.pipeline.publish_samples("before", [Sample("before_swap", 1.0, "gauge", (), time.time_ns())])
        await asyncio.sleep(0.1)  # queued in the old instance, which cannot deliver it
        swap = asyncio.create_task(agent.reload(new))
        await asyncio.sleep(0.03)  # the old instance is draining now
        assert not swap.done()
        agent.pipeline.publish_samples("during", [Sample("during_swap", 1.0, "gauge", (), time.time_ns())])
        await swap
        (_, runner) = agent.pipeline.runners["remote_write"]
        assert runner.common.flush_interval == 7
        lane = next(iter(runner.lanes.values()))
        assert [s.name for s in lane.pending] == ["during_swap"]
    finally:
        await agent.stop()


async def test_a_reload_logs_the_new_configs_warnings_as_start_does(tmp_path: Path, caplog) -> None:
    from agent.runtime import _reload

    agent = Agent(load_config(str(config_file(tmp_path, "good.toml", ""))))
    await agent.start()
    try:
        exposed = config_file(tmp_path, "exposed.toml", "").read_text().replace('listen = ""', 'listen = "0.0.0.0:0"')
        (tmp_path / "exposed.toml").write_text(exposed)
        caplog.set_level(logging.WARNING, logger="hostwatch.config")
        await _reload(agent, str(tmp_path / "exposed.toml"), lambda _: None)
        assert agent.config.http.listen == "0.0.0.0:0"
        assert any("http.listen" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    finally:
        await agent.stop()
