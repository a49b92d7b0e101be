"""Record building: raw severity words, JSON and logfmt fields, timestamps, OTel severity numbers."""

from __future__ import annotations

import datetime

import pytest

from agent.model import labels_from
from collectors.logs.multiline import Multiline
from collectors.logs.parse import Parser, logfmt_fields, parse_time, raw_severities, severity_of
from collectors.logs.stats import LogStats

LABELS = (("filename", "/var/log/app.log"), ("job", "app"))
NOW = 1_700_000_000_000_000_000


def parser(fmt: str, detect: bool = True) -> tuple[Parser, LogStats]:
    counts = LogStats()
    return Parser(fmt, detect, counts), counts


def test_raw_lines_keep_order_labels_and_distinct_times() -> None:
    p, _ = parser("raw")
    lines = ["a", "b", "c"]
    records = p.records(lines, LABELS, NOW)
    assert [r.body for r in records] == lines
    assert [r.time_ns for r in records] == [NOW, NOW + 1, NOW + 2]
    assert all(r.labels == LABELS and r.attributes == () for r in records)


@pytest.mark.parametrize(
    ("line", "text", "number"),
    [
        ("[2023-05-15 18:19:32] local.ERROR: Target class does not exist.", "ERROR", 17),
        ("2024-01-01T00:00:00Z WARN disk almost full", "WARN", 13),
        ("2024-01-01 12:00:00 WARNING something", "WARN", 13),
        ("[Wed Oct 11 14:32:52 2000] [error] [client 127.0.0.1] client denied", "ERROR", 17),
        ("2020/01/01 00:00:00 [notice] 1#1: signal process started", "NOTICE", 10),
        ("INFO  main started", "INFO", 9),
        ("<1> CRIT kernel", "CRITICAL", 18),  # ERROR2, as the OTLP output and the journal number it
        ("DEBUG: x", "DEBUG", 5),
    ],
)
def test_raw_severity_words(line: str, text: str, number: int) -> None:
    p, _ = parser("raw")
    (record,) = p.records([line], LABELS, NOW)
    assert (record.severity, record.severity_number) == (text, number)
    assert record.body == line


@pytest.mark.parametrize(
    "line",
    [
        '83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /error/page HTTP/1.1" 404 20',
        "an error happened (lower case words are prose, not levels)",
        "INFORMATION_SCHEMA query",  # a longer word that starts like a level
        "x" * 250 + " ERROR too far from the start",
    ],
)
def test_raw_lines_without_a_level(line: str) -> None:
    p, _ = parser("raw")
    (record,) = p.records([line], LABELS, NOW)
    assert (record.severity, record.severity_number) == ("", 0)


def test_raw_severity_can_be_turned_off() -> None:
    p, _ = parser("raw", detect=False)
    assert p.records(["ERROR x"], LABELS, NOW)[0].severity == ""


def test_raw_severities_maps_hits_to_the_right_lines() -> None:
    lines = ["plain", "ERROR one", "plain again", "x WARN y", "INFO"]
    assert raw_severities(lines) == [(1, "ERROR", 17), (3, "WARN", 13), (4, "INFO", 9)]


def test_json_message_time_level_and_attributes() -> None:
    p, counts = parser("json")
    line = (
        '{"time":"2024-03-01T10:00:00.5Z","level":"warning","msg":"slow query",'
        '"duration_ms":1234,"user":{"id":7},"ok":false,"trace_id":"abc"}'
    )
    (record,) = p.records([line], LABELS, NOW)
    expected_ns = int(datetime.datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=datetime.UTC).timestamp() * 1e9)
    assert record.time_ns == expected_ns
    assert (record.body, record.severity, record.severity_number) == ("slow query", "WARN", 13)
    assert dict(record.attributes) == {"duration_ms": "1234", "user": '{"id":7}', "ok": "false", "trace_id": "abc"}
    assert list(record.attributes) == sorted(record.attributes)
    assert record.labels == LABELS, "fields never become stream labels"
    assert counts["parse_failures"] == 0


def test_json_without_a_message_keeps_the_whole_line() -> None:
    p, _ = parser("json")
    line = '{"ts": 1700000000.25, "level": 50, "event": "boom"}'
    (record,) = p.records([line], LABELS, NOW)
    assert record.body == line and record.attributes == ()
    assert record.time_ns == 1_700_000_000_250_000_000
    assert (record.severity, record.severity_number) == ("ERROR", 17)


def test_lines_that_do_not_parse_stay_raw_and_are_counted() -> None:
    p, counts = parser("json")
    records = p.records(["not json", "[1, 2]", '{"msg": "ok"}'], LABELS, NOW)
    assert [r.body for r in records] == ["not json", "[1, 2]", "ok"]
    assert counts["parse_failures"] == 2


def test_logfmt() -> None:
    line = 'ts=2024-03-01T10:00:00Z level=error msg="db \\"main\\" down" retries=3 fatal'
    assert logfmt_fields(line) == {
        "ts": "2024-03-01T10:00:00Z",
        "level": "error",
        "msg": 'db "main" down',
        "retries": "3",
        "fatal": "true",
    }
    p, _ = parser("logfmt")
    (record,) = p.records([line], LABELS, NOW)
    assert (record.body, record.severity_number) == ('db "main" down', 17)
    assert dict(record.attributes) == {"retries": "3", "fatal": "true"}
    assert logfmt_fields('unterminated="quote') is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, 1_700_000_000_000_000_000),
        (1_700_000_000_123, 1_700_000_000_123_000_000),
        (1_700_000_000_123_456, 1_700_000_000_123_456_000),
        (1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        ("1700000000", 1_700_000_000_000_000_000),
        ("2023-11-14T22:13:20+00:00", 1_700_000_000_000_000_000),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000_000_000),
        ("2023-11-14 22:13:20", 1_700_000_000_000_000_000),
        ("yesterday", None),
        (True, None),
        (None, None),
    ],
)
def test_parse_time(value: object, expected: int | None) -> None:
    assert parse_time(value) == expected


def test_severity_of_numbers_and_unknown_words() -> None:
    assert severity_of(30) == ("INFO", 9)
    assert severity_of("60") == ("FATAL", 21)
    assert severity_of("Verbose") == ("VERBOSE", 0)


# ---------------------------------------------------------------- multiline


def offsets(lines: list[str], start: int = 0) -> list[int]:
    ends, pos = [], start
    for line in lines:
        pos += len(line.encode()) + 1
        ends.append(pos)
    return ends


def test_multiline_start_pattern_joins_continuations_and_holds_the_last_record() -> None:
    ml = Multiline(r"^\[\d{4}-", "", 100, 1 << 20)
    ml.reset(0)
    lines = ["[2023-01-01] first", "#0 frame", "#1 frame", "[2023-01-02] second", "  detail"]
    ends = offsets(lines)
    records, record_ends = ml.feed(lines, ends, now=5.0)
    assert records == ["[2023-01-01] first\n#0 frame\n#1 frame"]
    assert record_ends == [ends[2]]
    assert ml.held and ml.start == ends[2] and ml.since == 5.0
    assert ml.flush() == ("[2023-01-02] second\n  detail", ends[4])
    assert not ml.held


def test_multiline_continuation_pattern() -> None:
    ml = Multiline("", r"^\s", 100, 1 << 20)
    ml.reset(10)
    lines = ["Traceback (most recent call last):", '  File "x.py"', "    boom()", "ValueError: x", "next"]
    records, ends = ml.feed(lines, offsets(lines, 10), now=0)
    # "ValueError: x" does not start with whitespace: it begins a record of its own
    assert records == ['Traceback (most recent call last):\n  File "x.py"\n    boom()', "ValueError: x"]
    assert ends == offsets(lines, 10)[2:4]


def test_multiline_limits_split_records_without_losing_lines() -> None:
    ml = Multiline(r"^START", "", 3, 1 << 20)
    ml.reset(0)
    lines = ["START", "a", "b", "c", "d"]
    records, _ = ml.feed(lines, offsets(lines), now=0)
    assert records == ["START\na\nb"]
    assert ml.flush()[0] == "c\nd"

    by_bytes = Multiline(r"^START", "", 100, 11)  # "START\n" + "1234\n" fit, one more line does not
    by_bytes.reset(0)
    lines = ["START", "1234", "5678"]
    records, _ = by_bytes.feed(lines, offsets(lines), now=0)
    assert records == ["START\n1234"]
    assert by_bytes.flush()[0] == "5678"


def test_level_words_found_in_bytes_and_in_text_agree_on_real_logs() -> None:
    from pathlib import Path

    from collectors.logs.parse import raw_severities_bytes

    corpus = Path(__file__).resolve().parents[4] / "shared" / "corpus" / "real"
    if not corpus.is_dir():
        pytest.skip("no corpus")
    for path in sorted(corpus.glob("*.log")):
        data = path.read_bytes()
        data = data[: data.rfind(b"\n") + 1]
        lines = data.decode().split("\n")[:-1]
        half = data.index(b"\n", len(data) // 2) + 1  # two pieces, as two reads would give
        blocks = [(0, data[:half]), (data[:half].count(b"\n"), data[half:])]
        assert raw_severities_bytes(blocks) == raw_severities(lines), path.name


def test_levels_of_lines_redaction_rewrote_come_from_their_new_text() -> None:
    lines = ["INFO start", "token=ERROR-abc done", "WARN disk", "plain"]
    block = ("\n".join(lines) + "\n").encode()
    redacted = ["INFO start", "token=[REDACTED:token] done", "WARN disk", "plain"]
    parser = Parser("raw", True, LogStats())
    records = parser.records(redacted, labels_from({"filename": "/f"}), 1, [(0, block)], changed=[1])
    assert [(r.body, r.severity) for r in records] == [
        (b, s) for b, s in zip(redacted, ["INFO", "", "WARN", ""], strict=True)
    ]
    assert [(i, t) for i, t, _ in raw_severities(redacted)] == [(0, "INFO"), (2, "WARN")]
