"""The QEMU machine layer: lifecycle, and telling start failures, panics and hangs apart."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hashlab.build.guest import build_guest
from hashlab.host.machine import (GuestHang, GuestPanic, Machine, MachineConfig, MachineError,
                             QemuStartError)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def image():
    return build_guest()


def cfg(image, tmp_path: Path, **kw) -> MachineConfig:
    kw.setdefault("boot_timeout", 180)
    return MachineConfig(kernel=image.kernel, initrd=image.initrd, name="hashlab-test",
                         log_path=tmp_path / "vm.log", cpus=1, **kw)


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def assert_carries_context(err: MachineError, log: Path) -> None:
    assert err.log_path == log and log.exists()
    assert str(log) in str(err)
    assert "qemu-system-x86_64" in str(err) and "-kernel" in str(err)


async def test_boot_agent_and_clean_poweroff(image, tmp_path):
    async with Machine(cfg(image, tmp_path)) as vm:
        pid = vm.proc.pid
        assert vm.ready_info["kernel"] == image.kernel_version
        r = await vm.agent("sh", "echo hello; exit 3", check=False)
        assert (r.rc, r.output) == (3, "hello")
        r = await vm.agent("info")
        assert r.kind("info")[0]["ncpu"] == 1
        assert (await vm.agent("nonsense", check=False)).rc == 127
        status = await vm.qmp_cmd("query-status")
        assert status["status"] == "running"
    assert vm.proc.returncode == 0  # agent poweroff, not a kill
    assert_gone(pid)
    assert "reboot: Power down" in (tmp_path / "vm.log").read_text(errors="replace")


async def test_panic_at_boot_is_guest_panic(image, tmp_path):
    """No init: the kernel panics (VFS: unable to mount root) before the agent starts."""
    m = Machine(cfg(image, tmp_path, append="rdinit=/nonexistent"))
    with pytest.raises(GuestPanic) as ei:
        async with m:
            pass
    assert_carries_context(ei.value, tmp_path / "vm.log")
    assert "Kernel panic" in str(ei.value)
    assert_gone(m.proc.pid)


async def test_panic_from_running_guest_is_guest_panic(image, tmp_path):
    """sysrq-c in a running guest: pvpanic (QMP GUEST_PANICKED) or the console tells."""
    with pytest.raises(GuestPanic) as ei:
        async with Machine(cfg(image, tmp_path)) as vm:
            pid = vm.proc.pid
            await vm.panic_now()
            await vm.wait_exit(120)
    assert_carries_context(ei.value, tmp_path / "vm.log")
    assert "sysrq" in (tmp_path / "vm.log").read_text(errors="replace").lower()
    assert_gone(pid)


async def test_bad_qemu_option_is_start_error(image, tmp_path):
    m = Machine(cfg(image, tmp_path, extra_args=["-device", "no-such-device-hashlab"]))
    with pytest.raises(QemuStartError) as ei:
        async with m:
            pass
    assert_carries_context(ei.value, tmp_path / "vm.log")
    assert "no-such-device-hashlab" in (tmp_path / "vm.log").read_text()
    assert "no-such-device-hashlab" in str(ei.value)  # the log tail is in the message


async def test_missing_qemu_binary_is_start_error(image, tmp_path):
    with pytest.raises(QemuStartError, match="cannot execute"):
        async with Machine(cfg(image, tmp_path, qemu=str(tmp_path / "no-qemu"))):
            pass


async def test_boot_timeout_is_guest_hang(image, tmp_path, monkeypatch):
    monkeypatch.setattr("hashlab.host.qemu_process.load_factor", lambda: 1.0)
    m = Machine(cfg(image, tmp_path, boot_timeout=0.5))
    with pytest.raises(GuestHang) as ei:
        async with m:
            pass
    assert_carries_context(ei.value, tmp_path / "vm.log")
    assert_gone(m.proc.pid)


async def test_stalled_boot_is_guest_hang_long_before_the_boot_timeout(image, tmp_path,
                                                                        monkeypatch):
    # -S: QEMU starts with the vCPUs stopped, so the console never says a word.
    monkeypatch.setattr("hashlab.host.qemu_process.load_factor", lambda: 1.0)
    m = Machine(cfg(image, tmp_path, boot_timeout=120, boot_stall_timeout=2,
                    extra_args=["-S"]))
    with pytest.raises(GuestHang, match="stalled, console quiet") as ei:
        async with m:
            pass
    assert_carries_context(ei.value, tmp_path / "vm.log")
    assert_gone(m.proc.pid)


async def test_agent_timeout_is_guest_hang_and_cleanup_kills(image, tmp_path, monkeypatch):
    async with Machine(cfg(image, tmp_path)) as vm:
        pid = vm.proc.pid
        monkeypatch.setattr("hashlab.host.qemu_process.load_factor", lambda: 1.0)
        with pytest.raises(GuestHang, match="agent reply"):
            await vm.agent("sh", "sleep 30", timeout=1)
        # QEMU stopped: the guest cannot answer at all; close() must still end it.
        os.kill(pid, signal.SIGSTOP)
        vm.cfg.shutdown_timeout = 1
    assert_gone(pid)


async def test_boot_retries_keep_each_failed_attempt(image, tmp_path, monkeypatch):
    """steps.boot_machine: a boot that hangs is retried; every failure is kept and
    listed, and the last one is raised; a boot that works after a failure is used."""
    from hashlab.run.steps import boot_machine

    monkeypatch.setattr("hashlab.host.qemu_process.load_factor", lambda: 1.0)
    failures: list = []
    msgs: list[str] = []
    with pytest.raises(GuestHang):
        async with boot_machine(cfg(image, tmp_path, boot_timeout=0.5), 2, msgs.append,
                                failures):
            pass
    assert [f.attempt for f in failures] == [1]
    assert Path(failures[0].log).name == "vm.attempt1.log"
    assert (tmp_path / "vm.attempt1.log").exists() and (tmp_path / "vm.log").exists()
    assert "retrying" in msgs[0]

    # first attempt cannot even start (no such binary), the second boots
    calls = []
    real_start = Machine.start

    async def flaky_start(self):
        calls.append(1)
        if len(calls) == 1:
            self.cfg.qemu = str(tmp_path / "no-qemu")
        return await real_start(self)

    monkeypatch.setattr(Machine, "start", flaky_start)
    failures = []
    async with boot_machine(cfg(image, tmp_path), 3, msgs.append, failures) as vm:
        assert (await vm.agent("ping")).rc == 0
    assert len(calls) == 2 and len(failures) == 1
    assert vm.proc.returncode == 0
