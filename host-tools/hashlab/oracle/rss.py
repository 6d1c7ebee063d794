"""The spec oracle: virtio-net RSS / hash report, in pure Python (no I/O).

What a virtio-net device *should* report for a received Ethernet frame: the Toeplitz
hash, the hash report type, and the RSS queue.  Follows virtio 1.3 §5.1.6.4.3 ("Hash
calculation for incoming packets" and hash reporting, in the spec source's
device-types/net/description.tex), and can also model the two QEMU
implementations exactly, parser included (``behaviour=``, see :func:`hash_packet`):

* ``"spec"``: the virtio rules over :func:`parse_frame`'s parsing (the "truncated /
  malformed" rules every hashlab component agrees on);
* ``"qemu-software"``: QEMU 10.0's software path (hw/net/virtio-net.c
  ``virtio_net_process_rss``): net/eth.c ``eth_get_protocols`` parses, hw/net/net_rx_pkt.c
  ``net_rx_pkt_calc_rss_hash`` hashes, ``virtio_net_get_hash_type`` selects;
* ``"qemu-ebpf"``: upstream QEMU 10.0's ``tools/ebpf/rss.bpf.c`` (``tun_rss_steering_prog``,
  the program *before* hashlab's patches), which selects a queue only; the report we give
  is the spec type of the bytes it hashed.  Its IP header is read at the kernel's
  network header, which depends on how the frame reached the program
  (``ebpf_context``: ``"af_packet"``, the lab's tap path, or ``"test_run"``,
  ``BPF_PROG_TEST_RUN``).
* ``"hashlab-ebpf"``: hashlab's own eBPF program (``tools/ebpf/rss.bpf.c`` with
  ``qemu/patches``, both program forms): the spec with the bounds a verifier-checked
  parser must have, each a named divergence (``hashlab-ebpf-*``).  What the program
  should answer; a bug of the program is *not* modelled here.

Named divergences
-----------------
Every way a QEMU behaviour departs from ``"spec"`` is a small named branch in the code
(grep for the name); ``DIVERGENCES`` holds the same table.  Verified against
QEMU 10.0.13's source (Debian ``qemu_10.0.13+ds``).

==================================  =============  ==================================================================
name                                behaviour      where (QEMU), what
==================================  =============  ==================================================================
qemu-software-ex-without-ext        qemu-software  virtio_net_get_hash_type: an enabled _EX type wins whenever
                                                   the L4 protocol matches, extension headers or not
qemu-software-l4-before-ip-ex       qemu-software  virtio_net_get_hash_type: with extension headers TCP/UDP take
                                                   TCPv6/UDPv6 before IPv6_EX
qinq-8100-8100-not-parsed           qemu-software  eth_get_l2_hdr_length: 0x8100 skips one tag, 0x88a8 two only
                                                   when the inner TPID is 0x8100, else one; 0x9100 is no tag
ah-length-in-8-octet-units          qemu-software  eth_parse_ipv6_hdr: AH length taken as (len+1)*8, not (len+2)*4
ipv4-ihl-not-validated              qemu-software  eth_get_protocols: IHL < 5 or options cut by the frame's end
                                                   still IPv4; L4 header read at IHL*4
tcp-data-offset-not-validated       qemu-software  eth_get_protocols: TCP data offset < 5 still TCP
ipv6-version-not-checked            qemu-software  eth_parse_ipv6_hdr: the version nibble is not checked
ipv6-ext-chain-unbounded            qemu-software  eth_parse_ipv6_hdr: no limit on the extension header chain
truncated-ext-header-still-hashed   qemu-software  eth_parse_ipv6_hdr: only an extension header's first 2 bytes
                                                   must be present; a cut header ends as IPv6 (address-only)
mobility-header-is-ext-header       qemu-software  eth_is_ip6_extension_header_type: Mobility (135) is walked
hao-from-last-dstopts-header        qemu-software  eth_parse_ipv6_hdr: every Destination Options header overwrites
                                                   the Home Address (a later one without HAO clears it)
rh2-from-last-routing-header        qemu-software  eth_parse_ipv6_hdr: every routing header with Hdr Ext Len 2
                                                   overwrites the RH2 address (a later type 0 one clears it)
hao-option-length-not-checked       qemu-software  _eth_get_rss_ex_src_addr: any option of type 0xC9 is a HAO;
                                                   16 bytes after its type/length are read, whatever its length
qemu-ebpf-base-type-first           qemu-ebpf      calculate_rss_hash: TCPv6/UDPv6/IPv6 select, the _EX type
                                                   only substitutes HAO/RH2 (each when found); never _EX alone
ebpf-network-header                 qemu-ebpf      parse_eth_type/parse_packet: EtherType at MAC offset 16 (0x8100)
                                                   or 20 (0x88a8, whatever follows), no 0x9100; the IP header at
                                                   the kernel's network header (``ebpf_context``)
ebpf-ip-header-not-validated        qemu-ebpf      parse_packet: no IPv4/IPv6 version check, no IHL check
ebpf-truncated-l4-no-hash           qemu-ebpf      parse_packet: a TCP/UDP header not completely present is an
                                                   error: no hash at all (not the address-only rule)
ebpf-tcp-data-offset-not-validated  qemu-ebpf      parse_packet: TCP data offset < 5 still TCP
ebpf-ext-header-set                 qemu-ebpf      ip6_extension_header_type: ICMPv6 (58), No Next Header (59)
                                                   and Mobility (135) are walked; AH (51) is not (ends the chain)
ebpf-ext-chain-11                   qemu-ebpf      parse_ipv6_ext: 11 headers walked; with more the 12th header
                                                   type is taken as L4 protocol (address-only hash)
ebpf-truncated-ext-header           qemu-ebpf      parse_ipv6_ext: only 2 bytes (routing: 4, RH2: 24) of a header
                                                   must be present; a cut chain hashes address-only or not at
                                                   all, depending on what its next header is
ebpf-hao-scan                       qemu-ebpf      parse_ipv6_ext: options scanned while offset+1 < Hdr Ext Len*8
                                                   (at most 30), HAO length not checked, an option read past
                                                   the frame = no hash, the last HAO found wins
ebpf-rh2-last-wins                  qemu-ebpf      parse_ipv6_ext: a later RH2 overwrites an earlier one
hashlab-ebpf-hao-30-options         hashlab-ebpf   parse_ipv6_dstopts: a Destination Options header's options are
                                                   scanned for a HAO at most 30 deep (Pad1 counts as one); a HAO
                                                   that is option 31 or later is not found (source address used)
==================================  =============  ==================================================================

Public API
----------
``HashType``, ``Report``, ``type_for_report``, ``report_for_type``, ``ALL_TYPES``,
``LINUX_GUEST_TYPES``, ``MS_KEY``, ``BEHAVIOURS``, ``EBPF_CONTEXTS``, ``DIVERGENCES``,
``Divergence``, ``is_l4_report``, ``toeplitz``, ``parse_hash_types``, ``hash_type_names``,
``parse_key``, ``parse_ethtool_x``, ``FrameInfo``, ``parse_frame``, ``hash_input``,
``hash_info``, ``hash_packet``, ``select_queue``, ``RssConfig``, ``Expectation``.
"""

from __future__ import annotations

import enum
import functools
import re
import struct
from dataclasses import dataclass, field

__all__ = [
    "HashType",
    "Report",
    "type_for_report",
    "report_for_type",
    "ALL_TYPES",
    "LINUX_GUEST_TYPES",
    "MS_KEY",
    "BEHAVIOURS",
    "EBPF_CONTEXTS",
    "DIVERGENCES",
    "Divergence",
    "is_l4_report",
    "toeplitz",
    "parse_hash_types",
    "hash_type_names",
    "parse_key",
    "parse_ethtool_x",
    "FrameInfo",
    "parse_frame",
    "hash_input",
    "hash_info",
    "hash_packet",
    "select_queue",
    "RssConfig",
    "Expectation",
]


# --------------------------------------------------------------------------- constants


class HashType(enum.IntFlag):
    """``VIRTIO_NET_RSS_HASH_TYPE_*``: the bitmask of enabled hash types."""

    IPv4 = 1 << 0
    TCPv4 = 1 << 1
    UDPv4 = 1 << 2
    IPv6 = 1 << 3
    TCPv6 = 1 << 4
    UDPv6 = 1 << 5
    IPv6_EX = 1 << 6
    TCPv6_EX = 1 << 7
    UDPv6_EX = 1 << 8


class Report(enum.IntEnum):
    """``VIRTIO_NET_HASH_REPORT_*``: the type the device reports with a hash."""

    NONE = 0
    IPv4 = 1
    TCPv4 = 2
    UDPv4 = 3
    IPv6 = 4
    TCPv6 = 5
    UDPv6 = 6
    IPv6_EX = 7
    TCPv6_EX = 8
    UDPv6_EX = 9

    @property
    def is_l4(self) -> bool:
        """True for TCP/UDP reports: the Linux guest marks the skb ``l4_hash``."""
        return self in _L4_REPORTS


_L4_REPORTS = frozenset(
    {Report.TCPv4, Report.UDPv4, Report.TCPv6, Report.UDPv6, Report.TCPv6_EX, Report.UDPv6_EX}
)


def type_for_report(report: int) -> HashType:
    """The hash-type bit of a report value (``TYPE_X == 1 << (REPORT_X - 1)``)."""
    report = Report(report)
    if report == Report.NONE:
        raise ValueError("Report.NONE has no hash type")
    return HashType(1 << (report - 1))


def report_for_type(hash_type: int) -> Report:
    """The report value of a single hash-type bit."""
    t = int(hash_type)
    if t <= 0 or t & (t - 1) or t > int(HashType.UDPv6_EX):
        raise ValueError(f"not a single hash type bit: {t:#x}")
    return Report(t.bit_length())


ALL_TYPES: int = int(functools.reduce(lambda a, b: a | b, HashType))
"""Every hash type (0x1ff)."""

LINUX_GUEST_TYPES: int = ALL_TYPES & ~int(HashType.IPv6_EX | HashType.TCPv6_EX | HashType.UDPv6_EX)
"""What the Linux virtio_net driver enables at most: everything but the _EX types (0x3f)."""

MS_KEY: bytes = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)
"""The 40-byte Microsoft verification key (also Linux's and QEMU's usual default)."""

BEHAVIOURS = ("spec", "qemu-software", "qemu-ebpf", "hashlab-ebpf")

EBPF_CONTEXTS = ("af_packet", "test_run")
"""Where upstream's eBPF program finds the network header (``hash_packet(ebpf_context=)``):

* ``"af_packet"``: frames written to the tap with an ``AF_PACKET``/``SOCK_RAW`` socket of
  protocol 0 (hashlab's tap path): Linux's ``packet_parse_headers`` puts the network
  header after the leading 0x8100/0x88a8 tags (``vlan_get_protocol_and_depth``: at most
  7 tags, all present, else it stays at 14);
* ``"test_run"``: ``BPF_PROG_TEST_RUN`` (``bpf_prog_test_run_skb``: ``eth_type_trans``,
  then ``skb_reset_network_header``): always 14.
"""


@dataclass(frozen=True)
class Divergence:
    """One named way a QEMU behaviour departs from ``"spec"`` (see the module docstring)."""

    behaviour: str
    where: str  # the QEMU function
    what: str


DIVERGENCES: dict[str, Divergence] = {
    d[0]: Divergence(*d[1:])
    for d in [
        ("qemu-software-ex-without-ext", "qemu-software", "virtio_net_get_hash_type",
         "an enabled _EX type wins whenever the L4 protocol matches, extension headers or not"),
        ("qemu-software-l4-before-ip-ex", "qemu-software", "virtio_net_get_hash_type",
         "with extension headers, TCP/UDP take TCPv6/UDPv6 before IPv6_EX"),
        ("qinq-8100-8100-not-parsed", "qemu-software", "eth_get_l2_hdr_length",
         "0x8100 skips one tag; 0x88a8 two only when the inner TPID is 0x8100; 0x9100 is no tag"),
        ("ah-length-in-8-octet-units", "qemu-software", "eth_parse_ipv6_hdr",
         "AH length taken as (len+1)*8 instead of (len+2)*4"),
        ("ipv4-ihl-not-validated", "qemu-software", "eth_get_protocols",
         "IHL < 5, or options cut by the frame's end, still IPv4; L4 header read at IHL*4"),
        ("tcp-data-offset-not-validated", "qemu-software", "eth_get_protocols",
         "a TCP header with data offset < 5 still counts as TCP"),
        ("ipv6-version-not-checked", "qemu-software", "eth_parse_ipv6_hdr",
         "ethertype 0x86dd with any IP version is parsed as IPv6"),
        ("ipv6-ext-chain-unbounded", "qemu-software", "eth_parse_ipv6_hdr",
         "no limit on the extension header chain"),
        ("truncated-ext-header-still-hashed", "qemu-software", "eth_parse_ipv6_hdr",
         "only an extension header's first 2 bytes must be present; a header cut by the "
         "frame's end leaves the packet IPv6 (address-only hash)"),
        ("mobility-header-is-ext-header", "qemu-software", "eth_is_ip6_extension_header_type",
         "the Mobility header (135) is walked like an extension header"),
        ("hao-from-last-dstopts-header", "qemu-software", "eth_parse_ipv6_hdr",
         "every Destination Options header overwrites the Home Address (one without HAO clears it)"),
        ("rh2-from-last-routing-header", "qemu-software", "eth_parse_ipv6_hdr",
         "every routing header with Hdr Ext Len 2 overwrites the RH2 address (one that is no RH2 clears it)"),
        ("hao-option-length-not-checked", "qemu-software", "_eth_get_rss_ex_src_addr",
         "any option of type 0xC9 is a Home Address; the 16 bytes after its type/length are read"),
        ("qemu-ebpf-base-type-first", "qemu-ebpf", "calculate_rss_hash",
         "TCPv6/UDPv6/IPv6 select; the _EX type only substitutes HAO/RH2, each when found"),
        ("ebpf-network-header", "qemu-ebpf", "parse_eth_type, parse_packet",
         "EtherType read at MAC offset 16 (0x8100) or 20 (0x88a8, whatever follows), 0x9100 is "
         "no tag; the IP header is read at the kernel's network header (ebpf_context)"),
        ("ebpf-ip-header-not-validated", "qemu-ebpf", "parse_packet",
         "no IPv4/IPv6 version check, no IHL check"),
        ("ebpf-truncated-l4-no-hash", "qemu-ebpf", "parse_packet",
         "a TCP/UDP header not completely present is an error: no hash at all"),
        ("ebpf-tcp-data-offset-not-validated", "qemu-ebpf", "parse_packet",
         "a TCP header with data offset < 5 still counts as TCP"),
        ("ebpf-ext-header-set", "qemu-ebpf", "ip6_extension_header_type",
         "ICMPv6 (58), No Next Header (59) and Mobility (135) are walked; AH (51) ends the chain"),
        ("ebpf-ext-chain-11", "qemu-ebpf", "parse_ipv6_ext",
         "11 headers are walked; with more, the 12th header's type is the L4 protocol"),
        ("ebpf-truncated-ext-header", "qemu-ebpf", "parse_ipv6_ext",
         "only 2 bytes of a header (routing 4, an RH2 24) must be present"),
        ("ebpf-hao-scan", "qemu-ebpf", "parse_ipv6_ext",
         "options scanned while offset+1 < Hdr Ext Len*8, at most 30; HAO length not checked; "
         "an option read past the frame is an error; the last HAO found wins"),
        ("ebpf-rh2-last-wins", "qemu-ebpf", "parse_ipv6_ext",
         "a later Type 2 Routing Header overwrites an earlier one's address"),
        ("hashlab-ebpf-hao-30-options", "hashlab-ebpf", "parse_ipv6_dstopts",
         "a Destination Options header is scanned for a Home Address at most 30 options deep "
         "(Pad1 counts); a HAO that is option 31 or later is not found"),
    ]
}


def is_l4_report(report: int) -> bool:
    """True for TCP/UDP reports (``Report(report).is_l4``)."""
    return Report(report).is_l4


# --------------------------------------------------------------------------- Toeplitz


@functools.lru_cache(maxsize=32)
def _toeplitz_tables(key: bytes) -> tuple[tuple[int, ...], ...]:
    """Per input byte position i, the hash contribution of each of the 256 byte values.

    The contribution of input bit j (MSB of byte 0 is j = 0) is the 32-bit key window
    starting at key bit j; a byte's contribution is the XOR of its set bits' windows.
    """
    nbits = len(key) * 8
    k = int.from_bytes(key, "big")
    tables = []
    for i in range(len(key) - 4):
        windows = [(k >> (nbits - 32 - (8 * i + b))) & 0xFFFFFFFF for b in range(8)]
        # windows[b] belongs to bit (7 - b) of the byte (b = 0 is the MSB).
        table = [0] * 256
        for v in range(1, 256):
            low = v & -v  # lowest set bit
            b = 7 - (low.bit_length() - 1)
            table[v] = table[v ^ low] ^ windows[b]
        tables.append(tuple(table))
    return tuple(tables)


def toeplitz(key: bytes, data: bytes) -> int:
    """Microsoft's Toeplitz hash of ``data`` under ``key`` (a 32-bit int).

    For each input bit, most significant bit of byte 0 first: if the bit is 1, XOR the
    left-most 32 bits of the (shifted) key into the result; then shift the key left by one.
    The key must hold at least ``len(data) + 4`` bytes.
    """
    key = bytes(key)
    data = bytes(data)
    if len(key) < len(data) + 4:
        raise ValueError(
            f"Toeplitz key of {len(key)} bytes is too short for {len(data)} bytes of input "
            f"(needs at least {len(data) + 4})"
        )
    tables = _toeplitz_tables(key)
    result = 0
    for i, byte in enumerate(data):
        result ^= tables[i][byte]
    return result


# --------------------------------------------------------------------------- parsers

_TYPE_NAMES: dict[str, int] = {
    "ipv4": HashType.IPv4,
    "tcpv4": HashType.TCPv4,
    "udpv4": HashType.UDPv4,
    "ipv6": HashType.IPv6,
    "tcpv6": HashType.TCPv6,
    "udpv6": HashType.UDPv6,
    "ipv6_ex": HashType.IPv6_EX,
    "tcpv6_ex": HashType.TCPv6_EX,
    "udpv6_ex": HashType.UDPv6_EX,
    # aliases (the Linux/virtio spec names)
    "ip_ex": HashType.IPv6_EX,
    "tcp_ex": HashType.TCPv6_EX,
    "udp_ex": HashType.UDPv6_EX,
}
_SET_NAMES: dict[str, int] = {"all": ALL_TYPES, "linux": LINUX_GUEST_TYPES, "none": 0}
_VALID_NAMES_TEXT = ", ".join(list(_TYPE_NAMES) + list(_SET_NAMES)) + ", or an integer"


def parse_hash_types(spec: str) -> int:
    """Parse a hash-type list: ``"tcpv4,udpv4"``, ``"all"``, ``"linux"``, ``"none"``, ``"0x3f"``.

    Comma-separated, case-insensitive; tokens are OR-ed together.  Names: ipv4, tcpv4,
    udpv4, ipv6, tcpv6, udpv6, ipv6_ex, tcpv6_ex, udpv6_ex (aliases ip_ex, tcp_ex,
    udp_ex); sets: all (0x1ff), linux (0x3f, the guest's set), none (0); or a hex
    (``0x...``) / decimal integer.  Raises ``ValueError`` naming an unknown token.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty hash type list; valid: {_VALID_NAMES_TEXT}")
    result = 0
    for raw in spec.split(","):
        token = raw.strip().lower()
        if not token:
            raise ValueError(f"empty name in hash type list {spec!r}; valid: {_VALID_NAMES_TEXT}")
        if token in _TYPE_NAMES:
            result |= int(_TYPE_NAMES[token])
        elif token in _SET_NAMES:
            result |= _SET_NAMES[token]
        elif re.fullmatch(r"0x[0-9a-f]+|[0-9]+", token):
            value = int(token, 0) if token.startswith("0x") else int(token, 10)
            if value & ~ALL_TYPES:
                raise ValueError(
                    f"hash type value {value:#x} has unknown bits {value & ~ALL_TYPES:#x} "
                    f"(valid bits: {ALL_TYPES:#x})"
                )
            result |= value
        else:
            raise ValueError(f"unknown hash type {raw.strip()!r}; valid: {_VALID_NAMES_TEXT}")
    return result


def hash_type_names(types: int) -> str:
    """The canonical comma-separated names of a hash-type mask (``"none"`` for 0)."""
    names = [t.name for t in HashType if int(types) & int(t)]
    return ",".join(n.lower() for n in names) if names else "none"


def parse_key(text: str) -> bytes:
    """Parse a hash key written in hex: ``6d5a56...`` or ethtool-style ``6d:5a:56:...``.

    Whitespace around is ignored, an optional ``0x`` prefix is accepted.  With colons,
    every group must be exactly two hex digits.  The key must be 1..255 bytes
    (``hash_key_length`` is a u8).  Raises ``ValueError`` otherwise.
    """
    if not isinstance(text, str):
        raise ValueError("hash key must be a hex string")
    t = text.strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    if ":" in t:
        groups = t.split(":")
        bad = [g for g in groups if not re.fullmatch(r"[0-9a-fA-F]{2}", g)]
        if bad:
            raise ValueError(
                f"bad hash key: {bad[0]!r} is not a two-digit hex byte "
                "(expected e.g. 6d:5a:56:... or 6d5a56...)"
            )
        hexdigits = "".join(groups)
    else:
        hexdigits = t
        if not re.fullmatch(r"[0-9a-fA-F]*", hexdigits):
            raise ValueError(f"bad hash key: {text.strip()!r} is not hex")
        if len(hexdigits) % 2:
            raise ValueError(f"bad hash key: odd number of hex digits ({len(hexdigits)})")
    key = bytes.fromhex(hexdigits)
    if not 1 <= len(key) <= 255:
        raise ValueError(f"bad hash key: {len(key)} bytes (must be 1..255 bytes)")
    return key


_ETHTOOL_TABLE_HDR = re.compile(r"RX flow hash indirection table for \S+ with (\d+) RX ring")
_ETHTOOL_ROW = re.compile(r"^\s*(\d+):((?:\s+\d+)+)\s*$")


def parse_ethtool_x(text: str) -> tuple[bytes, list[int]]:
    """Parse ``ethtool -x ethX`` output into ``(key, indirection_table)``.

    Understands the "RX flow hash indirection table for ethX with N RX ring(s):" block
    (rows ``   8:   0  1  0  1 ...``) and the "RSS hash key:" line followed by a
    colon-separated hex line; anything after (hash function, input transformation) is
    ignored.  Raises ``ValueError`` if the table or the key is missing or inconsistent.
    """
    lines = text.splitlines()
    table: list[int] = []
    key: bytes | None = None
    seen_table = False
    rings = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _ETHTOOL_TABLE_HDR.search(line)
        if m:
            seen_table = True
            rings = int(m.group(1))
            i += 1
            while i < len(lines):
                row = _ETHTOOL_ROW.match(lines[i])
                if not row:
                    break
                start = int(row.group(1))
                if start != len(table):
                    raise ValueError(
                        f"ethtool -x: indirection table row starts at {start}, expected {len(table)}"
                    )
                table.extend(int(v) for v in row.group(2).split())
                i += 1
            continue
        if line.strip().startswith("RSS hash key:"):
            rest = line.split(":", 1)[1].strip()
            if not rest:
                i += 1
                while i < len(lines) and not lines[i].strip():
                    i += 1
                rest = lines[i].strip() if i < len(lines) else ""
            try:
                key = parse_key(rest)
            except ValueError as e:
                raise ValueError(f"ethtool -x: cannot read the RSS hash key {rest!r}: {e}") from None
        i += 1
    if not seen_table or not table:
        raise ValueError("ethtool -x: no 'RX flow hash indirection table' found")
    if key is None:
        raise ValueError("ethtool -x: no 'RSS hash key:' found")
    if rings is not None and any(q >= rings for q in table):
        raise ValueError(f"ethtool -x: table entry out of range for {rings} RX ring(s)")
    return key, table


# --------------------------------------------------------------------------- frame parsing

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 2

IPPROTO_TCP = 6
IPPROTO_UDP = 17
# IPv6 extension headers the parser walks: hop-by-hop, routing, fragment, AH, dest opts.
IPV6_EXT_HOPOPTS = 0
IPV6_EXT_ROUTING = 43
IPV6_EXT_FRAGMENT = 44
IPV6_EXT_AH = 51
IPV6_EXT_DSTOPTS = 60
IPV6_EXT_HEADERS = frozenset(
    {IPV6_EXT_HOPOPTS, IPV6_EXT_ROUTING, IPV6_EXT_FRAGMENT, IPV6_EXT_AH, IPV6_EXT_DSTOPTS}
)
MAX_IPV6_EXT_HEADERS = 16
HASHLAB_EBPF_MAX_OPTIONS = 30  # rss.bpf.c IP6_OPTIONS_COUNT (qemu/patches)
IPV6_OPT_PAD1 = 0
IPV6_OPT_HOME_ADDRESS = 0xC9
TCP_MIN_HEADER = 20
UDP_HEADER = 8


@dataclass(frozen=True)
class FrameInfo:
    """What the hash selection needs to know about a frame (see :func:`parse_frame`).

    ``l4`` is ``"tcp"``, ``"udp"`` or ``None`` (other protocol, fragment, or an L4
    header not completely present); ports are set only when ``l4`` is.  ``has_ext`` is
    true for IPv6 with at least one extension header; ``hao``/``rh2`` are the Home
    Address option's address and the Routing Header type 2 address when present.
    """

    family: int  # 4 or 6
    src: bytes
    dst: bytes
    l4: str | None = None
    sport: int = 0
    dport: int = 0
    fragment: bool = False
    has_ext: bool = False
    hao: bytes | None = None
    rh2: bytes | None = None
    vlan_tags: int = 0
    ext_headers: tuple[int, ...] = field(default=())
    # Where the IP payload starts and its protocol (the spec parser only; -1 otherwise):
    # what the inner header hash (oracle.tunnel) looks into.  Not part of the verdict.
    proto: int = field(default=-1, compare=False)
    payload: int = field(default=-1, compare=False)


def _parse_l4(frame: bytes, off: int, proto: int) -> tuple[str | None, int, int]:
    if proto == IPPROTO_TCP:
        if len(frame) - off < TCP_MIN_HEADER or (frame[off + 12] >> 4) < 5:
            return None, 0, 0
        sport, dport = struct.unpack_from("!HH", frame, off)
        return "tcp", sport, dport
    if proto == IPPROTO_UDP:
        if len(frame) - off < UDP_HEADER:
            return None, 0, 0
        sport, dport = struct.unpack_from("!HH", frame, off)
        return "udp", sport, dport
    return None, 0, 0


def _find_hao(frame: bytes, start: int, end: int, max_options: int | None = None) -> bytes | None:
    """The Home Address option's address in the options area ``frame[start:end]``;
    with ``max_options``, only that many options (Pad1 included) are looked at."""
    i = start
    seen = 0
    while i < end:
        if max_options is not None:
            # divergence "hashlab-ebpf-hao-30-options": a bounded scan.
            if seen >= max_options:
                return None
            seen += 1
        otype = frame[i]
        if otype == IPV6_OPT_PAD1:
            i += 1
            continue
        if i + 2 > end:
            return None
        olen = frame[i + 1]
        if i + 2 + olen > end:
            return None
        if otype == IPV6_OPT_HOME_ADDRESS and olen == 16:
            return bytes(frame[i + 2 : i + 18])
        i += 2 + olen
    return None


def parse_frame(frame: bytes, behaviour: str = "spec", *, ebpf_context: str = "af_packet") -> FrameInfo | None:
    """Parse an Ethernet frame as ``behaviour`` does; ``None`` = no hash at all.

    ``"qemu-software"`` and ``"qemu-ebpf"`` are QEMU's own parsers (see the module
    docstring's divergence table); ``hao``/``rh2`` are then the addresses that
    implementation would substitute.  ``"hashlab-ebpf"`` is the spec's parser with
    hashlab's eBPF program's bounds (its ``hashlab-ebpf-*`` divergences).  The ``"spec"``
    rules (the "truncated/malformed" rule hashlab's components agree on):

    * Ethernet: 14 bytes; up to two VLAN tags (0x8100, 0x88a8, 0x9100) are skipped.
      A truncated tag, a third tag, or any ethertype but IPv4/IPv6 → ``None``.
    * IPv4: at least 20 bytes, version 4, IHL >= 5 and all IHL*4 header bytes present,
      else ``None``.  The total-length field is not consulted (trailing bytes ignored).
      MF set or fragment offset != 0 → fragment (no L4 header).  DF alone is no fragment.
    * IPv6: at least 40 bytes and version 6, else ``None``.  The extension headers
      hop-by-hop (0), routing (43), fragment (44), AH (51) and destination options (60)
      are walked (AH length is ``(len+2)*4``, the others ``(len+1)*8``).  If a header of
      the chain is not completely present, or the chain is longer than
      ``MAX_IPV6_EXT_HEADERS`` → ``None`` (the addresses are there, but the packet's
      shape is unknown; QEMU's software path hashes such a packet by address instead).
      A fragment header makes the packet a fragment (no L4 header), whatever its offset.
      The first Home Address option (type 0xC9, length 16) of any destination options
      header gives ``hao``; a routing header of type 2 with Hdr Ext Len 2 (one address)
      and Segments Left 1 (as RFC 6275 mandates) gives ``rh2``.
    * L4: TCP needs its 20-byte header (and data offset >= 5), UDP its 8-byte header,
      completely inside the frame; otherwise the packet is not TCP/UDP (``l4=None``)
      and falls to the address-only rule.
    """
    frame = bytes(frame)
    if behaviour == "qemu-software":
        return _parse_qemu_software(frame)
    if behaviour == "qemu-ebpf":
        if ebpf_context not in EBPF_CONTEXTS:
            raise ValueError(f"unknown ebpf_context {ebpf_context!r}; valid: {', '.join(EBPF_CONTEXTS)}")
        return _parse_qemu_ebpf(frame, ebpf_context)
    if behaviour not in ("spec", "hashlab-ebpf"):
        raise ValueError(f"unknown behaviour {behaviour!r}; valid: {', '.join(BEHAVIOURS)}")
    max_options = HASHLAB_EBPF_MAX_OPTIONS if behaviour == "hashlab-ebpf" else None
    if len(frame) < 14:
        return None
    off = 12
    ethertype = struct.unpack_from("!H", frame, off)[0]
    off += 2
    tags = 0
    while ethertype in VLAN_ETHERTYPES:
        tags += 1
        if tags > MAX_VLAN_TAGS or len(frame) < off + 4:
            return None
        ethertype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if ethertype == ETH_P_IP:
        return _parse_ipv4(frame, off, tags)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(frame, off, tags, max_options)
    return None


def _parse_ipv4(frame: bytes, off: int, tags: int) -> FrameInfo | None:
    if len(frame) - off < 20:
        return None
    ver_ihl = frame[off]
    if ver_ihl >> 4 != 4:
        return None
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < 20 or len(frame) - off < ihl:
        return None
    frag_field = struct.unpack_from("!H", frame, off + 6)[0]
    fragment = bool(frag_field & 0x2000) or (frag_field & 0x1FFF) != 0
    proto = frame[off + 9]
    src = frame[off + 12 : off + 16]
    dst = frame[off + 16 : off + 20]
    l4, sport, dport = (None, 0, 0) if fragment else _parse_l4(frame, off + ihl, proto)
    return FrameInfo(4, src, dst, l4, sport, dport, fragment=fragment, vlan_tags=tags,
                     proto=proto, payload=off + ihl)


def _parse_ipv6(frame: bytes, off: int, tags: int, max_options: int | None = None) -> FrameInfo | None:
    if len(frame) - off < 40:
        return None
    if frame[off] >> 4 != 6:
        return None
    nh = frame[off + 6]
    src = frame[off + 8 : off + 24]
    dst = frame[off + 24 : off + 40]
    p = off + 40
    exts: list[int] = []
    fragment = False
    hao: bytes | None = None
    rh2: bytes | None = None
    while nh in IPV6_EXT_HEADERS:
        if len(exts) >= MAX_IPV6_EXT_HEADERS:
            return None
        if len(frame) - p < 8:
            return None
        hlen = (frame[p + 1] + 2) * 4 if nh == IPV6_EXT_AH else (frame[p + 1] + 1) * 8
        if len(frame) - p < hlen:
            return None
        if nh == IPV6_EXT_FRAGMENT:
            fragment = True
        elif nh == IPV6_EXT_DSTOPTS:
            if hao is None:
                hao = _find_hao(frame, p + 2, p + hlen, max_options)
        elif nh == IPV6_EXT_ROUTING:
            rtype, segleft = frame[p + 2], frame[p + 3]
            if rh2 is None and rtype == 2 and frame[p + 1] == 2 and segleft == 1:
                rh2 = bytes(frame[p + 8 : p + 24])
        exts.append(nh)
        nh = frame[p]
        p += hlen
    l4, sport, dport = (None, 0, 0) if fragment else _parse_l4(frame, p, nh)
    return FrameInfo(
        6,
        src,
        dst,
        l4,
        sport,
        dport,
        fragment=fragment,
        has_ext=bool(exts),
        hao=hao,
        rh2=rh2,
        vlan_tags=tags,
        ext_headers=tuple(exts),
        proto=nh,
        payload=p,
    )


# --------------------------------------------------------------------------- QEMU's software parser
# A model of QEMU 10.0's net/eth.c as virtio_net_process_rss uses it (frame-relative
# offsets; QEMU's own are shifted by the vnet header, which changes nothing).  Every
# departure from parse_frame's spec rules is marked with its divergence name.

ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_MH = 135
# eth_is_ip6_extension_header_type
_QEMU_SW_EXT_HEADERS = frozenset(IPV6_EXT_HEADERS | {IPPROTO_MH})


def _u16(frame: bytes, off: int) -> int:
    return (frame[off] << 8) | frame[off + 1]


def _parse_qemu_software(frame: bytes) -> FrameInfo | None:
    """``eth_get_protocols`` (net/eth.c): what ``net_rx_pkt_calc_rss_hash`` hashes."""
    n = len(frame)
    # eth_get_l2_hdr_length_iov copies 18 bytes; with fewer it returns the frame length,
    # so the L3 header would start at the frame's end: never IP.
    if n < 18:
        return None
    # divergence "qinq-8100-8100-not-parsed" (eth_get_l2_hdr_length): 0x8100 skips one tag,
    # 0x88a8 skips two only when the inner TPID is 0x8100; 0x9100 is not a tag at all.
    outer = _u16(frame, 12)
    if outer == ETH_P_8021Q:
        l2 = 18
    elif outer == ETH_P_8021AD:
        l2 = 22 if _u16(frame, 16) == ETH_P_8021Q else 18
    else:
        l2 = 14
    if n < l2:
        return None  # eth_get_l3_proto cannot copy the EtherType: ETH_P_UNKNOWN
    tags = (l2 - 14) // 4
    proto = _u16(frame, l2 - 2)  # eth_get_l3_proto
    if proto == ETH_P_IP:
        if n < l2 + 20 or frame[l2] >> 4 != 4:
            return None
        # divergence "ipv4-ihl-not-validated" (eth_get_protocols): no IHL >= 5 check and
        # no check that the IHL*4 header bytes are present; the L4 header is read at IHL*4.
        l4off = l2 + (frame[l2] & 0x0F) * 4
        fragment = (_u16(frame, l2 + 6) & 0x3FFF) != 0  # IP4_IS_FRAGMENT
        l4, sport, dport = (None, 0, 0) if fragment else _qemu_sw_l4(frame, l4off, frame[l2 + 9])
        return FrameInfo(4, frame[l2 + 12:l2 + 16], frame[l2 + 16:l2 + 20], l4, sport, dport,
                         fragment=fragment, vlan_tags=tags)
    if proto != ETH_P_IPV6:
        return None
    # eth_parse_ipv6_hdr
    if n < l2 + 40:
        return None
    # divergence "ipv6-version-not-checked": the version nibble is never looked at.
    nh = frame[l2 + 6]
    p = l2 + 40
    exts: list[int] = []
    fragment = False
    hao: bytes | None = None
    rh2: bytes | None = None
    # divergence "mobility-header-is-ext-header": 135 is in QEMU's extension header set.
    # divergence "ipv6-ext-chain-unbounded": no limit on the number of headers.
    while nh in _QEMU_SW_EXT_HEADERS:
        # divergence "truncated-ext-header-still-hashed": only the 2-byte next-header /
        # length pair must be present; the rest of a header may lie past the frame's end.
        if n < p + 2:
            return None
        nxt, hlen_field = frame[p], frame[p + 1]
        if nh == IPV6_EXT_ROUTING:
            if hlen_field == 2:
                # divergence "rh2-from-last-routing-header": each such header overwrites
                # rss_ex_dst_valid (_eth_get_rss_ex_dst_addr: type 2, segleft 1, address
                # present).
                ok = n >= p + 24 and frame[p + 2] == 2 and frame[p + 3] == 1
                rh2 = frame[p + 8:p + 24] if ok else None
        elif nh == IPV6_EXT_DSTOPTS:
            # divergence "hao-from-last-dstopts-header": each header overwrites rss_ex_src_valid.
            hao = _qemu_sw_hao(frame, p, hlen_field)
        elif nh == IPV6_EXT_FRAGMENT:
            fragment = True
        # divergence "ah-length-in-8-octet-units": AH too is (len+1)*8 bytes here.
        p += (hlen_field + 1) * 8
        exts.append(nh)
        nh = nxt
    l4, sport, dport = (None, 0, 0) if fragment else _qemu_sw_l4(frame, p, nh)
    return FrameInfo(6, frame[l2 + 8:l2 + 24], frame[l2 + 24:l2 + 40], l4, sport, dport,
                     fragment=fragment, has_ext=bool(exts), hao=hao, rh2=rh2, vlan_tags=tags,
                     ext_headers=tuple(exts))


def _qemu_sw_l4(frame: bytes, off: int, proto: int) -> tuple[str | None, int, int]:
    """eth_get_protocols' L4 step: the whole TCP (20) / UDP (8) header must be present."""
    if proto == IPPROTO_TCP:
        # divergence "tcp-data-offset-not-validated": the data offset is not looked at.
        if len(frame) < off + TCP_MIN_HEADER:
            return None, 0, 0
        return "tcp", _u16(frame, off), _u16(frame, off + 2)
    if proto == IPPROTO_UDP:
        if len(frame) < off + UDP_HEADER:
            return None, 0, 0
        return "udp", _u16(frame, off), _u16(frame, off + 2)
    return None, 0, 0


def _qemu_sw_hao(frame: bytes, hdr: int, hlen_field: int) -> bytes | None:
    """_eth_get_rss_ex_src_addr: the Home Address of the destination options header at ``hdr``."""
    n = len(frame)
    left = (hlen_field + 1) * 8 - 2
    p = hdr + 2
    while left > 2:
        if n < p + 2:  # the option's type and length (read even for Pad1)
            return None
        otype, olen = frame[p], frame[p + 1]
        optlen = 1 if otype == IPV6_OPT_PAD1 else olen + 2
        if optlen > left:
            return None
        if otype == IPV6_OPT_HOME_ADDRESS:
            # divergence "hao-option-length-not-checked": 16 bytes are read after the
            # type/length pair whatever the option's length says.
            return frame[p + 2:p + 18] if n >= p + 18 else None
        p += optlen
        left -= optlen
    return None


# --------------------------------------------------------------------------- QEMU's eBPF parser
# A model of upstream QEMU 10.0's tools/ebpf/rss.bpf.c parse_packet (before hashlab's
# patches).  A failing bpf_skb_load_bytes_relative() is an error: the program computes
# no hash (returns the default queue), modelled as None.

# ip6_extension_header_type (divergence "ebpf-ext-header-set")
_QEMU_EBPF_EXT_HEADERS = frozenset({IPV6_EXT_HOPOPTS, IPV6_EXT_ROUTING, IPV6_EXT_FRAGMENT,
                                    IPPROTO_ICMPV6, IPPROTO_NONE, IPV6_EXT_DSTOPTS, IPPROTO_MH})
QEMU_EBPF_MAX_EXT_HEADERS = 11  # IP6_EXTENSIONS_COUNT
QEMU_EBPF_MAX_OPTIONS = 30  # IP6_OPTIONS_COUNT
_LINUX_VLAN_MAX_DEPTH = 8  # include/linux/if_vlan.h VLAN_MAX_DEPTH


def _af_packet_network_offset(frame: bytes) -> int:
    """Linux ``packet_parse_headers``: the network header after the leading 802.1Q/802.1ad
    tags (``__vlan_get_protocol_offset``), else at 14."""
    n = len(frame)
    t = _u16(frame, 12)
    if t not in (ETH_P_8021Q, ETH_P_8021AD):
        return 14
    depth, budget = 14, _LINUX_VLAN_MAX_DEPTH
    while True:
        budget -= 1
        if n < depth + 4 or budget == 0:
            return 14
        t = _u16(frame, depth + 2)
        depth += 4
        if t not in (ETH_P_8021Q, ETH_P_8021AD):
            break
    return depth if t != 0 else 14


def _parse_qemu_ebpf(frame: bytes, context: str) -> FrameInfo | None:
    n = len(frame)
    # parse_eth_type: divergence "ebpf-network-header".  0x88a8 falls through to the 0x8100
    # case: the EtherType is read 8 bytes on (two tags assumed), 0x8100 reads it 4 bytes on.
    if n < 14:
        return None
    l3_proto = _u16(frame, 12)
    if l3_proto in (ETH_P_8021AD, ETH_P_8021Q):
        off = 20 if l3_proto == ETH_P_8021AD else 16
        if n < off + 2:
            return None
        l3_proto = _u16(frame, off)
    if l3_proto == 0:
        return None
    # ...but every IP-level read is relative to the kernel's network header.
    net = _af_packet_network_offset(frame) if context == "af_packet" else 14
    tags = (net - 14) // 4
    if l3_proto == ETH_P_IP:
        if n < net + 20:
            return None
        # divergence "ebpf-ip-header-not-validated": neither version nor IHL is checked.
        fragment = (_u16(frame, net + 6) & 0x3FFF) != 0
        l4 = _qemu_ebpf_l4(frame, net + (frame[net] & 0x0F) * 4, frame[net + 9], fragment)
        if l4 is None:
            return None
        return FrameInfo(4, frame[net + 12:net + 16], frame[net + 16:net + 20], *l4,
                         fragment=fragment, vlan_tags=tags)
    if l3_proto != ETH_P_IPV6:
        return None  # is_ipv4 == is_ipv6 == 0: nothing hashed
    if n < net + 40:
        return None
    # divergence "ebpf-ip-header-not-validated": no version check for IPv6 either.
    walked = _qemu_ebpf_ext(frame, frame[net + 6], net + 40)
    if walked is None:
        return None
    proto, p, fragment, hao, rh2, exts = walked
    l4 = _qemu_ebpf_l4(frame, p, proto, fragment)
    if l4 is None:
        return None
    return FrameInfo(6, frame[net + 8:net + 24], frame[net + 24:net + 40], *l4, fragment=fragment,
                     has_ext=bool(exts), hao=hao, rh2=rh2, vlan_tags=tags, ext_headers=exts)


def _qemu_ebpf_ext(frame: bytes, proto: int, p: int):
    """parse_ipv6_ext: (L4 protocol, its offset, fragment, HAO, RH2, headers) or None."""
    n = len(frame)
    fragment = False
    hao: bytes | None = None
    rh2: bytes | None = None
    exts: list[int] = []
    if proto not in _QEMU_EBPF_EXT_HEADERS:
        return proto, p, fragment, hao, rh2, ()
    # divergence "ebpf-ext-chain-11": after 11 headers the next type is the L4 protocol.
    for _ in range(QEMU_EBPF_MAX_EXT_HEADERS):
        # divergence "ebpf-truncated-ext-header": only these 2 bytes must be present.
        if n < p + 2:
            return None
        nxt, hlen_field = frame[p], frame[p + 1]
        if proto == IPV6_EXT_ROUTING:
            if n < p + 4:
                return None
            if frame[p + 2] == 2 and hlen_field == 2 and frame[p + 3] == 1:
                if n < p + 24:
                    return None
                rh2 = frame[p + 8:p + 24]  # divergence "ebpf-rh2-last-wins"
        elif proto == IPV6_EXT_DSTOPTS:
            found = _qemu_ebpf_hao(frame, p, hlen_field)
            if found is False:
                return None
            if found is not None:
                hao = found  # divergence "ebpf-hao-scan": the last HAO found wins
        elif proto == IPV6_EXT_FRAGMENT:
            fragment = True
        exts.append(proto)
        proto = nxt
        p += (hlen_field + 1) * 8
        if proto not in _QEMU_EBPF_EXT_HEADERS:
            break
    return proto, p, fragment, hao, rh2, tuple(exts)


def _qemu_ebpf_hao(frame: bytes, hdr: int, hlen_field: int) -> bytes | None | bool:
    """The DSTOPTS branch of parse_ipv6_ext: the HAO, None, or False for a load error.

    Divergence "ebpf-hao-scan": the scan stops once ``offset + 1 >= Hdr Ext Len * 8``
    (one unit short of the header's real end: an 8-byte header has its first option
    examined only) or after 30 options; the HAO's length byte is not checked.
    """
    n = len(frame)
    off = 2
    for _ in range(QEMU_EBPF_MAX_OPTIONS):
        if n < hdr + off + 2:
            return False
        otype, olen = frame[hdr + off], frame[hdr + off + 1]
        if otype == IPV6_OPT_HOME_ADDRESS:
            if n < hdr + off + 18:
                return False
            return frame[hdr + off + 2:hdr + off + 18]
        off += 1 if otype == IPV6_OPT_PAD1 else olen + 2
        if off + 1 >= hlen_field * 8:
            break
    return None


def _qemu_ebpf_l4(frame: bytes, off: int, proto: int, fragment: bool):
    """parse_packet's L4 step: (l4, sport, dport), or None when the load fails."""
    if fragment or proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return None, 0, 0
    need = TCP_MIN_HEADER if proto == IPPROTO_TCP else UDP_HEADER
    # divergence "ebpf-truncated-l4-no-hash": a missing L4 header is an error.
    # divergence "ebpf-tcp-data-offset-not-validated": the data offset is not looked at.
    if len(frame) < off + need:
        return None
    return ("tcp" if proto == IPPROTO_TCP else "udp"), _u16(frame, off), _u16(frame, off + 2)


# --------------------------------------------------------------------------- selection

T = HashType


# Plain ints: ``int & IntFlag`` goes through enum's slow reflected operator.
_INT_TYPE_IPv4 = int(HashType.IPv4)
_INT_TYPE_TCPv4 = int(HashType.TCPv4)
_INT_TYPE_UDPv4 = int(HashType.UDPv4)
_INT_TYPE_IPv6 = int(HashType.IPv6)
_INT_TYPE_TCPv6 = int(HashType.TCPv6)
_INT_TYPE_UDPv6 = int(HashType.UDPv6)
_INT_TYPE_IPv6_EX = int(HashType.IPv6_EX)
_INT_TYPE_TCPv6_EX = int(HashType.TCPv6_EX)
_INT_TYPE_UDPv6_EX = int(HashType.UDPv6_EX)


def _select_spec(info: FrameInfo, types: int) -> Report:
    """virtio 1.3 §5.1.6.4.3: first match wins (reference §2)."""
    if info.family == 4:
        if info.l4 == "tcp" and types & _INT_TYPE_TCPv4:
            return Report.TCPv4
        if info.l4 == "udp" and types & _INT_TYPE_UDPv4:
            return Report.UDPv4
        if types & _INT_TYPE_IPv4:
            return Report.IPv4
        return Report.NONE
    if info.has_ext:
        if info.l4 == "tcp" and types & _INT_TYPE_TCPv6_EX:
            return Report.TCPv6_EX
        if info.l4 == "udp" and types & _INT_TYPE_UDPv6_EX:
            return Report.UDPv6_EX
        if types & _INT_TYPE_IPv6_EX:
            return Report.IPv6_EX
        # else: as IPv6 without extension headers
    if info.l4 == "tcp" and types & _INT_TYPE_TCPv6:
        return Report.TCPv6
    if info.l4 == "udp" and types & _INT_TYPE_UDPv6:
        return Report.UDPv6
    if types & _INT_TYPE_IPv6:
        return Report.IPv6
    return Report.NONE


def _select_qemu_software(info: FrameInfo, types: int) -> Report:
    """QEMU's ``virtio_net_get_hash_type``.

    Divergences from the spec, IPv6 only (IPv4 is as in the spec):

    * divergence "qemu-software-ex-without-ext": an enabled _EX type wins whenever the L4
      protocol matches (and IPv6_EX before IPv6), with or without extension headers;
    * divergence "qemu-software-l4-before-ip-ex": with extension headers, a TCP/UDP packet
      takes the plain TCPv6/UDPv6 rule before IPv6_EX (the spec tries IPv6_EX first).

    QEMU's FrameInfo comes from its own parser (``_parse_qemu_software``), whose ``hao``/
    ``rh2`` are ``rss_ex_src``/``rss_ex_dst`` when valid (net_rx_pkt's ``_net_rx_rss_prepare_ip6``).
    """
    if info.family == 4:
        return _select_spec(info, types)
    if info.l4 == "tcp":
        if types & T.TCPv6_EX:
            return Report.TCPv6_EX
        if types & T.TCPv6:
            return Report.TCPv6
    if info.l4 == "udp":
        if types & T.UDPv6_EX:
            return Report.UDPv6_EX
        if types & T.UDPv6:
            return Report.UDPv6
    if types & T.IPv6_EX:
        return Report.IPv6_EX
    if types & T.IPv6:
        return Report.IPv6
    return Report.NONE


def _select_qemu_ebpf(info: FrameInfo, types: int) -> tuple[Report, bool, bool]:
    """Upstream QEMU's ``tools/ebpf/rss.bpf.c`` ``calculate_rss_hash``: (rule, use HAO, use RH2).

    Divergence "qemu-ebpf-base-type-first": for IPv6 the TCPv6/UDPv6/IPv6 rule is chosen
    by the *plain* type only (an _EX type alone selects nothing); the matching _EX type
    merely substitutes the HAO source / RH2 destination, each independently, when that
    extension header is present.  The reported value is the spec type of the bytes that
    were hashed: the _EX report if an address was substituted, else the plain one (the
    upstream program itself reports nothing).
    """
    if info.family == 4:
        return _select_spec(info, types), False, False
    if info.l4 == "tcp" and types & T.TCPv6:
        base, ex_type, ex_report = Report.TCPv6, T.TCPv6_EX, Report.TCPv6_EX
    elif info.l4 == "udp" and types & T.UDPv6:
        base, ex_type, ex_report = Report.UDPv6, T.UDPv6_EX, Report.UDPv6_EX
    elif types & T.IPv6:
        base, ex_type, ex_report = Report.IPv6, T.IPv6_EX, Report.IPv6_EX
    else:
        return Report.NONE, False, False
    use_hao = bool(types & ex_type) and info.hao is not None
    use_rh2 = bool(types & ex_type) and info.rh2 is not None
    return (ex_report if (use_hao or use_rh2) else base), use_hao, use_rh2


_EX_REPORTS = frozenset({Report.IPv6_EX, Report.TCPv6_EX, Report.UDPv6_EX})


def hash_input(info: FrameInfo, report: int, *, use_hao: bool | None = None,
               use_rh2: bool | None = None) -> bytes:
    """The bytes hashed for ``report``: addresses (+ ports for TCP/UDP reports).

    For _EX reports the source is the Home Address (when present) and the destination
    the RH2 address (when present); ``use_hao``/``use_rh2`` override that choice.
    """
    report = Report(report)
    if report == Report.NONE:
        return b""
    ex = report in _EX_REPORTS
    if use_hao is None:
        use_hao = ex
    if use_rh2 is None:
        use_rh2 = ex
    src = info.hao if (use_hao and info.hao is not None) else info.src
    dst = info.rh2 if (use_rh2 and info.rh2 is not None) else info.dst
    data = bytes(src) + bytes(dst)
    if report.is_l4:
        data += struct.pack("!HH", info.sport, info.dport)
    return data


def hash_info(info: FrameInfo | None, key: bytes, hash_types: int, behaviour: str = "spec") -> tuple[int, int]:
    """``(hash_value, report)`` for an already parsed frame, with ``behaviour``'s selection.

    ``hash_info(parse_frame(f, b), key, types, b) == hash_packet(f, key, types, b)``; mixing
    one behaviour's parser with another's selection separates parser from selection
    divergences.
    """
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; valid: {', '.join(BEHAVIOURS)}")
    if info is None:
        return 0, int(Report.NONE)
    types = int(hash_types)
    if behaviour in ("spec", "hashlab-ebpf"):
        report = _select_spec(info, types)
        data = hash_input(info, report)
    elif behaviour == "qemu-software":
        report = _select_qemu_software(info, types)
        data = hash_input(info, report)
    else:
        report, use_hao, use_rh2 = _select_qemu_ebpf(info, types)
        data = hash_input(info, report, use_hao=use_hao, use_rh2=use_rh2)
    if report == Report.NONE:
        return 0, int(Report.NONE)
    return toeplitz(key, data), int(report)


def hash_packet(frame: bytes, key: bytes, hash_types: int, behaviour: str = "spec", *,
                ebpf_context: str = "af_packet") -> tuple[int, int]:
    """``(hash_value, report)`` for an Ethernet frame; ``(0, Report.NONE)`` when unhashed.

    Never raises for any ``frame`` (with a key of at least 40 bytes).

    ``behaviour``:

    * ``"spec"``: virtio 1.3 (reference §2) over :func:`parse_frame`'s rules: no IP
      packet → NONE; an L4 header that is missing or truncated, or a fragment → not
      TCP/UDP → the address-only rule.  IPv4 TCPv4 > UDPv4 > IPv4; IPv6 with extension
      headers TCPv6_EX > UDPv6_EX > IPv6_EX (HAO replaces the source, RH2 the
      destination, each when present), then as IPv6 without: TCPv6 > UDPv6 > IPv6.
    * ``"qemu-software"``: QEMU's software path, its parser included (the
      ``qemu-software`` rows of the module's divergence table; selection in
      ``_select_qemu_software``); _EX reports hash HAO/RH2 when QEMU found them.
    * ``"qemu-ebpf"``: upstream QEMU's eBPF steering program, its parser included (the
      ``qemu-ebpf`` rows; selection in ``_select_qemu_ebpf``); the report is the spec
      type of the bytes hashed (the real program reports no type at all).
      ``ebpf_context`` (:data:`EBPF_CONTEXTS`) says where the kernel put the network
      header, which the program trusts.
    * ``"hashlab-ebpf"``: hashlab's patched eBPF program (both forms): ``"spec"`` with
      the program's named parser bounds (the ``hashlab-ebpf`` rows); it reads every
      offset from the Ethernet header, so ``ebpf_context`` does not matter.
    """
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; valid: {', '.join(BEHAVIOURS)}")
    info = parse_frame(frame, behaviour, ebpf_context=ebpf_context)
    return hash_info(info, key, hash_types, behaviour)


def select_queue(hash_value: int, report: int, table: list[int], unclassified_queue: int) -> int:
    """RSS steering: NONE → ``unclassified_queue``, else ``table[hash & (len(table) - 1)]``."""
    n = len(table)
    if n == 0 or n & (n - 1):
        raise ValueError(f"indirection table length {n} is not a power of two")
    if int(report) == Report.NONE:
        return unclassified_queue
    return table[hash_value & (n - 1)]


@dataclass(frozen=True)
class Expectation:
    """What a device should deliver for one frame."""

    hash: int
    report: int
    queue: int
    l4: bool  # the Linux guest marks the skb as an L4 hash (TCP/UDP reports)

    @property
    def report_name(self) -> str:
        return Report(self.report).name


@dataclass
class RssConfig:
    """An RSS/hash configuration as the guest programs it (``RSS_CONFIG``)."""

    key: bytes = MS_KEY
    hash_types: int = LINUX_GUEST_TYPES
    table: list[int] = field(default_factory=lambda: [0] * 128)
    unclassified_queue: int = 0
    behaviour: str = "spec"

    def __post_init__(self) -> None:
        n = len(self.table)
        if n == 0 or n & (n - 1):
            raise ValueError(f"indirection table length {n} is not a power of two")
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {self.behaviour!r}; valid: {', '.join(BEHAVIOURS)}")

    @classmethod
    def equal_table(cls, queues: int, size: int = 128, **kw) -> "RssConfig":
        """A configuration whose table spreads ``queues`` queues round-robin."""
        return cls(table=[i % queues for i in range(size)], **kw)

    def expect(self, frame: bytes) -> Expectation:
        h, r = hash_packet(frame, self.key, self.hash_types, self.behaviour)
        q = select_queue(h, r, self.table, self.unclassified_queue)
        return Expectation(h, r, q, Report(r).is_l4)
