"""network collector on fixture trees: netdev, netstat, sockstat."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import msgspec
import pytest

from agent.config import convert
from agent.emitter import RunEmitter
from collectors.network.network import NETSTAT_FIELDS, Config, NetworkCollector
from tests.support import FIXTURES, by_series, collect_once, collector_context

FIX = FIXTURES / "network"
NET = FIX / "proc" / "net"
SYS_NET = FIX / "sys" / "class" / "net"

RX = ("bytes", "packets", "errs", "drop", "fifo", "frame", "compressed", "multicast")
TX = ("bytes", "packets", "errs", "drop", "fifo", "colls", "carrier", "compressed")


def network(tmp_path: Path, proc: Path = FIX / "proc", sys: Path = FIX / "sys", **options) -> NetworkCollector:
    context = collector_context(tmp_path, proc_root=proc, sys_root=sys)
    return NetworkCollector(convert(options, Config), context)


def proc_net_dev() -> dict[str, list[int]]:
    rows = {}
    for line in (NET / "dev").read_text().splitlines()[2:]:
        name, rest = line.split(":")
        rows[name.strip()] = [int(v) for v in rest.split()]
    return rows


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "fixture"
    shutil.copytree(FIX, root)
    return root


async def test_netdev_values_from_proc_net_dev_and_sysfs(tmp_path):
    emitter = await collect_once(network(tmp_path))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    rows = proc_net_dev()
    devices = {dict(labels)["device"] for name, labels in series if name.startswith("node_network_")}
    assert devices == set(rows)  # lo included: node_exporter excludes nothing by default
    for device, values in rows.items():
        labels = (("device", device),)
        for field, value in zip(RX, values[:8], strict=True):
            assert series[(f"node_network_receive_{field}_total", labels)] == value
        for field, value in zip(TX, values[8:], strict=True):
            assert series[(f"node_network_transmit_{field}_total", labels)] == value
    for device in ("eth0", "ifb0", "lo"):
        nohandler = int((SYS_NET / device / "statistics" / "rx_nohandler").read_text())
        assert series[("node_network_receive_nohandler_total", (("device", device),))] == nohandler
    assert series[("node_network_receive_nohandler_total", (("device", "eth0"),))] == 7  # distinct in the fixture
    kinds = {s.name: (s.kind, s.unit) for s in emitter.samples if s.name.startswith("node_network_")}
    assert len(kinds) == 17 and all(kind == "counter" for kind, _ in kinds.values())
    assert kinds["node_network_receive_bytes_total"][1] == "By"


async def test_interface_vanishing_between_reads(tmp_path):
    # veth9 is in net/dev but its /sys entry is gone; gone0 has a /sys entry but is no longer in net/dev.
    assert "veth9" in proc_net_dev() and not (SYS_NET / "veth9").exists()
    assert "gone0" not in proc_net_dev() and (SYS_NET / "gone0").is_dir()
    emitter = await collect_once(network(tmp_path))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    veth9 = {name for name, labels in series if labels == (("device", "veth9"),)}
    assert len(veth9) == 16 and "node_network_receive_nohandler_total" not in veth9
    assert series[("node_network_transmit_carrier_total", (("device", "veth9"),))] == proc_net_dev()["veth9"][14]
    assert not any(labels == (("device", "gone0"),) for _, labels in series)


async def test_without_sysfs_netdev_still_reports_proc_counters(tmp_path):
    series = by_series((await collect_once(network(tmp_path, sys=tmp_path / "nosys"))).samples)
    assert series[("node_network_receive_bytes_total", (("device", "eth0"),))] == proc_net_dev()["eth0"][0]
    assert not any(name == "node_network_receive_nohandler_total" for name, _ in series)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"interfaces_exclude": "^lo$"}, {"eth0", "ifb0", "ifb1", "veth9"}),
        ({"interfaces_include": "^(eth|veth)"}, {"eth0", "veth9"}),
        ({"interfaces_include": "^ifb", "interfaces_exclude": "1$"}, {"ifb0"}),
    ],
)
async def test_interface_filters(tmp_path, options, expected):
    series = by_series((await collect_once(network(tmp_path, **options))).samples)
    assert {dict(labels)["device"] for name, labels in series if name.startswith("node_network_")} == expected


def netstat_expected(files=("netstat", "snmp"), snmp6: bool = True) -> dict[str, int]:
    """Every <Proto>_<Field> of the fixture files, filtered by node_exporter's default regex."""
    fields: dict[str, int] = {}
    for name in files:
        lines = (NET / name).read_text().splitlines()
        for i in range(0, len(lines), 2):
            names, values = lines[i].split(), lines[i + 1].split()
            for field, value in zip(names[1:], values[1:], strict=True):
                fields[f"{names[0].rstrip(':')}_{field}"] = int(value)
    if snmp6:
        for line in (NET / "snmp6").read_text().splitlines():
            name, value = line.split()
            proto, field = name.split("6", 1)
            fields[f"{proto}6_{field}"] = int(value)
    return {f"node_netstat_{k}": v for k, v in fields.items() if re.search(NETSTAT_FIELDS, k)}


async def test_netstat_default_fields(tmp_path):
    emitter = await collect_once(network(tmp_path))
    got = {s.name: s.value for s in emitter.samples if s.name.startswith("node_netstat_")}
    expected = netstat_expected()
    assert got == expected
    # node_exporter 1.5's default selection, spot-checked by name.
    spot = "Tcp_CurrEstab Ip_Forwarding IpExt_InOctets Ip6_OutOctets TcpExt_ListenDrops Udp6_NoPorts UdpLite_InErrors"
    for name in [*spot.split(), "UdpLite6_InErrors", "Icmp6_InMsgs", "TcpExt_TCPTimeouts"]:
        assert f"node_netstat_{name}" in got
    assert "node_netstat_Tcp_MaxConn" not in got and "node_netstat_Ip6_InReceives" not in got
    units = {s.name: s.unit for s in emitter.samples if s.name.startswith("node_netstat_")}
    assert units["node_netstat_IpExt_InOctets"] == "By" and units["node_netstat_Tcp_InSegs"] == "1"
    assert all(s.kind == "gauge" for s in emitter.samples if s.name.startswith("node_netstat_"))


async def test_netstat_fields_option(tmp_path):
    emitter = await collect_once(network(tmp_path, netstat_fields="^Tcp_(MaxConn|InSegs)$"))
    got = {s.name: s.value for s in emitter.samples if s.name.startswith("node_netstat_")}
    snmp = (NET / "snmp").read_text().splitlines()
    tcp = next(i for i, line in enumerate(snmp) if line.startswith("Tcp:"))
    tcp_fields = dict(zip(snmp[tcp].split()[1:], map(int, snmp[tcp + 1].split()[1:]), strict=True))
    assert got == {"node_netstat_Tcp_MaxConn": tcp_fields["MaxConn"], "node_netstat_Tcp_InSegs": tcp_fields["InSegs"]}
    assert tcp_fields["MaxConn"] == -1  # negative values survive


async def test_ipv6_disabled_other_metrics_still_emitted(tmp_path):
    root = copy_tree(tmp_path)
    (root / "proc" / "net" / "snmp6").unlink()
    (root / "proc" / "net" / "sockstat6").unlink()
    emitter = await collect_once(network(tmp_path, proc=root / "proc", sys=root / "sys"))
    assert emitter.errors == []
    names = {s.name for s in emitter.samples}
    netstat = {s.name: s.value for s in emitter.samples if s.name.startswith("node_netstat_")}
    assert netstat == netstat_expected(snmp6=False)
    assert not any("6_" in name for name in netstat)
    assert "node_sockstat_TCP_inuse" in names and "node_sockstat_TCP6_inuse" not in names
    assert "node_network_receive_bytes_total" in names


async def test_netstat_mismatched_line_is_reported_and_skipped(tmp_path):
    root = copy_tree(tmp_path)
    snmp = root / "proc" / "net" / "snmp"
    lines = snmp.read_text().splitlines()
    udp = next(i for i, line in enumerate(lines) if line.startswith("Udp:"))
    lines[udp + 1] = lines[udp + 1].rsplit(" ", 1)[0]  # one value short
    snmp.write_text("\n".join(lines) + "\n")
    emitter = await collect_once(network(tmp_path, proc=root / "proc", sys=root / "sys"))
    assert emitter.errors == ["field count mismatch in snmp: Udp:"]
    got = {s.name for s in emitter.samples}
    assert "node_netstat_Udp_InDatagrams" not in got
    assert "node_netstat_Tcp_InSegs" in got and "node_netstat_UdpLite_InErrors" in got


async def test_missing_proc_net_dev_is_an_error_others_still_emitted(tmp_path):
    root = copy_tree(tmp_path)
    (root / "proc" / "net" / "dev").unlink()
    emitter = await collect_once(network(tmp_path, proc=root / "proc", sys=root / "sys"))
    assert len(emitter.errors) == 1 and "dev" in emitter.errors[0]
    names = {s.name for s in emitter.samples}
    assert "node_netstat_Tcp_InSegs" in names and "node_sockstat_sockets_used" in names
    assert not any(name.startswith("node_network_") for name in names)


def sockstat(name: str) -> dict[str, dict[str, int]]:
    out = {}
    for line in (NET / name).read_text().splitlines():
        proto, *rest = line.split()
        out[proto.rstrip(":")] = {k: int(v) for k, v in zip(rest[::2], rest[1::2], strict=True)}
    return out


async def test_sockstat(tmp_path):
    emitter = await collect_once(network(tmp_path))
    got = {s.name: s.value for s in emitter.samples if s.name.startswith("node_sockstat_")}
    v4, v6 = sockstat("sockstat"), sockstat("sockstat6")
    page = os.sysconf("SC_PAGESIZE")
    expected = {"node_sockstat_sockets_used": v4.pop("sockets")["used"]}
    for proto, fields in (v4 | v6).items():
        for field, value in fields.items():
            expected[f"node_sockstat_{proto}_{field}"] = value
            if field == "mem":
                expected[f"node_sockstat_{proto}_mem_bytes"] = value * page
    assert got == expected
    assert got["node_sockstat_TCP_mem_bytes"] == v4["TCP"]["mem"] * page
    assert "node_sockstat_FRAG_memory" in got and "node_sockstat_FRAG_memory_bytes" not in got  # already bytes
    assert all(s.kind == "gauge" for s in emitter.samples if s.name.startswith("node_sockstat_"))


@pytest.mark.parametrize("key", ["interfaces_include", "interfaces_exclude", "netstat_fields"])
def test_invalid_regex_is_a_config_error(key):
    with pytest.raises(msgspec.ValidationError, match=key):
        msgspec.convert({key: "[unclosed"}, Config)


async def test_malformed_lines_are_reported_and_sockets_used_only_from_ipv4(tmp_path):
    root = copy_tree(tmp_path)
    net = root / "proc" / "net"
    with (net / "dev").open("a") as f:
        f.write("  bad0: 1 2 x 4 5 6 7 8 9 10 11 12 13 14 15 16\n  short0: 1 2 3\n")
    (net / "sockstat6").write_text("sockets: used 99\n" + (net / "sockstat6").read_text())
    emitter = await collect_once(network(tmp_path, proc=root / "proc", sys=root / "sys"))
    assert sorted(emitter.errors) == [
        "malformed line in net/dev: '  bad0: 1 2 x 4 5 6 7 8 9 10 11 12 13 14 15 16'",
        "malformed line in net/dev: '  short0: 1 2 3'",
    ]
    series = by_series(emitter.samples)
    assert {dict(labels)["device"] for name, labels in series if name.startswith("node_network_")} == set(
        proc_net_dev()
    )
    assert series[("node_sockstat_sockets_used", ())] == sockstat("sockstat")["sockets"]["used"]


async def test_readme_lists_every_emitted_metric(tmp_path):
    names = {s.name for s in (await collect_once(network(tmp_path))).samples}
    text = (Path(sys.modules[NetworkCollector.__module__].__file__).parent / "README.md").read_text()
    assert len(names) == 17 + len(netstat_expected()) + 20
    assert all(f"`{name}`" in text for name in names)


async def test_netdev_label_tuples_are_kept_between_runs(tmp_path):
    """Each interface's label tuple is the very object of the last run, so the engine's
    comparison of two runs (agent.model.same_series) answers by identity."""
    collector = network(tmp_path)
    first, second = RunEmitter(1), RunEmitter(2)
    await collector.collect(first)
    await collector.collect(second)
    await collector.close()
    netdev = [(a, b) for a, b in zip(first.samples, second.samples, strict=True) if a.labels]
    assert netdev and all(a.name == b.name and a.labels is b.labels for a, b in netdev)


def run_result(emitter: RunEmitter) -> tuple:
    return [(s.name, s.kind, s.labels, s.unit, s.value) for s in emitter.samples], sorted(emitter.errors)


@pytest.mark.parametrize(
    "change",
    [
        ("sockstat", "TCP: inuse", "TCP: extra 1 inuse"),  # a new field: the words moved
        ("sockstat", "mem 286", "mem x"),  # not a number
        ("sockstat6", "TCP6: inuse 1", "TCP6: inuse 1\nNEW6: inuse 9"),  # a new line: the words moved
        ("sockstat6", "memory 0\n", "memory 0\nNEW6: inuse 9\n"),  # a new last line: more tokens
        ("sockstat", "inuse 2 orphan 0 tw 21", "tw 2 orphan 0 inuse 21"),  # as many tokens, words swapped
        ("sockstat", "UDP: inuse 0 mem 0", "UDP: inuse 0\nmem 0"),  # the same tokens on more lines
        ("snmp6", "Ip6InReceives", "Ip6InReceivez"),  # a renamed field: same token count
        ("snmp6", "Ip6InOctets                     \t", "Ip6InOctets                     \t-"),
        ("netstat", "TcpExt:", "TcpExt: "),  # the header line is not the one cached
        ("sockstat", "UDP: inuse", "UDP:  inuse"),  # the same tokens: the layout still holds
    ],
)
async def test_a_file_laid_out_otherwise_than_at_the_last_read_is_parsed_anew(tmp_path, change):
    """A second run keeps each file's layout from the first; after a file changed, what it exports and
    reports is what a collector reading it for the first time exports and reports."""
    root = copy_tree(tmp_path)
    name, old, new = change
    path = root / "proc" / "net" / name
    assert old in path.read_text()
    kept = network(tmp_path, proc=root / "proc", sys=root / "sys")
    first = RunEmitter(1)
    await kept.collect(first)
    path.write_text(path.read_text().replace(old, new, 1))
    again = RunEmitter(1)
    await kept.collect(again)
    await kept.close()
    fresh = await collect_once(network(tmp_path, proc=root / "proc", sys=root / "sys"), 1)
    assert run_result(again) == run_result(fresh)
