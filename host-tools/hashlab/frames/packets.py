"""The frame corpus: a deterministic, seeded set of Ethernet frames covering every
hash report type and the parsing edges (VLAN, IPv4 options/fragments, IPv6 extension
headers, HAO/RH2, truncated and malformed frames, non-IP).

Frame identity rules (the guest only sees ``skb->len`` = frame length - 14):

* Ids are 0..N-1 in corpus order.  Every frame has a **unique total length**.
* Full frames are padded to exactly ``FULL_BASE_LEN + id`` bytes (256 + id).
* Truncated frames (slice ``truncated``) are shorter than 256 bytes, unique among
  themselves; they carry no payload and so no marker.
* Frames with a payload start it with ``b"HLAB" + id (u32 big-endian)``; for non-IP
  frames without a payload field (ARP) the marker is the frame's trailer.
* Ids, slices, descriptions and lengths do **not** depend on the seed; only addresses,
  ports and other field values do.  So ``length_to_id()`` works for any seed.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Iterable, overload

__all__ = [
    "CorpusFrame",
    "Corpus",
    "corpus",
    "SLICES",
    "MARKER",
    "FULL_BASE_LEN",
    "GUEST_MAC",
    "HOST_MAC",
    "frame_id_from_bytes",
    "length_to_id",
    "frame_id",
    "write_pcap",
    "read_pcap",
    "PcapError",
]

MARKER = b"HLAB"
FULL_BASE_LEN = 256
MIN_FRAME_LEN = 15
MAX_FRAME_LEN = 1514
GUEST_MAC = "52:54:00:12:34:56"  # QEMU's default guest MAC
HOST_MAC = "02:68:6c:61:62:01"  # locally administered

SLICES = (
    "ipv4-tcp",
    "ipv4-udp",
    "ipv4-other",
    "ipv4-options",
    "ipv4-frag",
    "vlan",
    "ipv6-tcp",
    "ipv6-udp",
    "ipv6-other",
    "ipv6-ext",
    "ipv6-hao",
    "ipv6-rh2",
    "ipv6-hao-rh2",
    "ipv6-frag",
    "ipv6-long-chain",
    "non-ip",
    "malformed",
    "truncated",
)


class PcapError(ValueError):
    """A file that cannot be read as a pcap of Ethernet frames."""


@dataclass(frozen=True)
class CorpusFrame:
    id: int
    slice: str
    desc: str
    data: bytes

    def __len__(self) -> int:
        return len(self.data)


class Corpus(Sequence):
    """An ordered, immutable sequence of :class:`CorpusFrame` (``corpus[i]`` is the
    i-th frame of this selection, not necessarily id i; use ``by_id``)."""

    def __init__(self, frames: Iterable[CorpusFrame], seed: int = 0):
        self._frames = tuple(frames)
        self.seed = seed
        self.by_length: dict[int, CorpusFrame] = {}
        self.by_id: dict[int, CorpusFrame] = {}
        for f in self._frames:
            if len(f.data) in self.by_length:
                raise AssertionError(
                    f"corpus frames {self.by_length[len(f.data)].id} and {f.id} share length {len(f.data)}"
                )
            self.by_length[len(f.data)] = f
            self.by_id[f.id] = f

    @overload
    def __getitem__(self, i: int) -> CorpusFrame: ...
    @overload
    def __getitem__(self, i: slice) -> "Corpus": ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return Corpus(self._frames[i], self.seed)
        return self._frames[i]

    def __len__(self) -> int:
        return len(self._frames)

    def slices(self) -> list[str]:
        """The slice names present, in corpus order."""
        seen: dict[str, None] = {}
        for f in self._frames:
            seen.setdefault(f.slice, None)
        return list(seen)

    def select(self, slices: Iterable[str] | None) -> "Corpus":
        """The frames of the named slices (all when ``None``); unknown names → ValueError."""
        if slices is None:
            return self
        wanted = list(slices)
        unknown = [s for s in wanted if s not in SLICES]
        if unknown:
            raise ValueError(f"unknown corpus slice {unknown[0]!r}; valid: {', '.join(SLICES)}")
        return Corpus((f for f in self._frames if f.slice in wanted), self.seed)

    def by_guest_len(self, guest_len: int) -> CorpusFrame | None:
        """The frame a guest saw as ``skb->len`` (frame length - 14), if any."""
        return self.by_length.get(guest_len + 14)

    def __repr__(self) -> str:
        return f"<Corpus seed={self.seed} frames={len(self)} slices={len(self.slices())}>"


# --------------------------------------------------------------------------- helpers


def frame_id_from_bytes(data: bytes) -> int | None:
    """The id in the frame's ``HLAB`` marker, or ``None`` when there is none."""
    i = bytes(data).find(MARKER)
    if i < 0 or i + 8 > len(data):
        return None
    return struct.unpack_from("!I", data, i + 4)[0]


def marker(frame_id: int) -> bytes:
    return MARKER + struct.pack("!I", frame_id)


# --------------------------------------------------------------------------- builders
#
# Each template is (slice, desc, build) where build(rng, id) returns a function
# payload -> frame bytes (the payload is the marker plus padding), or, for truncated
# frames, (slice, desc, build, lo, hi): the full frame is cut to a length in [lo, hi).


def _scapy():
    # Imported lazily: scapy is slow to import and only the corpus needs it.
    from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP  # noqa: F401
    from scapy.layers.inet6 import (  # noqa: F401
        HAO,
        ICMPv6EchoRequest,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
        PadN,
    )
    from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether  # noqa: F401
    from scapy.packet import Raw  # noqa: F401

    return locals()


class _Gen:
    """Random field values from one seeded RNG (structure never depends on it)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def v4(self) -> str:
        r = self.rng
        return f"{r.choice((10, 172, 192, 198, 203))}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"

    def v6(self) -> str:
        r = self.rng
        groups = [r.randrange(0x10000) for _ in range(6)]
        return "2001:db8:" + ":".join(f"{g:x}" for g in groups)

    def port(self) -> int:
        return self.rng.randrange(1024, 65536)

    def sport_dport(self) -> tuple[int, int]:
        r = self.rng
        well_known = (22, 53, 80, 443, 4739, 5201, 8080, 9000)
        return self.port(), (r.choice(well_known) if r.random() < 0.5 else self.port())

    def ident(self) -> int:
        return self.rng.randrange(1, 0x10000)


def _build_templates(g: _Gen, dst_mac: str) -> list[tuple]:
    S = _scapy()
    Ether, Dot1Q, Dot1AD, ARP = S["Ether"], S["Dot1Q"], S["Dot1AD"], S["ARP"]
    IP, TCP, UDP, ICMP, GRE = S["IP"], S["TCP"], S["UDP"], S["ICMP"], S["GRE"]
    IPv6, HBH, DST = S["IPv6"], S["IPv6ExtHdrHopByHop"], S["IPv6ExtHdrDestOpt"]
    RT, FRAG, HAO, PadN = S["IPv6ExtHdrRouting"], S["IPv6ExtHdrFragment"], S["HAO"], S["PadN"]
    ICMP6, Raw = S["ICMPv6EchoRequest"], S["Raw"]

    def eth(type_=None):
        return Ether(dst=dst_mac, src=HOST_MAC) if type_ is None else Ether(dst=dst_mac, src=HOST_MAC, type=type_)

    def raw(p):
        return lambda payload: bytes(p / Raw(payload))

    templates: list[tuple] = []

    def add(slice_, desc, n, make):
        for k in range(n):
            templates.append((slice_, f"{desc} #{k}", make))

    # Every make(g) draws its random values when called (in corpus order) and returns
    # payload -> bytes.

    def l4_for(proto):
        if proto == "tcp":
            sp, dp = g.sport_dport()
            return TCP(sport=sp, dport=dp, flags="PA", seq=g.rng.randrange(1 << 32))
        if proto == "udp":
            sp, dp = g.sport_dport()
            return UDP(sport=sp, dport=dp)
        if proto == "icmp":
            return ICMP(type=8, id=g.ident(), seq=g.rng.randrange(1 << 16))
        if proto == "icmp6":
            return ICMP6(id=g.ident(), seq=g.rng.randrange(1 << 16))
        if proto == "gre":
            return GRE(proto=0x88B5)  # payload: the marker, not a real packet
        raise AssertionError(proto)

    # ---- IPv4
    def v4(proto, ip_kw=None, l2=None):
        def make():
            ip = IP(src=g.v4(), dst=g.v4(), id=g.ident(), **(ip_kw or {}))
            base = (l2() if l2 else eth()) / ip
            if proto in ("tcp", "udp", "icmp", "gre"):
                return raw(base / l4_for(proto))
            return raw(base)  # proto number set in ip_kw, raw payload

        return make

    add("ipv4-tcp", "ipv4 tcp", 48, v4("tcp"))
    add("ipv4-udp", "ipv4 udp", 48, v4("udp"))
    add("ipv4-other", "ipv4 icmp echo", 8, v4("icmp"))
    add("ipv4-other", "ipv4 gre", 8, v4("gre"))
    add("ipv4-other", "ipv4 proto 253", 8, v4(None, {"proto": 253}))

    opt_sets = [
        ("router alert", b"\x94\x04\x00\x00"),
        ("nop nop nop eol", b"\x01\x01\x01\x00"),
        ("record route 3", b"\x07\x0f\x04" + bytes(12) + b"\x00"),
        ("record route 9 (40 bytes)", b"\x07\x27\x04" + bytes(36) + b"\x00"),
    ]
    for name, opts in opt_sets:
        for proto in ("tcp", "udp"):
            add("ipv4-options", f"ipv4 options {name} {proto}", 2, v4(proto, {"options": [S_ipopt(opts)]}))
    # (S_ipopt defined below; Python resolves it at call time)

    add("ipv4-frag", "ipv4 first fragment tcp (MF)", 4, v4("tcp", {"flags": "MF", "frag": 0}))
    add("ipv4-frag", "ipv4 first fragment udp (MF)", 4, v4("udp", {"flags": "MF", "frag": 0}))
    add("ipv4-frag", "ipv4 middle fragment tcp (MF, offset)", 4, v4(None, {"flags": "MF", "frag": 185, "proto": 6}))
    add("ipv4-frag", "ipv4 last fragment udp (offset)", 4, v4(None, {"frag": 370, "proto": 17}))
    add("ipv4-frag", "ipv4 DF tcp (not a fragment)", 4, v4("tcp", {"flags": "DF"}))
    add("ipv4-frag", "ipv4 DF udp (not a fragment)", 4, v4("udp", {"flags": "DF"}))

    # ---- VLAN
    def vlan_q():
        return eth() / Dot1Q(vlan=g.rng.randrange(1, 4095))

    def vlan_ad():
        return eth() / Dot1AD(vlan=g.rng.randrange(1, 4095)) / Dot1Q(vlan=g.rng.randrange(1, 4095))

    def vlan_qq():
        return eth() / Dot1Q(vlan=g.rng.randrange(1, 4095)) / Dot1Q(vlan=g.rng.randrange(1, 4095))

    # ---- IPv6
    def v6(proto, exts=(), l2=None, nh=None):
        """exts: callables returning extension header layers, outermost first."""

        def make():
            ip = IPv6(src=g.v6(), dst=g.v6(), fl=g.rng.randrange(1 << 20))
            if nh is not None:
                ip.nh = nh
            p = (l2() if l2 else eth()) / ip
            for e in exts:
                p = p / e()
            if proto in ("tcp", "udp", "icmp6", "gre"):
                p = p / l4_for(proto)
            _fix_ah(p)
            return raw(p)

        return make

    add("vlan", "802.1Q ipv4 tcp", 4, v4("tcp", l2=vlan_q))
    add("vlan", "802.1Q ipv4 udp", 4, v4("udp", l2=vlan_q))
    add("vlan", "802.1Q ipv6 tcp", 4, v6("tcp", l2=vlan_q))
    add("vlan", "802.1Q ipv6 udp", 4, v6("udp", l2=vlan_q))
    add("vlan", "802.1ad+802.1Q ipv4 tcp", 4, v4("tcp", l2=vlan_ad))
    add("vlan", "802.1ad+802.1Q ipv6 udp", 4, v6("udp", l2=vlan_ad))
    add("vlan", "802.1Q+802.1Q ipv4 udp", 2, v4("udp", l2=vlan_qq))
    add("vlan", "802.1Q ipv4 icmp", 2, v4("icmp", l2=vlan_q))
    add("vlan", "802.1Q arp", 4, lambda: raw(vlan_q() / ARP(psrc=g.v4(), pdst=g.v4(), hwsrc=HOST_MAC)))

    add("ipv6-tcp", "ipv6 tcp", 40, v6("tcp"))
    add("ipv6-udp", "ipv6 udp", 40, v6("udp"))
    add("ipv6-other", "ipv6 icmpv6 echo", 6, v6("icmp6"))
    add("ipv6-other", "ipv6 proto 253", 4, v6(None, nh=253))
    add("ipv6-other", "ipv6 no next header (59)", 3, v6(None, nh=59))
    add("ipv6-other", "ipv6 gre", 3, v6("gre"))

    hbh = lambda: HBH(options=[PadN(optdata=b"\x00" * 4)])  # noqa: E731
    dst_pad = lambda: DST(options=[PadN(optdata=b"\x00" * 4)])  # noqa: E731
    # An unknown (skippable, type 0x1e) option of the HAO's length: not a Home Address.
    dst_other16 = lambda: DST(options=[PadN(optdata=b"\x00" * 2), S_opt(0x1E, bytes(16))])  # noqa: E731
    hao = lambda: DST(options=[HAO(hoa=g.v6())])  # noqa: E731
    rh2 = lambda: RT(type=2, segleft=1, addresses=[g.v6()])  # noqa: E731
    rh0 = lambda: RT(type=0, segleft=0, addresses=[g.v6()])  # noqa: E731
    ah = lambda: S_ah(g)  # noqa: E731
    frag_first = lambda: FRAG(offset=0, m=1, id=g.rng.randrange(1 << 32))  # noqa: E731
    frag_later = lambda: FRAG(offset=100, m=0, id=g.rng.randrange(1 << 32), nh=17)  # noqa: E731
    frag_atomic = lambda: FRAG(offset=0, m=0, id=g.rng.randrange(1 << 32))  # noqa: E731

    add("ipv6-ext", "ipv6 hop-by-hop tcp", 4, v6("tcp", [hbh]))
    add("ipv6-ext", "ipv6 hop-by-hop udp", 4, v6("udp", [hbh]))
    add("ipv6-ext", "ipv6 hop-by-hop icmpv6", 4, v6("icmp6", [hbh]))
    add("ipv6-ext", "ipv6 dstopts (pad) tcp", 4, v6("tcp", [dst_pad]))
    add("ipv6-ext", "ipv6 dstopts (pad) udp", 4, v6("udp", [dst_pad]))
    add("ipv6-ext", "ipv6 dstopts (option 0x1e, not HAO) tcp", 4, v6("tcp", [dst_other16]))
    add("ipv6-ext", "ipv6 routing type 0 segleft 0 udp", 4, v6("udp", [rh0]))
    add("ipv6-ext", "ipv6 AH tcp", 4, v6("tcp", [ah]))

    add("ipv6-hao", "ipv6 dstopts HAO tcp", 6, v6("tcp", [hao]))
    add("ipv6-hao", "ipv6 dstopts HAO udp", 6, v6("udp", [hao]))
    add("ipv6-hao", "ipv6 dstopts HAO icmpv6", 6, v6("icmp6", [hao]))
    add("ipv6-hao", "ipv6 hop-by-hop + dstopts HAO tcp", 6, v6("tcp", [hbh, hao]))

    add("ipv6-rh2", "ipv6 RH2 tcp", 6, v6("tcp", [rh2]))
    add("ipv6-rh2", "ipv6 RH2 udp", 6, v6("udp", [rh2]))
    add("ipv6-rh2", "ipv6 RH2 icmpv6", 6, v6("icmp6", [rh2]))
    add("ipv6-rh2", "ipv6 hop-by-hop + RH2 udp", 6, v6("udp", [hbh, rh2]))

    add("ipv6-hao-rh2", "ipv6 RH2 + HAO tcp", 6, v6("tcp", [rh2, hao]))
    add("ipv6-hao-rh2", "ipv6 RH2 + HAO udp", 6, v6("udp", [rh2, hao]))
    add("ipv6-hao-rh2", "ipv6 RH2 + HAO icmpv6", 6, v6("icmp6", [rh2, hao]))
    add("ipv6-hao-rh2", "ipv6 hop-by-hop + RH2 + HAO tcp", 6, v6("tcp", [hbh, rh2, hao]))

    add("ipv6-frag", "ipv6 first fragment tcp", 4, v6("tcp", [frag_first]))
    add("ipv6-frag", "ipv6 first fragment udp", 4, v6("udp", [frag_first]))
    add("ipv6-frag", "ipv6 later fragment (udp)", 4, v6(None, [frag_later]))
    add("ipv6-frag", "ipv6 atomic fragment udp", 4, v6("udp", [frag_atomic]))
    add("ipv6-frag", "ipv6 HAO + first fragment udp", 4, v6("udp", [hao, frag_first]))
    add("ipv6-frag", "ipv6 RH2 + first fragment tcp", 4, v6("tcp", [rh2, frag_first]))

    add("ipv6-long-chain", "ipv6 hbh+dst+rt0+AH+dst tcp", 4, v6("tcp", [hbh, dst_pad, rh0, ah, dst_pad]))
    add("ipv6-long-chain", "ipv6 hbh+dst+RH2+HAO+AH udp", 4, v6("udp", [hbh, dst_pad, rh2, hao, ah]))
    add("ipv6-long-chain", "ipv6 12 x dstopts tcp", 4, v6("tcp", [dst_pad] * 12))
    add("ipv6-long-chain", "ipv6 hbh+RH2+HAO+frag udp", 4, v6("udp", [hbh, rh2, hao, frag_first]))

    # ---- non-IP
    add("non-ip", "arp request", 4, lambda: raw(eth() / ARP(op=1, psrc=g.v4(), pdst=g.v4(), hwsrc=HOST_MAC)))
    add("non-ip", "arp reply", 2, lambda: raw(eth() / ARP(op=2, psrc=g.v4(), pdst=g.v4(), hwsrc=HOST_MAC)))
    add("non-ip", "ethertype 0x88b5 (local experimental)", 3, lambda: raw(eth(0x88B5)))
    add("non-ip", "ethertype 0x88cc (LLDP)", 1, lambda: raw(eth(0x88CC)))
    add("non-ip", "ethertype 0x8137 (IPX)", 1, lambda: raw(eth(0x8137)))
    add("non-ip", "802.3 length field", 1, lambda: S_8023(dst_mac))

    # ---- malformed (full length, well-defined outcome)
    add("malformed", "ethertype IPv4, version 6", 2, lambda: S_patch(v4("tcp")(), 14, lambda b: (b & 0x0F) | 0x60))
    add("malformed", "ipv4 IHL 4", 2, lambda: S_patch(v4("tcp")(), 14, lambda b: 0x44))
    add("malformed", "ethertype IPv6, version 4", 2, lambda: S_patch(v6("udp")(), 14, lambda b: (b & 0x0F) | 0x40))
    add("malformed", "three VLAN tags ipv4 udp", 2, v4("udp", l2=lambda: eth() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3)))
    add("malformed", "ipv6 17 extension headers tcp", 2, v6("tcp", [dst_pad] * 17))
    add("malformed", "ipv4 tcp data offset 4", 2, lambda: S_patch(v4("tcp")(), 14 + 20 + 12, lambda b: 0x40))

    # ---- truncated: (slice, desc, make, lo, hi) with the cut length in [lo, hi)
    def trunc(desc, n, make, lo, hi):
        for k in range(n):
            templates.append(("truncated", f"{desc} #{k}", make, lo, hi))

    trunc("ipv4 header cut", 4, v4("tcp"), 15, 34)
    trunc("ipv6 header cut", 4, v6("tcp"), 15, 54)
    trunc("802.1Q tag cut", 2, v4("udp", l2=vlan_q), 15, 18)
    trunc("ipv4 options cut (IHL 10)", 3, v4("udp", {"options": [S_ipopt(opt_sets[2][1] + opt_sets[0][1])]}), 34, 54)
    trunc("ipv4 tcp header cut", 4, v4("tcp"), 34, 54)
    trunc("ipv4 udp header cut", 3, v4("udp"), 34, 42)
    trunc("ipv6 tcp header cut", 4, v6("tcp"), 54, 74)
    trunc("ipv6 udp header cut", 3, v6("udp"), 54, 62)
    trunc("ipv6 hop-by-hop cut", 2, v6("tcp", [hbh]), 54, 62)
    trunc("ipv6 dstopts HAO cut", 3, v6("tcp", [hao]), 54, 78)
    trunc("ipv6 HAO, tcp header cut", 3, v6("tcp", [hao]), 78, 98)
    trunc("ipv6 RH2, udp header cut", 2, v6("udp", [rh2]), 78, 86)
    trunc("802.1Q ipv4 tcp header cut", 2, v4("tcp", l2=vlan_q), 38, 58)
    trunc("arp cut", 2, lambda: raw(eth() / ARP(op=1, psrc=g.v4(), pdst=g.v4(), hwsrc=HOST_MAC)), 15, 42)
    return templates


# Small raw-byte helpers used by the templates (kept outside for readability).


def S_ipopt(data: bytes):
    from scapy.layers.inet import IPOption

    return IPOption(data)


def S_opt(otype: int, data: bytes):
    from scapy.layers.inet6 import PadN

    # PadN's encoding is type/len/data; reuse it for an arbitrary TLV option.
    return PadN(otype=otype, optdata=data)


def S_ah(g: _Gen):
    """An IPv6 Authentication Header (next header patched by scapy layering is not
    available for AH in every scapy version, so build it as a raw layer)."""
    from scapy.layers.ipsec import AH

    return AH(spi=g.rng.randrange(1, 1 << 32), seq=g.rng.randrange(1 << 32), icv=bytes(12))


def _fix_ah(pkt) -> None:
    """scapy leaves AH's next header and length to the caller: fill them in."""
    from scapy.layers.inet import GRE, TCP, UDP
    from scapy.layers.inet6 import (
        ICMPv6EchoRequest,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )
    from scapy.layers.ipsec import AH

    numbers = {
        TCP: 6, UDP: 17, GRE: 47, ICMPv6EchoRequest: 58, IPv6ExtHdrHopByHop: 0,
        IPv6ExtHdrRouting: 43, IPv6ExtHdrFragment: 44, AH: 51, IPv6ExtHdrDestOpt: 60,
    }
    layer = pkt
    while layer is not None and layer.__class__.__name__ != "NoPayload":
        if isinstance(layer, AH):
            nxt = layer.payload
            layer.nh = numbers.get(type(nxt), 59)
            layer.payloadlen = (12 + len(layer.icv)) // 4 - 2
        layer = layer.payload if layer.payload else None


def S_8023(dst_mac: str):
    def build(payload: bytes) -> bytes:
        from scapy.layers.l2 import Dot3, LLC

        p = Dot3(dst=dst_mac, src=HOST_MAC) / LLC(dsap=0x42, ssap=0x42, ctrl=3)
        body = bytes(p)[14:] + payload
        # length field = LLC + payload (scapy computes it, but recompute after padding)
        return bytes(p)[:12] + struct.pack("!H", len(body)) + body

    return build


def S_patch(build: Callable[[bytes], bytes], offset: int, fn: Callable[[int], int]):
    def patched(payload: bytes) -> bytes:
        b = bytearray(build(payload))
        b[offset] = fn(b[offset])
        return bytes(b)

    return patched


# --------------------------------------------------------------------------- corpus


def _pick_length(lo: int, hi: int, k: int, n: int, used: set[int]) -> int:
    """A free length in [lo, hi), preferring the k-th of n evenly spread points."""
    span = hi - lo
    pref = lo + (k * span) // max(n, 1)
    for d in range(span):
        for cand in (pref + d, pref - d):
            if lo <= cand < hi and cand not in used:
                return cand
    raise AssertionError(f"no free truncation length in [{lo}, {hi})")


_CACHE: dict[tuple[int, str], Corpus] = {}


def corpus(seed: int = 0, *, dst_mac: str = GUEST_MAC) -> Corpus:
    """The corpus for ``seed`` (byte-identical for the same seed; cached)."""
    cache_key = (int(seed), dst_mac)
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    g = _Gen(int(seed))
    templates = _build_templates(g, dst_mac)
    # Pass 1: build every frame (random values are drawn in corpus order).
    built: list[tuple[str, str, bytes]] = []
    pending: list[tuple[int, int, int, str, bytes]] = []  # truncated: (id, lo, hi, group, full)
    for fid, t in enumerate(templates):
        slice_, desc, make = t[0], t[1], t[2]
        build = make()
        if slice_ == "truncated":
            full = build(b"")
            lo, hi = t[3], t[4]
            assert hi <= len(full) + 1, (desc, hi, len(full))
            pending.append((fid, lo, hi, desc.rsplit(" #", 1)[0], full))
            built.append((slice_, desc, b""))
            continue
        target = FULL_BASE_LEN + fid
        mark = marker(fid)
        base = len(build(mark))
        if base > target:
            raise AssertionError(f"{desc}: {base} header bytes exceed the target length {target}")
        data = build(mark + bytes(target - base))
        assert len(data) == target, (desc, len(data), target)
        assert frame_id_from_bytes(data) == fid, desc
        assert target <= MAX_FRAME_LEN
        built.append((slice_, desc, data))
    # Pass 2: truncation lengths, narrowest ranges first so that every group fits;
    # depends only on the templates, never on the seed.
    group_size: dict[str, int] = {}
    for _fid, _lo, _hi, group, _full in pending:
        group_size[group] = group_size.get(group, 0) + 1
    used_short: set[int] = set()
    seen: dict[str, int] = {}
    for fid, lo, hi, group, full in sorted(pending, key=lambda p: (p[2] - p[1], p[0])):
        k = seen.get(group, 0)
        seen[group] = k + 1
        length = _pick_length(lo, hi, k, group_size[group], used_short)
        used_short.add(length)
        assert MIN_FRAME_LEN <= length < FULL_BASE_LEN, (group, length)
        slice_, desc, _ = built[fid]
        built[fid] = (slice_, desc, full[:length])
    frames = [CorpusFrame(fid, s_, d_, data) for fid, (s_, d_, data) in enumerate(built)]
    result = Corpus(frames, int(seed))
    assert len(result.by_length) == len(frames)
    _CACHE[cache_key] = result
    return result


def length_to_id(length: int) -> int | None:
    """The corpus id of a frame of this total length (any seed), or ``None``."""
    f = corpus(0).by_length.get(length)
    return f.id if f else None


def frame_id(data: bytes, index: int | None = None) -> int | None:
    """A frame's id: its HLAB marker, else the corpus length map, else ``index``."""
    fid = frame_id_from_bytes(data)
    if fid is not None:
        return fid
    fid = length_to_id(len(data))
    return fid if fid is not None else index


# --------------------------------------------------------------------------- pcap


def write_pcap(frames: Iterable[CorpusFrame | bytes], path) -> int:
    """Write frames (CorpusFrame or raw bytes) as an Ethernet pcap; returns the count."""
    from scapy.utils import PcapWriter

    n = 0
    w = PcapWriter(str(path), linktype=1, sync=False)
    try:
        for f in frames:
            data = f.data if isinstance(f, CorpusFrame) else bytes(f)
            w.write(data)  # bytes are written as-is
            n += 1
    finally:
        w.close()
    return n


def read_pcap(path) -> list[bytes]:
    """The frames of a pcap (or pcapng) file as bytes; ``PcapError`` if unreadable.

    Classic pcap is read strictly here (a truncated record is an error, not a silent
    end); pcapng goes through scapy.  Only Ethernet (linktype 1) captures are accepted.
    """
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except OSError as e:
        raise PcapError(f"cannot read {path}: {e.strerror or e}") from None
    magic = blob[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<",
              b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if magic == b"\x0a\x0d\x0d\x0a":
        return _read_pcapng(path)
    if endian is None or len(blob) < 24:
        raise PcapError(f"{path} is not a pcap file")
    linktype = struct.unpack_from(endian + "I", blob, 20)[0] & 0x0FFFFFFF
    if linktype != 1:
        raise PcapError(f"{path}: link type {linktype}, expected Ethernet (1)")
    out: list[bytes] = []
    off = 24
    while off < len(blob):
        if len(blob) - off < 16:
            raise PcapError(f"{path}: truncated record header after {len(out)} frames")
        incl = struct.unpack_from(endian + "I", blob, off + 8)[0]
        off += 16
        if len(blob) - off < incl:
            raise PcapError(f"{path}: truncated frame {len(out)} ({len(blob) - off} of {incl} bytes)")
        out.append(blob[off : off + incl])
        off += incl
    return out


def _read_pcapng(path) -> list[bytes]:
    from scapy.utils import RawPcapNgReader

    out: list[bytes] = []
    try:
        with RawPcapNgReader(str(path)) as reader:
            for item in reader:
                out.append(bytes(item[0]))
    except Exception as e:  # scapy raises various things for a corrupt file
        raise PcapError(f"{path}: corrupt pcapng ({e})") from None
    return out
