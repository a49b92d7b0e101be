"""The journal export-format parser and the entry -> record conversion, without journalctl.

``tests/fixtures/journald/export.bin`` is real ``journalctl --output=export`` output (systemd 252)
of a journal written with systemd-journal-remote: a multi-line message with an empty line in it,
invalid UTF-8 and a NUL, a source timestamp, a kernel entry without a unit.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.config import ConfigError, convert, parse_config
from agent.redact import Redactor
from agent.registry import load_registry
from collectors.journald.export import ExportFormatError, ExportParser
from collectors.journald.journald import JournaldCollector
from tests.support import collector_context

EXPORT = (Path(__file__).resolve().parents[2] / "fixtures" / "journald" / "export.bin").read_bytes()
TRACE = b'Traceback (most recent call last):\n  File "app.py", line 3\n\nValueError: boom\n'


def binary(name: str, value: bytes) -> bytes:
    return name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"


def test_real_export_output_parses_into_its_entries() -> None:
    entries = ExportParser().feed(EXPORT)
    assert [e["MESSAGE"] for e in entries] == [
        "GET /health 200 café".encode(),
        TRACE,  # binary field: newlines and the empty line inside stay, one entry
        b"bad bytes \xff\xfe and a NUL \x00 here",
        b"Kernel panic - not syncing",
    ]
    assert [e["PRIORITY"] for e in entries] == [b"6", b"3", b"4", b"0"]
    assert entries[0]["__CURSOR"].startswith(b"s=") and entries[0]["_SYSTEMD_UNIT"] == b"nginx.service"
    assert "_SYSTEMD_UNIT" not in entries[3]


def test_every_split_of_the_stream_gives_the_same_entries() -> None:
    whole = ExportParser().feed(EXPORT)
    for cut in range(1, len(EXPORT)):
        parser = ExportParser()
        assert parser.feed(EXPORT[:cut]) + parser.feed(EXPORT[cut:]) == whole, cut
        assert not parser.pending


def test_byte_by_byte_feeding_gives_the_same_entries() -> None:
    parser = ExportParser()
    got = [entry for i in range(len(EXPORT)) for entry in parser.feed(EXPORT[i : i + 1])]
    assert got == ExportParser().feed(EXPORT)


def test_a_stream_cut_inside_an_entry_returns_only_whole_entries() -> None:
    # journalctl killed mid-write: the half entry is never returned, so its cursor is never saved
    for cut in (EXPORT.index(b"Traceback") + 5, EXPORT.index(b"ValueError"), len(EXPORT) - 1):
        parser = ExportParser()
        entries = parser.feed(EXPORT[:cut])
        assert len(entries) < 4 and all(e["MESSAGE"] for e in entries)
        assert parser.pending


def test_binary_fields_hold_any_bytes_including_the_entry_separator() -> None:
    value = b"a\n\nb\x00\n\n"
    entries = ExportParser().feed(b"A=1\n" + binary("MESSAGE", value) + b"B=2\n\nMESSAGE=next\n\n")
    assert entries == [{"A": b"1", "MESSAGE": value, "B": b"2"}, {"MESSAGE": b"next"}]


def test_empty_values_and_equals_signs_in_values() -> None:
    entries = ExportParser().feed(b"EMPTY=\nMESSAGE=a=b=c\n" + binary("BIN", b"") + b"\n")
    assert entries == [{"EMPTY": b"", "MESSAGE": b"a=b=c", "BIN": b""}]


def test_a_field_repeated_in_an_entry_keeps_its_first_value() -> None:
    assert ExportParser().feed(b"TAG=one\nTAG=two\n\n") == [{"TAG": b"one"}]


def test_an_oversized_binary_field_is_cut_counted_and_not_held() -> None:
    parser = ExportParser(max_field_bytes=1024)
    big = b"x" * 100_000
    stream = binary("MESSAGE", big) + b"PRIORITY=3\n\nMESSAGE=after\n\n"
    entries = []
    for i in range(0, len(stream), 4096):
        entries += parser.feed(stream[i : i + 4096])
        assert len(parser._buf) < 8192 and len(parser._binary_value) <= 1024  # nothing piles up
    assert entries == [{"MESSAGE": b"x" * 1024, "PRIORITY": b"3"}, {"MESSAGE": b"after"}]
    assert parser.truncated == 1


def test_an_oversized_text_line_is_cut_counted_and_not_held() -> None:
    parser = ExportParser(max_field_bytes=1024)
    stream = b"MESSAGE=" + b"y" * 50_000 + b"\nPRIORITY=6\n\nMESSAGE=after\n\n"
    entries = []
    for i in range(0, len(stream), 1000):
        entries += parser.feed(stream[i : i + 1000])
        assert len(parser._buf) < 1024 + 256 + 1000
    assert entries == [{"MESSAGE": b"y" * 1024, "PRIORITY": b"6"}, {"MESSAGE": b"after"}]
    assert parser.truncated == 1


@pytest.mark.parametrize(
    "stream",
    [
        b"not a field\n\n",  # no "=", and not a field name
        b"lower=case\n\n",
        b"MESSAGE\n" + struct.pack("<Q", 3) + b"abcX",  # a binary value not ended by a newline
    ],
)
def test_bytes_that_are_not_the_format_raise(stream: bytes) -> None:
    with pytest.raises(ExportFormatError):
        ExportParser().feed(stream)


# --- entries to records ---------------------------------------------------------------------------


def collector(tmp_path, redactor=None, **options) -> JournaldCollector:
    config = convert(options, JournaldCollector.Config)
    context = collector_context(tmp_path, static_labels=(("job", "journal"),), redactor=redactor)
    return JournaldCollector(config, context)


def test_entries_become_records_with_severity_labels_attributes_and_times(tmp_path) -> None:
    c = collector(tmp_path, fields=["_PID"])
    records, last, dropped = c._convert(ExportParser(), EXPORT, "")
    assert not dropped and last.startswith("s=") and last.endswith("x=98fe465181da497")
    assert [(r.severity, r.severity_number) for r in records] == [("INFO", 9), ("ERR", 17), ("WARNING", 13),
                                                                  ("EMERG", 21)]  # fmt: skip
    assert records[0].labels == (("identifier", "nginx"), ("job", "journal"), ("unit", "nginx.service"))
    assert records[3].labels == (("identifier", "kernel"), ("job", "journal"))  # no unit: no label
    assert records[0].attributes == (("_PID", "812"),) and records[3].attributes == ()
    assert records[1].body == TRACE.decode()  # one record, lines intact
    assert records[2].body == "bad bytes \ufffd\ufffd and a NUL \x00 here"
    assert records[0].time_ns == 1764750000000000 * 1000  # __REALTIME_TIMESTAMP
    assert records[2].time_ns == 1764749999995000 * 1000  # _SOURCE_REALTIME_TIMESTAMP wins


def test_the_entry_at_the_resume_cursor_is_dropped_once(tmp_path) -> None:
    first = ExportParser().feed(EXPORT)[0]["__CURSOR"].decode()
    c = collector(tmp_path)
    records, _, dropped = c._convert(ExportParser(), EXPORT, first)
    assert dropped and records[0].body.startswith("Traceback")
    records, _, dropped = c._convert(ExportParser(), EXPORT, "s=another;i=1")
    assert not dropped and len(records) == 4


def test_messages_and_attributes_are_redacted_per_stream(tmp_path) -> None:
    redactor = Redactor.from_config(parse_config({}).redaction, state_dir=tmp_path)
    key = [
        b"-----BEGIN RSA PRIVATE KEY-----",
        b"MIIEowIBAAKCAQEA1234567890abcdefghijklmnop",
        b"-----END RSA PRIVATE KEY-----",
    ]
    stream = (
        b"".join(b"_SYSTEMD_UNIT=app.service\nMESSAGE=" + line + b"\nNOTE=password=hunter2\n\n" for line in key)
        + b"_SYSTEMD_UNIT=db.service\nMESSAGE=MIIEowIBAAKCAQEA1234567890abcdefghijklmnop\n\n"
    )
    records, _, _ = collector(tmp_path, redactor=redactor, fields=["NOTE"])._convert(ExportParser(), stream, "")
    assert "1234567890abcdef" not in records[1].body  # inside the key block begun by the previous entry
    assert records[3].body == "MIIEowIBAAKCAQEA1234567890abcdefghijklmnop"  # another unit: no block there
    assert all("hunter2" not in dict(r.attributes).get("NOTE", "") for r in records[:3])


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("priority", "loud", "priority: 'loud' is not a level or range"),
        ("matches", ["_SYSTEMD_UNIT"], "matches[0]: '_SYSTEMD_UNIT' is not FIELD=value"),
        ("matches", ["-n=1"], "matches[0]"),
        ("fields", ["_pid"], "fields[0]: '_pid' is not a journal field name"),
        ("units", ["--all"], "units[0]: '--all' is not a name"),
    ],
)
def test_bad_options_name_their_key(option, value, error) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"collectors": {"journald": [{option: value}]}}, environ={}, registry=load_registry())
    assert any("collectors.journald[0]" in e and error in e for e in info.value.errors), info.value.errors


def test_good_filters_become_journalctl_arguments(tmp_path) -> None:
    c = collector(tmp_path, units=["nginx", "app-*"], identifiers=["sshd"], priority="debug..err",
                  matches=["_UID=0", "+", "_COMM=cron"], directory="/var/lib/machines/x/var/log/journal",
                  fields=["_PID"])  # fmt: skip
    assert c._filters() == ["--unit=nginx", "--unit=app-*", "--identifier=sshd", "--priority=debug..err",
                            "--", "_UID=0", "+", "_COMM=cron"]  # fmt: skip
    command = c._command("--lines=0")
    assert command[:3] == ["journalctl", "--output=export", "--no-pager"]
    assert "--follow" in command and "--directory=/var/lib/machines/x/var/log/journal" in command
    assert "_PID" in command[3] and "MESSAGE" in command[3] and command[-1] == "--lines=0"
