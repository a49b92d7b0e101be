"""The logs collector's rounds at 2,000 files, in one process, without the agent around them.

Run: ``python -m tests.bench.bench_logs_rounds`` (no peers needed). 2,000 files in one directory
(its modification time set a minute back, as on a host whose log files were created long ago),
a ``Tailer`` with the default redaction; CPU time (``time.process_time``) of:

* a glob scan (``Patterns.scan``), and a round with the scan and the look at every open file
  (``Tailer.step(scan=True, check_all=True)``: what every ``glob_interval`` costs), nothing written;
  the same round after a line was read from every file since the last one (at 1,000 lines/s over
  2,000 files, what the agent meets every ``glob_interval``);
* a round reading one new line from each of 250 of the files (what a round costs at 1,000 lines/s
  spread over 2,000 files), per line, the writes left out;
* the checkpoint work those lines bring, per line: the ledger on the event loop (each file's offset
  handed on and acknowledged, the changes taken) and the checkpoint write (the changed entries
  appended to the journal, a snapshot of all 2,000 entries when the journal outgrows the last one;
  one write per round, as ``SAVE_LINES`` asks at this rate).

The lines are those ``bench_logs_lowrate``'s writer appends (the Apache corpus, ``bench_logs.CORPUS``: 232 bytes on
average, a few holding what redaction looks at), or one fixed line of 105 bytes without the corpus.

Environment: BENCH_ROUNDS (rounds of 250 lines, default 200). To compare with an older tree, copy
this file into it (``git archive REV | tar -x -C DIR``) and run it there the same way, alternately.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from pathlib import Path

from agent.config import convert
from agent.config.schema import RedactionSection
from agent.redact import Redactor
from collectors.logs.checkpoint import Ledger, Store
from collectors.logs.discovery import Patterns
from collectors.logs.logs import LogsCollector
from collectors.logs.stats import LogStats
from collectors.logs.tailer import Tailer
from tests.bench.bench_logs import CORPUS

FILES, PER_ROUND = 2000, 250
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "200"))
LINE = b'127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "-" "Mozilla/4.08"\n'


def corpus_lines() -> list[bytes]:
    """The lines bench_logs_lowrate's writer appends, or :data:`LINE` without the corpus."""
    if not CORPUS.exists():
        return [LINE]
    return [line for line in CORPUS.read_bytes().splitlines(keepends=True) if line.strip()][:5000]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        paths = [str(logs / f"app{i:04d}.log") for i in range(FILES)]
        fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for p in paths]
        past = time.time_ns() - 60 * 10**9
        os.utime(logs, ns=(past, past))
        config = convert({"paths": [str(logs / "*.log")]}, LogsCollector.Config)
        patterns = Patterns(config.paths, config.exclude, config.include_compressed)
        redactor = Redactor.from_config(convert({}, RedactionSection), state_dir=Path(tmp))
        tailer = Tailer(
            config, patterns, (("job", "bench"),), LogStats(), time.time_ns, redactor.streams(), [], 0.0, "b"
        )
        now = 1.0
        ledger = Ledger([], now)
        store = Store(Path(tmp))
        for opened in tailer.step(now, True, set(), True).opened:
            ledger.opened(opened)
        next_file = next_line = 0
        lines_written = corpus_lines()
        checkpoint = [0.0, 0.0]  # CPU seconds: the ledger, the writes

        def rounds(n: int) -> tuple[float, int]:
            nonlocal now, next_file, next_line
            spent, lines = 0.0, 0
            checkpoint[:] = [0.0, 0.0]
            for _ in range(n):
                dirty = set()
                for _ in range(PER_ROUND):
                    os.write(fds[next_file], lines_written[next_line % len(lines_written)])
                    dirty.add(paths[next_file])
                    next_file, next_line = (next_file + 1) % FILES, next_line + 1
                now += 0.25
                started = time.process_time()
                res = tailer.step(now, False, dirty, False)
                lines += len(res.records)
                spent += time.process_time() - started
                started = time.process_time()
                for key, file in res.identity.items():
                    ledger.identity(key, file)
                ledger.sent_many(res.sent)
                ledger.acked(res.sent)
                if store.appendable:  # as the collector's saver: the changes appended, now and then a snapshot
                    record, write = ledger.changes(now), store.append
                else:
                    record, write = ledger.restart(now), functools.partial(store.save, journal=True)
                written = time.process_time()
                write(record)
                checkpoint[0] += written - started
                checkpoint[1] += time.process_time() - written
            return spent, lines

        def timed(fn, times: int = 20) -> float:
            started = time.process_time()
            for _ in range(times):
                fn()
            return (time.process_time() - started) / times * 1e3

        rounds(20)  # every file has been read a few times (fingerprints grown)
        rounds(ROUNDS // 4)
        scan = timed(patterns.scan)

        def scan_round() -> None:
            nonlocal now
            now += 0.25
            tailer.step(now, True, set(), True)

        full = timed(scan_round)
        after_reads = 0.0  # the scan's round as the agent meets it: every file read since the last one
        for _ in range(5):
            rounds(FILES // PER_ROUND)
            after_reads += timed(scan_round, 1) / 5
        spent, lines = rounds(ROUNDS)
        tailer.close_all()
        for fd in fds:
            os.close(fd)
    print(f"glob scan of {FILES:,} files: {scan:.2f} ms; round with the scan and a look at every file: {full:.2f} ms")
    print(f"the same round when every file was read since the last look: {after_reads:.2f} ms")
    per_line = spent / max(lines, 1) * 1e6
    print(f"rounds of {PER_ROUND} files, one line each: {per_line:.2f} us per line ({lines:,} lines)")
    ledger_us, write_us = (seconds / max(lines, 1) * 1e6 for seconds in checkpoint)
    print(f"their checkpoints: ledger {ledger_us:.2f} us per line, file write {write_us:.2f} us per line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
