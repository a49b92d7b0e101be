"""Golden payloads of the Loki encoder, decoded with Loki's PushRequest definition and as JSON."""

from __future__ import annotations

import json
import re

from agent.model import LogRecord, labels_from
from outputs.loki.encode import PushEncoder, stream_selector
from tests.unit.outputs.protos import PushRequest

T0 = 1_700_000_000_000_000_123
BASE = labels_from({"job": "hostwatch", "instance": "host-1"})


def parse_selector(text: str) -> dict[str, str]:
    """Loki's label text, parsed independently of the encoder: {a="x", b="y \\" z"}."""
    assert text.startswith("{") and text.endswith("}")
    pairs = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', text)
    unescape = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
    return {name: re.sub(r"\\.", lambda m: unescape[m.group(0)], value) for name, value in pairs}


def decode(payload: bytes) -> list[tuple[dict[str, str], list[tuple[int, str, dict[str, str]]]]]:
    request = PushRequest.FromString(payload)
    return [
        (
            parse_selector(stream.labels),
            [
                (
                    e.timestamp.seconds * 10**9 + e.timestamp.nanos,
                    e.line,
                    {m.name: m.value for m in e.structuredMetadata},
                )
                for e in stream.entries
            ],
        )
        for stream in request.streams
    ]


def records() -> list[LogRecord]:
    app = labels_from({"filename": "/var/log/app.log", "job": "app"})
    db = labels_from({"filename": "/var/log/db.log"})
    return [
        LogRecord(T0 + 2000, "third", app, "ERROR", labels_from({"trace_id": "abc"})),
        LogRecord(T0, "db line", db),
        LogRecord(T0 + 1000, "second", app, "INFO"),
        LogRecord(T0 - 10**9, "first", app),
    ]


def test_protobuf_streams_grouped_and_time_ordered() -> None:
    encoded = PushEncoder(BASE).encode_protobuf(records())
    assert (encoded.streams, encoded.entries) == (2, 4)
    streams = dict((tuple(sorted(labels.items())), entries) for labels, entries in decode(encoded.payload))
    app = (("filename", "/var/log/app.log"), ("instance", "host-1"), ("job", "app"))
    db = (("filename", "/var/log/db.log"), ("instance", "host-1"), ("job", "hostwatch"))
    assert set(streams) == {app, db}
    assert streams[app] == [
        (T0 - 10**9, "first", {}),
        (T0 + 1000, "second", {"level": "INFO"}),
        (T0 + 2000, "third", {"trace_id": "abc", "level": "ERROR"}),
    ]
    assert streams[db] == [(T0, "db line", {})]


def test_selector_text_is_sorted_and_escaped() -> None:
    labels = labels_from({"b": 'say "hi"', "a": "back\\slash", "c": "two\nlines"})
    assert stream_selector(labels) == '{a="back\\\\slash", b="say \\"hi\\"", c="two\\nlines"}'
    decoded = decode(PushEncoder().encode_protobuf([LogRecord(T0, "x", labels)]).payload)
    assert decoded[0][0] == dict(labels)


def test_stream_label_names_are_sanitised_and_empty_values_dropped() -> None:
    record = LogRecord(T0, "x", labels_from({"k8s.pod": "web-1", "empty": ""}))
    assert decode(PushEncoder(BASE).encode_protobuf([record]).payload)[0][0] == {
        "k8s_pod": "web-1",
        "job": "hostwatch",
        "instance": "host-1",
    }


def test_attributes_never_become_stream_labels_and_level_does_not_override_one() -> None:
    record = LogRecord(T0, "x", labels_from({"job": "app"}), "WARN", labels_from({"level": "custom", "user": "u1"}))
    labels, entries = decode(PushEncoder().encode_protobuf([record]).payload)[0]
    assert labels == {"job": "app"}
    assert entries[0][2] == {"level": "custom", "user": "u1"}


def test_structured_metadata_can_be_turned_off() -> None:
    encoder = PushEncoder(structured_metadata=False)
    assert decode(encoder.encode_protobuf(records()).payload)[0][1][2][2] == {}
    values = json.loads(encoder.encode_json(records()).payload)["streams"][0]["values"]
    assert all(len(v) == 2 for v in values)


def test_timestamps_with_zero_nanos_and_long_unicode_lines() -> None:
    line = "é日本🙂 " * 200  # > 127 bytes: two-byte length varints
    batch = [LogRecord(1_700_000_000_000_000_000, line, labels_from({"a": "1"})), LogRecord(0, "epoch", ())]
    decoded = decode(PushEncoder().encode_protobuf(batch).payload)
    assert decoded[0][1] == [(1_700_000_000_000_000_000, line, {})]
    assert decoded[1][1] == [(0, "epoch", {})]


def test_undecodable_text_is_replaced_not_fatal() -> None:
    record = LogRecord(T0, "bad \udcff byte", labels_from({"f": "x"}), attributes=labels_from({"k": "\udcfe"}))
    entries = decode(PushEncoder().encode_protobuf([record]).payload)[0][1]
    assert entries == [(T0, "bad ? byte", {"k": "?"})]


def test_json_matches_the_protobuf_content() -> None:
    encoder = PushEncoder(BASE)
    body = json.loads(encoder.encode_json(records()).payload)
    from_json = [
        (
            stream["stream"],
            [(int(v[0]), v[1], v[2] if len(v) > 2 else {}) for v in stream["values"]],
        )
        for stream in body["streams"]
    ]
    assert all(isinstance(v[0], str) for s in body["streams"] for v in s["values"])  # ns as strings
    assert from_json == decode(encoder.encode_protobuf(records()).payload)


def test_many_lines_round_trip() -> None:
    batch = [
        LogRecord(T0 + i * 7919, f"line {i} " + "x" * (i % 300), labels_from({"n": str(i % 3)})) for i in range(3000)
    ]
    decoded = decode(PushEncoder().encode_protobuf(batch).payload)
    assert sum(len(entries) for _, entries in decoded) == 3000
    for labels, entries in decoded:
        expected = [(r.time_ns, r.body, {}) for r in batch if r.labels == (("n", labels["n"]),)]
        assert entries == expected


def test_nanoseconds_either_side_of_the_table_bounds_round_trip() -> None:
    """Below 16 Ki ns into a second (whole-second times) the nanos come from one table, above it
    from two; every length of varint either side of those bounds decodes to the same time."""
    nanos = [0, 1, 127, 128, 0x3FFF, 0x4000, 0x4001, 0x1FFFFF, 0x200000, 999_999_999]
    batch = [LogRecord(1_700_000_000_000_000_000 + s * 10**9 + n, f"l{s}.{n}", ()) for s in (0, 1) for n in nanos]
    decoded = decode(PushEncoder().encode_protobuf(batch).payload)
    assert decoded[0][1] == [(r.time_ns, r.body, {}) for r in batch]


def test_streams_are_the_same_however_the_batch_is_ordered() -> None:
    """A line of each of many files (a run per label set, one time), a file read in bulk, label sets
    coming back after others, equal label sets as distinct objects, lines out of time order: every
    label set is one stream, in order of first appearance, its entries in time order (stable)."""
    files = [labels_from({"filename": f"/var/log/app{i}.log"}) for i in range(300)]
    one_each = [LogRecord(T0, f"line {i}", files[i]) for i in range(300)]
    bulk = [LogRecord(T0 + i, f"line {i}", files[0]) for i in range(300)]
    comes_back = [*one_each[:5], LogRecord(T0 + 1, "again", files[2]), *one_each[5:9]]
    equal_objects = [LogRecord(T0, f"copy {i}", tuple(list(files[i % 2]))) for i in range(6)]
    late_line = [*bulk[:3], LogRecord(T0 - 5, "late", files[0]), *bulk[3:6], *one_each[1:3]]
    for batch in (one_each, bulk, comes_back, equal_objects, late_line, [one_each[0]] * 3):
        expected: dict[tuple, list[LogRecord]] = {}
        for record in batch:
            expected.setdefault(record.labels, []).append(record)
        encoded = PushEncoder().encode_protobuf(batch)
        assert decode(encoded.payload) == [
            (dict(labels), [(r.time_ns, r.body, {}) for r in sorted(group, key=lambda r: r.time_ns)])
            for labels, group in expected.items()
        ]
        assert (encoded.streams, encoded.entries) == (len(expected), len(batch))


def test_the_varint_tables_hold_each_entry_as_varint_writes_it() -> None:
    # the tables are built from joined pieces, not one varint() call per entry (start-up time)
    from outputs._protobuf import varint
    from outputs.loki.encode import _prefixed_varints, _tables

    low14, head12, head10, small = _tables()
    assert len(low14) == len(head12) == len(head10) == len(small) == 0x4000
    for n in range(0x4000):
        assert head12[n] == b"\x12" + varint(n), n
        assert head10[n] == b"\x0a" + varint(n) and small[n] == varint(n), n
        # a nanos value with this low 14 bits and more above: its varint starts with the table's two bytes
        assert varint(n | 0x4000)[:2] == low14[n], n
    for prefix in (b"", b"\x0a"):
        assert _prefixed_varints(prefix) == [prefix + varint(n) for n in range(0x4000)]
