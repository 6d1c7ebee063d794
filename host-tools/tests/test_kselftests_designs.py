"""The kfunc and tunrss designs' kselftests, each in a lab VM booted with its kernel.

The lab tier's VM runs the default design; this one boots its own (marker ``labvm``),
runs the series' ``tun_vnet_hash`` and checks its KTAP output against the tests the
series' patches define, as test_kselftests does for the default design.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from hashlab.build import kernel as K
from test_kselftests import check_ktap, series_tests

pytestmark = pytest.mark.labvm


@pytest.mark.parametrize("design", ["kfunc", "tunrss"])
def test_design_series_kselftest(design):
    entry = K.entry(design)
    if not entry.done:
        pytest.fail(f"the {design} kernel is not built: hashlab build kernel --design {design}")
    exe = entry.path / "selftests" / "tun_vnet_hash"
    assert exe.is_file(), f"{exe} missing: the kernel build did not build the kselftest"
    r = subprocess.run([sys.executable, "-m", "hashlab", "lab", "--design", design, "--",
                        str(exe)], capture_output=True, text=True, timeout=900)
    expected = series_tests("tun_vnet_hash", design)
    assert len(expected) >= 10
    check_ktap(r, expected)
    assert r.returncode == 0, r.stderr[-2000:]
