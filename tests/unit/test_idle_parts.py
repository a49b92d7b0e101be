"""run_parts with IdleParts: a part that found nothing is left out until it is due to look again."""

from __future__ import annotations

from agent.emitter import RunEmitter
from agent.plugin import RECHECK_NOTHING_FOUND, IdleParts, run_parts

SECOND = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * SECOND

    def __call__(self) -> int:
        return self.now


def counting_parts(found: dict[str, bool], calls: list[str]):
    def part(name: str):
        def run(emit, report) -> None:
            calls.append(name)
            if found[name]:
                emit.gauge(f"node_{name}_info", 1.0)

        return name, run

    return [part(name) for name in found]


def run(parts, idle) -> tuple[list[str], RunEmitter]:
    emit = RunEmitter(0)
    return run_parts(parts, emit, idle), emit


def test_a_part_that_found_nothing_looks_again_only_after_the_recheck_time():
    clock, calls = Clock(), []
    found = {"present": True, "absent": False}
    parts, idle = counting_parts(found, calls), IdleParts(clock)
    run(parts, idle)
    assert calls == ["present", "absent"]
    calls.clear()
    clock.now += int((RECHECK_NOTHING_FOUND - 1) * SECOND)
    run(parts, idle)
    assert calls == ["present"]  # the absent one is left out for a minute
    found["absent"] = True  # the hardware appears: seen once the minute is over
    clock.now += 1 * SECOND
    _, emit = run(parts, idle)
    assert calls == ["present", "present", "absent"]
    assert {s.name for s in emit.samples} == {"node_present_info", "node_absent_info"}
    calls.clear()
    run(parts, idle)
    assert calls == ["present", "absent"]  # it found something: looked at every run again


def test_a_part_that_goes_away_ends_at_once_and_a_failing_part_is_never_left_out():
    clock, calls = Clock(), []
    found = {"device": True}
    parts, idle = counting_parts(found, calls), IdleParts(clock)

    def failing(emit, report) -> None:
        calls.append("failing")
        report("unreadable")

    def raising(emit, report) -> None:
        calls.append("raising")
        raise ValueError("odd value")

    parts += [("failing", failing), ("raising", raising)]
    run(parts, idle)
    found["device"] = False
    errors, emit = run(parts, idle)
    assert emit.samples == []  # its series end with the run that did not find it
    assert errors == ["failing: unreadable", "raising: ValueError: odd value"]
    calls.clear()
    errors, _ = run(parts, idle)
    assert calls == ["failing", "raising"] and len(errors) == 2  # counted every run, as before


def test_a_clock_stepped_back_makes_the_parts_look_again():
    clock, calls = Clock(), []
    parts, idle = counting_parts({"absent": False}, calls), IdleParts(clock)
    run(parts, idle)
    clock.now -= 3600 * SECOND
    run(parts, idle)
    assert calls == ["absent", "absent"]


def test_without_idle_parts_every_part_runs_every_time():
    calls: list[str] = []
    parts = counting_parts({"absent": False}, calls)
    run(parts, None)
    run(parts, None)
    assert calls == ["absent", "absent"]
