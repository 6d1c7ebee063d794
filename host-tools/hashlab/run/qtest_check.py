"""The qtest driver's verdict on a kernel: every report type, hash-only, refused configurations,
the inner header hash.

hashlab's own virtio-net driver (``hashlab.vdrv``) is the guest: it reads the raw 20-byte
receive headers, so the exact report value of all nine types is checked, which the Linux
guest (L3/L4 only) cannot show.  The tests (tests/test_qtest_lab.py) and the demo's
comparison (``hashlab compare``, inside each design's lab VM) use the same setups.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from ..frames.packets import corpus
from ..frames.tunnels import tunnel_frames
from ..host import hashquery
from ..oracle import rss, tunnel
from ..vdrv import NetRig
from ..vdrv.check import HashSetup, run_setup
from ..vdrv.net import (
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    VIRTIO_NET_F_HASH_TUNNEL,
    Ack,
    rss_config_payload,
)

T = rss.HashType
# The program's named parser limits on top of the spec; tun's own parser shares them.
BEHAVIOUR = "hashlab-ebpf"
RANDOM_KEY = bytes(range(7, 47))
# hash-tunnel: VIRTIO_NET_F_HASH_TUNNEL offered (qemu/patches 0015); nothing changes until
# the driver enables a type.
DEVICE_OPTS = "rss=on,hash=on,vhost-hash-report=on,hash-tunnel=on"
# The inner header hash over the encapsulated frames: every type, and none.
TUNNEL_RUNS = {"all": tunnel.ALL_TUNNEL_TYPES, "none": 0}

SETUPS = [
    HashSetup("rss-all-mskey", rss.ALL_TYPES, rss.MS_KEY, "rss",
              tuple(i % 4 for i in range(128)), 0, 4),
    HashSetup("rss-linux-randkey-uncl1", rss.LINUX_GUEST_TYPES, RANDOM_KEY, "rss",
              tuple((i * 7) % 4 for i in range(64)), 1, 4),
    HashSetup("rss-ex-and-tcp4", int(T.IPv6_EX | T.TCPv6_EX | T.UDPv6_EX | T.TCPv4),
              RANDOM_KEY, "rss", tuple(i % 2 for i in range(16)), 2, 4),
    HashSetup("hash-only-all", rss.ALL_TYPES, RANDOM_KEY, "hash", pairs=4),
]


def _rss(**kw) -> bytes:
    args = dict(hash_types=rss.ALL_TYPES, table=[i % 4 for i in range(128)],
                unclassified_queue=0, max_tx_vq=4, key=rss.MS_KEY)
    args.update(kw)
    return rss_config_payload(**args)


# RSS_CONFIG commands a 4-queue-pair device must refuse (VIRTIO_NET_ERR), by what is wrong.
BAD_RSS = {
    "table-not-power-of-two": _rss(table=[0, 1, 2]),
    "table-too-long-256": _rss(table=[i % 4 for i in range(256)]),
    "key-too-long-41": _rss(key=bytes(range(41))),
    "key-missing": _rss(key=b""),
    "unclassified-queue-out-of-range": _rss(unclassified_queue=4),
    "max-tx-vq-zero": _rss(max_tx_vq=0),
    "max-tx-vq-too-big": _rss(max_tx_vq=5),
    "short-command": _rss()[:8],
    "table-cut-short": _rss()[:8 + 100],
    "key-cut-short": _rss()[:-10],
}


def _judge(setup: HashSetup, out) -> dict:
    right = {"hash": 0, "report": 0, "queue": 0, "all": 0}
    first_bad = []
    for o in out.received:
        e = setup.expect(o.frame.data, BEHAVIOUR)
        ok = {"hash": o.rx.hash_value == e.hash, "report": o.rx.hash_report == e.report,
              "queue": o.rx.queue == e.queue if e.queue >= 0 else 0 <= o.rx.queue < setup.pairs}
        for k, v in ok.items():
            right[k] += v
        right["all"] += all(ok.values())
        if not all(ok.values()) and len(first_bad) < 5:
            first_bad.append(f"{o.frame.desc}: got {o.rx.hash_value:#010x}/{o.rx.hash_report}/"
                             f"q{o.rx.queue}, oracle {e.hash:#010x}/{e.report}/q{e.queue}")
    return {"setup": setup.name, "sent": len(out.observations), "received": len(out.received),
            "missing": len(out.missing), "right": right,
            "reports_seen": sorted({o.rx.hash_report for o in out.received}),
            "first_wrong": first_bad}


def device_hash(rig: NetRig, setup: HashSetup) -> dict:
    """QEMU's x-query-virtio-net-hash after SETUP: its mechanism label and where the
    device's configuration differs from SETUP (None: this QEMU has no such query)."""
    info = hashquery.query_sync(rig.qt, NetRig.DEVICE_PATH)
    if info is None:
        return {"mechanism": None, "differences": []}
    dh = hashquery.DeviceHash.from_qmp(info)
    # QEMU steers whenever RSS is negotiated (redirect follows the feature, not the
    # command): a HASH_CONFIG then leaves a one-entry table [0], as the query shows.
    table = list(setup.table) if setup.mode == "rss" else [0]
    want = rss.RssConfig(key=setup.key, hash_types=setup.hash_types, table=table,
                         unclassified_queue=setup.unclassified_queue if setup.mode == "rss"
                         else 0)
    return {"mechanism": dh.label, "differences": dh.differences(want)}


def _tunnel(rig: NetRig, name: str, types: int) -> dict:
    """The encapsulated frames with TYPES enabled, judged by oracle.tunnel."""
    cfg = rss.RssConfig(key=rss.MS_KEY, hash_types=rss.ALL_TYPES,
                        table=[i % 4 for i in range(128)], unclassified_queue=3)
    acks = [rig.net.rss_config(cfg.hash_types, cfg.table, cfg.key, unclassified_queue=3),
            rig.net.hash_tunnel_set(types)]
    frames = tunnel_frames(0)
    got = rig.run([f.data for f in frames]) if acks == [Ack.OK, Ack.OK] else None
    right, inner, first_bad = 0, Counter(), []
    for i, rx in (got.matched if got else []):
        f = frames[i]
        e = tunnel.expect(cfg, f.data, types)
        if (rx.hash_value, rx.hash_report, rx.queue) == (e.hash, e.report, e.queue):
            right += 1
            if f.types & types:
                inner[f.kind] += 1
        elif len(first_bad) < 5:
            first_bad.append(f"{f.desc}: got {rx.hash_value:#010x}/{rx.hash_report}/"
                             f"q{rx.queue}, oracle {e.hash:#010x}/{e.report}/q{e.queue}")
    return {"run": name, "tunnel_types": types, "acked": acks == [Ack.OK, Ack.OK],
            "sent": len(frames), "received": len(got.matched) if got else 0,
            "right": right, "inner_hashed": dict(inner), "first_wrong": first_bad}


def check(qemu_binary: Path, vhost: bool) -> dict:
    """Every setup over the corpus, then each refused RSS_CONFIG followed by probe frames
    that must still follow the setup applied before it; counts, not assertions."""
    t0 = time.monotonic()
    frames = corpus(0)
    res: dict = {"vhost": vhost, "setups": [], "refused": []}
    with NetRig(qemu_binary=qemu_binary, queues=4, vhost=vhost, device_opts=DEVICE_OPTS) as rig:
        res["hash_report_negotiated"] = bool(rig.net.features & (1 << 57))
        if not res["hash_report_negotiated"]:
            res["seconds"] = round(time.monotonic() - t0, 1)
            return res
        for s in SETUPS:
            res["setups"].append({**_judge(s, run_setup(rig, s, frames)),
                                  "device": device_hash(rig, s)})
        keep = SETUPS[1]
        probe = frames.select(["ipv4-tcp", "ipv6-udp", "ipv6-hao-rh2"])[:30]
        run_setup(rig, keep, probe)
        for name, payload in BAD_RSS.items():
            ack = rig.net.ctrl(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, payload)
            res_probe = rig.run([f.data for f in probe])
            right = 0
            for i, rx in res_probe.matched:
                e = keep.expect(probe[i].data, BEHAVIOUR)
                right += (rx.hash_value, rx.hash_report, rx.queue) == (e.hash, e.report, e.queue)
            res["refused"].append({"command": name, "refused": ack == Ack.ERR,
                                   "probe": len(probe), "still_right": right})
        res["tunnel_offered"] = rig.net.has(VIRTIO_NET_F_HASH_TUNNEL)
        res["tunnel"] = [_tunnel(rig, n, t) for n, t in TUNNEL_RUNS.items()]
    res["seconds"] = round(time.monotonic() - t0, 1)
    return res


def ok(res: dict, mechanism: str | None = None) -> bool:
    """Every frame right, every refused command refused with the old setup kept, and
    (given MECHANISM, the design's) QEMU's query saying so and holding each setup."""
    return (res.get("hash_report_negotiated", False)
            and all(s["right"]["all"] == s["received"] and not s["missing"]
                    for s in res["setups"])
            and all(mechanism is None or (s["device"]["mechanism"] == mechanism
                                          and not s["device"]["differences"])
                    for s in res["setups"])
            and all(r["refused"] and r["still_right"] == r["probe"] for r in res["refused"])
            and res.get("tunnel_offered", False)
            and all(t["acked"] and t["right"] == t["received"] == t["sent"]
                    for t in res.get("tunnel", []))
            and len(res.get("tunnel", [])) == len(TUNNEL_RUNS)
            and bool(res["setups"]))
