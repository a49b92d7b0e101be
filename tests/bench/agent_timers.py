"""Thread CPU timers around chosen functions of a running agent, for finding where its CPU per line goes.

Not a bench of its own: ``bench_logs_lowrate`` (``BENCH_LOWRATE_TIMERS``) starts this tree's agent as
``python -c "import tests.bench.agent_timers as t; t.run()" run --config ...``. ``run`` wraps each function
named in ``HOSTWATCH_BENCH_TIMERS`` (``module:Qualified.name``, comma-separated) with ``time.thread_time_ns``
around its calls (a coroutine function: around each step of its coroutine, the coroutines it awaits included, not
its waits; a step counts as a call), counts the garbage collector's passes the same
way, and starts the agent. SIGUSR1 writes the totals so far (nanoseconds and calls, one ``name ns calls``
line each) to ``HOSTWATCH_BENCH_TIMERS_OUT`` and starts them again: the bench sends it at the start and the
end of its window. A function called from another module by a name imported there is wrapped only where it
is looked up: name that module (``collectors.logs.tailer:build_records``). A wrapper costs about 0.3 us a
call, so wrap functions called a few times a round, not once per line, when the figures are to be added up.
"""

from __future__ import annotations

import functools
import gc
import importlib
import inspect
import os
import signal
import sys
import threading
import time
from typing import Any

_spent: dict[str, int] = {}
_calls: dict[str, int] = {}
_lock = threading.Lock()


def _wrap(target: str) -> None:
    module_name, _, qualified = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *path, name = qualified.split(".")
    for part in path:
        owner = getattr(owner, part)
    fn = getattr(owner, name)
    label = f"{module_name.rsplit('.', 1)[-1]}.{qualified}"
    cpu = time.thread_time_ns
    if inspect.iscoroutinefunction(fn):
        setattr(owner, name, _timed_coroutine(fn, label))
        return

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = cpu()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(label, cpu() - started)

    setattr(owner, name, timed)


class _Suspend:
    """Hands what a coroutine yielded (a future, or None) on to the task running it, and back its answer."""

    def __init__(self, yielded: Any) -> None:
        self.yielded = yielded

    def __await__(self) -> Any:
        return (yield self.yielded)


def _timed_coroutine(fn: Any, label: str) -> Any:
    """A coroutine function that drives ``fn``'s coroutine step by step, timing each step (what runs
    between two suspensions, the coroutines it awaits included), not the waits."""
    cpu = time.thread_time_ns

    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        coro = fn(*args, **kwargs)
        value, error = None, None
        while True:
            started = cpu()
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as done:
                _add(label, cpu() - started)
                return done.value
            _add(label, cpu() - started)
            try:
                value, error = await _Suspend(yielded), None
            except BaseException as exc:  # cancellation too: the coroutine handles it as it would
                value, error = None, exc

    return timed


def _add(label: str, ns: int) -> None:
    with _lock:
        _spent[label] = _spent.get(label, 0) + ns
        _calls[label] = _calls.get(label, 0) + 1


_collecting: dict[int, int] = {}


def _collection(phase: str, info: dict[str, Any]) -> None:
    thread = threading.get_ident()
    if phase == "start":
        _collecting[thread] = time.thread_time_ns()
    elif (started := _collecting.pop(thread, None)) is not None:
        _add(f"gc generation {info['generation']}", time.thread_time_ns() - started)


def _dump(*_: Any) -> None:
    with _lock:
        lines = [f"{name} {ns} {_calls[name]}\n" for name, ns in _spent.items()]
        _spent.clear()
        _calls.clear()
    out = os.environ["HOSTWATCH_BENCH_TIMERS_OUT"]
    with open(out + ".part", "w") as part:  # renamed when whole: the bench reads the file once it exists
        part.writelines(lines)
    os.replace(out + ".part", out)


def run() -> None:
    for target in filter(None, os.environ.get("HOSTWATCH_BENCH_TIMERS", "").split(",")):
        _wrap(target.strip())
    gc.callbacks.append(_collection)
    signal.signal(signal.SIGUSR1, _dump)
    from agent.cli import main

    sys.exit(main())
