"""The control queue of stock QEMU's virtio-net, driven by hashlab's Python driver:
configurations the device must refuse (ack VIRTIO_NET_ERR), and that it keeps working.
"""

from __future__ import annotations

import os
import struct

import pytest

from hashlab.oracle import rss
from hashlab.host.qtest import HOST_QEMU
from hashlab.frames.packets import corpus
from hashlab.vdrv import (
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    Ack,
    NetRig,
    hash_config_payload,
)
from hashlab.vdrv.check import HashSetup, run_setup
from hashlab.run.qtest_check import BAD_RSS

# The QEMU under test: stock by default; HASHLAB_QTEST_QEMU picks another (the lab's patched one).
QEMU = os.environ.get("HASHLAB_QTEST_QEMU", HOST_QEMU)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                       reason="needs root and /dev/net/tun (a tap for QEMU)"),
]

ALL = rss.ALL_TYPES
KEY = rss.MS_KEY
TABLE = [i % 4 for i in range(128)]
PROBE = corpus(0).select(["ipv4-tcp", "ipv4-udp", "ipv6-tcp", "ipv6-udp", "ipv6-hao-rh2"])
GOOD = HashSetup("good", ALL, KEY, "rss", tuple(TABLE), 1, 4)


@pytest.fixture(scope="module")
def rig():
    with NetRig(qemu_binary=QEMU, queues=4) as r:
        yield r


def device_works(rig, setup: HashSetup = GOOD) -> None:
    """A good configuration is accepted and every probe frame is hashed and steered right."""
    out = run_setup(rig, setup, PROBE)
    assert not out.missing, f"{len(out.missing)} frames lost"
    bad = out.mismatches("qemu-software")
    assert not bad, bad[:5]




def test_qtest_ctrl_good_config_first(rig):
    assert rig.net.rss_config(ALL, TABLE, KEY) == Ack.OK
    device_works(rig)


@pytest.mark.parametrize("name", list(BAD_RSS))
def test_qtest_ctrl_rss_config_refused(rig, name):
    ack = rig.net.ctrl(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, BAD_RSS[name])
    assert ack == Ack.ERR, f"{name}: ack {ack!r}"
    # QEMU turns RSS (and hash reports) off on a refused command; the old configuration
    # is not kept: frames arrive unhashed (hash 0, report NONE).
    res = rig.run([f.data for f in PROBE[:20]])
    assert not res.missing
    assert {(rx.hash_value, rx.hash_report) for _, rx in res.matched} == {(0, 0)}
    device_works(rig)


@pytest.mark.parametrize("name,payload", [
    ("key-too-long-41", hash_config_payload(ALL, bytes(41))),
    ("key-missing", hash_config_payload(ALL, b"")),
    ("short-command", hash_config_payload(ALL, KEY)[:6]),
])
def test_qtest_ctrl_hash_config_refused(rig, name, payload):
    assert rig.net.ctrl(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_HASH_CONFIG, payload) == Ack.ERR
    device_works(rig)


@pytest.mark.parametrize("cls,cmd,payload", [
    (VIRTIO_NET_CTRL_MQ, 0, struct.pack("<H", 0)),  # VQ_PAIRS_SET 0
    (VIRTIO_NET_CTRL_MQ, 0, struct.pack("<H", 5)),  # more pairs than the device has
    (VIRTIO_NET_CTRL_MQ, 3, b""),  # unknown MQ command
    (99, 0, b""),  # unknown class
], ids=["pairs-0", "pairs-5", "mq-cmd-3", "class-99"])
def test_qtest_ctrl_other_commands_refused(rig, cls, cmd, payload):
    assert rig.net.ctrl(cls, cmd, payload) == Ack.ERR
    device_works(rig)


def test_qtest_ctrl_vq_pairs_set(rig):
    assert rig.net.vq_pairs_set(2) == Ack.OK
    assert rig.net.hash_config(ALL, KEY) == Ack.OK
    out = run_setup(rig, HashSetup("hash-2q", ALL, KEY, "hash", pairs=2), PROBE)
    assert not out.missing and not out.mismatches("qemu-software")
    assert {o.rx.queue for o in out.received} <= {0, 1}
    device_works(rig)


def test_divergence_qemu_accepts_unknown_hash_type_bits(rig):
    """Reference §1 (and the spec): unknown hash types are an error.  QEMU 10.0 does not
    check hash_types at all: RSS_CONFIG and HASH_CONFIG with bit 9 (and bit 31) set are
    acked VIRTIO_NET_OK, and the unknown bits are ignored when hashing."""
    unknown = (1 << 9) | (1 << 31)
    assert rig.net.rss_config(ALL | unknown, TABLE, KEY, unclassified_queue=1) == Ack.OK
    res = rig.run([f.data for f in PROBE])
    assert not res.missing
    for i, rx in res.matched:  # hashed exactly as with the known bits alone
        e = GOOD.expect(PROBE[i].data)
        assert (rx.hash_value, rx.hash_report, rx.queue) == (e.hash, e.report, e.queue)
    assert rig.net.hash_config(ALL | unknown, KEY) == Ack.OK
    device_works(rig)


def test_qtest_ctrl_zero_key_and_types_disables_rss(rig):
    """hash_types 0 with key length 0 is accepted and turns RSS off (frames unhashed)."""
    assert rig.net.rss_config(0, TABLE, b"") == Ack.OK
    res = rig.run([f.data for f in PROBE[:20]])
    assert not res.missing
    assert {(rx.hash_value, rx.hash_report) for _, rx in res.matched} == {(0, 0)}
    device_works(rig)
