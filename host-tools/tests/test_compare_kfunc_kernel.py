"""The comparison's rows on the kfunc design's kernel (``scripts/build-kernel --design
kfunc``), booted as a lab VM of its own from the host (marker ``labvm``).

The same patched QEMU as on the progtype kernel: there its loader takes the RFC's program
type; here that type does not exist, it loads the socket filter, whose ``__weak`` call of
``bpf_skb_set_vnet_hash()`` libbpf resolved, and the guest must get every hash the spec
asks for, through tap and through vhost_net.  Stock QEMU, which does not opt in, must see
what it sees on the stock kernel.  And the mismatched pairing: the QEMU built before the
kfunc patch (``--variant progtype-only``) finds neither the program type nor a program
that calls the kfunc, and says so.
"""

from __future__ import annotations

import pytest

from hashlab.host import datapath
from hashlab.paths import results_root
from hashlab.results import matrix as M
from hashlab.run import compare as C

pytestmark = pytest.mark.labvm

ROWS = ("lab-stock-vhost-kfunc", "lab-patched-kfunc", "lab-patched-vhost-kfunc",
        "lab-progtype-qemu-vhost-kfunc", "lab-progtype-qemu-kfunc")


def test_kfunc_kernel_rows():
    if datapath.lab_kernel_path("kfunc") is None:
        pytest.fail("the kfunc kernel is not built: scripts/build-kernel --design kfunc")
    rows = [C.ROWS_BY_ID[r] for r in ROWS]
    out = results_root() / "compare-kfunc-kernel"
    got, meta = C.compare(rows, out, C.DEFAULT_BASE, echo=print)
    print(M.render_table(got))
    assert "lab-kfunc-kernel" in meta["timings"] and "lab" not in meta["timings"]
    by = {r.id: r for r in got}
    for r in got:
        assert r.status == M.RAN, (r.id, r.reason)
        assert r.ok, (r.id, [c for c in r.checks if not c["ok"]], r.own)
        assert "kfunc series" in r.kernel and r.rss_negotiated, (r.id, r.kernel)
        assert r.own["seen"] == r.own["sent"] > 400, r.id
    # the one patched QEMU reports every hash, by tap and by vhost_net, as the spec says
    for rid in ("lab-patched-kfunc", "lab-patched-vhost-kfunc"):
        r = by[rid]
        assert r.hash_report_negotiated and r.spec["check_hash"], rid
        assert r.spec["hash_right"] == r.spec["seen"], (rid, r.spec)
        assert r.spec["queue_right"] == r.spec["queue_checked"] == r.spec["seen"], rid
        assert r.spec["mismatch"] == 0 and r.own["behaviour"] == "spec", rid
    assert by["lab-patched-vhost-kfunc"].vhost_running
    # stock QEMU does not opt in: as on the stock kernel
    stock = by["lab-stock-vhost-kfunc"]
    assert not stock.hash_report_offered and stock.own["behaviour"] == "qemu-ebpf"
    # the QEMU built before the kfunc patch: steers, reports no hash with vhost and says why
    old = by["lab-progtype-qemu-vhost-kfunc"]
    assert not old.hash_report_negotiated and old.own["check_hash"] is False
    assert old.spec["queue_right"] == old.spec["queue_checked"]
    assert any("BPF_PROG_TYPE_VNET_HASH" in w for w in old.qemu_warnings), old.qemu_warnings
    assert "progtype-only" in old.qemu
    # ... and without vhost hashes in software, after queue selection, as upstream
    sw = by["lab-progtype-qemu-kfunc"]
    assert sw.hash_report_negotiated and sw.own["behaviour"] == "qemu-software"
    assert any("in software" in w for w in sw.qemu_warnings), sw.qemu_warnings
    # designs.json's numbers are the table's
    doc = {d["row"]: d for d in M.designs_json(got)}
    assert doc["lab-patched-vhost-kfunc"]["design"] == "kfunc"
    assert doc["lab-patched-vhost-kfunc"]["hashes_right"] == by["lab-patched-vhost-kfunc"].spec[
        "hash_right"]
