"""Scenario files: strict validation (errors name the file and the field), shipped files."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from hashlab.run import guest
from hashlab.oracle import rss
from hashlab.errors import UsageError
from hashlab.paths import SCENARIOS_DIR
from hashlab.run.scenario import drop_pins, load_scenario, parse_scenario

BASE = {
    "name": "t",
    "guest": {"queues": 2, "key": "ms", "table": "equal", "flow_hash": {"tcp4": "sd"}},
    "datapath": {"queues": 2, "device": {"rss": "on", "hash": "on"}},
    "corpus": {"slices": ["ipv4-tcp"]},
    "expect": {"rss_negotiated": True, "hash_types": "ipv4,udpv4,ipv6,tcpv6,udpv6"},
}


def with_(path: str, value):
    d = copy.deepcopy(BASE)
    keys = path.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value
    return d


def test_base_is_valid():
    sc = parse_scenario(copy.deepcopy(BASE), "base.yaml")
    assert sc.guest_queues == 2
    assert sc.guest.key_bytes() == rss.MS_KEY
    assert sc.datapath.device == {"mq": "on", "rss": "on", "hash": "on"}
    assert sc.datapath.netdev == {"vhost": "off"}
    assert sc.expect.hash_types == rss.LINUX_GUEST_TYPES & ~rss.HashType.TCPv4
    assert sc.expect.arrival("truncated") is True


@pytest.mark.parametrize("path,value,field", [
    ("colour", "red", "colour"),
    ("guest.colour", "red", "guest.colour"),
    ("guest.queues", 3, "guest.queues"),  # more than the datapath has
    ("guest.queues", "2", "guest.queues"),
    ("guest.rxhash", "yes", "guest.rxhash"),
    ("guest.key", "zz", "guest.key"),
    ("guest.key", "6d5a", "guest.key"),  # not 40 bytes
    ("guest.table", "round-robin", "guest.table"),
    ("guest.table", [1, 1, 1], "guest.table"),  # more weights than queues
    ("guest.table", [0, 0], "guest.table"),
    ("guest.flow_hash", {"sctp4": "sd"}, "guest.flow_hash.sctp4"),
    ("guest.flow_hash", {"tcp4": "sdf"}, "guest.flow_hash.tcp4"),
    ("guest.kernel", "/nonexistent/bzImage", "guest.kernel"),
    ("guest.rss_key_quirk", "sometimes", "guest.rss_key_quirk"),
    ("datapath.queues", 0, "datapath.queues"),
    ("datapath.device", {"netdev": "x"}, "datapath.device.netdev"),
    ("datapath.device", {"mq": "off"}, "datapath.device.mq"),
    ("datapath.netdev", {"fds": "3"}, "datapath.netdev.fds"),
    ("datapath.behaviour", "kvm", "datapath.behaviour"),
    ("datapath.qemu", "/nonexistent/qemu", "datapath.qemu"),
    ("corpus.slices", ["ipv4-tcp", "ipv9"], "corpus.slices[1]"),
    ("corpus.slices", "some", "corpus.slices"),
    ("corpus.seed", -1, "corpus.seed"),
    ("expect.hash_types", "tcp5", "expect.hash_types"),
    ("expect.rss_negotiated", "true", "expect.rss_negotiated"),
    ("expect.arrive", {"truncated": "maybe"}, "expect.arrive.truncated"),
    ("expect.arrive", {"nonsense": True}, "expect.arrive.nonsense"),
    ("expect.known_divergences", {"no such frames": "x"}, "expect.known_divergences.no such frames"),
    ("expect.known_divergences", {"ipv4 IHL 4": ""}, "expect.known_divergences.ipv4 IHL 4"),
    ("timeouts.boot", 0, "timeouts.boot"),
    ("timeouts.reboot", 5, "timeouts.reboot"),
    ("name", "Bad Name", "name"),
])
def test_invalid_fields_name_file_and_field(path, value, field):
    with pytest.raises(UsageError) as ei:
        parse_scenario(with_(path, value), "scen.yaml")
    msg = str(ei.value)
    assert msg.startswith("scen.yaml: field '"), msg
    assert f"field '{field}'" in msg, msg


def test_missing_name_and_not_a_mapping():
    d = copy.deepcopy(BASE)
    del d["name"]
    with pytest.raises(UsageError, match=r"x.yaml: field 'name': required"):
        parse_scenario(d, "x.yaml")
    with pytest.raises(UsageError, match="must be a mapping"):
        parse_scenario(["name"], "x.yaml")


def test_load_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_scenario(bad)
    unknown = tmp_path / "u.yaml"
    unknown.write_text(yaml.safe_dump(with_("guest.queuez", 2)))
    with pytest.raises(UsageError, match=rf"{unknown}: field 'guest.queuez': unknown field"):
        load_scenario(unknown)


def test_yaml_on_off_booleans_become_option_strings():
    sc = parse_scenario(with_("datapath.device", {"rss": True, "hash": False}), "s.yaml")
    assert sc.datapath.device["hash"] == "off"


def test_key_forms():
    assert parse_scenario(with_("guest.key", "driver"), "s").guest.key_bytes() is None
    a = parse_scenario(with_("guest.key", "random:1"), "s").guest.key_bytes()
    b = parse_scenario(with_("guest.key", "random:2"), "s").guest.key_bytes()
    assert len(a) == 40 and a != b
    assert a == parse_scenario(with_("guest.key", "random:1"), "s").guest.key_bytes()
    colon = ":".join(f"{x:02x}" for x in rss.MS_KEY)
    assert parse_scenario(with_("guest.key", colon), "s").guest.key_bytes() == rss.MS_KEY


@pytest.mark.parametrize("path", sorted(SCENARIOS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(path: Path):
    sc = load_scenario(path)
    assert sc.name == path.stem
    # every shipped scenario says what it expects to negotiate: HASH_REPORT with hash=on,
    # except for stock QEMU with vhost (vhost_net offers it only to a VMM that asks)
    stock_vhost = sc.datapath.qemu == "stock" and sc.datapath.vhost
    assert sc.expect.hash_report_negotiated is (sc.datapath.device.get("hash") == "on"
                                                and not stock_vhost)
    assert sc.expect.rss_negotiated is sc.rss_on
    # the lab ones run patched or stock QEMU inside the lab VM, named so (the bench's too)
    assert (sc.where == "lab") == path.name.startswith(("lab-", "bench-"))
    if sc.datapath.qemu == "patched" and sc.where == "lab":
        assert sc.datapath.resolved_behaviour("progtype") == "spec"


def test_datapath_fields():
    sc = parse_scenario(with_("datapath", {"qemu": "patched", "vhost": "on", "where": "lab",
                                           "queues": 2}), "s.yaml")
    d = sc.datapath
    assert d.vhost and d.netdev["vhost"] == "on" and d.where == "lab"
    assert d.resolved_accel(in_lab=True) == "kvm" and d.resolved_accel(in_lab=False) == "tcg"
    assert d.resolved_behaviour("progtype") == "spec"
    assert d.resolved_behaviour("stock") == "qemu-software"
    assert sc.expect_vhost is True
    # "host" is the old spelling of stock; YAML's bare on/off are booleans
    assert parse_scenario(with_("datapath.qemu", "host"), "s").datapath.qemu == "stock"
    assert parse_scenario(with_("datapath.vhost", True), "s").datapath.vhost is True
    stock = parse_scenario(with_("datapath.qemu", "stock"), "s").datapath
    assert stock.resolved_behaviour("progtype") == "qemu-software"
    for path, value, field in [("datapath.vhost", "maybe", "datapath.vhost"),
                               ("datapath.where", "cloud", "datapath.where"),
                               ("datapath.accel", "hvf", "datapath.accel"),
                               ("expect.queues", "random", "expect.queues"),
                               ("expect.hashes", "some", "expect.hashes"),
                               ("expect.vhost", "yes", "expect.vhost")]:
        with pytest.raises(UsageError, match=f"field '{field}'"):
            parse_scenario(with_(path, value), "s.yaml")
    bad = with_("datapath", {"vhost": "on", "netdev": {"vhost": "off"}, "queues": 2})
    with pytest.raises(UsageError, match="contradicts"):
        parse_scenario(bad, "s.yaml")


def test_reconfigure_steps():
    d = with_("reconfigure", {"steps": [{"key": "random:2", "table": [1, 0]},
                                        {"flow_hash": {"udp6": "sd"}, "rxhash": False},
                                        {"queues": 1, "table": "equal:1"}]})
    sc = parse_scenario(d, "s.yaml")
    st = sc.reconfigure.steps
    assert len(st) == 3 and sc.reconfigure.during_traffic is True
    assert st[0].key_bytes() == parse_scenario(with_("guest.key", "random:2"), "s").guest.key_bytes()
    assert "table [1, 0]" in st[0].describe() and "rxhash off" in st[1].describe()
    for steps, field in [([], "reconfigure.steps"),
                         ([{"colour": 1}], "reconfigure.steps[0].colour"),
                         ([{"key": "driver"}], "reconfigure.steps[0].key"),
                         ([{"table": [1, 1, 1]}], "reconfigure.steps[0].table"),
                         ([{"queues": 3}], "reconfigure.steps[0].queues"),
                         ([{"flow_hash": {"tcp4": "x"}}], "reconfigure.steps[0].flow_hash.tcp4")]:
        with pytest.raises(UsageError, match=re.escape(f"field '{field}'")):
            parse_scenario(with_("reconfigure", {"steps": steps}), "s.yaml")


def test_drop_stale_pins(tmp_path):
    text = (
        "name: pins\n"
        "corpus: {slices: [malformed]}\n"
        "expect:\n"
        "  rss_negotiated: true\n"
        "  # why these are pinned\n"
        "  known_divergences:\n"
        '    "ipv4 IHL 4": "reason one"\n'
        '    "ipv4 tcp data offset 4": "reason two"\n'
        "timeouts: {boot: 100}\n")
    p = tmp_path / "pins.yaml"
    p.write_text(text)
    assert drop_pins(p, {"ipv4 IHL 4"}) == ["ipv4 IHL 4"]
    sc = load_scenario(p)
    assert list(sc.expect.known_divergences) == ["ipv4 tcp data offset 4"]
    assert "# why these are pinned" in p.read_text()
    assert drop_pins(p, {"ipv4 tcp data offset 4", "not pinned"}) == ["ipv4 tcp data offset 4"]
    left = p.read_text()
    assert "known_divergences" not in left and "why these are pinned" not in left
    sc = load_scenario(p)
    assert sc.expect.known_divergences == {} and sc.timeouts["boot"] == 100
    assert drop_pins(p, {"anything"}) == []


def test_guest_driver_models():
    # ethtool -n answers -> hash types (tcp4 sd = IPv4 without TCPv4)
    flows = {"tcp4": "sd", "udp4": "sdfn", "tcp6": "sdfn", "udp6": "none"}
    assert guest.hash_types_from_flows(flows) == int(
        rss.HashType.IPv4 | rss.HashType.UDPv4 | rss.HashType.IPv6 | rss.HashType.TCPv6)
    assert guest.parse_flow_hash("TCP over IPV4 flows use these fields for computing Hash "
                                 "flow key:\nIP SA\nIP DA\n") == "sd"
    # the misaligned-key window of Linux 6.12.y
    assert guest.rss_key_quirk("6.12.95+deb12-cloud-amd64") == "misaligned"
    assert guest.rss_key_quirk("6.12.117+deb12-cloud-amd64") == "off"
    assert guest.rss_key_quirk("6.12.90") == "off"
    assert guest.rss_key_quirk("6.12.95", "off") == "off"
    assert guest.device_key(rss.MS_KEY, "misaligned") == b"\0" + rss.MS_KEY[:39]
    assert guest.feature_bits("0101") == {1, 3}


def _gs(features, combined=2, rxhash=False, types=rss.LINUX_GUEST_TYPES):
    return guest.GuestState(features=set(features), key=rss.MS_KEY, table=[0, 1] * 64,
                            flows={}, hash_types=types, rxhash=rxhash, combined=combined)


def test_driver_model_follows_linux_612():
    T = rss.HashType
    rss_feats = {guest.VIRTIO_NET_F_CTRL_VQ, guest.VIRTIO_NET_F_MQ, guest.VIRTIO_NET_F_RSS,
                 guest.VIRTIO_NET_F_HASH_REPORT}
    m = guest.DriverModel.at_boot(_gs(rss_feats))
    assert m.hashing and m.device_types == rss.LINUX_GUEST_TYPES  # probe commits RSS_CONFIG
    m.set_rxhash(True)
    m.flow("tcp4", "sd")
    assert m.device_types == rss.LINUX_GUEST_TYPES & ~T.TCPv4
    m.set_rxhash(False)
    assert m.device_types == 0  # rxhash off commits no types
    m.flow("udp6", "sd")  # saved, in the header, but not committed while rxhash is off
    assert m.device_types == 0 and m.saved == rss.LINUX_GUEST_TYPES & ~(T.TCPv4 | T.UDPv6)
    m.rxfh(table=True)  # ethtool -X commits whatever the header holds
    assert m.device_types == m.saved
    m.channels(1)  # user table set: VQ_PAIRS_SET, which QEMU takes as "RSS off"
    assert not m.hashing and m.device_types == 0
    m.rxfh(table=False)
    assert m.hashing

    # hash reporting without RSS: the probe's VQ_PAIRS_SET turns hashing off again
    h = guest.DriverModel.at_boot(_gs(rss_feats - {guest.VIRTIO_NET_F_RSS}, rxhash=False))
    assert not h.hashing and h.device_types == 0
    h.set_rxhash(True)
    assert h.hashing and h.device_types == rss.LINUX_GUEST_TYPES
    assert any("HASH_CONFIG" in c for c in h.commands)
    # no multiqueue: no VQ_PAIRS_SET at all
    one = guest.DriverModel.at_boot(_gs({guest.VIRTIO_NET_F_CTRL_VQ, guest.VIRTIO_NET_F_HASH_REPORT},
                                        combined=1))
    assert one.hashing
    assert guest.apply_flow(int(T.IPv4), "tcp4", "sdfn") == int(T.IPv4 | T.TCPv4)
    assert guest.parse_rss("RX flow hash indirection table for eth0 with 2 RX ring(s):\n"
                           "Operation not supported\nRSS hash key:\n"
                           + ":".join(f"{b:02x}" for b in rss.MS_KEY) + "\n") == (rss.MS_KEY, [])


def test_datapath_design():
    """where: lab names the lab kernel's design (default progtype); the host has none."""
    lab = {"qemu": "patched", "vhost": "on", "where": "lab"}
    assert parse_scenario(with_("datapath", lab), "s").datapath.design == "progtype"
    assert parse_scenario(with_("datapath", {**lab, "design": "stock"}),
                          "s").datapath.design == "stock"
    assert parse_scenario(BASE, "s").datapath.design is None  # where: host
    assert parse_scenario(with_("datapath", {**lab, "design": "tunrss"}),
                          "s").datapath.design == "tunrss"
    with pytest.raises(UsageError, match=r"datapath\.design.*'xdp' \(valid: stock, progtype, "
                                         r"kfunc, tunrss\)"):
        parse_scenario(with_("datapath", {**lab, "design": "xdp"}), "s.yaml")
    with pytest.raises(UsageError, match=r"datapath\.design.*where: lab only"):
        parse_scenario(with_("datapath.design", "progtype"), "s.yaml")
    # every shipped lab scenario runs on a registered design
    for path in sorted(SCENARIOS_DIR.glob("*.yaml")):
        sc = load_scenario(path)
        assert (sc.datapath.design is not None) == (sc.where == "lab"), path.name
