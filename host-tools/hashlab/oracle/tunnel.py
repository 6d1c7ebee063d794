"""The inner header hash (virtio 1.3, VIRTIO_NET_F_HASH_TUNNEL), in pure Python.

The spec (device-types/net/description.tex, "Inner Header Hash" and "Encapsulated
packet"):

    If VIRTIO_NET_F_HASH_TUNNEL is negotiated and a received encapsulated packet's outer
    header matches one of the encapsulation types enabled in enabled_tunnel_types, then
    the device uses the inner header for hash calculations (only a single level of
    encapsulation is currently supported).  [...] a received packet's (outer) header [that]
    does not match any encapsulation types enabled [...] the device uses the outer header.

It names nine types by reference and says no more of what "matches" means; the rules
below are hashlab's reading of the references, one each, and every hashlab component
(QEMU's software path and eBPF program, tun, the qtest driver's corpus) follows them:

* an outer header is one the spec parser (``rss.parse_frame``) takes: Ethernet, up to two
  VLAN tags, IPv4 or IPv6 with its extension headers.  A fragment never matches
  (``outer-fragment-not-encapsulated``): its first fragment's inner packet is cut, the
  others carry no tunnel header;
* GRE (RFC 2784/2890): version 0 and the reserved flag bits (R, s, Recur, Flags) zero, the
  header with its optional checksum, key and sequence words complete.  Over IPv4 without
  the key and sequence bits it is ``GRE_2784``, with either ``GRE_2890``; over IPv6 it is
  ``GRE_7676`` whatever its bits.  ``NVGRE`` (RFC 7637) is a GRE header with K set, C and S
  clear and protocol 0x6558, over either family; such a packet also matches the plain GRE
  type of its delivery (``nvgre-is-also-gre``: it is one);
* UDP tunnels are told by their IANA destination port, the only thing a receiver has
  (``tunnel-by-iana-port``): GRE-in-UDP 4754 (RFC 8086) with a valid GRE header, VXLAN 4789
  with the I flag set (RFC 7348), VXLAN-GPE 4790 with version 0 (its next protocol when P
  is set, else Ethernet), GENEVE 6081 with version 0 and its options complete;
* ``IPIP`` is RFC 2003: IPv4 in IPv4 (protocol 4) over IPv4 only (``ipip-is-rfc2003``);
  IPv6 in IPv4 and IP in IPv6 are other RFCs and do not match;
* the inner packet is an Ethernet frame (GRE protocol 0x6558, VXLAN, GENEVE 0x6558,
  VXLAN-GPE 3), or an IPv4/IPv6 packet (0x0800/0x86DD, GPE 1/2, IPIP).  It is hashed by the
  usual rules, so a truncated inner header gets the address-only type or NONE as any
  packet would, and an inner packet of another protocol (MPLS, NSH, ARP) has no hash:
  NONE, never the outer hash (``inner-unhashable-is-none``), since the spec says the inner
  header is used.  The inner packet's own encapsulation is not looked into (one level).

A header that is cut before its end does not match: the outer header is hashed.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from . import rss


class TunnelType(enum.IntFlag):
    """VIRTIO_NET_HASH_TUNNEL_TYPE_*: bits of (supported|enabled)_tunnel_types."""

    GRE_2784 = 1 << 0
    GRE_2890 = 1 << 1
    GRE_7676 = 1 << 2
    GRE_UDP = 1 << 3
    VXLAN = 1 << 4
    VXLAN_GPE = 1 << 5
    GENEVE = 1 << 6
    IPIP = 1 << 7
    NVGRE = 1 << 8


ALL_TUNNEL_TYPES = int(sum(TunnelType))
VIRTIO_NET_F_HASH_TUNNEL = 51
VIRTIO_NET_CTRL_HASH_TUNNEL = 7
VIRTIO_NET_CTRL_HASH_TUNNEL_SET = 0

# The IANA destination ports UDP tunnels are recognised by.
UDP_PORTS = {TunnelType.GRE_UDP: 4754, TunnelType.VXLAN: 4789,
             TunnelType.VXLAN_GPE: 4790, TunnelType.GENEVE: 6081}
_BY_PORT = {port: t for t, port in UDP_PORTS.items()}

IPPROTO_IPIP = 4
IPPROTO_GRE = 47
ETH_P_TEB = 0x6558  # Transparent Ethernet Bridging: an Ethernet frame follows

GRE_C, GRE_K, GRE_S = 0x8000, 0x2000, 0x1000
GRE_MUST_BE_ZERO = 0x4FF8  # R, s, Recur, Flags (RFC 2784 reserved0 but C/K/S)
GRE_VERSION = 0x0007
VXLAN_I = 0x08
GPE_P = 0x04
GPE_NEXT = {1: rss.ETH_P_IP, 2: rss.ETH_P_IPV6, 3: ETH_P_TEB}
_ETH_HEADER = bytes(12)  # addresses do not enter the hash


@dataclass(frozen=True)
class Encapsulation:
    """What the outer header of a frame is: the types it matches and the inner packet
    as an Ethernet frame (synthesised for an L3 inner packet), or None when its protocol
    is not one a hash is defined for."""

    types: int
    inner: bytes | None
    inner_offset: int  # where the inner packet starts in the frame (its L2 or L3 header)


def _inner(frame: bytes, off: int, ethertype: int) -> bytes | None:
    if ethertype == ETH_P_TEB:
        return frame[off:]
    if ethertype in (rss.ETH_P_IP, rss.ETH_P_IPV6):
        return _ETH_HEADER + struct.pack("!H", ethertype) + frame[off:]
    return None


def _gre(frame: bytes, off: int) -> tuple[int, int, int] | None:
    """A valid GRE header at OFF: (flags, protocol, where its payload starts)."""
    if len(frame) - off < 4:
        return None
    flags, proto = struct.unpack_from("!HH", frame, off)
    if flags & (GRE_MUST_BE_ZERO | GRE_VERSION):
        return None
    hlen = 4 + 4 * sum(bool(flags & b) for b in (GRE_C, GRE_K, GRE_S))
    if len(frame) - off < hlen:
        return None
    return flags, proto, off + hlen


def _udp(frame: bytes, off: int) -> Encapsulation | None:
    if len(frame) - off < rss.UDP_HEADER:
        return None
    kind = _BY_PORT.get(struct.unpack_from("!H", frame, off + 2)[0])
    p = off + rss.UDP_HEADER
    if kind is None or len(frame) - p < (4 if kind == TunnelType.GRE_UDP else 8):
        return None
    if kind == TunnelType.GRE_UDP:
        g = _gre(frame, p)
        return None if g is None else Encapsulation(int(kind), _inner(frame, g[2], g[1]), g[2])
    if kind == TunnelType.VXLAN:
        if not frame[p] & VXLAN_I:
            return None
        return Encapsulation(int(kind), frame[p + 8:], p + 8)
    if kind == TunnelType.VXLAN_GPE:
        if frame[p] & 0x30:  # version 0 only
            return None
        ethertype = GPE_NEXT.get(frame[p + 3], -1) if frame[p] & GPE_P else ETH_P_TEB
        return Encapsulation(int(kind), _inner(frame, p + 8, ethertype), p + 8)
    # GENEVE: version 0, 6-bit option length in 4-byte words, protocol type
    if frame[p] >> 6:
        return None
    q = p + 8 + 4 * (frame[p] & 0x3F)
    if len(frame) < q:
        return None
    return Encapsulation(int(kind), _inner(frame, q, struct.unpack_from("!H", frame, p + 2)[0]), q)


def classify(frame: bytes) -> Encapsulation | None:
    """The encapsulation FRAME's outer header matches (the module's rules), or None."""
    frame = bytes(frame)
    info = rss.parse_frame(frame, "spec")
    if info is None or info.fragment or info.payload < 0:
        return None
    proto, off = info.proto, info.payload
    if proto == rss.IPPROTO_UDP:
        return _udp(frame, off)
    if proto == IPPROTO_IPIP:
        if info.family != 4:
            return None
        return Encapsulation(int(TunnelType.IPIP), _inner(frame, off, rss.ETH_P_IP), off)
    if proto == IPPROTO_GRE:
        g = _gre(frame, off)
        if g is None:
            return None
        flags, ethertype, p = g
        if info.family == 6:
            types = TunnelType.GRE_7676
        else:
            types = TunnelType.GRE_2890 if flags & (GRE_K | GRE_S) else TunnelType.GRE_2784
        if flags & (GRE_C | GRE_K | GRE_S) == GRE_K and ethertype == ETH_P_TEB:
            types |= TunnelType.NVGRE
        return Encapsulation(int(types), _inner(frame, p, ethertype), p)
    return None


def header_for_hash(frame: bytes, enabled_tunnel_types: int) -> bytes | None:
    """The frame whose headers are hashed: FRAME itself when its outer header matches no
    enabled type, else its inner packet as an Ethernet frame (None: no hash at all)."""
    enc = classify(frame) if enabled_tunnel_types else None
    if enc is None or not enc.types & enabled_tunnel_types:
        return bytes(frame)
    return enc.inner


def hash_packet(frame: bytes, key: bytes, hash_types: int, enabled_tunnel_types: int = 0,
                behaviour: str = "spec") -> tuple[int, int]:
    """``(hash_value, report)`` with the inner header hash: ``rss.hash_packet`` over the
    inner packet when the outer header matches an enabled type, else over FRAME.  Which
    packet is hashed follows this module's rules for every behaviour (QEMU's software
    path and its eBPF program find the inner packet alike); how it is hashed follows
    BEHAVIOUR's (``rss.BEHAVIOURS``) with its named divergences."""
    data = header_for_hash(frame, enabled_tunnel_types)
    if data is None:
        return 0, int(rss.Report.NONE)
    return rss.hash_packet(data, key, hash_types, behaviour)


def expect(cfg: rss.RssConfig, frame: bytes, enabled_tunnel_types: int = 0) -> rss.Expectation:
    """What a device configured with CFG (its behaviour too) and ENABLED_TUNNEL_TYPES
    delivers for FRAME."""
    h, r = hash_packet(frame, cfg.key, cfg.hash_types, enabled_tunnel_types, cfg.behaviour)
    return rss.Expectation(h, r, rss.select_queue(h, r, cfg.table, cfg.unclassified_queue),
                           rss.Report(r).is_l4)
