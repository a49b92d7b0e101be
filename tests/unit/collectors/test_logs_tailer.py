"""File identity and rotation, one deterministic round at a time (Tailer.step, no event loop)."""

from __future__ import annotations

import collections
import os
import shutil
import time
from pathlib import Path

from agent.config import convert
from collectors.logs.checkpoint import Saved
from collectors.logs.discovery import Patterns
from collectors.logs.framing import Framer
from collectors.logs.identity import fingerprint
from collectors.logs.logs import LogsCollector
from collectors.logs.stats import LogStats
from collectors.logs.tailer import Tailer


def make_config(paths: list[str], **options):
    return convert({"paths": paths, **options}, LogsCollector.Config)


class Rig:
    """A Tailer on ``tmp/logs`` driven by hand; ``saved`` is what the previous run left."""

    def __init__(self, tmp: Path, pattern: str = "app.log*", saved: list[Saved] | None = None, **options) -> None:
        self.dir = tmp / "logs"
        self.dir.mkdir(exist_ok=True)
        options.setdefault("start_at", "beginning")
        self.config = make_config([str(self.dir / pattern)], **options)
        self.stats = LogStats()
        patterns = Patterns(self.config.paths, self.config.exclude, self.config.include_compressed)
        self.tailer = Tailer(
            self.config, patterns, (("job", "t"),), self.stats, time.time_ns, None, saved or [], 0.0, "r"
        )
        self.now = 0.0
        self.bodies: list[str] = []
        self.by_file: dict[str, list[str]] = collections.defaultdict(list)
        self.offsets: dict[str, int] = {}

    def step(self, *, scan: bool = True, advance: float = 0.1):
        self.now += advance
        res = self.tailer.step(self.now, scan, set(), True)
        self.bodies += [r.body for r in res.records]
        for r in res.records:
            self.by_file[dict(r.labels)["filename"]].append(r.body)
        for key, (end, _tail) in {**res.skipped, **res.sent}.items():
            self.offsets[key] = max(self.offsets.get(key, 0), end)
        return res

    def saved(self) -> list[Saved]:
        """What a checkpoint would hold if everything read so far had been acknowledged."""
        out = []
        for t in self.tailer.trackers.values():
            f = t.id
            out.append(Saved(t.key, f.path, f.dev, f.ino, f.fp_len, f.fp, t.framer.consumed, t.framer.tail.hex()))
        return out

    def close(self) -> None:
        self.tailer.close_all()


def write(path: Path, lines: list[str], mode: str = "a") -> None:
    with open(path, mode) as f:
        f.write("".join(line + "\n" for line in lines))


def block(tag: str, n: int) -> list[str]:
    # long enough lines that the first KiB fingerprints the file, distinct per file
    return [f"{tag} line {i:05d} " + "x" * 60 for i in range(n)]


def test_rename_rotation_reads_the_old_file_to_its_end_then_the_new_one(tmp_path) -> None:
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, block("a", 50))
    rig.step()
    write(app, block("b", 20))  # written before rotation, not yet read
    os.rename(app, rig.dir / "app.log.1")
    write(app, block("c", 30))
    rig.step()
    assert sorted(rig.by_file[str(app)]) == sorted(block("a", 50) + block("b", 20) + block("c", 30))
    assert len(rig.bodies) == 100
    assert rig.stats["rotations"] == {"rename": 1}
    assert len(rig.tailer.trackers) == 2, "each file keeps the name it was found under"
    rig.close()


def test_rename_out_of_the_glob_is_drained_then_closed_after_rotate_wait(tmp_path) -> None:
    rig = Rig(tmp_path, pattern="app.log", rotate_wait="1s")
    app = rig.dir / "app.log"
    write(app, block("a", 10))
    rig.step()
    with open(app, "a") as old:  # the writer keeps its descriptor a moment after the rename
        os.rename(app, rig.dir / "app.log.1")
        write(app, block("c", 5))
        old.write("".join(line + "\n" for line in block("late", 3)))
    res = rig.step()
    assert sorted(rig.bodies) == sorted(block("a", 10) + block("late", 3) + block("c", 5))
    assert len(rig.tailer.trackers) == 2 and not res.closed
    res = rig.step(advance=1.5)
    assert len(res.closed) == 1 and len(rig.tailer.trackers) == 1
    rig.close()


def test_copytruncate_with_the_copy_seen_before_the_truncation(tmp_path) -> None:
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, block("a", 40))
    rig.step()
    write(app, block("b", 25))  # unread when the copy is made
    shutil.copyfile(app, rig.dir / "app.log.1")
    rig.step()  # the copy appears while app.log still holds everything: nothing read twice
    os.truncate(app, 0)
    write(app, block("c", 10))
    rig.step()
    rig.step()
    assert sorted(rig.bodies) == sorted(block("a", 40) + block("b", 25) + block("c", 10))
    assert len(rig.bodies) == 75
    assert rig.stats["rotations"] == {"copytruncate": 1}
    assert rig.stats["truncations"] == 1
    rig.close()


def test_copytruncate_with_the_truncation_seen_first(tmp_path) -> None:
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, block("a", 40))
    rig.step()
    write(app, block("b", 25))
    shutil.copyfile(app, rig.dir / "app.log.1")
    os.truncate(app, 0)
    write(app, block("c", 10))
    rig.step(scan=False)  # truncation found before the globs are scanned again
    assert rig.stats["truncations"] == 1
    rig.step()  # now the copy: recognised by fingerprint, finished from where the old file stopped
    assert sorted(rig.bodies) == sorted(block("a", 40) + block("b", 25) + block("c", 10))
    assert len(rig.bodies) == 75
    assert rig.stats["rotations"] == {"copytruncate": 1}
    rig.close()


def test_delete_and_recreate(tmp_path) -> None:
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, block("a", 10))
    rig.step()
    write(app, block("b", 10))
    os.unlink(app)  # the tailer still holds it open: the unread lines are not lost
    write(app, block("c", 10))
    rig.step()
    assert sorted(rig.bodies) == sorted(block("a", 10) + block("b", 10) + block("c", 10))
    assert rig.stats["rotations"] == {"recreate": 1}
    rig.close()


def test_files_sharing_a_header_are_not_taken_for_copies(tmp_path) -> None:
    header = ["#Software: Microsoft Internet Information Services 8.5 " + "h" * 100] * 10  # > 1 KiB, same in both
    rig = Rig(tmp_path, pattern="*.log")
    write(rig.dir / "one.log", header + block("one", 20))
    rig.step()
    write(rig.dir / "two.log", header + block("two", 5))
    rig.step()
    assert rig.by_file[str(rig.dir / "two.log")] == header + block("two", 5)
    assert rig.stats["rotations"] == {}
    rig.close()


def test_restart_resumes_a_file_renamed_while_stopped(tmp_path) -> None:
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, block("a", 30))
    rig.step()
    saved = rig.saved()
    rig.close()
    write(app, block("b", 10))
    os.rename(app, rig.dir / "app.log.1")
    write(app, block("c", 5))
    again = Rig(tmp_path, saved=saved, start_at="end")
    again.step()
    assert sorted(again.bodies) == sorted(block("b", 10) + block("c", 5))
    again.close()


def test_restart_after_copytruncate_while_stopped(tmp_path) -> None:
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, block("a", 30))
    rig.step()
    saved = rig.saved()
    rig.close()
    write(app, block("b", 10))
    shutil.copyfile(app, rig.dir / "app.log.1")
    os.truncate(app, 0)
    write(app, block("c", 5))
    again = Rig(tmp_path, saved=saved, start_at="end")
    again.step()
    # app.log's inode holds new content (its fingerprint changed): read from 0; the copy from the offset
    assert sorted(again.bodies) == sorted(block("b", 10) + block("c", 5))
    again.close()


def test_a_reused_inode_is_not_mistaken_for_the_old_file(tmp_path) -> None:
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, block("a", 30))
    rig.step()
    saved = rig.saved()
    rig.close()
    # same device and inode, other content: what a deleted file's inode reused looks like
    write(app, block("new", 40), mode="w")
    again = Rig(tmp_path, saved=saved, start_at="end")
    again.step()
    assert again.bodies == block("new", 40)
    again.close()


def test_start_at_end_skips_existing_lines_but_not_an_incomplete_last_one(tmp_path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    (d / "app.log").write_text("old 1\nold 2\nhalf")
    rig = Rig(tmp_path, start_at="end")
    rig.step()
    with open(d / "app.log", "a") as f:
        f.write(" done\nnew\n")
    (d / "app.log.2").write_text("appeared later\n")
    rig.step()
    assert rig.by_file == {str(d / "app.log"): ["half done", "new"], str(d / "app.log.2"): ["appeared later"]}
    rig.close()


def test_compressed_rotations_are_ignored_by_default(tmp_path) -> None:
    import gzip

    rig = Rig(tmp_path)
    (rig.dir / "app.log.2.gz").write_bytes(gzip.compress(b"compressed\n"))
    (rig.dir / "app.log.3").write_bytes(gzip.compress(b"compressed without a suffix\n"))
    write(rig.dir / "app.log", ["plain"])
    rig.step()
    assert rig.bodies == ["plain"]
    rig.close()


def test_a_last_line_without_newline_joins_the_held_multiline_record(tmp_path) -> None:
    multiline = {"start_pattern": r"^\[", "flush_timeout": "1s"}
    rig = Rig(tmp_path, multiline=multiline, partial_line_timeout="1s")
    app = rig.dir / "app.log"
    app.write_text("[1] first\n  more\n[2] second\n  trace\n")
    rig.step()
    with open(app, "a") as f:
        f.write('"} ')  # the file's very last bytes, no newline, after a pause
    rig.step(advance=0.9)
    assert rig.bodies == ["[1] first\n  more"]
    rig.step(advance=1.1)  # both timers due: the partial line goes into the record first
    assert rig.bodies == ["[1] first\n  more", '[2] second\n  trace\n"} ']
    rig.close()


def test_a_partial_line_whose_end_came_before_its_event_is_not_cut(tmp_path) -> None:
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    app.write_text("")
    rig.step()
    with open(app, "a") as f:
        f.write("first half, ")
    rig.step()  # held: no newline yet
    with open(app, "a") as f:
        f.write("second half\n")
    rig.now += 2  # partial_line_timeout passed; inotify's event for the second write not taken yet
    res = rig.tailer.step(rig.now, False, set(), False)
    assert [r.body for r in res.records] == ["first half, second half"]
    rig.close()


def test_a_file_truncated_and_rewritten_between_two_looks_is_read_anew(tmp_path) -> None:
    """Rewritten past the old offset (only its first bytes tell), or to fewer bytes (its size tells):
    either way the new content is read from its start, once, and the old content's lines stay as read."""
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, block("a", 10))
    rig.step()
    rig.step(scan=False)  # a look with nothing new in between
    with open(app, "w") as f:  # truncated and rewritten, longer than what was read
        f.write("\n".join(block("b", 30)) + "\n")
    rig.step(scan=False)
    assert rig.bodies == block("a", 10) + block("b", 30)
    assert rig.stats["truncations"] == 1
    with open(app, "w") as f:  # and again, shorter
        f.write("\n".join(block("c", 3)) + "\n")
    rig.step(scan=False)
    rig.step(scan=False)
    assert rig.bodies == block("a", 10) + block("b", 30) + block("c", 3)
    assert rig.stats["truncations"] == 2
    rig.close()


def test_a_round_looking_at_every_file_reads_only_those_that_changed(tmp_path, monkeypatch) -> None:
    """The periodic look at every file (the glob scan's round, polling) costs an fstat of a quiet file,
    not a read; a grown file and a file truncated and rewritten to its old size are still read."""
    rig = Rig(tmp_path, pattern="*.log")
    for i in range(20):
        write(rig.dir / f"f{i:02d}.log", block(f"f{i}", 2))
    rig.step()
    rig.step(scan=False)  # the files are seen as they are now (size and time)
    reads: list[int] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(fd) or real(fd, n, at))
    rig.step(scan=False)
    assert reads == []
    write(rig.dir / "f03.log", ["grown"])
    size = (rig.dir / "f07.log").stat().st_size
    write(rig.dir / "f07.log", ["r" * (size - 1)], mode="w")  # copytruncate and refill, same size
    rig.bodies.clear()
    rig.step(scan=False)
    assert "grown" in rig.bodies and "r" * (size - 1) in rig.bodies, rig.bodies
    assert len(set(reads)) == 2
    rig.close()


def test_a_round_looking_at_every_file_after_reads_checks_each_read_file_without_reading_it(
    tmp_path, monkeypatch
) -> None:
    """Files read since the last look have a newer time than the one kept (reads take no fstat): the glob
    scan's round after them takes it with one fstat and one read of the file's first bytes each, not a
    read at its end, another fstat and that same read; a file rewritten to the size read is still seen."""
    rig = Rig(tmp_path, pattern="*.log")
    for i in range(20):
        write(rig.dir / f"f{i:02d}.log", block(f"f{i}", 2))
    rig.step()
    rig.step(scan=False)
    for i in range(20):
        write(rig.dir / f"f{i:02d}.log", [f"more {i}"])
    rig.tailer.step(rig.now + 0.1, False, {str(rig.dir / f"f{i:02d}.log") for i in range(20)}, False)
    reads: list[int] = []
    stats: list[int] = []
    real_pread, real_fstat = os.pread, os.fstat
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(at) or real_pread(fd, n, at))
    monkeypatch.setattr(os, "fstat", lambda fd: stats.append(fd) or real_fstat(fd))
    rig.step(scan=False)
    assert reads == [0] * 20, reads
    assert len(stats) == 20
    reads.clear()
    rig.step(scan=False)
    assert reads == []
    size = (rig.dir / "f05.log").stat().st_size
    write(rig.dir / "f05.log", block("x", 1), mode="w")  # copytruncate and refill to the size read
    write(rig.dir / "f05.log", ["r" * (size - (rig.dir / "f05.log").stat().st_size - 1)])
    assert (rig.dir / "f05.log").stat().st_size == size
    rig.bodies.clear()
    rig.step(scan=False)
    assert rig.bodies == [*block("x", 1), "r" * (size - len(block("x", 1)[0]) - 2)], rig.bodies
    assert rig.stats["truncations"] == 1
    rig.close()


def ten_files_read(tmp: Path) -> tuple[Rig, list[Path]]:
    """A rig on ten files of two lines each, read once."""
    rig = Rig(tmp, pattern="*.log")
    paths = [rig.dir / f"f{i:02d}.log" for i in range(10)]
    for i, path in enumerate(paths):
        write(path, block(f"f{i}", 2))
    rig.step()
    return rig, paths


def test_a_plain_read_of_a_file_looked_at_before_skips_the_general_framing(tmp_path, monkeypatch) -> None:
    """A round at low rates reads a line or two of each of many files: whole lines, nothing held, of a file
    looked at before, are framed without the general path (``Framer.feed``); a partial line, or a file
    past its first 4 KiB, still reads and frames as before."""
    rig, paths = ten_files_read(tmp_path)
    fed: list[bytes] = []
    real = Framer.feed
    monkeypatch.setattr(Framer, "feed", lambda self, data: fed.append(data) or real(self, data))
    for i, path in enumerate(paths):
        write(path, [f"one {i}", f"two {i}"])
    rig.bodies.clear()
    rig.step(scan=False)
    assert sorted(rig.bodies) == sorted(f"{n} {i}" for i in range(10) for n in ("one", "two"))
    assert fed == []
    with open(paths[0], "a") as f:
        f.write("part")
    rig.step(scan=False)
    assert fed == [b"part"] and rig.tailer.by_path[str(paths[0])].framer.pending == b"part"
    write(paths[0], [" of a line"])
    write(paths[1], ["x" * 5000, "past its first page"])
    rig.bodies.clear()
    rig.step(scan=False)
    assert sorted(rig.bodies) == sorted(["part of a line", "x" * 5000, "past its first page"])
    fed.clear()
    write(paths[1], ["last"])  # past its first 4 KiB: a read at its end and one of its first bytes
    rig.bodies.clear()
    rig.step(scan=False)
    assert rig.bodies == ["last"] and fed == []
    rig.close()


def test_a_round_of_plain_reads_makes_their_records_without_a_step_per_file(tmp_path, monkeypatch) -> None:
    """At low rates a round reads a line or two of each of many files: those reads are checked, framed and
    made records in one loop and one batch, without the general path's step per file (``_pump``); the records,
    their times (in each file's order) and the checkpoint marks are those the general path makes, and a read
    that is anything else (here a partial line) takes the general path in the same round."""
    rig, paths = ten_files_read(tmp_path)
    pumped: list[str] = []
    real = Tailer._pump
    monkeypatch.setattr(Tailer, "_pump", lambda self, t, *a, **k: pumped.append(t.name) or real(self, t, *a, **k))
    for i, path in enumerate(paths):
        write(path, [f"one {i}"])
    res = rig.tailer.step(rig.now + 0.1, False, {str(p) for p in paths}, False)
    assert pumped == []
    assert sorted(r.body for r in res.records) == sorted(f"one {i}" for i in range(10))
    assert {dict(r.labels)["filename"] for r in res.records} == {str(p) for p in paths}
    first = res.records[0].time_ns
    assert all(r.time_ns == first for r in res.records)  # one time for a round's single lines, as before
    sizes = {str(p): p.stat().st_size for p in paths}
    assert {t.name: res.sent[t.key][0] for t in rig.tailer.trackers.values()} == sizes
    write(paths[1], ["two 1", "three 1"])  # two lines: each its own time, in order
    with open(paths[2], "a") as f:
        f.write("part")  # a partial line: the general path
    write(paths[3], ["two 3"])
    res = rig.tailer.step(rig.now + 0.2, False, {str(p) for p in paths[1:4]}, False)
    assert pumped == [str(paths[2])]
    by_file = collections.defaultdict(list)
    for r in res.records:
        by_file[dict(r.labels)["filename"]].append((r.time_ns, r.body))
    assert [body for _, body in by_file[str(paths[1])]] == ["two 1", "three 1"]
    assert by_file[str(paths[1])][0][0] < by_file[str(paths[1])][1][0]
    assert all(time_ns > first for time_ns, _ in by_file[str(paths[3])])
    assert str(paths[2]) not in by_file and rig.tailer.by_path[str(paths[2])].framer.pending == b"part"
    rig.close()


def test_a_young_file_is_checked_and_read_in_one_read_a_round(tmp_path, monkeypatch) -> None:
    """At low rates a round reads a line from each of many young files: the bytes that tell it still starts
    as it did (and that its growing fingerprint hashes) come with the new ones, one ``pread`` per file, and a
    rewrite is still seen; past its first page the two reads return."""
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, ["first " + "x" * 40])  # shorter than a fingerprint that identifies the file
    rig.step()
    reads: list[int] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(at) or real(fd, n, at))
    for i in range(8):  # the fingerprint grows at 64, 128, 256 ... bytes
        write(app, [f"line {i} " + "y" * 60])
        reads.clear()
        rig.step(scan=False)
        assert rig.bodies[-1] == f"line {i} " + "y" * 60
        assert reads == [0], (i, reads)
    tracker = next(iter(rig.tailer.trackers.values()))
    assert tracker.id.fp_len > 256 and tracker.head == app.read_bytes()[: tracker.id.fp_len]
    assert tracker.id.fp == fingerprint(tracker.head), "the grown fingerprint is the hash of the head kept"
    with open(app, "w") as f:  # rewritten past the old offset: its first bytes tell
        f.write("".join(f"new {i} " + "z" * 60 + "\n" for i in range(20)))
    rig.bodies.clear()
    rig.step(scan=False)
    assert rig.bodies == [f"new {i} " + "z" * 60 for i in range(20)] and rig.stats["truncations"] == 1
    write(app, ["w" * 5000])  # past the first page: the head is read on its own again
    rig.step(scan=False)
    write(app, ["last"])
    reads.clear()
    rig.step(scan=False)
    assert rig.bodies[-1] == "last" and len(reads) == 2 and 0 in reads, reads
    rig.close()


def test_a_read_for_a_line_asks_for_a_small_buffer_and_megabytes_are_still_read_whole(tmp_path, monkeypatch) -> None:
    """At low rates a read brings a line: it must not ask for a 1 MiB buffer (an mmap, an mremap and a
    munmap each where the allocator's mmap threshold is below that); megabytes go on in large reads."""
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    write(app, block("a", 3))
    rig.step()
    asked: list[int] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: asked.append(n) or real(fd, n, at))
    write(app, ["one more"])
    rig.step(scan=False)
    assert rig.bodies[-1] == "one more"
    assert asked and max(asked) <= 64 * 1024, asked
    lines = [f"{i:06d} " + "y" * 993 for i in range(3000)]  # 3 MB, more than a round's budget
    write(app, lines)
    rig.bodies.clear()
    for _ in range(5):
        rig.step(scan=False)
    assert rig.bodies == lines
    assert max(asked) == 1 << 20, "the bulk goes on in 1 MiB reads"
    rig.close()


def test_the_first_round_that_finds_a_backlog_is_short_and_the_next_ones_read_full_size(tmp_path) -> None:
    """A file read from its beginning at start: the first round stops after 256 KiB, so its lines can
    leave while the next rounds read 2 MiB each."""
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    lines = [f"{i:06d} " + "z" * 249 for i in range(20_000)]  # 256-byte lines, 5 MB
    write(app, lines)
    first = rig.step()
    assert first.more, "a backlog is left for the next rounds"
    assert rig.stats.bytes_read == 256 * 1024, "the first round reads 256 KiB"
    assert 1000 <= len(rig.bodies) <= 1024
    second = rig.step(scan=False)
    assert second.more
    assert rig.stats.bytes_read == 256 * 1024 + 2 * 1024 * 1024, "later rounds read 2 MiB"
    while rig.step(scan=False).more:
        pass
    assert rig.bodies == lines
    rig.close()


def test_a_first_round_with_nothing_to_read_leaves_the_next_one_short(tmp_path) -> None:
    """The short round is the first that reads something: a file found empty, or written later, starts so."""
    rig = Rig(tmp_path)
    app = rig.dir / "app.log"
    app.touch()
    rig.step()
    assert rig.bodies == []
    write(app, [f"{i:06d} " + "z" * 249 for i in range(20_000)])
    assert rig.step().more
    assert rig.stats.bytes_read == 256 * 1024
    rig.close()


def test_level_words_found_in_the_redaction_pass_give_the_records_of_a_search_of_their_own(tmp_path) -> None:
    """A round of raw lines with redaction: the level words are looked for only in the lines the redaction's
    RE2 pass stopped at (``many_finding``). The records, their bodies, levels and times, are those of the
    round where the redactor names no lines and every line is searched (real logs, several files a round,
    read in pieces); and the one pass was taken."""
    from agent.config import RedactionSection
    from agent.redact import Redactor

    corpus = Path(__file__).resolve().parents[4] / "shared" / "corpus" / "real"
    names = ["laravel_php.log", "apache_access_semicomplete.log", "nginx_access_zanbil.log", "zeek_http.log"]
    sources = [(corpus / name).read_bytes() for name in names if (corpus / name).exists()]
    sources.append(b"ERROR one password=hunter2\nplain line\nmail a@example.com INFO\n" * 40)
    redactor = Redactor.from_config(RedactionSection(), state_dir=tmp_path / "state")
    named: list[int] = []

    class Counted:  # the engine's streams, counting the rounds where it named the lines
        def __init__(self, name_lines: bool) -> None:
            self.streams, self.name_lines = redactor.streams(), name_lines

        def many(self, groups: list[list[str]], keys: list[str]) -> list[str]:
            return self.streams.many(groups, keys)

        def many_finding(
            self, groups: list[list[str]], keys: list[str], find: str
        ) -> tuple[list[str], list[int] | None]:
            if not self.name_lines:
                return self.streams.many(groups, keys), None
            lines, found = self.streams.many_finding(groups, keys, find)
            named.append(found is not None)
            return lines, found

    results = []
    for name_lines in (True, False):
        (tmp_path / str(name_lines)).mkdir()
        rig = Rig(tmp_path / str(name_lines), pattern="*.log")
        rig.tailer.redact = Counted(name_lines)
        records = []
        pieces = [source[i : i + 30_000] for source in sources for i in range(0, len(source), 30_000)]
        for step, piece in enumerate(pieces):  # each file grows by a piece a round, the others meanwhile
            with open(rig.dir / f"f{step % len(sources)}.log", "ab") as out:
                out.write(piece)
            records += rig.step().records
        records += rig.step().records
        results.append(
            [(r.body, r.severity, r.severity_number, Path(dict(r.labels)["filename"]).name) for r in records]
        )
    assert results[0] == results[1]
    assert sum(1 for _, severity, _, _ in results[0] if severity) > 80
    assert any(body.startswith("mail [REDACTED:email]") for body, *_ in results[0])
    assert named and all(named[:3]), "the rounds' lines were named by the redaction's pass"
