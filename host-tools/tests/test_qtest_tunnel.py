"""The inner header hash (VIRTIO_NET_F_HASH_TUNNEL, qemu/patches 0014) through the
device, with hashlab's virtio-net driver as the guest (the Linux driver does not use the
feature): every encapsulated frame (hashlab.frames.tunnels) must carry the hash, report
and queue of oracle.tunnel, with each type enabled alone, all, none.

* in each design's lab VM (``lab``: progtype's VNET_HASH program, ``lab_kfunc``: the
  socket filter calling the kfunc, ``lab_tunrss``: tun itself, with the series' patch 8),
  through tap (vhost off) and through vhost_net (vhost on).  progtype's and kfunc's
  kernels are the ones they had: only QEMU's program changed;
* on this machine (``built``): QEMU's software path (its kernel cannot report hashes).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import pytest

from hashlab import designs
from hashlab.build.qemu import find_qemu_entry
from hashlab.frames.tunnels import tunnel_frames
from hashlab.host import datapath, hashquery
from hashlab.oracle import rss, tunnel
from hashlab.oracle.tunnel import ALL_TUNNEL_TYPES, TunnelType
from hashlab.run.qtest_check import DEVICE_OPTS
from hashlab.vdrv import VIRTIO_NET_F_HASH_TUNNEL, Ack, NetRig

FRAMES = tunnel_frames(0)
TABLE = [i % 4 for i in range(128)]
CFG = rss.RssConfig(key=rss.MS_KEY, hash_types=rss.ALL_TYPES, table=TABLE, unclassified_queue=3)
ENABLED = {**{f"only-{t.name.lower()}": int(t) for t in TunnelType},
           "all": ALL_TUNNEL_TYPES, "none": 0}
OPTS = DEVICE_OPTS + ",hash-tunnel=on"


def _qemu():
    entry = find_qemu_entry()
    if entry is None:
        pytest.fail("patched QEMU is not built: run scripts/build-qemu")
    return entry / "bin/qemu-system-x86_64"


@pytest.fixture(scope="module", params=[False, True], ids=["vhost-off", "vhost-on"])
def lab_rig(request):
    with NetRig(qemu_binary=_qemu(), queues=4, vhost=request.param, device_opts=OPTS) as r:
        yield r


@pytest.fixture(scope="module")
def host_rig():
    # vhost-hash-report=on has no meaning without vhost; this kernel cannot report
    # hashes from eBPF, so QEMU hashes (the software path).
    with NetRig(qemu_binary=_qemu(), queues=4, device_opts=OPTS) as r:
        yield r


def _configure(rig: NetRig, types: int) -> None:
    assert rig.net.rss_config(CFG.hash_types, TABLE, CFG.key,
                              unclassified_queue=CFG.unclassified_queue) == Ack.OK
    assert rig.net.hash_tunnel_set(types) == Ack.OK, f"tunnel types {types:#x} refused"


def _check(rig: NetRig, types: int, frames=FRAMES, cfg=CFG) -> Counter:
    """Send FRAMES; every one must come back as the oracle says.  Counts per kind."""
    res = rig.run([f.data for f in frames])
    assert not res.missing, f"{len(res.missing)} frame(s) never arrived"
    bad, kinds = [], Counter()
    for i, rx in res.matched:
        f = frames[i]
        e = tunnel.expect(cfg, f.data, types)
        got = (rx.hash_value, rx.hash_report, rx.queue)
        if got != (e.hash, e.report, e.queue):
            bad.append(f"{f.id} {f.desc}: {rx.hash_value:#010x}/{rx.hash_report}/q{rx.queue}, "
                       f"oracle {e.hash:#010x}/{e.report}/q{e.queue}")
        kinds[f.kind if f.types & types else "outer-hashed"] += 1
    assert not bad, f"tunnel types {types:#x}: {len(bad)} mismatch(es):\n" + "\n".join(bad[:10])
    return kinds


def _offered(rig: NetRig) -> None:
    assert rig.net.has(VIRTIO_NET_F_HASH_TUNNEL), "VIRTIO_NET_F_HASH_TUNNEL not negotiated"
    assert rig.net.config.supported_tunnel_types == ALL_TUNNEL_TYPES


@pytest.mark.lab
@pytest.mark.lab_kfunc
@pytest.mark.lab_tunrss
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", list(ENABLED))
def test_inner_hash_through_the_program(lab_rig, name):
    """The eBPF program hashes the inner header of the enabled types, the outer one of
    the rest; with vhost_net too."""
    _offered(lab_rig)
    _configure(lab_rig, ENABLED[name])
    kinds = _check(lab_rig, ENABLED[name])
    print(f"{name}: {sum(kinds.values())} frames as the oracle says: {dict(kinds)}")
    dev = hashquery.DeviceHash.from_qmp(hashquery.query_sync(lab_rig.qt, NetRig.DEVICE_PATH))
    assert dev.label == designs.get(datapath.running_design()).mechanism, dev
    assert dev.tunnel_types == ENABLED[name]


@pytest.mark.lab
@pytest.mark.lab_kfunc
@pytest.mark.lab_tunrss
def test_unsupported_tunnel_types_are_refused_and_the_old_kept(lab_rig):
    _configure(lab_rig, int(TunnelType.VXLAN))
    assert lab_rig.net.hash_tunnel_set(1 << 9) == Ack.ERR
    assert lab_rig.net.hash_tunnel_set(ALL_TUNNEL_TYPES | 1 << 31) == Ack.ERR
    vxlan = [f for f in FRAMES if f.kind == "vxlan"]
    assert _check(lab_rig, int(TunnelType.VXLAN), vxlan)["vxlan"] == len(vxlan)


@pytest.mark.lab
@pytest.mark.lab_kfunc
@pytest.mark.lab_tunrss
def test_a_reset_turns_inner_hashing_off(lab_rig):
    _configure(lab_rig, ALL_TUNNEL_TYPES)
    lab_rig.net.init()  # a device reset, then the driver's bring-up again
    assert lab_rig.net.rss_config(CFG.hash_types, TABLE, CFG.key,
                                  unclassified_queue=CFG.unclassified_queue) == Ack.OK
    assert _check(lab_rig, 0)["outer-hashed"] == len(FRAMES)


@pytest.mark.built
def test_inner_hash_in_qemu_s_software_path(host_rig):
    """No series here: QEMU hashes in userspace.  It must find the inner packet as the
    oracle (and the eBPF program) does, and hashes it the way it hashes any packet: with
    every type enabled an IPv6 packet without extension headers gets an _EX report (the
    named divergence qemu-software-ex-without-ext), which the oracle models."""
    _offered(host_rig)
    sw = dataclasses.replace(CFG, behaviour="qemu-software")
    for name in ("all", "none", "only-gre_2890", "only-vxlan_gpe"):
        _configure(host_rig, ENABLED[name])
        _check(host_rig, ENABLED[name], cfg=sw)
    dev = hashquery.query_sync(host_rig.qt, NetRig.DEVICE_PATH)
    assert dev["mechanism"] == "software", dev
    assert host_rig.net.hash_tunnel_set(1 << 12) == Ack.ERR


def _migrate(src: NetRig, uri: str) -> str:
    """Migrate SRC's QEMU to URI; the final status (completed or failed)."""
    src.qt.qmp("migrate", uri=uri)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = src.qt.qmp("query-migrate").get("status")
        if status in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"migration to {uri} still {status} after 60 s")


@pytest.mark.built
@pytest.mark.parametrize("dst_types", [ALL_TUNNEL_TYPES, int(TunnelType.VXLAN)],
                         ids=["same-device", "fewer-types"])
def test_the_setting_migrates_or_the_stream_is_refused(tmp_path, dst_types):
    """The enabled types travel in the virtio-net-device/hash-tunnel subsection; a
    destination that does not offer one of them refuses the stream, and the source,
    resumed, still has them."""
    enabled = int(TunnelType.VXLAN | TunnelType.GENEVE)
    uri = f"unix:{tmp_path / 'migrate.sock'}"
    with NetRig(qemu_binary=_qemu(), queues=4, device_opts=OPTS,
                log_dir=tmp_path / "src") as src:
        _configure(src, enabled)
        with NetRig(qemu_binary=_qemu(), queues=4, driver=False, log_dir=tmp_path / "dst",
                    device_opts=f"{OPTS},hash-tunnel-types={dst_types}",
                    extra_args=["-incoming", uri]) as dst:
            status = _migrate(src, uri)
            if dst_types == ALL_TUNNEL_TYPES:
                assert status == "completed", dst.qt.tail()
                dev = hashquery.DeviceHash.from_qmp(
                    hashquery.query_sync(dst.qt, NetRig.DEVICE_PATH))
                assert dev.tunnel_types == enabled and dev.rss_enabled, dev
            else:
                # the source only sends (no return path): it is the destination that
                # refuses, in the subsection's post_load, and exits
                assert status in ("completed", "failed")
                dst.qt.wait(10)
                assert not dst.qt.running, "the destination took a stream it cannot honour"
                assert "this device supports 0x10" in dst.qt.log_path.read_text()
                src.qt.qmp("cont")
                dev = hashquery.DeviceHash.from_qmp(
                    hashquery.query_sync(src.qt, NetRig.DEVICE_PATH))
                assert dev.tunnel_types == enabled
