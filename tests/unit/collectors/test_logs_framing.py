"""Line framing: LF/CRLF, partial lines, overlong lines, invalid bytes, encodings, offsets."""

from __future__ import annotations

import random

import pytest

from collectors.logs.framing import TAIL_BYTES, Framer
from collectors.logs.stats import LogStats


def stats() -> LogStats:
    return LogStats()


def feed_all(framer: Framer, data: bytes, sizes: list[int]) -> list[str]:
    lines, pos = [], 0
    for size in sizes:
        got, _ = framer.feed(data[pos : pos + size])
        lines.extend(got)
        pos += size
    got, _ = framer.feed(data[pos:])
    lines.extend(got)
    return lines


def reference_lines(data: bytes) -> list[str]:
    """What a reader of the whole file sees: complete lines, CR before LF stripped."""
    parts = data.split(b"\n")[:-1]
    return [p[:-1].decode() if p.endswith(b"\r") else p.decode() for p in parts]


@pytest.mark.parametrize("seed", range(20))
def test_any_chunking_gives_the_lines_of_the_whole_file(seed: int) -> None:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma δέλτα", "", "x" * 300, "ünïcödé ✓", "tab\there"]
    data = (
        b"".join((rng.choice(words) + str(i)).encode() + rng.choice([b"\n", b"\r\n"]) for i in range(400))
        + b"unfinished"
    )
    sizes = [rng.randint(1, 700) for _ in range(60)]
    framer = Framer("utf-8", 256 * 1024, stats(), 0, ends=bool(seed % 2))
    assert feed_all(framer, data, sizes) == reference_lines(data)
    assert framer.consumed == data.rfind(b"\n") + 1
    assert framer.pending == b"unfinished"
    assert framer.tail == data[: framer.consumed][-TAIL_BYTES:]


def test_line_end_offsets_count_bytes_not_characters() -> None:
    data = "é1\nsecond\r\n\nlast\n".encode()
    framer = Framer("utf-8", 1024, stats(), 100, ends=True)
    lines, ends = framer.feed(data)
    assert lines == ["é1", "second", "", "last"]
    starts = [100 + i + 1 for i, b in enumerate(data) if b == 0x0A]
    assert ends == starts


def test_partial_line_is_held_then_flushed_and_its_late_newline_ignored() -> None:
    framer = Framer("utf-8", 1024, stats(), 0, ends=False)
    assert framer.feed(b"one\ntw") == (["one"], None)
    assert framer.consumed == 4
    assert framer.flush() == ("tw", 6)
    assert framer.flush() is None
    # the writer finishes the line after the timeout: the newline ends nothing new
    assert framer.feed(b"\nthree\n") == (["three"], None)
    assert framer.consumed == 13


def test_flushed_partial_line_drops_a_trailing_cr() -> None:
    framer = Framer("utf-8", 1024, stats(), 0, ends=False)
    framer.feed(b"windows line\r")
    assert framer.flush() == ("windows line", 13)
    assert framer.feed(b"\nnext\r\n") == (["next"], None)


def test_overlong_lines_are_cut_and_counted_never_dropped() -> None:
    counts = stats()
    limit = 64
    long_line = "é" * 100  # 200 bytes: the cut must not split a character
    data = f"short\n{long_line}\nafter\n".encode()
    framer = Framer("utf-8", limit, counts, 0, ends=False)
    lines, _ = framer.feed(data)
    assert lines[0] == "short" and lines[2] == "after"
    assert lines[1] == "é" * 32 and len(lines[1].encode()) <= limit
    assert counts["lines_truncated"] == 1
    assert framer.consumed == len(data)


def test_an_overlong_line_arriving_in_pieces_is_cut_once_and_the_rest_skipped() -> None:
    counts = stats()
    framer = Framer("utf-8", 100, counts, 0, ends=True)
    got: list[str] = []
    ends: list[int] = []
    data = b"a" * 1000 + b"\nnext\n"
    for i in range(0, len(data), 30):
        lines, e = framer.feed(data[i : i + 30])
        got += lines
        ends += e
    assert got == ["a" * 100, "next"]
    assert counts["lines_truncated"] == 1
    assert ends[-1] == len(data)
    assert framer.consumed == len(data)


def test_invalid_utf8_is_replaced_and_counted_per_line() -> None:
    counts = stats()
    framer = Framer("utf-8", 1024, counts, 0, ends=False)
    lines, _ = framer.feed(b"good\nbad \xff\xfe here\nalso bad \xc3\nfine\n")
    assert lines == ["good", "bad \ufffd\ufffd here", "also bad \ufffd", "fine"]
    assert counts["lines_invalid"] == 2


def test_latin1() -> None:
    framer = Framer("latin-1", 1024, stats(), 0, ends=False)
    assert framer.feed("café\r\nnaïve\n".encode("latin-1"))[0] == ["café", "naïve"]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_follows_the_byte_order_mark(codec: str) -> None:
    from collectors.logs.framing import resolve_encoding

    text = "first ✓\r\nzweite Zeile\nĊ\n"  # Ċ is U+010A: a 0x0A byte that is no newline
    data = "\ufeff".encode(codec) + text.encode(codec)
    encoding = resolve_encoding("utf-16", data[:2])
    assert encoding == codec.replace("-le", "le").replace("-be", "be")
    framer = Framer(encoding, 1024, stats(), 0, ends=True)
    lines: list[str] = []
    for i in range(0, len(data), 3):  # odd chunk sizes split code units
        lines += framer.feed(data[i : i + 3])[0]
    assert lines == ["first ✓", "zweite Zeile", "Ċ"]
    assert framer.consumed == len(data)


def test_utf8_byte_order_mark_at_file_start_is_not_part_of_the_line() -> None:
    framer = Framer("utf-8", 1024, stats(), 0, ends=False)
    assert framer.feed(b"\xef\xbb\xbfhello\n")[0] == ["hello"]
    resumed = Framer("utf-8", 1024, stats(), 9, ends=False)  # not at the start: bytes as they are
    assert resumed.feed("\ufeffx\n".encode())[0] == ["\ufeffx"]


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_whole_lines_with_nothing_held_frame_as_the_general_path_frames_them(encoding) -> None:
    """Reads of whole lines (the usual read at low rates) take a shorter path: the same lines, offsets,
    tail bytes and counts as the line-by-line path (``ends=True``) gives, read after read, whatever
    came before (a partial line, an overlong line, invalid bytes, CRLF, a byte order mark)."""
    rng = random.Random(7)
    pieces = [b"plain\n", b"crlf\r\n", b"two\nlines\n", b"\xff\xfebad\n", "caf\u00e9\n".encode(encoding)]
    pieces += [b"partial", b" end\n", b"x" * 100 + b"\n", b"\n", b"lone\rcr\n", b"\xef\xbb\xbfbom\n"]
    for _ in range(50):
        reads = [rng.choice(pieces) for _ in range(rng.randint(1, 12))]
        fast, slow = Framer(encoding, 64, stats(), 0, ends=False), Framer(encoding, 64, stats(), 0, ends=True)
        for data in reads:
            assert fast.feed(data)[0] == slow.feed(data)[0], reads
            assert (fast.consumed, fast.tail, fast.pending) == (slow.consumed, slow.tail, slow.pending), reads
        assert vars_of(fast.stats) == vars_of(slow.stats), reads


def vars_of(s: LogStats) -> tuple:
    return (s.lines_truncated, s.lines_invalid)
