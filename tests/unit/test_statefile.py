"""agent.statefile: the atomic replace and the setting aside that the logs checkpoint, the
journal cursor and the sequence source share."""

from __future__ import annotations

import os
import stat

from agent.statefile import set_aside, write_atomically


def test_write_atomically_replaces_the_file_whole_private_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "collectors" / "logs" / "checkpoints.json"  # the directory is made
    write_atomically(path, b"first")
    write_atomically(path, b"x" * 300_000)  # more than one write() may take
    assert path.read_bytes() == b"x" * 300_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # checkpoints name the files read
    assert os.listdir(path.parent) == ["checkpoints.json"]


def test_set_aside_keeps_the_bad_file_under_another_name_and_says_where(tmp_path) -> None:
    path = tmp_path / "cursor.json"
    path.write_bytes(b"{torn")
    said = set_aside(path)
    [aside] = tmp_path.iterdir()
    assert not path.exists() and aside.name.startswith("cursor.json.corrupt-") and aside.read_bytes() == b"{torn"
    assert said == f"moved to {aside.name}"
    assert set_aside(tmp_path / "gone.json").startswith("could not be moved aside (")
