"""Can /dev/kvm run a guest here?  Asked of KVM itself, not of the device node.

``probe()`` asks in two steps.  First KVM's own interface: a VM with one page holding
three instructions (``mov al, 42; out 0x10, al; hlt``), one vCPU, run in a child process
with a timeout (a KVM that cannot run guests may never return from KVM_RUN); it must
exit with that port write and then the halt.  That is not enough: on the machine
hashlab was born on, such a guest (and SeaBIOS) runs, but a Linux kernel under QEMU+KVM
prints nothing at all.  So, given a kernel, the second step boots it with QEMU and KVM,
without a root file system, and waits for the kernel's own "cannot mount root" panic:
an ordinary guest that got that far works.  It also reads whether kvm_intel/kvm_amd
allow nested virtualization: without it, a lab VM under KVM could not run the guests the
lab runs.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import multiprocessing
import os
import select
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

KVMIO = 0xAE


def _io(nr: int) -> int:
    return (KVMIO << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (KVMIO << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, 32)
KVM_RUN = _io(0x80)
KVM_GET_REGS, KVM_SET_REGS = _ior(0x81, 144), _iow(0x82, 144)
KVM_GET_SREGS, KVM_SET_SREGS = _ior(0x83, 312), _iow(0x84, 312)
KVM_EXIT_IO, KVM_EXIT_HLT = 2, 5
EXIT_NAMES = {0: "UNKNOWN", 2: "IO", 5: "HLT", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 17: "INTERNAL_ERROR"}

CODE = bytes([0xB0, 42, 0xE6, 0x10, 0xF4])  # mov al, 42; out 0x10, al; hlt
GUEST_ADDR = 0x1000
PORT = 0x10


@dataclass(frozen=True)
class KvmProbe:
    usable: bool  # a guest ran here
    reason: str  # one line: why not, or what ran
    nested: dict[str, bool]  # kvm_intel / kvm_amd -> nested=1 (those present)

    @property
    def nesting(self) -> bool:
        return any(self.nested.values())


def nested_params(sys_module: Path = Path("/sys/module")) -> dict[str, bool]:
    out = {}
    for mod in ("kvm_intel", "kvm_amd"):
        p = sys_module / mod / "parameters" / "nested"
        try:
            out[mod] = p.read_text().strip() in ("1", "Y", "y")
        except OSError:
            continue
    return out


def _run_guest() -> str:
    """In the child: '' when the guest ran as it should, else what went wrong."""
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open /dev/kvm: {e.strerror}"
    try:
        if (v := fcntl.ioctl(kvm, KVM_GET_API_VERSION)) != 12:
            return f"KVM API version {v}, not 12"
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        mem = mmap.mmap(-1, 0x1000, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        mem.write(CODE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
        fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION,
                    struct.pack("IIQQQ", 0, 0, GUEST_ADDR, 0x1000, addr))
        vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
        size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
        run = mmap.mmap(vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        sregs = bytearray(fcntl.ioctl(vcpu, KVM_GET_SREGS, bytes(312)))
        struct.pack_into("Q", sregs, 0, 0)  # cs.base
        struct.pack_into("H", sregs, 12, 0)  # cs.selector
        fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
        regs = bytearray(144)
        struct.pack_into("QQ", regs, 16 * 8, GUEST_ADDR, 0x2)  # rip, rflags
        fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))
        fcntl.ioctl(vcpu, KVM_RUN, 0)
        (reason,) = struct.unpack_from("I", run, 8)
        if reason != KVM_EXIT_IO:
            return f"the test guest exited with {EXIT_NAMES.get(reason, reason)}, not its port write"
        direction, width, port, count, off = struct.unpack_from("BBHIQ", run, 32)
        if (port, width, run[off]) != (PORT, 1, 42):
            return f"the test guest wrote {run[off]} to port {port:#x}, not 42 to {PORT:#x}"
        fcntl.ioctl(vcpu, KVM_RUN, 0)
        (reason,) = struct.unpack_from("I", run, 8)
        if reason != KVM_EXIT_HLT:
            return f"the test guest exited with {EXIT_NAMES.get(reason, reason)}, not HLT"
        return ""
    except OSError as e:
        return f"KVM refused to run a guest: {e.strerror} (errno {e.errno})"
    finally:
        os.close(kvm)


def _child(conn) -> None:
    conn.send(_run_guest())


# What a kernel booted without a root file system prints when it got that far.
BOOTED = (b"VFS: Unable to mount root", b"Kernel panic - not syncing")


def boot_test(kernel: Path, qemu: str = "qemu-system-x86_64", timeout: float = 30.0,
              accel: str = "kvm") -> str:
    """Boot KERNEL under QEMU with ACCEL until its no-root panic: '' when it got there."""
    cpu = "host" if accel == "kvm" else "max"
    argv = [qemu, "-accel", accel, "-cpu", cpu, "-m", "256", "-smp", "1", "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 loglevel=4"]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as e:
        return f"cannot run {qemu}: {e.strerror}"
    seen, end = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            r, _, _ = select.select([proc.stdout], [], [], 0.5)
            if r:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
                if any(m in seen for m in BOOTED):
                    return ""
        last = seen.decode(errors="replace").strip().splitlines()[-1:] or ["nothing"]
        return (f"a Linux guest under {accel.upper()} did not boot within {timeout:.0f}s "
                f"(it printed {len(seen)} bytes, last: {last[0][:100]})")
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def probe(timeout: float = 20.0, kernel: Path | None = None,
          qemu: str = "qemu-system-x86_64") -> KvmProbe:
    """Run the test guest in a child process, then (given KERNEL) boot it; KvmProbe says
    whether KVM can run guests here."""
    nested = nested_params()
    if not os.path.exists("/dev/kvm"):
        return KvmProbe(False, "no /dev/kvm", nested)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child,), daemon=True)
    p.start()
    child.close()
    if not parent.poll(timeout):
        p.kill()
        p.join(5)
        return KvmProbe(False, f"the test guest did not finish within {timeout:.0f}s", nested)
    why = parent.recv()
    p.join(5)
    if why:
        return KvmProbe(False, why, nested)
    if kernel is None:
        return KvmProbe(True, "a test guest ran (port write, halt); no kernel booted",
                        nested)
    why = boot_test(kernel, qemu, timeout=max(timeout, 30.0))
    if why:
        return KvmProbe(False, why, nested)
    return KvmProbe(True, f"a Linux guest booted under KVM ({kernel.name})", nested)
