"""``/sys/class/scsi_tape``: node_exporter's ``tapestats`` collector."""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import list_dir, parse_uint, read_attr

Report = Callable[[str], None]

_TAPE = re.compile(r"^st[0-9]+$")
# stats file -> (metric, kind, scale): *_ns files are nanoseconds, exported in seconds
_TAPE_STATS = {
    "in_flight": ("node_tape_io_now", "gauge", 1),
    "io_ns": ("node_tape_io_time_seconds_total", "counter", 1e-9),
    "other_cnt": ("node_tape_io_others_total", "counter", 1),
    "read_byte_cnt": ("node_tape_read_bytes_total", "counter", 1),
    "read_cnt": ("node_tape_reads_completed_total", "counter", 1),
    "read_ns": ("node_tape_read_time_seconds_total", "counter", 1e-9),
    "resid_cnt": ("node_tape_residual_total", "counter", 1),
    "write_byte_cnt": ("node_tape_written_bytes_total", "counter", 1),
    "write_cnt": ("node_tape_writes_completed_total", "counter", 1),
    "write_ns": ("node_tape_write_time_seconds_total", "counter", 1e-9),
}


def tapestats(sys_root: str, ignored: re.Pattern[str], emit: Emitter, report: Report) -> None:
    base = f"{sys_root}/class/scsi_tape"
    try:
        names = [name for name in list_dir(base) if _TAPE.match(name)]
    except FileNotFoundError:
        return  # no st driver: nothing to say, like node_exporter
    except OSError as exc:
        report(f"{base}: {exc.strerror}")
        return
    for name in names:
        if ignored.search(name):
            continue
        stats = f"{base}/{name}/stats"
        counters = dict.fromkeys(_TAPE_STATS, 0)
        try:
            for file in list_dir(stats):
                value = read_attr(f"{stats}/{file}")
                if file in counters:
                    counters[file] = parse_uint(value)
        except OSError as exc:
            report(f"tape {name}: {exc.strerror}: {exc.filename}")
            continue
        except ValueError as exc:
            report(f"tape {name}: {exc}")
            continue
        labels = (("device", name),)
        for file, (metric, kind, scale) in _TAPE_STATS.items():
            unit = "s" if scale != 1 else "By" if "bytes" in metric else "1"
            getattr(emit, kind)(metric, counters[file] * scale, labels, unit=unit)
