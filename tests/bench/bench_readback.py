"""Reading log records back from the disk buffer: decode, then what the sender does with them.

A batch read back (a backlog bigger than the queue's cache, a replay after a restart) is decoded,
sized and Loki-encoded. ``python -m tests.bench.bench_readback``: 10,000 Apache access-log lines of
one file, encoded as the disk buffer writes them, with the times the tailer gives (the clock plus
the line's index) and then with whole seconds, 100 lines a second (times parsed from the lines); the typed
msgspec decoder (one label tuple per record) and ``agent.stored_records.LogRecordsDecoder`` (one per
label set and batch), alternating, BENCH_READBACK_ROUNDS times (default 5); milliseconds per batch,
best of each.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from agent.model import LogRecord
from agent.pending import item_sizes
from agent.stored_records import LogRecordsDecoder
from outputs.loki.encode import PushEncoder

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real" / "apache_access_semicomplete.log"
ROUNDS = int(os.environ.get("BENCH_READBACK_ROUNDS", "5"))
COUNT = 10_000
HELD = int(os.environ.get("BENCH_READBACK_HELD", "5"))


# record times: as the tailer gives them (the clock + the line's index, any nanoseconds), and whole
# seconds, 100 lines a second (a timestamp parsed from JSON or logfmt lines): the Loki encoder's two
# timestamp paths
TIMES = {
    "tailer's times": lambda i: 1_700_000_000_123_456_789 + i,
    "whole-second times": lambda i: 1_700_000_000_000_000_000 + i // 100 * 10**9,
}


def main() -> int:
    for name, time_of in TIMES.items():
        print(f"{name}:")
        run(time_of)
    return 0


def run(time_of: Callable[[int], int]) -> None:
    lines = CORPUS.read_text(errors="replace").splitlines()
    labels = (("filename", "/var/log/apache2/access.log"), ("job", "logs"))
    records = [LogRecord(time_of(i), lines[i % len(lines)], labels) for i in range(COUNT)]
    payload = msgspec.msgpack.Encoder().encode(records)
    encoder = PushEncoder((("host", "bench"),))
    decoders = {"typed decoder": msgspec.msgpack.Decoder(list[LogRecord]), "shared labels": LogRecordsDecoder()}
    best: dict[str, list[float]] = {name: [float("inf")] * 3 for name in decoders}
    held: list[list[LogRecord]] = []  # the batches an agent holds meanwhile (queue cache, pending): GC's work
    for _ in range(ROUNDS):
        for name, decoder in decoders.items():
            t0 = time.process_time()
            got = decoder.decode(payload)
            t1 = time.process_time()
            item_sizes(got)
            encoder.encode_protobuf(got)
            t2 = time.process_time()
            assert got == records
            held = [*held[-HELD + 1 :], got]
            row = best[name]
            row[:] = [min(row[0], t1 - t0), min(row[1], t2 - t1), min(row[2], t2 - t0)]
    for name, (decode, after, total) in best.items():
        print(
            f"  {name}: decode {decode * 1e3:.1f} ms, sizing + Loki encoding {after * 1e3:.1f} ms, "
            f"together {total * 1e3:.1f} ms per {COUNT:,} records"
        )


if __name__ == "__main__":
    sys.exit(main())
