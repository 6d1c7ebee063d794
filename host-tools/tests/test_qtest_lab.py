"""The patched stack through hashlab's own virtio-net driver, inside the lab VM.

Patched QEMU on each design's kernel: the hash each frame carries is computed in tun —
by the eBPF program (the VNET_HASH program on ``progtype``, the socket filter calling
``bpf_skb_set_vnet_hash()`` on ``kfunc``) or by tun itself (``tunrss``); the tests run
in each design's lab VM — and copied to the device's receive header: by QEMU with
``vhost=off``, by vhost_net with ``vhost=on``.  The driver reads the raw 20-byte
headers, so the exact report value is checked for all nine types, against the spec
(``behaviour="hashlab-ebpf"``: the spec plus the program's named parser limits, which
tun's own parser shares).
"""

from __future__ import annotations

from collections import Counter

import pytest

from hashlab.build.qemu import find_qemu_entry
from hashlab.frames.packets import corpus
from hashlab.vdrv import NetRig
from hashlab.vdrv.check import run_setup
from hashlab.run.qtest_check import BAD_RSS, BEHAVIOUR, DEVICE_OPTS, SETUPS

# The same patched QEMU on every design's kernel: the lab VM, the kfunc and tunrss ones.
pytestmark = [pytest.mark.lab, pytest.mark.lab_kfunc, pytest.mark.lab_tunrss,
              pytest.mark.timeout(1200)]

CORPUS = corpus(0)


@pytest.fixture(scope="module", params=[False, True], ids=["vhost-off", "vhost-on"])
def rig(request):
    entry = find_qemu_entry()
    if entry is None:
        pytest.fail("patched QEMU is not built: run scripts/build-qemu")
    with NetRig(qemu_binary=entry / "bin/qemu-system-x86_64", queues=4, vhost=request.param,
                device_opts=DEVICE_OPTS) as r:
        yield r


@pytest.fixture(scope="module")
def seen_reports():
    return Counter()


@pytest.mark.parametrize("setup", SETUPS, ids=[s.name for s in SETUPS])
def test_patched_stack_reports_spec_hashes(rig, setup, seen_reports):
    net = rig.net
    assert net.features & (1 << 57) and net.hdr_len == 20, "HASH_REPORT not negotiated"
    out = run_setup(rig, setup, CORPUS)
    bad = []
    for o in out.received:
        e = setup.expect(o.frame.data, BEHAVIOUR)
        q_ok = o.rx.queue == e.queue if e.queue >= 0 else 0 <= o.rx.queue < setup.pairs
        if (o.rx.hash_value, o.rx.hash_report) != (e.hash, e.report) or not q_ok:
            bad.append(f"frame {o.frame.id} ({o.frame.desc}): got {o.rx.hash_value:#010x}/"
                       f"{o.rx.hash_report}/q{o.rx.queue}, oracle {e.hash:#010x}/{e.report}/q{e.queue}")
        seen_reports[(rig.vhost, o.rx.hash_report)] += 1
    assert not bad, f"{len(bad)} of {len(out.received)} frames differ:\n" + "\n".join(bad[:30])
    assert not out.foreign
    assert not out.missing, [o.frame.desc for o in out.missing][:20]
    if setup.name == "rss-all-mskey":
        # The spec's selection with every type on reaches all nine reports (and NONE).
        reports = {o.rx.hash_report for o in out.received}
        assert reports == set(range(10)), sorted(reports)


def test_hostile_frames_through_the_patched_stack(rig):
    """Malformed frames: each one delivered carries the oracle's hash and report (NONE
    where the spec says so), and the device keeps working afterwards."""
    from hashlab.frames.hostile import hostile
    from hashlab.frames.packets import CorpusFrame

    frames = [CorpusFrame(i, h.slice, h.desc, h.data)
              for i, h in enumerate(hostile()) if len(h.data) <= 1514]
    setup = SETUPS[0]
    out = run_setup(rig, setup, frames)
    bad = []
    for o in out.received:
        e = setup.expect(o.frame.data, BEHAVIOUR)
        if (o.rx.hash_value, o.rx.hash_report, o.rx.queue) != (e.hash, e.report, e.queue):
            bad.append(f"{o.frame.slice}: {o.frame.desc}: got {o.rx.hash_value:#010x}/{o.rx.hash_report}"
                       f"/q{o.rx.queue}, oracle {e.hash:#010x}/{e.report}/q{e.queue}")
    print(f"hostile ({'vhost' if rig.vhost else 'no vhost'}): {len(frames)} sent, "
          f"{len(out.received)} delivered, {len(out.missing)} not delivered, {len(bad)} mismatches")
    assert not bad, "\n".join(bad[:30])
    # Only frames too short for an Ethernet header may vanish.
    lost = [f"{o.frame.desc} ({len(o.frame.data)} B)" for o in out.missing if len(o.frame.data) >= 14]
    assert not lost, lost[:20]
    again = run_setup(rig, setup, CORPUS[:64])
    assert len(again.received) == 64, "the device stopped receiving after the hostile frames"


def test_a_refused_configuration_keeps_the_old_one(rig):
    """Each configuration QEMU refuses (ack VIRTIO_NET_ERR) leaves the previous one in
    place (qemu/patches 0012; upstream QEMU turns RSS off, pinned in test_qtest_ctrl):
    every frame after it is hashed and steered as that one says, also through vhost_net,
    where the backend (the program, or tun itself) writes the header."""
    from hashlab.vdrv import VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, Ack

    setup = SETUPS[1]  # not the last one applied: a kept configuration must show
    probe = CORPUS.select(["ipv4-tcp", "ipv6-udp", "ipv6-hao-rh2"])[:30]
    assert setup.apply(rig) == 0, "the good configuration was refused"
    for name, payload in BAD_RSS.items():
        ack = rig.net.ctrl(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, payload)
        assert ack == Ack.ERR, f"{name}: ack {ack!r}"
        res = rig.run([f.data for f in probe])
        assert not res.missing, name
        bad = []
        for i, rx in res.matched:
            e = setup.expect(probe[i].data, BEHAVIOUR)
            if (rx.hash_value, rx.hash_report, rx.queue) != (e.hash, e.report, e.queue):
                bad.append(f"{rx.hash_value:#010x}/{rx.hash_report}/q{rx.queue}, "
                           f"oracle {e.hash:#010x}/{e.report}/q{e.queue}")
        assert not bad, f"after {name}: " + "; ".join(bad[:5])


@pytest.mark.parametrize("setup", SETUPS, ids=[s.name for s in SETUPS])
def test_qemu_tells_which_mechanism_hashes(rig, setup):
    """x-query-virtio-net-hash (qemu/patches/0013) names the running design's mechanism
    (the VNET_HASH program, the kfunc-calling filter, or tun), holds the configuration
    the driver sent, and VIRTIO_NET_HASH_CHANGED came for it (once: until the query)."""
    from hashlab import designs
    from hashlab.host import datapath, hashquery
    from hashlab.run.qtest_check import device_hash

    design = designs.get(datapath.running_design())
    pre = hashquery.query_sync(rig.qt, NetRig.DEVICE_PATH)  # re-arms the event
    before = len(rig.qt.qmp_events)
    assert setup.apply(rig) == 0, "the configuration was refused"
    assert setup.apply(rig) == 0, "the configuration was refused"  # twice: one event
    events = [e for e in rig.qt.qmp_events[before:] if e["event"] == hashquery.EVENT]
    dev = device_hash(rig, setup)
    assert dev["mechanism"] == design.mechanism, f"on {design.name}: {dev}"
    assert not dev["differences"], dev["differences"]
    assert len(events) == 1, events
    # The event is the first change and says the mechanism right after it.  A hash-only
    # setup starts with VQ_PAIRS_SET, on which QEMU turns RSS off: on a device that
    # steered by RSS that is a change to "none", and the HASH_CONFIG that follows comes
    # while the event waits for the query.
    first = "none" if setup.mode == "hash" and pre["rss-enabled"] else design.mechanism
    assert events[0]["data"] == {"path": f"{NetRig.DEVICE_PATH}/virtio-backend",
                                 "mechanism": first.split("/")[0]}
