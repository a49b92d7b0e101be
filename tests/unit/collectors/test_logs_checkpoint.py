"""The checkpoint ledger (offsets move only on acknowledgement) and its file (atomic, corrupt set aside)."""

from __future__ import annotations

import json
import os

import msgspec

from collectors.logs.checkpoint import MIN_FP_MATCH, RETAIN_SECONDS, Ledger, Loaded, Saved, Store
from collectors.logs.identity import FileId, Opened

FP = "0123456789abcdef"


def open_entry(ledger: Ledger, key: str, offset: int = 0, pred: str = "") -> None:
    ledger.opened(Opened(key, FileId(f"/logs/{key}.log", 1, hash(key) & 0xFFFF, 1024, FP), offset, pred))


def saved_offsets(ledger: Ledger, now: float = 0.0) -> dict[str, int]:
    return {s.key: s.offset for s in ledger.snapshot(now)}


def test_offsets_move_only_on_acknowledgement_and_in_order() -> None:
    ledger = Ledger([], 0.0)
    open_entry(ledger, "a", offset=10)
    ledger.sent("a", 100)
    ledger.sent("a", 250)
    assert saved_offsets(ledger) == {"a": 10}
    ledger.acked({"a": (100, b"x")})
    assert saved_offsets(ledger) == {"a": 100}
    ledger.acked({"a": (250, b"y")})
    assert saved_offsets(ledger) == {"a": 250}


def test_bytes_without_records_wait_for_the_records_before_them() -> None:
    ledger = Ledger([], 0.0)
    open_entry(ledger, "a")
    ledger.sent("a", 100)
    ledger.skipped("a", (400, b""))  # an overlong line's tail, after records still in flight
    assert saved_offsets(ledger) == {"a": 0}
    ledger.acked({"a": (100, b"")})
    assert saved_offsets(ledger) == {"a": 400}
    ledger.skipped("a", (500, b""))  # nothing in flight: done at once
    assert saved_offsets(ledger) == {"a": 500}


def test_a_copy_is_held_at_its_predecessors_offset_while_that_has_records_in_flight() -> None:
    ledger = Ledger([], 0.0)
    open_entry(ledger, "old")
    ledger.sent("old", 1000)
    ledger.closed("old", 0.0)  # truncated: the rotated copy continues it
    open_entry(ledger, "copy", offset=1000, pred="old")
    ledger.sent("copy", 1500)
    ledger.acked({"copy": (1500, b"")})
    assert saved_offsets(ledger)["copy"] == 0, "the old generation's last batch is not durable yet"
    ledger.acked({"old": (1000, b"")})
    assert saved_offsets(ledger)["copy"] == 1500


def test_closed_entries_are_kept_for_matching_then_forgotten() -> None:
    ledger = Ledger([], 0.0)
    open_entry(ledger, "gone")
    ledger.closed("gone", 100.0)
    assert "gone" in saved_offsets(ledger, now=101.0)
    assert "gone" not in saved_offsets(ledger, now=100.0 + RETAIN_SECONDS + 1)
    ledger.opened(Opened("tiny", FileId("/logs/t", 1, 2, MIN_FP_MATCH - 1, FP), 5))
    ledger.closed("tiny", 0.0)
    assert "tiny" not in saved_offsets(ledger), "too short a fingerprint to ever match a copy"
    open_entry(ledger, "claimed")
    ledger.closed("claimed", 0.0)
    ledger.claimed("claimed")
    assert "claimed" not in saved_offsets(ledger)


def test_store_round_trip_is_atomic(tmp_path) -> None:
    store = Store(tmp_path)
    entries = [Saved("r.1", "/var/log/a.log", 3, 4, 1024, FP, 777, "0a0b", False, 0.0)]
    store.save(entries)
    assert store.load() == Loaded(entries)
    assert sorted(os.listdir(tmp_path)) == ["checkpoints.json"], "no temporary file left behind"
    assert json.loads((tmp_path / "checkpoints.json").read_text())["files"][0]["offset"] == 777


def test_a_corrupt_checkpoint_file_is_reported_and_set_aside(tmp_path) -> None:
    store = Store(tmp_path)
    (tmp_path / "checkpoints.json").write_bytes(b'{"version": 1, "files": [{"key": ')
    loaded = store.load()
    problem = loaded.problem
    assert loaded.files == [] and loaded.resume_all and loaded.corrupt
    assert "corrupt" in problem and "checkpoints.json" in problem
    aside = [p for p in os.listdir(tmp_path) if p.startswith("checkpoints.json.corrupt-")]
    assert len(aside) == 1 and aside[0] in problem
    assert store.load() == Loaded([]), "set aside: the next start finds no file"


def test_a_checkpoint_of_another_format_version_is_set_aside(tmp_path) -> None:
    (tmp_path / "checkpoints.json").write_text('{"version": 99, "files": []}')
    loaded = Store(tmp_path).load()
    assert loaded.files == [] and loaded.resume_all and "version 99" in loaded.problem


def test_a_damaged_entry_spoils_only_itself_and_its_file_is_read_again(tmp_path) -> None:
    good = Saved("r.1", "/var/log/a.log", 3, 4, 1024, FP, 777, "0a0b", False, 0.0)
    entries = [
        json.loads(msgspec.json.encode(good)),
        {**json.loads(msgspec.json.encode(good)), "key": "r.2", "path": "/var/log/b.log", "offset": "x"},
        {**json.loads(msgspec.json.encode(good)), "key": "r.3", "path": "/var/log/c.log", "offset": -5},
        {**json.loads(msgspec.json.encode(good)), "key": "r.4", "path": "/var/log/d.log", "tail": "zz"},
    ]
    (tmp_path / "checkpoints.json").write_text(json.dumps({"version": 1, "files": entries}))
    loaded = Store(tmp_path).load()
    assert loaded.files == [good]
    assert loaded.resume_paths == {"/var/log/b.log", "/var/log/c.log", "/var/log/d.log"}
    assert not loaded.resume_all and loaded.corrupt
    assert "3 damaged entries" in loaded.problem and "/var/log/b.log" in loaded.problem


def test_a_damaged_entry_naming_no_file_resumes_every_file(tmp_path) -> None:
    (tmp_path / "checkpoints.json").write_text('{"version": 1, "files": [17]}')
    loaded = Store(tmp_path).load()
    assert loaded.files == [] and loaded.resume_all and "damaged" in loaded.problem


def test_an_unreadable_checkpoint_resumes_every_file(tmp_path) -> None:
    (tmp_path / "checkpoints.json").mkdir()  # read_bytes fails with EISDIR
    loaded = Store(tmp_path).load()
    assert loaded.files == [] and loaded.resume_all and "cannot read" in loaded.problem


def test_encoded_entries_match_the_snapshot_and_only_changed_ones_are_encoded_again() -> None:
    ledger = Ledger([Saved("old.1", "/logs/saved.log", 1, 9, 1024, FP, 50, "", True, 1.0)], 0.0)
    for key in ("a", "b", "c"):
        open_entry(ledger, key)
    ledger.sent("a", 100)
    first = ledger.encoded(0.0)
    assert [msgspec.json.decode(raw, type=Saved) for raw in first] == ledger.snapshot(0.0)
    ledger.acked({"a": (100, b"\n")})
    open_entry(ledger, "copy", offset=30, pred="b")  # held at b's offset while b has records in flight
    ledger.sent("copy", 80)
    ledger.acked({"copy": (80, b"")})
    ledger.sent("b", 40)
    ledger.claimed("old.1")
    second = ledger.encoded(0.0)
    decoded = [msgspec.json.decode(raw, type=Saved) for raw in second]
    assert decoded == ledger.snapshot(0.0)
    assert {s.key: s.offset for s in decoded} == {"a": 100, "b": 0, "c": 0, "copy": 0}
    assert second[2] is first[3], "c did not change: its encoding is reused, not made again"
    ledger.acked({"b": (40, b"")})
    third = ledger.encoded(0.0)
    assert {msgspec.json.decode(raw, type=Saved).key: msgspec.json.decode(raw, type=Saved).offset for raw in third} == {
        "a": 100,
        "b": 40,
        "c": 0,
        "copy": 80,
    }, "b's acknowledgement frees its copy's offset"


def test_the_store_writes_encoded_entries_as_the_same_file(tmp_path) -> None:
    ledger = Ledger([], 0.0)
    open_entry(ledger, "a", offset=7)
    store = Store(tmp_path)
    store.save(ledger.encoded(0.0))
    assert store.load() == Loaded(ledger.snapshot(0.0))


def test_encoded_entries_are_the_bytes_msgspec_writes_for_the_snapshot() -> None:
    """Entries are encoded from a cached head and their offset on: the bytes are msgspec's own for the
    same entries, whatever the path holds, closed or not, held at a predecessor's offset or not."""
    ledger = Ledger([Saved("old.1", '/logs/"quoted" \\ ünï.log', 1, 9, 1024, FP, 50, "0a", True, 12.345)], 0.0)
    open_entry(ledger, "a")
    open_entry(ledger, "copy", offset=30, pred="a")
    ledger.sent("a", 100)
    ledger.acked({"a": (100, b"line\n")})
    ledger.sent("a", 200)  # in flight: the copy is held at a's offset
    ledger.sent("copy", 150)
    ledger.acked({"copy": (150, b"x\n")})
    ledger.identity("a", FileId("/logs/renamed.log", 1, hash("a") & 0xFFFF, 1024, FP))
    ledger.closed("copy", 1.5e9)
    encoded = [bytes(raw) for raw in ledger.encoded(0.0)]
    assert encoded == [msgspec.json.encode(s) for s in ledger.snapshot(0.0)]
    assert len(encoded) == 3 and b"renamed.log" in encoded[1] and b'"closed":true' in encoded[2]
    assert b'"offset":100,"tail":"",' in encoded[2], "held at a's acknowledged offset, its own tail unknown there"


def test_encoded_entries_follow_entries_opened_and_forgotten() -> None:
    ledger = Ledger([Saved("old.1", "/logs/saved.log", 1, 9, 1024, FP, 50, "", True, 1.0)], 0.0)
    for key in ("a", "b", "c"):
        open_entry(ledger, key)

    def check(now: float) -> list[str]:
        encoded = [bytes(raw) for raw in ledger.encoded(now)]
        assert encoded == [msgspec.json.encode(s) for s in ledger.snapshot(now)]
        return [msgspec.json.decode(raw, type=Saved).key for raw in encoded]

    assert check(0.0) == ["old.1", "a", "b", "c"]
    ledger.closed("b", 10.0)
    ledger.claimed("b")  # forgotten at the next write
    open_entry(ledger, "d")
    assert check(11.0) == ["old.1", "a", "c", "d"]
    assert check(2 + RETAIN_SECONDS) == ["a", "c", "d"], "the saved entry expired"


def test_a_rounds_marks_handed_on_in_one_call_do_what_a_call_per_file_does() -> None:
    """``sent_many`` (the collector's call, one per round) against ``sent`` per file: the same offsets
    saved, the same entries encoded again (a copy held at its predecessor's offset included)."""
    ledgers = [Ledger([], 0.0), Ledger([], 0.0)]
    for ledger in ledgers:
        for key in ("a", "b", "c"):
            open_entry(ledger, key)
        open_entry(ledger, "copy", offset=30, pred="b")
        ledger.encoded(0.0)
    rounds = [
        {"a": (100, b"1\n"), "b": (40, b"2\n"), "gone": (5, b"")},
        {"a": (90, b"stale\n"), "copy": (80, b"3\n")},
    ]
    for marks in rounds:
        ledgers[0].sent_many(marks)
        for key, mark in marks.items():
            ledgers[1].sent(key, mark[0])
        encoded = [[bytes(raw) for raw in ledger.encoded(0.0)] for ledger in ledgers]
        assert encoded[0] == encoded[1]
        assert [e.emitted for e in ledgers[0].entries.values()] == [e.emitted for e in ledgers[1].entries.values()]
    assert ledgers[0].entries["a"].emitted == 100 and ledgers[0].entries["a"].inflight == 2
    ledgers[0].acked({"a": (100, b"1\n"), "copy": (80, b"3\n")})
    assert saved_offsets(ledgers[0]) == {"a": 100, "b": 0, "c": 0, "copy": 0}, "copy held while b is in flight"
    ledgers[0].acked({"b": (40, b"2\n")})
    ledgers[0].acked({"a": (90, b"stale\n")})
    assert saved_offsets(ledgers[0]) == {"a": 100, "b": 40, "c": 0, "copy": 80}


def test_a_snapshot_older_than_the_one_written_is_skipped(tmp_path) -> None:
    """At shutdown the periodic write (its task cancelled, its thread still writing), the shutdown's and
    the late acknowledgements' writes meet on three threads: the file must end with the newest snapshot,
    never an older one written last (a clean restart then sent the lines between them again)."""
    store = Store(tmp_path)
    older = [Saved("k", "/var/log/app.log", 1, 2, 4, "abcd", 100, "", False, 0.0)]
    newer = [Saved("k", "/var/log/app.log", 1, 2, 4, "abcd", 900, "", False, 0.0)]
    store.save(newer, 2)
    store.save(older, 1)  # taken before, written after
    assert [e.offset for e in Store(tmp_path).load().files] == [900]
    store.save(older)  # no order given: written, as before
    assert [e.offset for e in Store(tmp_path).load().files] == [100]


def test_encoded_entries_make_the_file_a_snapshot_makes_byte_for_byte(tmp_path) -> None:
    """The file the store writes from Ledger.encoded's entries is, byte for byte, the one a snapshot of the
    same entries makes (and an empty ledger's too)."""
    ledger = Ledger([Saved("old.1", "/logs/saved.log", 1, 9, 1024, FP, 50, "0a", True, 12.5)], 0.0)
    store = Store(tmp_path)
    for key in ("a", "b"):
        open_entry(ledger, key)
    ledger.sent("a", 100)
    ledger.acked({"a": (100, b"x\n")})
    for _ in range(2):
        store.save(ledger.encoded(0.0))
        joined = store.path.read_bytes()
        store.save(ledger.snapshot(0.0))
        assert joined == store.path.read_bytes()
        ledger = Ledger([], 0.0)
