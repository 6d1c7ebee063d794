"""The lab VM can run KVM guests (emulated SVM + NPT under TCG): the smoke test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

MARK = "hashlab-kvm-guest-ok"


def busybox_initramfs(path: Path) -> None:
    root = path.parent / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    init = root / "init"
    init.write_text(f"#!/bin/busybox sh\n/bin/busybox echo {MARK}\n/bin/busybox poweroff -f\n")
    init.chmod(0o755)
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True)
    with open(path, "wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                       input=files.stdout.encode(), stdout=out, check=True)


def test_kvm_guest_boots_in_the_lab():
    assert os.path.exists("/dev/kvm"), "no /dev/kvm in the lab VM (KVM_AMD built in?)"
    kernel = os.environ["HASHLAB_LAB_KERNEL"]
    with tempfile.TemporaryDirectory(prefix="hashlab-kvm-") as d:
        initrd = Path(d) / "initrd.cpio"
        busybox_initramfs(initrd)
        r = subprocess.run(
            ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
             "-kernel", kernel, "-initrd", str(initrd), "-nographic", "-no-reboot",
             "-append", "console=ttyS0 rdinit=/init panic=-1 quiet"],
            capture_output=True, text=True, timeout=300,
        )
    assert MARK in r.stdout, f"guest did not come up (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"


def test_the_kvm_probe_says_yes_here():
    """The lab VM's KVM runs a Linux guest: the probe's "yes" path (kvm.probe)."""
    from hashlab.host import kvm

    v = kvm.probe(kernel=Path(os.environ["HASHLAB_LAB_KERNEL"]))
    assert v.usable, v.reason
    assert v.nesting, v.nested

