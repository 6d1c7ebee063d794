"""The comparison's rows on the tunrss design's kernel (``scripts/build-kernel --design
tunrss``), booted as a lab VM of its own from the host (marker ``labvm``).

The same patched QEMU as on the other kernels: here tun answers TUNGETVNETHASHCAP, and
QEMU hands the guest's RSS and hash configuration to tun instead of an eBPF program
(``hash-offload=tun`` pins that: QEMU would refuse to start otherwise).  The guest must
get every hash the spec asks for, through tap and through vhost_net.  Stock QEMU must
see what it sees on the stock kernel, and the same QEMU told to use eBPF
(``hash-offload=ebpf``, what patches 1-10 alone do) steers but offers no hash report
with vhost, and says why.
"""

from __future__ import annotations

import pytest

from hashlab.host import datapath
from hashlab.paths import results_root
from hashlab.results import matrix as M
from hashlab.run import compare as C

pytestmark = pytest.mark.labvm

ROWS = ("lab-stock-vhost-tunrss", "lab-patched-tunrss", "lab-patched-vhost-tunrss",
        "lab-ebpf-qemu-vhost-tunrss")


def test_tunrss_kernel_rows():
    if datapath.lab_kernel_path("tunrss") is None:
        pytest.fail("the tunrss kernel is not built: scripts/build-kernel --design tunrss")
    rows = [C.ROWS_BY_ID[r] for r in ROWS]
    out = results_root() / "compare-tunrss-kernel"
    got, meta = C.compare(rows, out, C.DEFAULT_BASE, echo=print)
    print(M.render_table(got))
    assert "lab-tunrss-kernel" in meta["timings"] and "lab" not in meta["timings"]
    by = {r.id: r for r in got}
    for r in got:
        assert r.status == M.RAN, (r.id, r.reason)
        assert r.ok, (r.id, [c for c in r.checks if not c["ok"]], r.own)
        assert "tunrss series" in r.kernel and r.rss_negotiated, (r.id, r.kernel)
        assert r.own["seen"] == r.own["sent"] > 400, r.id
    # tun hashes every frame as the spec says, read by QEMU and by vhost_net
    for rid in ("lab-patched-tunrss", "lab-patched-vhost-tunrss"):
        r = by[rid]
        assert r.hash_report_negotiated and r.spec["check_hash"], rid
        assert r.spec["hash_right"] == r.spec["seen"], (rid, r.spec)
        assert r.spec["queue_right"] == r.spec["queue_checked"] == r.spec["seen"], rid
        assert r.spec["mismatch"] == 0 and r.own["behaviour"] == "spec", rid
        assert not r.qemu_warnings, (rid, r.qemu_warnings)
    assert by["lab-patched-vhost-tunrss"].vhost_running
    # stock QEMU does not opt in: as on the stock kernel
    stock = by["lab-stock-vhost-tunrss"]
    assert not stock.hash_report_offered and stock.own["behaviour"] == "qemu-ebpf"
    # eBPF on this kernel: steering only, and QEMU says why there is no hash report
    ebpf = by["lab-ebpf-qemu-vhost-tunrss"]
    assert not ebpf.hash_report_negotiated and ebpf.own["check_hash"] is False
    assert ebpf.spec["queue_right"] == ebpf.spec["queue_checked"]
    assert any("bpf_skb_set_vnet_hash" in w for w in ebpf.qemu_warnings), ebpf.qemu_warnings
    doc = {d["row"]: d for d in M.designs_json(got)}
    assert doc["lab-patched-vhost-tunrss"]["design"] == "tunrss"
    assert doc["lab-patched-vhost-tunrss"]["hashes_right"] == by[
        "lab-patched-vhost-tunrss"].spec["hash_right"]
