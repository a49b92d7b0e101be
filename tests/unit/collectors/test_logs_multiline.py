"""Multiline patterns on RE2: the batch matcher agrees with a line-by-line search, and no pattern stalls."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import re2

from agent.config import ConfigError, loads_config
from collectors.logs.multiline import LineMatcher, Multiline, _public_span

CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus" / "real"
CATASTROPHIC = r"^(\w+\s?)+:"
FORTY_WORDS = " ".join(f"word{i}" for i in range(40))  # no colon: a backtracking engine tries 2**40 splits


def per_line(pattern: str, lines: list[str]) -> list[bool]:
    compiled = re2.compile(pattern)
    return [compiled.search(line) is not None for line in lines]


PATTERNS = [
    r"^\[\d{4}-\d{2}-\d{2}",  # Laravel
    r"^\s",  # tracebacks
    r"^\d{4}-\d\d-\d\d",
    r"error$",
    r"\bGET\b",
    r"^$",  # empty lines
    r"x*",  # matches everywhere, even empty
    r"[^a]b",  # a negated class: never reaches into the next line
    r"\s+:\s",
    r"(?i)^(?:warn|error)",
    r"(?s)a.b",
    r"\Aabc",  # text anchors: matched line by line
    r"abc\z",
    r"(?-m:^ab)",
    r"\Qa+b\E",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_batch_matcher_agrees_with_a_search_of_each_line(pattern: str) -> None:
    rng = random.Random(pattern)
    pieces = ["abc", "a b", "ab", "x", " ", "\t", ":", "error", "GET", "[2023-01-01]", "2023-01-01", "WARN", "é", ""]
    lines = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(3000)]
    assert LineMatcher(pattern).flags(lines) == per_line(pattern, lines)


@pytest.mark.parametrize("pattern", PATTERNS[:6])
def test_the_public_re2_api_gives_the_same_answers(pattern: str) -> None:
    lines = ["2023-01-01 x", "  at y", "", "GET / error", "[2023-01-01] z", "tail"] * 50
    matcher = LineMatcher(pattern)
    if matcher._runs is not None:
        matcher._span = _public_span(matcher._runs)  # as if google-re2's binding changed
    assert matcher.flags(lines) == per_line(pattern, lines)


@pytest.mark.parametrize("name", ["laravel_php.log", "linux_auth_sshd.log", "apache_access_semicomplete.log"])
def test_the_batch_matcher_agrees_on_real_logs(name: str) -> None:
    lines = (CORPUS / name).read_text(errors="replace").splitlines()
    for pattern in (r"^\[\d{4}-\d{2}-\d{2}", r"^\s", r"sshd\[\d+\]: (Failed|Accepted)", r'" (4|5)\d\d '):
        assert LineMatcher(pattern).flags(lines) == per_line(pattern, lines), pattern


def test_a_pattern_that_backtracks_forever_in_re_completes_on_re2() -> None:
    # in a subprocess, so that a regression hangs (and fails) only the child
    script = textwrap.dedent(f"""
        from collectors.logs.multiline import Multiline
        ml = Multiline({CATASTROPHIC!r}, "", 500, 1 << 20)
        ml.reset(0)
        lines = [{FORTY_WORDS!r}] * 200 + ["key: value"]
        records, _ = ml.feed(lines, list(range(1, 202)), now=0.0)
        print(len(records), ml.flush()[0])
    """)
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # the 200 long lines match nothing: they continue nothing held, so they form one record; "key: value" starts one
    assert done.stdout.split(" ", 1) == ["1", "key: value\n"]


def test_multiline_record_boundaries_with_the_catastrophic_pattern() -> None:
    ml = Multiline(CATASTROPHIC, "", 500, 1 << 20)
    ml.reset(0)
    lines = ["head: one", FORTY_WORDS, "tail: two"]
    records, _ = ml.feed(lines, [10, 20, 30], now=0.0)
    assert records == ["head: one\n" + FORTY_WORDS]


@pytest.mark.parametrize(
    ("key", "pattern"),
    [("start_pattern", r"^(a)\1"), ("continuation_pattern", r"^(?=\s)"), ("start_pattern", r"(?<!x)y")],
)
def test_patterns_re2_cannot_run_are_config_errors_naming_the_key(key: str, pattern: str) -> None:
    text = f"[[collectors.logs]]\npaths = ['/var/log/app/*.log']\nmultiline.{key} = '{pattern}'\n"
    with pytest.raises(ConfigError) as caught:
        loads_config(text)
    message = str(caught.value)
    assert "collectors.logs[0].multiline" in message and key in message and "RE2" in message
