"""``hostwatch redact`` as a process: standard input to standard output, config rules, errors."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support import hostwatch_command

pytestmark = pytest.mark.e2e

CONFIG = """
[agent]
state_dir = "{state}"
[http]
listen = ""
[redaction]
sets = ["secrets", "pii", "network"]
mode = "{mode}"
[[redaction.rules]]
name = "customer-id"
pattern = 'CUST-\\d{{8}}'
"""


def run_redact(tmp_path: Path, stdin: bytes, *, mode: str = "replace", config: str | None = None):
    path = tmp_path / "hostwatch.toml"
    path.write_text(config if config is not None else CONFIG.format(state=tmp_path / "state", mode=mode))
    return subprocess.run(
        [*hostwatch_command(), "redact", "--config", str(path)],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def test_redacts_stdin_with_the_configured_rules(tmp_path: Path):
    key_body = (
        b"MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u\n"
    )
    stdin = (
        b"GET /login?user=bob&password=p%40ss HTTP/1.1 from 203.0.113.9\n"
        b"order for CUST-12345678 by jane@example.org\r\n"
        b"-----BEGIN RSA PRIVATE KEY-----\n" + key_body + b"-----END RSA PRIVATE KEY-----\n"
        b"\xff\xfe not utf-8 but kept\n"
        b"last line without newline, card 4111 1111 1111 1111"
    )
    result = run_redact(tmp_path, stdin)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(b"\n") == [
        b"GET /login?user=bob&password=[REDACTED:password] HTTP/1.1 from [REDACTED:ipv4]",
        b"order for [REDACTED:customer-id] by [REDACTED:email]\r",
        b"-----BEGIN RSA PRIVATE KEY-----",
        b"[REDACTED:private-key]",
        b"[REDACTED:private-key]",
        b"-----END RSA PRIVATE KEY-----",
        b"\xff\xfe not utf-8 but kept",
        b"last line without newline, card [REDACTED:credit-card]",
    ]


def test_hash_mode_is_stable_across_runs(tmp_path: Path):
    stdin = b"user jane@example.org\nuser jane@example.org again\nuser joe@example.org\n"
    first = run_redact(tmp_path, stdin, mode="hash")
    second = run_redact(tmp_path, stdin, mode="hash")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    lines = first.stdout.decode().splitlines()
    tags = [line.split()[1] for line in lines]
    assert tags[0] == tags[1] != tags[2] and tags[0].startswith("[HASH:email:")
    assert b"example.org" not in first.stdout
    assert (tmp_path / "state" / "redaction.key").stat().st_size == 32


def test_a_bad_rule_is_a_config_error_naming_it(tmp_path: Path):
    config = "[[redaction.rules]]\nname = 'broken'\npattern = '(unclosed'\n"
    result = run_redact(tmp_path, b"x\n", config=config)
    assert result.returncode == 2
    assert "redaction.rules[0] (broken).pattern: missing ): (unclosed" in result.stderr.decode()
    assert result.stdout == b""


def test_large_input_streams_through(tmp_path: Path):
    lines = [f"line {i} token=abc{i}def ok".encode() for i in range(200_000)]
    result = run_redact(tmp_path, b"\n".join(lines) + b"\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert len(out) == len(lines)
    assert out[12345] == b"line 12345 token=[REDACTED:token] ok"


def test_an_overlong_line_is_cut_where_no_secret_is_split(tmp_path: Path):
    # 3 MiB on one line, a token every 41 bytes: wherever the 1 MiB cuts fall, they would split one
    token = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
    line = " ".join([token] * (3 * (1 << 20) // (len(token) + 1)))
    result = run_redact(tmp_path, line.encode() + b"\nafter\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert token[:12] not in out and out.count("[REDACTED:github-token]") == line.count(token)
    assert out.endswith("\nafter\n") and out.count("\n") == 2


def test_a_pgp_key_block_is_masked_line_by_line(tmp_path: Path):
    body = [b"lQOYBGZ3k2kBCADFm9TpeN2Y0Xr6sZ0a1vTqCk8r7bQ3xW5mJpL2nH4dFgT6yU8iO0", b"pQ1wE3rT5yU7iO9pA2sD4fG6hJ8kL0zX"]
    begin, end = b"-----BEGIN PGP PRIVATE KEY BLOCK-----", b"-----END PGP PRIVATE KEY BLOCK-----"
    stdin = b"\n".join([b"export:", begin, b"", *body, b"=Xq3p", end])
    result = run_redact(tmp_path, stdin + b"\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(b"\n") == [
        b"export:",
        begin,
        b"",
        *[b"[REDACTED:private-key]"] * 3,
        end,
        b"",
    ]


def _ns(stamp: str) -> tuple[str, int]:
    """An RFC 3339 time from VictoriaLogs as a sortable pair (it drops trailing zeros of the fraction)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return whole, int(fraction.ljust(9, "0"))


@pytest.mark.peers
def test_the_agent_ships_what_hostwatch_redact_prints(tmp_path: Path, victoria_logs):
    from tests.e2e.agentproc import AgentProcess
    from tests.e2e.test_logs_rotation import wait_rows

    rsa = ["MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun", "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u"]
    pgp = ["lQOYBGZ3k2kBCADFm9TpeN2Y0Xr6sZ0a1vTqCk8r7bQ3xW5mJpL2nH4dFgT6yU8iO0", "=Xq3p"]
    lines = [
        "app up, PGPASSWORD=hunter2",
        "-----BEGIN RSA PRIVATE KEY-----",
        *rsa,
        "-----END RSA PRIVATE KEY-----",
        "May  1 10:00:01 web1 app[42]: -----BEGIN PGP PRIVATE KEY BLOCK-----",
        *(f"May  1 10:00:01 web1 app[42]: {line}" for line in pgp),
        "May  1 10:00:01 web1 app[42]: -----END PGP PRIVATE KEY BLOCK-----",
        "Access denied for user 'root'@'localhost' (using password: YES)",
        "done",
    ]
    logs = tmp_path / "logs"
    logs.mkdir()
    # the same [redaction] for the agent and for hostwatch redact: both read this one file
    agent = AgentProcess(
        tmp_path,
        f"""
[redaction]
sets = ["secrets", "pii"]
[[collectors.logs]]
paths = ["{logs}/*.log"]
start_at = "beginning"
[[outputs.loki]]
url = "{victoria_logs.loki_push_url}"
flush_interval = "200ms"
""",
    )
    expected = subprocess.run(
        [*hostwatch_command(), "redact", "--config", str(agent.config)],
        input="\n".join(lines).encode() + b"\n",
        capture_output=True,
        timeout=60,
    ).stdout.decode()
    assert "hunter2" not in expected and rsa[0] not in expected and pgp[0] not in expected
    agent.start()
    try:
        with open(logs / "app.log", "a") as f:
            for i in range(0, len(lines), 2):  # two lines at a time: the blocks span reads
                f.write("".join(line + "\n" for line in lines[i : i + 2]))
                f.flush()
                time.sleep(0.3)
        assert wait_rows(victoria_logs, len(lines), settle=1.0) == len(lines)
        rows = victoria_logs.query("* | fields _time, _msg", limit=100)
        shipped = [row["_msg"] for row in sorted(rows, key=lambda row: _ns(row["_time"]))]
        assert "\n".join(shipped) + "\n" == expected
        assert agent.stop() == 0
    finally:
        agent.kill()
