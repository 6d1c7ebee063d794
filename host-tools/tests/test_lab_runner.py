"""`hashlab lab` from the outside: exit statuses, and a panic told apart from a failure.

These boot the lab VM from the host (marker ``labvm``); scripts/test runs them in the lab
tier, after the lab kernel is built.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.labvm


def hashlab_lab(*cmd: str, opts: tuple[str, ...] = (), timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hashlab", "lab", *opts, "--", *cmd],
                          capture_output=True, text=True, timeout=timeout)


def test_lab_runs_the_lab_kernel():
    r = hashlab_lab("cat", "/proc/version")
    assert r.returncode == 0, r.stderr
    release = subprocess.run([sys.executable, "-m", "hashlab", "build", "kernel", "--print-path"],
                             capture_output=True, text=True, check=True).stdout.split()[-1]
    with open(f"{release}/kernel.release") as f:
        assert f.read().strip() in r.stdout


def test_lab_passes_the_exit_status_through():
    r = hashlab_lab("sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7
    assert "out" in r.stdout and "err" in r.stdout
    assert "console log:" in r.stderr


def test_lab_kernel_panic_is_a_panic():
    # A root file system type that does not exist: the kernel cannot mount its root and
    # panics before any command runs (the lab kernel has no SysRq to crash it later).
    r = hashlab_lab("true", opts=("--append", "rootfstype=hashlab-no-such-fs"))
    assert r.returncode == 5, (r.returncode, r.stderr[-2000:])
    assert "kernel panicked" in r.stderr and "console log:" in r.stderr
    log = r.stderr.split("console log:")[1].split()[0]
    with open(log) as f:
        assert "Kernel panic" in f.read()


def test_lab_kernel_keeps_guests_on_an_unscaled_tsc():
    # hashlab.host.lab.LAB_KERNEL_ARGS: without it, a lab boot whose early TSC calibration
    # came out > 250 ppm off gives every KVM guest a scaled TSC, and those guests hang.
    from hashlab.host import lab

    r = hashlab_lab("cat", "/sys/module/kvm/parameters/tsc_tolerance_ppm", "/proc/cmdline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "10000"
    assert all(a in r.stdout for a in lab.LAB_KERNEL_ARGS)


def _descendants(root: int) -> set[int]:
    """ROOT's descendants now (by walking every process's parent chain)."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    out = set()
    for pid in parents:
        p = pid
        while p in parents and p > 1:
            p = parents[p]
            if p == root:
                out.add(pid)
                break
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_lab_sigterm_stops_the_lab_vm():
    # `kill -- -PGID` of a demo or compare run must not leave the lab VM (vng, virtme-run
    # and QEMU run in a session of their own) running on.
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashlab", "lab", "--", "sh", "-c", "echo ready; sleep 600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        line = ""
        while "ready" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "ready" in line, proc.stderr.read()[-2000:]
        children = _descendants(proc.pid)
        assert any(b"qemu-system" in open(f"/proc/{p}/cmdline", "rb").read()
                   for p in children if _alive(p)), "no QEMU under hashlab lab"
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
    except BaseException:
        for p in _descendants(proc.pid):
            os.kill(p, signal.SIGKILL)
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    assert "terminated by signal" in err, err[-2000:]
    time.sleep(1)
    left = [p for p in children if _alive(p)]
    for p in left:  # the test must not leak what it found leaked
        os.kill(p, signal.SIGKILL)
    assert not left, f"left running after SIGTERM: {left}"
