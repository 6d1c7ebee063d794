"""The frame corpus: determinism, identity (length / marker), coverage, pcap I/O."""

from __future__ import annotations

import collections
import ipaddress
import re

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import HAO, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting
from scapy.layers.l2 import Ether

from hashlab.frames import packets
from hashlab.oracle import rss
from hashlab.frames.packets import FULL_BASE_LEN, SLICES
from hashlab.oracle.rss import ALL_TYPES, LINUX_GUEST_TYPES, MS_KEY, Report

EXPECTED_SLICES = [
    "ipv4-tcp", "ipv4-udp", "ipv4-other", "ipv4-frag", "ipv4-options", "vlan", "ipv6-tcp",
    "ipv6-udp", "ipv6-other", "ipv6-ext", "ipv6-hao", "ipv6-rh2", "ipv6-hao-rh2", "ipv6-frag",
    "ipv6-long-chain", "non-ip", "truncated",
]


@pytest.fixture(scope="module")
def corp():
    return packets.corpus(0)


def fresh(seed):
    packets._CACHE.clear()
    return packets.corpus(seed)


def test_deterministic_and_structure_independent_of_seed():
    a = [(f.id, f.slice, f.desc, f.data) for f in fresh(3)]
    b = [(f.id, f.slice, f.desc, f.data) for f in fresh(3)]
    assert a == b
    c = [(f.id, f.slice, f.desc, f.data) for f in fresh(4)]
    assert [x[:3] + (len(x[3]),) for x in a] == [x[:3] + (len(x[3]),) for x in c]
    assert sum(x[3] != y[3] for x, y in zip(a, c)) > len(a) // 2  # content does change


def test_size_and_slices(corp):
    assert 300 <= len(corp) <= 600
    assert set(EXPECTED_SLICES) <= set(corp.slices())
    assert corp.slices() == [s for s in SLICES if s in corp.slices()]
    counts = collections.Counter(f.slice for f in corp)
    assert all(n >= 8 for n in counts.values()), counts


def test_ids_and_unique_lengths(corp):
    assert [f.id for f in corp] == list(range(len(corp)))
    lengths = [len(f.data) for f in corp]
    assert len(set(lengths)) == len(lengths)
    for f in corp:
        assert 15 <= len(f.data) <= 1514
        if f.slice == "truncated":
            assert len(f.data) < FULL_BASE_LEN
            assert packets.frame_id_from_bytes(f.data) is None
        else:
            assert len(f.data) == FULL_BASE_LEN + f.id
            assert packets.frame_id_from_bytes(f.data) == f.id
        assert corp.by_length[len(f.data)] is f
        assert corp.by_guest_len(len(f.data) - 14) is f
        assert packets.length_to_id(len(f.data)) == f.id
        assert packets.frame_id(f.data) == f.id


def test_frame_id_fallbacks():
    assert packets.frame_id(b"\x00" * 17, index=5) == packets.length_to_id(17)
    assert packets.frame_id(b"\x00" * 5000, index=5) == 5
    assert packets.frame_id(b"xxHLAB\x00\x00\x01\x02yy") == 0x102
    assert packets.frame_id_from_bytes(b"HLAB\x00") is None


def test_select(corp):
    sub = corp.select(["ipv6-hao", "truncated"])
    assert set(sub.slices()) == {"ipv6-hao", "truncated"}
    assert len(sub) == sum(f.slice in ("ipv6-hao", "truncated") for f in corp)
    assert sub.by_id[sub[0].id] is sub[0]
    assert corp.select(None) is corp
    with pytest.raises(ValueError, match="unknown corpus slice 'nope'"):
        corp.select(["nope"])


def test_every_report_reachable(corp):
    reports = collections.Counter(rss.hash_packet(f.data, MS_KEY, ALL_TYPES)[1] for f in corp)
    assert set(reports) == set(range(10)), reports
    guest = {rss.hash_packet(f.data, MS_KEY, LINUX_GUEST_TYPES)[1] for f in corp}
    assert guest == set(range(7))


def test_flows_spread_over_queues(corp):
    cfg = rss.RssConfig.equal_table(4, hash_types=LINUX_GUEST_TYPES)
    for slice_ in ("ipv4-tcp", "ipv4-udp", "ipv6-tcp", "ipv6-udp"):
        queues = collections.Counter(cfg.expect(f.data).queue for f in corp.select([slice_]))
        assert set(queues) == {0, 1, 2, 3}, (slice_, queues)


# Expected report per description under ALL_TYPES (spec); truncated/malformed by name.
def expected_all_types(desc: str) -> Report:
    d = desc.rsplit(" #", 1)[0]
    if "arp" in d or "ethertype 0x" in d or "802.3" in d:
        return Report.NONE
    if d in ("ethertype IPv4, version 6", "ipv4 IHL 4", "ethertype IPv6, version 4",
             "three VLAN tags ipv4 udp", "ipv6 17 extension headers tcp"):
        return Report.NONE
    if d in ("ipv4 header cut", "ipv6 header cut", "802.1Q tag cut", "ipv4 options cut (IHL 10)",
             "ipv6 hop-by-hop cut", "ipv6 dstopts HAO cut"):
        return Report.NONE
    if d in ("ipv4 tcp header cut", "ipv4 udp header cut", "802.1Q ipv4 tcp header cut",
             "ipv4 tcp data offset 4"):
        return Report.IPv4
    if d in ("ipv6 tcp header cut", "ipv6 udp header cut"):
        return Report.IPv6
    if d in ("ipv6 HAO, tcp header cut", "ipv6 RH2, udp header cut"):
        return Report.IPv6_EX
    v6 = "ipv6" in d
    ext = v6 and any(w in d for w in ("hop-by-hop", "dstopts", "RH2", "HAO", "routing", "AH",
                                      "fragment", "hbh"))
    frag = ("fragment" in d and "not a fragment" not in d) or "frag " in d
    words = re.findall(r"\w+", d)
    l4 = None if frag else ("tcp" if "tcp" in words else "udp" if "udp" in words else None)
    if not v6:
        return {"tcp": Report.TCPv4, "udp": Report.UDPv4, None: Report.IPv4}[l4]
    if ext:
        return {"tcp": Report.TCPv6_EX, "udp": Report.UDPv6_EX, None: Report.IPv6_EX}[l4]
    return {"tcp": Report.TCPv6, "udp": Report.UDPv6, None: Report.IPv6}[l4]


def test_reports_match_descriptions(corp):
    for f in corp:
        got = Report(rss.hash_packet(f.data, MS_KEY, ALL_TYPES)[1])
        assert got == expected_all_types(f.desc), f.desc


def layers(pkt, cls):
    out, i = [], 1
    while pkt.getlayer(cls, nb=i) is not None:
        out.append(pkt.getlayer(cls, nb=i))
        i += 1
    return out


def test_headers_consistent_per_scapy(corp):
    """Well-formed frames: IP lengths and checksums right; HAO/RH2 as scapy dissects them."""
    for f in corp:
        if f.slice in ("truncated", "malformed", "non-ip"):
            continue
        pkt = Ether(f.data)
        if IP in pkt:
            ip = pkt[IP]
            assert ip.len == len(bytes(ip)), f.desc
            chk = ip.chksum
            del ip.chksum
            assert IP(bytes(ip))[IP].chksum == chk, f.desc
        elif IPv6 in pkt:
            ip6 = pkt[IPv6]
            assert ip6.plen == len(bytes(ip6)) - 40, f.desc
            info = rss.parse_frame(f.data)
            hao = [o.hoa for d in layers(pkt, IPv6ExtHdrDestOpt) for o in d.options if isinstance(o, HAO)]
            rh2s = [r.addresses[0] for r in layers(pkt, IPv6ExtHdrRouting) if r.type == 2]
            rh2 = rh2s[0] if rh2s else None
            assert (info.hao is not None) == bool(hao), f.desc
            if hao:
                assert info.hao == ipaddress.IPv6Address(hao[0]).packed, f.desc
            if rh2 is not None:
                assert info.rh2 == ipaddress.IPv6Address(rh2).packed, f.desc
            assert (info.rh2 is not None) == (rh2 is not None), f.desc
        else:
            assert f.slice == "vlan" and "arp" in f.desc


def test_hao_rh2_slices_have_them(corp):
    for f in corp:
        info = rss.parse_frame(f.data)
        if f.slice in ("ipv6-hao", "ipv6-hao-rh2"):
            assert info.hao is not None, f.desc
        if f.slice in ("ipv6-rh2", "ipv6-hao-rh2"):
            assert info.rh2 is not None, f.desc
        if f.slice == "ipv6-ext":
            assert info.has_ext and info.hao is None and info.rh2 is None, f.desc


def test_pcap_roundtrip(tmp_path, corp):
    path = tmp_path / "c.pcap"
    assert packets.write_pcap(corp, path) == len(corp)
    back = packets.read_pcap(path)
    assert back == [f.data for f in corp]
    packets.write_pcap([b"\x01" * 20], path)
    assert packets.read_pcap(path) == [b"\x01" * 20]


def test_read_pcap_errors(tmp_path):
    with pytest.raises(packets.PcapError, match="cannot read"):
        packets.read_pcap(tmp_path / "missing.pcap")
    bad = tmp_path / "bad.pcap"
    bad.write_text("hello, not a pcap\n")
    with pytest.raises(packets.PcapError, match="not a pcap"):
        packets.read_pcap(bad)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(packets.PcapError):
        packets.read_pcap(empty)


def test_read_pcap_truncated_and_pcapng(tmp_path, corp):
    path = tmp_path / "c.pcap"
    packets.write_pcap(corp.select(["ipv4-tcp"]), path)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(packets.PcapError, match="truncated"):
        packets.read_pcap(cut)
    from scapy.utils import PcapNgWriter

    ng = tmp_path / "c.pcapng"
    w = PcapNgWriter(str(ng))
    for f in corp.select(["ipv6-rh2"]):
        w.write(Ether(f.data))
    w.close()
    assert packets.read_pcap(ng) == [f.data for f in corp.select(["ipv6-rh2"])]
