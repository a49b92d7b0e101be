"""The checkpoint ledger (offsets move only on acknowledgement) and its files (a snapshot replaced atomically,
a corrupt one set aside; a journal of changes, a torn tail not read)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import msgspec
import pytest

from collectors.logs import checkpoint
from collectors.logs.checkpoint import MIN_FP_MATCH, RETAIN_SECONDS, Changes, Ledger, Loaded, Saved, Store
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


def started(tmp_path, *keys: str) -> tuple[Store, Ledger]:
    """A store whose journal was started by a first write of a ledger holding ``keys`` (or "a")."""
    store, ledger = Store(tmp_path), Ledger([], 0.0)
    for key in keys or ("a",):
        open_entry(ledger, key)
    journaled(store, ledger)
    return store, ledger


def acked(ledger: Ledger, key: str, offset: int, tail: bytes = b"") -> None:
    ledger.sent(key, offset)
    ledger.acked({key: (offset, tail)})


def journaled(store: Store, ledger: Ledger, now: float = 0.0) -> None:
    """A write as the collector's saver makes it: the changes appended, or a snapshot starting a journal."""
    if store.appendable:
        store.append(ledger.changes(now))
    else:
        store.save(ledger.restart(now), journal=True)


def ledger_script(ledger: Ledger) -> list[Callable[[], object]]:
    """Steps touching every kind of change: offsets moved (a copy held at its predecessor's and freed),
    entries opened, renamed, given a longer fingerprint, closed, claimed and forgotten."""
    return [
        lambda: [open_entry(ledger, key) for key in ("a", "b", "c")],
        lambda: (ledger.sent("a", 100), ledger.acked({"a": (100, b"x\n")})),
        lambda: (open_entry(ledger, "copy", offset=30, pred="b"), ledger.sent("copy", 80), ledger.sent("b", 40)),
        lambda: ledger.acked({"copy": (80, b"\x00\xff")}),  # held at b's offset while b is in flight
        lambda: ledger.acked({"b": (40, b"")}),  # which frees it
        lambda: ledger.identity("a", FileId('/logs/"renamed" ü.log', 1, hash("a") & 0xFFFF, 1024, FP)),
        lambda: ledger.identity("c", FileId("/logs/c.log", 1, hash("c") & 0xFFFF, 2048, "feedfacefeedface")),
        lambda: (ledger.closed("b", 12.5), ledger.claimed("old.1")),
        lambda: (ledger.sent("copy", 200), ledger.acked({"copy": (200, b"y")})),
        lambda: ledger.claimed("b"),  # forgotten at the next write
        lambda: None,  # nothing changed: an empty record
    ]


def test_a_journal_of_changes_loads_as_the_snapshot_of_the_same_ledger(tmp_path) -> None:
    """After every write, appended or a snapshot, the store loads exactly what a snapshot of the ledger
    holds, in its order, whatever changed (the equivalence of the journal with the full file)."""
    store = Store(tmp_path)
    ledger = Ledger([Saved("old.1", "/logs/saved.log", 1, 9, 1024, FP, 50, "0a", True, 1.0)], 0.0)
    journaled(store, ledger)
    assert store.appendable, "the first write is a snapshot and starts a journal"
    for step in ledger_script(ledger):
        step()
        journaled(store, ledger)
        assert store.appendable
        assert Store(tmp_path).load() == Loaded(ledger.snapshot(0.0))
    assert [s.key for s in ledger.snapshot(0.0)] == ["a", "c", "copy"]
    assert json.loads(store.path.read_text())["files"][0]["key"] == "old.1", "the snapshot was not rewritten"


def test_only_the_entries_that_changed_are_appended() -> None:
    ledger = Ledger([], 0.0)
    for key in ("a", "b", "c"):
        open_entry(ledger, key)
    ledger.restart(0.0)
    assert ledger.changes(0.0) == Changes()
    ledger.sent("a", 100)
    ledger.acked({"a": (100, b"x\n")})
    open_entry(ledger, "d", offset=5)
    changes = ledger.changes(0.0)
    assert changes.moved == [("a", 100, b"x\n")], "an offset that moved: key, offset and tail only"
    assert [s.key for s in changes.files] == ["d"], "a new entry: whole"
    assert ledger.changes(0.0) == Changes()


def test_the_journal_is_folded_into_a_snapshot_once_it_outgrows_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint, "JOURNAL_MIN_BYTES", 2000)
    monkeypatch.setattr(checkpoint, "JOURNAL_FACTOR", 2)  # of a snapshot of one entry, about 300 bytes
    store, ledger = started(tmp_path)
    snapshots = 1
    for n in range(1, 200):
        acked(ledger, "a", n * 10, b"line\n" * 10)
        snapshots += not store.appendable
        journaled(store, ledger)
        assert os.path.getsize(tmp_path / "checkpoints.journal") < 2000 + 200, "a record past the limit, at most"
    assert 5 <= snapshots <= 20
    assert Store(tmp_path).load() == Loaded(ledger.snapshot(0.0))


def test_a_journal_another_snapshot_started_is_not_read(tmp_path) -> None:
    """A crash after a snapshot's rename but before its journal restarted leaves the journal of the
    snapshot before: read on top of the newer snapshot it would move offsets back (duplicates)."""
    store, ledger = started(tmp_path)
    acked(ledger, "a", 100)
    journaled(store, ledger)
    old_journal = (tmp_path / "checkpoints.journal").read_bytes()
    acked(ledger, "a", 900)
    store.save(ledger.restart(0.0), journal=True)
    (tmp_path / "checkpoints.journal").write_bytes(old_journal)
    loaded = Store(tmp_path).load()
    assert [s.offset for s in loaded.files] == [900] and not loaded.torn


def test_a_snapshot_without_a_journal_needs_none_and_closes_it(tmp_path) -> None:
    """The shutdown's write: the file alone holds every entry, whatever journal is left beside it."""
    store, ledger = started(tmp_path)
    acked(ledger, "a", 100)
    journaled(store, ledger)
    store.save(ledger.snapshot(0.0))
    assert not store.appendable
    assert json.loads(store.path.read_text())["journal"] == ""
    assert Store(tmp_path).load() == Loaded(ledger.snapshot(0.0))


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_torn_journal_tail_is_not_read_and_counted(tmp_path, damage) -> None:
    """A crash in the middle of an append (kill -9 can cut a write short) leaves part of a record, or a
    record whose checksum fails: it is not read, the records before it are, and the tail is counted."""
    store, ledger = started(tmp_path, "a", "b")
    acked(ledger, "a", 100)
    journaled(store, ledger)
    before = ledger.snapshot(0.0)
    whole = (tmp_path / "checkpoints.journal").read_bytes()
    ledger.sent_many({"a": (300, b""), "b": (70, b"")})
    ledger.acked({"a": (300, b""), "b": (70, b"")})
    journaled(store, ledger)
    journal = (tmp_path / "checkpoints.journal").read_bytes()
    last = journal[len(whole) :]
    torn = last[: len(last) // 2] if damage == "cut" else last.replace(b'"a"', b'"A"')
    (tmp_path / "checkpoints.journal").write_bytes(whole + torn)
    loaded = Store(tmp_path).load()
    assert loaded.files == before, "the records before the torn one are read, and nothing of it"
    assert loaded.torn == len(torn) and not loaded.corrupt
    (tmp_path / "checkpoints.journal").write_bytes(journal)
    assert Store(tmp_path).load() == Loaded(ledger.snapshot(0.0)), "whole, it is read"


def test_a_journal_cut_at_any_byte_resumes_from_a_write_no_later_than_it_holds(tmp_path) -> None:
    """kill -9 at any moment of an append: whatever part of the last record reached the file, the store
    loads the state of the last whole write (never a later one, never lines not yet acknowledged), and
    every whole record before it."""
    store = Store(tmp_path)
    ledger = Ledger([Saved("old.1", "/logs/saved.log", 1, 9, 1024, FP, 50, "0a", True, 1.0)], 0.0)
    journaled(store, ledger)
    states = [(os.path.getsize(tmp_path / "checkpoints.journal"), ledger.snapshot(0.0))]
    for step in ledger_script(ledger):
        step()
        journaled(store, ledger)
        states.append((os.path.getsize(tmp_path / "checkpoints.journal"), ledger.snapshot(0.0)))
    journal = (tmp_path / "checkpoints.journal").read_bytes()
    for cut in range(states[0][0], len(journal) + 1):
        (tmp_path / "checkpoints.journal").write_bytes(journal[:cut])
        loaded = Store(tmp_path).load()
        size, expected = max(state for state in states if state[0] <= cut)
        assert loaded.files == expected, f"cut at byte {cut}"
        assert loaded.torn == cut - size


def test_a_failed_append_makes_the_next_write_a_snapshot(tmp_path, monkeypatch) -> None:
    store, ledger = started(tmp_path)
    acked(ledger, "a", 100)
    real = os.write

    def full_disk(fd: int, data: bytes) -> int:
        real(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        journaled(store, ledger)
    monkeypatch.setattr(os, "write", real)
    assert not store.appendable, "the changes taken for the failed append are in no record"
    journaled(store, ledger)
    assert Store(tmp_path).load() == Loaded(ledger.snapshot(0.0))


def test_a_rounds_marks_handed_on_in_one_call_do_what_a_call_per_file_does() -> None:
    """``sent_many`` (the collector's call, one per round) against ``sent`` per file: the same offsets
    saved, the same changes journaled (a copy held at its predecessor's offset included)."""
    ledgers = [Ledger([], 0.0), Ledger([], 0.0)]
    for ledger in ledgers:
        for key in ("a", "b", "c"):
            open_entry(ledger, key)
        open_entry(ledger, "copy", offset=30, pred="b")
        ledger.restart(0.0)
    rounds = [
        {"a": (100, b"1\n"), "b": (40, b"2\n"), "gone": (5, b"")},
        {"a": (90, b"stale\n"), "copy": (80, b"3\n")},
    ]
    for marks in rounds:
        ledgers[0].sent_many(marks)
        for key, mark in marks.items():
            ledgers[1].sent(key, mark[0])
        changes = [ledger.changes(0.0) for ledger in ledgers]
        assert changes[0].files == changes[1].files and sorted(changes[0].moved) == sorted(changes[1].moved)
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
