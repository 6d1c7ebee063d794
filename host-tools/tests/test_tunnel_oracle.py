"""The inner header hash oracle (hashlab.oracle.tunnel) over the encapsulated frames
(hashlab.frames.tunnels), held against scapy's own dissection of the same bytes."""

from collections import Counter

import pytest
import scapy.contrib.geneve  # noqa: F401  (binds UDP 6081 for the dissection)
from scapy.layers.inet import GRE, IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from hashlab.frames.tunnels import KINDS, tunnel_frames
from hashlab.oracle import rss, tunnel
from hashlab.oracle.tunnel import ALL_TUNNEL_TYPES, TunnelType

FRAMES = tunnel_frames(0)
KEY = rss.MS_KEY
TYPES = rss.ALL_TYPES


def test_the_constants_are_the_spec_s():
    # description.tex: VIRTIO_NET_HASH_TUNNEL_TYPE_*, the feature and the command
    assert [int(t) for t in TunnelType] == [1 << i for i in range(9)]
    assert [t.name for t in TunnelType] == ["GRE_2784", "GRE_2890", "GRE_7676", "GRE_UDP",
                                            "VXLAN", "VXLAN_GPE", "GENEVE", "IPIP", "NVGRE"]
    assert (tunnel.VIRTIO_NET_F_HASH_TUNNEL, tunnel.VIRTIO_NET_CTRL_HASH_TUNNEL,
            tunnel.VIRTIO_NET_CTRL_HASH_TUNNEL_SET) == (51, 7, 0)


def test_every_type_and_inner_packet_is_in_the_set():
    kinds = Counter(f.kind for f in FRAMES)
    assert set(KINDS) <= set(kinds)
    covered = 0
    for f in FRAMES:
        covered |= f.types
    assert covered == ALL_TUNNEL_TYPES
    inner = Counter(f.desc.rsplit("/", 1)[-1].rsplit(" ", 1)[-1] for f in FRAMES
                    if f.kind in KINDS)
    for name in ("ipv4-tcp", "ipv4-udp", "ipv4-icmp", "ipv6-tcp", "ipv6-udp", "ipv6-icmp"):
        assert inner[name] >= 10, (name, inner)
    assert sum(not f.types for f in FRAMES) >= 8  # look like tunnels, are not
    assert len({f.data for f in FRAMES}) == len(FRAMES)
    assert tunnel_frames(0) == FRAMES and tunnel_frames(1) != FRAMES


@pytest.mark.parametrize("f", FRAMES, ids=[f"{f.id}-{f.kind}" for f in FRAMES])
def test_the_classifier_matches_what_the_frame_was_built_as(f):
    enc = tunnel.classify(f.data)
    assert (enc.types if enc else 0) == f.types, f.desc


def _scapy_inner(data: bytes) -> bytes | None:
    """The inner packet by scapy's dissection: the payload of the first GRE, VXLAN or
    GENEVE layer, or IPIP's inner IPv4; an L3 packet gets an Ethernet header."""
    pkt = Ether(data)
    layer = pkt
    while layer and not isinstance(layer, (GRE, VXLAN, scapy.contrib.geneve.GENEVE)):
        if isinstance(layer, IP) and isinstance(layer.payload, IP):
            break  # IPIP: the payload is the inner packet
        layer = layer.payload
    inner = layer.payload
    raw = bytes(inner)
    if isinstance(inner, IP):
        return bytes(12) + b"\x08\x00" + raw
    if isinstance(inner, IPv6):
        return bytes(12) + b"\x86\xdd" + raw
    return raw


MATCHED = [f for f in FRAMES if f.types]


@pytest.mark.parametrize("f", MATCHED, ids=[f"{f.id}-{f.kind}" for f in MATCHED])
def test_an_enabled_type_hashes_the_inner_packet_a_disabled_one_the_outer(f):
    outer = rss.hash_packet(f.data, KEY, TYPES)
    if f.inner_hashable:
        inner = rss.hash_packet(_scapy_inner(f.data), KEY, TYPES)
        assert inner[1] != rss.Report.NONE, f.desc
    else:
        inner = (0, int(rss.Report.NONE))
    for bit in TunnelType:
        want = inner if f.types & bit else outer
        assert tunnel.hash_packet(f.data, KEY, TYPES, int(bit)) == want, (f.desc, bit.name)
    assert tunnel.hash_packet(f.data, KEY, TYPES, ALL_TUNNEL_TYPES & ~f.types) == outer
    assert tunnel.hash_packet(f.data, KEY, TYPES, 0) == outer
    assert tunnel.hash_packet(f.data, KEY, TYPES, ALL_TUNNEL_TYPES) == inner


@pytest.mark.parametrize("f", [f for f in FRAMES if not f.types],
                         ids=[f"{f.id}-{f.kind}" for f in FRAMES if not f.types])
def test_what_is_not_a_tunnel_is_hashed_over_its_outer_header(f):
    assert tunnel.hash_packet(f.data, KEY, TYPES, ALL_TUNNEL_TYPES) == \
        rss.hash_packet(f.data, KEY, TYPES)


def test_one_level_only():
    nested = next(f for f in FRAMES if f.kind == "hostile-nested-vxlan")
    h, r = tunnel.hash_packet(nested.data, KEY, TYPES, ALL_TUNNEL_TYPES)
    assert r == rss.Report.UDPv4  # the middle packet's UDP to 4789, not the inner TCP
    ipip = next(f for f in FRAMES if f.kind == "hostile-nested-gre-ipip")
    assert tunnel.hash_packet(ipip.data, KEY, TYPES, ALL_TUNNEL_TYPES)[1] == rss.Report.IPv4


def test_the_inner_hash_follows_the_hash_types_and_the_queue_the_table():
    f = next(f for f in FRAMES if f.kind == "vxlan" and "ipv6-tcp" in f.desc)
    v6 = rss.HashType.IPv6
    assert tunnel.hash_packet(f.data, KEY, int(v6), int(TunnelType.VXLAN))[1] == \
        rss.Report.IPv6
    # the outer header is IPv4 UDP: with only IPv6 types enabled, no hash at all
    assert tunnel.hash_packet(f.data, KEY, int(v6), 0) == (0, int(rss.Report.NONE))
    cfg = rss.RssConfig(key=KEY, hash_types=TYPES, table=[0, 1, 2, 3] * 32)
    e = tunnel.expect(cfg, f.data, int(TunnelType.VXLAN))
    assert (e.report, e.queue) == (rss.Report.TCPv6, cfg.table[e.hash & 127])
    # QEMU's software path hashes the inner packet its own way: an _EX type wins without
    # extension headers (the named divergence qemu-software-ex-without-ext)
    sw = tunnel.expect(rss.RssConfig(key=KEY, hash_types=TYPES, behaviour="qemu-software"),
                       f.data, int(TunnelType.VXLAN))
    assert (sw.hash, sw.report) == (e.hash, rss.Report.TCPv6_EX)
    assert "qemu-software-ex-without-ext" in rss.DIVERGENCES


def test_malformed_input_never_raises():
    import random

    rng = random.Random(7)
    for f in FRAMES:
        for cut in range(14, len(f.data), 3):
            tunnel.hash_packet(f.data[:cut], KEY, TYPES, ALL_TUNNEL_TYPES)
        flipped = bytearray(f.data)
        for _ in range(4):
            flipped[rng.randrange(14, len(flipped))] ^= 1 << rng.randrange(8)
        tunnel.hash_packet(bytes(flipped), KEY, TYPES, ALL_TUNNEL_TYPES)
