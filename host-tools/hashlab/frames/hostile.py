"""Hostile frames: malformed Ethernet frames for every parser that hashes them.

Two sources, both built with ``struct`` (no scapy, so they are quick to make):

* :func:`hostile` -- a fixed, deterministic set (:class:`HostileFrame`: stable string
  ``id``, ``slice``, ``desc``, ``data``).  Slices (:data:`SLICES`):

  ``truncated``   a few base frames cut at every length from 15 bytes to the end of
                  their L4 header (every header boundary, every byte inside L2/L3/L4);
  ``bad-ihl``     IPv4 IHL 0..4, IHL larger than the header present, bogus total length;
  ``bad-version`` IP version nibbles that do not match the EtherType;
  ``ext-chain``   IPv6 extension headers whose next header points to their own type,
                  1..64 deep (around every parser's limit: 11, 16), endless zero chains;
  ``options``     zero-length, Pad1-only, over-long and unknown options, HAO after 0..40
                  padding options;
  ``bogus-hao``   Home Address options of the wrong length, cut, in hop-by-hop, twice;
  ``bogus-rh2``   Type 2 Routing Headers with the wrong Segments Left, length or type;
  ``fragments``   IPv4 and IPv6 fragments of every shape;
  ``vlan-stack``  0..4 VLAN tags, every mix of 0x8100, 0x88a8, 0x9100;
  ``l4``          TCP data offsets 0..4 and 15;
  ``jumbo``       frames of 1515..9018 bytes;
  ``runt``        complete frames of 15..59 bytes (Ethernet padding included).

* :func:`random_frames` -- seeded random frames biased towards interesting structure
  (random L2/L3/L4/extension-header building blocks, then random corruption), for
  differential fuzzing (e.g. through ``BPF_PROG_TEST_RUN``); 100,000 take a few
  seconds.  Every random frame is 14..``max_len`` (1514) bytes long.  Note that
  ``BPF_PROG_TEST_RUN`` refuses (``EINVAL``) untagged frames with EtherType IPv4/IPv6
  that are shorter than the IP header (``bpf_prog_test_run_skb``), frames shorter
  than 14 bytes and frames that do not fit one page with the skb's overhead (about
  3.7 KiB: the ``jumbo`` slice); count them rather than skip them
  (``hashlab.bench.differential.refusal_reason`` names the reason).  The oracle's
  ``qemu-ebpf`` behaviour with ``ebpf_context="test_run"`` models upstream's program as
  that harness runs it; ``hashlab-ebpf`` models hashlab's.

Identity: a Linux guest sees only a frame's length, so :func:`batches` splits the set
into batches whose frames have unique lengths.  Frames whose length is what they test
(``fixed``: the ``truncated``, ``runt`` and ``jumbo`` slices, and the few others that
end inside a header) keep it; the others may be padded with zero bytes after their end
when that does not change how any modelled parser (``hashlab.oracle.rss``: spec,
qemu-software, qemu-ebpf in both contexts) sees them.  Sending ``jumbo`` frames through
a tap with ``AF_PACKET`` needs the tap's MTU raised (else ``EMSGSIZE``) and receive
buffers that large in the guest.

All frames are at least :data:`MIN_FRAME_LEN` (15) bytes: shorter ones cannot reach a
Linux guest with a payload.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import product

__all__ = [
    "HostileFrame",
    "Batch",
    "SLICES",
    "MIN_FRAME_LEN",
    "hostile",
    "batches",
    "random_frames",
    "iter_random_frames",
]

MIN_FRAME_LEN = 15
SLICES = (
    "truncated",
    "bad-ihl",
    "bad-version",
    "ext-chain",
    "options",
    "bogus-hao",
    "bogus-rh2",
    "fragments",
    "vlan-stack",
    "l4",
    "jumbo",
    "runt",
)
FIXED_SLICES = frozenset({"truncated", "runt", "jumbo"})

_pack = struct.pack

# Addresses: distinct, recognisable, constant (the set never depends on a seed).
MAC_DST = bytes.fromhex("525400123456")  # QEMU's default guest MAC
MAC_SRC = bytes.fromhex("02686c616201")
V4_SRC, V4_DST = bytes([198, 51, 100, 7]), bytes([203, 0, 113, 9])
V6_SRC = bytes.fromhex("20010db8000000000000000000000001")
V6_DST = bytes.fromhex("20010db8000100000000000000000002")
V6_HOA = bytes.fromhex("20010db8ffff00000000000000000099")
V6_RH2 = bytes.fromhex("20010db8eeee00000000000000000077")
V6_HOA2 = bytes.fromhex("20010db8ffff000000000000000000aa")
V6_RH2B = bytes.fromhex("20010db8eeee000000000000000000bb")
SPORT, DPORT = 40000, 443

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
TPIDS = (0x8100, 0x88A8, 0x9100)
TCP, UDP, ICMP, ICMPV6, NONE = 6, 17, 1, 58, 59
HBH, RT, FRAG, AH, DST, MH = 0, 43, 44, 51, 60, 135


# --------------------------------------------------------------------------- building blocks


def eth(ethertype: int, tags: Sequence[int] = ()) -> bytes:
    """Ethernet header with VLAN tags (TPIDs, outermost first; VIDs 1, 2, ...)."""
    out = MAC_DST + MAC_SRC
    for i, tpid in enumerate(tags):
        out += _pack("!HH", tpid, i + 1)
    return out + _pack("!H", ethertype)


def ip_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of DATA."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(proto: int, payload: bytes, *, ihl: int | None = None, options: bytes = b"",
         frag: int = 0, version: int = 4, total: int | None = None,
         src: bytes = V4_SRC, dst: bytes = V4_DST) -> bytes:
    """An IPv4 header (+ payload); ``frag`` is the whole flags/offset field."""
    if ihl is None:
        ihl = 5 + len(options) // 4
    if total is None:
        total = 20 + len(options) + len(payload)
    hdr = _pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total & 0xFFFF, 0x4242, frag, 64, proto,
                0, src, dst) + options
    hdr = hdr[:10] + _pack("!H", ip_checksum(hdr[:20])) + hdr[12:]
    return hdr + payload


def ipv6(nh: int, payload: bytes, *, version: int = 6, plen: int | None = None,
         src: bytes = V6_SRC, dst: bytes = V6_DST) -> bytes:
    plen = len(payload) if plen is None else plen
    return _pack("!IHBB16s16s", (version << 28) | 0x12345, plen & 0xFFFF, nh, 64, src, dst) + payload


def tcp(sport: int = SPORT, dport: int = DPORT, doff: int = 5) -> bytes:
    opts = b"\x01" * max(0, (doff - 5) * 4) if doff > 5 else b""
    return _pack("!HHIIBBHHH", sport, dport, 0x01020304, 0, doff << 4, 0x18, 0xFFFF, 0, 0) + opts


def udp(payload_len: int, sport: int = SPORT, dport: int = DPORT) -> bytes:
    return _pack("!HHHH", sport, dport, (8 + payload_len) & 0xFFFF, 0)


def opt_pad(n: int) -> bytes:
    """Padding of ``n`` bytes: Pad1 or PadN."""
    if n <= 0:
        return b""
    if n == 1:
        return b"\0"
    return bytes([1, n - 2]) + bytes(n - 2)


def opt(otype: int, data: bytes, length: int | None = None) -> bytes:
    return bytes([otype, len(data) if length is None else length]) + data


def hao(addr: bytes = V6_HOA, length: int = 16) -> bytes:
    return opt(0xC9, addr, length)


def opts_header(nh: int, options: bytes, *, hdrlen: int | None = None, pad: bool = True) -> bytes:
    """A hop-by-hop or destination options header (the caller's type is implied)."""
    body = options
    if pad:
        body += opt_pad((-(2 + len(body))) % 8)
    if hdrlen is None:
        hdrlen = (2 + len(body)) // 8 - 1
    return bytes([nh, hdrlen & 0xFF]) + body


def routing(nh: int, rtype: int, segleft: int, addrs: Sequence[bytes], *, hdrlen: int | None = None) -> bytes:
    if hdrlen is None:
        hdrlen = 2 * len(addrs)
    return _pack("!BBBB", nh, hdrlen & 0xFF, rtype, segleft) + bytes(4) + b"".join(addrs)


def fragment(nh: int, offset: int = 0, m: int = 0, ident: int = 0x0BADF00D, reserved: int = 0) -> bytes:
    return _pack("!BBHI", nh, reserved, ((offset & 0x1FFF) << 3) | (m & 1), ident)


def ah(nh: int, payload_len: int = 4) -> bytes:
    """An Authentication Header of (payload_len + 2) * 4 bytes (at least 8)."""
    size = max(8, (payload_len + 2) * 4)
    return _pack("!BBHI", nh, payload_len, 0, 0x1000) + bytes(size - 8)


def plain_ext(nh: int, hdrlen: int = 0) -> bytes:
    """A generic (len + 1) * 8 byte header (mobility, or anything walked like one)."""
    return bytes([nh, hdrlen]) + bytes((hdrlen + 1) * 8 - 2)


def _payload(tag: int, n: int = 24) -> bytes:
    """Marker ``HSTL`` + a u32, then a fixed pattern (never zero bytes)."""
    body = b"HSTL" + _pack("!I", tag & 0xFFFFFFFF)
    fill = bytes(range(0x41, 0x5B)) * (n // 26 + 1)
    return (body + fill)[:n]


# --------------------------------------------------------------------------- the set


@dataclass(frozen=True)
class HostileFrame:
    """One hostile frame.  ``fixed``: its length is part of what it tests (never padded).
    ``pad``: zero bytes :func:`batches` appended (0 in :func:`hostile`)."""

    id: str
    slice: str
    desc: str
    data: bytes
    fixed: bool = False
    pad: int = 0

    def __len__(self) -> int:
        return len(self.data)


class _Set:
    def __init__(self) -> None:
        self.frames: list[HostileFrame] = []
        self.ids: set[str] = set()
        self.datas: set[bytes] = set()

    def add(self, slice_: str, key: str, desc: str, data: bytes, fixed: bool | None = None) -> None:
        fid = f"{slice_}/{key}"
        if fid in self.ids:
            raise AssertionError(f"duplicate hostile id {fid}")
        if data in self.datas:
            raise AssertionError(f"{fid}: the same bytes as an earlier frame")
        if len(data) < MIN_FRAME_LEN:
            raise AssertionError(f"{fid}: {len(data)} bytes")
        self.ids.add(fid)
        self.datas.add(data)
        self.frames.append(HostileFrame(fid, slice_, desc, bytes(data),
                                        slice_ in FIXED_SLICES if fixed is None else fixed))


def _v4_tcp(tags=(), tag=0, **ipkw) -> bytes:
    pl = _payload(tag)
    return eth(ETH_P_IP, tags) + ipv4(TCP, tcp() + pl, **ipkw)


def _v4_udp(tags=(), tag=0, payload: bytes | None = None, **ipkw) -> bytes:
    pl = _payload(tag) if payload is None else payload
    return eth(ETH_P_IP, tags) + ipv4(UDP, udp(len(pl)) + pl, **ipkw)


def _v6(chain: Sequence[tuple[int, bytes]], l4: int, tags=(), tag=0, payload: bytes | None = None,
        **ipkw) -> bytes:
    """IPv6 with extension headers ``[(type, header-with-placeholder-nh)]`` and an L4.

    Each header's first byte (its next header) is set from the chain; ``l4`` is TCP,
    UDP, or any other protocol number (raw payload).
    """
    pl = _payload(tag) if payload is None else payload
    if l4 == TCP:
        upper = tcp() + pl
    elif l4 == UDP:
        upper = udp(len(pl)) + pl
    else:
        upper = pl
    body = b""
    types = [t for t, _ in chain] + [l4]
    for i, (_t, hdr) in enumerate(chain):
        body += bytes([types[i + 1]]) + hdr[1:]
    return eth(ETH_P_IPV6, tags) + ipv6(types[0], body + upper, **ipkw)


def _dst(options: bytes, **kw) -> tuple[int, bytes]:
    return DST, opts_header(0, options, **kw)


def _hbh(options: bytes, **kw) -> tuple[int, bytes]:
    return HBH, opts_header(0, options, **kw)


def _hao_dst(addr: bytes = V6_HOA) -> tuple[int, bytes]:
    return _dst(opt_pad(4) + hao(addr))  # RFC 6275 alignment: 8n+6


def _rh2(addr: bytes = V6_RH2, segleft: int = 1, rtype: int = 2, **kw) -> tuple[int, bytes]:
    return RT, routing(0, rtype, segleft, [addr], **kw)


def _truncations(s: _Set) -> None:
    bases = [
        ("v4-tcp", _v4_tcp(), [(14, "L2"), (34, "IPv4"), (54, "TCP")]),
        ("v6-udp-rh2-hao", _v6([_rh2(), _hao_dst()], UDP),
         [(14, "L2"), (54, "IPv6"), (78, "RH2"), (102, "dstopts/HAO"), (110, "UDP")]),
        ("vlan-v4-udp", _v4_udp(tags=(0x8100,)), [(18, "L2 (802.1Q)"), (38, "IPv4"), (46, "UDP")]),
        ("v4-tcp-options", eth(ETH_P_IP) + ipv4(TCP, tcp() + _payload(0),
                                                options=b"\x94\x04\x00\x00\x07\x07\x04" + bytes(4) + b"\x00"),
         [(14, "L2"), (46, "IPv4 with options"), (66, "TCP")]),
        ("v6-tcp-ah", _v6([(AH, ah(0, 4))], TCP), [(14, "L2"), (54, "IPv6"), (78, "AH"), (98, "TCP")]),
        ("qinq-v6-tcp-hbh", _v6([_hbh(opt_pad(6))], TCP, tags=(0x88A8, 0x8100)),
         [(22, "L2 (802.1ad+802.1Q)"), (62, "IPv6"), (70, "hop-by-hop"), (90, "TCP")]),
    ]
    for name, full, bounds in bases:
        end = bounds[-1][0]
        assert len(full) > end, name
        for n in range(MIN_FRAME_LEN, end + 1):
            b, layer = next((b, layer) for b, layer in bounds if n <= b)
            where = f"inside {layer}" if n < b else f"at the end of {layer}"
            if full[:n] in s.datas:
                continue  # the same prefix as another base frame's cut
            s.add("truncated", f"{name}/{n}", f"{name} cut to {n} bytes ({where})", full[:n])


def _bad_ihl(s: _Set) -> None:
    for ihl in range(0, 5):
        s.add("bad-ihl", f"tcp-ihl{ihl}", f"ipv4 tcp, IHL {ihl}", _v4_tcp(ihl=ihl, tag=ihl))
        s.add("bad-ihl", f"udp-ihl{ihl}", f"ipv4 udp, IHL {ihl}", _v4_udp(ihl=ihl, tag=ihl))
    long_pl = _payload(7, 48)
    for ihl in range(6, 16):
        s.add("bad-ihl", f"tcp-ihl{ihl}-no-options",
              f"ipv4 tcp, IHL {ihl} over a 20-byte header (TCP header read as options)",
              eth(ETH_P_IP) + ipv4(TCP, tcp() + long_pl, ihl=ihl))
    for ihl in (6, 10, 15):
        s.add("bad-ihl", f"tcp-ihl{ihl}-past-end",
              f"ipv4 tcp, IHL {ihl}, frame ends before the declared header does",
              eth(ETH_P_IP) + ipv4(TCP, tcp()[: 4 * (ihl - 5) - 2] if ihl > 5 else b"", ihl=ihl))
    for total in (0, 19, 20, 0xFFFF):
        s.add("bad-ihl", f"tcp-total{total}", f"ipv4 tcp, total length {total}", _v4_tcp(total=total))


def _bad_version(s: _Set) -> None:
    for v in (0, 5, 6, 15):
        s.add("bad-version", f"v4-ver{v}", f"ethertype IPv4, version {v}", _v4_tcp(version=v))
    for v in (0, 4, 5, 15):
        s.add("bad-version", f"v6-ver{v}", f"ethertype IPv6, version {v}", _v6([], UDP, version=v))
    s.add("bad-version", "v4-under-86dd", "an IPv4 packet under ethertype IPv6",
          eth(ETH_P_IPV6) + ipv4(UDP, udp(40) + _payload(1, 40)))
    s.add("bad-version", "v6-under-0800", "an IPv6 packet under ethertype IPv4",
          eth(ETH_P_IP) + ipv6(UDP, udp(24) + _payload(2)))
    s.add("bad-version", "v6-plen0", "ipv6 udp, payload length 0", _v6([], UDP, plen=0))
    s.add("bad-version", "v6-plen-huge", "ipv6 udp, payload length 0xffff", _v6([], UDP, plen=0xFFFF))


# Self-chaining headers for ext-chain: (name, type, one header).
_SELF_CHAINS = [
    ("dstopts", DST, opts_header(0, opt_pad(6))),
    ("hbh", HBH, opts_header(0, opt_pad(6))),
    ("rt0", RT, routing(0, 0, 0, [])),
    ("frag", FRAG, fragment(0)),
    ("ah-len0", AH, ah(0, 0)),  # 8 bytes: (0+2)*4 == (0+1)*8, every parser agrees on it
    ("ah-len1", AH, ah(0, 1)),  # 12 bytes; QEMU's software path takes 16
    ("mobility", MH, plain_ext(0)),
    ("icmpv6", ICMPV6, plain_ext(0)),
    ("no-next", NONE, plain_ext(0)),
]
_CHAIN_DEPTHS = (1, 2, 8, 10, 11, 12, 15, 16, 17, 32, 64)


def _ext_chains(s: _Set) -> None:
    for name, t, hdr in _SELF_CHAINS:
        for depth in _CHAIN_DEPTHS:
            for l4 in (TCP, UDP) if depth in (11, 12, 16, 17) else (TCP,):
                l4n = "tcp" if l4 == TCP else "udp"
                s.add("ext-chain", f"{name}-x{depth}-{l4n}",
                      f"ipv6, {depth} x {name} (next header {t} -> itself), then {l4n}",
                      _v6([(t, hdr)] * depth, l4, tag=depth))
    mixed = [_hbh(opt_pad(6)), _dst(opt_pad(6)), (RT, routing(0, 0, 0, [V6_RH2])), (AH, ah(0, 4)),
             (FRAG, fragment(0)), _dst(opt_pad(6)), (MH, plain_ext(0))]
    for depth in (7, 11, 12, 16, 17):
        chain = [mixed[i % len(mixed)] for i in range(depth)]
        s.add("ext-chain", f"mixed-x{depth}-udp", f"ipv6, {depth} mixed extension headers, then udp",
              _v6(chain, UDP, tag=depth))
    # HAO and RH2 beyond a parser's chain limit.
    for depth in (10, 11, 12, 15, 16):
        chain = [_dst(opt_pad(6))] * depth + [_rh2(), _hao_dst()]
        s.add("ext-chain", f"pad-x{depth}-rh2-hao-tcp",
              f"ipv6, {depth} dstopts, RH2, dstopts HAO, tcp (HAO/RH2 at depth {depth + 1}, {depth + 2})",
              _v6(chain, TCP, tag=depth))
    # A chain that runs off the end of the frame: zero bytes are endless 8-byte
    # hop-by-hop headers (next header 0, length 0).
    for n in (8, 64, 88, 96, 1000):
        s.add("ext-chain", f"zeros-{n}", f"ipv6, next header 0 followed by {n} zero bytes",
              eth(ETH_P_IPV6) + ipv6(HBH, bytes(n)), fixed=True)
    for n in (1, 7, 9):
        s.add("ext-chain", f"dstopts-self-x4-runs-off-{n}",
              f"ipv6, 4 dstopts pointing to dstopts, then {n} bytes",
              eth(ETH_P_IPV6) + ipv6(DST, opts_header(DST, opt_pad(6)) * 4 + _payload(n, n)), fixed=True)


def _options(s: _Set) -> None:
    for where, hdr_type in (("dstopts", DST), ("hbh", HBH)):
        def hdr(options: bytes, **kw):
            return (hdr_type, opts_header(0, options, **kw))

        s.add("options", f"{where}-padn0-x3", f"{where} of three zero-length PadN, tcp",
              _v6([hdr(opt_pad(2) * 3)], TCP))
        s.add("options", f"{where}-padn0-x31", f"{where} of 31 zero-length PadN, tcp",
              _v6([hdr(opt_pad(2) * 31)], TCP))
        s.add("options", f"{where}-pad1-x6", f"{where} of six Pad1, tcp", _v6([hdr(b"\0" * 6)], TCP))
        s.add("options", f"{where}-overlong-opt", f"{where} (8 bytes) with an option of length 10, tcp",
              _v6([hdr(opt(0x1E, bytes(4), length=10), pad=False)], TCP))
        s.add("options", f"{where}-opt-len255", f"{where} (8 bytes) with an option of length 255, udp",
              _v6([hdr(opt(0x1E, bytes(4), length=255), pad=False)], UDP))
        s.add("options", f"{where}-unknown-opts", f"{where} with skippable and discard-type options, udp",
              _v6([hdr(opt(0x1E, b"ab") + opt(0x5E, b"") + opt(0xDE, b"xyz"))], UDP))
        s.add("options", f"{where}-hdrlen255-cut", f"{where} declaring 2048 bytes in a short frame, tcp",
              _v6([hdr(opt_pad(6), hdrlen=255, pad=False)], TCP), fixed=True)
    s.add("options", "hbh-router-alert-jumbo", "hop-by-hop with router alert and a Jumbo Payload option, udp",
          _v6([_hbh(opt(0x05, b"\0\0") + opt(0xC2, _pack("!I", 70000)))], UDP, plen=0))
    for n in (0, 1, 4, 28, 29, 30, 31, 40):
        s.add("options", f"dstopts-{n}-pad1-then-hao",
              f"dstopts: {n} Pad1, then a HAO (option {n + 1}{', unaligned' if n != 4 else ''}), tcp",
              _v6([_dst(b"\0" * n + hao())], TCP, tag=n))
        s.add("options", f"dstopts-{n}-padn0-then-hao",
              f"dstopts: {n} zero-length PadN, then a HAO (option {n + 1}), udp",
              _v6([_dst(opt_pad(2) * n + hao())], UDP, tag=n))
    s.add("options", "dstopts-padn-fills-then-hao-next",
          "dstopts whose PadN fills it exactly, then a second dstopts with a HAO, tcp",
          _v6([_dst(opt_pad(14)), _hao_dst()], TCP))


def _bogus_hao(s: _Set) -> None:
    for length in (0, 4, 8, 15, 17, 18, 20, 255):
        s.add("bogus-hao", f"len{length}-tcp", f"dstopts HAO with option length {length}, tcp",
              _v6([_dst(opt_pad(4) + hao(length=length) + bytes(max(0, min(length, 40) - 16)))], TCP,
                  tag=length))
    s.add("bogus-hao", "in-hbh-tcp", "HAO in a hop-by-hop header, tcp", _v6([_hbh(opt_pad(4) + hao())], TCP))
    s.add("bogus-hao", "in-hbh-and-dst-udp", "HAO in hop-by-hop and another in dstopts, udp",
          _v6([_hbh(opt_pad(4) + hao(V6_HOA2)), _hao_dst()], UDP))
    s.add("bogus-hao", "first-opt-of-8-byte-hdr", "HAO as the first option of a dstopts declaring 8 bytes, udp",
          _v6([_dst(hao(), hdrlen=0, pad=False)], UDP))
    s.add("bogus-hao", "overruns-16-byte-hdr", "HAO running past a 16-byte dstopts, tcp",
          _v6([_dst(hao(), hdrlen=1, pad=False)], TCP))
    s.add("bogus-hao", "two-dstopts-two-haos", "two dstopts, each with a HAO (different), tcp",
          _v6([_hao_dst(V6_HOA), _hao_dst(V6_HOA2)], TCP))
    s.add("bogus-hao", "hao-then-pad-dstopts", "dstopts with a HAO, then a dstopts with padding only, udp",
          _v6([_hao_dst(), _dst(opt_pad(6))], UDP))
    s.add("bogus-hao", "wronglen-then-good", "dstopts HAO length 8, then a dstopts with a good HAO, tcp",
          _v6([_dst(opt_pad(4) + hao(length=8)), _hao_dst(V6_HOA2)], TCP))
    s.add("bogus-hao", "before-rh2", "dstopts HAO before a RH2, tcp", _v6([_hao_dst(), _rh2()], TCP))
    s.add("bogus-hao", "after-fragment", "fragment (first, MF) then dstopts HAO, udp",
          _v6([(FRAG, fragment(0, 0, 1)), _hao_dst()], UDP))
    for cut in (2, 8, 17):
        full = _v6([_hao_dst()], NONE, payload=b"")
        n = 14 + 40 + 6 + 2 + cut
        s.add("bogus-hao", f"cut-after-{cut}", f"dstopts HAO cut {cut} bytes into the option",
              full[:n], fixed=True)


def _bogus_rh2(s: _Set) -> None:
    for segleft in (0, 2, 255):
        s.add("bogus-rh2", f"segleft{segleft}-tcp", f"RH2 with Segments Left {segleft}, tcp",
              _v6([_rh2(segleft=segleft)], TCP, tag=segleft))
    for rtype in (0, 1, 3, 4):
        s.add("bogus-rh2", f"type{rtype}-udp", f"routing type {rtype}, one address, segleft 1, udp",
              _v6([_rh2(rtype=rtype)], UDP, tag=rtype))
    s.add("bogus-rh2", "hdrlen0-tcp", "RH2 of length 0 (no address), tcp",
          _v6([(RT, routing(0, 2, 1, []))], TCP))
    s.add("bogus-rh2", "hdrlen1-tcp", "RH2 of length 1 (half an address), tcp",
          _v6([(RT, routing(0, 2, 1, [V6_RH2[:8]], hdrlen=1))], TCP))
    s.add("bogus-rh2", "hdrlen4-two-addrs-udp", "RH2 of length 4 (two addresses), udp",
          _v6([(RT, routing(0, 2, 1, [V6_RH2, V6_RH2B]))], UDP))
    s.add("bogus-rh2", "hdrlen3-tcp", "RH2 of length 3 (an address and 8 bytes), tcp",
          _v6([(RT, routing(0, 2, 1, [V6_RH2, bytes(8)], hdrlen=3))], TCP))
    s.add("bogus-rh2", "two-rh2-tcp", "two RH2 (different addresses), tcp",
          _v6([_rh2(V6_RH2), _rh2(V6_RH2B)], TCP))
    s.add("bogus-rh2", "rh2-then-rh0-udp", "RH2, then a type 0 routing header of the same length, udp",
          _v6([_rh2(), _rh2(V6_RH2B, segleft=0, rtype=0)], UDP))
    s.add("bogus-rh2", "rh2-after-ah-tcp", "AH, then RH2, tcp", _v6([(AH, ah(0, 4)), _rh2()], TCP))
    s.add("bogus-rh2", "rh2-after-frag-udp", "fragment (atomic), then RH2, udp",
          _v6([(FRAG, fragment(0)), _rh2()], UDP))
    for cut in (4, 8, 20):
        full = _v6([_rh2()], NONE, payload=b"")
        s.add("bogus-rh2", f"cut-after-{cut}", f"RH2 cut {cut} bytes into the header", full[: 54 + cut],
              fixed=True)


def _fragments(s: _Set) -> None:
    shapes = [("first-mf", 0x2000), ("middle", 0x2000 | 185), ("last", 370), ("offset-max", 0x1FFF),
              ("df", 0x4000), ("df-mf", 0x6000), ("rf", 0x8000), ("rf-df", 0xC000)]
    for name, field in shapes:
        s.add("fragments", f"v4-{name}-tcp", f"ipv4 tcp, flags/offset {field:#06x} ({name})",
              _v4_tcp(frag=field))
        s.add("fragments", f"v4-{name}-udp", f"ipv4 udp, flags/offset {field:#06x} ({name})",
              _v4_udp(frag=field))
    v6shapes = [("first", dict(offset=0, m=1)), ("middle", dict(offset=185, m=1)),
                ("last", dict(offset=370, m=0)), ("atomic", dict(offset=0, m=0)),
                ("reserved1", dict(offset=0, m=1, reserved=1))]
    for name, kw in v6shapes:
        for l4, l4n in ((TCP, "tcp"), (UDP, "udp")):
            s.add("fragments", f"v6-{name}-{l4n}", f"ipv6 fragment header ({name}), {l4n}",
                  _v6([(FRAG, fragment(0, **kw))], l4))
    s.add("fragments", "v6-two-frag-tcp", "ipv6, two fragment headers, tcp",
          _v6([(FRAG, fragment(0, 0, 1)), (FRAG, fragment(0, 0, 1))], TCP))
    s.add("fragments", "v6-frag-nonext", "ipv6 fragment header, next header 59", _v6([(FRAG, fragment(0, 8, 0))], NONE))
    s.add("fragments", "v6-hao-rh2-frag-udp", "ipv6 RH2, dstopts HAO, fragment (first), udp",
          _v6([_rh2(), _hao_dst(), (FRAG, fragment(0, 0, 1))], UDP))


def _vlan_stacks(s: _Set) -> None:
    names = {0x8100: "q", 0x88A8: "ad", 0x9100: "9100"}
    for depth in range(5):
        for tags in product(TPIDS, repeat=depth):
            key = "-".join(names[t] for t in tags) or "untagged"
            s.add("vlan-stack", f"{key}-v4-tcp", f"{depth} tags ({key}), ipv4 tcp", _v4_tcp(tags=tags))
    for depth in range(3):
        for tags in product(TPIDS, repeat=depth):
            key = "-".join(names[t] for t in tags) or "untagged"
            s.add("vlan-stack", f"{key}-v6-udp-hao", f"{depth} tags ({key}), ipv6 dstopts HAO udp",
                  _v6([_hao_dst()], UDP, tags=tags))
    # the 0x88a8 outer tag followed by a non-tag: some parsers assume two tags
    for total in (0x0800, 0x86DD):
        s.add("vlan-stack", f"ad-only-v4-total-{total:04x}",
              f"one 802.1ad tag, ipv4 udp with total length {total:#06x} (an EtherType 4 bytes on)",
              _v4_udp(tags=(0x88A8,), total=total))


def _l4(s: _Set) -> None:
    for doff in (0, 1, 4, 15):
        pl = _payload(doff, 48)
        s.add("l4", f"v4-tcp-doff{doff}", f"ipv4 tcp, data offset {doff}",
              eth(ETH_P_IP) + ipv4(TCP, tcp(doff=doff)[:20] + pl))
        s.add("l4", f"v6-tcp-doff{doff}", f"ipv6 tcp, data offset {doff}",
              eth(ETH_P_IPV6) + ipv6(TCP, tcp(doff=doff)[:20] + pl))
    s.add("l4", "v4-udp-len0", "ipv4 udp, length field 0",
          eth(ETH_P_IP) + ipv4(UDP, _pack("!HHHH", SPORT, DPORT, 0, 0) + _payload(1)))
    s.add("l4", "v4-tcp-doff15-short", "ipv4 tcp, data offset 15, frame ends after 20 bytes of it",
          eth(ETH_P_IP) + ipv4(TCP, tcp(doff=15)[:20]), fixed=True)


def _jumbo(s: _Set) -> None:
    for n in (1515, 1518, 1522, 2000, 4096, 8192, 9014):
        pad = n - (14 + 20 + 20)
        s.add("jumbo", f"v4-tcp-{n}", f"ipv4 tcp, {n}-byte frame",
              eth(ETH_P_IP) + ipv4(TCP, tcp() + _payload(n, pad)))
    s.add("jumbo", "vlan-v4-udp-9018", "802.1Q ipv4 udp, 9018-byte frame",
          _v4_udp(tags=(0x8100,), payload=_payload(9018, 9018 - 46)))
    for n in (1515, 9014):
        fixed_part = 14 + 40 + 24 + 24 + 8
        s.add("jumbo", f"v6-udp-rh2-hao-{n}", f"ipv6 RH2 dstopts-HAO udp, {n}-byte frame",
              _v6([_rh2(), _hao_dst()], UDP, payload=_payload(n, n - fixed_part)))


def _runts(s: _Set) -> None:
    def runs(name, desc, base):
        for n in range(max(len(base), MIN_FRAME_LEN), 60):
            s.add("runt", f"{name}-{n}", f"{desc}, {n} bytes ({n - len(base)} bytes of Ethernet padding)",
                  base + bytes(n - len(base)))

    runs("v4-udp", "ipv4 udp, no payload", eth(ETH_P_IP) + ipv4(UDP, udp(0)))
    runs("v4-tcp", "ipv4 tcp, no payload", eth(ETH_P_IP) + ipv4(TCP, tcp()))
    runs("v4-proto253", "ipv4 protocol 253, no payload", eth(ETH_P_IP) + ipv4(253, b""))
    runs("vlan-v4-udp", "802.1Q ipv4 udp, no payload", eth(ETH_P_IP, (0x8100,)) + ipv4(UDP, udp(0)))
    for n in range(MIN_FRAME_LEN, 60):
        s.add("runt", f"ethertype-88b5-{n}", f"ethertype 0x88b5, {n} bytes",
              eth(0x88B5) + bytes((i * 37 + 1) & 0xFF for i in range(n - 14)))


@lru_cache(maxsize=1)
def _hostile() -> tuple[HostileFrame, ...]:
    s = _Set()
    for part in (_truncations, _bad_ihl, _bad_version, _ext_chains, _options, _bogus_hao, _bogus_rh2,
                 _fragments, _vlan_stacks, _l4, _jumbo, _runts):
        part(s)
    return tuple(s.frames)


def hostile(slices: Iterable[str] | None = None) -> tuple[HostileFrame, ...]:
    """The hostile set (always the same frames, in the same order), or some slices of it."""
    frames = _hostile()
    if slices is None:
        return frames
    wanted = set(slices)
    unknown = wanted - set(SLICES)
    if unknown:
        raise ValueError(f"unknown hostile slice {sorted(unknown)[0]!r}; valid: {', '.join(SLICES)}")
    return tuple(f for f in frames if f.slice in wanted)


# --------------------------------------------------------------------------- batches


class Batch(Sequence):
    """Frames with unique lengths (``by_length``); ``frame_for_guest_len`` maps the
    length a Linux guest reports (frame length - 14) back to the frame."""

    def __init__(self, frames: Iterable[HostileFrame]):
        self.frames = tuple(sorted(frames, key=len))
        self.by_length = {len(f): f for f in self.frames}
        if len(self.by_length) != len(self.frames):
            raise AssertionError("batch lengths are not unique")

    def __getitem__(self, i):
        return self.frames[i]

    def __len__(self) -> int:
        return len(self.frames)

    def frame_for_guest_len(self, guest_len: int) -> HostileFrame | None:
        return self.by_length.get(guest_len + 14)

    def __repr__(self) -> str:
        return f"<Batch frames={len(self)}>"


def _pad_keeps_meaning(data: bytes, padded: bytes) -> bool:
    """Does every modelled parser see the padded frame like the original?"""
    from ..oracle import rss  # imported lazily: hostile frames need no oracle

    for behaviour in ("spec", "qemu-software"):
        if rss.parse_frame(data, behaviour) != rss.parse_frame(padded, behaviour):
            return False
    for context in rss.EBPF_CONTEXTS:
        if rss.parse_frame(data, "qemu-ebpf", ebpf_context=context) != \
                rss.parse_frame(padded, "qemu-ebpf", ebpf_context=context):
            return False
    return True


class _Slots:
    """Free lengths of one batch, with "next free length >= n" in near-constant time."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.next = list(range(max_len + 2))  # union-find towards the next free length

    def find(self, n: int) -> int:
        root = n
        while self.next[root] != root:
            root = self.next[root]
        while self.next[n] != root:
            self.next[n], n = root, self.next[n]
        return root  # max_len + 1: none free

    def take(self, n: int) -> None:
        self.next[n] = n + 1


_PAD_TRIES = 6


@lru_cache(maxsize=8)
def _batches(max_len: int) -> tuple[Batch, ...]:
    frames = [f for f in _hostile() if len(f) <= max_len]
    slots: list[_Slots] = []
    members: list[list[HostileFrame]] = []

    def new_batch() -> int:
        slots.append(_Slots(max_len))
        members.append([])
        return len(slots) - 1

    def place_exact(f: HostileFrame) -> None:
        n = len(f)
        for i, sl in enumerate(slots):
            if sl.find(n) == n:
                break
        else:
            i = new_batch()
        slots[i].take(n)
        members[i].append(f)

    # Fixed frames first, so that padded ones fill around them.
    for f in frames:
        if f.fixed:
            place_exact(f)
    for f in frames:
        if f.fixed:
            continue
        n = len(f)
        placed = False
        for i, sl in enumerate(slots):
            cand = sl.find(n)
            tries = 0
            while cand <= max_len and tries < _PAD_TRIES:
                if cand == n or _pad_keeps_meaning(f.data, f.data + bytes(cand - n)):
                    sl.take(cand)
                    k = cand - n
                    members[i].append(replace(f, data=f.data + bytes(k), pad=k) if k else f)
                    placed = True
                    break
                tries += 1
                cand = sl.find(cand + 1)
            if placed:
                break
        if not placed:
            place_exact(f)
    return tuple(Batch(m) for m in members)


def batches(max_len: int = 1514) -> tuple[Batch, ...]:
    """The hostile frames of at most ``max_len`` bytes, split into batches of unique
    lengths (deterministic).  Frames that are not ``fixed`` may be padded with zero
    bytes (``pad``) when no modelled parser sees a difference; the others keep their
    length and go to another batch when theirs is taken.  Longer frames (``jumbo``)
    are in no batch unless ``max_len`` allows them (e.g. ``batches(9018)``)."""
    if max_len < MIN_FRAME_LEN:
        raise ValueError(f"max_len {max_len} is below the shortest frame ({MIN_FRAME_LEN})")
    return _batches(int(max_len))


# --------------------------------------------------------------------------- random frames

_EXT_WEIGHTS = (DST, DST, DST, HBH, HBH, RT, RT, RT, FRAG, FRAG, AH, AH, MH, ICMPV6, NONE)
_L4_CHOICES = (TCP, TCP, TCP, UDP, UDP, UDP, ICMPV6, ICMP, 47, 132, NONE, 0, 253)
_DEPTHS = (0,) * 8 + (1,) * 6 + (2,) * 4 + (3, 3, 4, 5, 6, 8, 10, 11, 12, 15, 16, 17, 24, 40)
_INTERESTING = (0, 1, 2, 3, 4, 5, 6, 8, 16, 17, 18, 43, 44, 51, 58, 59, 60, 135, 0x40, 0x45, 0x4F,
                0x60, 0x81, 0x86, 0x88, 0x91, 0xA8, 0xC9, 0xDD, 0xFE, 0xFF)
_TPID_BYTES = (b"\x81\x00", b"\x81\x00", b"\x88\xa8", b"\x91\x00")


def _rand_options(rng: random.Random, allow_hao: bool) -> bytes:
    r = rng.random()
    if r < 0.35 and allow_hao:
        pre = rng.choice((b"\x01\x02\x00\x00", b"", b"\0" * rng.randrange(0, 40), b"\x01\x00" * rng.randrange(0, 32)))
        length = 16 if rng.random() < 0.8 else rng.choice((0, 8, 15, 17, 255, rng.randrange(256)))
        return pre + bytes((0xC9, length)) + rng.randbytes(16)
    if r < 0.55:
        return b"\x01" + bytes((rng.randrange(0, 8),)) + bytes(8)
    if r < 0.7:
        return b"\0" * rng.randrange(1, 14)
    if r < 0.85:
        n = rng.randrange(0, 12)
        return bytes((rng.choice((0x1E, 0x05, 0xC2, 0xC9, 0x00, 0x01)), n)) + rng.randbytes(n)
    return rng.randbytes(rng.randrange(0, 30))


def _rand_ext(rng: random.Random, t: int) -> bytes:
    """One header of type ``t`` with a placeholder next header (patched by the caller)."""
    if t == DST or t == HBH:
        body = _rand_options(rng, allow_hao=t == DST or rng.random() < 0.2)
        if rng.random() < 0.9:
            body += opt_pad((-(2 + len(body))) % 8)
            hdrlen = (2 + len(body)) // 8 - 1
        else:
            hdrlen = rng.randrange(0, 8)
        return bytes((0, hdrlen & 0xFF)) + body
    if t == RT:
        rtype = rng.choice((2, 2, 2, 0, 1, 3, 4, rng.randrange(256)))
        segleft = rng.choice((1, 1, 1, 0, 2, rng.randrange(256)))
        naddr = rng.choice((1, 1, 1, 0, 2, 3))
        hdrlen = 2 * naddr if rng.random() < 0.85 else rng.randrange(0, 8)
        return bytes((0, hdrlen, rtype, segleft)) + bytes(4) + rng.randbytes(16 * naddr)
    if t == FRAG:
        off = 0 if rng.random() < 0.5 else rng.randrange(1 << 13)
        return _pack("!BBHI", 0, 0 if rng.random() < 0.9 else rng.randrange(256),
                     (off << 3) | rng.randrange(2), rng.getrandbits(32))
    if t == AH:
        plen = rng.choice((1, 4, 4, 0, 2, rng.randrange(16)))
        return _pack("!BBHI", 0, plen, 0, rng.getrandbits(32)) + bytes(max(0, (plen + 2) * 4 - 8))
    hdrlen = rng.choice((0, 0, 1, 2, rng.randrange(8)))
    return bytes((0, hdrlen)) + rng.randbytes((hdrlen + 1) * 8 - 2)


def _random_frame(rng: random.Random) -> bytes:
    rand = rng.random
    parts = [MAC_DST, MAC_SRC]
    ntags = rng.choice((0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3))
    for _ in range(ntags):
        parts.append(rng.choice(_TPID_BYTES) + _pack("!H", rng.getrandbits(16)))
    r = rand()
    if r < 0.42:
        parts.append(b"\x08\x00")
        ihl = 5 if rand() < 0.8 else rng.randrange(16)
        options = rng.randbytes(4 * (ihl - 5)) if ihl > 5 else b""
        proto = rng.choice(_L4_CHOICES)
        frag = 0 if rand() < 0.75 else rng.choice((0x2000, 0x4000, 0x2000 | rng.randrange(1, 0x2000),
                                                    rng.randrange(1, 0x2000), rng.getrandbits(16)))
        l4 = _rand_l4(rng, proto)
        total = 20 + len(options) + len(l4)
        parts.append(_pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total & 0xFFFF, rng.getrandbits(16), frag, 64,
                           proto, 0, rng.randbytes(4), rng.randbytes(4)) + options)
        parts.append(l4)
    elif r < 0.92:
        parts.append(b"\x86\xdd")
        depth = rng.choice(_DEPTHS)
        types = [rng.choice(_EXT_WEIGHTS) for _ in range(depth)]
        if depth and rand() < 0.15:  # a self-pointing run
            types = [types[0]] * depth
        proto = rng.choice(_L4_CHOICES)
        first = types[0] if types else proto
        hdrs = []
        for i, t in enumerate(types):
            h = _rand_ext(rng, t)
            nxt = types[i + 1] if i + 1 < depth else proto
            hdrs.append(bytes((nxt,)) + h[1:])
        body = b"".join(hdrs) + _rand_l4(rng, proto)
        parts.append(_pack("!IHBB", 0x60000000 | rng.getrandbits(20), len(body) & 0xFFFF, first, 64)
                     + rng.randbytes(32) + body)
    else:
        parts.append(rng.choice((b"\x08\x06", b"\x88\xb5", b"\x88\xcc", b"\x00\x2e", rng.randbytes(2))))
        parts.append(rng.randbytes(rng.randrange(0, 64)))
    frame = bytearray(b"".join(parts))
    hdr_end = len(frame)
    # payload
    r = rand()
    if r < 0.3:
        pass
    elif r < 0.85:
        frame += rng.randbytes(rng.randrange(1, 48))
    elif r < 0.98:
        frame += rng.randbytes(rng.randrange(48, 400))
    else:
        frame += bytes(rng.randrange(400, 1400))
    # corruption
    if rand() < 0.55:
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            m = rand()
            if m < 0.3 and hdr_end > 14:
                del frame[rng.randrange(14, hdr_end + 1):]
                hdr_end = min(hdr_end, len(frame))
            elif m < 0.6 and len(frame) > 12:
                frame[rng.randrange(12, max(13, min(hdr_end, len(frame))))] = rng.choice(_INTERESTING)
            elif m < 0.8 and len(frame) > 12:
                i = rng.randrange(12, len(frame))
                frame[i] ^= 1 << rng.randrange(8)
            elif m < 0.9:
                frame += rng.randbytes(rng.randrange(1, 24))
            else:
                i = rng.randrange(14, max(15, len(frame)))
                frame[i:i] = frame[i:i + rng.randrange(1, 24)]
    if len(frame) < 14:
        frame += bytes(14 - len(frame))
    return bytes(frame)


def _rand_l4(rng: random.Random, proto: int) -> bytes:
    if proto == TCP:
        doff = 5 if rng.random() < 0.85 else rng.randrange(16)
        return _pack("!HHIIBBHHH", rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(32), 0,
                     doff << 4, 0x18, 0xFFFF, 0, 0) + (bytes(4 * (doff - 5)) if doff > 5 else b"")
    if proto == UDP:
        return _pack("!HHHH", rng.getrandbits(16), rng.getrandbits(16), 8, 0)
    return rng.randbytes(rng.choice((0, 4, 8, 8, 16)))


def random_frames(seed: int, n: int, max_len: int = 1514) -> list[bytes]:
    """``n`` random frames from ``seed`` (the same seed gives the same frames), each
    14..``max_len`` bytes (longer ones are cut: one more kind of truncation)."""
    it = iter_random_frames(seed, max_len)
    return [next(it) for _ in range(int(n))]


def iter_random_frames(seed: int, max_len: int = 1514) -> Iterator[bytes]:
    """The same sequence as :func:`random_frames`, endless."""
    if max_len < 14:
        raise ValueError(f"max_len {max_len} is below an Ethernet header (14)")
    rng = random.Random(f"hashlab-hostile-{int(seed)}")
    while True:
        yield _random_frame(rng)[:max_len]
