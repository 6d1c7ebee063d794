"""Property tests: frames built from random parameters, expectations computed from the
parameters by a direct encoding of the selection tables (never by parsing the frame)."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    HAO,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from hashlab.oracle import rss

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Report values, spelled out (not taken from hashlab.oracle.rss).
NONE, IPV4, TCPV4, UDPV4, IPV6, TCPV6, UDPV6, IP_EX, TCP_EX, UDP_EX = range(10)


def bit(report: int) -> int:
    return 1 << (report - 1)


v4_addr = st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i)))
v6_addr = st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i)))
port = st.integers(0, 65535)

EXT_KINDS = ["hbh", "dst", "dst_hao", "rh2", "rh0", "frag"]


@st.composite
def frames(draw):
    p = {
        "family": draw(st.sampled_from([4, 6])),
        "vlan": draw(st.sampled_from(["none", "q", "ad-q", "q-q"])),
        "proto": draw(st.sampled_from(["tcp", "udp", "icmp", "other"])),
        "sport": draw(port),
        "dport": draw(port),
        "types": draw(st.integers(0, 0x1FF)),
        "key": draw(st.binary(min_size=40, max_size=40)),
    }
    if p["family"] == 4:
        p["src"], p["dst"] = draw(v4_addr), draw(v4_addr)
        p["options"] = draw(st.sampled_from([b"", b"\x94\x04\x00\x00", b"\x01" * 7 + b"\x00",
                                             b"\x07\x27\x04" + bytes(37)]))
        p["frag"] = draw(st.sampled_from(["none", "df", "mf", "offset", "mf+offset"]))
    else:
        p["src"], p["dst"] = draw(v6_addr), draw(v6_addr)
        exts = draw(st.lists(st.sampled_from(EXT_KINDS), max_size=5))
        p["exts"] = [(k, draw(v6_addr)) for k in exts]
        p["frag_offset"] = draw(st.sampled_from([0, 0, 1, 185]))
    return p


def build(p) -> bytes:
    l2 = Ether(src="02:00:00:00:00:01", dst="52:54:00:12:34:56")
    if p["vlan"] == "q":
        l2 = l2 / Dot1Q(vlan=3)
    elif p["vlan"] == "ad-q":
        l2 = l2 / Dot1AD(vlan=3) / Dot1Q(vlan=4)
    elif p["vlan"] == "q-q":
        l2 = l2 / Dot1Q(vlan=3) / Dot1Q(vlan=4)
    if p["family"] == 4:
        flags = {"none": 0, "df": "DF", "mf": "MF", "offset": 0, "mf+offset": "MF"}[p["frag"]]
        frag = 100 if "offset" in p["frag"] else 0
        pkt = l2 / IP(src=p["src"], dst=p["dst"], flags=flags, frag=frag,
                      options=[p["options"]] if p["options"] else [])
    else:
        pkt = l2 / IPv6(src=p["src"], dst=p["dst"])
        for kind, addr in p["exts"]:
            if kind == "hbh":
                pkt = pkt / IPv6ExtHdrHopByHop()
            elif kind == "dst":
                pkt = pkt / IPv6ExtHdrDestOpt(options=[PadN(optdata=bytes(4))])
            elif kind == "dst_hao":
                pkt = pkt / IPv6ExtHdrDestOpt(options=[HAO(hoa=addr)])
            elif kind == "rh2":
                pkt = pkt / IPv6ExtHdrRouting(type=2, segleft=1, addresses=[addr])
            elif kind == "rh0":
                pkt = pkt / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[addr])
            elif kind == "frag":
                pkt = pkt / IPv6ExtHdrFragment(offset=p["frag_offset"], m=1, id=5)
    proto = p["proto"]
    if proto == "tcp":
        pkt = pkt / TCP(sport=p["sport"], dport=p["dport"])
    elif proto == "udp":
        pkt = pkt / UDP(sport=p["sport"], dport=p["dport"])
    elif proto == "icmp":
        pkt = pkt / (ICMP() if p["family"] == 4 else ICMPv6EchoRequest())
    else:
        if p["family"] == 4:
            pkt[IP].proto = 253
        elif p["exts"]:
            pkt.lastlayer().nh = 253
        else:
            pkt[IPv6].nh = 253
    return bytes(pkt / Raw(b"HLAB\x00\x00\x00\x01"))


def facts(p, behaviour="spec"):
    """(l4, has_ext, hao, rh2) straight from the parameters, as ``behaviour`` sees them.

    The spec takes the first HAO and the first RH2.  QEMU's software path keeps what the
    *last* destination options header says (a padding-only one clears the HAO) and
    what the last routing header of length 2 says (our type 0 header with one address
    clears the RH2); upstream's eBPF program keeps the last HAO and the last RH2 found.
    """
    if p["family"] == 4:
        fragment = p["frag"] in ("mf", "offset", "mf+offset")
        has_ext, hao, rh2 = False, None, None
    else:
        kinds = [k for k, _ in p["exts"]]
        fragment = "frag" in kinds
        has_ext = bool(kinds)
        haos = [(a if k == "dst_hao" else None) for k, a in p["exts"] if k in ("dst", "dst_hao")]
        rh2s = [(a if k == "rh2" else None) for k, a in p["exts"] if k in ("rh2", "rh0")]
        if behaviour == "spec":
            hao = next((a for a in haos if a), None)
            rh2 = next((a for a in rh2s if a), None)
        elif behaviour == "qemu-software":
            hao = haos[-1] if haos else None
            rh2 = rh2s[-1] if rh2s else None
        else:
            hao = next((a for a in reversed(haos) if a), None)
            rh2 = next((a for a in reversed(rh2s) if a), None)
    l4 = p["proto"] if p["proto"] in ("tcp", "udp") and not fragment else None
    return l4, has_ext, hao, rh2


def no_ip_for(p, behaviour) -> bool:
    """802.1Q+802.1Q: only the spec skips two 0x8100 tags (QEMU: one, then no IP)."""
    return p["vlan"] == "q-q" and behaviour != "spec"


def tuple_bytes(p, report, use_hao, use_rh2, behaviour="spec"):
    _l4, _ext, hao, rh2 = facts(p, behaviour)
    src = hao if (use_hao and hao) else p["src"]
    dst = rh2 if (use_rh2 and rh2) else p["dst"]
    data = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    if report in (TCPV4, UDPV4, TCPV6, UDPV6, TCP_EX, UDP_EX):
        data += struct.pack("!HH", p["sport"], p["dport"])
    return data


def first_enabled(types, candidates):
    """The first (condition, report) whose condition holds and whose type is enabled."""
    for cond, report in candidates:
        if cond and types & bit(report):
            return report
    return NONE


def expect_spec(p):
    l4, has_ext, _hao, _rh2 = facts(p)
    t = p["types"]
    if p["family"] == 4:
        r = first_enabled(t, [(l4 == "tcp", TCPV4), (l4 == "udp", UDPV4), (True, IPV4)])
    else:
        r = first_enabled(t, [
            (has_ext and l4 == "tcp", TCP_EX),
            (has_ext and l4 == "udp", UDP_EX),
            (has_ext, IP_EX),
            (l4 == "tcp", TCPV6),
            (l4 == "udp", UDPV6),
            (True, IPV6),
        ])
    ex = r in (IP_EX, TCP_EX, UDP_EX)
    return r, ex, ex


def expect_qemu_software(p):
    l4, _has_ext, _hao, _rh2 = facts(p, "qemu-software")
    t = p["types"]
    if p["family"] == 4:
        return expect_spec(p)
    r = first_enabled(t, [
        (l4 == "tcp", TCP_EX), (l4 == "tcp", TCPV6),
        (l4 == "udp", UDP_EX), (l4 == "udp", UDPV6),
        (True, IP_EX), (True, IPV6),
    ])
    ex = r in (IP_EX, TCP_EX, UDP_EX)
    return r, ex, ex


def expect_qemu_ebpf(p):
    l4, _has_ext, hao, rh2 = facts(p, "qemu-ebpf")
    t = p["types"]
    if p["family"] == 4:
        return expect_spec(p)
    base = first_enabled(t, [(l4 == "tcp", TCPV6), (l4 == "udp", UDPV6), (True, IPV6)])
    if base == NONE:
        return NONE, False, False
    ex_report = {TCPV6: TCP_EX, UDPV6: UDP_EX, IPV6: IP_EX}[base]
    ex_on = bool(t & bit(ex_report))
    use_hao, use_rh2 = ex_on and hao is not None, ex_on and rh2 is not None
    return (ex_report if (use_hao or use_rh2) else base), use_hao, use_rh2


EXPECT = {"spec": expect_spec, "qemu-software": expect_qemu_software, "qemu-ebpf": expect_qemu_ebpf}


@SETTINGS
@given(frames())
def test_hash_packet_matches_parameters(p):
    frame = build(p)
    for behaviour, fn in EXPECT.items():
        report, use_hao, use_rh2 = fn(p)
        if report == NONE or no_ip_for(p, behaviour):
            expected = (0, 0)
        else:
            data = tuple_bytes(p, report, use_hao, use_rh2, behaviour)
            expected = (rss.toeplitz(p["key"], data), report)
        assert rss.hash_packet(frame, p["key"], p["types"], behaviour) == expected, behaviour


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=160), st.integers(0, 0x1FF))
def test_hash_packet_total_on_arbitrary_bytes(data, types):
    for behaviour in rss.BEHAVIOURS:
        h, r = rss.hash_packet(data, rss.MS_KEY, types, behaviour)
        assert 0 <= h < 2**32 and r in range(10)
        assert r == 0 or types & (1 << (r - 1)) or behaviour == "qemu-ebpf"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(), st.data())
def test_truncation_never_raises_and_only_loses_information(p, data):
    frame = build(p)
    cut = data.draw(st.integers(0, len(frame)))
    h, r = rss.hash_packet(frame[:cut], p["key"], p["types"])
    full_h, full_r = rss.hash_packet(frame, p["key"], p["types"])
    # a truncated frame is hashed like the full one, or with no ports, or not at all
    assert r in (full_r, NONE, IPV4, IPV6, IP_EX)
    if r == full_r:
        assert h == full_h


def test_report_type_relation_is_exhaustive():
    for r in range(1, 10):
        assert int(rss.type_for_report(r)) == bit(r)
