"""``/sys/fs/xfs/<device>/stats/stats``: node_exporter's ``xfs`` collector.

Every line is checked the way procfs 0.8 checks it (32-bit counters except
``xpc``, a fixed number of values per known line), so a file node_exporter
rejects is rejected here too; unknown lines of newer kernels are accepted.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import entries, parse_uint, parse_uint32, read_text

Report = Callable[[str], None]

# line -> the number of values procfs accepts
_LENGTHS = {"extent_alloc": {4}, "abt": {4}, "blk_map": {7}, "bmbt": {4}, "dir": {4}, "trans": {3}, "ig": {7},
            "log": {5}, "push_ail": {10}, "xstrat": {2}, "rw": {2}, "attr": {4}, "icluster": {3}, "vnodes": {7, 8},
            "buf": {9}, "abtb2": {15}, "abtc2": {15}, "bmbt2": {15}, "ibt2": {15}, "qm": {8, 9}, "debug": {1},
            "xpc": {3}}  # fmt: skip
# (line, metric suffixes in column order) of what node_exporter exports
_EXPORTED = (
    ("extent_alloc", ("extent_allocation_extents_allocated", "extent_allocation_blocks_allocated",
                      "extent_allocation_extents_freed", "extent_allocation_blocks_freed")),
    ("abt", ("allocation_btree_lookups", "allocation_btree_compares", "allocation_btree_records_inserted",
             "allocation_btree_records_deleted")),
    ("blk_map", ("block_mapping_reads", "block_mapping_writes", "block_mapping_unmaps",
                 "block_mapping_extent_list_insertions", "block_mapping_extent_list_deletions",
                 "block_mapping_extent_list_lookups", "block_mapping_extent_list_compares")),
    ("bmbt", ("block_map_btree_lookups", "block_map_btree_compares", "block_map_btree_records_inserted",
              "block_map_btree_records_deleted")),
    ("dir", ("directory_operation_lookup", "directory_operation_create", "directory_operation_remove",
             "directory_operation_getdents")),
    ("ig", ("inode_operation_attempts", "inode_operation_found", "inode_operation_recycled",
            "inode_operation_missed", "inode_operation_duplicates", "inode_operation_reclaims",
            "inode_operation_attribute_changes")),
    ("rw", ("write_calls", "read_calls")),  # the kernel prints writes first
    ("vnodes", ("vnode_active", "vnode_allocate", "vnode_get", "vnode_hold", "vnode_release", "vnode_reclaim",
                "vnode_remove")),
)  # fmt: skip
METRICS = tuple(f"node_xfs_{suffix}_total" for _, suffixes in _EXPORTED for suffix in suffixes)


def parse(text: str) -> dict[str, list[int]]:
    lines: dict[str, list[int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        label, raw = fields[0], fields[1:]
        values = [parse_uint(v) for v in raw] if label == "xpc" else [parse_uint32(v) for v in raw]
        if label in _LENGTHS and len(values) not in _LENGTHS[label]:
            raise ValueError(f"incorrect number of values for XFS {label} stats: {len(values)}")
        lines[label] = values
    return lines


def xfs(sys_root: str, emit: Emitter, report: Report) -> None:
    for path in entries(f"{sys_root}/fs/xfs", below="/stats/stats"):
        device = os.path.basename(os.path.dirname(os.path.dirname(path)))
        try:
            stats = parse(read_text(path))
        except OSError as exc:
            report(f"{device}: {exc.strerror}: {path}")
            continue
        except ValueError as exc:
            report(f"{device}: {exc}")
            continue
        labels = (("device", device),)
        for line, suffixes in _EXPORTED:
            values = stats.get(line) or [0] * len(suffixes)  # a line the kernel lacks reads as 0
            for suffix, value in zip(suffixes, values, strict=False):
                emit.counter(f"node_xfs_{suffix}_total", value, labels, unit="1")
