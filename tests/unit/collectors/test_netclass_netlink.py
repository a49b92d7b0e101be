"""netclass from one rtnetlink dump: the parser on a captured kernel answer, the series it makes, the fallback
to sysfs, and the same series as the sysfs way on a real kernel (a network namespace of its own)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from agent.emitter import RunEmitter
from collectors.netclass import rtnetlink as nl
from collectors.netclass import sysnet
from collectors.netclass.links import NetlinkNetclass
from collectors.netclass.netclass import Config, NetclassCollector
from tests.support import FIXTURES, by_series, collector_context

# RTM_GETLINK answer (sequence 7) captured in a fresh network namespace: lo up; veth0 up (mtu 9000, alias
# "uplink to tor-a", address 0e:00:00:00:00:01) whose peer veth1 (0e:00:00:00:00:02) is down, so veth0 has no
# carrier and is "lowerlayerdown".
DUMP = (FIXTURES / "netclass" / "rtnetlink" / "getlink-dump.bin").read_bytes()
REPO = Path(__file__).parents[3]


def links_of(data: bytes = DUMP, seq: int = 7) -> dict[str, nl.Link]:
    links, done = nl.parse_dump([data], seq)
    assert done
    return {link.name: link for link in links}


def test_the_captured_dump_parses_into_the_kernel_fields():
    links = links_of()
    assert set(links) == {"lo", "veth0", "veth1"}
    veth0, veth1, lo = links["veth0"], links["veth1"], links["lo"]
    assert (veth0.index, veth0.type, veth0.flags & nl.IFF_UP) == (3, 1, nl.IFF_UP)
    assert veth0.attrs[nl.IFLA_MTU] == 9000 and veth0.attrs[nl.IFLA_IFALIAS] == "uplink to tor-a"
    assert nl.OPERSTATES[veth0.attrs[nl.IFLA_OPERSTATE]] == "lowerlayerdown"
    assert veth0.attrs[nl.IFLA_CARRIER] == 0 and veth0.attrs[nl.IFLA_LINK] == 2  # its peer
    assert nl.mac(veth0.attrs[nl.IFLA_ADDRESS]) == "0e:00:00:00:00:01"
    assert nl.mac(veth0.attrs[nl.IFLA_BROADCAST]) == "ff:ff:ff:ff:ff:ff"
    assert veth1.flags & nl.IFF_UP == 0 and nl.OPERSTATES[veth1.attrs[nl.IFLA_OPERSTATE]] == "down"
    assert veth1.attrs[nl.IFLA_CARRIER_CHANGES] == 1 and veth1.attrs[nl.IFLA_CARRIER_DOWN_COUNT] == 1
    assert (lo.index, lo.type, lo.attrs[nl.IFLA_MTU]) == (1, 772, 65536)
    assert nl.IFLA_LINK not in lo.attrs and nl.IFLA_IFALIAS not in lo.attrs  # own link, no alias


def test_an_answer_split_over_reads_and_other_sequences():
    messages, offset = [], 0
    while offset < len(DUMP):
        length = struct.unpack_from("=I", DUMP, offset)[0]
        messages.append(DUMP[offset : offset + length])
        offset += (length + 3) & ~3
    first, done = nl.parse_dump(messages[:2], 7)
    assert [link.name for link in first] == ["lo", "veth1"] and not done
    assert nl.parse_dump(messages, 7)[0] == nl.parse_dump([DUMP], 7)[0]
    assert nl.parse_dump([DUMP], 8) == ([], False)  # another request's answer is not this one


def parsed(data: bytes, layouts: dict | None = None) -> list | str:
    try:
        return nl.parse_dump([data], 7, layouts)[0]
    except nl.NetlinkError as exc:
        return f"NetlinkError: {exc}"


def test_a_message_laid_out_as_last_time_reads_as_walking_it_would():
    # The layouts kept from one dump read the next one's messages with two structs when every attribute
    # header is where it was. Every byte of the dump altered in turn (a value, a length, a type, a
    # header): the result with last dump's layouts is the walk's, values and errors alike.
    layouts: dict = {}
    assert parsed(DUMP, layouts) == parsed(DUMP) and len(layouts) == 3
    assert parsed(DUMP, layouts) == parsed(DUMP)  # now read through the layouts
    for position in range(len(DUMP)):
        for change in (1, 0x80):
            altered = bytearray(DUMP)
            altered[position] ^= change
            altered = bytes(altered)
            assert parsed(altered, dict(layouts)) == parsed(altered), (position, change)


def test_truncated_or_refused_answers_raise():
    with pytest.raises(nl.NetlinkError, match="truncated"):
        nl.parse_dump([DUMP[:100]], 7)
    length = struct.unpack_from("=I", DUMP, 0)[0]
    broken = bytearray(DUMP[:length])
    struct.pack_into("=H", broken, 32, 0xFFF0)  # the first attribute claims more bytes than the message has
    with pytest.raises(nl.NetlinkError, match="malformed attribute"):
        nl.parse_dump([bytes(broken)], 7)
    error = struct.pack("=IHHII", 36, nl.NLMSG_ERROR, 0, 7, 0) + struct.pack("=i", -errno.EPERM) + bytes(16)
    with pytest.raises(nl.NetlinkError) as refused:
        nl.parse_dump([error], 7)
    assert refused.value.errno == errno.EPERM


def fake_sys(tmp_path: Path, **per_device: dict[str, str]) -> Path:
    """A /sys/class/net with only what the netlink way still reads from sysfs."""
    for device, attrs in per_device.items():
        folder = tmp_path / "sys" / "class" / "net" / device
        folder.mkdir(parents=True)
        for name, value in attrs.items():
            (folder / name).write_text(value + "\n")
    return tmp_path / "sys"


def run(part, emitter: RunEmitter | None = None) -> tuple[RunEmitter, list[str]]:
    emitter = emitter or RunEmitter(0)
    errors: list[str] = []
    part(emitter, errors.append)
    return emitter, errors


def test_series_from_the_dump_and_the_few_sysfs_attributes(tmp_path):
    common = {"addr_assign_type": "3", "dev_id": "0x0", "name_assign_type": "3"}
    sys_root = fake_sys(
        tmp_path,
        veth0={**common, "flags": "0x1003", "speed": "10000", "duplex": "full", "ifindex": "3"},
        veth1={**common, "flags": "0x1002", "ifindex": "2"},  # down: no speed, duplex (EINVAL on a real kernel)
        lo={"addr_assign_type": "0", "dev_id": "0x0", "flags": "0x9", "ifindex": "1"},  # no name_assign_type
    )
    part = NetlinkNetclass(
        str(sys_root), re.compile("^$"), False, logging.getLogger("t"), dump=lambda: list(links_of().values())
    )
    emitter, errors = run(part)
    assert errors == []
    series = by_series(emitter.samples)

    def dev(name: str) -> tuple[tuple[str, str], ...]:
        return (("device", name),)

    assert series[("node_network_mtu_bytes", dev("veth0"))] == 9000
    assert series[("node_network_speed_bytes", dev("veth0"))] == 10_000 * 125_000
    assert series[("node_network_flags", dev("veth0"))] == 0x1003 and series[("node_network_flags", dev("lo"))] == 9
    assert series[("node_network_carrier", dev("veth0"))] == 0 and series[("node_network_dormant", dev("veth0"))] == 0
    assert ("node_network_carrier", dev("veth1")) not in series  # down: sysfs answers EINVAL, no series
    assert ("node_network_dormant", dev("veth1")) not in series
    assert (
        series[("node_network_iface_link", dev("veth0"))] == 2 and series[("node_network_iface_link", dev("lo"))] == 1
    )
    assert series[("node_network_up", dev("veth0"))] == 0  # lowerlayerdown
    assert series[("node_network_protocol_type", dev("lo"))] == 772
    assert series[("node_network_carrier_down_changes_total", dev("veth1"))] == 1
    assert ("node_network_name_assign_type", dev("lo")) not in series
    info = {dict(s.labels)["device"]: dict(s.labels) for s in emitter.samples if s.name == "node_network_info"}
    assert info["veth0"] == {
        "address": "0e:00:00:00:00:01",
        "broadcast": "ff:ff:ff:ff:ff:ff",
        "device": "veth0",
        "duplex": "full",
        "ifalias": "uplink to tor-a",
        "operstate": "lowerlayerdown",
    }
    assert info["veth1"]["duplex"] == "" and info["lo"]["address"] == "00:00:00:00:00:00"
    kinds = {s.name: s.kind for s in emitter.samples}
    assert kinds["node_network_carrier_changes_total"] == "counter" and kinds["node_network_mtu_bytes"] == "gauge"
    part.close()


def test_a_refused_socket_means_sysfs_for_good_said_once(tmp_path, caplog):
    calls = []

    def refused() -> list[nl.Link]:
        calls.append(1)
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    fixture = FIXTURES / "netclass" / "sys"
    part = NetlinkNetclass(str(fixture), re.compile("^$"), False, logging.getLogger("t.netclass"), dump=refused)
    with caplog.at_level(logging.INFO, "t.netclass"):
        first, errors = run(part)
        second, errors2 = run(part)
    expected, _ = run(lambda emit, report: sysnet.netclass(str(fixture), re.compile("^$"), False, emit, report))
    assert errors == errors2 == [] and len(calls) == 1
    assert by_series(first.samples) == by_series(second.samples) == by_series(expected.samples)
    assert [r.message for r in caplog.records if "rtnetlink refused" in r.message] != []
    assert len([r for r in caplog.records if "rtnetlink" in r.message]) == 1


def test_a_failed_dump_is_reported_and_that_run_reads_sysfs(tmp_path):
    answers = [OSError(errno.ENOBUFS, "No buffer space available")]

    def flaky() -> list[nl.Link]:
        if answers:
            raise answers.pop()
        return list(links_of().values())

    sys_root = fake_sys(tmp_path, lo={"ifindex": "1", "mtu": "1500"}, veth1={"ifindex": "2"}, veth0={"ifindex": "3"})
    part = NetlinkNetclass(str(sys_root), re.compile("^$"), False, logging.getLogger("t"), dump=flaky)
    emitter, errors = run(part)
    assert len(errors) == 1 and "rtnetlink dump failed" in errors[0]
    mtu = {dict(s.labels)["device"]: s.value for s in emitter.samples if s.name == "node_network_mtu_bytes"}
    assert mtu == {"lo": 1500}  # from sysfs this run
    emitter, errors = run(part)  # the next run asks netlink again
    mtu = {dict(s.labels)["device"]: s.value for s in emitter.samples if s.name == "node_network_mtu_bytes"}
    assert errors == [] and mtu == {"lo": 65536, "veth0": 9000, "veth1": 1500}


def test_another_namespaces_sysfs_means_sysfs(tmp_path, caplog):
    # A container with its own network namespace and the host's /sys: the dump's interfaces are not those of
    # /sys/class/net. Each run reads sysfs; after three such runs netclass stops asking rtnetlink, said once.
    fixture = FIXTURES / "netclass" / "sys"
    calls = []

    def dump() -> list[nl.Link]:
        calls.append(1)
        return list(links_of().values())

    part = NetlinkNetclass(str(fixture), re.compile("^$"), False, logging.getLogger("t.ns"), dump=dump)
    expected, _ = run(lambda emit, report: sysnet.netclass(str(fixture), re.compile("^$"), False, emit, report))
    with caplog.at_level(logging.INFO, "t.ns"):
        for _ in range(5):
            emitter, errors = run(part)
            assert errors == [] and by_series(emitter.samples) == by_series(expected.samples)
    assert len(calls) == 3
    assert len([r for r in caplog.records if "list different interfaces" in r.message]) == 1


def test_netlink_only_for_the_real_sys(tmp_path):
    def collector(sys_root: Path, **options) -> NetclassCollector:
        context = collector_context(tmp_path, proc_root=FIXTURES / "netclass" / "proc", sys_root=sys_root)
        return NetclassCollector(Config(**options), context)

    assert isinstance(collector(Path("/sys")).__dict__["_links"], NetlinkNetclass)
    assert collector(FIXTURES / "netclass" / "sys")._links is None  # a fixture tree: another namespace's view
    assert collector(Path("/sys"), netclass_netlink=False)._links is None


# Run in a network and mount namespace of its own (root, iproute2): the same series from both ways, through a
# change of MTU, alias, promiscuity (a sysfs flag read through a kept descriptor), carrier and a removed device.
_SAME_BOTH_WAYS = r"""
import json, logging, re, subprocess, sys
from agent.emitter import RunEmitter
from collectors.netclass import sysnet
from collectors.netclass.links import NetlinkNetclass

def ip(*args):
    subprocess.run(["ip", *args], check=True)

def series(part):
    emitter, errors = RunEmitter(0), []
    part(emitter, errors.append)
    return sorted((s.name, list(s.labels), s.value, s.kind, s.unit) for s in emitter.samples), errors

subprocess.run(["mount", "-t", "sysfs", "none", "/sys"], check=True)
ip("link", "set", "lo", "up")
ip("link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
ip("link", "set", "veth0", "mtu", "9000")
ip("link", "set", "veth0", "alias", "uplink to tor-a")
ip("link", "set", "veth0", "up")
ignored = re.compile("^$")
netlink = NetlinkNetclass("/sys", ignored, False, logging.getLogger("t"))
sysfs = lambda emit, report: sysnet.netclass("/sys", ignored, False, emit, report)
steps = [
    [],
    [["link", "set", "veth1", "up"], ["link", "set", "veth0", "mtu", "1280"],
     ["link", "set", "veth1", "promisc", "on"]],
    [["link", "set", "veth0", "alias", ""], ["link", "set", "veth1", "down"], ["link", "set", "lo", "down"]],
    [["link", "del", "veth0"], ["link", "add", "veth0", "type", "veth", "peer", "name", "veth2"]],
]
report = []
for changes in steps:
    for change in changes:
        ip(*change)
    ours, sysfs_series = series(netlink), series(sysfs)
    report.append({"same": ours == sysfs_series, "ours": ours, "sysfs": sysfs_series})
print(json.dumps(report))
"""


def test_same_series_as_sysfs_on_a_real_kernel(tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and iproute2 for a network namespace of its own")
    done = subprocess.run(
        ["unshare", "--net", "--mount", sys.executable, "-c", _SAME_BOTH_WAYS],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    if done.returncode and "Operation not permitted" in done.stderr:
        pytest.skip(f"no namespaces here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    steps = json.loads(done.stdout)
    for step in steps:
        assert step["ours"][1] == step["sysfs"][1] == []  # no errors either way
        assert step["same"], (step["ours"][0], step["sysfs"][0])
    values = [
        {(name, tuple(map(tuple, labels))): value for name, labels, value, *_ in step["ours"][0]} for step in steps
    ]
    veth0 = (("device", "veth0"),)
    assert values[0][("node_network_mtu_bytes", veth0)] == 9000 and values[1][("node_network_mtu_bytes", veth0)] == 1280
    assert values[0][("node_network_carrier", veth0)] == 0 and values[1][("node_network_carrier", veth0)] == 1
    flags = [int(step[("node_network_flags", (("device", "veth1"),))]) for step in values[:2]]
    assert not flags[0] & 0x100 and flags[1] & 0x100  # IFF_PROMISC, read again through the kept descriptor
    assert ("node_network_carrier", (("device", "lo"),)) not in values[2]  # lo down: no carrier, as sysfs
    assert ("node_network_up", (("device", "veth1"),)) not in values[3]  # removed with its peer
    assert ("node_network_up", (("device", "veth2"),)) in values[3]


async def test_close_releases_the_socket_and_descriptors_once(tmp_path):
    if not os.path.isdir("/sys/class/net"):
        pytest.skip("no sysfs here")
    context = collector_context(tmp_path, proc_root="/proc", sys_root="/sys")
    collector = NetclassCollector(Config(), context)
    before = set(os.listdir("/proc/self/fd"))
    emitter = RunEmitter(0)
    await collector.collect(emitter)
    assert emitter.errors == [] and len(set(os.listdir("/proc/self/fd")) - before) > 0  # kept for the next run
    await collector.close()
    assert set(os.listdir("/proc/self/fd")) - before == set()
    await collector.close()  # idempotent
    emitter = RunEmitter(0)
    await collector.collect(emitter)  # a run after close opens again
    assert emitter.errors == [] and any(s.name == "node_network_up" for s in emitter.samples)
    await collector.close()


def test_label_tuples_are_kept_between_runs(tmp_path):
    """A device's label tuples (``device`` and the info series') are the very objects of the
    last run, so the engine's comparison of two runs (agent.model.same_series) answers by identity."""
    common = {"addr_assign_type": "3", "dev_id": "0x0", "name_assign_type": "3", "flags": "0x1003"}
    sys_root = fake_sys(
        tmp_path, veth0={**common, "ifindex": "3"}, veth1={**common, "ifindex": "2"}, lo={**common, "ifindex": "1"}
    )
    part = NetlinkNetclass(
        str(sys_root), re.compile("^$"), False, logging.getLogger("t"), dump=lambda: list(links_of().values())
    )
    (first, errors), (second, _) = run(part), run(part)
    assert errors == []
    pairs = list(zip(first.samples, second.samples, strict=True))
    assert any(a.name == "node_network_info" for a, _ in pairs)
    assert [a.name for a, b in pairs if a.labels is not b.labels] == []
    assert all(a.labels == b.labels and a.labels is b.labels for a, b in pairs)
