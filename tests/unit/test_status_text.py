"""``hostwatch status`` rendering: tables, colour only on a terminal, hostile text escaped."""

from __future__ import annotations

import io

import pytest

from agent.status_text import EXIT_UNREACHABLE, Style, clean, default_url, render, run, sparkline
from tests.support import free_port

DOCUMENT = {
    "status": "ready",
    "reasons": [],
    "version": "1.2.3",
    "hostname": "web-1",
    "uptime_seconds": 3725,
    "charts": {
        "cpu": {"series": ["user", "system"], "data": [[1, 2, 3], [10.0, 20.0, 30.0], [1.0, 2.0, None]]},
        "memory": {"series": ["used"], "data": [[1], [2 * 1024**3]]},
    },
    "host": {"cpus": 4, "load1": 0.5, "memory_total_bytes": 8 * 1024**3, "filesystems": []},
    "outputs": [
        {
            "name": "rw",
            "type": "remote_write",
            "sent_per_second": 120.0,
            "dropped_per_second": 0.0,
            "queued_items": 3,
            "queued_bytes": 2048,
            "buffer_fill_percent": 1.5,
            "dropped_items": {},
            "last_success": None,
            "last_error": "boom\x1b[2J",
        }
    ],
    "log_files": [
        {
            "collector": "logs",
            "path": "/var/log/\x1b]0;owned\x07x.log",
            "size_bytes": 10,
            "offset": 4,
            "behind_bytes": 6,
        }
    ],
    "collectors": [{"name": "cpu", "runs": 3, "errors": 1, "last_duration_seconds": 0.002, "last_error": "bad\nline"}],
    "problems": [{"time": "2026-01-01T00:00:00Z", "level": "error", "source": "delivery", "message": "x"}],
}


class Tty(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_plain_report_has_the_sections_and_no_terminal_control() -> None:
    text = render(DOCUMENT, Style(colour=False))
    assert "\x1b" not in text and "\x07" not in text
    assert "web-1: READY" in text and "version 1.2.3" in text and "up 1h 2m" in text
    assert "cpu      user 30.0%  system 2.0%" in text  # the last value of each series
    assert "used 2.0 GiB  of 8.0 GiB" in text
    for heading in ("OUTPUTS", "LOG FILES", "COLLECTORS", "RECENT WARNINGS AND ERRORS"):
        assert heading in text
    assert "/var/log/\\x1b]0;owned\\x07x.log" in text  # shown, not obeyed
    assert "boom\\x1b[2J" in text and "bad\\x0aline" in text
    logs_row = next(line for line in text.splitlines() if line.strip().startswith("logs "))
    assert logs_row.split()[1:7] == ["10", "B", "4", "B", "6", "B"]


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert Style.for_stream(Tty()).colour
    assert not Style.for_stream(io.StringIO()).colour
    monkeypatch.setenv("NO_COLOR", "1")
    assert not Style.for_stream(Tty()).colour
    coloured = render(DOCUMENT, Style(colour=True))
    assert "\x1b[32mREADY\x1b[0m" in coloured
    assert "\x1b[31m" + "boom\\x1b[2J" in coloured  # the error in red, its own escape defused


def test_long_last_column_is_cut_to_the_terminal_width() -> None:
    document = dict(DOCUMENT, problems=[dict(DOCUMENT["problems"][0], message="m" * 500)])
    text = render(document, Style(colour=False), width=100)
    assert max(len(line) for line in text.splitlines() if "delivery" in line) <= 100


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9730", "http://127.0.0.1:9730"),
        (":9730", "http://127.0.0.1:9730"),
        ("0.0.0.0:9730", "http://127.0.0.1:9730"),
        ("[::]:9730", "http://[::1]:9730"),
        ("[::1]:9", "http://[::1]:9"),
    ],
)
def test_default_url_reaches_a_wildcard_listen_on_loopback(listen: str, url: str) -> None:
    assert default_url(listen) == url


def test_unreachable_agent_exits_1(capsys) -> None:
    out = io.StringIO()
    assert run(f"http://127.0.0.1:{free_port()}", watch=None, as_json=False, timeout=2, stream=out) == EXIT_UNREACHABLE
    assert out.getvalue() == ""
    assert "cannot reach the agent" in capsys.readouterr().err


def test_clean_and_sparkline() -> None:
    assert clean("a\tb\x9bc") == "a\\x09b\\x9bc"
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([None, 5]) == ""
