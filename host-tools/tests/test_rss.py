"""The spec oracle: Toeplitz, hash type selection, QEMU divergences, queues, parsers."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    HAO,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from hashlab.oracle import rss
from hashlab.oracle.rss import ALL_TYPES, LINUX_GUEST_TYPES, MS_KEY, HashType, Report

T = HashType

# --------------------------------------------------------------------------- vectors

# (source, sport, destination, dport, addresses-only hash, with-ports hash)
MS_IPV4 = [
    ("66.9.149.187", 2794, "161.142.100.80", 1766, 0x323E8FC2, 0x51CCC178),
    ("199.92.111.2", 14230, "65.69.140.83", 4739, 0xD718262A, 0xC626B0EA),
    ("24.19.198.95", 12898, "12.22.207.184", 38024, 0xD2D0A5DE, 0x5C2B394A),
    ("38.27.205.30", 48228, "209.142.163.6", 2217, 0x82989176, 0xAFC7327F),
    ("153.39.163.191", 44251, "202.188.127.2", 1303, 0x5D1809C5, 0x10E828A2),
]
MS_IPV6 = [
    ("3ffe:2501:200:1fff::7", 2794, "3ffe:2501:200:3::1", 1766, 0x2CC18CD5, 0x40207D3D),
    ("3ffe:501:8::260:97ff:fe40:efab", 14230, "ff02::1", 4739, 0x0F0C461C, 0xDDE51BBF),
    ("3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, "fe80::200:f8ff:fe21:67cf", 38024, 0x4B61E985, 0x02D1FEEF),
]
MS_ALL = MS_IPV4 + MS_IPV6

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "52:54:00:12:34:56"


def eth():
    return Ether(src=SRC_MAC, dst=DST_MAC)


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def ip_layer(src, dst, **kw):
    return IP(src=src, dst=dst, **kw) if ":" not in src else IPv6(src=src, dst=dst, **kw)


def linux_style_toeplitz(key: bytes, data: bytes) -> int:
    """Linux selftests' formulation: a 32-bit window register fed one key bit per input bit."""
    window = int.from_bytes(key[:4], "big")
    rest = key[4:]
    result = 0
    for i, byte in enumerate(data):
        for bit in range(7, -1, -1):
            if byte & (1 << bit):
                result ^= window
            next_bit = (rest[i] >> bit) & 1 if i < len(rest) else 0
            window = ((window << 1) | next_bit) & 0xFFFFFFFF
    return result


def test_ms_key():
    assert len(MS_KEY) == 40
    assert MS_KEY.hex() == "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"


@pytest.mark.parametrize("src,sport,dst,dport,h_addr,h_ports", MS_ALL)
def test_toeplitz_ms_vectors(src, sport, dst, dport, h_addr, h_ports):
    addrs = packed(src) + packed(dst)
    assert rss.toeplitz(MS_KEY, addrs) == h_addr
    assert rss.toeplitz(MS_KEY, addrs + struct.pack("!HH", sport, dport)) == h_ports
    assert linux_style_toeplitz(MS_KEY, addrs) == h_addr
    assert linux_style_toeplitz(MS_KEY, addrs + struct.pack("!HH", sport, dport)) == h_ports


def test_toeplitz_matches_bitwise_reference_on_random_inputs():
    rng = random.Random(1)
    for _ in range(200):
        klen = rng.randrange(4, 60)
        key = bytes(rng.randrange(256) for _ in range(klen))
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, klen - 3)))
        assert rss.toeplitz(key, data) == linux_style_toeplitz(key, data)


def test_toeplitz_edge_cases():
    assert rss.toeplitz(MS_KEY, b"") == 0
    assert rss.toeplitz(MS_KEY, bytes(36)) == 0
    # a single set MSB picks the key's first 32 bits
    assert rss.toeplitz(MS_KEY, b"\x80") == 0x6D5A56DA
    with pytest.raises(ValueError, match="too short"):
        rss.toeplitz(MS_KEY, bytes(37))
    with pytest.raises(ValueError):
        rss.toeplitz(b"\x01\x02\x03", b"")


@pytest.mark.parametrize("src,sport,dst,dport,h_addr,h_ports", MS_ALL)
def test_hash_packet_ms_vectors(src, sport, dst, dport, h_addr, h_ports):
    v6 = ":" in src
    tcp_t, udp_t, ip_t = (T.TCPv6, T.UDPv6, T.IPv6) if v6 else (T.TCPv4, T.UDPv4, T.IPv4)
    tcp_r, udp_r, ip_r = (Report.TCPv6, Report.UDPv6, Report.IPv6) if v6 else (
        Report.TCPv4, Report.UDPv4, Report.IPv4)
    ip = ip_layer(src, dst)
    tcp = bytes(eth() / ip / TCP(sport=sport, dport=dport))
    udp = bytes(eth() / ip / UDP(sport=sport, dport=dport))
    for behaviour in rss.BEHAVIOURS:
        assert rss.hash_packet(tcp, MS_KEY, ALL_TYPES & ~0x1C0 | tcp_t, behaviour) == (h_ports, tcp_r)
        assert rss.hash_packet(udp, MS_KEY, udp_t | ip_t, behaviour) == (h_ports, udp_r)
        assert rss.hash_packet(tcp, MS_KEY, ip_t | udp_t, behaviour) == (h_addr, ip_r)
        assert rss.hash_packet(udp, MS_KEY, ip_t | tcp_t, behaviour) == (h_addr, ip_r)
        assert rss.hash_packet(tcp, MS_KEY, 0, behaviour) == (0, Report.NONE)


# --------------------------------------------------------------------------- constants


def test_constants():
    assert ALL_TYPES == 0x1FF
    assert LINUX_GUEST_TYPES == 0x3F
    assert int(T.IPv4) == 1 and int(T.UDPv6_EX) == 1 << 8
    assert [int(r) for r in Report] == list(range(10))
    for r in list(Report)[1:]:
        t = rss.type_for_report(r)
        assert int(t) == 1 << (r - 1)
        assert t.name == r.name
        assert rss.report_for_type(t) == r
    with pytest.raises(ValueError):
        rss.type_for_report(0)
    with pytest.raises(ValueError):
        rss.report_for_type(3)
    assert {r for r in Report if r.is_l4} == {
        Report.TCPv4, Report.UDPv4, Report.TCPv6, Report.UDPv6, Report.TCPv6_EX, Report.UDPv6_EX}
    assert rss.is_l4_report(2) and not rss.is_l4_report(0) and not rss.is_l4_report(7)


# --------------------------------------------------------------------------- selection

S4, D4 = "10.1.2.3", "192.0.2.77"
S6, D6 = "2001:db8::1", "2001:db8:1::2"
HOA, RH2 = "2001:db8:ff::99", "2001:db8:ee::77"
SP, DP = 40000, 443


def tup(src, dst, ports=True):
    return packed(src) + packed(dst) + (struct.pack("!HH", SP, DP) if ports else b"")


def h(src, dst, ports=True):
    return rss.toeplitz(MS_KEY, tup(src, dst, ports))


def v4(l4="tcp", **ipkw):
    p = eth() / IP(src=S4, dst=D4, **ipkw)
    if l4 == "tcp":
        p = p / TCP(sport=SP, dport=DP)
    elif l4 == "udp":
        p = p / UDP(sport=SP, dport=DP)
    elif l4 == "icmp":
        p = p / ICMP()
    return bytes(p / b"payload")


def v6(l4="tcp", exts=()):
    p = eth() / IPv6(src=S6, dst=D6)
    for e in exts:
        p = p / e
    if l4 == "tcp":
        p = p / TCP(sport=SP, dport=DP)
    elif l4 == "udp":
        p = p / UDP(sport=SP, dport=DP)
    elif l4 == "icmp":
        p = p / ICMPv6EchoRequest()
    return bytes(p / b"payload")


def hao_hdr():
    return IPv6ExtHdrDestOpt(options=[HAO(hoa=HOA)])


def rh2_hdr():
    return IPv6ExtHdrRouting(type=2, segleft=1, addresses=[RH2])


def check(frame, types, expected_report, expected_hash, behaviour="spec"):
    got = rss.hash_packet(frame, MS_KEY, types, behaviour)
    assert (rss.Report(got[1]).name, got[0]) == (Report(expected_report).name, expected_hash)


@pytest.mark.parametrize("l4,types,report,ports", [
    ("tcp", T.TCPv4 | T.UDPv4 | T.IPv4, Report.TCPv4, True),
    ("tcp", T.UDPv4 | T.IPv4, Report.IPv4, False),
    ("udp", T.TCPv4 | T.UDPv4 | T.IPv4, Report.UDPv4, True),
    ("udp", T.TCPv4 | T.IPv4, Report.IPv4, False),
    ("icmp", ALL_TYPES, Report.IPv4, False),
    ("icmp", ALL_TYPES & ~T.IPv4, Report.NONE, None),
    ("tcp", T.TCPv6 | T.IPv6 | T.IPv6_EX, Report.NONE, None),  # only IPv6 types enabled
])
def test_select_ipv4(l4, types, report, ports):
    expected = 0 if report == Report.NONE else h(S4, D4, ports)
    for behaviour in rss.BEHAVIOURS:
        check(v4(l4), types, report, expected, behaviour)


@pytest.mark.parametrize("l4,types,report,ports", [
    ("tcp", T.TCPv6 | T.UDPv6 | T.IPv6, Report.TCPv6, True),
    ("tcp", T.UDPv6 | T.IPv6, Report.IPv6, False),
    ("udp", T.TCPv6 | T.UDPv6 | T.IPv6, Report.UDPv6, True),
    ("udp", T.TCPv6 | T.IPv6, Report.IPv6, False),
    ("icmp", LINUX_GUEST_TYPES, Report.IPv6, False),
    ("tcp", T.TCPv4 | T.IPv4, Report.NONE, None),
    # no extension headers: the spec ignores the _EX types
    ("tcp", T.TCPv6_EX | T.TCPv6, Report.TCPv6, True),
    ("tcp", T.TCPv6_EX | T.IPv6_EX, Report.NONE, None),
    ("icmp", T.IPv6_EX | T.IPv6, Report.IPv6, False),
])
def test_select_ipv6_without_ext_spec(l4, types, report, ports):
    expected = 0 if report == Report.NONE else h(S6, D6, ports)
    check(v6(l4), types, report, expected)


@pytest.mark.parametrize("exts,src,dst", [
    ([IPv6ExtHdrHopByHop()], S6, D6),
    ([IPv6ExtHdrDestOpt()], S6, D6),
    ([hao_hdr()], HOA, D6),
    ([rh2_hdr()], S6, RH2),
    ([rh2_hdr(), hao_hdr()], HOA, RH2),
    ([IPv6ExtHdrHopByHop(), rh2_hdr(), IPv6ExtHdrDestOpt(), hao_hdr()], HOA, RH2),
])
def test_select_ipv6_with_ext_spec(exts, src, dst):
    # _EX rules first, with HAO/RH2 substitution
    check(v6("tcp", exts), ALL_TYPES, Report.TCPv6_EX, h(src, dst))
    check(v6("udp", exts), ALL_TYPES, Report.UDPv6_EX, h(src, dst))
    check(v6("icmp", exts), ALL_TYPES, Report.IPv6_EX, h(src, dst, False))
    check(v6("tcp", exts), T.UDPv6_EX | T.IPv6_EX | T.TCPv6, Report.IPv6_EX, h(src, dst, False))
    check(v6("udp", exts), T.TCPv6_EX | T.IPv6_EX, Report.IPv6_EX, h(src, dst, False))
    # no _EX type matches: as IPv6 without extension headers, real addresses
    check(v6("tcp", exts), LINUX_GUEST_TYPES, Report.TCPv6, h(S6, D6))
    check(v6("udp", exts), T.TCPv6_EX | T.UDPv6, Report.UDPv6, h(S6, D6))
    check(v6("icmp", exts), T.TCPv6_EX | T.UDPv6_EX | T.IPv6, Report.IPv6, h(S6, D6, False))
    check(v6("icmp", exts), T.TCPv6_EX | T.UDPv6_EX | T.TCPv6, Report.NONE, 0)


def test_rh2_needs_one_address_and_segleft_1():
    # routing type 0, or type 2 with segments left 0, or two addresses: not an RH2
    for hdr in (IPv6ExtHdrRouting(type=0, segleft=1, addresses=[RH2]),
                IPv6ExtHdrRouting(type=2, segleft=0, addresses=[RH2]),
                IPv6ExtHdrRouting(type=2, segleft=1, addresses=[RH2, HOA])):
        check(v6("tcp", [hdr]), ALL_TYPES, Report.TCPv6_EX, h(S6, D6))


def test_hao_only_from_destination_options():
    # the same option bytes in a hop-by-hop header are not a Home Address
    hbh = IPv6ExtHdrHopByHop(options=[HAO(hoa=HOA)])
    check(v6("tcp", [hbh]), ALL_TYPES, Report.TCPv6_EX, h(S6, D6))


def test_ipv4_options_and_fragments():
    check(v4("tcp", options=[b"\x94\x04\x00\x00"]), ALL_TYPES, Report.TCPv4, h(S4, D4))
    check(v4("udp", options=[b"\x07\x27\x04" + bytes(37)]), ALL_TYPES, Report.UDPv4, h(S4, D4))
    check(v4("tcp", flags="MF"), ALL_TYPES, Report.IPv4, h(S4, D4, False))
    check(v4("udp", frag=10), ALL_TYPES, Report.IPv4, h(S4, D4, False))
    check(v4("tcp", flags="DF"), ALL_TYPES, Report.TCPv4, h(S4, D4))
    check(v4("tcp", flags="MF"), T.TCPv4 | T.UDPv4, Report.NONE, 0)


def test_ipv6_fragments():
    first = IPv6ExtHdrFragment(offset=0, m=1, id=7)
    check(v6("udp", [first]), ALL_TYPES, Report.IPv6_EX, h(S6, D6, False))
    check(v6("udp", [first]), LINUX_GUEST_TYPES, Report.IPv6, h(S6, D6, False))
    check(v6("tcp", [hao_hdr(), first]), ALL_TYPES, Report.IPv6_EX, h(HOA, D6, False))
    atomic = IPv6ExtHdrFragment(offset=0, m=0, id=7)
    check(v6("tcp", [atomic]), T.TCPv6 | T.TCPv6_EX, Report.NONE, 0)


def test_vlan_tags_skipped():
    p = IP(src=S4, dst=D4) / TCP(sport=SP, dport=DP)
    for l2 in (eth() / Dot1Q(vlan=5), eth() / Dot1AD(vlan=5) / Dot1Q(vlan=6),
               eth() / Dot1Q(vlan=5) / Dot1Q(vlan=6)):
        check(bytes(l2 / p), ALL_TYPES, Report.TCPv4, h(S4, D4))
    three = eth() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / p
    check(bytes(three), ALL_TYPES, Report.NONE, 0)
    p6 = IPv6(src=S6, dst=D6) / UDP(sport=SP, dport=DP)
    check(bytes(eth() / Dot1AD(vlan=5) / Dot1Q(vlan=6) / p6), ALL_TYPES, Report.UDPv6, h(S6, D6))


def test_non_ip_and_malformed():
    arp = bytes(eth() / ARP(psrc=S4, pdst=D4))
    check(arp, ALL_TYPES, Report.NONE, 0)
    check(b"", ALL_TYPES, Report.NONE, 0)
    check(bytes(13), ALL_TYPES, Report.NONE, 0)
    good4 = bytearray(v4("tcp"))
    bad = bytearray(good4)
    bad[14] = 0x45 | 0x20  # version 6 under ethertype IPv4
    check(bytes(bad), ALL_TYPES, Report.NONE, 0)
    bad = bytearray(good4)
    bad[14] = 0x44  # IHL 4
    check(bytes(bad), ALL_TYPES, Report.NONE, 0)
    bad = bytearray(good4)
    bad[14 + 20 + 12] = 0x40  # TCP data offset 4: not a TCP header → address only
    check(bytes(bad), ALL_TYPES, Report.IPv4, h(S4, D4, False))
    bad6 = bytearray(v6("udp"))
    bad6[14] = 0x40  # version 4 under ethertype IPv6
    check(bytes(bad6), ALL_TYPES, Report.NONE, 0)


def test_truncation_rule():
    f4 = v4("tcp")
    for n in range(14 + 20):  # IP header incomplete → NONE
        check(f4[:n], ALL_TYPES, Report.NONE, 0)
    for n in range(34, 34 + 20):  # TCP header incomplete → address only
        check(f4[:n], ALL_TYPES, Report.IPv4, h(S4, D4, False))
    check(f4[:54], ALL_TYPES, Report.TCPv4, h(S4, D4))
    u4 = v4("udp")
    check(u4[:41], ALL_TYPES, Report.IPv4, h(S4, D4, False))
    check(u4[:42], ALL_TYPES, Report.UDPv4, h(S4, D4))
    opts = v4("udp", options=[b"\x07\x0f\x04" + bytes(13)])  # IHL 9
    check(opts[:14 + 35], ALL_TYPES, Report.NONE, 0)
    check(opts[:14 + 36], ALL_TYPES, Report.IPv4, h(S4, D4, False))
    f6 = v6("tcp", [hao_hdr()])
    for n in range(14 + 40 + 24):  # IPv6 header or an extension header incomplete → NONE
        check(f6[:n], ALL_TYPES, Report.NONE, 0)
    check(f6[:14 + 40 + 24 + 19], ALL_TYPES, Report.IPv6_EX, h(HOA, D6, False))
    check(f6[:14 + 40 + 24 + 20], ALL_TYPES, Report.TCPv6_EX, h(HOA, D6))


def test_extension_chain_bound():
    pad = IPv6ExtHdrDestOpt()
    n = rss.MAX_IPV6_EXT_HEADERS
    check(v6("tcp", [pad] * n), T.TCPv6_EX, Report.TCPv6_EX, h(S6, D6))
    check(v6("tcp", [pad] * (n + 1)), ALL_TYPES, Report.NONE, 0)


# --------------------------------------------------------------------------- divergences


def test_divergence_qemu_software_prefers_ex_without_ext_headers():
    # no extension headers at all; spec: plain types, QEMU software: _EX reports
    check(v6("tcp"), T.TCPv6 | T.TCPv6_EX, Report.TCPv6, h(S6, D6))
    check(v6("tcp"), T.TCPv6 | T.TCPv6_EX, Report.TCPv6_EX, h(S6, D6), "qemu-software")
    check(v6("udp"), T.UDPv6 | T.UDPv6_EX, Report.UDPv6_EX, h(S6, D6), "qemu-software")
    check(v6("icmp"), T.IPv6 | T.IPv6_EX, Report.IPv6_EX, h(S6, D6, False), "qemu-software")
    check(v6("tcp"), T.TCPv6_EX, Report.NONE, 0)
    check(v6("tcp"), T.TCPv6_EX, Report.TCPv6_EX, h(S6, D6), "qemu-software")


def test_divergence_qemu_software_l4_before_ip_ex():
    # with extension headers, spec: TCPv6_EX > UDPv6_EX > IPv6_EX > TCPv6 ...;
    # QEMU software: TCPv6_EX > TCPv6 > IPv6_EX for a TCP packet
    exts = [hao_hdr()]
    check(v6("tcp", exts), T.IPv6_EX | T.TCPv6, Report.IPv6_EX, h(HOA, D6, False))
    check(v6("tcp", exts), T.IPv6_EX | T.TCPv6, Report.TCPv6, h(S6, D6), "qemu-software")
    check(v6("udp", exts), T.IPv6_EX | T.UDPv6, Report.UDPv6, h(S6, D6), "qemu-software")


def test_qemu_software_agrees_with_spec_elsewhere_with_ext():
    for frame in (v6("tcp", [hao_hdr()]), v6("udp", [rh2_hdr()]), v6("icmp", [hao_hdr(), rh2_hdr()])):
        for types in (ALL_TYPES, LINUX_GUEST_TYPES, T.IPv6_EX | T.IPv6, T.TCPv6_EX | T.UDPv6,
                      T.TCPv6_EX | T.UDPv6_EX | T.IPv6):
            assert rss.hash_packet(frame, MS_KEY, types, "qemu-software") == \
                rss.hash_packet(frame, MS_KEY, types, "spec")


def test_divergence_qemu_ebpf_plain_type_selects():
    exts = [hao_hdr(), rh2_hdr()]
    # TCP_EX alone: spec hashes TCPv6_EX; the eBPF program needs TCPv6 to pick TCP at all
    check(v6("tcp", exts), T.TCPv6_EX | T.IPv6, Report.TCPv6_EX, h(HOA, RH2))
    check(v6("tcp", exts), T.TCPv6_EX | T.IPv6, Report.IPv6, h(S6, D6, False), "qemu-ebpf")
    check(v6("tcp", exts), T.TCPv6_EX, Report.NONE, 0, "qemu-ebpf")
    # with TCPv6 as well, the _EX addresses are used
    check(v6("tcp", exts), T.TCPv6 | T.TCPv6_EX, Report.TCPv6_EX, h(HOA, RH2), "qemu-ebpf")


def test_divergence_qemu_ebpf_ip_ex_does_not_beat_tcpv6():
    exts = [hao_hdr()]
    # spec: with extension headers, IPv6_EX comes before the plain TCPv6 rule
    check(v6("tcp", exts), T.IPv6_EX | T.TCPv6, Report.IPv6_EX, h(HOA, D6, False))
    check(v6("tcp", exts), T.IPv6_EX | T.TCPv6, Report.TCPv6, h(S6, D6), "qemu-ebpf")


def test_divergence_qemu_ebpf_ex_only_when_header_present():
    # extension headers but neither HAO nor RH2: spec reports TCPv6_EX over the real
    # addresses, the eBPF program hashes the same bytes as plain TCPv6
    hbh = [IPv6ExtHdrHopByHop()]
    check(v6("tcp", hbh), T.TCPv6 | T.TCPv6_EX, Report.TCPv6_EX, h(S6, D6))
    check(v6("tcp", hbh), T.TCPv6 | T.TCPv6_EX, Report.TCPv6, h(S6, D6), "qemu-ebpf")
    # each address is substituted independently
    check(v6("udp", [rh2_hdr()]), T.UDPv6 | T.UDPv6_EX, Report.UDPv6_EX, h(S6, RH2), "qemu-ebpf")
    check(v6("icmp", [hao_hdr()]), T.IPv6 | T.IPv6_EX, Report.IPv6_EX, h(HOA, D6, False), "qemu-ebpf")
    # IP_EX without IPv6 selects nothing
    check(v6("icmp", [hao_hdr()]), T.IPv6_EX, Report.NONE, 0, "qemu-ebpf")


def test_unknown_behaviour():
    with pytest.raises(ValueError, match="behaviour"):
        rss.hash_packet(v4(), MS_KEY, ALL_TYPES, "linux")


# --------------------------------------------------------------------------- queues


def test_select_queue():
    table = [0, 1, 2, 3] * 32
    assert rss.select_queue(0x12345677, Report.TCPv4, table, 9) == 3
    assert rss.select_queue(0x12345680, Report.IPv4, table, 9) == 0
    assert rss.select_queue(0x12345677, Report.NONE, table, 9) == 9
    assert rss.select_queue(5, Report.IPv6, [7], 0) == 7
    for bad in ([], [0, 1, 2], [0] * 100):
        with pytest.raises(ValueError, match="power of two"):
            rss.select_queue(1, Report.IPv4, bad, 0)


def test_rss_config_expect():
    cfg = rss.RssConfig.equal_table(4, hash_types=LINUX_GUEST_TYPES, unclassified_queue=2)
    e = cfg.expect(v4("tcp"))
    assert e == rss.Expectation(h(S4, D4), Report.TCPv4, h(S4, D4) % 4, True)
    assert e.report_name == "TCPv4"
    e = cfg.expect(v6("icmp"))
    assert (e.report, e.l4) == (Report.IPv6, False)
    e = cfg.expect(bytes(eth() / ARP()))
    assert e == rss.Expectation(0, Report.NONE, 2, False)
    with pytest.raises(ValueError):
        rss.RssConfig(table=[0, 1, 2])


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize("text,value", [
    ("ipv4", 0x1),
    ("TCPv4,udpv4", 0x6),
    (" ipv6 , TCPV6 ,udpv6", 0x38),
    ("ipv6_ex,tcpv6_ex,udpv6_ex", 0x1C0),
    ("ip_ex,tcp_ex,udp_ex", 0x1C0),
    ("all", 0x1FF),
    ("ALL", 0x1FF),
    ("linux", 0x3F),
    ("linux,ip_ex", 0x7F),
    ("none", 0),
    ("0x3f", 0x3F),
    ("0X1FF", 0x1FF),
    ("63", 63),
    ("0", 0),
])
def test_parse_hash_types(text, value):
    assert rss.parse_hash_types(text) == value


@pytest.mark.parametrize("text,match", [
    ("tcpv5", "unknown hash type 'tcpv5'.*ipv4.*udpv6_ex"),
    ("ipv4,,tcpv4", "empty"),
    ("", "empty"),
    ("0x200", "unknown bits"),
    ("1024", "unknown bits"),
])
def test_parse_hash_types_errors(text, match):
    with pytest.raises(ValueError, match=match):
        rss.parse_hash_types(text)


def test_hash_type_names():
    assert rss.hash_type_names(0) == "none"
    assert rss.hash_type_names(0x6) == "tcpv4,udpv4"
    assert rss.parse_hash_types(rss.hash_type_names(0x1A5)) == 0x1A5


def test_parse_key():
    colon = ":".join(f"{b:02x}" for b in MS_KEY)
    assert rss.parse_key(colon) == MS_KEY
    assert rss.parse_key(MS_KEY.hex().upper()) == MS_KEY
    assert rss.parse_key("  0x" + MS_KEY.hex() + "\n") == MS_KEY
    assert rss.parse_key("ab") == b"\xab"
    assert rss.parse_key("ff" * 255) == b"\xff" * 255
    for bad, match in [("", "0 bytes"), ("abc", "odd"), ("zz", "not hex"), ("6d:5:56", "two-digit"),
                       ("6d::5a", "two-digit"), ("ff" * 256, "256 bytes")]:
        with pytest.raises(ValueError, match=match):
            rss.parse_key(bad)


ETHTOOL_X = """\
RX flow hash indirection table for eth0 with 2 RX ring(s):
    0:      0     1     0     1     0     1     0     1
    8:      0     1     0     1     0     1     0     1
   16:      1     1     1     1     0     0     0     0
   24:      0     1     0     1     0     1     0     1
RSS hash key:
6d:5a:56:da:25:5b:0e:c2:41:67:25:3d:43:a3:8f:b0:d0:ca:2b:cb:ae:7b:30:b4:77:cb:2d:a3:80:30:f2:0c:6a:42:b7:3b:be:ac:01:fa
RSS hash function:
    toeplitz: on
    xor: off
    crc32: off
RSS input transformation:
    symmetric-xor: off
"""


def test_parse_ethtool_x():
    key, table = rss.parse_ethtool_x(ETHTOOL_X)
    assert key == MS_KEY
    assert len(table) == 32
    assert table[:8] == [0, 1] * 4 and table[16:24] == [1, 1, 1, 1, 0, 0, 0, 0]


def test_parse_ethtool_x_errors():
    with pytest.raises(ValueError, match="indirection table"):
        rss.parse_ethtool_x("RSS hash key:\n6d:5a\n")
    with pytest.raises(ValueError, match="hash key"):
        rss.parse_ethtool_x(ETHTOOL_X.split("RSS hash key:")[0])
    with pytest.raises(ValueError, match="hash key"):
        rss.parse_ethtool_x(ETHTOOL_X.replace("6d:5a:56", "Operation not supported\n6d"))
    with pytest.raises(ValueError, match="row starts at"):
        rss.parse_ethtool_x(ETHTOOL_X.replace("   16:", "   17:"))
    with pytest.raises(ValueError, match="out of range"):
        rss.parse_ethtool_x(ETHTOOL_X.replace("with 2 RX", "with 1 RX"))
