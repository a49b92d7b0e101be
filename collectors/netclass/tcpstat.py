"""``/proc/net/tcp`` and ``tcp6``: node_exporter's ``tcpstat`` collector (``node_tcp_connection_states``).

node_exporter asks the kernel over netlink (inet_diag); the same sockets are in
``/proc/net/tcp{,6}``, which needs no socket of our own. One difference: for a
listening socket inet_diag reports the backlog *limit* as its write queue, which
node_exporter adds to ``tx_queued_bytes``; the /proc table reports 0 there, so
``tx_queued_bytes`` here counts only bytes really queued.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.plugin import Emitter

from .procnet import SOCKET_ROW, Chunks, read_chunks, socket_table_sums

Report = Callable[[str], None]

# include/net/tcp_states.h
STATES = {
    1: "established",
    2: "syn_sent",
    3: "syn_recv",
    4: "fin_wait1",
    5: "fin_wait2",
    6: "time_wait",
    7: "close",
    8: "close_wait",
    9: "last_ack",
    10: "listen",
    11: "closing",
}


def tcpstat(proc_root: str, max_sockets: int, emit: Emitter, report: Report, chunks: Chunks = read_chunks) -> None:
    counts: dict[int, int] = {}
    tx = rx = rows = 0
    for name in ("tcp", "tcp6"):
        path = f"{proc_root}/net/{name}"
        try:
            t, r, n = socket_table_sums(chunks(path, SOCKET_ROW), counts, max_sockets - rows if max_sockets else 0)
        except FileNotFoundError:
            if name == "tcp":
                report(f"cannot read {path}: no such file")
                return
            continue  # no IPv6
        except OverflowError:
            report(f"{path}: more than tcpstat_max_sockets = {max_sockets} sockets, no tcpstat series this run")
            return
        except (OSError, ValueError) as exc:
            report(f"{path}: {getattr(exc, 'strerror', None) or exc}")
            return
        tx, rx, rows = tx + t, rx + r, rows + n
    for state, count in counts.items():
        emit.gauge("node_tcp_connection_states", count, (("state", STATES.get(state, "unknown")),), unit="1")
    if rows:
        emit.gauge("node_tcp_connection_states", rx, (("state", "rx_queued_bytes"),), unit="By")
        emit.gauge("node_tcp_connection_states", tx, (("state", "tx_queued_bytes"),), unit="By")
