"""hashlab.host.qtest (the qtest protocol client) and the tap helper: lifecycle and errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from hashlab.host.qtest import HOST_QEMU, QtestError, QtestExited, QtestMachine, QtestStartError, has_qtest_accel
from hashlab.host.tap import Tap
from hashlab.vdrv import NetRig, enumerate_bus
from hashlab.vdrv.pci import PciResourceAllocator

# The QEMU under test: stock by default; HASHLAB_QTEST_QEMU picks another (the lab's patched one).
QEMU = os.environ.get("HASHLAB_QTEST_QEMU", HOST_QEMU)

pytestmark = [pytest.mark.vm, pytest.mark.timeout(120)]
need_tap = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                              reason="needs root and /dev/net/tun")


def test_qtest_memory_and_ports(tmp_path):
    with QtestMachine(qemu_binary=QEMU, log_dir=tmp_path) as qt:
        assert qt.endianness() == "little"
        data = bytes(range(256)) * 3
        qt.write(0x200000, data)
        assert qt.read(0x200000, len(data)) == data
        qt.memwrite(0x201000, b"\x01\x02\x03\x04\x05\x06\x07\x08")
        assert qt.memread(0x201000, 4) == b"\x01\x02\x03\x04"
        assert qt.readl(0x201000) == 0x04030201
        assert qt.readq(0x201000) == 0x0807060504030201
        qt.writew(0x201000, 0xBEEF)
        assert qt.readw(0x201000) == 0xBEEF and qt.readb(0x201001) == 0xBE
        qt.writeq(0x201008, 0x1122334455667788)
        assert qt.read(0x201008, 8) == bytes.fromhex("8877665544332211")
        qt.memset(0x201000, 16, 0x5A)
        assert qt.read(0x201000, 16) == b"\x5a" * 16
        # the q35 host bridge through the legacy configuration mechanism
        qt.outl(0xCF8, 0x8000_0000)
        assert qt.inl(0xCFC) == 0x29C0_8086
        assert qt.qmp("query-status")["running"] is True
        pid = qt.proc.pid
    assert qt.proc.poll() is not None, "QEMU still running after the with block"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_qtest_clock(tmp_path):
    with QtestMachine(qemu_binary=QEMU, log_dir=tmp_path) as qt:
        if qt.accel == "qtest":
            t0 = qt.clock_step(1000)
            assert qt.clock_step(1000) == t0 + 1000
        else:  # Debian's QEMU has no qtest accelerator: a clear error, not a hang
            with pytest.raises(QtestError, match="needs the qtest accelerator"):
                qt.clock_step(1000)
    assert has_qtest_accel(qt.qemu_binary) == (qt.accel == "qtest")


def test_qtest_start_failure_names_command_and_log(tmp_path):
    qt = QtestMachine(["-device", "no-such-device"], qemu_binary=QEMU, log_dir=tmp_path)
    with pytest.raises(QtestStartError) as ei:
        qt.start()
    msg = str(ei.value)
    assert "no-such-device" in msg  # the command line and QEMU's own complaint
    assert str(qt.log_path) in msg
    assert "is not a valid device model name" in msg
    assert not qt.alive()


def test_qtest_missing_binary(tmp_path):
    with pytest.raises(QtestStartError, match="cannot run QEMU"):
        QtestMachine(qemu_binary=tmp_path / "nope", accel="tcg", log_dir=tmp_path).start()


def test_qtest_qemu_death_is_reported(tmp_path):
    with QtestMachine(qemu_binary=QEMU, log_dir=tmp_path) as qt:
        qt.proc.kill()
        qt.proc.wait()
        with pytest.raises(QtestExited):
            qt.readb(0)
        with pytest.raises(QtestExited):  # and over QMP
            qt.qmp("query-status")


def test_qtest_bad_command_fails_cleanly(tmp_path):
    with QtestMachine(qemu_binary=QEMU, log_dir=tmp_path) as qt:
        with pytest.raises(QtestError, match="Unknown command"):
            qt.command("no_such_command 1")
        assert qt.readb(0x100000) == 0  # still usable


def test_qtest_qmp_events_errors_and_ids(tmp_path):
    """QMP over qemu.qmp: events land in qmp_events in order, a failed command names itself
    and the next one still works."""
    with QtestMachine(qemu_binary=QEMU, log_dir=tmp_path) as qt:
        qt.qmp("stop")
        assert qt.qmp("query-status")["running"] is False
        qt.qmp("cont")
        names = [e["event"] for e in qt.qmp_events]
        assert names.index("STOP") < names.index("RESUME"), names
        with pytest.raises(QtestError, match="QMP no-such-command failed: .*has not been found"):
            qt.qmp("no-such-command")
        assert qt.qmp("query-status")["running"] is True
        assert qt.qmp("query-name") == {}  # no -name given


def test_qtest_stopped_qemu_is_killed_and_its_log_kept(tmp_path, monkeypatch):
    """A QEMU that cannot answer ``quit`` (SIGSTOPped) gets SIGTERM (pending while it is
    stopped), then SIGKILL; the log says so and stays."""
    monkeypatch.setattr("hashlab.host.qemu_process.load_factor", lambda: 0.2)
    with QtestMachine(qemu_binary=QEMU, log_dir=tmp_path) as qt:
        pid = qt.proc.pid
        os.kill(pid, signal.SIGSTOP)
    assert qt.proc.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    log = qt.log_path.read_text()
    steps = [ln.split("shutdown: ")[1] for ln in log.splitlines() if "] shutdown: " in ln]
    assert steps == ["QMP quit", "SIGTERM", "SIGKILL"], log
    assert f"QEMU exit status {-signal.SIGKILL}" in log


def test_qtest_own_log_dir_removed_after_a_clean_run_kept_after_a_failure():
    with QtestMachine(qemu_binary=QEMU) as qt:
        qt.readb(0)
    assert not qt.log_dir.exists()
    qt = QtestMachine(["-device", "no-such-device"], qemu_binary=QEMU)
    with pytest.raises(QtestStartError):
        qt.start()
    try:
        assert "no-such-device" in qt.log_path.read_text()
    finally:
        shutil.rmtree(qt.log_dir)


def test_qtest_pci_enumeration_and_bars(tmp_path):
    args = ["-netdev", "user,id=n0", "-device",
            "virtio-net-pci,netdev=n0,disable-legacy=on,vectors=0,romfile=,addr=0x5"]
    qt = QtestMachine(args, qemu_binary=QEMU, log_dir=tmp_path).start()
    with qt:
        devs = {(d.dev, d.fn): d for d in enumerate_bus(qt)}
        assert (0, 0) in devs and devs[(0, 0)].vendor == 0x8086
        nic = devs[(5, 0)]
        assert (nic.vendor, nic.device) == (0x1AF4, 0x1041)
        bars = nic.assign_bars(PciResourceAllocator())
        assert any(b.is64 and not b.io for b in bars.values())
        for b in bars.values():
            assert b.addr % b.size == 0 and 0xE000_0000 <= b.addr < 0xFE00_0000


@need_tap
def test_qtest_tap_removed_even_on_failure(tmp_path):
    rig = NetRig(qemu_binary=QEMU, queues=2, device_opts="rss=on,hash=on,no-such-property=1", log_dir=tmp_path)
    with pytest.raises(QtestStartError):
        rig.__enter__()
    assert rig.injector is not None and not rig.injector.exists()
    with Tap(queues=3) as tap:
        name = tap.name
        assert tap.exists()
        out = subprocess.run(["ip", "-d", "link", "show", name], capture_output=True, text=True).stdout
        assert "multi_queue" in out or "tun type tap" in out
    assert not Tap(name=name).exists()


@need_tap
def test_tap_gone_after_sigkill():
    """A process SIGKILLed while it holds a tap leaves no device behind (no persistent
    taps: the kernel deletes the device with the last queue fd)."""
    code = ("import sys, time; from hashlab.host.tap import Tap; t = Tap(2).create(); "
            "print(t.name, flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        name = p.stdout.readline().strip()
        assert name and Tap(name=name).exists()
    finally:
        p.kill()
        p.wait()
    deadline = time.monotonic() + 10
    while Tap(name=name).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Tap(name=name).exists()


@need_tap
def test_qtest_vhost_under_qtest(tmp_path):
    """vhost=on: needs /dev/vhost-net (not on the development host: QEMU refuses to start,
    and the error names the cause).  Where it exists (the lab VM) the device must come up."""
    if not os.path.exists("/dev/vhost-net"):
        with pytest.raises(QtestStartError, match="vhost char device"):
            with NetRig(qemu_binary=QEMU, queues=2, vhost=True, log_dir=tmp_path):
                pass
        return
    with NetRig(qemu_binary=QEMU, queues=2, vhost=True, log_dir=tmp_path) as rig:
        assert rig.net.config.max_virtqueue_pairs == 2
