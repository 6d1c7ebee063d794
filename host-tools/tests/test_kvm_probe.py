"""The KVM probe (host.kvm) and the lab's choice of accelerator (host.lab.choose_accel).

The choice is judged over given verdicts; the probe's "no" is whatever this machine says
(the lab tier runs its "yes" inside the lab VM, tests/test_lab_kvm.py); the boot test's
detection of a booted kernel runs under TCG with the built lab kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hashlab.errors import HashlabError, UsageError
from hashlab.host import kvm, lab


def verdict(usable: bool, nested: dict[str, bool]):
    return lambda kernel, refresh=False: kvm.KvmProbe(usable, "because", nested)


@pytest.mark.parametrize("usable,nested,want", [
    (True, {"kvm_amd": True}, "kvm"),
    (True, {"kvm_amd": False}, "tcg"),
    (True, {}, "tcg"),
    (False, {"kvm_amd": True}, "tcg"),
])
def test_auto_takes_kvm_only_when_it_runs_guests_and_nests(monkeypatch, usable, nested, want):
    monkeypatch.setattr(lab, "kvm_verdict", verdict(usable, nested))
    accel, why = lab.choose_accel("auto", Path("/nonexistent"))
    assert accel == want and why and "\n" not in why
    if want == "tcg" and usable:
        assert "nest" in why


def test_asking_for_kvm_where_it_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setattr(lab, "kvm_verdict", verdict(False, {}))
    with pytest.raises(HashlabError, match="KVM cannot run guests here: because"):
        lab.choose_accel("kvm", Path("/nonexistent"))
    with pytest.raises(UsageError):
        lab.choose_accel("hvf", Path("/nonexistent"))
    assert lab.choose_accel("tcg", Path("/nonexistent"))[0] == "tcg"


def test_nested_parameters_are_read(tmp_path):
    (tmp_path / "kvm_amd" / "parameters").mkdir(parents=True)
    (tmp_path / "kvm_amd" / "parameters" / "nested").write_text("1\n")
    (tmp_path / "kvm_intel" / "parameters").mkdir(parents=True)
    (tmp_path / "kvm_intel" / "parameters" / "nested").write_text("N\n")
    assert kvm.nested_params(tmp_path) == {"kvm_intel": False, "kvm_amd": True}


def test_a_file_that_is_no_kernel_does_not_pass_the_boot_test(tmp_path):
    bogus = tmp_path / "bzImage"
    bogus.write_bytes(b"\0" * 4096)
    why = kvm.boot_test(bogus, accel="tcg", timeout=10)
    assert why, "a file of zeros booted"


@pytest.mark.built
def test_the_boot_test_sees_a_kernel_boot():
    from hashlab.host import datapath

    kernel = datapath.lab_kernel_path("progtype")
    if kernel is None:
        pytest.fail("the lab kernel is not built: run scripts/build-kernel")
    assert kvm.boot_test(Path(kernel), accel="tcg", timeout=120) == ""


@pytest.mark.labvm
def test_lab_accel_auto_says_which_and_why_in_one_line():
    r = subprocess.run([sys.executable, "-m", "hashlab", "lab", "--accel", "auto", "--",
                        "true"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("hashlab lab: ")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(("hashlab lab: TCG: ", "hashlab lab: KVM: ")), lines[0]
    v = kvm.KvmProbe(**json.loads(lab.probe_cache_path().read_text()))
    assert lines[0].startswith("hashlab lab: KVM: ") == (v.usable and v.nesting), (lines, v)
