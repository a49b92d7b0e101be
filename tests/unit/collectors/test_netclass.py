"""netclass collector on fixture trees: netclass, softnet, arp, conntrack, udp_queues, tcpstat, bonding, ipvs,
infiniband, fibrechannel. The trees are copies of a real host's /sys/class/net and /proc/net, plus bonding,
InfiniBand (mlx4), Fibre Channel (Emulex) and IPVS laid out as those kernels lay them out."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

import pytest

from agent.config import convert
from agent.emitter import RunEmitter
from collectors.netclass import procnet, sysnet
from collectors.netclass.netclass import Config, NetclassCollector
from tests.support import FIXTURES, by_series, collect_once, collector_context

FIX = FIXTURES / "netclass"
PARTS = ("netclass", "softnet", "arp", "conntrack", "udp_queues", "tcpstat", "bonding", "ipvs", "infiniband",
         "fibrechannel")  # fmt: skip


def netclass(tmp_path: Path, proc: Path = FIX / "proc", sys: Path = FIX / "sys", **options) -> NetclassCollector:
    context = collector_context(tmp_path, proc_root=proc, sys_root=sys)
    return NetclassCollector(convert(options, Config), context)


def only(part: str, **options) -> dict:
    return {name: name == part for name in PARTS} | options


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "fixture"
    shutil.copytree(FIX, root, symlinks=True)
    return root


def dev(name: str) -> tuple[tuple[str, str], ...]:
    return (("device", name),)


async def test_every_part_on_the_fixture_without_errors(tmp_path):
    emitter = await collect_once(netclass(tmp_path, tcpstat=True))
    assert emitter.errors == []
    # label tuples are canonical (sorted, names unique): equality and series identity depend on it
    assert all(list(s.labels) == sorted(dict(s.labels).items()) for s in emitter.samples)
    prefixes = {s.name.split("_")[1] for s in emitter.samples}
    assert prefixes == {"network", "softnet", "arp", "nf", "udp", "tcp", "bonding", "ipvs", "infiniband",
                        "fibrechannel"}  # fmt: skip
    readme = (Path(__file__).parents[3] / "collectors" / "netclass" / "README.md").read_text()
    listed = set(re.findall(r"`(node_[a-zA-Z0-9_]+)`", readme))
    assert {s.name for s in emitter.samples} <= listed


async def test_netclass_attributes_as_node_exporter_exports_them(tmp_path):
    emitter = await collect_once(netclass(tmp_path, **only("netclass")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    kinds = {s.name: s.kind for s in emitter.samples}
    devices = {dict(labels)["device"] for _, labels in series}
    assert devices == {"bond0", "bond1", "eth0", "eth1", "eth2", "eth3", "ifb0", "lo"}  # bonding_masters is a file
    assert series[("node_network_speed_bytes", dev("eth1"))] == 10_000 * 125_000
    assert series[("node_network_speed_bytes", dev("eth0"))] == -125_000  # speed -1, as node_exporter 1.5
    assert series[("node_network_flags", dev("bond0"))] == 0x1403  # "0x1403" read as Go's ParseInt(s, 0)
    assert series[("node_network_mtu_bytes", dev("bond0"))] == 9000
    assert series[("node_network_up", dev("eth2"))] == 0 and series[("node_network_up", dev("eth1"))] == 1
    assert series[("node_network_carrier", dev("eth2"))] == 0
    assert series[("node_network_protocol_type", dev("lo"))] == 772
    assert series[("node_network_iface_id", dev("eth1"))] == 5
    assert series[("node_network_carrier_changes_total", dev("eth0"))] == 2
    assert kinds["node_network_carrier_changes_total"] == "counter" and kinds["node_network_mtu_bytes"] == "gauge"
    info = {
        ("address", "0c:c4:7a:1e:22:10"),
        ("broadcast", "ff:ff:ff:ff:ff:ff"),
        ("device", "bond0"),
        ("duplex", "full"),
        ("ifalias", "uplink to tor-a"),
        ("operstate", "up"),
    }
    assert series[("node_network_info", tuple(sorted(info)))] == 1
    # ifb0 is down: the real host's sysfs gave EINVAL for carrier, speed, duplex, dormant, name_assign_type,
    # so the copy lacks them; those series are absent and duplex is an empty label, as in node_exporter
    ifb0 = {name for name, labels in series if labels == dev("ifb0")}
    assert not ifb0 & {"node_network_carrier", "node_network_speed_bytes", "node_network_dormant"}
    assert ("node_network_mtu_bytes" in ifb0) and ("node_network_up" in ifb0)
    ifb0_info = next(
        dict(labels) for name, labels in series if name == "node_network_info" and ("device", "ifb0") in labels
    )
    assert ifb0_info["duplex"] == "" and ifb0_info["operstate"] == "down"


async def test_invalid_speed_can_be_left_out_and_devices_ignored(tmp_path):
    emitter = await collect_once(
        netclass(tmp_path, **only("netclass", netclass_ignore_invalid_speed=True, netclass_ignored_devices="^(lo|ifb)"))
    )
    series = by_series(emitter.samples)
    assert ("node_network_speed_bytes", dev("eth0")) not in series
    assert ("node_network_speed_bytes", dev("eth2")) not in series
    assert series[("node_network_speed_bytes", dev("eth3"))] == 125_000_000
    assert not any(dict(labels).get("device", "").startswith(("lo", "ifb")) for _, labels in series)


async def test_einval_from_a_down_link_is_silent_but_other_read_errors_are_reported(tmp_path, monkeypatch):
    def flaky(real):
        def read(path: str):
            if path.endswith("/eth1/carrier"):
                raise OSError(errno.EINVAL, "Invalid argument", path)
            if path.endswith("/eth1/mtu"):
                raise OSError(errno.EIO, "Input/output error", path)
            return real(path)

        return read

    # text attributes are read decoded, numbers as bytes
    monkeypatch.setattr(sysnet, "read_attr", flaky(sysnet.read_attr))
    monkeypatch.setattr(sysnet, "read_raw", flaky(sysnet.read_raw))
    emitter = await collect_once(netclass(tmp_path, **only("netclass")))
    series = by_series(emitter.samples)
    assert ("node_network_carrier", dev("eth1")) not in series
    assert ("node_network_mtu_bytes", dev("eth1")) not in series
    assert series[("node_network_speed_bytes", dev("eth1"))] == 1_250_000_000  # the rest of eth1 is there
    assert len(emitter.errors) == 1 and "eth1/mtu" in emitter.errors[0] and emitter.errors[0].startswith("netclass:")


async def test_odd_driver_values_leave_only_that_series_out(tmp_path):
    root = copy_tree(tmp_path)
    (root / "sys/class/net/eth1/mtu").write_text("lots\n")
    (root / "sys/class/net/eth1/speed").write_text("\n")
    emitter = await collect_once(netclass(tmp_path, proc=root / "proc", sys=root / "sys", **only("netclass")))
    series = by_series(emitter.samples)
    assert ("node_network_mtu_bytes", dev("eth1")) not in series
    assert ("node_network_speed_bytes", dev("eth1")) not in series
    assert series[("node_network_iface_id", dev("eth1"))] == 5
    assert series[("node_network_mtu_bytes", dev("eth2"))] == 9000
    assert len(emitter.errors) == 2 and all("not an integer" in e for e in emitter.errors)


async def test_bonding_counts_slaves_and_active_ones_in_both_sysfs_layouts(tmp_path):
    emitter = await collect_once(netclass(tmp_path, **only("bonding")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    assert series == {
        ("node_bonding_slaves", (("master", "bond0"),)): 2,
        ("node_bonding_active", (("master", "bond0"),)): 1,  # eth2's mii_status is down
        ("node_bonding_slaves", (("master", "bond1"),)): 1,  # slave_eth3: the pre-4.x layout
        ("node_bonding_active", (("master", "bond1"),)): 1,
    }


async def test_bonding_master_with_a_vanished_slave_is_reported_and_the_other_kept(tmp_path):
    root = copy_tree(tmp_path)
    (root / "sys/class/net/bond0/lower_eth2").unlink()
    emitter = await collect_once(netclass(tmp_path, proc=root / "proc", sys=root / "sys", **only("bonding")))
    assert {dict(s.labels)["master"] for s in emitter.samples} == {"bond1"}
    assert len(emitter.errors) == 1 and "bond0" in emitter.errors[0]


async def test_softnet_arp_conntrack_udp_values(tmp_path):
    emitter = await collect_once(netclass(tmp_path, **only("softnet", arp=True, conntrack=True, udp_queues=True)))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    cpu0 = (("cpu", "0"),)
    assert series[("node_softnet_processed_total", cpu0)] == 0x1E240
    assert series[("node_softnet_dropped_total", cpu0)] == 3
    assert series[("node_softnet_times_squeezed_total", cpu0)] == 11
    assert series[("node_softnet_times_squeezed_total", (("cpu", "1"),))] == 1
    assert series[("node_arp_entries", dev("eth0"))] == 2 and series[("node_arp_entries", dev("bond0"))] == 1
    assert series[("node_nf_conntrack_entries", ())] == 42
    assert series[("node_nf_conntrack_entries_limit", ())] == 262144
    # two CPU rows: column i holds (cpu + 1) * (i + 1) * 17, summed over the two rows = 3 * (i + 1) * 17
    assert series[("node_nf_conntrack_stat_found", ())] == 3 * 3 * 17
    assert series[("node_nf_conntrack_stat_search_restart", ())] == 3 * 17 * 17
    assert series[("node_udp_queues", (("ip", "v4"), ("queue", "tx")))] == 0x100
    assert series[("node_udp_queues", (("ip", "v4"), ("queue", "rx")))] == 0xA00
    assert series[("node_udp_queues", (("ip", "v6"), ("queue", "tx")))] == 0x40
    assert series[("node_udp_queues", (("ip", "v6"), ("queue", "rx")))] == 2
    kinds = {s.name: s.kind for s in emitter.samples}
    assert kinds["node_softnet_processed_total"] == "counter" and kinds["node_nf_conntrack_stat_found"] == "gauge"


async def test_arp_device_filters(tmp_path):
    emitter = await collect_once(netclass(tmp_path, **only("arp", arp_device_exclude="^bond")))
    assert {dict(s.labels)["device"] for s in emitter.samples} == {"eth0"}
    emitter = await collect_once(netclass(tmp_path, **only("arp", arp_device_include="^bond")))
    assert {dict(s.labels)["device"] for s in emitter.samples} == {"bond0"}
    with pytest.raises(ValueError, match="mutually exclusive"):
        Config(arp_device_include="a", arp_device_exclude="b")


async def test_absent_modules_and_ipv6_export_nothing_and_report_nothing(tmp_path):
    root = copy_tree(tmp_path)
    for gone in ("proc/sys/net/netfilter", "proc/net/stat", "proc/net/ip_vs", "proc/net/ip_vs_stats",
                 "sys/class/infiniband", "sys/class/fc_host"):  # fmt: skip
        shutil.rmtree(root / gone) if (root / gone).is_dir() else (root / gone).unlink()
    for name in ("udp6", "tcp6"):
        (root / "proc/net" / name).unlink()
    (root / "sys/class/net/bonding_masters").unlink()
    emitter = await collect_once(netclass(tmp_path, proc=root / "proc", sys=root / "sys", tcpstat=True))
    assert emitter.errors == []
    names = {s.name for s in emitter.samples}
    assert not {
        n for n in names if n.startswith(("node_nf_", "node_ipvs", "node_infiniband", "node_fibre", "node_bond"))
    }
    assert {dict(s.labels)["ip"] for s in emitter.samples if s.name == "node_udp_queues"} == {"v4"}
    assert "node_tcp_connection_states" in names


async def test_malformed_proc_files_are_reported_per_part(tmp_path):
    root = copy_tree(tmp_path)
    net = root / "proc/net"
    (net / "softnet_stat").write_text(
        "zzzz 0 0 0 0 0 0 0 0\n" + (FIX / "proc/net/softnet_stat").read_text().splitlines()[1]
    )
    (net / "arp").write_text("IP address HW type\n")
    (net / "stat/nf_conntrack").write_text("entries found\n0000 0001\n")
    (net / "udp").write_text("header\n  0: 0100007F:0035 00000000:0000 07 0000:zz\n")
    emitter = await collect_once(netclass(tmp_path, proc=root / "proc", sys=root / "sys"))
    parts = sorted(str(e).split(":", 1)[0] for e in emitter.errors)
    assert parts == ["arp", "conntrack", "softnet", "udp_queues"]
    series = by_series(emitter.samples)
    assert ("node_softnet_processed_total", (("cpu", "0"),)) not in series
    assert series[("node_softnet_processed_total", (("cpu", "1"),))] == 0x7607  # the good row still counts
    assert series[("node_nf_conntrack_entries", ())] == 42  # count/max are read before the stat table
    assert ("node_nf_conntrack_stat_found", ()) not in series
    assert {dict(s.labels)["ip"] for s in emitter.samples if s.name == "node_udp_queues"} == {"v6"}
    assert any(s.name == "node_network_up" for s in emitter.samples)  # other parts unaffected


async def test_tcpstat_states_and_queues(tmp_path):
    emitter = await collect_once(netclass(tmp_path, **only("tcpstat")))
    assert emitter.errors == []
    states = {dict(s.labels)["state"]: s.value for s in emitter.samples}
    # 4 v4 listeners/time-waits from the real host plus one established (tx 0x20, rx 8) and one close_wait (rx 1);
    # the v6 table has one listener
    assert states == {
        "listen": 3,
        "time_wait": 2,
        "established": 1,
        "close_wait": 1,
        "rx_queued_bytes": 9,
        "tx_queued_bytes": 0x20,
    }
    default = await collect_once(netclass(tmp_path))
    assert not any(s.name == "node_tcp_connection_states" for s in default.samples)  # off, as in node_exporter 1.5


async def test_tcpstat_stops_above_its_socket_limit(tmp_path):
    emitter = await collect_once(netclass(tmp_path, **only("tcpstat", tcpstat_max_sockets=5)))
    assert emitter.samples == []
    assert len(emitter.errors) == 1 and "tcpstat_max_sockets = 5" in emitter.errors[0]
    emitter = await collect_once(netclass(tmp_path, **only("tcpstat", tcpstat_max_sockets=7)))
    assert emitter.errors == [] and emitter.samples


async def test_ipvs_totals_and_backends(tmp_path):
    emitter = await collect_once(netclass(tmp_path, **only("ipvs")))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    assert series[("node_ipvs_connections_total", ())] == 0x23765872
    assert series[("node_ipvs_incoming_bytes_total", ())] == 0x2B6F5A8D6D4
    v6 = (("local_address", "2620::1"), ("local_mark", ""), ("local_port", "80"), ("proto", "TCP"),
          ("remote_address", "2620::2"), ("remote_port", "80"))  # fmt: skip
    assert series[("node_ipvs_backend_weight", v6)] == 1
    fwm = (("local_address", ""), ("local_mark", "10001000"), ("local_port", "0"), ("proto", "FWM"),
           ("remote_address", "192.168.50.26"), ("remote_port", "3306"))  # fmt: skip
    assert series[("node_ipvs_backend_connections_inactive", fwm)] == 1
    summed = await collect_once(netclass(tmp_path, **only("ipvs", ipvs_backend_labels=["proto"])))
    series = by_series(summed.samples)
    assert series[("node_ipvs_backend_connections_active", (("proto", "TCP"),))] == 496
    assert series[("node_ipvs_backend_connections_inactive", (("proto", "FWM"),))] == 3
    with pytest.raises(ValueError, match="unknown"):
        Config(ipvs_backend_labels=["proto", "vip"])


async def test_infiniband_and_fibrechannel(tmp_path):
    emitter = await collect_once(netclass(tmp_path, **only("infiniband", fibrechannel=True)))
    assert emitter.errors == []
    series = by_series(emitter.samples)
    port1, port2 = (("device", "mlx4_0"), ("port", "1")), (("device", "mlx4_0"), ("port", "2"))
    assert series[("node_infiniband_rate_bytes_per_second", port1)] == 40 * 125_000_000
    assert (
        series[("node_infiniband_state_id", port1)] == 4 and series[("node_infiniband_physical_state_id", port2)] == 3
    )
    assert series[("node_infiniband_port_data_received_bytes_total", port1)] == 2221223609 * 4  # 4-byte words
    assert series[("node_infiniband_legacy_data_transmitted_bytes_total", port1)] == 26509113295 * 4
    assert ("node_infiniband_port_data_received_bytes_total", port2) not in series  # "N/A (no PMA)"
    info = dict(next(s.labels for s in emitter.samples if s.name == "node_infiniband_info"))
    assert info == {
        "board_id": "SM_1141000001000",
        "device": "mlx4_0",
        "firmware_version": "2.31.5050",
        "hca_type": "MT4099",
    }
    host = (("fc_host", "host0"),)
    assert ("node_fibrechannel_dumped_frames_total", host) not in series  # 0xffffffffffffffff: not kept
    assert series[("node_fibrechannel_nos_total", host)] == 13
    assert series[("node_fibrechannel_fcp_packet_aborts_total", host)] == 0  # the driver lacks it: 0
    fc = dict(next(s.labels for s in emitter.samples if s.name == "node_fibrechannel_info"))
    assert fc["port_name"] == "1000e0071bce95f2" and fc["fabric_name"] == "0" and "node_name" not in fc


async def test_a_broken_infiniband_port_is_reported_and_fibrechannel_still_exports(tmp_path):
    root = copy_tree(tmp_path)
    (root / "sys/class/infiniband/mlx4_0/ports/2/rate").write_text("fast\n")
    emitter = await collect_once(
        netclass(tmp_path, proc=root / "proc", sys=root / "sys", **only("infiniband", fibrechannel=True))
    )
    assert len(emitter.errors) == 1 and emitter.errors[0].startswith("infiniband:")
    assert not any(s.name.startswith("node_infiniband") for s in emitter.samples)
    assert any(s.name == "node_fibrechannel_info" for s in emitter.samples)


async def test_no_proc_or_sys_at_all_never_raises(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    emitter = await collect_once(netclass(tmp_path, proc=empty, sys=empty, tcpstat=True))
    assert emitter.samples == []
    assert sorted(str(e).split(":", 1)[0] for e in emitter.errors) == ["softnet", "tcpstat"]


async def test_lifetime_attributes_are_read_once_per_device_and_again_for_a_new_one(tmp_path):
    """type, dev_id and name_assign_type are fixed while a device lives: read again only when its
    ifindex changes (the device was removed and another took its name)."""
    root = copy_tree(tmp_path)
    eth1 = root / "sys/class/net/eth1"
    collector = netclass(tmp_path, proc=root / "proc", sys=root / "sys", **only("netclass"))
    await collector.start()

    async def read() -> dict:
        emitter = RunEmitter(0)
        await collector.collect(emitter)
        assert emitter.errors == []
        return by_series(emitter.samples)

    first = await read()
    assert first[("node_network_protocol_type", dev("eth1"))] == 1
    (eth1 / "type").write_text("772\n")
    (eth1 / "mtu").write_text("9000\n")
    second = await read()
    assert second[("node_network_protocol_type", dev("eth1"))] == 1, "the same device: not read again"
    assert second[("node_network_mtu_bytes", dev("eth1"))] == 9000, "other attributes are read every run"
    (eth1 / "ifindex").write_text("99\n")
    third = await read()
    assert third[("node_network_protocol_type", dev("eth1"))] == 772, "a new device under the old name"
    assert third[("node_network_iface_id", dev("eth1"))] == 99
    await collector.close()


@pytest.mark.parametrize("piece", [1, 7, 150, 4096])
def test_a_socket_table_read_in_pieces_that_cut_rows_sums_as_read_whole(piece):
    text = (FIX / "proc/net/tcp").read_bytes()
    whole = procnet.socket_table_sums([text], {})
    states: dict[int, int] = {}
    pieces = [text[i : i + piece] for i in range(0, len(text), piece)]
    assert procnet.socket_table_sums(pieces, states) == whole and sum(states.values()) == whole[2] > 0
    # no final newline: the last row still counts
    assert procnet.socket_table_sums([text.rstrip(b"\n")], {}) == whole
