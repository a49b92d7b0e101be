"""``/sys/fs/bcache``: node_exporter's ``bcache`` collector.

Values are bcache's human-readable sizes (``1.5M``); they are read back the way
procfs 0.8 does, quirks included, so the numbers equal node_exporter's: the
digits after the point of a suffixed value are divided by 10.24 (``1.5k`` is
1024 + 5/10.24 × 1024), and ``btree_read_average_duration_us`` is taken as
nanoseconds (node_exporter's unit slip, exported as
``node_bcache_btree_read_average_duration_seconds``). A missing file reads as 0.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import entries, read_text

Report = Callable[[str], None]

_MULTIPLIER = {"k": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60,
               "Z": 1 << 70, "Y": 1 << 80}  # fmt: skip
_SET = (("average_key_size", "node_bcache_average_key_size_sectors", "gauge"),
        ("btree_cache_size", "node_bcache_btree_cache_size_bytes", "gauge"),
        ("cache_available_percent", "node_bcache_cache_available_percent", "gauge"),
        ("congested", "node_bcache_congested", "gauge"),
        ("root_usage_percent", "node_bcache_root_usage_percent", "gauge"),
        ("tree_depth", "node_bcache_tree_depth", "gauge"),
        ("internal/active_journal_entries", "node_bcache_active_journal_entries", "gauge"),
        ("internal/btree_nodes", "node_bcache_btree_nodes", "gauge"),
        ("internal/cache_read_races", "node_bcache_cache_read_races_total", "counter"))  # fmt: skip
_PERIOD = (("bypassed", "node_bcache_bypassed_bytes_total"), ("cache_hits", "node_bcache_cache_hits_total"),
           ("cache_misses", "node_bcache_cache_misses_total"),
           ("cache_bypass_hits", "node_bcache_cache_bypass_hits_total"),
           ("cache_bypass_misses", "node_bcache_cache_bypass_misses_total"),
           ("cache_miss_collisions", "node_bcache_cache_miss_collisions_total"),
           ("cache_readaheads", "node_bcache_cache_readaheads_total"))  # fmt: skip
# writeback_rate_debug line -> metric; "signed" values may start with '-'
_WRITEBACK = (("target:", "node_bcache_dirty_target_bytes", ""), ("rate:", "node_bcache_writeback_rate", "/sec"),
              ("proportional:", "node_bcache_writeback_rate_proportional_term", ""),
              ("integral:", "node_bcache_writeback_rate_integral_term", ""),
              ("change:", "node_bcache_writeback_change", "/sec"))  # fmt: skip


def _pseudo_float(text: str) -> float:
    parts = text.split(".")  # like procfs, anything after a second "." is ignored
    value = float(parts[0])
    return value + float(parts[1]) / 10.24 if len(parts) > 1 else value


def dehumanize(text: str) -> int:
    """bcache's ``bch_hprint`` text back to a number (procfs ``dehumanize``), sign allowed."""
    sign = -1 if text.startswith("-") else 1
    text = text.removeprefix("-")
    if not text:
        raise ValueError("zero-length value")
    suffixed = text[-1] > "9"  # a unit letter; an unknown one multiplies by 0, as in procfs
    value = _pseudo_float(text[:-1]) * _MULTIPLIER.get(text[-1], 0) if suffixed else float(text)
    return sign * int(value)


def _value(path: str) -> int:
    try:
        text = read_text(path)
    except FileNotFoundError:
        return 0
    return dehumanize(text[:-1])  # procfs drops the last byte, the newline


def _writeback(path: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in read_text(path).splitlines():
        for prefix, name, suffix in _WRITEBACK:
            if line.startswith(prefix):
                values[name] = dehumanize(line.split()[-1].removesuffix(suffix))
        # parsed (a bad value fails the set, as in procfs) though node_exporter exports neither
        if line.startswith("dirty:"):
            dehumanize(line.split()[-1])
        elif line.startswith("next io:"):
            int(line.split()[-1].removesuffix("ms"))
    return values


def _priority(path: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in read_text(path).splitlines():
        for prefix, name in (("Unused:", "unused"), ("Metadata:", "metadata")):
            if line.startswith(prefix):
                values[name] = int(line.split()[-1].removesuffix("%"))
    return values


def _cache_set(path: str, uuid: str, emit: Emitter, priority_stats: bool) -> None:
    """Read everything first: a set that fails part-way exports nothing, as in procfs."""
    out: list[tuple[str, str, float, tuple]] = []
    uuid_label = (("uuid", uuid),)
    for file, name, kind in _SET:
        out.append((kind, name, _value(f"{path}/{file}"), uuid_label))
    btree_read = _value(f"{path}/internal/btree_read_average_duration_us") * 1e-9
    out.append(("gauge", "node_bcache_btree_read_average_duration_seconds", btree_read, uuid_label))
    for bdev in sorted(glob.glob(f"{path}/bdev[0-9]*")):
        labels = (("backing_device", os.path.basename(bdev)), ("uuid", uuid))
        out.append(("gauge", "node_bcache_dirty_data_bytes", _value(f"{bdev}/dirty_data"), labels))
        writeback = _writeback(f"{bdev}/writeback_rate_debug")
        for _, name, _ in _WRITEBACK:
            out.append(("gauge", name, writeback.get(name, 0), labels))
        for file, name in _PERIOD:
            out.append(("counter", name, _value(f"{bdev}/stats_total/{file}"), labels))
    for cache in sorted(glob.glob(f"{path}/cache[0-9]*")):
        labels = (("cache_device", os.path.basename(cache)), ("uuid", uuid))
        out.append(("gauge", "node_bcache_io_errors", _value(f"{cache}/io_errors"), labels))
        out.append(("counter", "node_bcache_metadata_written_bytes_total", _value(f"{cache}/metadata_written"), labels))
        out.append(("counter", "node_bcache_written_bytes_total", _value(f"{cache}/written"), labels))
        if priority_stats:
            priority = _priority(f"{cache}/priority_stats")
            out.append(("gauge", "node_bcache_priority_stats_unused_percent", priority.get("unused", 0), labels))
            out.append(("gauge", "node_bcache_priority_stats_metadata_percent", priority.get("metadata", 0), labels))
    for kind, name, value, labels in out:
        unit = "By" if name.endswith(("_bytes", "_bytes_total")) else "s" if name.endswith("_seconds") else "1"
        if name.startswith(("node_bcache_writeback_rate", "node_bcache_writeback_change")):
            unit = "By/s"
        getattr(emit, kind)(name, value, labels, unit=unit)


def bcache(sys_root: str, priority_stats: bool, emit: Emitter, report: Report) -> None:
    for path in entries(f"{sys_root}/fs/bcache", containing="-"):
        uuid = os.path.basename(path)
        try:
            _cache_set(path, uuid, emit, priority_stats)
        except (OSError, ValueError, IndexError) as exc:
            report(f"cache set {uuid}: {getattr(exc, 'strerror', None) or exc}")
