"""node_exporter's ``processes`` collector: processes and threads by state, and the kernel's limits.

It reads ``/proc/<pid>/stat`` of every process and ``/proc/<pid>/task/<tid>/stat``
of every other thread, so its cost grows with the thread count (node_exporter
leaves it off by default for that reason). A process or thread that exits
between the listing and the read is skipped silently, as in node_exporter;
any other unreadable stat file fails the run.
"""

from __future__ import annotations

import errno
import os
from collections import Counter

from agent.plugin import Emitter

from .base import Roots, Unavailable, read_uint

_GONE = (errno.ENOENT, errno.ESRCH)


class ProcessesCollector:
    name = "processes"

    def __init__(self, roots: Roots) -> None:
        self._proc = roots.proc

    def collect(self, emit: Emitter) -> None:
        proc = os.fspath(self._proc)
        if hidden := _hidepid(proc):
            # counts of only the processes the agent may see would look right and be wrong
            raise Unavailable(
                f"{proc} is mounted with {hidden}: other users' processes are hidden (the packaged "
                "unit's ProtectProc=invisible; a drop-in with ProtectProc=default lifts it)",
                warn=True,
            )
        pids = threads = 0
        states: Counter[str] = Counter()
        thread_states: Counter[str] = Counter()
        for entry in os.listdir(proc):
            if not entry.isdigit():
                continue
            stat = _stat(f"{proc}/{entry}/stat")
            if stat is None:
                continue
            state, num_threads = stat
            pids += 1
            states[state] += 1
            threads += num_threads
            if num_threads == 1:
                thread_states[state] += 1  # its only task is itself: no need to list task/
            else:
                self._threads(f"{proc}/{entry}/task", entry, state, thread_states)
        emit.gauge("node_processes_threads", threads, unit="1")
        emit.gauge("node_processes_max_threads", read_uint(self._proc / "sys" / "kernel" / "threads-max"), unit="1")
        for state, count in sorted(states.items()):
            emit.gauge("node_processes_state", count, (("state", state),), unit="1")
        for state, count in sorted(thread_states.items()):
            emit.gauge("node_processes_threads_state", count, (("thread_state", state),), unit="1")
        emit.gauge("node_processes_pids", pids, unit="1")
        emit.gauge("node_processes_max_processes", read_uint(self._proc / "sys" / "kernel" / "pid_max"), unit="1")

    @staticmethod
    def _threads(task_dir: str, pid: str, state: str, thread_states: Counter[str]) -> None:
        try:
            tids = os.listdir(task_dir)
        except OSError as exc:
            if exc.errno in _GONE:
                return
            raise
        for tid in tids:
            if tid == pid:
                thread_states[state] += 1  # the main thread: its state is the process's
                continue
            if not tid.isdigit():
                continue
            stat = _stat(f"{task_dir}/{tid}/stat")
            if stat is not None:
                thread_states[stat[0]] += 1


def _hidepid(proc: str) -> str:
    """The ``hidepid=`` option of the proc mount at ``proc``, unless it hides nothing."""
    try:
        with open("/proc/self/mountinfo", "rb") as mounts:
            lines = mounts.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    where = os.path.realpath(proc)
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts, tail = fields.split(), rest.split()
        if len(parts) > 4 and len(tail) > 2 and tail[0] == "proc" and parts[4] == where:
            for option in tail[2].split(","):
                if option.startswith("hidepid=") and option not in ("hidepid=0", "hidepid=off"):
                    return option
    return ""


def _stat(path: str) -> tuple[str, int] | None:
    """(state, num_threads) from a stat file; None when the task is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise
    try:
        data = os.read(fd, 4096)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise
    finally:
        os.close(fd)
    # the command name may hold spaces and parentheses: the fields start after the last ")"
    fields = data[data.rfind(b")") + 2 :].split(maxsplit=18)  # state is field 3, num_threads 20
    if len(fields) < 18:
        raise ValueError(f"{path}: malformed stat {data[:80]!r}")
    return fields[0].decode(errors="replace"), int(fields[17])
