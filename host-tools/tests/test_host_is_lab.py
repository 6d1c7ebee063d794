"""No nesting when the host is the lab (issue #20): where the running kernel has a
design's series, /dev/vhost-net opens and KVM runs guests, ``hashlab run`` runs that
design's ``where: lab`` scenarios right there instead of booting a lab VM.

The lab VM is such a host.  Its hashlab is told it is in the lab (HASHLAB_IN_LAB and
friends); without them, it must find out by itself.  On this project's own host (Debian's
kernel, no vhost_net) it must say no and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hashlab.host import datapath
from hashlab.paths import REPO, SCENARIOS_DIR

TOLD = ("HASHLAB_IN_LAB", "HASHLAB_LAB_KERNEL", "HASHLAB_LAB_DESIGN", "HASHLAB_LAB_PREP")


@pytest.mark.lab
def test_the_lab_vm_is_a_lab_without_being_told(tmp_path):
    sc = tmp_path / "lab-vhost-here.yaml"
    text = (SCENARIOS_DIR / "lab-vhost.yaml").read_text().replace(
        "name: lab-vhost", "name: lab-vhost-here").replace(
        "slices: all", "slices: [ipv4-tcp, ipv6-udp, non-ip]")
    sc.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in TOLD}
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "hashlab", "run", "--load-frames", "0",
                        "--out", str(out), str(sc)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0
    assert "is a progtype lab: its series, /dev/vhost-net and KVM are here" in r.stderr
    assert "booting the lab VM" not in r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["ok"]  # every frame as the oracle says
    dp = res["datapath"]
    assert (dp["where"], dp["design"], dp["accel"]) == ("lab", "progtype", "kvm"), dp
    assert res["vhost"]["started"] and res["vhost"]["acked_hash_report"], res["vhost"]


@pytest.mark.skipif(datapath.in_lab(), reason="asks the host, not the lab VM")
def test_this_host_is_not_a_lab():
    design, why = datapath.host_lab()
    assert design is None
    if datapath.kernel_has_series():  # a developer's patched host: the other checks say
        assert why.startswith(("/dev/vhost-net", "KVM cannot")), why
    else:
        assert why == f"the running kernel {os.uname().release} has no design's series"
