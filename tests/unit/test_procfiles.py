"""KeptFiles: /proc and /sys read through descriptors kept open between runs give fresh values, whole files,
and nothing stale; files on a disk are opened for each read; unread descriptors are closed."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from agent.procfiles import KeptFiles, TokenLayout

_opens: list[str] = []


def _hook(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], str) and args[0].startswith(("/proc/", "/sys/")):
        _opens.append(args[0])


sys.addaudithook(_hook)


def opened(path: str) -> int:
    return _opens.count(path)


def test_a_kept_descriptor_gives_fresh_values_without_opening_again():
    files = KeptFiles()
    before = opened("/proc/uptime")
    first = files.read("/proc/uptime")
    deadline = time.monotonic() + 2
    second = first
    while second == first and time.monotonic() < deadline:  # /proc/uptime moves every 10 ms
        time.sleep(0.02)
        second = files.read("/proc/uptime")
    assert second != first and float(second.split()[0]) > float(first.split()[0])
    assert opened("/proc/uptime") - before == 1 and len(files) == 1
    files.close()


def test_a_sysfs_attribute_is_read_once_per_call_through_one_descriptor():
    path = "/sys/class/net/lo/mtu"
    if not os.path.exists(path):
        pytest.skip("no sysfs here")
    expected = Path(path).read_bytes()
    files = KeptFiles()
    before = opened(path)
    values = {files.read_once(path) for _ in range(5)}
    assert values == {expected} and opened(path) - before == 1
    files.close()


def test_a_seq_file_longer_than_a_page_is_read_whole():
    # /proc/crypto is a seq_file listing every algorithm (several pages) that does not change meanwhile:
    # a seq_file hands out about a page per read, whatever was asked
    expected = Path("/proc/crypto").read_bytes()
    if len(expected) <= 4096:
        pytest.skip("/proc/crypto fits in a page here")
    files = KeptFiles()
    assert files.read("/proc/crypto") == expected
    assert files.read("/proc/crypto") == expected  # and again from offset 0 through the kept descriptor
    assert files.read("/proc/crypto", 64) == expected
    files.close()


def test_files_on_a_disk_are_opened_for_each_read(tmp_path):
    # A fixture tree's file replaced by a rename: a kept descriptor would go on reading the old one.
    path = tmp_path / "softnet_stat"
    path.write_text("old\n")
    files = KeptFiles()
    assert files.read(str(path)) == b"old\n"
    replacement = tmp_path / "new"
    replacement.write_text("new\n")
    replacement.rename(path)
    assert files.read(str(path)) == b"new\n" and files.read_once(str(path)) == b"new\n"
    assert len(files) == 0


def test_sweep_closes_what_a_run_did_not_read_and_the_limit_holds():
    files = KeptFiles(limit=2)
    for path in ("/proc/uptime", "/proc/loadavg", "/proc/version"):
        files.read(path)  # the third is read, not kept
    assert len(files) == 2
    fds_before = len(os.listdir("/proc/self/fd"))
    files.sweep()  # end of the run that read them: all kept
    files.read("/proc/uptime")
    files.sweep()  # the next run read only uptime: loadavg's descriptor is closed
    assert len(files) == 1 and len(os.listdir("/proc/self/fd")) == fds_before - 1
    files.close()
    assert len(files) == 0


def test_a_missing_file_raises_as_open_does():
    files = KeptFiles()
    with pytest.raises(FileNotFoundError):
        files.read("/proc/no-such-file")
    with pytest.raises(FileNotFoundError):
        files.read_once("/sys/no-such-attribute")
    assert len(files) == 0


def test_a_socket_table_longer_than_a_page_is_read_whole_with_a_record_length():
    # /proc/net/udp hands out at most 31 rows of 128 bytes per read: with 40 sockets the first read is
    # short of a page by one row and must not be taken for the whole table
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(40)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        ports = {s.getsockname()[1] for s in sockets}
        files = KeptFiles()
        for text in (files.read("/proc/net/udp", record=128), b"".join(files.chunks("/proc/net/udp", 128, 1000))):
            listed = {int(line.split()[1].split(b":")[1], 16) for line in text.splitlines()[1:]}
            assert ports <= listed and text.endswith(b"\n")
        files.close()
    finally:
        for s in sockets:
            s.close()


def test_a_short_table_is_one_read_and_a_file_on_a_disk_comes_whole_in_pieces(tmp_path, monkeypatch):
    files = KeptFiles()
    expected = files.read("/proc/net/udp")
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(at) or real_pread(fd, n, at))
    if len(expected) + 256 < 4096:  # room for another row in the page: that read was all of it
        assert files.read("/proc/net/udp", record=256) == expected and reads == [0]
        assert b"".join(files.chunks("/proc/net/udp", 256)) == expected and reads == [0, 0]
    monkeypatch.undo()
    table = tmp_path / "tcp"
    table.write_bytes(b"".join(b"%5d: row\n" % i for i in range(20_000)))  # 220 KB, pieces cut rows
    pieces = list(files.chunks(str(table), 256, size=65536))
    assert b"".join(pieces) == table.read_bytes() and len(pieces) == 5 and len(files) == 1
    files.close()


def test_a_token_layout_picks_the_numbers_of_a_read_laid_out_the_same_and_nothing_else():
    text = "MemTotal: 100 kB\nHugePages_Total: 0\nDirectMap: 7 kB\n"
    tokens = text.split()
    layout = TokenLayout(tokens, text.count("\n"), [4, 1, 6])  # read in the collector's order
    later = "MemTotal: 120 kB\nHugePages_Total: 3\nDirectMap: 9 kB\n"
    assert layout.numbers(later.split(), later.count("\n")) == [3, 120, 9]
    for other in (
        "MemTotal: 120 MB\nHugePages_Total: 3\nDirectMap: 9 kB\n",  # a word changed
        "MemTotal: 120 kB\nHugePages_Total: x\nDirectMap: 9 kB\n",  # not an integer
        "MemTotal: 120 kB\nHugePages_Total: 3\nDirectMap: 9 kB\nNew: 1\n",  # more
        "MemTotal: 120 kB HugePages_Total: 3\nDirectMap: 9 kB\n",  # the same tokens on fewer lines
    ):
        assert layout.numbers(other.split(), other.count("\n")) is None, other


def test_a_file_printed_in_one_go_is_one_read_unless_it_filled_what_was_asked(monkeypatch):
    # /proc/version is printed in one go (single_open) and does not change
    expected = Path("/proc/version").read_bytes()
    files = KeptFiles()
    assert files.read("/proc/version", 16, in_one_go=True) == expected  # 16 bytes asked: read on to the end
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(at) or real_pread(fd, n, at))
    assert files.read("/proc/version", in_one_go=True) == expected and reads == [0]
    assert files.read("/proc/version") == expected and reads == [0, 0, len(expected)]  # not said: one more
    files.close()
