"""The default rules on real logs: how many lines they change, and false positives.

A line without an IP address and without anything e-mail shaped that still
gets redacted is a false positive (the corpus holds no secrets, card numbers
or IBANs). Target: at most 0.1% of lines. Run with ``-s`` to see the report.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from agent.config import RedactionSection
from agent.redact import Redactor

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "real"
FILES = sorted(CORPUS.glob("*.log")) if CORPUS.is_dir() else []

pytestmark = pytest.mark.skipif(not FILES, reason=f"no corpus at {CORPUS}")

# Independent of the rules under test: anything e-mail shaped, anything that parses as an address.
EMAIL_SHAPED = re.compile(r"[^\s@<>()\[\]\"';,]+(?:@|%40)[^\s@<>()\[\]\"';,/]+\.[A-Za-z]{2,}")
ADDRESS_CANDIDATE = re.compile(r"[0-9A-Fa-f:.]*[:.][0-9A-Fa-f:.]+")


def has_address(line: str) -> bool:
    for token in ADDRESS_CANDIDATE.findall(line):
        for piece in (token, token.strip(".:")):
            try:
                ipaddress.ip_address(piece)
                return True
            except ValueError:
                pass
    return False


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor.from_config(RedactionSection(), state_dir=Path("/nonexistent"))


@pytest.fixture(scope="module")
def report(redactor: Redactor):
    rows = {}
    for path in FILES:
        lines = read_lines(path)
        out = redactor.redact_lines(lines)
        changed = [(a, b) for a, b in zip(lines, out, strict=True) if a != b]
        false = [b for a, b in changed if not EMAIL_SHAPED.search(a) and not has_address(a)]
        rows[path.name] = (len(lines), len(changed), false)
    print("\nfile: lines, changed, false positives")
    for name, (total, changed, false) in rows.items():
        print(f"  {name}: {total}, {changed} ({changed / total:.2%}), {len(false)}")
        for line in false[:3]:
            print(f"    {line[:200]}")
    return rows


def test_false_positives_stay_under_a_tenth_of_a_percent(report):
    lines = sum(total for total, _, _ in report.values())
    false = [line for _, _, found in report.values() for line in found]
    assert len(false) <= lines * 0.001, false[:10]


def test_every_changed_line_was_changed_for_an_e_mail_or_an_address(report):
    # The corpus holds no secrets: the only marks the default rules should leave are e-mails.
    for _total, _changed, false in report.values():
        assert false == []


def test_e_mail_addresses_in_the_corpus_are_found(redactor: Redactor):
    missed = []
    for path in FILES:
        for line in read_lines(path):
            for shaped in EMAIL_SHAPED.findall(line):
                # SSH algorithm names and retina image names are e-mail shaped but are not addresses
                if re.search(r"@(openssh\.com|libssh\.org|lysator\.liu\.se)$|\.(png|jpg|gif)$", shaped):
                    continue
                if shaped in redactor.redact(line):
                    missed.append(shaped)
    assert missed == []


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_batch_and_single_line_paths_agree_on_real_logs(redactor: Redactor, path: Path):
    lines = read_lines(path)
    assert redactor.redact_lines(lines) == [redactor.redact(line) for line in lines]


def test_network_set_redacts_every_address_line_but_not_versions():
    redactor = Redactor.from_config(RedactionSection(sets=["network"]), state_dir=Path("/nonexistent"))
    for path in FILES:
        for line in read_lines(path):
            out = redactor.redact(line)
            if out != line:
                assert has_address(line), line
            # user agents carry four-part versions such as rv:1.9.2.12 or Chrome/32.0.1700.77
            for version in re.findall(r"(?:rv:|/)(\d+\.\d+\.\d+\.\d+)", line):
                assert version in out
