"""Where a bulk log line's CPU goes: the stages of the flow one after the other, in one process.

Run: ``python -m tests.bench.bench_bulk_stages`` (no peers needed). The corpus's Apache access log
repeated to ``BENCH_BULK_MIB`` (default 32) is read from its beginning by a ``Tailer`` (the
collector's rounds: reading, framing, level words, records), with the default redaction and
without it (the difference is redaction's cost); then, batch by batch as the output lane sees
them (``BENCH_BULK_BATCH`` records, default 10,000): sizing, the disk buffer's record (msgpack and
its CRC), reading it back (the CRC check and ``LogRecordsDecoder``: what a batch further behind
than the buffer's memory cache costs), the Loki encoder and snappy. CPU time
(``time.process_time``) of each stage per line, the best of ``BENCH_BULK_ROUNDS`` (default 3).
Then what one batch holds in memory: its records (measured by ``tracemalloc``, and as the disk
buffer's memory copy counts them against its 16 MiB) beside its snappy request body, and how many
batches of each a 16 MiB copy would hold: whether a copy of encoded bodies would spare the reads back.

What it leaves out, and ``bench_logs_lowrate`` includes: threads and their hand-offs, the event
loop, the HTTP request, fsync and the checkpoint writes.

BENCH_BULK_PEER=1 then also ships the snappy bodies, already encoded, into a new VictoriaLogs (pinned
to the CPU ``bench_logs_lowrate`` pins it to), one request at a time as a Loki output's lane sends
them: the wall time from the first request until the last answer, the first request's answer time
apart (a new store's first insert), and VictoriaLogs' CPU time. It is the floor of the bulk bench's
hostwatch run, which cannot be faster than its peer takes the batches in, whatever the agent's own
CPU per line. BENCH_BULK_WINDOWS=1,2 ships them once per round with each number of requests in flight
(each on a connection of its own, the next body to whichever is answered first), alternating, into a
new VictoriaLogs each time: whether a second request in flight lets the peer take the lines sooner.
"""

from __future__ import annotations

import http.client
import os
import sys
import tempfile
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import cramjam
import msgspec

from agent.buffer import _cache_cost
from agent.config import convert
from agent.config.schema import RedactionSection
from agent.pending import item_sizes
from agent.redact import Redactor
from agent.segments import HEADER, Ref, encode
from agent.stored_records import LogRecordsDecoder
from collectors.logs.discovery import Patterns
from collectors.logs.logs import LogsCollector
from collectors.logs.stats import LogStats
from collectors.logs.tailer import Tailer
from outputs.loki.encode import PushEncoder
from tests.bench.bench_logs import CORPUS, start_victoria_logs, stop
from tests.bench.bench_logs_lowrate import cpu_ns

MIB = float(os.environ.get("BENCH_BULK_MIB", "32"))
BATCH = int(os.environ.get("BENCH_BULK_BATCH", "10000"))
ROUNDS = int(os.environ.get("BENCH_BULK_ROUNDS", "3"))
PEER = os.environ.get("BENCH_BULK_PEER") == "1"
WINDOWS = [int(n) for n in os.environ.get("BENCH_BULK_WINDOWS", "1").split(",")]


def read_all(path: Path, lines: int, redactor: Redactor | None) -> tuple[float, list]:
    """CPU seconds for a Tailer to read ``path`` from its beginning, and the records."""
    config = convert({"paths": [str(path)], "start_at": "beginning"}, LogsCollector.Config)
    patterns = Patterns(config.paths, config.exclude, config.include_compressed)
    redact = None if redactor is None else redactor.streams()
    tailer = Tailer(config, patterns, (("job", "bench"),), LogStats(), time.time_ns, redact, [], 0.0, "b")
    started = time.process_time()
    records = tailer.step(1.0, True, set(), True).records  # the scan that finds the file, and a first round
    while len(records) < lines:
        got = tailer.step(2.0, False, set(), False)
        records += got.records
        if not got.more and not got.records:
            break
        for t in tailer.trackers.values():  # as an inotify event would: look again
            t.more = True
            tailer.attention[t] = None
    return time.process_time() - started, records


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        path = Path(tmp) / "access.log"
        chunk = CORPUS.read_bytes()
        repeats = max(1, int(MIB * 2**20 / len(chunk)))
        path.write_bytes(chunk * repeats)
        lines = repeats * chunk.count(b"\n")
        redactor = Redactor.from_config(convert({}, RedactionSection), state_dir=Path(tmp))
        best: dict[str, float] = {}

        def note(name: str, seconds: float) -> None:
            best[name] = min(best.get(name, float("inf")), seconds)

        encoder, decoder, loki = msgspec.msgpack.Encoder(), LogRecordsDecoder(), PushEncoder((("host", "bench"),))
        for _ in range(ROUNDS):
            plain, _ = read_all(path, lines, None)
            redacted, records = read_all(path, lines, redactor)
            assert len(records) == lines, f"read {len(records):,} of {lines:,} lines"
            note("tailer rounds without redaction", plain)
            note("redaction (the difference)", redacted - plain)
            spent = dict.fromkeys(("sizing", "disk record", "read back", "Loki protobuf", "snappy"), 0.0)
            bodies = []
            for start in range(0, len(records), BATCH):
                batch = records[start : start + BATCH]
                t0 = time.process_time()
                item_sizes(batch)
                t1 = time.process_time()
                record = encode(encoder.encode(batch), len(batch), 1)
                t2 = time.process_time()
                zlib.crc32(memoryview(record)[12:])
                back = decoder.decode(memoryview(record)[HEADER.size :])
                t3 = time.process_time()
                payload = loki.encode_protobuf(back).payload
                t4 = time.process_time()
                body = cramjam.snappy.compress_raw(payload)
                t5 = time.process_time()
                bodies.append(bytes(body))
                for name, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                    spent[name] += seconds
            for name, seconds in spent.items():
                note(name, seconds)
        print(f"{lines:,} lines ({repeats * len(chunk) / 2**20:.0f} MiB), batches of {BATCH:,}; best of {ROUNDS}:")
        for name, seconds in best.items():
            print(f"  {name:32s} {seconds * 1e6 / lines:5.2f} us per line")
        print(f"  {'together':32s} {sum(best.values()) * 1e6 / lines:5.2f} us per line")
        print_batch_memory(records[:BATCH], encoder, decoder, loki)
        if PEER:
            for run in range(ROUNDS):
                for window in WINDOWS:
                    ship_to_peer(Path(tmp) / f"peer{run}-{window}", bodies, lines, window)
    return 0


def print_batch_memory(
    batch: list, encoder: msgspec.msgpack.Encoder, decoder: LogRecordsDecoder, loki: PushEncoder
) -> None:
    """What one batch's records hold in memory (read back, as the disk buffer's copy holds them after a
    read or a put) against its encoded request body."""
    record = encode(encoder.encode(batch), len(batch), 1)
    tracemalloc.start()
    back = decoder.decode(memoryview(record)[HEADER.size :])
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    counted = _cache_cost(Ref(0, 0, len(record), len(back), 1))
    body = len(cramjam.snappy.compress_raw(loki.encode_protobuf(back).payload))
    copy = 16 * 2**20
    print(
        f"a batch of {len(back):,} records in memory: {held / 2**20:.2f} MiB ({counted / 2**20:.2f} MiB as the"
        f" buffer's copy counts it: {copy // counted} such batches in 16 MiB); its snappy body {body / 2**20:.2f}"
        f" MiB ({copy // body} in 16 MiB)"
    )


def ship_to_peer(home: Path, bodies: list[bytes], lines: int, window: int = 1) -> None:
    """POST ``bodies`` into a new VictoriaLogs, ``window`` requests in flight (in the order given, each
    connection taking the next body when answered), and print how long it took them in."""
    home.mkdir()
    vl, url = start_victoria_logs(home)
    try:
        host, port = url.removeprefix("http://").split(":")
        headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}
        numbered, lock, answered, failed = iter(enumerate(bodies)), threading.Lock(), [], []

        def send() -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            while True:
                with lock:
                    body = next(numbered, None)
                if body is None or failed:
                    break
                conn.request("POST", "/insert/loki/api/v1/push", body[1], headers)
                answer = conn.getresponse()
                answer.read()
                if answer.status // 100 != 2:
                    failed.append(answer.status)
                answered.append(time.monotonic())
            conn.close()

        senders = [threading.Thread(target=send) for _ in range(window)]
        cpu_before, started = cpu_ns(vl.pid), time.monotonic()
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        seconds, cpu = time.monotonic() - started, (cpu_ns(vl.pid) - cpu_before) / 1e9
    finally:
        stop(vl)
    if failed:
        sys.exit(f"VictoriaLogs answered {failed[0]}")
    first = answered[0] - started
    print(
        f"  VictoriaLogs took {len(bodies)} requests, {window} in flight, in {seconds:.2f} s ({lines / seconds:,.0f}"
        f" lines/s; the first answered after {first * 1e3:.0f} ms), {cpu:.2f} s of its CPU"
        f" ({cpu * 1e6 / lines:.2f} us per line)"
    )


if __name__ == "__main__":
    sys.exit(main())
