"""The disk buffer's log record decoder: the same records as msgspec's typed decoder, label sets shared."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from agent.buffer import DiskQueue, QueuedBatch
from agent.model import LogRecord, Signal
from agent.stored_records import LogRecordsDecoder

TYPED = msgspec.msgpack.Decoder(list[LogRecord])
ENCODE = msgspec.msgpack.Encoder().encode
FILE_A = (("filename", "/var/log/a.log"), ("job", "logs"))
FILE_B = (("filename", "/var/log/b.log"), ("job", "logs"), ("ünï", "cödé"))


def records() -> list[LogRecord]:
    out = []
    for i in range(50):
        labels = (FILE_A, FILE_B, ())[i % 3]
        attributes = (("trace_id", f"{i:032x}"), ("user", "é")) if i % 7 == 0 else ()
        severity, number = ("ERROR", 17) if i % 5 == 0 else ("", 0)
        out.append(LogRecord(1_700_000_000_000_000_000 + i, f"line {i} ✓", labels, severity, attributes, number))
    return out


def test_equal_to_the_typed_decoder() -> None:
    payload = ENCODE(records())
    got = LogRecordsDecoder().decode(memoryview(payload))
    assert got == TYPED.decode(payload) == records()


def test_a_label_set_is_decoded_once_per_batch() -> None:
    got = LogRecordsDecoder().decode(ENCODE(records()))
    assert len({id(r.labels) for r in got if r.labels}) == 2  # one object per file, not one per record


def test_records_written_with_fewer_fields() -> None:
    # what an older writer of the same array layout put there: trailing fields take their defaults
    payload = ENCODE([[5, "a"], [6, "b", [["job", "x"]]], [7, "c", [], "WARN"]])
    assert LogRecordsDecoder().decode(payload) == TYPED.decode(payload)


@pytest.mark.parametrize(
    "bad",
    [
        [[5, "a", [["job", 1]]]],  # a label value that is not a string
        [[5, "a", [], "", [["k"]]]],  # an attribute that is not a pair
        [[5, 6]],  # a body that is not a string
        [[5, "a", None]],
    ],
)
def test_bad_records_fail_as_with_the_typed_decoder(bad: list) -> None:
    payload = ENCODE(bad)
    with pytest.raises(msgspec.ValidationError):
        TYPED.decode(payload)
    with pytest.raises(msgspec.ValidationError):
        LogRecordsDecoder().decode(payload)


def test_truncated_bytes_fail() -> None:
    payload = ENCODE(records())
    with pytest.raises(msgspec.DecodeError):
        LogRecordsDecoder().decode(payload[:-3])


def test_disk_queue_reads_log_records_back(tmp_path: Path) -> None:
    async def main() -> list[LogRecord]:
        queue = DiskQueue(tmp_path, 10_000_000, signal=Signal.LOGS, cache_bytes=0)  # read back from the disk
        await queue.open()
        await queue.put(QueuedBatch(Signal.LOGS, records(), 5000, 1))
        batch = await queue.take()
        await queue.ack()
        await queue.close()
        return batch.items

    got = asyncio.run(main())
    assert got == records()
    assert got[0].labels is got[3].labels
