"""Stock QEMU's virtio-net hash reports and RSS steering, seen by hashlab's own driver.

A Python virtio-net driver (hashlab.vdrv) drives QEMU's device over the qtest protocol,
enables any hash types (the _EX ones too) and reads the raw 20-byte receive header of
every frame.  Frames come from hashlab's corpus, injected into a multi-queue tap.

Every received frame's exact ``hash_value``, ``hash_report`` and receive queue is
checked against the oracle (``behaviour="qemu-software"``), which models QEMU 10.0's
software path completely: its selection rules (virtio_net_get_hash_type) and its packet
parser (net/eth.c).  The parser's departures from the spec's parsing rules (found by
this suite, now named in ``hashlab.oracle.rss.DIVERGENCES``) and the spec-versus-QEMU
selection divergences (reference §2) are pinned by name.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from hashlab.oracle import rss
from hashlab.host.qtest import HOST_QEMU
from hashlab.frames.packets import corpus
from hashlab.vdrv import NetRig
from hashlab.vdrv.check import HashSetup, Outcome, run_setup

# The QEMU under test: stock by default; HASHLAB_QTEST_QEMU picks another (the lab's patched one).
QEMU = os.environ.get("HASHLAB_QTEST_QEMU", HOST_QEMU)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                       reason="needs root and /dev/net/tun (a tap for QEMU)"),
]

T = rss.HashType
R = rss.Report
CORPUS = corpus(0)
RANDOM_KEY = random.Random(7).randbytes(40)
ALL = rss.ALL_TYPES
EX_TYPES = int(T.IPv6_EX | T.TCPv6_EX | T.UDPv6_EX)


def _table(pairs: int, seed: int | None = None, size: int = 128) -> tuple[int, ...]:
    if seed is None:
        return tuple(i % pairs for i in range(size))
    rng = random.Random(seed)
    return tuple(rng.randrange(pairs) for _ in range(size))


SETUPS = [
    HashSetup("rss-all-mskey", ALL, rss.MS_KEY, "rss", _table(4), 0, 4),
    HashSetup("rss-all-randkey-uncl3", ALL, RANDOM_KEY, "rss", _table(4, seed=1), 3, 4),
    HashSetup("rss-linux-types-2q", rss.LINUX_GUEST_TYPES, rss.MS_KEY, "rss", _table(2, size=64), 1, 2),
    HashSetup("rss-v4-subset-1q", int(T.IPv4 | T.TCPv4), RANDOM_KEY, "rss", _table(1, size=1), 0, 1),
    HashSetup("rss-ex-only-uncl2", EX_TYPES | int(T.UDPv4), RANDOM_KEY, "rss", _table(4, seed=2, size=16), 2, 4),
    HashSetup("rss-v6-plain-2q", int(T.IPv6 | T.TCPv6 | T.UDPv6), rss.MS_KEY, "rss", _table(2, seed=3, size=8), 1, 2),
    HashSetup("rss-l4-and-ipex", int(T.TCPv6 | T.UDPv6 | T.IPv6_EX | T.TCPv4), RANDOM_KEY, "rss", _table(4), 0, 4),
    HashSetup("rss-no-types-uncl2", 0, rss.MS_KEY, "rss", _table(4), 2, 4),
    HashSetup("hash-all-randkey", ALL, RANDOM_KEY, "hash", pairs=4),
    HashSetup("hash-subset-1q", int(T.TCPv4 | T.UDPv6 | T.IPv6_EX), rss.MS_KEY, "hash", pairs=1),
]


# Where QEMU's parser and the spec's parsing rules part, on the corpus (descriptions
# without the " #k"; names from hashlab.oracle.rss.DIVERGENCES).  Each is pinned by
# test_divergence_qemu_parser[...] below.
PARSER_DIVERGENCES = {
    "qinq-8100-8100-not-parsed": ["802.1Q+802.1Q ipv4 udp"],
    "ah-length-in-8-octet-units": ["ipv6 AH tcp", "ipv6 hbh+dst+rt0+AH+dst tcp",
                                   "ipv6 hbh+dst+RH2+HAO+AH udp"],
    "ipv4-ihl-not-validated": ["ipv4 IHL 4", "ipv4 options cut (IHL 10)"],
    "tcp-data-offset-not-validated": ["ipv4 tcp data offset 4"],
    "ipv6-version-not-checked": ["ethertype IPv6, version 4"],
    "ipv6-ext-chain-unbounded": ["ipv6 17 extension headers tcp"],
    "truncated-ext-header-still-hashed": ["ipv6 hop-by-hop cut", "ipv6 dstopts HAO cut"],
}
_DIVERGENT_DESCS = {d: name for name, ds in PARSER_DIVERGENCES.items() for d in ds}


def _base_desc(frame) -> str:
    return frame.desc.rsplit(" #", 1)[0]


def parser_divergence(frame) -> str | None:
    return _DIVERGENT_DESCS.get(_base_desc(frame))


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def rig():
    with NetRig(qemu_binary=QEMU, queues=4) as r:
        yield r


@pytest.fixture(scope="module")
def tally(request):
    """Frames checked per report type, over every configuration; printed at the end."""
    counts: dict[str, Counter] = {}
    yield counts
    rep = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if rep is None or not counts:
        return
    with capman.global_and_fixture_disabled() if capman else _nullcontext():
        _write_tally(rep, counts)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def _write_tally(rep, counts: dict[str, Counter]) -> None:
    names = [r.name for r in R]
    rep.write_line("")
    rep.write_line("qtest: frames checked per report type (exact hash, report, queue)")
    rep.write_line(f"  {'setup':30s} " + " ".join(f"{n:>8s}" for n in names) + "  missing mismatch")
    total = Counter()
    for setup, c in counts.items():
        total.update(c)
        rep.write_line(f"  {setup:30s} " + " ".join(f"{c.get(n, 0):8d}" for n in names)
                       + f"  {c.get('_missing', 0):7d} {c.get('_mismatch', 0):8d}")
    rep.write_line(f"  {'total':30s} " + " ".join(f"{total.get(n, 0):8d}" for n in names)
                   + f"  {total.get('_missing', 0):7d} {total.get('_mismatch', 0):8d}")


_OUTCOMES: dict[str, Outcome] = {}


def outcome_for(rig, setup: HashSetup) -> Outcome:
    """Run ``setup`` over the whole corpus once per module; cached."""
    if setup.name not in _OUTCOMES:
        _OUTCOMES[setup.name] = run_setup(rig, setup, CORPUS)
    return _OUTCOMES[setup.name]


def setup_named(name: str) -> HashSetup:
    return next(s for s in SETUPS if s.name == name)


def _report_name(v: int) -> str:
    return R(v).name if v in R._value2member_map_ else f"invalid-{v}"


def check_outcome(out: Outcome) -> tuple[Counter, list[str]]:
    """Compare every received frame exactly with the oracle (qemu-software);
    returns (reports counted, mismatches)."""
    s = out.setup
    counts: Counter = Counter()
    bad: list[str] = []
    for o in out.received:
        counts[_report_name(o.rx.hash_report)] += 1
        e = s.expect(o.frame.data, "qemu-software")
        q_ok = o.rx.queue == e.queue if e.queue >= 0 else 0 <= o.rx.queue < s.pairs
        if (o.rx.hash_value, o.rx.hash_report) != (e.hash, e.report) or not q_ok:
            bad.append(f"{s.name}: frame {o.frame.id} ({o.frame.desc}): got {o.rx.hash_value:#010x} "
                       f"report {o.rx.hash_report} queue {o.rx.queue}; oracle (qemu-software) says "
                       f"{e.hash:#010x} report {e.report} queue {e.queue}")
    return counts, bad


# --------------------------------------------------------------------------- tests


def test_qtest_negotiation_and_config(rig):
    net = rig.net
    for bit_ in (32, 17, 22, 60, 57):
        assert net.features & (1 << bit_), f"feature bit {bit_} not negotiated"
    assert net.hdr_len == 20
    cfg = net.config
    assert cfg.max_virtqueue_pairs == 4
    assert cfg.rss_max_key_size == 40
    assert cfg.rss_max_indirection_table_length == 128
    assert cfg.supported_hash_types == rss.ALL_TYPES
    assert net.pci.device == 0x1041


@pytest.mark.parametrize("setup", SETUPS, ids=[s.name for s in SETUPS])
def test_qtest_corpus_against_oracle(rig, tally, setup):
    out = outcome_for(rig, setup)
    counts, bad = check_outcome(out)
    counts["_missing"] = len(out.missing)
    counts["_mismatch"] = len(bad)
    tally[setup.name] = counts
    assert not bad, f"{len(bad)} mismatches:\n" + "\n".join(bad[:40])
    assert not out.foreign, f"{len(out.foreign)} frames received that were never sent"
    # QEMU drops none of the corpus (runts included); a dropped frame would be named here.
    missing = [f"{o.frame.id} ({o.frame.desc}, {len(o.frame.data)} bytes)" for o in out.missing]
    assert not missing, f"{len(missing)} frames never arrived: {missing[:20]}"
    if setup.hash_types == 0:
        assert set(counts) - {"_missing", "_mismatch"} == {"NONE"}


def test_qtest_checker_catches_a_wrong_expectation(rig):
    """Negative control: the same observations against a wrong key must all but fail."""
    out = outcome_for(rig, setup_named("rss-all-mskey"))
    wrong = HashSetup("wrong-key", out.setup.hash_types, RANDOM_KEY, "rss", out.setup.table,
                      out.setup.unclassified_queue, out.setup.pairs)
    bad = Outcome(wrong, out.observations).mismatches("qemu-software")
    hashed = sum(1 for o in out.received if o.rx.hash_report != 0)
    # every hashed frame differs
    assert len(bad) >= hashed > 400


def test_qtest_all_nine_report_types_seen(rig):
    """All nine report values reach the driver: with every type enabled QEMU's software
    path never reports plain IPv6/TCPv6/UDPv6 (it prefers the _EX types, see
    test_divergence_qemu_prefers_ex_without_ext_headers), so those three come from the
    Linux-types run (no _EX types enabled)."""
    all_types = Counter(R(o.rx.hash_report) for o in outcome_for(rig, setup_named("rss-all-mskey")).received)
    linux = Counter(R(o.rx.hash_report) for o in outcome_for(rig, setup_named("rss-linux-types-2q")).received)
    for r in (R.IPv4, R.TCPv4, R.UDPv4, R.IPv6_EX, R.TCPv6_EX, R.UDPv6_EX):
        assert all_types[r] > 0, r
    for r in (R.IPv6, R.TCPv6, R.UDPv6):
        assert all_types[r] == 0, f"{r.name} reported although its _EX type is enabled"
        assert linux[r] > 0, r
    union = all_types + linux
    assert all(union[r] > 0 for r in R if r != R.NONE)


# --------------------------------------------------------------------------- divergences
# Reference §2: QEMU's software path versus the virtio spec.


def _spec(setup: HashSetup, frame) -> tuple[int, int]:
    return rss.hash_packet(frame.data, setup.key, setup.hash_types, "spec")


def test_divergence_qemu_prefers_ex_without_ext_headers(rig):
    """All types enabled, IPv6 *without* extension headers: the spec reports TCPv6, UDPv6,
    IPv6; QEMU reports TCPv6_EX, UDPv6_EX, IPv6_EX.  The hash is the same (no HAO/RH2 to
    substitute): only the report differs."""
    setup = setup_named("rss-all-mskey")
    seen = Counter()
    for o in outcome_for(rig, setup).received:
        if o.frame.slice not in ("ipv6-tcp", "ipv6-udp", "ipv6-other"):
            continue
        sh, sr = _spec(setup, o.frame)
        assert (sr, o.rx.hash_report) in {(R.TCPv6, R.TCPv6_EX), (R.UDPv6, R.UDPv6_EX), (R.IPv6, R.IPv6_EX)}, o.frame.desc
        assert o.rx.hash_value == sh, o.frame.desc
        seen[R(o.rx.hash_report)] += 1
    assert seen[R.TCPv6_EX] and seen[R.UDPv6_EX] and seen[R.IPv6_EX], seen


def test_divergence_qemu_ex_types_apply_without_ext_headers(rig):
    """Only _EX types (and UDPv4) enabled: for IPv6 without extension headers the spec
    computes no hash at all (NONE, unclassified queue); QEMU hashes it as _EX."""
    setup = setup_named("rss-ex-only-uncl2")
    n = 0
    for o in outcome_for(rig, setup).received:
        if o.frame.slice not in ("ipv6-tcp", "ipv6-udp", "ipv6-other"):
            continue
        assert _spec(setup, o.frame) == (0, R.NONE)
        assert o.rx.hash_report in (R.TCPv6_EX, R.UDPv6_EX, R.IPv6_EX), o.frame.desc
        assert o.rx.queue == setup.table[o.rx.hash_value & (len(setup.table) - 1)]
        n += 1
    assert n >= 80


def test_divergence_qemu_prefers_l4_over_ip_ex_with_ext_headers(rig):
    """TCPv6, UDPv6 and IPv6_EX enabled, IPv6 TCP/UDP *with* extension headers: the spec
    picks IPv6_EX (the _EX rule comes first, and TCP_EX/UDP_EX are off), hashing the
    addresses (HAO/RH2-substituted); QEMU picks TCPv6/UDPv6 with the plain addresses."""
    setup = setup_named("rss-l4-and-ipex")
    n = 0
    for o in outcome_for(rig, setup).received:
        if o.frame.slice not in ("ipv6-ext", "ipv6-hao", "ipv6-rh2", "ipv6-hao-rh2") or parser_divergence(o.frame):
            continue
        info = rss.parse_frame(o.frame.data)
        if info is None or info.l4 is None:
            continue
        sh, sr = _spec(setup, o.frame)
        assert sr == R.IPv6_EX, o.frame.desc
        assert o.rx.hash_report == (R.TCPv6 if info.l4 == "tcp" else R.UDPv6), o.frame.desc
        assert o.rx.hash_value != sh
        n += 1
    assert n >= 40


def test_qemu_fragments_hash_addresses_only(rig):
    """Reference §2: IP fragments count as "no TCP/UDP header" (QEMU and the oracle agree)."""
    out = outcome_for(rig, setup_named("rss-all-mskey"))
    frags = [o for o in out.received if o.frame.slice in ("ipv4-frag", "ipv6-frag")
             and rss.parse_frame(o.frame.data).fragment]
    assert len(frags) >= 30
    for o in frags:
        assert o.rx.hash_report in (R.IPv4, R.IPv6_EX), o.frame.desc


# Found by this suite: QEMU's packet parser (net/eth.c) versus the spec's parsing rules.
# The oracle's qemu-software behaviour models each (rss.DIVERGENCES has the details);
# these tests pin that real QEMU still does it and that it shows on the corpus.


def _parser_only_differs(setup: HashSetup, frame) -> bool:
    """QEMU's selection over the spec's parse versus over QEMU's own parse: isolates
    the parser divergences from the selection ones."""
    spec_parse = rss.hash_info(rss.parse_frame(frame.data, "spec"), setup.key, setup.hash_types,
                               "qemu-software")
    return spec_parse != rss.hash_packet(frame.data, setup.key, setup.hash_types, "qemu-software")


def test_parser_divergences_are_named_in_the_oracle():
    for name in PARSER_DIVERGENCES:
        assert rss.DIVERGENCES[name].behaviour == "qemu-software", name


@pytest.mark.parametrize("name", sorted(PARSER_DIVERGENCES))
def test_divergence_qemu_parser(rig, name):
    """On the frames of the class QEMU matches the oracle's qemu-software behaviour
    exactly, in every configuration, and at least one of them is hashed differently
    under the spec (with the Linux guest's types, where the selection rules agree)."""
    descs = PARSER_DIVERGENCES[name]
    frames = [f for f in CORPUS if _base_desc(f) in descs]
    assert frames, f"no corpus frames for {name}"
    differ = 0
    for setup in SETUPS:
        for o in outcome_for(rig, setup).received:
            if _base_desc(o.frame) not in descs:
                continue
            e = setup.expect(o.frame.data, "qemu-software")
            assert (o.rx.hash_value, o.rx.hash_report) == (e.hash, e.report), f"{name}: {o.frame.desc} ({setup.name})"
            if setup.name == "rss-linux-types-2q":
                differ += _spec(setup, o.frame) != (e.hash, e.report)
    doc = rss.DIVERGENCES[name].what
    assert differ > 0, f"{name}: {doc} -- but spec and qemu-software now agree; drop the pin"


def test_parser_divergences_are_exactly_the_named_frames():
    """Spec and qemu-software differ, where their selection rules agree (the Linux
    guest's types) and in QEMU's selection over either parse (every setup), only on the
    frames of the named classes."""
    linux = setup_named("rss-linux-types-2q")
    stray = set()
    for f in CORPUS:
        if parser_divergence(f):
            continue
        if _spec(linux, f) != rss.hash_packet(f.data, linux.key, linux.hash_types, "qemu-software"):
            stray.add(f.desc)
        if any(_parser_only_differs(s, f) for s in SETUPS):
            stray.add(f.desc)
    assert not stray, f"unnamed parser divergences on: {sorted(stray)}"


# --------------------------------------------------------------------------- other rigs


def test_finding_num_buffers_not_written_without_mrg_rxbuf(rig):
    """virtio 1.x: without VIRTIO_NET_F_MRG_RXBUF the device MUST set num_buffers to 1.
    QEMU 10.0 (userspace path) leaves num_buffers, and the padding, untouched: the
    driver's 0xA5 fill shows through.  With MRG_RXBUF it writes 1."""
    out = outcome_for(rig, setup_named("rss-all-mskey"))
    assert {o.rx.num_buffers for o in out.received} == {0xA5A5}
    assert {o.rx.padding for o in out.received} == {0xA5A5}
    with NetRig(qemu_binary=QEMU, queues=2, mrg_rxbuf=True) as r2:
        assert r2.net.features & (1 << 15)
        setup = HashSetup("rss-all-2q-mrg", ALL, rss.MS_KEY, "rss", _table(2), 1, 2)
        out2 = run_setup(r2, setup, CORPUS.select(["ipv4-tcp", "ipv6-udp", "ipv6-hao"]))
        assert not out2.missing
        assert {o.rx.num_buffers for o in out2.received} == {1}
        counts, bad = check_outcome(out2)
        assert not bad, bad[:10]


def test_qtest_single_queue_tap():
    """A one-queue tap (no IFF_MULTI_QUEUE, no MQ feature): RSS_CONFIG with a 1-entry table."""
    with NetRig(qemu_binary=QEMU, queues=1) as r1:
        assert not r1.net.features & (1 << 22)
        setup = HashSetup("rss-all-1q-tap", ALL, RANDOM_KEY, "rss", (0,), 0, 1)
        out = run_setup(r1, setup, CORPUS)
        counts, bad = check_outcome(out)
        assert not bad, bad[:10]
        assert not out.missing


def test_qtest_dgram_netdev_has_no_hash_report():
    """-netdev dgram (no vnet header): QEMU withdraws HASH_REPORT (the device cannot report
    hashes), RSS steering still works in software."""
    with NetRig(qemu_binary=QEMU, queues=1, netdev="dgram") as r:
        assert r.net.features & (1 << 60)
        assert not r.net.features & (1 << 57)
        assert r.net.hdr_len == 12
        assert r.net.hash_config(ALL, rss.MS_KEY) == 1  # VIRTIO_NET_ERR: not negotiated
        assert r.net.rss_config(ALL, [0], rss.MS_KEY) == 0
        res = r.run([f.data for f in CORPUS.select(["ipv4-udp"])])
        assert not res.missing and all(rx.hash_report == 0 for _, rx in res.matched)


@pytest.mark.parametrize("setup_name", ["rss-all-mskey", "rss-linux-types-2q", "hash-all-randkey"])
def test_qtest_hostile_frames_stock_qemu(rig, setup_name):
    """The hostile corpus through stock QEMU's software path: each delivered frame has
    the oracle's (qemu-software) hash, report and queue; nothing with an Ethernet header
    is lost; the device keeps receiving."""
    from hashlab.frames.hostile import hostile
    from hashlab.frames.packets import CorpusFrame

    frames = [CorpusFrame(i, h.slice, h.desc, h.data)
              for i, h in enumerate(hostile()) if len(h.data) <= 1514]
    out = run_setup(rig, setup_named(setup_name), frames)
    counts, bad = check_outcome(out)
    print(f"hostile/{setup_name}: {len(frames)} sent, {len(out.received)} delivered, {len(bad)} mismatches")
    assert not bad, bad[:20]
    assert not [o for o in out.missing if len(o.frame.data) >= 14]
    again = run_setup(rig, setup_named(setup_name), CORPUS[:32])
    assert len(again.received) == 32
