"""What a command writes in the lab VM reaches the host, wherever it writes it.

The lab VM sees the host's files read-only (tmpfs over /tmp, /var/cache, ...): anything
written outside a shared directory is lost at power off.  These boot the lab VM from the
host (marker ``labvm``) with outputs under pytest's temp dir, outside the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hashlab.host import lab
from hashlab.paths import REPO

pytestmark = pytest.mark.labvm


def test_writes_outside_the_checkout_reach_the_host(tmp_path):
    shared, unshared = tmp_path / "shared", tmp_path / "unshared"
    unshared.mkdir()
    r = lab.run(f"echo kept > {shared}/f && echo lost > {unshared}/f", writes=[shared],
                timeout=600)
    assert r.status == 0
    assert (shared / "f").read_text() == "kept\n"
    # the control: the hazard is real for a directory nobody named
    assert not (unshared / "f").exists()


def test_a_directory_virtme_ng_refuses_is_shared_through_its_parent(tmp_path):
    # bench datapath writes per-row dirs named "scenario@design"; vng takes no '@'
    row = tmp_path / "bench-ebpf-vhost@tunrss"
    r = lab.run(f"echo kept > '{row}/f'", writes=[row], timeout=600)
    assert r.status == 0
    assert (row / "f").read_text() == "kept\n"
    assert lab.shared_dirs([row])[0] == [tmp_path]


def test_a_lost_output_is_named(tmp_path):
    unshared = tmp_path / "unshared"
    unshared.mkdir()
    with pytest.raises(lab.LabOutputLost) as e:
        lab.run(f"echo lost > {unshared}/f", expect=[unshared / "f"], timeout=600)
    assert f"wrote {unshared / 'f'}, which did not reach the host" in str(e.value)
    assert e.value.log.is_file()


def test_reads_under_tmp_are_visible(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "f").write_text("from the host\n")
    r = subprocess.run([sys.executable, "-m", "hashlab", "lab", "--rodir", str(src), "--",
                        "cat", str(src / "f")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "from the host" in r.stdout


def test_run_out_outside_the_checkout(tmp_path):
    out = tmp_path / "run-out"
    r = subprocess.run([sys.executable, "-m", "hashlab", "run", "--out", str(out),
                        str(REPO / "scenarios" / "lab-vhost.yaml")],
                       capture_output=True, text=True, timeout=2400)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["ok"] is True
    assert (out / "junit.xml").is_file()


def test_demo_row_with_results_outside_the_checkout(tmp_path):
    # The README's demo command with HASHLAB_RESULTS elsewhere (it once lost the lab row).
    env = {**os.environ, "HASHLAB_RESULTS": str(tmp_path / "hlres"),
           "HASHLAB_DEMO_ROWS": "lab-patched-vhost", "HASHLAB_DEMO_COST": "program"}
    r = subprocess.run([str(REPO / "scripts" / "demo")], env=env, capture_output=True,
                       text=True, timeout=3000)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    demo = tmp_path / "hlres" / "demo"
    rows = json.loads((demo / "compare.json").read_text())["rows"]
    (row,) = [x for x in rows if x["id"] == "lab-patched-vhost"]
    assert row["status"] == "ran" and row["ok"], row
    sent = row["spec"]["sent"]
    assert sent > 400 and row["spec"]["hash_right"] == row["spec"]["queue_right"] == sent
    assert f"{sent}/{sent}" in (demo / "report.md").read_text()
    # the report's document: the qtest driver ran in the row's lab boot, the per-packet
    # cost on this machine, and the report renders again from it alone
    doc = json.loads((demo / "report.json").read_text())
    (qt,) = doc["correctness"]["qtest"]["progtype"][:1]
    assert qt["ok"] and qt["hash_report_negotiated"], qt
    assert {s["name"] for s in doc["cost"]["per_packet"]["subjects"]} >= {"upstream", "ours",
                                                                          "tun-c"}
    again = tmp_path / "again"
    r = subprocess.run([sys.executable, "-m", "hashlab", "report", "--from",
                        str(demo / "report.json"), "--out", str(again)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (again / "report.md").read_text() == (demo / "report.md").read_text()
    timing = json.loads((demo / "demo-timing.json").read_text())
    assert {"comparison", "cost: per packet", "report"} <= set(timing["seconds"])
