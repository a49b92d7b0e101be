"""When the redaction's RE2 programs are compiled: late, on first use, and never weaker for it.

The programs of a rule set are compiled on their first use (``agent.redact._Programs``),
and ASCII text goes to the rules' ASCII forms (``Rule.ascii_pattern``). These tests hold
that this changes when the work is done, never what is redacted or when an error shows.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from pathlib import Path

import pytest
import re2

import agent.redact
from agent.config import ConfigError, RedactionRule, RedactionSection, loads_config
from agent.redact import Redactor, _Compiled, check_rules
from agent.redact_rules import BUILTIN_SETS
from tests.unit.test_redact import NEGATIVE, POSITIVE

ALL = [rule for rules in BUILTIN_SETS.values() for rule in rules]
# the same rules with no ASCII forms: every text goes to the Unicode programs, as before they existed
UNICODE_ONLY = [dataclasses.replace(rule, ascii_pattern=None) for rule in ALL]
CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "real"
NO_REGISTRY: dict = {"collectors": {}, "outputs": {}}


@pytest.fixture(scope="module")
def warm() -> Redactor:
    return Redactor(ALL)


def compiled(redactor: Redactor) -> _Compiled:
    return redactor._compiled


def is_stub(bound: object, stub: object) -> bool:
    return bound == stub  # a bound method equals another of the same function and instance


# ------------------------------------------------------------------ compiled late


def test_building_the_default_redactor_compiles_nothing_and_ascii_text_leaves_the_unicode_programs_alone():
    redactor = Redactor.from_config(RedactionSection(), state_dir=Path("/nonexistent"))
    full, ascii_ = compiled(redactor).full, compiled(redactor).ascii
    assert full is not ascii_  # the e-mail rule has an ASCII form
    for programs in (full, ascii_):
        assert is_stub(programs.set_match, programs._first_set_match)
        assert is_stub(programs.scan_from, programs._first_scan)
    lines = ["GET /index.html 200", "mail from bob@example.com", "password=hunter2"]
    assert redactor.redact_lines(lines) == [
        "GET /index.html 200",
        "mail from [REDACTED:email]",
        "password=[REDACTED:password]",
    ]
    assert not is_stub(ascii_.scan_from, ascii_._first_scan)
    assert not is_stub(ascii_.set_match, ascii_._first_set_match)
    # only the rules a line's Set match named were compiled
    names = [rule.name for rule in compiled(redactor).rules]
    searched = {names[i] for i, search in enumerate(ascii_.search) if search.__name__ != "first"}
    assert searched == {"email", "password"}
    # the Unicode programs (the e-mail rule's \p{L}: most of the default rules' compile time) were not needed
    assert is_stub(full.set_match, full._first_set_match) and is_stub(full.scan_from, full._first_scan)


@pytest.mark.parametrize("rule, text, secret", POSITIVE, ids=[f"{i}-{case[0]}" for i, case in enumerate(POSITIVE)])
def test_a_rule_compiled_on_its_first_use_redacts_its_first_match(warm: Redactor, rule: str, text: str, secret):
    expected = warm.redact(text)
    assert f"[REDACTED:{rule}]" in expected
    if secret is not None:
        assert secret not in expected
    # a fresh redactor each time: the line is the first its programs and the rule's own regex see
    assert Redactor(ALL).redact(text) == expected
    assert Redactor(ALL).redact_lines([text]) == [expected]
    batch = ["nothing here", text, "nor here"]  # (a key's BEGIN line masks the line after it)
    assert Redactor(ALL).redact_lines(batch) == warm.redact_lines(batch)
    groups, keys = [["nothing here"], [text]], ["a.log", "b.log"]
    assert Redactor(ALL).streams().many(groups, keys) == warm.streams().many(groups, keys) == ["nothing here", expected]


def test_non_ascii_text_after_ascii_text_compiles_the_unicode_programs_and_is_redacted():
    redactor = Redactor(ALL)
    assert redactor.redact_lines(["plain ascii, bob@example.com"]) == ["plain ascii, [REDACTED:email]"]
    full = compiled(redactor).full
    assert is_stub(full.scan_from, full._first_scan)
    batch = ["grüße an jürgen@beispiel.de", "ascii bob@example.com", "Straße 4111 1111 1111 1111"]
    assert redactor.redact_lines(batch) == [
        "grüße an [REDACTED:email]",
        "ascii [REDACTED:email]",
        "Straße [REDACTED:credit-card]",
    ]
    assert Redactor(ALL).redact("mail an jürgen@beispiel.de") == "mail an [REDACTED:email]"
    assert Redactor(ALL).redact("mail an jürgen@beispiel.de\nand bob@example.com") == (
        "mail an [REDACTED:email]\nand [REDACTED:email]"
    )
    # a Unicode letter inside an address only the Unicode form matches whole
    assert Redactor(ALL).redact_lines(["to élodie@exämple.fr"]) == ["to [REDACTED:email]"]


def test_threads_racing_on_the_first_use_get_the_same_redaction(warm: Redactor):
    lines = [text for _, text, _ in POSITIVE] + NEGATIVE + ["grüße an jürgen@beispiel.de"]
    expected = warm.redact_lines(lines)
    for _ in range(3):
        redactor = Redactor(ALL)
        start = threading.Barrier(4)
        results: list[list[str]] = []

        def work(redactor: Redactor = redactor, start: threading.Barrier = start, results: list = results) -> None:
            start.wait()
            results.append(redactor.redact_lines(lines))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [expected] * 4


# ------------------------------------------------------------------ the ASCII forms match the same


def test_unicode_letter_and_digit_classes_match_exactly_the_ascii_ones_on_ascii_characters():
    pairs = [(r"[\p{L}]", "[A-Za-z]"), (r"[\p{N}]", "[0-9]"), (r"[\p{L}\p{N}._%+\-]", r"[A-Za-z0-9._%+\-]")]
    for unicode_class, ascii_class in pairs:
        wide, narrow = re2.compile(unicode_class), re2.compile(ascii_class)
        for code in range(128):
            char = chr(code)
            assert bool(wide.fullmatch(char)) == bool(narrow.fullmatch(char)), (unicode_class, code)


def test_every_ascii_form_has_its_rules_groups():
    for rule in ALL:
        if rule.ascii_pattern is not None:
            assert re2.compile(rule.ascii_pattern).groups == re2.compile(rule.pattern).groups, rule.name


def ascii_texts() -> list[str]:
    texts = [text for _, text, _ in POSITIVE if text.isascii()] + [text for text in NEGATIVE if text.isascii()]
    rng = random.Random(14)
    long_word = "abcdefghijklmnopqrstuvwxy"  # longer than a top-level domain's 24 letters
    pieces = ["bob", "a.b", "x_y", "%40", "%2540", "@", ".", "-", "com", "c0m", "1", "99", "+", "%", " ", long_word]
    for _ in range(3000):
        texts.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    if CORPUS.is_dir():
        for path in sorted(CORPUS.glob("*.log")):
            lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
            texts += [line for line in lines if line.isascii()]
    return texts


def test_on_ascii_text_the_ascii_forms_redact_exactly_what_the_unicode_rules_do():
    texts = ascii_texts()
    assert len(texts) > 3000
    ascii_forms, unicode_only = Redactor(ALL), Redactor(UNICODE_ONLY)
    assert compiled(unicode_only).ascii is compiled(unicode_only).full
    assert ascii_forms.redact_lines(texts) == unicode_only.redact_lines(texts)
    sample = texts[:: max(1, len(texts) // 2000)]
    assert [ascii_forms.redact(text) for text in sample] == [unicode_only.redact(text) for text in sample]
    changed = sum(a != b for a, b in zip(texts, ascii_forms.redact_lines(texts), strict=True))
    assert changed > 100  # the comparison saw the e-mail rule at work, not only clean lines


# ------------------------------------------------------------------ errors stay at load


def test_every_built_in_rule_together_compiles_in_both_alphabets():
    # check_rules does not compile the built-in sets at load: this test is what holds them to RE2's limits
    both = _Compiled(ALL)
    both.full.compile_all()
    both.ascii.compile_all()
    assert check_rules(RedactionSection(sets=list(BUILTIN_SETS))) == []


def rules_config(count: int) -> str:
    rules = "".join(f"[[redaction.rules]]\nname = 'r{i}'\npattern = 'x{i}\\w{{1000}}'\n" for i in range(count))
    return "[redaction]\nsets = ['secrets']\n" + rules


def test_rules_that_together_exceed_re2s_limits_fail_at_load_not_at_first_use(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(agent.redact, "MAX_MEM", 1 << 20)  # a small budget: eight of these rules exceed it
    with pytest.raises(ConfigError) as info:
        loads_config(rules_config(8), registry=NO_REGISTRY, environ={})
    assert info.value.errors == ["redaction: the rules together exceed RE2's limits: failed to compile Set"]
    config = loads_config(rules_config(2), registry=NO_REGISTRY, environ={})
    redactor = Redactor.from_config(config.redaction, state_dir=Path("/nonexistent"))
    assert redactor.redact_lines(["x1" + "a" * 1000]) == ["[REDACTED:r1]"]


def test_a_bad_custom_rule_fails_at_load_and_from_config_before_any_line():
    section = RedactionSection(sets=["secrets"], rules=[RedactionRule(name="bad", pattern="a(?=b)")])
    with pytest.raises(ValueError, match=r"redaction.rules\[0\] \(bad\).pattern: invalid perl operator"):
        Redactor.from_config(section, state_dir=Path("/nonexistent"))
    text = "[redaction]\n[[redaction.rules]]\nname = 'bad'\npattern = 'a(?=b)'\n"
    with pytest.raises(ConfigError):
        loads_config(text, registry=NO_REGISTRY, environ={})
