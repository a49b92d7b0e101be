"""``/proc/net/rpc/nfs`` and ``nfsd``: node_exporter's ``nfs`` and ``nfsd`` collectors.

Lines and their lengths are checked as procfs 0.8 checks them: an unknown line
or a wrong count fails the file, as it fails node_exporter's collector. The
``method`` label values are procfs' field names (``GetAttr``, ``ReadDirPlus``).
"""

from __future__ import annotations

from collections.abc import Callable

from agent.plugin import Emitter
from agent.sysfs import parse_uint, read_text

Report = Callable[[str], None]

V2 = ("Null", "GetAttr", "SetAttr", "Root", "Lookup", "ReadLink", "Read", "WrCache", "Write", "Create", "Remove",
      "Rename", "Link", "SymLink", "MkDir", "RmDir", "ReadDir", "FsStat")  # fmt: skip
V3 = ("Null", "GetAttr", "SetAttr", "Lookup", "Access", "ReadLink", "Read", "Write", "Create", "MkDir", "SymLink",
      "MkNod", "Remove", "RmDir", "Rename", "Link", "ReadDir", "ReadDirPlus", "FsStat", "FsInfo", "PathConf",
      "Commit")  # fmt: skip
CLIENT_V4 = ("Null", "Read", "Write", "Commit", "Open", "OpenConfirm", "OpenNoattr", "OpenDowngrade", "Close",
             "Setattr", "FsInfo", "Renew", "SetClientID", "SetClientIDConfirm", "Lock", "Lockt", "Locku", "Access",
             "Getattr", "Lookup", "LookupRoot", "Remove", "Rename", "Link", "Symlink", "Create", "Pathconf", "StatFs",
             "ReadLink", "ReadDir", "ServerCaps", "DelegReturn", "GetACL", "SetACL", "FsLocations",
             "ReleaseLockowner", "Secinfo", "FsidPresent", "ExchangeID", "CreateSession", "DestroySession",
             "Sequence", "GetLeaseTime", "ReclaimComplete", "LayoutGet", "GetDeviceInfo", "LayoutCommit",
             "LayoutReturn", "SecinfoNoName", "TestStateID", "FreeStateID", "GetDeviceList", "BindConnToSession",
             "DestroyClientID", "Seek", "Allocate", "DeAllocate", "LayoutStats", "Clone")  # fmt: skip
# proc4ops columns; the three unused/future ones are read but not exported
SERVER_V4_OPS = ("Op0Unused", "Op1Unused", "Op2Future", "Access", "Close", "Commit", "Create", "DelegPurge",
                 "DelegReturn", "GetAttr", "GetFH", "Link", "Lock", "Lockt", "Locku", "Lookup", "LookupRoot",
                 "Nverify", "Open", "OpenAttr", "OpenConfirm", "OpenDgrd", "PutFH", "PutPubFH", "PutRootFH", "Read",
                 "ReadDir", "ReadLink", "Remove", "Rename", "Renew", "RestoreFH", "SaveFH", "SecInfo", "SetAttr",
                 "Verify", "Write", "RelLockOwner")  # fmt: skip
_NOT_EXPORTED_V4 = {"Op0Unused", "Op1Unused", "Op2Future", "PutPubFH", "PutRootFH"}
# fixed-length lines: name -> accepted count
_CLIENT_FIXED = {"net": 4, "rpc": 3}
_SERVER_FIXED = {"rc": 3, "fh": 5, "io": 2, "th": 2, "ra": 12, "net": 4, "rpc": 5}


def _counted(line: str, values: list[int], minimum: int, exact: int | None = None) -> list[int]:
    count = values[0]
    if len(values) - 1 != count or count < minimum or (exact is not None and count != exact):
        raise ValueError(f"invalid {line} line: {values}")
    return values[1:]


def parse(text: str, server: bool) -> dict[str, list[int]]:
    fixed = _SERVER_FIXED if server else _CLIENT_FIXED
    counted = {"proc2": 18, "proc3": 22, "proc4": 2 if server else 0}
    if server:
        counted["proc4ops"] = 39
    lines: dict[str, list[int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"invalid NFS metric line {line!r}")
        label = parts[0]
        if server and label == "th":
            if len(parts) < 3:
                raise ValueError(f"invalid NFSd th metric line {line!r}")
            parts = parts[:3]  # the rest are the (obsolete) busy-time histogram, floats
        values = [parse_uint(v) for v in parts[1:]]
        if label in fixed:
            if len(values) != fixed[label]:
                raise ValueError(f"invalid {label} line {values}")
            lines[label] = values
        elif server and label == "wdeleg_getattr":
            pass  # kernels since 6.6; procfs 0.8 rejects the whole file, node_exporter 1.5 exports nothing from it
        elif label in counted:
            exact = 2 if (server and label == "proc4") else None
            lines[label] = _counted(label, values, counted[label], exact)
        else:
            raise ValueError(f"unknown NFS metric line {label!r}")
    return lines


def _read(path: str, server: bool, report: Report) -> dict[str, list[int]] | None:
    try:
        return parse(read_text(path), server)
    except FileNotFoundError:
        return None  # no NFS module loaded: nothing to say, like node_exporter
    except OSError as exc:
        report(f"{path}: {exc.strerror}")
    except ValueError as exc:
        report(f"{path}: {exc}")
    return None


def _get(lines: dict[str, list[int]], label: str, index: int) -> int:
    values = lines.get(label)
    return values[index] if values and index < len(values) else 0  # a line the kernel lacks reads as 0


def nfs(proc_root: str, emit: Emitter, report: Report) -> None:
    lines = _read(f"{proc_root}/net/rpc/nfs", False, report)
    if lines is None:
        return
    for proto, index in (("udp", 1), ("tcp", 2)):
        emit.counter("node_nfs_packets_total", _get(lines, "net", index), (("protocol", proto),), unit="1")
    emit.counter("node_nfs_connections_total", _get(lines, "net", 3), unit="1")
    emit.counter("node_nfs_rpcs_total", _get(lines, "rpc", 0), unit="1")
    emit.counter("node_nfs_rpc_retransmissions_total", _get(lines, "rpc", 1), unit="1")
    emit.counter("node_nfs_rpc_authentication_refreshes_total", _get(lines, "rpc", 2), unit="1")
    for proto, label, methods in (("2", "proc2", V2), ("3", "proc3", V3), ("4", "proc4", CLIENT_V4)):
        for index, method in enumerate(methods):
            labels = (("method", method), ("proto", proto))
            emit.counter("node_nfs_requests_total", _get(lines, label, index), labels, unit="1")


def nfsd(proc_root: str, emit: Emitter, report: Report) -> None:
    lines = _read(f"{proc_root}/net/rpc/nfsd", True, report)
    if lines is None:
        return
    for suffix, index in (("hits", 0), ("misses", 1), ("nocache", 2)):
        emit.counter(f"node_nfsd_reply_cache_{suffix}_total", _get(lines, "rc", index), unit="1")
    emit.counter("node_nfsd_file_handles_stale_total", _get(lines, "fh", 0), unit="1")
    emit.counter("node_nfsd_disk_bytes_read_total", _get(lines, "io", 0), unit="By")
    emit.counter("node_nfsd_disk_bytes_written_total", _get(lines, "io", 1), unit="By")
    emit.gauge("node_nfsd_server_threads", _get(lines, "th", 0), unit="1")
    emit.gauge("node_nfsd_read_ahead_cache_size_blocks", _get(lines, "ra", 0), unit="1")
    emit.counter("node_nfsd_read_ahead_cache_not_found_total", _get(lines, "ra", 11), unit="1")
    for proto, index in (("udp", 1), ("tcp", 2)):
        emit.counter("node_nfsd_packets_total", _get(lines, "net", index), (("proto", proto),), unit="1")
    emit.counter("node_nfsd_connections_total", _get(lines, "net", 3), unit="1")
    for error, index in (("fmt", 2), ("auth", 3), ("cInt", 4)):
        emit.counter("node_nfsd_rpc_errors_total", _get(lines, "rpc", index), (("error", error),), unit="1")
    emit.counter("node_nfsd_server_rpcs_total", _get(lines, "rpc", 0), unit="1")
    for proto, label, methods in (("2", "proc2", V2), ("3", "proc3", V3), ("4", "proc4ops", SERVER_V4_OPS)):
        for index, method in enumerate(methods):
            if method == "Null" or (proto == "4" and method in _NOT_EXPORTED_V4):
                continue
            labels = (("method", method), ("proto", proto))
            emit.counter("node_nfsd_requests_total", _get(lines, label, index), labels, unit="1")
