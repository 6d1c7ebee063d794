"""The oracle's QEMU models, divergence by divergence (``hashlab.oracle.rss.DIVERGENCES``).

Each test builds the smallest frame that shows one named divergence and states, by
hand, what the spec and the QEMU behaviour hash.  The models themselves were checked
against the real thing: qemu-software against stock QEMU 10.0 (test_qtest_rss.py), and
qemu-ebpf (``ebpf_context="test_run"``) against upstream's rss.bpf.o run with
BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import inspect
import struct

import pytest

from hashlab.oracle import rss
from hashlab.frames.hostile import (
    AH, DST, HBH, ICMPV6, MH, RT, TCP, UDP, V4_DST, V4_SRC, V6_DST, V6_SRC, V6_HOA, V6_HOA2, V6_RH2, V6_RH2B,
    SPORT, DPORT, ETH_P_IP, ETH_P_IPV6,
    _dst, _hao_dst, _rh2, _v4_tcp, _v4_udp, _v6, ah, eth, hao, ipv4, ipv6, opt_pad,
    opts_header, plain_ext, routing, tcp,
)

T = rss.HashType
R = rss.Report
K = rss.MS_KEY
ALL = rss.ALL_TYPES
LINUX = rss.LINUX_GUEST_TYPES
PORTS = struct.pack("!HH", SPORT, DPORT)


def h(*parts: bytes) -> int:
    return rss.toeplitz(K, b"".join(parts))


def got(frame: bytes, types: int, behaviour: str, **kw) -> tuple[int, str]:
    v, r = rss.hash_packet(frame, K, types, behaviour, **kw)
    return v, R(r).name


def diverges(name: str, frame: bytes, types: int, spec: tuple[int, str], other: tuple[int, str], **kw):
    """Spec gives ``spec``, the divergence's behaviour gives ``other`` (hash, report name)."""
    behaviour = rss.DIVERGENCES[name].behaviour
    assert got(frame, types, "spec") == spec, f"{name}: spec"
    assert got(frame, types, behaviour, **kw) == other, f"{name}: {behaviour}"
    assert spec != other


NONE = (0, "NONE")


# --------------------------------------------------------------------------- qemu-software


def test_qemu_software_selection_divergences():
    f = _v6([], TCP)
    diverges("qemu-software-ex-without-ext", f, T.TCPv6 | T.TCPv6_EX,
             (h(V6_SRC, V6_DST, PORTS), "TCPv6"), (h(V6_SRC, V6_DST, PORTS), "TCPv6_EX"))
    f = _v6([_hao_dst()], TCP)
    diverges("qemu-software-l4-before-ip-ex", f, T.IPv6_EX | T.TCPv6,
             (h(V6_HOA, V6_DST), "IPv6_EX"), (h(V6_SRC, V6_DST, PORTS), "TCPv6"))


def test_qinq_8100_8100_not_parsed():
    ip = ipv4(UDP, struct.pack("!HHHH", SPORT, DPORT, 8, 0))
    for tags in ((0x8100, 0x8100), (0x9100,), (0x88A8, 0x88A8), (0x8100, 0x88A8)):
        diverges("qinq-8100-8100-not-parsed", eth(ETH_P_IP, tags) + ip, ALL,
                 (h(V4_SRC, V4_DST, PORTS), "UDPv4"), NONE)
    for tags in ((0x8100,), (0x88A8,), (0x88A8, 0x8100)):  # these QEMU parses
        assert got(eth(ETH_P_IP, tags) + ip, ALL, "qemu-software") == (h(V4_SRC, V4_DST, PORTS), "UDPv4")


def test_ah_length_in_8_octet_units():
    f = _v6([(AH, ah(0, 4))], TCP)  # 24-byte AH: QEMU skips 40 and reads "ports" 16 bytes into TCP
    tcp_at = 14 + 40 + 24
    wrong = f[tcp_at + 16:tcp_at + 20]
    diverges("ah-length-in-8-octet-units", f, LINUX, (h(V6_SRC, V6_DST, PORTS), "TCPv6"),
             (h(V6_SRC, V6_DST, wrong), "TCPv6"))


def test_ipv4_ihl_not_validated():
    f = _v4_tcp(ihl=4)  # the TCP header is read at 16: the "ports" are the destination address
    diverges("ipv4-ihl-not-validated", f, ALL, NONE, (h(V4_SRC, V4_DST, V4_DST), "TCPv4"))
    cut = (eth(ETH_P_IP) + ipv4(UDP, b"", options=bytes(20)))[:14 + 30]  # IHL 10, 30 bytes present
    diverges("ipv4-ihl-not-validated", cut, ALL, NONE, (h(V4_SRC, V4_DST), "IPv4"))


def test_tcp_data_offset_not_validated():
    f = eth(ETH_P_IP) + ipv4(TCP, tcp(doff=4) + bytes(8))
    diverges("tcp-data-offset-not-validated", f, ALL, (h(V4_SRC, V4_DST), "IPv4"),
             (h(V4_SRC, V4_DST, PORTS), "TCPv4"))


def test_ipv6_version_not_checked():
    f = _v6([], UDP, version=4)
    diverges("ipv6-version-not-checked", f, LINUX, NONE, (h(V6_SRC, V6_DST, PORTS), "UDPv6"))


def test_ipv6_ext_chain_unbounded():
    f = _v6([_dst(opt_pad(6))] * 17, TCP)
    diverges("ipv6-ext-chain-unbounded", f, LINUX, NONE, (h(V6_SRC, V6_DST, PORTS), "TCPv6"))
    f64 = _v6([_dst(opt_pad(6))] * 64, UDP)
    assert got(f64, LINUX, "qemu-software") == (h(V6_SRC, V6_DST, PORTS), "UDPv6")


def test_truncated_ext_header_still_hashed():
    f = eth(ETH_P_IPV6) + ipv6(HBH, opts_header(TCP, opt_pad(6)))[:40 + 4]
    diverges("truncated-ext-header-still-hashed", f, LINUX, NONE, (h(V6_SRC, V6_DST), "IPv6"))
    # fewer than the two bytes of next header and length: QEMU gives up too
    assert got(f[:14 + 41], LINUX, "qemu-software") == NONE


def test_mobility_header_is_ext_header():
    f = _v6([(MH, plain_ext(0))], TCP)
    diverges("mobility-header-is-ext-header", f, LINUX, (h(V6_SRC, V6_DST), "IPv6"),
             (h(V6_SRC, V6_DST, PORTS), "TCPv6"))


def test_hao_from_last_dstopts_header():
    f = _v6([_hao_dst(), _dst(opt_pad(6))], TCP)
    diverges("hao-from-last-dstopts-header", f, ALL, (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX"),
             (h(V6_SRC, V6_DST, PORTS), "TCPv6_EX"))
    f = _v6([_hao_dst(V6_HOA), _hao_dst(V6_HOA2)], TCP)
    diverges("hao-from-last-dstopts-header", f, ALL, (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX"),
             (h(V6_HOA2, V6_DST, PORTS), "TCPv6_EX"))


def test_rh2_from_last_routing_header():
    f = _v6([_rh2(), (RT, routing(0, 0, 0, [V6_RH2B]))], UDP)
    diverges("rh2-from-last-routing-header", f, ALL, (h(V6_SRC, V6_RH2, PORTS), "UDPv6_EX"),
             (h(V6_SRC, V6_DST, PORTS), "UDPv6_EX"))
    f = _v6([_rh2(V6_RH2), _rh2(V6_RH2B)], UDP)
    diverges("rh2-from-last-routing-header", f, ALL, (h(V6_SRC, V6_RH2, PORTS), "UDPv6_EX"),
             (h(V6_SRC, V6_RH2B, PORTS), "UDPv6_EX"))


def test_hao_option_length_not_checked():
    f = _v6([_dst(opt_pad(4) + hao(length=8))], TCP)
    diverges("hao-option-length-not-checked", f, ALL, (h(V6_SRC, V6_DST, PORTS), "TCPv6_EX"),
             (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX"))


# --------------------------------------------------------------------------- qemu-ebpf


def test_qemu_ebpf_base_type_first():
    f = _v6([_hao_dst()], TCP)
    diverges("qemu-ebpf-base-type-first", f, T.TCPv6_EX | T.IPv6, (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX"),
             (h(V6_SRC, V6_DST), "IPv6"))


def test_ebpf_network_header():
    ip = ipv4(TCP, tcp() + bytes(8))
    for tags in ((0x9100,), (0x8100, 0x8100), (0x8100, 0x88A8)):
        diverges("ebpf-network-header", eth(ETH_P_IP, tags) + ip, ALL,
                 (h(V4_SRC, V4_DST, PORTS), "TCPv4"), NONE)
    # AF_PACKET (the tap path): the kernel puts the network header after the tags
    for tags in ((0x8100,), (0x88A8, 0x8100), (0x88A8, 0x88A8)):
        assert got(eth(ETH_P_IP, tags) + ip, ALL, "qemu-ebpf") == (h(V4_SRC, V4_DST, PORTS), "TCPv4")
    # BPF_PROG_TEST_RUN: always at 14, so a tagged frame's "IP header" starts at the tag's TCI
    f = eth(ETH_P_IP, (0x8100,)) + ip
    diverges("ebpf-network-header", f, ALL, (h(V4_SRC, V4_DST, PORTS), "TCPv4"),
             (h(f[26:30], f[30:34]), "IPv4"), ebpf_context="test_run")  # total length: a "fragment"
    # one 802.1ad tag: the EtherType is read 8 bytes on, in IPv4's total length field
    g = _v4_udp(tags=(0x88A8,), total=0x86DD)
    assert got(g, ALL, "spec") == (h(V4_SRC, V4_DST, PORTS), "UDPv4")
    assert got(g, ALL, "qemu-ebpf")[1] == "IPv6"  # the IPv4 packet read as IPv6
    assert rss.parse_frame(g, "qemu-ebpf").src == g[18 + 8:18 + 24]
    g = _v4_udp(tags=(0x88A8,), total=0x0800)  # ...and as IPv4 again (AF_PACKET: network header at 18)
    assert got(g, ALL, "qemu-ebpf") == (h(V4_SRC, V4_DST, PORTS), "UDPv4")
    diverges("ebpf-network-header", _v4_udp(tags=(0x88A8,)), ALL, (h(V4_SRC, V4_DST, PORTS), "UDPv4"), NONE)


def test_ebpf_ip_header_not_validated():
    diverges("ebpf-ip-header-not-validated", _v4_tcp(ihl=4), ALL, NONE, (h(V4_SRC, V4_DST, V4_DST), "TCPv4"))
    diverges("ebpf-ip-header-not-validated", _v4_tcp(version=6), ALL, NONE, (h(V4_SRC, V4_DST, PORTS), "TCPv4"))
    diverges("ebpf-ip-header-not-validated", _v6([], UDP, version=0), LINUX, NONE,
             (h(V6_SRC, V6_DST, PORTS), "UDPv6"))


def test_ebpf_truncated_l4_no_hash():
    f = _v4_tcp()[:14 + 20 + 10]
    diverges("ebpf-truncated-l4-no-hash", f, ALL, (h(V4_SRC, V4_DST), "IPv4"), NONE)
    u = _v6([], UDP)[:14 + 40 + 7]
    diverges("ebpf-truncated-l4-no-hash", u, LINUX, (h(V6_SRC, V6_DST), "IPv6"), NONE)


def test_ebpf_tcp_data_offset_not_validated():
    f = eth(ETH_P_IP) + ipv4(TCP, tcp(doff=0) + bytes(8))
    diverges("ebpf-tcp-data-offset-not-validated", f, ALL, (h(V4_SRC, V4_DST), "IPv4"),
             (h(V4_SRC, V4_DST, PORTS), "TCPv4"))


def test_ebpf_ext_header_set():
    f = _v6([(AH, ah(0, 4))], TCP)  # AH ends the walk: protocol 51, no ports
    diverges("ebpf-ext-header-set", f, LINUX, (h(V6_SRC, V6_DST, PORTS), "TCPv6"), (h(V6_SRC, V6_DST), "IPv6"))
    for t in (ICMPV6, 59, MH):  # walked as 8-byte headers: the TCP header behind them is found
        g = _v6([(t, plain_ext(0))], TCP)
        diverges("ebpf-ext-header-set", g, LINUX, (h(V6_SRC, V6_DST), "IPv6"), (h(V6_SRC, V6_DST, PORTS), "TCPv6"))


def test_ebpf_ext_chain_11():
    for n in (11, 12, 16):
        f = _v6([_dst(opt_pad(6))] * n, TCP)
        if n == 11:
            assert got(f, LINUX, "qemu-ebpf") == got(f, LINUX, "spec") == (h(V6_SRC, V6_DST, PORTS), "TCPv6")
        else:
            diverges("ebpf-ext-chain-11", f, LINUX, (h(V6_SRC, V6_DST, PORTS), "TCPv6"), (h(V6_SRC, V6_DST), "IPv6"))
    # zero bytes are an endless chain of hop-by-hop headers: after 11, protocol 0
    z = eth(ETH_P_IPV6) + ipv6(HBH, bytes(200))
    diverges("ebpf-ext-chain-11", z, LINUX, NONE, (h(V6_SRC, V6_DST), "IPv6"))


def test_ebpf_truncated_ext_header():
    f = eth(ETH_P_IPV6) + ipv6(DST, opts_header(253, opt_pad(14)))[:40 + 8]
    diverges("ebpf-truncated-ext-header", f, LINUX, NONE, (h(V6_SRC, V6_DST), "IPv6"))
    g = eth(ETH_P_IPV6) + ipv6(DST, opts_header(TCP, opt_pad(14)))[:40 + 8]
    assert got(g, LINUX, "qemu-ebpf") == NONE  # the TCP load past the end fails: no hash


def test_ebpf_hao_scan():
    for n, found in ((29, True), (30, False)):
        f = _v6([_dst(b"\0" * n + hao())], TCP)
        want = (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX") if found else (h(V6_SRC, V6_DST, PORTS), "TCPv6")
        if found:
            assert got(f, T.TCPv6 | T.TCPv6_EX, "qemu-ebpf") == want
        else:
            diverges("ebpf-hao-scan", f, T.TCPv6 | T.TCPv6_EX, (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX"), want)
    f = _v6([_dst(opt_pad(4) + hao(length=8))], TCP)
    diverges("ebpf-hao-scan", f, T.TCPv6 | T.TCPv6_EX, (h(V6_SRC, V6_DST, PORTS), "TCPv6_EX"),
             (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX"))
    f = _v6([_hao_dst(V6_HOA), _hao_dst(V6_HOA2)], UDP)
    diverges("ebpf-hao-scan", f, T.UDPv6 | T.UDPv6_EX, (h(V6_HOA, V6_DST, PORTS), "UDPv6_EX"),
             (h(V6_HOA2, V6_DST, PORTS), "UDPv6_EX"))
    f = _v6([_dst(hao(), hdrlen=0, pad=False)], 253)  # a HAO running past an 8-byte header
    diverges("ebpf-hao-scan", f, T.IPv6 | T.IPv6_EX, (h(V6_SRC, V6_DST), "IPv6_EX"), (h(V6_HOA, V6_DST), "IPv6_EX"))


def test_ebpf_rh2_last_wins():
    f = _v6([_rh2(V6_RH2), _rh2(V6_RH2B)], TCP)
    diverges("ebpf-rh2-last-wins", f, T.TCPv6 | T.TCPv6_EX, (h(V6_SRC, V6_RH2, PORTS), "TCPv6_EX"),
             (h(V6_SRC, V6_RH2B, PORTS), "TCPv6_EX"))


# --------------------------------------------------------------------------- bookkeeping


def test_af_packet_network_header_depth_limit():
    """Linux parses at most 7 VLAN tags; with 8 the network header stays at 14."""
    ip = ipv4(TCP, tcp() + bytes(8))
    seven = eth(ETH_P_IP, (0x88A8,) + (0x8100,) * 6) + ip
    eight = eth(ETH_P_IP, (0x88A8,) + (0x8100,) * 7) + ip
    # the program reads the EtherType at 20 (0x8100 there): no IP either way, but the
    # parsed network offsets differ
    assert rss._af_packet_network_offset(seven) == 14 + 28
    assert rss._af_packet_network_offset(eight) == 14


def test_every_divergence_is_tested_documented_and_marked_in_the_code():
    src = inspect.getsource(rss)
    doc = rss.__doc__
    for name, d in rss.DIVERGENCES.items():
        assert d.behaviour in ("qemu-software", "qemu-ebpf", "hashlab-ebpf"), name
        assert name in doc, f"{name} missing from the module docstring's table"
        assert f'divergence "{name}"' in src or f"Divergence \"{name}\"" in src, \
            f"{name}: no branch in rss.py is marked with it"


def test_all_divergences_have_a_test():
    here = inspect.getsource(inspect.getmodule(test_all_divergences_have_a_test))
    untested = [n for n in rss.DIVERGENCES if f'diverges("{n}"' not in here]
    assert not untested, f"divergences without a test here: {untested}"


def test_parse_frame_behaviour_argument():
    f = _v6([_hao_dst()], TCP)
    for b in rss.BEHAVIOURS:
        info = rss.parse_frame(f, b)
        assert info.hao == V6_HOA and info.l4 == "tcp" and info.has_ext
    with pytest.raises(ValueError, match="behaviour"):
        rss.parse_frame(f, "linux")
    with pytest.raises(ValueError, match="ebpf_context"):
        rss.hash_packet(f, K, ALL, "qemu-ebpf", ebpf_context="xdp")
    assert rss.hash_info(None, K, ALL) == (0, 0)
    for b in rss.BEHAVIOURS:
        assert rss.hash_info(rss.parse_frame(f, b), K, ALL, b) == rss.hash_packet(f, K, ALL, b)


# --------------------------------------------------------------------------- hashlab-ebpf


def test_hashlab_ebpf_hao_30_options():
    """hashlab's program looks at most 30 options deep for a HAO (Pad1 counts)."""
    ex = T.TCPv6 | T.TCPv6_EX
    for n in (0, 4, 29):  # the HAO is option n + 1 <= 30: found
        f = _v6([_dst(b"\0" * n + hao())], TCP)
        assert got(f, ex, "hashlab-ebpf") == got(f, ex, "spec") == (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX")
    for n in (30, 31, 40):  # option 31 or later: the source address is hashed, still TCPv6_EX
        f = _v6([_dst(b"\0" * n + hao())], TCP)
        diverges("hashlab-ebpf-hao-30-options", f, ex, (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX"),
                 (h(V6_SRC, V6_DST, PORTS), "TCPv6_EX"))
    f = _v6([_dst(opt_pad(2) * 30 + hao())], UDP)  # zero-length PadN count too
    diverges("hashlab-ebpf-hao-30-options", f, T.UDPv6_EX, (h(V6_HOA, V6_DST, PORTS), "UDPv6_EX"),
             (h(V6_SRC, V6_DST, PORTS), "UDPv6_EX"))
    # only the scan is bounded: a second dstopts header is scanned afresh
    f = _v6([_dst(b"\0" * 30 + hao(V6_HOA)), _hao_dst(V6_HOA2)], TCP)
    diverges("hashlab-ebpf-hao-30-options", f, ex, (h(V6_HOA, V6_DST, PORTS), "TCPv6_EX"),
             (h(V6_HOA2, V6_DST, PORTS), "TCPv6_EX"))


def test_hashlab_ebpf_is_spec_elsewhere():
    """Everything but the named bounds is the spec, the 16-header chain limit included."""
    for f in [_v6([_dst(opt_pad(6))] * 16, TCP), _v6([_dst(opt_pad(6))] * 17, TCP),
              _v6([_rh2(), _hao_dst()], UDP), eth(ETH_P_IPV6) + ipv6(HBH, bytes(200))]:
        for types in (ALL, LINUX, T.IPv6_EX):
            assert got(f, types, "hashlab-ebpf") == got(f, types, "spec")
