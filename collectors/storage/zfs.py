"""``/proc/spl/kstat/zfs``: node_exporter's ``zfs`` collector.

Each kstat row of type 4 (uint64) becomes ``node_zfs_<subsystem>_<name>``
(``-`` in the name becomes ``_``); pools give ``node_zfs_zpool_*{zpool}`` from
``<pool>/io``, ``node_zfs_zpool_dataset_*{zpool,dataset}`` from
``<pool>/objset-*`` and ``node_zfs_zpool_state{zpool,state}`` from
``<pool>/state``. node_exporter exports all but the state as *untyped*;
hostwatch has no untyped kind and exports them as gauges.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import parse_uint, read_text

Report = Callable[[str], None]

_KSTAT_UINT64 = "4"
_SUBSYSTEMS = (("zfs_abd", "abdstats"), ("zfs_arc", "arcstats"), ("zfs_dbuf", "dbuf_stats"), ("zfs_dmu_tx", "dmu_tx"),
               ("zfs_dnode", "dnodestats"), ("zfs_fm", "fm"), ("zfs_vdev_cache", "vdev_cache_stats"),
               ("zfs_vdev_mirror", "vdev_mirror_stats"), ("zfs_xuio", "xuio_stats"), ("zfs_zfetch", "zfetchstats"),
               ("zfs_zil", "zil"))  # fmt: skip
_POOL_STATES = ("online", "degraded", "faulted", "offline", "removed", "unavail")


def _metric(name: str) -> str:
    return name.replace("-", "_")


def kstat_rows(text: str, what: str) -> list[list[str]]:
    """The rows after the ``name type data`` header; a file without one is malformed."""
    rows, started = [], False
    for line in text.splitlines():
        parts = line.split()
        if not started:
            started = parts == ["name", "type", "data"]
        elif len(parts) >= 3:
            rows.append(parts)
    if not started:
        raise ValueError(f"did not parse a single {what!r} metric")
    return rows


def _subsystem(path: str, subsystem: str, file: str, emit: Emitter) -> None:
    out = []
    for name, kind, data, *_ in kstat_rows(read_text(path), file):
        if kind == _KSTAT_UINT64:
            try:
                out.append((f"node_{subsystem}_{_metric(name)}", parse_uint(data)))
            except ValueError:
                raise ValueError(f"could not parse expected integer value for {name!r}") from None
    for name, value in out:
        emit.gauge(name, value, unit="1")


def _pool_io(path: str, pool: str, emit: Emitter) -> None:
    header: list[str] = []
    out = []
    for line in read_text(path).splitlines():
        fields = line.split()
        if not header:
            if len(fields) >= 12 and fields[0] == "nread":
                header = fields
            continue
        if len(fields) < len(header):
            raise ValueError(f"short row in {path}")
        values = fields[: len(header)]
        out.extend(
            (f"node_zfs_zpool_{_metric(field)}", parse_uint(value)) for field, value in zip(header, values, strict=True)
        )
    for name, value in out:
        emit.gauge(name, value, (("zpool", pool),), unit="1")


def _objset(path: str, pool: str, emit: Emitter) -> None:
    dataset, out = "", []
    for name, kind, data, *_ in kstat_rows(read_text(path), os.path.basename(path)):
        if name == "dataset_name":
            dataset = data
        elif kind == _KSTAT_UINT64:
            out.append((f"node_zfs_zpool_dataset_{_metric(name)}", parse_uint(data), dataset))
    for name, value, ds in out:
        emit.gauge(name, value, (("dataset", ds), ("zpool", pool if ds else "")), unit="1")


def zfs(proc_root: str, emit: Emitter, report: Report) -> None:
    base = f"{proc_root}/spl/kstat/zfs"
    if not os.path.isdir(base):
        return  # no ZFS module: nothing to say, like node_exporter
    for subsystem, file in _SUBSYSTEMS:
        path = f"{base}/{file}"
        try:
            _subsystem(path, subsystem, file, emit)
        except FileNotFoundError:
            continue  # this ZFS version has no such kstat
        except (OSError, ValueError) as exc:
            report(f"{file}: {getattr(exc, 'strerror', None) or exc}")
    for pattern, read in (("io", _pool_io), ("objset-*", _objset)):
        for path in sorted(glob.glob(f"{base}/*/{pattern}")):
            pool = os.path.basename(os.path.dirname(path))
            try:
                read(path, pool, emit)
            except (OSError, ValueError) as exc:
                report(f"{pool}/{os.path.basename(path)}: {getattr(exc, 'strerror', None) or exc}")
    for path in sorted(glob.glob(f"{base}/*/state")):
        pool = os.path.basename(os.path.dirname(path))
        try:
            state = (read_text(path).split("\n", 1)[0]).lower()
        except OSError as exc:
            report(f"{pool}/state: {exc.strerror}")
            continue
        for name in _POOL_STATES:
            emit.gauge("node_zfs_zpool_state", 1 if state == name else 0, (("state", name), ("zpool", pool)), unit="1")
