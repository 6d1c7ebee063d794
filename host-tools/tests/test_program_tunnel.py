"""The inner header hash in QEMU's eBPF RSS program (qemu/patches 0014) against the
oracle (hashlab.oracle.tunnel), over the encapsulated frames (hashlab.frames.tunnels):
each type enabled alone, all of them, none; RSS and hash-only.

The same program is both eBPF designs' (progtype loads its VNET_HASH form, kfunc its
socket filter, which calls the kfunc): neither kernel changes for this feature.
"""

from __future__ import annotations

from collections import Counter

import pytest

from hashlab.bench import differential as diff
from hashlab.bench import kfunc, testrun
from hashlab.frames.tunnels import tunnel_frames
from hashlab.host import bpf
from hashlab.oracle.rss import ALL_TYPES, LINUX_GUEST_TYPES, MS_KEY
from hashlab.oracle.tunnel import ALL_TUNNEL_TYPES, TunnelType

FRAMES = tunnel_frames(0)
TABLE = tuple(i % 4 for i in range(128))
CONFIGS = (
    [diff.Config(f"only-{t.name.lower()}", MS_KEY, ALL_TYPES, TABLE, 3, tunnel_types=int(t))
     for t in TunnelType]
    + [diff.Config("all", MS_KEY, ALL_TYPES, TABLE, 3, tunnel_types=ALL_TUNNEL_TYPES),
       diff.Config("none", MS_KEY, ALL_TYPES, TABLE, 3),
       diff.Config("all-linux-types", MS_KEY, LINUX_GUEST_TYPES, TABLE, 1,
                   tunnel_types=ALL_TUNNEL_TYPES),
       diff.Config("all-hash-only", MS_KEY, ALL_TYPES, (0,), 0, redirect=False,
                   tunnel_types=ALL_TUNNEL_TYPES)]
)


def _run(obj, prog, form, record_property, capture=None):
    out = diff.run(obj, prog, [f.data for f in FRAMES], CONFIGS, form=form, capture=capture,
                   behaviour="spec", labels=[f"{f.id} ({f.desc})" for f in FRAMES])
    text = f"{form} form, {len(FRAMES)} encapsulated frames x {len(CONFIGS)} configs\n" \
           + out.summary()
    print(text)
    record_property("tunnel_summary", text)
    assert out.n_mismatches == 0, text + "\n" + "\n".join(f"  {m}" for m in out.mismatches)
    assert not out.refused and not out.bugs, text
    assert out.compared == len(FRAMES) * len(CONFIGS)
    return out


def test_inner_hash_config_reaches_the_program(rss_object):
    """With every type enabled the VXLAN frames' queues follow their inner flows, with
    none their outer ones: the configuration map really carries tunnel_types (the
    program of a stale skeleton would ignore them)."""
    by_name = {c.name: c for c in CONFIGS}
    vx = [f.data for f in FRAMES if f.kind == "vxlan"]
    with bpf.open_rss_object(rss_object, "socket") as obj:
        obj.load()
        prog = obj.program(bpf.RSS_PROG_SOCKET)
        assert obj.map(bpf.RSS_MAP_CONFIG).value_size == bpf.RSS_CONFIG_SIZE
        queues = {}
        for name in ("all", "none"):
            by_name[name].apply(obj)
            queues[name] = [r.retval for r in testrun.run(prog.fd, vx)]
    assert queues["all"] != queues["none"], queues


def test_socket_form_follows_the_oracle(rss_object, record_property):
    """The socket filter on the running kernel: the queue of every frame."""
    with bpf.open_rss_object(rss_object, "socket") as obj:
        obj.load()
        out = _run(obj, obj.program(bpf.RSS_PROG_SOCKET), "socket", record_property)
    assert out.by_report["NONE"] < out.compared


@pytest.mark.lab
def test_vnet_hash_form_follows_the_oracle(rss_object, record_property):
    """progtype's VNET_HASH program: hash, report and queue of every frame."""
    ok, why = bpf.kernel_has_vnet_hash(rss_object)
    if not ok:
        pytest.fail(f"the lab kernel cannot load the VNET_HASH program ({why})")
    with bpf.open_rss_object(rss_object, "vnet_hash") as obj:
        obj.load()
        out = _run(obj, obj.program(bpf.RSS_PROG_VNET_HASH), "vnet_hash", record_property)
    # every report type an inner packet can have came out of the program
    seen = Counter(out.by_report)
    for name in ("IPv4", "TCPv4", "UDPv4", "IPv6", "TCPv6", "UDPv6", "NONE"):
        assert seen[name], (name, seen)


@pytest.mark.lab_kfunc
def test_kfunc_form_follows_the_oracle(rss_object, record_property):
    """kfunc's socket filter: the hash and report it hands bpf_skb_set_vnet_hash()."""
    from hashlab.host.datapath import kernel_has_kfunc

    if not kernel_has_kfunc():
        pytest.fail(f"this kernel's BTF has no {kfunc.KFUNC}: not the kfunc lab kernel")
    with bpf.open_rss_object(rss_object, "socket") as obj, kfunc.KfuncCapture() as cap:
        obj.load()
        _run(obj, obj.program(bpf.RSS_PROG_SOCKET), "kfunc", record_property, capture=cap)
