"""Private keys spread over lines: the agent's tailer and ``hostwatch redact`` mask them alike."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import random
import time
from pathlib import Path

import pytest

from agent.config import RedactionSection, convert
from agent.emitter import RunEmitter
from agent.redact import Redactor, redact_stream
from agent.redact_blocks import MAX_BYTES, MAX_LINES, BlockState
from collectors.logs.logs import LogsCollector
from tests.support import collector_context

MARK = "[REDACTED:private-key]"
RNG = random.Random(12)


def body(lines: int, width: int = 64, prefix: bytes = b"") -> list[str]:
    """Key-shaped base64 lines (random, so nothing here is a real key)."""
    data = base64.b64encode(prefix + RNG.randbytes(lines * width * 3 // 4)).decode()
    return [data[i : i + width] for i in range(0, len(data), width)][:lines]


RSA = body(12, prefix=b"0\x82\x04\xa4\x02\x01\x00")
OPENSSH = body(7, width=70, prefix=b"openssh-key-v1\x00")
PGP = body(9)
EC = body(3)
ENCRYPTED = body(5)
SSH2 = body(4)
OPENVPN = [RNG.randbytes(16).hex() for _ in range(4)]
SECRET_LINES = RSA + OPENSSH + PGP + EC + ENCRYPTED + SSH2 + OPENVPN + ["=Xq3p"]

CORPUS = [
    "2024-05-01T10:00:00Z app starting, password=hunter2 for the admin",
    "-----BEGIN RSA PRIVATE KEY-----",
    *RSA[:-1],
    RSA[-1][:20] + "-----END RSA PRIVATE KEY-----",  # the last line glued to the END marker
    "a normal line after the key, token=abcdef123456",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    *OPENSSH,
    "-----END OPENSSH PRIVATE KEY-----",
    "gpg export follows",
    "-----BEGIN PGP PRIVATE KEY BLOCK-----",
    "Version: GnuPG v2",
    "Comment: exported by the backup job",
    "",
    *PGP,
    "=Xq3p",
    "-----END PGP PRIVATE KEY BLOCK-----",
    # a key logged through syslog: every line has a prefix, which stays
    "May  1 10:00:01 web1 app[42]: loaded key -----BEGIN EC PRIVATE KEY-----",
    *(f"May  1 10:00:01 web1 app[42]: {line}" for line in EC),
    "May  1 10:00:01 web1 app[42]: -----END EC PRIVATE KEY-----",
    "-----BEGIN ENCRYPTED PRIVATE KEY-----",
    "Proc-Type: 4,ENCRYPTED",
    "DEK-Info: AES-128-CBC,7F4A0D1E2C3B4A5968778695A4B3C2D1",
    *ENCRYPTED,
    "-----END ENCRYPTED PRIVATE KEY-----",
    "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----",
    *SSH2,
    "---- END SSH2 ENCRYPTED PRIVATE KEY ----",
    "-----BEGIN OpenVPN Static key V1-----",
    *OPENVPN,
    "-----END OpenVPN Static key V1-----",
    '{"msg":"inline","key":"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAAS'
    '\\n-----END PRIVATE KEY-----\\n"}',
    "a certificate is public: -----BEGIN CERTIFICATE----- stays",
    "-----BEGIN CERTIFICATE-----",
    "MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJRTES",
    "-----END CERTIFICATE-----",
    "done, card 4111 1111 1111 1111",
]
AFTER_RSA = CORPUS.index("a normal line after the key, token=abcdef123456")


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor.from_config(RedactionSection(), state_dir=Path("/nonexistent"))


def through_redact(redactor: Redactor, lines: list[str], *, chunk: int = 37) -> list[str]:
    """``hostwatch redact``'s path: the lines as one stream, read in small pieces."""
    out = io.BytesIO()
    raw = ("\n".join(lines) + "\n").encode()
    redact_stream(redactor, io.BufferedReader(io.BytesIO(raw), buffer_size=chunk), out, chunk=chunk)
    return out.getvalue().decode().split("\n")[:-1]


async def through_agent(
    tmp_path: Path, redactor: Redactor, files: dict[str, list[str]], expect: int, **options
) -> dict[str, list[str]]:
    """The agent's path: the logs collector tails the files (appended in pieces) and redacts what it reads."""
    logs = tmp_path / "logs"
    logs.mkdir()
    records = []

    async def sink(batch, on_durable) -> None:
        records.extend(batch)
        if on_durable is not None:
            asyncio.get_running_loop().call_soon(on_durable)

    fast = {"glob_interval": "100ms", "poll_interval": "50ms", "partial_line_timeout": "300ms"}
    config = convert({"paths": [str(logs / "*.log")], "start_at": "beginning", **fast, **options}, LogsCollector.Config)
    context = collector_context(tmp_path, redactor=redactor)
    collector = LogsCollector(config, context)
    task = asyncio.create_task(collector.run(RunEmitter(time.time_ns(), (), sink)))
    try:
        await asyncio.sleep(0.2)
        for start in range(0, max(map(len, files.values())), 5):  # five lines at a time, files interleaved
            for name, lines in files.items():
                with open(logs / name, "a") as f:
                    f.writelines(line + "\n" for line in lines[start : start + 5])
            await asyncio.sleep(0.06)
        deadline = time.monotonic() + 10
        while len(records) < expect and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    by_file: dict[str, list[str]] = {name: [] for name in files}
    for record in records:
        by_file[Path(dict(record.labels)["filename"]).name].append(record.body)
    return by_file


def assert_masked(out: list[str]) -> None:
    text = "\n".join(out)
    leaked = [line for line in SECRET_LINES if line in text]
    assert leaked == [], leaked


async def test_the_agent_and_hostwatch_redact_give_the_same_output_and_leak_no_key(tmp_path, redactor):
    expected = through_redact(redactor, CORPUS)
    assert_masked(expected)
    assert expected[0] == "2024-05-01T10:00:00Z app starting, password=[REDACTED:password] for the admin"
    rotated = CORPUS[AFTER_RSA:] + CORPUS[:AFTER_RSA]  # another file, its blocks at other offsets
    got = await through_agent(tmp_path, redactor, {"a.log": CORPUS, "b.log": rotated}, expect=2 * len(CORPUS))
    assert got["a.log"] == expected
    assert got["b.log"] == through_redact(redactor, rotated)
    assert_masked(got["b.log"])


def test_what_a_masked_block_looks_like(redactor):
    out = through_redact(redactor, CORPUS)
    i = CORPUS.index("-----BEGIN RSA PRIVATE KEY-----")
    assert out[i : i + 3] == ["-----BEGIN RSA PRIVATE KEY-----", MARK, MARK]
    assert out[i + len(RSA)] == MARK + "-----END RSA PRIVATE KEY-----"
    j = CORPUS.index("-----BEGIN PGP PRIVATE KEY BLOCK-----")
    assert out[j : j + 6] == ["-----BEGIN PGP PRIVATE KEY BLOCK-----", MARK, MARK, "", MARK, MARK]
    k = CORPUS.index("May  1 10:00:01 web1 app[42]: loaded key -----BEGIN EC PRIVATE KEY-----")
    assert out[k + 1] == "May  1 10:00:01 web1 app[42]: " + MARK  # the syslog prefix stays
    assert out[k + len(EC) + 1] == "May  1 10:00:01 web1 app[42]: -----END EC PRIVATE KEY-----"
    cert = CORPUS.index("-----BEGIN CERTIFICATE-----")
    assert out[cert - 1 : cert + 3] == CORPUS[cert - 1 : cert + 3]  # certificates are public
    assert out[-1] == "done, card [REDACTED:credit-card]"
    assert '"key":"-----BEGIN PRIVATE KEY-----[REDACTED:private-key]-----END PRIVATE KEY-----' in out[-6]


async def test_a_multiline_record_masks_the_same_lines(tmp_path, redactor):
    # with multiline every record starts at a timestamp; the key is inside one record
    lines = [f"2024-05-01T10:00:0{i}Z line {i}" for i in range(3)]
    lines[1:2] = ["2024-05-01T10:00:01Z key follows -----BEGIN RSA PRIVATE KEY-----", *RSA]
    lines.insert(len(RSA) + 2, "-----END RSA PRIVATE KEY-----")
    multiline = {"start_pattern": r"^\d{4}-", "flush_timeout": "200ms"}
    got = await through_agent(tmp_path, redactor, {"m.log": lines}, expect=3, multiline=multiline)
    records = got["m.log"]
    assert len(records) == 3
    assert_masked(records)
    # the record is the lines hostwatch redact prints, joined
    assert "\n".join(records) == "\n".join(through_redact(redactor, lines))


def test_one_state_per_stream_and_batches_carry_it(redactor):
    streams = redactor.streams()
    assert streams(["-----BEGIN PRIVATE KEY-----"], "a") == ["-----BEGIN PRIVATE KEY-----"]
    assert streams([RSA[0]], "b") == [RSA[0]]  # another file: not inside a block
    assert streams([RSA[1], RSA[2]], "a") == [MARK, MARK]
    assert streams(["-----END PRIVATE KEY-----", RSA[3]], "a") == ["-----END PRIVATE KEY-----", RSA[3]]
    state = BlockState()
    assert redactor.redact_lines(["x", "-----BEGIN DSA PRIVATE KEY-----"], state)[1].endswith("-----")
    assert state.inside and redactor.redact_lines([RSA[4]], state) == [MARK]
    # without a state a call is a stream of its own
    assert redactor.redact_lines([RSA[4]]) == [RSA[4]]


def test_untouched_lines_keep_their_identity(redactor):
    # the tailer tells the lines redaction rewrote from the others by identity
    lines = ["plain", "-----BEGIN PRIVATE KEY-----", RSA[0], "-----END PRIVATE KEY-----", "also plain", "pwd=x1y2"]
    out = redactor.redact_lines(lines, BlockState())
    assert [a is b for a, b in zip(lines, out, strict=True)] == [True, True, False, True, True, False]


def test_a_block_that_never_ends_stops_after_its_bound(redactor, caplog):
    state = BlockState()
    lines = ["-----BEGIN RSA PRIVATE KEY-----", *(f"line {i} with nothing in it" for i in range(MAX_LINES + 5))]
    with caplog.at_level(logging.WARNING, logger="hostwatch.redact"):
        out = redactor.redact_lines(lines, state)
    assert out[1 : MAX_LINES + 1] == [MARK] * MAX_LINES
    assert out[MAX_LINES + 1 :] == lines[MAX_LINES + 1 :]
    assert not state.inside and "masking stops there" in caplog.text
    long_lines = ["-----BEGIN RSA PRIVATE KEY-----", *(["x" * 100_000] * 4)]
    out = redactor.redact_lines(long_lines, BlockState())
    assert out[1:4] == [MARK] * 3 and out[4] == long_lines[4]  # 256 KiB reached on the third


def test_pii_only_has_no_blocks():
    redactor = Redactor.from_config(RedactionSection(sets=["pii"]), state_dir=Path("/nonexistent"))
    lines = ["-----BEGIN PRIVATE KEY-----", RSA[0], "-----END PRIVATE KEY-----"]
    assert redactor.redact_lines(lines, BlockState()) == lines
    assert MAX_BYTES == 256 << 10


def test_crlf_lines_keep_their_carriage_return(redactor):
    lines = ["-----BEGIN PRIVATE KEY-----\r", RSA[0] + "\r", "-----END PRIVATE KEY-----\r"]
    assert redactor.redact_lines(lines, BlockState()) == [lines[0], MARK + "\r", lines[2]]


def test_streams_remember_a_bounded_number_of_open_blocks(redactor, monkeypatch, caplog):
    monkeypatch.setattr("agent.redact.MAX_STREAMS", 2)
    streams = redactor.streams()
    for key in ("a", "b", "c"):
        streams(["-----BEGIN PRIVATE KEY-----"], key)
    assert "forgetting a's" in caplog.text
    assert streams([RSA[0]], "a") == [RSA[0]]  # forgotten: the oldest goes first
    assert streams([RSA[0]], "c") == [MARK]
    assert streams(["-----END PRIVATE KEY-----"], "c") and streams([RSA[1]], "c") == [RSA[1]]


def test_many_streams_in_one_call_redact_as_stream_by_stream(redactor):
    """Streams.many (the tailer's round: lines of many files at once) gives what one call per file gives,
    key blocks included, and keeps each file's block state."""
    groups = [
        ["password=hunter2 login", "plain"],
        ["-----BEGIN PRIVATE KEY-----", RSA[0]],
        ["token: ghp_" + "a" * 36, "again password=x"],
    ]
    keys = ["a", "b", "c"]
    one_by_one = redactor.streams()
    expected = [line for lines, key in zip(groups, keys, strict=True) for line in one_by_one(lines, key)]
    batched = redactor.streams()
    assert batched.many(groups, keys) == expected
    assert batched.many([[RSA[1]], [RSA[1]]], ["b", "a"]) == [MARK, RSA[1]], "b is still inside its key block"
    plain = [["password=a"], ["user=b"], ["nothing"]]
    assert batched.many(plain, ["x", "y", "z"]) == [redactor.redact(line) for lines in plain for line in lines]


LEVEL = r"\b(ERROR|WARN|INFO)\b"
REAL_LOGS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real"


def finding_cases() -> dict[str, list[list[str]]]:
    """Rounds as the tailer hands them on: the lines of a few files each."""
    cases: dict[str, list[list[str]]] = {}
    for path in sorted(REAL_LOGS.glob("*.log")) if REAL_LOGS.is_dir() else ():
        lines = path.read_text(errors="replace").split("\n")[:3000]
        cases[path.name] = [lines[i : i + 700] for i in range(0, len(lines), 700)]
    cases["sparse, secrets and levels"] = [
        [f"GET /item/{i} 200" for i in range(100)] + ["ERROR disk full", "login password=hunter2", "WARN x"],
        ["a@example.com wrote", *(f"user {i} ok" for i in range(100)), "INFO-like INFOS not a word"],
    ]
    return cases


def test_a_round_redacted_with_a_pattern_found_in_the_same_pass_is_the_round_redacted(redactor):
    """Streams.many_finding (the tailer's round, with level words searched in the same RE2 pass): the
    lines of Streams.many, and every line the pattern matches in, or every line a rule rewrote, named;
    on real logs and on rounds where most lines stop the scan, a line holds a newline or a key block
    begins (then nothing is named, and the caller searches)."""
    import re

    cases = finding_cases()
    cases["a level word on every line"] = [[f"INFO request {i} password=p{i}" for i in range(200)]]
    cases["a record holding a newline"] = [["first", "INFO two\nlines", "last"], ["other"]]
    cases["a key block begins"] = [["ERROR before", "-----BEGIN PRIVATE KEY-----", *RSA[:3]], ["x"]]
    # where most lines stop the scan for the rules alone (sshd's "Failed password for", a W3C or JSON
    # log's many candidates the rules then reject), the rules' own scan gives up too: nothing is named
    falls_back = {"a level word on every line", "a record holding a newline", "a key block begins"}
    falls_back |= {"iis_w3c.log", "linux_auth_sshd.log", "nginxplus_status_json.log"}
    covered: dict[str, tuple[int, int]] = {}  # lines the pattern matches, lines the rules rewrote
    for name, groups in cases.items():
        keys = [f"{name}:{i}" for i in range(len(groups))]
        lines, found = redactor.streams().many_finding(groups, keys, LEVEL)
        assert lines == redactor.streams().many(groups, keys), name
        assert (found is None) == (name in falls_back), name
        if found is None:
            continue
        flat = [line for group in groups for line in group]
        assert found == sorted(set(found)), name
        matched = {i for i, line in enumerate(flat) if re.search(LEVEL, line)}
        rewritten = {i for i, (a, b) in enumerate(zip(flat, lines, strict=True)) if a is not b}
        assert matched | rewritten <= set(found), name
        assert len(found) < len(flat) / 4, name  # one pass: few lines stopped it
        covered[name] = (len(matched), len(rewritten))
    # the check above had lines to cover: level words in a real log, and addresses the rules rewrote
    assert min(covered["sparse, secrets and levels"]) > 0
    if REAL_LOGS.is_dir():
        assert covered["laravel_php.log"][0] > 50 and covered["apache_access_semicomplete.log"][1] > 20


def test_a_stream_inside_a_key_block_is_redacted_stream_by_stream_when_finding(redactor):
    opened = ["-----BEGIN PRIVATE KEY-----", RSA[0]]
    streams, reference = redactor.streams(), redactor.streams()
    assert streams(opened, "k")[1] == reference(opened, "k")[1] == MARK
    groups = [[RSA[1], "ERROR after"], ["plain"]]
    lines, found = streams.many_finding(groups, ["k", "other"], LEVEL)
    assert found is None
    assert lines == reference.many(groups, ["k", "other"])
    assert lines[0] == MARK, "k is still inside its key block"


def test_a_pattern_that_cannot_join_the_rules_program_leaves_the_round_to_two_passes(redactor, monkeypatch):
    """Rules near RE2's memory budget may leave no room for ``find`` in their program (it then does not
    compile): the round is redacted as by ``many``, and nothing is named, so the caller searches."""
    import re2

    compile_ = re2.compile

    def too_large(pattern, options=None):
        if LEVEL in str(pattern):
            raise re2.error(b"pattern too large - compile failed")
        return compile_(pattern, options)

    monkeypatch.setattr(re2, "compile", too_large)
    fresh = Redactor.from_config(RedactionSection(), state_dir=Path("/nonexistent"))
    groups = [["ERROR disk full", "login password=hunter2"], ["a@example.com wrote", "plain"]]
    lines, found = fresh.streams().many_finding(groups, ["a", "b"], LEVEL)
    assert found is None
    assert lines == redactor.streams().many(groups, ["a", "b"])
    assert lines[1] != groups[0][1] and lines[2] != groups[1][0], "the password and the address are masked"
