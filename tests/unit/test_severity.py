"""One severity mapping: every producer and the OTLP output number a level as OpenTelemetry does.

The reference is the OpenTelemetry logs data model: the SeverityNumber short names
(TRACE 1, DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21, the steps within a range
counting up from there) and its Appendix B, which maps syslog's levels: Notice INFO2,
Critical ERROR2, Alert ERROR3, Emergency FATAL. The logs collector, the journal
collector and the OTLP output (for a record that carries only a text) must all give
these numbers: a CRITICAL line numbered 21 by one and 18 by the other sorts differently
depending on the path it took.
"""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from agent.model import LogRecord
from collectors.journald.export import ExportParser
from collectors.logs.parse import raw_severities, severity_of
from outputs.otlp.encode import LogsEncoder
from tests.unit.collectors.test_journald_export import collector as journald_collector

REFERENCE = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "NOTICE": 10,  # INFO2
    "WARN": 13,
    "WARNING": 13,
    "ERROR": 17,
    "ERR": 17,
    "CRITICAL": 18,  # ERROR2
    "CRIT": 18,
    "ALERT": 19,  # ERROR3
    "FATAL": 21,
    "EMERG": 21,  # syslog's Emergency: FATAL
    "EMERGENCY": 21,
    "PANIC": 21,  # syslog's old name for emerg
}
SYSLOG_PRIORITY = ["EMERG", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG"]  # 0 ... 7


@pytest.mark.parametrize(("word", "number"), REFERENCE.items())
def test_the_logs_collector_numbers_a_level_word_as_the_reference(word: str, number: int) -> None:
    assert severity_of(word)[1] == number  # a json/logfmt level field
    assert severity_of(word.lower())[1] == number
    found = raw_severities([f"{word} something happened"])  # a raw line
    if found:  # raw lines know the usual words, not every spelling
        assert found[0][2] == number


def test_raw_lines_know_the_syslog_levels() -> None:
    lines = [f"{word} x" for word in ("NOTICE", "CRIT", "CRITICAL", "ALERT", "EMERG")]
    assert [number for _, _, number in raw_severities(lines)] == [10, 18, 18, 19, 21]


@pytest.mark.parametrize(("text", "number"), REFERENCE.items())
def test_the_otlp_output_numbers_a_record_that_has_only_a_text_as_the_reference(text: str, number: int) -> None:
    record = LogRecord(1, "x", (), text)  # severity_number 0: the encoder looks the text up
    request = ExportLogsServiceRequest.FromString(LogsEncoder(()).encode([record], 2))
    [encoded] = request.resource_logs[0].scope_logs[0].log_records
    assert (encoded.severity_text, encoded.severity_number) == (text, number)


def test_the_journal_numbers_each_priority_as_the_reference(tmp_path) -> None:
    export = b"".join(
        f"__CURSOR=s=1;i={p}\n__REALTIME_TIMESTAMP=1700000000000000\nPRIORITY={p}\nMESSAGE=m{p}\n\n".encode()
        for p in range(8)
    )
    records, _, _ = journald_collector(tmp_path)._convert(ExportParser(), export, "")
    assert [(r.severity, r.severity_number) for r in records] == [(w, REFERENCE[w]) for w in SYSLOG_PRIORITY]


@pytest.mark.parametrize("word", REFERENCE)
def test_a_record_the_logs_collector_made_keeps_its_number_through_the_otlp_output(word: str) -> None:
    text, number = severity_of(word)
    request = ExportLogsServiceRequest.FromString(LogsEncoder(()).encode([LogRecord(1, "x", (), text, (), 0)], 2))
    [encoded] = request.resource_logs[0].scope_logs[0].log_records
    assert encoded.severity_number == number  # the text alone gives the output the same number
