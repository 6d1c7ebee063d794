"""Encapsulated frames for the inner header hash (``oracle.tunnel``): every type hashlab
implements, inner IPv4 and IPv6 with TCP, UDP and another protocol, frames that look
like a tunnel but are not one, and hostile ones (cut headers, nested encapsulation).

Each :class:`TunnelFrame` says which types its builder meant it to match (``types``),
stated here independently of the oracle's classifier so that the tests can hold one
against the other.  Frames are deterministic for a seed (addresses and ports come from
it, structure never does), unique byte for byte (the innermost payload, or the
trailer, carries ``HLAB`` + id as in the main corpus), and built with scapy.

The Linux guest does not negotiate VIRTIO_NET_F_HASH_TUNNEL: these frames are for the
qtest driver (hashlab.vdrv), which is the guest there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from ..oracle.tunnel import UDP_PORTS, TunnelType
from .packets import GUEST_MAC, HOST_MAC, marker

__all__ = ["TunnelFrame", "tunnel_frames", "KINDS"]

T = TunnelType


@dataclass(frozen=True)
class TunnelFrame:
    id: int
    kind: str  # the encapsulation as built: vxlan, gre-key, ..., or not-*/hostile-*
    desc: str
    data: bytes
    types: int  # the TunnelType bits this outer header matches (0: not a tunnel)
    inner_hashable: bool = True  # False: matched, but no hash is defined for the inner packet


def _S():
    # Imported lazily, as in frames.packets: scapy is slow to import.
    from scapy.contrib.geneve import GENEVE  # noqa: F401
    from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP  # noqa: F401
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6  # noqa: F401
    from scapy.layers.l2 import ARP, Ether  # noqa: F401
    from scapy.layers.vxlan import VXLAN  # noqa: F401
    from scapy.packet import Raw  # noqa: F401

    return locals()


def _inners(S, rng: random.Random):
    """(name, L3 packet builder, ethertype) for the six inner packets."""
    IP, IPv6, TCP, UDP, ICMP, ICMP6 = (S["IP"], S["IPv6"], S["TCP"], S["UDP"], S["ICMP"],
                                       S["ICMPv6EchoRequest"])

    def v4():
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def v6():
        return "fd00:" + ":".join(f"{rng.randrange(0x10000):x}" for _ in range(7))

    def port():
        return rng.randrange(1024, 65536)

    return [
        ("ipv4-tcp", lambda: IP(src=v4(), dst=v4()) / TCP(sport=port(), dport=port()), 0x0800),
        ("ipv4-udp", lambda: IP(src=v4(), dst=v4()) / UDP(sport=port(), dport=port()), 0x0800),
        ("ipv4-icmp", lambda: IP(src=v4(), dst=v4()) / ICMP(), 0x0800),
        ("ipv6-tcp", lambda: IPv6(src=v6(), dst=v6()) / TCP(sport=port(), dport=port()), 0x86DD),
        ("ipv6-udp", lambda: IPv6(src=v6(), dst=v6()) / UDP(sport=port(), dport=port()), 0x86DD),
        ("ipv6-icmp", lambda: IPv6(src=v6(), dst=v6()) / ICMP6(), 0x86DD),
    ]


# The encapsulations: (kind, types, inner layer: "l2" or "l3", outer builder(inner, proto)).
def _encaps(S, rng: random.Random):
    Ether, IP, IPv6, UDP, GRE, VXLAN, GENEVE, Raw = (S["Ether"], S["IP"], S["IPv6"], S["UDP"],
                                                      S["GRE"], S["VXLAN"], S["GENEVE"],
                                                      S["Raw"])

    def o4(**kw):
        return IP(src=f"192.0.2.{rng.randrange(1, 255)}",
                  dst=f"198.51.100.{rng.randrange(1, 255)}", **kw)

    def o6():
        return IPv6(src=f"2001:db8::{rng.randrange(1, 0xffff):x}",
                    dst=f"2001:db8:1::{rng.randrange(1, 0xffff):x}")

    def eth():
        return Ether(src=HOST_MAC, dst=GUEST_MAC)

    def sport():
        return rng.randrange(49152, 65536)

    def key():
        return rng.randrange(1 << 32)

    def gre(**kw):
        return lambda inner, proto: GRE(proto=proto, **kw) / inner

    def over(outer, enc):
        return lambda inner, proto: eth() / outer() / enc(inner, proto)

    def udp(port, hdr):
        return lambda inner, proto: UDP(sport=sport(), dport=port) / hdr(proto) / inner

    vxlan = lambda proto: VXLAN(flags=0x08, vni=rng.randrange(1 << 24))  # noqa: E731
    gpe_next = {0x0800: 1, 0x86DD: 2, 0x6558: 3}
    gpe = lambda proto: VXLAN(flags=0x0C, NextProtocol=gpe_next[proto],  # noqa: E731
                              vni=rng.randrange(1 << 24))
    geneve = lambda proto: GENEVE(proto=proto, vni=rng.randrange(1 << 24))  # noqa: E731

    def geneve_opts(proto):
        # 8 bytes of options: one TLV (class, type, length 1 word) and its word
        return GENEVE(proto=proto, vni=rng.randrange(1 << 24), optionlen=2,
                      options=bytes.fromhex("0102800103040506"))

    return [
        ("gre", T.GRE_2784, "l3", over(o4, gre())),
        ("gre-csum", T.GRE_2784, "l3", over(o4, gre(chksum_present=1))),
        ("gretap", T.GRE_2784, "l2", over(o4, gre())),
        ("gre-key", T.GRE_2890, "l3", over(o4, lambda i, p: GRE(proto=p, key_present=1,
                                                                  key=key()) / i)),
        ("gre-seq", T.GRE_2890, "l3", over(o4, lambda i, p: GRE(
            proto=p, seqnum_present=1, sequence_number=rng.randrange(1 << 32)) / i)),
        ("gre-csum-key-seq", T.GRE_2890, "l3", over(o4, lambda i, p: GRE(
            proto=p, chksum_present=1, key_present=1, key=key(), seqnum_present=1,
            sequence_number=rng.randrange(1 << 32)) / i)),
        ("gre6", T.GRE_7676, "l3", over(o6, gre())),
        ("gre6-key", T.GRE_7676, "l3", over(o6, lambda i, p: GRE(proto=p, key_present=1,
                                                                   key=key()) / i)),
        ("nvgre", T.NVGRE | T.GRE_2890, "l2", over(o4, lambda i, p: GRE(
            proto=p, key_present=1, key=key() & ~0xFF) / i)),
        ("nvgre6", T.NVGRE | T.GRE_7676, "l2", over(o6, lambda i, p: GRE(
            proto=p, key_present=1, key=key() & ~0xFF) / i)),
        ("gre-udp", T.GRE_UDP, "l3", over(o4, lambda i, p: UDP(
            sport=sport(), dport=UDP_PORTS[T.GRE_UDP]) / GRE(proto=p) / i)),
        ("vxlan", T.VXLAN, "l2", over(o4, udp(UDP_PORTS[T.VXLAN], vxlan))),
        ("vxlan6", T.VXLAN, "l2", over(o6, udp(UDP_PORTS[T.VXLAN], vxlan))),
        ("vxlan-gpe", T.VXLAN_GPE, "l3", over(o4, udp(UDP_PORTS[T.VXLAN_GPE], gpe))),
        ("vxlan-gpe-eth", T.VXLAN_GPE, "l2", over(o4, udp(UDP_PORTS[T.VXLAN_GPE], gpe))),
        ("geneve", T.GENEVE, "l2", over(o4, udp(UDP_PORTS[T.GENEVE], geneve))),
        ("geneve-opts", T.GENEVE, "l2", over(o6, udp(UDP_PORTS[T.GENEVE], geneve_opts))),
        ("geneve-l3", T.GENEVE, "l3", over(o4, udp(UDP_PORTS[T.GENEVE], geneve))),
        ("ipip", T.IPIP, "l3v4", lambda inner, proto: eth() / o4() / inner),
    ], Raw, eth, o4, o6, sport


# The encapsulations, in the order tunnel_frames builds them.
KINDS = ("gre", "gre-csum", "gretap", "gre-key", "gre-seq", "gre-csum-key-seq", "gre6",
         "gre6-key", "nvgre", "nvgre6", "gre-udp", "vxlan", "vxlan6", "vxlan-gpe",
         "vxlan-gpe-eth", "geneve", "geneve-opts", "geneve-l3", "ipip")


@lru_cache(maxsize=4)
def tunnel_frames(seed: int = 0) -> tuple[TunnelFrame, ...]:
    """The set for SEED (byte-identical for the same seed)."""
    S = _S()
    rng = random.Random(f"tunnels-{seed}")
    IP, UDP, GRE, VXLAN, GENEVE, ARP = (S["IP"], S["UDP"], S["GRE"], S["VXLAN"], S["GENEVE"],
                                        S["ARP"])
    inners = _inners(S, rng)
    encaps, Raw, eth, o4, o6, sport = _encaps(S, rng)
    assert tuple(e[0] for e in encaps) == KINDS
    out: list[TunnelFrame] = []

    def add(kind, desc, build, types, hashable=True, cut=None):
        fid = len(out)
        pkt = build(fid)
        data = bytes(pkt)
        if cut is not None:
            data = data[:cut(data)]
        out.append(TunnelFrame(fid, kind, desc, data, int(types), hashable))

    for kind, types, layer, outer in encaps:
        for name, l3, ethertype in inners:
            if layer == "l3v4" and ethertype != 0x0800:
                continue
            if layer == "l2":
                add(kind, f"{kind}, inner Ethernet/{name}",
                    lambda fid, o=outer, b=l3: o(eth() / b() / Raw(marker(fid)), 0x6558), types)
            else:
                add(kind, f"{kind}, inner {name}",
                    lambda fid, o=outer, b=l3, p=ethertype: o(b() / Raw(marker(fid)), p), types)

    inner = inners[0][1]  # IPv4 TCP
    # Look like a tunnel, are not one: the outer header is hashed.
    add("not-udp-port", "VXLAN header to UDP port 4788", lambda fid: eth() / o4() / UDP(
        sport=sport(), dport=4788) / VXLAN(flags=0x08) / eth() / inner() / Raw(marker(fid)), 0)
    add("not-vxlan-i", "VXLAN port, I flag clear", lambda fid: eth() / o4() / UDP(
        sport=sport(), dport=4789) / VXLAN(flags=0) / eth() / inner() / Raw(marker(fid)), 0)
    add("not-geneve-v1", "GENEVE version 1", lambda fid: eth() / o4() / UDP(
        sport=sport(), dport=6081) / GENEVE(version=1, proto=0x6558) / eth() / inner()
        / Raw(marker(fid)), 0)
    add("not-gre-v1", "GRE version 1 (PPTP)", lambda fid: eth() / o4() / GRE(
        version=1, proto=0x0800) / inner() / Raw(marker(fid)), 0)
    add("not-gre-routing", "GRE with the R bit (RFC 1701 routing)", lambda fid: eth() / o4()
        / GRE(routing_present=1, proto=0x0800) / inner() / Raw(marker(fid)), 0)
    add("not-ipip-6in4", "IPv6 in IPv4 (protocol 41): not RFC 2003", lambda fid: eth() / o4()
        / inners[3][1]() / Raw(marker(fid)), 0)
    add("not-ipip-4in6", "IPv4 in IPv6 (next header 4): not RFC 2003", lambda fid: eth() / o6()
        / inner() / Raw(marker(fid)), 0)
    add("not-fragment", "VXLAN in an IPv4 first fragment (MF)", lambda fid: eth() / IP(
        src="192.0.2.9", dst="198.51.100.9", flags="MF") / UDP(sport=sport(), dport=4789)
        / VXLAN(flags=0x08) / eth() / inner() / Raw(marker(fid)), 0)
    # Hostile: cut, nested, unhashable inner packets.
    vx = lambda fid, payload: (eth() / o4() / UDP(sport=sport(), dport=4789)  # noqa: E731
                               / VXLAN(flags=0x08) / payload)
    add("hostile-vxlan-cut", "VXLAN header cut after 4 bytes: not a tunnel",
        lambda fid: eth() / o4() / UDP(sport=sport(), dport=4789) / Raw(b"\x08\0\0\0"), 0)
    add("hostile-gre-key-cut", "GRE with K, cut before the key: not a tunnel",
        lambda fid: eth() / o4(proto=47) / Raw(b"\x20\x00\x08\x00\x00\x01"), 0)
    add("hostile-geneve-opts-cut", "GENEVE options longer than the frame: not a tunnel",
        lambda fid: eth() / o4() / UDP(sport=sport(), dport=6081) / Raw(
            bytes([0x3F, 0, 0x65, 0x58, 0, 0, 1, 0]) + marker(fid)), 0)
    add("hostile-inner-ip-cut", "VXLAN, inner IPv4 header cut: matched, no inner hash",
        lambda fid: vx(fid, eth() / inner()), T.VXLAN, False,
        cut=lambda d: 14 + 20 + 8 + 8 + 14 + 12)
    add("hostile-inner-tcp-cut", "VXLAN, inner TCP header cut: inner IPv4 address hash",
        lambda fid: vx(fid, eth() / inner()), T.VXLAN,
        cut=lambda d: 14 + 20 + 8 + 8 + 14 + 20 + 10)
    add("hostile-inner-arp", "VXLAN, inner ARP: matched, no hash",
        lambda fid: vx(fid, eth() / ARP(psrc="10.0.0.1", pdst="10.0.0.2") / Raw(marker(fid))),
        T.VXLAN, False)
    add("hostile-gre-mpls", "GRE, inner MPLS (0x8847): matched, no hash", lambda fid: eth()
        / o4() / GRE(proto=0x8847) / Raw(bytes.fromhex("0001f140") + marker(fid)),
        T.GRE_2784, False)
    add("hostile-gpe-nsh", "VXLAN-GPE, next protocol NSH: matched, no hash", lambda fid: eth()
        / o4() / UDP(sport=sport(), dport=4790) / VXLAN(flags=0x0C, NextProtocol=4)
        / Raw(bytes(8) + marker(fid)), T.VXLAN_GPE, False)
    add("hostile-nested-vxlan", "VXLAN in VXLAN: one level, the middle UDP is hashed",
        lambda fid: vx(fid, eth() / o4() / UDP(sport=sport(), dport=4789) / VXLAN(flags=0x08)
                       / eth() / inner() / Raw(marker(fid))), T.VXLAN)
    add("hostile-nested-gre-ipip", "GRE carrying IPIP: the IPIP header is hashed",
        lambda fid: eth() / o4() / GRE(proto=0x0800) / IP(src="10.9.9.1", dst="10.9.9.2")
        / inner() / Raw(marker(fid)), T.GRE_2784)
    frames = tuple(out)
    assert len({f.data for f in frames}) == len(frames), "tunnel frames must be unique"
    return frames
