"""The comparison's rows on the control kernel: the lab kernel's source and config
*without* the series (``scripts/build-kernel --design stock``), booted as a second lab VM from
the host (marker ``labvm``; scripts/test builds the control kernel first).

What upstream does today with vhost_net, and what our QEMU does on a kernel that lacks
the series: neither may offer HASH_REPORT (vhost_net cannot deliver hashes), both must
still steer by RSS through their eBPF program, each exactly as its model says: upstream
QEMU's program with its pinned parser differences (``qemu-ebpf``), ours as the spec.
"""

from __future__ import annotations

import pytest

from hashlab.run import compare as C
from hashlab.results import matrix as M
from hashlab.host import datapath
from hashlab.paths import results_root

pytestmark = pytest.mark.labvm


def test_stock_vhost_net_rows():
    if datapath.lab_kernel_path("stock") is None:
        pytest.fail("the control kernel is not built: scripts/build-kernel --design stock")
    rows = [C.ROWS_BY_ID["lab-stock-vhost-stock-kernel"],
            C.ROWS_BY_ID["lab-patched-vhost-stock-kernel"]]
    out = results_root() / "compare-stock-kernel"
    got, meta = C.compare(rows, out, C.DEFAULT_BASE, echo=print)
    print(M.render_table(got))
    assert "lab-stock-kernel" in meta["timings"] and "lab" not in meta["timings"]
    by = {r.id: r for r in got}
    for r in got:
        assert r.status == M.RAN, (r.id, r.reason)
        assert r.ok, (r.id, [c for c in r.checks if not c["ok"]], r.own)
        assert "no series" in r.kernel and r.vhost_running
        assert r.rss_negotiated and not r.hash_report_offered and not r.hash_report_negotiated
        # no hash reaches the guest: every frame judged as "no hash" by the row's model
        assert r.own["check_hash"] is False and r.own["seen"] == r.own["sent"] > 400
        assert r.spec["queue_checked"] == r.spec["seen"]
    stock, ours = by["lab-stock-vhost-stock-kernel"], by["lab-patched-vhost-stock-kernel"]
    assert stock.own["behaviour"] == "qemu-ebpf" and ours.own["behaviour"] == "spec"
    # our program steers every frame as the spec; upstream's differs where it is known to
    assert ours.spec["queue_right"] == ours.spec["queue_checked"]
    assert stock.spec["queue_right"] < stock.spec["queue_checked"]
    # patched QEMU says why it does not offer hash reports
    assert any("BPF_PROG_TYPE_VNET_HASH" in w for w in ours.qemu_warnings), ours.qemu_warnings
