"""The memory collector on /proc fixture trees."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import pytest

from agent.config import validate
from agent.emitter import RunEmitter
from collectors.memory.memory import MemoryCollector
from tests.support import FIXTURES, by_series, collect_once, collector_context

PROC = FIXTURES / "proc"
DEFAULT_VMSTAT = ("oom_kill", "pgpgin", "pgpgout", "pswpin", "pswpout", "pgfault", "pgmajfault")


def make(tmp_path: Path, proc: Path, **options) -> MemoryCollector:
    config = msgspec.convert(options, MemoryCollector.Config)
    return MemoryCollector(config, collector_context(tmp_path, proc_root=proc))


def meminfo_name(field: str) -> str:
    """node_exporter 1.5's rule, spelled out: ``Active(anon)`` -> ``Active_anon``."""
    if "(" in field:
        head, _, rest = field.partition("(")
        field = f"{head}_{rest.rstrip(')')}"
    return f"node_memory_{field}"


def expected_meminfo(text: str) -> dict[tuple[str, tuple], float]:
    want = {}
    for line in text.splitlines():
        field, value, *unit = line.split()
        name = meminfo_name(field.rstrip(":"))
        if unit == ["kB"]:
            want[(f"{name}_bytes", ())] = int(value) * 1024
        else:
            want[(name, ())] = int(value)
    return want


def expected_vmstat(text: str, fields=DEFAULT_VMSTAT) -> dict[tuple[str, tuple], float]:
    pairs = dict(line.split() for line in text.splitlines())
    return {(f"node_vmstat_{f}", ()): int(pairs[f]) for f in fields if f in pairs}


async def test_host_values_match_the_fixture(tmp_path):
    meminfo = (PROC / "host" / "meminfo").read_text()
    want = expected_meminfo(meminfo) | expected_vmstat((PROC / "host" / "vmstat").read_text())
    emitter = await collect_once(make(tmp_path, PROC / "host"))
    assert emitter.errors == []
    assert by_series(emitter.samples) == want
    assert len(emitter.samples) == len(want)
    values = by_series(emitter.samples)
    # spot checks of the mangling against the raw lines
    raw = {line.split()[0].rstrip(":"): line.split()[1] for line in meminfo.splitlines()}
    assert values[("node_memory_Active_anon_bytes", ())] == int(raw["Active(anon)"]) * 1024
    assert values[("node_memory_HugePages_Total", ())] == int(raw["HugePages_Total"])
    assert values[("node_memory_Hugepagesize_bytes", ())] == int(raw["Hugepagesize"]) * 1024


async def test_names_types_and_units_are_node_exporters(tmp_path):
    """The host fixture yields exactly the families node_exporter 1.5 exported on that host."""
    reference = {}
    for line in (PROC / "host" / "node_exporter_families.txt").read_text().splitlines()[1:]:
        name, kind, *labels = line.split()
        if name.startswith(("node_memory_", "node_vmstat_")):
            reference[name] = "gauge" if kind == "unknown" else kind  # untyped vmstat: see memory.py
            assert not labels
    emitter = await collect_once(make(tmp_path, PROC / "host"))
    assert {s.name: s.kind for s in emitter.samples} == reference
    for sample in emitter.samples:
        assert sample.unit == ("By" if sample.name.endswith("_bytes") else "1"), sample.name


async def test_garbled_lines_are_counted_and_the_rest_emitted(tmp_path):
    emitter = await collect_once(make(tmp_path, PROC / "garbled"))
    values = by_series(emitter.samples)
    meminfo = {
        line.split()[0]: line.split()[1:]
        for line in (PROC / "garbled" / "meminfo").read_text().splitlines()
        if line.strip()
    }
    assert values == {
        ("node_memory_MemTotal_bytes", ()): int(meminfo["MemTotal:"][0]) * 1024,
        ("node_memory_Active_anon_bytes", ()): int(meminfo["Active(anon):"][0]) * 1024,
        ("node_memory_HugePages_Total", ()): int(meminfo["HugePages_Total:"][0]),
        ("node_memory_HugePages_Free", ()): int(meminfo["HugePages_Free:"][0]),
        ("node_memory_Hugepagesize_bytes", ()): int(meminfo["Hugepagesize:"][0]) * 1024,
        ("node_vmstat_pgpgin", ()): 1000,
        ("node_vmstat_pgmajfault", ()): 7,
        ("node_vmstat_oom_kill", ()): 0,
    }
    mem_error, vm_error = map(str, emitter.errors)
    # MemFree (not a number), "Inactive(file)" (no colon), Odd-Name (not a metric name), Weird (4 fields),
    # Buffers (no value)
    assert "meminfo: skipped 5 malformed line(s)" in mem_error and "MemFree" in mem_error
    # pgpgout (not a number), pswpin (no value), pgfault (two values); nr_free_pages is not selected
    assert "vmstat: skipped 3 malformed line(s)" in vm_error


async def test_missing_vmstat_is_reported_and_meminfo_still_emitted(tmp_path):
    emitter = await collect_once(make(tmp_path, PROC / "missing_files"))
    assert by_series(emitter.samples) == expected_meminfo((PROC / "missing_files" / "meminfo").read_text())
    assert len(emitter.errors) == 1 and "vmstat" in str(emitter.errors[0])


async def test_missing_meminfo_is_reported_and_vmstat_still_emitted(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "vmstat").write_bytes((PROC / "host" / "vmstat").read_bytes())
    emitter = await collect_once(make(tmp_path, proc))
    assert by_series(emitter.samples) == expected_vmstat((proc / "vmstat").read_text())
    assert len(emitter.errors) == 1 and "meminfo" in str(emitter.errors[0])


async def test_vmstat_fields_option(tmp_path):
    text = (PROC / "host" / "vmstat").read_text()
    chosen = [line.split()[0] for line in text.splitlines() if line.startswith(("nr_dirty", "pgsteal"))]
    assert chosen  # the fixture has such fields
    emitter = await collect_once(make(tmp_path, PROC / "host", vmstat_fields="^(nr_dirty|pgsteal)"))
    vm = {k: v for k, v in by_series(emitter.samples).items() if k[0].startswith("node_vmstat_")}
    assert vm == expected_vmstat(text, chosen)
    emitter = await collect_once(make(tmp_path, PROC / "host", vmstat_fields=""))
    assert not any(s.name.startswith("node_vmstat_") for s in emitter.samples)


def test_invalid_vmstat_regex_is_a_config_error():
    errors: list[str] = []
    assert validate({"vmstat_fields": "pg(("}, MemoryCollector.Config, "collectors.memory[0]", errors) is None
    assert len(errors) == 1 and "vmstat_fields" in errors[0] and "collectors.memory[0]" in errors[0]


@pytest.mark.parametrize("tree", ["host", "garbled", "missing_files"])
async def test_every_sample_is_a_gauge(tmp_path, tree):
    emitter = await collect_once(make(tmp_path, PROC / tree))
    assert emitter.samples and {s.kind for s in emitter.samples} == {"gauge"}


async def test_later_runs_read_new_values_and_notice_changed_files(tmp_path):
    """After the first run only the selected vmstat lines are looked up; changes must still show."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 1 kB\n")
    host = (PROC / "host" / "vmstat").read_text()
    collector = make(tmp_path, proc)
    for step in range(5):
        lines = host.splitlines()
        if step >= 1:  # every value changes
            lines = [f"{line.split()[0]} {int(line.split()[1]) + 1000 * step}" for line in lines]
        if step >= 2:  # a selected field disappears
            lines = [line for line in lines if not line.startswith("pgmajfault ")]
        if step == 3:  # and comes back garbled
            lines.append("pgmajfault twelve")
        if step == 4:  # and comes back right
            lines.append("pgmajfault 12")
        text = "\n".join(lines) + "\n"
        (proc / "vmstat").write_text(text)
        emitter = await collect_once(collector)
        vm = {k: v for k, v in by_series(emitter.samples).items() if k[0].startswith("node_vmstat_")}
        good = "\n".join(line for line in text.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit())
        assert vm == expected_vmstat(good), step
        assert len(emitter.errors) == (1 if step == 3 else 0), step


async def test_one_blocking_call_per_collect(tmp_path):
    calls = []
    context = collector_context(tmp_path, proc_root=PROC / "host")

    async def run_blocking(fn, *args):
        calls.append(fn)
        return fn(*args)

    collector = MemoryCollector(MemoryCollector.Config(), dataclasses.replace(context, run_blocking=run_blocking))
    for _ in range(2):
        calls.clear()
        emitter = await collect_once(collector)
        assert len(calls) == 1 and emitter.samples


@pytest.mark.parametrize(
    "old, new",
    [
        ("HugePages_Total:", "HugePages_Tota1:"),  # a field renamed
        ("MemFree:", "MemFree: 1 kB\nMemNew:"),  # a field inserted
        ("Cached:", "Cached:   7 kB\nCached:"),  # as many tokens as a new line needs
        (" kB\nMemAvailable", " MB\nMemAvailable"),  # another unit
        ("HugePages_Total:       0", "HugePages_Total:       0 kB"),  # a unit where there was none
        ("MemFree:", "MemFree: x"),  # malformed
    ],
)
async def test_meminfo_laid_out_otherwise_than_at_the_last_read_is_parsed_anew(tmp_path, old, new):
    """The second run reads meminfo through the layout of the first; after the file changed, what it
    exports and reports is what a collector reading it for the first time exports and reports."""
    proc = tmp_path / "proc"
    proc.mkdir()
    text = (PROC / "host" / "meminfo").read_text()
    assert old in text
    (proc / "meminfo").write_text(text)
    kept = make(tmp_path, proc, vmstat_fields="")
    await kept.collect(RunEmitter(1))
    (proc / "meminfo").write_text(text.replace(old, new, 1))
    again = RunEmitter(1)
    await kept.collect(again)
    await kept.close()
    fresh = await collect_once(make(tmp_path, proc, vmstat_fields=""), 1)
    assert [(s.name, s.value, s.unit) for s in again.samples] == [(s.name, s.value, s.unit) for s in fresh.samples]
    assert again.errors == fresh.errors
