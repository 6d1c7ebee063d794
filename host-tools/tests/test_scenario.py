"""Scenario files: strict validation (errors name the file and the field), shipped files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from hashlab import guest, rss
from hashlab.errors import UsageError
from hashlab.paths import SCENARIOS_DIR
from hashlab.scenario import load_scenario, parse_scenario

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
    assert sc.expect.hash_report_negotiated is True and sc.expect.rss_negotiated is True


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
