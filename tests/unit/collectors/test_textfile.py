"""The textfile collector: node_exporter's parsing rules, per-file failures, and what it emits."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import msgspec
import pytest

from collectors.textfile import parse as parse_module
from collectors.textfile.parse import ParseError, flatten, go_float, parse
from collectors.textfile.textfile import TextfileCollector
from tests.support import FIXTURES, by_series, collect_once, collector_context

GOOD = FIXTURES / "textfile" / "good"
BAD = FIXTURES / "textfile" / "bad"


def make(tmp_path: Path, *directories: Path | str, **options) -> TextfileCollector:
    table = {"directories": [str(d) for d in directories], **options}
    config = msgspec.convert(table, TextfileCollector.Config, dec_hook=lambda kind, value: kind.parse(value))
    return TextfileCollector(config, collector_context(tmp_path, instance="textfile"))


def series_of(text: str) -> dict[tuple, tuple[str, float]]:
    return {(name, labels): (kind, value) for name, kind, labels, value in flatten(parse(text))}


# --- the parser, against what node_exporter 1.5 exports for the same input -----------------------------


def test_types_labels_and_escapes():
    got = series_of(
        "# HELP jobs_total Jobs run.\\nSecond line.\n"
        "# TYPE jobs_total counter\n"
        'jobs_total{job="backup",result="ok"} 12\n'
        'jobs_total{job="backup"} 1\n'
        "# TYPE temp gauge\n"
        "temp -3.5\n"
        'untyped_one{path="C:\\\\dir\\"x\\"\\nnext"} +Inf\n'
        "  \t  \n"
        "# a comment\n"
    )
    assert got == {
        ("jobs_total", (("job", "backup"), ("result", "ok"))): ("counter", 12.0),
        ("jobs_total", (("job", "backup"), ("result", ""))): ("counter", 1.0),  # filled as node_exporter does
        ("temp", ()): ("gauge", -3.5),
        ("untyped_one", (("path", 'C:\\dir"x"\nnext'),)): ("gauge", math.inf),
    }


def test_histogram_and_summary_become_node_exporters_series():
    got = series_of(
        "# TYPE rt histogram\n"
        'rt_bucket{le="0.05",op="get"} 1\n'
        'rt_bucket{le="1e6",op="get"} 3\n'
        'rt_bucket{le="0.5",op="get"} 2\n'
        'rt_sum{op="get"} 7.25\n'
        'rt_count{op="get"} 3\n'
        "# TYPE lat summary\n"
        'lat{quantile="0.99"} 0.3\n'
        'lat{quantile="0.5"} 0.1\n'
        "lat_count 10\n"
    )
    assert got == {
        ("rt_bucket", (("le", "0.05"), ("op", "get"))): ("counter", 1.0),
        ("rt_bucket", (("le", "0.5"), ("op", "get"))): ("counter", 2.0),
        ("rt_bucket", (("le", "1e+06"), ("op", "get"))): ("counter", 3.0),
        ("rt_bucket", (("le", "+Inf"), ("op", "get"))): ("counter", 3.0),  # added from _count
        ("rt_sum", (("op", "get"),)): ("counter", 7.25),
        ("rt_count", (("op", "get"),)): ("counter", 3.0),
        ("lat", (("quantile", "0.5"),)): ("gauge", 0.1),
        ("lat", (("quantile", "0.99"),)): ("gauge", 0.3),
        ("lat_sum", ()): ("counter", 0.0),
        ("lat_count", ()): ("counter", 10.0),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metric 1", "line 1: unexpected end of input stream"),  # no newline at the end
        ("metric 1 \n", "line 1: expected integer as timestamp"),  # trailing blank
        ("metric 1 17 x\n", "spurious string after timestamp"),
        ("metric\n", "expected float as value"),
        ("metric 1_000\n", "expected float as value"),
        ("metric 0x1p3\n", "expected float as value"),
        ("metric 1e999\n", "expected float as value"),
        ("metric 1\r\n", "expected float as value"),
        ('metric{a="1",a="2"} 1\n', "duplicate label names"),
        ('metric{__name__="x"} 1\n', "is reserved"),
        ('metric{a="\\t"} 1\n', "invalid escape sequence"),
        ('metric{a="open} 1\n', "unescaped new-line"),
        ("metric{a=1} 1\n", "expected '\"' at start of label value"),
        ('metric{1a="x"} 1\n', "invalid label name"),
        ("1metric 1\n", "invalid metric name"),
        ("# TYPE m gauge\n# TYPE m counter\nm 1\n", "second TYPE line"),
        ("m 1\n# TYPE m gauge\n", "TYPE reported after samples"),
        ("# HELP m a\n# HELP m b\nm 1\n", "second HELP line"),
        ("# TYPE m bogus\nm 1\n", "unknown metric type"),
        ("# TYPE m gauge \nm 1\n", "unknown metric type"),  # node_exporter keeps the trailing blank
        ("# HELP m bad \\t escape\nm 1\n", "invalid escape sequence"),
        ("# HELP m! x\n", "invalid metric name in comment"),
        ('# TYPE h histogram\nh_bucket{le="x"} 1\n', "expected float as value for 'le' label"),
    ],
)
def test_rejects_what_node_exporter_rejects(text, message):
    with pytest.raises(ParseError, match=message):
        parse(text)


def test_accepts_what_node_exporter_accepts():
    assert series_of("m{} 1\n") == {("m", ()): ("gauge", 1.0)}
    assert series_of('m { a = "x" , } 2\n') == {("m", (("a", "x"),)): ("gauge", 2.0)}
    assert series_of('m{a="x"}3\n') == {("m", (("a", "x"),)): ("gauge", 3.0)}
    assert series_of("# TYPE\n# HELP m\n#\nm NaN\n")[("m", ())][1] != series_of("m NaN\n")[("m", ())][1]  # NaN
    assert series_of("no_newline_needed_after_blanks 1\n   ") == {
        ("no_newline_needed_after_blanks", ()): ("gauge", 1.0)
    }
    assert parse("# HELP only_help text\n") == {}  # a family without samples is dropped
    families = parse("m 1 1700000000000\n")
    assert families["m"].metrics[0].timestamp_ms == 1700000000000


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (1.0, "1"),
        (1e6, "1e+06"),
        (123456.0, "123456"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (2.5e-7, "2.5e-07"),
        (-3.0, "-3"),
        (math.inf, "+Inf"),
        (0.0, "0"),
        (123456789.0, "1.23456789e+08"),
    ],
)
def test_go_float_matches_strconv(value, text):
    assert go_float(value) == text


# --- the collector ---------------------------------------------------------------------------------------


async def test_reads_every_prom_file_and_their_mtimes(tmp_path):
    emitter = await collect_once(make(tmp_path, GOOD))
    assert emitter.errors == []
    values = by_series(emitter.samples)
    assert values[("node_textfile_scrape_error", ())] == 0
    for path in sorted(GOOD.glob("*.prom")):
        mtime = path.stat().st_mtime_ns // 1_000_000_000
        assert values[("node_textfile_mtime_seconds", (("file", str(path)),))] == mtime
    assert values[("backup_last_success_timestamp_seconds", (("job", "nightly"), ("target", "")))] == 1700000000
    assert not [s for s in emitter.samples if s.name == "ignored_metric"]  # not a .prom file


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("binary.prom", "binary"),
        ("latin1.prom", "binary"),
        ("timestamp.prom", "timestamp"),
        ("no_newline.prom", "parse"),
        ("bad_escape.prom", "parse"),
    ],
)
async def test_a_bad_file_is_left_out_alone(tmp_path, name, reason):
    folder = tmp_path / "dir"
    shutil.copytree(GOOD, folder)
    shutil.copy(BAD / name, folder / name)
    emitter = await collect_once(make(tmp_path, folder))
    values = by_series(emitter.samples)
    assert values[("node_textfile_scrape_error", ())] == 1
    assert values[("hostwatch_textfile_errors_total", (("collector", "textfile"), ("reason", reason)))] == 1
    assert len(emitter.errors) == 1 and str(emitter.errors[0]).startswith(f"{folder / name}: ")
    assert ("node_textfile_mtime_seconds", (("file", str(folder / name)),)) not in values
    good = await collect_once(make(tmp_path, GOOD))
    ours = {k: v for k, v in values.items() if not k[0].startswith(("node_textfile_", "hostwatch_"))}
    theirs = {k: v for k, v in by_series(good.samples).items() if not k[0].startswith("node_textfile_")}
    assert ours.keys() == theirs.keys()  # the good files' series are all there


async def test_unreadable_fifo_huge_and_missing(tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "dangling.prom").symlink_to(folder / "nowhere")
    os.mkfifo(folder / "pipe.prom")  # opening it must not block the run
    (folder / "huge.prom").write_text("m 1\n" * 100)
    (folder / "ok.prom").write_text("fine 1\n")
    collector = make(tmp_path, folder, tmp_path / "missing_dir", max_file_size=64)
    emitter = await collect_once(collector)
    values = by_series(emitter.samples)
    reasons = {dict(k[1])["reason"]: v for k, v in values.items() if k[0] == "hostwatch_textfile_errors_total"}
    assert reasons == {"read": 2, "too_large": 1, "directory": 1}
    assert values[("fine", ())] == 1
    assert values[("node_textfile_scrape_error", ())] == 1
    assert len(emitter.errors) == 4


async def test_duplicates_and_type_conflicts_across_files_first_file_wins(tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "a.prom").write_text('# TYPE shared gauge\nshared{x="1"} 1\n# TYPE kind counter\nkind 5\n')
    (folder / "b.prom").write_text('# TYPE shared gauge\nshared{x="1"} 2\nshared{x="2"} 3\n# TYPE kind gauge\nkind 6\n')
    emitter = await collect_once(make(tmp_path, folder))
    values = by_series(emitter.samples)
    assert values[("shared", (("x", "1"),))] == 1  # a.prom's
    assert values[("shared", (("x", "2"),))] == 3
    assert values[("kind", ())] == 5
    assert values[("node_textfile_scrape_error", ())] == 0  # node_exporter does not flag these either
    reasons = {dict(k[1])["reason"]: v for k, v in values.items() if k[0] == "hostwatch_textfile_errors_total"}
    assert reasons == {"conflict": 1, "duplicate": 1}


async def test_unchanged_files_are_not_parsed_again(tmp_path, monkeypatch):
    folder = tmp_path / "dir"
    shutil.copytree(GOOD, folder)
    calls = []
    real = parse_module.parse

    def counting(text):
        calls.append(text)
        return real(text)

    monkeypatch.setattr("collectors.textfile.textfile.parse", counting)
    collector = make(tmp_path, folder)
    first = await collect_once(collector)
    parsed = len(calls)
    second = await collect_once(collector)
    assert len(calls) == parsed and by_series(first.samples) == by_series(second.samples)
    target = folder / "backup.prom"
    target.write_text(target.read_text().replace("1700000000", "1800000000"))
    third = await collect_once(collector)
    assert len(calls) == parsed + 1
    assert (
        by_series(third.samples)[("backup_last_success_timestamp_seconds", (("job", "nightly"), ("target", "")))]
        == 1.8e9
    )
    target.unlink()
    fourth = await collect_once(collector)
    assert ("node_textfile_mtime_seconds", (("file", str(target)),)) not in by_series(fourth.samples)


async def test_glob_patterns_and_no_directories(tmp_path):
    emitter = await collect_once(make(tmp_path, str(FIXTURES / "textfile" / "go*")))
    assert by_series(emitter.samples)[("node_textfile_scrape_error", ())] == 0
    assert any(s.name == "node_textfile_mtime_seconds" for s in emitter.samples)
    empty = await collect_once(make(tmp_path))
    assert [(s.name, s.value) for s in empty.samples] == [("node_textfile_scrape_error", 0.0)]
    nothing = await collect_once(make(tmp_path, str(tmp_path / "nomatch*")))
    assert by_series(nothing.samples)[("node_textfile_scrape_error", ())] == 1


async def test_a_file_cannot_write_the_collectors_own_metrics(tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "sneaky.prom").write_text("node_textfile_scrape_error 0\nother 1\n")
    (folder / "broken.prom").write_text("broken")
    emitter = await collect_once(make(tmp_path, folder))
    values = by_series(emitter.samples)
    assert [s.value for s in emitter.samples if s.name == "node_textfile_scrape_error"] == [1.0]
    assert values[("other", ())] == 1
    assert values[("hostwatch_textfile_errors_total", (("collector", "textfile"), ("reason", "conflict")))] == 1


async def test_no_directories_needs_no_worker_call(tmp_path):
    """The embedded default's textfile reads nothing: the same series, without a thread hop."""
    calls = []

    async def run_blocking(fn, *args):
        calls.append(fn)
        return fn(*args)

    collector = make(tmp_path)
    collector.context = dataclasses.replace(collector.context, run_blocking=run_blocking)
    emitter = await collect_once(collector)
    assert [(s.name, s.value, s.unit) for s in emitter.samples] == [("node_textfile_scrape_error", 0.0, "1")]
    assert calls == []
