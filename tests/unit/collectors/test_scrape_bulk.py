"""The bulk exposition parse against references, on generated bodies: nasty ones included.

The oracle is the line-by-line parser hostwatch used before (``scrape_reference``): for every
body, and for every scrape of a sequence of changing bodies (the cache and plan carried from one
to the next), the bulk parse must give the same samples, counts, next cache and errors. On clean
text-format bodies the samples must also be what prometheus_client's own parser reads.
"""

from __future__ import annotations

import math
import random

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collectors.scrape.exposition import ExpositionError, scan
from collectors.scrape.relabel import Relabeler, RelabelRule
from collectors.scrape.series import Resolver
from tests.unit.collectors import scrape_reference

T = 1_700_000_000_000_000_000
TARGET = (("instance", "127.0.0.1:9100"), ("job", "app"))
NASTY = ["x y", "a}b", "}", " ", 'say "hi"', "back\\slash", "two\nlines", "c,d=e", "# x", "a # b", "{", "é", "=", ""]
VALUES = ["1", "-2.5", "1e3", "NaN", "+Inf", "-Inf", "0", "3.14159", "12345678901", "1.5e-7"]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Body:
    """A generated exposition: families of series, written out with the options' quirks."""

    def __init__(self, rng: random.Random, openmetrics: bool) -> None:
        self.rng = rng
        self.openmetrics = openmetrics
        self.families: list[list] = []  # [name, type, [[suffix, labels, value], ...]]
        for f in range(rng.randint(1, 8)):
            self.families.append(self.family(f"m{f}_{rng.choice(['app', 'req', 'x'])}"))
        self.crlf = rng.random() < 0.15
        self.trailing = rng.random() < 0.15
        self.final_newline = rng.random() > 0.15
        self.blank_lines = rng.random() < 0.1
        self.timestamps = rng.random() < 0.15
        self.exemplars = openmetrics and rng.random() < 0.3
        self.space_before_brace = rng.random() < 0.05
        self.tab_after_brace = rng.random() < 0.05
        self.double_space = rng.random() < 0.05
        self.broken = rng.random() < 0.08
        self.type_late = rng.random() < 0.08
        self.duplicate = rng.random() < 0.08

    def labels(self) -> list[tuple[str, str]]:
        rng = self.rng
        keys = rng.sample(["method", "path", "code", "instance", "job", "q", "le_x"], rng.randint(0, 3))
        return [(k, rng.choice(NASTY) if rng.random() < 0.4 else f"v{rng.randint(0, 3)}") for k in keys]

    def family(self, name: str) -> list:
        rng = self.rng
        kinds = ["counter", "gauge", "histogram", "summary", "untyped"]
        if self.openmetrics:
            kinds += ["info", "stateset", "gaugehistogram", "unknown"]
        kind = rng.choice(kinds)
        series, seen = [], set()
        for _ in range(rng.randint(1, 4)):
            labels = self.labels()
            identity = frozenset((k, v) for k, v in labels if v)  # an empty value is no label
            if identity in seen:
                continue  # duplicates are the body's option, below
            seen.add(identity)
            if kind == "counter":
                series.append(["_total", labels, rng.choice(VALUES)])
                if rng.random() < 0.5:
                    series.append(["_created", labels, "1700000000.5"])
            elif kind in ("histogram", "gaugehistogram"):
                for le in ("0.1", "1", "+Inf"):
                    series.append(["_bucket", [*labels, ("le", le)], str(rng.randint(0, 9))])
                suffixes = ("_sum", "_count") if kind == "histogram" else ("_gsum", "_gcount")
                series += [[suffixes[0], labels, rng.choice(VALUES)], [suffixes[1], labels, "9"]]
                if kind == "histogram" and rng.random() < 0.3:
                    series.append(["_created", labels, "1700000000"])
            elif kind == "summary":
                series += [["", [*labels, ("quantile", q)], rng.choice(VALUES)] for q in ("0.5", "0.99")]
                series += [["_sum", labels, "3"], ["_count", labels, "2"]]
            elif kind == "info":
                series.append(["_info", labels, "1"])
            else:
                series.append(["", labels, rng.choice(VALUES)])
        return [name, kind, series, rng.random() < 0.9]  # the last: with a TYPE line

    def mutate(self) -> None:
        """The next scrape: new values, and now and then a series more, one less, or another order."""
        rng = self.rng
        for family in self.families:
            for one in family[2]:
                if rng.random() < 0.7 and one[0] not in ("_created",):
                    one[2] = rng.choice(VALUES)
        roll = rng.random()
        if roll < 0.15:
            self.families.append(self.family(f"late{rng.randint(0, 99)}"))
        elif roll < 0.3 and len(self.families) > 1:
            self.families.pop(rng.randrange(len(self.families)))
        elif roll < 0.4:
            rng.shuffle(self.families)
        elif roll < 0.55:  # a TYPE line more or less, or late
            family = rng.choice(self.families)
            family[3] = not family[3]
            self.type_late = self.type_late != (rng.random() < 0.2)
        elif roll < 0.65:
            family = rng.choice(self.families)
            family[2].insert(0, [rng.choice(["", "_sum"]), [("added", str(rng.random()))], "5"])

    def text(self) -> str:
        rng = self.rng
        lines = []
        for name, kind, series, typed in self.families:
            written = kind if self.openmetrics or kind not in ("info", "stateset", "gaugehistogram") else "untyped"
            lines.append(f"# HELP {name} Help with {{braces}} and a \\\\ backslash.")
            # prometheus_client writes a counter's TYPE under its _total name in the text format
            total = "_total" if kind == "counter" and not self.openmetrics and rng.random() < 0.5 else ""
            type_line = f"# TYPE {name}{total} {written}"
            if typed and not self.type_late:
                lines.append(type_line)
            for suffix, labels, value in series:
                metric = name + suffix
                text = ",".join(f'{k}="{escape(v)}"' for k, v in labels)
                line = metric + (" " if self.space_before_brace else "")
                line += f"{{{text}}}" if labels or rng.random() < 0.1 else ""
                line += ("\t" if self.tab_after_brace and "}" in line else " ") + value
                if self.double_space and rng.random() < 0.3:
                    line = line.replace(" ", "  ", 1) if "{" not in line else line.replace("} ", "}  ", 1)
                if self.timestamps and rng.random() < 0.5:
                    line += " 1700000000.250" if self.openmetrics else " 1700000000250"
                if self.exemplars and suffix in ("_bucket", "_total") and rng.random() < 0.5:
                    line += ' # {trace_id="a } # b"} 0.5'
                if self.trailing and rng.random() < 0.5:
                    line += rng.choice([" ", "  ", "\t"])
                lines.append(line)
                if self.duplicate and rng.random() < 0.1:
                    lines.append(line)
            if typed and self.type_late:
                lines.append(type_line)
            if self.blank_lines:
                lines.append("")
        if self.broken:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(['bad{x="1" 1', "name 1x", "<html>", 'q{a="b"} ']))
        if self.openmetrics:
            lines.append("# EOF")
        end = "\r\n" if self.crlf else "\n"
        return end.join(lines) + (end if self.final_newline else "")


def resolver(rng: random.Random) -> Resolver:
    rules = []
    if rng.random() < 0.3:
        rules.append(msgspec.convert({"action": "drop", "source_labels": ["__name__"], "regex": "m1_.*"}, RelabelRule))
    if rng.random() < 0.2:
        rules.append(msgspec.convert({"action": "labeldrop", "regex": "q"}, RelabelRule))
    return Resolver(TARGET, honor_labels=rng.random() < 0.3, relabeler=Relabeler(rules))


def outcome(result) -> dict:
    def value(v: float):
        return "NaN" if math.isnan(v) else v

    return {
        "rows": [(s.name, value(s.value), s.kind, s.labels, s.time_ns) for s in result.rows],
        "counts": (result.samples, result.created, result.dropped, result.duplicates, result.new_series),
        "stops": (result.truncated, result.too_many_series),
    }


def run_new(text: str, openmetrics: bool, state: dict, max_samples: int):
    current: dict = {}
    try:
        result = scan(
            text,
            openmetrics=openmetrics,
            resolve=state["resolve"],
            previous=state["cache"],
            current=current,
            time_ns=T,
            max_samples=max_samples,
            plan=state["plan"],
            resolve_many=state["resolve"].__self__.resolve_many,
        )
    except ExpositionError as exc:
        state["cache"].update(current)
        state["plan"] = None
        return ("error", str(exc)), set(state["cache"])
    if result.truncated:
        state["cache"].update(current)
        state["plan"] = None
    else:
        state["cache"], state["plan"] = result.cache, result.plan
    state["in_plan"] = result.plan is not None
    return outcome(result), set(state["cache"])


def run_reference(text: str, openmetrics: bool, state: dict, max_samples: int):
    current: dict = {}
    try:
        result = scrape_reference.scan(
            text,
            openmetrics=openmetrics,
            resolve=state["resolve"],
            previous=state["cache"],
            current=current,
            time_ns=T,
            max_samples=max_samples,
        )
    except scrape_reference.ExpositionError as exc:
        state["cache"].update(current)
        return ("error", str(exc)), set(state["cache"])
    if result.truncated:
        state["cache"].update(current)
    else:
        state["cache"] = current
    return outcome(result), set(state["cache"])


@pytest.mark.parametrize("seed", range(600))
def test_the_bulk_parse_matches_the_line_by_line_one_scrape_after_scrape(seed: int) -> None:
    rng = random.Random(seed)
    openmetrics = seed % 3 == 0
    body = Body(rng, openmetrics)
    resolve = resolver(rng).resolve
    max_samples = rng.choice([0, 0, 0, 5, 20])
    new = {"resolve": resolve, "cache": {}, "plan": None}
    old = {"resolve": resolve, "cache": {}}
    for scrape in range(4):
        text = body.text()
        got, got_cache = run_new(text, openmetrics, new, max_samples)
        want, want_cache = run_reference(text, openmetrics, old, max_samples)
        assert got == want, f"scrape {scrape} of\n{text}"
        assert got_cache == want_cache, f"the next cache after scrape {scrape} of\n{text}"
        body.mutate()


def test_clean_bodies_stay_on_the_bulk_paths() -> None:
    """The comparison above is worth something only if the fast paths run: on bodies of the
    usual shape they must do all the work (the plan survives only if no line needed another)."""
    ran = 0
    for seed in range(100):
        rng = random.Random(seed)
        body = Body(rng, openmetrics=False)
        body.crlf = body.timestamps = body.broken = body.duplicate = body.type_late = False
        body.trailing = body.tab_after_brace = body.space_before_brace = body.double_space = False
        state = {"resolve": resolver(rng).resolve, "cache": {}, "plan": None}
        for _ in range(3):
            text = body.text()
            got, _ = run_new(text, False, state, 0)
            assert isinstance(got, dict) and state["in_plan"], text
            ran += 1
            body.mutate()
    assert ran == 300


@pytest.mark.parametrize("seed", range(100))
def test_clean_bodies_read_as_prometheus_client_reads_them(seed: int) -> None:
    rng = random.Random(seed)
    body = Body(rng, openmetrics=False)
    body.timestamps = body.broken = body.duplicate = body.exemplars = body.crlf = body.blank_lines = False
    body.tab_after_brace = body.space_before_brace = body.type_late = body.double_space = False
    for family in body.families:
        family[3] = True  # typed: an untyped X_created is a sample of its own
    text = body.text()
    resolve = Resolver((), honor_labels=True, relabeler=Relabeler([])).resolve
    result = scan(text, openmetrics=False, resolve=resolve, previous={}, current={}, time_ns=T)
    ours = sorted((s.name, s.labels, repr(s.value)) for s in result.rows)
    theirs = sorted(
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if v)), repr(float(s.value)))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    )
    assert ours == theirs, text


def scrapes(*texts: str) -> list:
    """Each text scraped after the other, the cache and plan carried along, beside the reference."""
    resolve = Resolver((), honor_labels=False, relabeler=Relabeler([])).resolve
    new = {"resolve": resolve, "cache": {}, "plan": None}
    old = {"resolve": resolve, "cache": {}}
    got = []
    for text in texts:
        ours, _ = run_new(text, False, new, 0)
        assert ours == run_reference(text, False, old, 0)[0], text
        got.append(ours)
    return got


def test_a_bare_name_must_be_followed_by_a_space_to_follow_the_plan() -> None:
    # "a1" starts with "a", the series of the same line last time: not a value of a, a malformed line
    first, second = scrapes("a 1\n", "a1\n")
    assert first["rows"][0][1] == 1.0 and second[0] == "error"


def test_kinds_after_leaving_the_plan_are_those_of_the_line_by_line_parse() -> None:
    # the TYPE line after x's first sample changes the kind of the x samples that follow it
    *_, last = scrapes('x{a="1"} 1\n# TYPE x counter\ny 1\n', 'x{a="1"} 1\n# TYPE x counter\ny 1\nx{a="2"} 2\n')
    assert [(name, kind) for name, _, kind, _, _ in last["rows"]] == [("x", "gauge"), ("y", "gauge"), ("x", "counter")]


@pytest.mark.parametrize("seed", range(60))
def test_resolve_many_is_resolve_of_each(seed: int, monkeypatch) -> None:
    rng = random.Random(seed)
    texts = set()
    plain = rng.random() < 0.6  # a batch of the usual shape, or with a nasty series in it
    for _ in range(rng.randint(2, 40)):
        labels = [(k, f"v{rng.randint(0, 2)}") for k in rng.sample(["a", "b", "le", "instance"], rng.randint(0, 3))]
        if not plain and rng.random() < 0.2:
            labels.append((rng.choice(["a", "job", "c"]), rng.choice(NASTY)))
        text = ",".join(f'{k}="{escape(v)}"' for k, v in labels)
        texts.add(f"m{rng.randint(0, 3)}" + (f"{{{text}}}" if labels or rng.random() < 0.3 else ""))
    texts = sorted(texts)
    if seed % 4 == 0:
        monkeypatch.setattr("collectors.scrape.series._PAIRS_MAX", 3)  # the shared pairs start over often
    limits = {"label_limit": rng.choice([0, 3, 64]), "value_length_limit": rng.choice([0, 4, 4096])}
    one = Resolver(TARGET, honor_labels=False, relabeler=Relabeler([]), **limits)
    many = Resolver(TARGET, honor_labels=False, relabeler=Relabeler([]), **limits)

    def each() -> dict:
        return {text: one.resolve(text) for text in texts}

    try:
        want = each()
    except ValueError as exc:
        with pytest.raises(type(exc)):
            many.resolve_many(texts)
        return
    assert many.resolve_many(texts) == want


def test_resolve_many_takes_the_bulk_path_for_the_usual_shape(monkeypatch) -> None:
    import collectors.scrape.series as series

    calls = []

    def split_many(texts):
        calls.append(result := grammar_split_many(texts))
        return result

    grammar_split_many = series.split_many
    monkeypatch.setattr(series, "split_many", split_many)
    texts = [f'm{{a="{i}",le="{le}"}}' for i in range(50) for le in ("0.1", "+Inf")] + ["bare"]
    resolver = Resolver(TARGET, honor_labels=False, relabeler=Relabeler([]), label_limit=64)
    got = resolver.resolve_many(texts)
    assert calls and calls[0] is not None
    assert got == {text: Resolver(TARGET, honor_labels=False, relabeler=Relabeler([])).resolve(text) for text in texts}
    # the 100 series share their le pairs and the target's: far fewer pair objects than labels
    assert len(resolver._pairs) == 50 + 2 + 2
    assert len({id(pair) for entry in got.values() for pair in entry[2]}) == 54


@pytest.mark.parametrize(
    ("texts", "limits"),
    [
        (['m{a="1",a="2"}', 'm{a="3"}'], {}),  # a label twice
        (['m{a="1",b="2",c="3"}', 'm{a="3"}'], {"label_limit": 4}),
        (['m{a="1234567"}', 'm{a="3"}'], {"value_length_limit": 5}),
        (['m{abcdefg="1"}', 'm{a="3"}'], {"name_length_limit": 5}),
        (['m{a=""}', 'm{a="3"}'], {}),  # an empty value is no label
        (['m{job="x"}', 'm{a="3"}'], {}),  # exported_job
        (['m{a="x\\"y"}', 'm{a="3"}'], {}),
        (['m{a="1"} ', "m", 'm{a="3"}'], {}),
    ],
)
def test_resolve_many_in_the_cases_resolve_looks_at(texts: list[str], limits: dict) -> None:
    def resolver() -> Resolver:
        return Resolver(TARGET, honor_labels=False, relabeler=Relabeler([]), **limits)

    try:
        want = {text: resolver().resolve(text) for text in texts}
    except ValueError as exc:
        with pytest.raises(type(exc), match="label"):
            resolver().resolve_many(texts)
        return
    assert resolver().resolve_many(texts) == want


def test_a_series_already_read_is_a_duplicate_where_the_body_meets_the_last_one_again() -> None:
    # c comes first now, then where the last body had it: the second c is a duplicate, counted and left out
    *_, last = scrapes("a 1\nb 1\n# TYPE c gauge\nc 1\n", "c 2\nb 3\n# TYPE c gauge\nc 4\n")
    assert [(name, value) for name, value, *_ in last["rows"]] == [("c", 2.0), ("b", 3.0)]
    assert last["counts"][3] == 1  # duplicates


def test_after_a_new_series_the_rest_of_the_body_meets_the_last_one_again() -> None:
    first = "".join(f"# TYPE m{i} gauge\n" + "".join(f'm{i}{{x="{j}"}} {j}\n' for j in range(3)) for i in range(4))
    second = first.replace('m1{x="0"} 0\n', 'm1{x="0"} 0\nm1{x="new"} 9\n').replace(" 2\n", " 5\n")
    *_, last = scrapes(first, second)
    assert last["counts"][4] == 1 and len(last["rows"]) == 13  # one new series, every value read
    assert ("m3", 5.0) in [(name, value) for name, value, *_ in last["rows"]]


def test_two_spaces_before_the_value_are_the_same_series() -> None:
    (only,) = scrapes('a{x="1"}  1\na{x="1"} 2\nb  3\nb 4\n')
    assert [(name, value) for name, value, *_ in only["rows"]] == [("a", 1.0), ("b", 3.0)]
    assert only["counts"][3] == 2  # duplicates
