"""A client for QEMU's qtest protocol: QEMU as a device model that hashlab drives itself.

With ``-accel qtest`` no guest code runs; instead a text protocol on a chardev lets the
client read and write guest memory and I/O ports, step the virtual clock and intercept
IRQ lines (QEMU's ``system/qtest.c`` documents the commands).  ``QtestMachine`` starts
QEMU with two socketpairs handed over as inherited fds (nothing on disk to clean up):

* the qtest chardev (``-chardev socket,fd=N,id=hlqtest -qtest chardev:hlqtest``);
* QMP (``-chardev socket,fd=M,id=hlqmp -mon chardev=hlqmp,mode=control``), spoken
  synchronously by :meth:`QtestMachine.qmp` with ``qemu.qmp``'s legacy client (for
  queries; the test driver does not need it); events land in ``qmp_events``.

The qtest protocol itself (line based: a command, ``OK ...`` or ``FAIL ...``, and ``IRQ``
notices in between) is spoken here, by hand.

Accelerator: ``-accel qtest`` when the binary has it (upstream builds, the lab's patched
QEMU).  Debian's packages do not ship the ``accel-qtest`` module, so there (``accel="auto"``
tries qtest first and falls back when QEMU says "invalid accelerator qtest"; note that
``-accel help`` never lists qtest) the machine runs under TCG instead, with a 64 KiB
firmware image made of ``hlt`` instructions: the vCPU halts at the reset vector with interrupts
off and never touches a device, the VM is "running" (so devices receive), and the qtest
chardev works the same.  Only ``clock_step``/``clock_set`` need the qtest accelerator
(under TCG the virtual clock runs by itself).

The process, its log (QEMU's stdout and stderr; every error names it) and the shutdown
are :class:`~hashlab.host.qemu_process.QemuProcess`'s.  The machine is a context manager;
leaving it always ends QEMU (``quit`` over QMP, then SIGTERM, then SIGKILL).

Example::

    with QtestMachine(["-device", "virtio-net-pci,netdev=n0", ...]) as qt:
        qt.outl(0xCF8, 0x80000000)
        vendor = qt.inw(0xCFC)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from qemu.qmp import ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from .qemu_process import HOST_QEMU, QemuError, QemuProcess

__all__ = [
    "HOST_QEMU",
    "QtestError",
    "QtestStartError",
    "QtestExited",
    "QtestMachine",
    "has_qtest_accel",
]

HALT_FIRMWARE_SIZE = 64 * 1024  # x86 firmware images must be a multiple of 64 KiB
_ACCEL_CACHE: dict[str, bool] = {}


def has_qtest_accel(qemu_binary: str | os.PathLike = HOST_QEMU) -> bool:
    """Whether ``qemu_binary`` has the qtest accelerator.

    ``-accel help`` never lists qtest, so this starts the binary once (``-machine none``)
    and remembers the answer.
    """
    key = str(qemu_binary)
    if key not in _ACCEL_CACHE:
        with QtestMachine(qemu_binary=key, machine="none", accel="auto"):
            pass
    return _ACCEL_CACHE[key]


class QtestError(QemuError):
    """A qtest failure; names the QEMU command line and its log."""


class QtestStartError(QtestError):
    """QEMU did not start (bad binary, bad option, missing tap, ...)."""


class QtestExited(QtestError):
    """QEMU went away while we were talking to it."""


class QtestMachine(QemuProcess):
    """QEMU under ``-accel qtest``, driven over the qtest protocol.

    ``args`` are extra QEMU arguments (devices, netdevs).  ``pass_fds`` are fds the extra
    arguments refer to.  ``log_dir`` keeps the log (default: a fresh temporary
    directory, left in place so that an error's log path stays valid).  For synchronous
    code: QMP here runs its own event loop, so not in a thread whose loop is running.
    """

    start_error = QtestStartError

    def __init__(
        self,
        args: Iterable[str] = (),
        *,
        qemu_binary: str | os.PathLike = HOST_QEMU,
        machine: str = "q35",
        memory: str = "256M",
        pass_fds: Sequence[int] = (),
        log_dir: str | os.PathLike | None = None,
        name: str = "qtest",
        qtest_log: bool = False,
        timeout: float = 30.0,
        accel: str = "auto",
    ):
        self.qemu_binary = str(qemu_binary)
        self.machine = machine
        self.memory = memory
        self.extra_args = list(args)
        self.pass_fds = tuple(pass_fds)
        self.name = name
        # Our own temporary log directory is removed after a clean run and kept after a
        # failure (every error names the log in it).
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="hashlab-qtest-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.log_dir / f"{name}.log")
        self.qtest_log_path = self.log_dir / f"{name}.qtest.log" if qtest_log else None
        self.timeout = self.scaled(timeout)
        if accel not in ("auto", "qtest", "tcg"):
            raise ValueError(f"accel must be auto, qtest or tcg, not {accel!r}")
        self.requested_accel = accel
        if accel == "auto":
            accel = "tcg" if _ACCEL_CACHE.get(self.qemu_binary) is False else "qtest"
        self.accel = accel
        self._qt: socket.socket | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._qt_buf = b""
        self.irq_events: list[tuple[str, int]] = []  # ("raise"|"lower", line)
        self.irq_level: dict[int, bool] = {}
        self._qmp_events: list[dict] = []

    # ------------------------------------------------------------------ lifecycle

    def build_cmdline(self, qtest_fd: int, qmp_fd: int) -> list[str]:
        cmd = [
            self.qemu_binary,
            "-machine", self.machine,
            "-accel", self.accel,
            "-m", self.memory,
            "-display", "none",
            "-nodefaults",
            "-no-user-config",
            "-chardev", f"socket,id=hlqtest,fd={qtest_fd}",
            "-qtest", "chardev:hlqtest",
            "-chardev", f"socket,id=hlqmp,fd={qmp_fd}",
            "-mon", "chardev=hlqmp,mode=control",
        ]
        cmd += ["-qtest-log", str(self.qtest_log_path) if self.qtest_log_path else "none"]
        # The firmware never runs under qtest; under TCG it must only halt.  Either way
        # ours needs no data files (a QEMU run from its build tree has none).
        if self.machine != "none":
            cmd += ["-bios", str(self._halt_firmware())]
        return cmd + self.extra_args

    def _halt_firmware(self) -> Path:
        """A firmware image that only halts (every byte is ``hlt``, so is the reset vector)."""
        path = self.log_dir / "halt.bin"
        if not path.exists() or path.stat().st_size != HALT_FIRMWARE_SIZE:
            path.write_bytes(b"\xf4" * HALT_FIRMWARE_SIZE)
        return path

    def start(self) -> "QtestMachine":
        """Start QEMU; with ``accel="auto"`` fall back to TCG if qtest is not built in."""
        try:
            self._start()
        except QtestStartError as e:
            if not (self.requested_accel == "auto" and self.accel == "qtest"
                    and "invalid accelerator qtest" in e.tail):
                raise
            _ACCEL_CACHE[self.qemu_binary] = False
            self.accel = "tcg"
            self.proc = None
            self.failed = False
            self._qt_buf = b""
            self.open_log()
            self.note("no qtest accelerator in this QEMU: retrying under TCG")
            self._start()
        if self.accel == "qtest":
            _ACCEL_CACHE[self.qemu_binary] = True
        return self

    def _start(self) -> None:
        if self.proc is not None:
            raise QtestError("QEMU already started", self.cmdline, self.log_path)
        self.open_log()
        self._qt, qt_fd = self.socketpair()
        qmp_sock, qmp_fd = self.socketpair()
        try:
            self.spawn(self.build_cmdline(qt_fd, qmp_fd), self.pass_fds)
        except QtestStartError:
            self.close()
            raise
        try:
            # The qtest chardev answers once QEMU's main loop runs: a start check.
            if self.endianness() != "little":
                raise self._err(QtestStartError, "unexpected target endianness")
            self._qmp_connect(qmp_sock)
        except QtestError as e:
            self.failed = True
            died = not self.running
            self.close()
            if isinstance(e, QtestStartError):
                raise
            detail = (f"QEMU exited during start-up (status {self.proc.returncode})" if died
                      else f"QEMU did not start: {e.detail}")
            raise QtestStartError(detail, self.cmdline, self.log_path, self.tail()) from None

    def __enter__(self) -> "QtestMachine":
        return self if self.proc is not None else self.start()

    def __exit__(self, et, ev, tb) -> None:
        self.close()

    def alive(self) -> bool:
        return self.running

    def close(self) -> None:
        """Stop QEMU (QMP ``quit``, SIGTERM, SIGKILL) and close the sockets.  Idempotent."""
        self.stop(self._quit if self._qmp is not None else None)
        self._qmp_disconnect()
        self._qt = None
        self.release()
        if self._own_log_dir and not self.failed:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    # ------------------------------------------------------------------ protocol

    def _readline(self, timeout: float) -> bytes:
        """One line from the qtest chardev (answers and ``IRQ`` notices)."""
        sock = self._qt
        deadline = time.monotonic() + timeout
        buf = self._qt_buf
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._qt_buf = buf
                if not self.running:
                    raise self._err(QtestExited, f"QEMU exited (status {self.proc.returncode})")
                raise self._err(QtestError, f"no answer from QEMU within {timeout:.0f} s")
            sock.settimeout(min(left, 1.0))
            try:
                chunk = sock.recv(1 << 20)
            except socket.timeout:
                if not self.running:
                    raise self._err(QtestExited, f"QEMU exited (status {self.proc.returncode})") from None
                continue
            except OSError as e:
                raise self._err(QtestExited, f"lost the connection to QEMU: {e}") from None
            if not chunk:
                self.wait(2)
                status = self.proc.returncode if self.proc else None
                raise self._err(QtestExited, f"QEMU closed the connection (exit status {status})")
            buf += chunk
        line, _, self._qt_buf = buf.partition(b"\n")
        return line

    def command(self, line: str, timeout: float | None = None) -> str:
        """Send one qtest command; return what follows ``OK`` (``""`` when nothing).

        Asynchronous ``IRQ raise|lower N`` lines are recorded in ``irq_events`` and
        ``irq_level``.  A ``FAIL``/``ERR`` answer raises :class:`QtestError`.
        """
        if self._qt is None:
            raise QtestError("QEMU is not running", self.cmdline, self.log_path)
        try:
            self._qt.sendall(line.encode() + b"\n")
        except OSError as e:
            raise self._err(QtestExited, f"cannot talk to QEMU: {e}") from None
        while True:
            resp = self._readline(timeout or self.timeout).decode(errors="replace")
            if resp.startswith("IRQ "):
                _, what, num = resp.split()
                self.irq_events.append((what, int(num)))
                self.irq_level[int(num)] = what == "raise"
                continue
            break
        if resp == "OK" or resp.startswith("OK "):
            return resp[3:]
        short = line if len(line) < 80 else line[:77] + "..."
        raise self._err(QtestError, f"qtest command {short!r} failed: {resp}")

    # ---- clock / machine

    def endianness(self) -> str:
        return self.command("endianness")

    def _need_qtest_accel(self, what: str) -> None:
        if self.accel != "qtest":
            raise QtestError(f"{what} needs the qtest accelerator; this QEMU runs under "
                             f"{self.accel} (its virtual clock runs by itself)",
                             self.cmdline, self.log_path)

    def clock_step(self, ns: int | None = None) -> int:
        """Advance the virtual clock by ``ns`` (or to the next deadline); returns the clock."""
        self._need_qtest_accel("clock_step")
        return int(self.command("clock_step" if ns is None else f"clock_step {int(ns)}"))

    # ---- port I/O

    def outb(self, port: int, value: int) -> None:
        self.command(f"outb {port:#x} {value & 0xFF:#x}")

    def outw(self, port: int, value: int) -> None:
        self.command(f"outw {port:#x} {value & 0xFFFF:#x}")

    def outl(self, port: int, value: int) -> None:
        self.command(f"outl {port:#x} {value & 0xFFFFFFFF:#x}")

    def inb(self, port: int) -> int:
        return int(self.command(f"inb {port:#x}"), 16)

    def inw(self, port: int) -> int:
        return int(self.command(f"inw {port:#x}"), 16)

    def inl(self, port: int) -> int:
        return int(self.command(f"inl {port:#x}"), 16)

    # ---- memory (guest physical; MMIO included)

    def writeb(self, addr: int, value: int) -> None:
        self.command(f"writeb {addr:#x} {value & 0xFF:#x}")

    def writew(self, addr: int, value: int) -> None:
        self.command(f"writew {addr:#x} {value & 0xFFFF:#x}")

    def writel(self, addr: int, value: int) -> None:
        self.command(f"writel {addr:#x} {value & 0xFFFFFFFF:#x}")

    def writeq(self, addr: int, value: int) -> None:
        self.command(f"writeq {addr:#x} {value & 0xFFFFFFFFFFFFFFFF:#x}")

    def readb(self, addr: int) -> int:
        return int(self.command(f"readb {addr:#x}"), 16)

    def readw(self, addr: int) -> int:
        return int(self.command(f"readw {addr:#x}"), 16)

    def readl(self, addr: int) -> int:
        return int(self.command(f"readl {addr:#x}"), 16)

    def readq(self, addr: int) -> int:
        return int(self.command(f"readq {addr:#x}"), 16)

    def read(self, addr: int, length: int) -> bytes:
        """``length`` bytes at ``addr`` (``b64read``)."""
        if length <= 0:
            return b""
        return base64.b64decode(self.command(f"b64read {addr:#x} {length:#x}"))

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr`` (``b64write``)."""
        data = bytes(data)
        if not data:
            return
        self.command(f"b64write {addr:#x} {len(data):#x} {base64.b64encode(data).decode()}")

    def memread(self, addr: int, length: int) -> bytes:
        """Like :meth:`read`, with the hex ``read`` command."""
        out = self.command(f"read {addr:#x} {length:#x}")
        return bytes.fromhex(out[2:] if out.startswith("0x") else out)

    def memwrite(self, addr: int, data: bytes) -> None:
        """Like :meth:`write`, with the hex ``write`` command."""
        data = bytes(data)
        if data:
            self.command(f"write {addr:#x} {len(data):#x} 0x{data.hex()}")

    def memset(self, addr: int, length: int, pattern: int = 0) -> None:
        self.command(f"memset {addr:#x} {length:#x} {pattern & 0xFF:#x}")

    # ------------------------------------------------------------------ QMP

    def _qmp_connect(self, sock: socket.socket) -> None:
        """Greeting and capabilities over our end of QMP's socketpair (qemu.qmp's
        synchronous client: command ids, events queued as they come)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise self._err(QtestError, "QtestMachine is synchronous: not in a running event loop")
        self._qmp = QEMUMonitorProtocol(sock, nickname=self.name)
        self._qmp.settimeout(self.timeout)
        # Its client logs as qemu.qmp.qmp_client.<nickname>; its teardown chatter is not ours.
        logging.getLogger(f"qemu.qmp.qmp_client.{self.name}").setLevel(logging.CRITICAL)
        try:
            self._qmp.connect()
        except (QMPError, OSError, EOFError) as e:
            raise self._err(QtestStartError, f"no QMP from QEMU: {e}") from None

    def _qmp_disconnect(self) -> None:
        if self._qmp is None:
            return
        self._collect_events()
        with contextlib.suppress(Exception):  # it re-raises why the connection ended
            self._qmp.close()
        self._qmp = None

    def _quit(self, timeout: float) -> None:
        self._qmp.settimeout(timeout)
        self._qmp.cmd("quit")

    def _collect_events(self) -> None:
        with contextlib.suppress(Exception):
            self._qmp_events += self._qmp.get_events(wait=False)

    @property
    def qmp_events(self) -> list[dict]:
        """The QMP events QEMU sent so far, in order."""
        if self._qmp is not None:
            self._collect_events()
        return self._qmp_events

    def qmp(self, command: str, **arguments) -> object:
        """Run a QMP command synchronously; its ``return`` value (errors raise)."""
        if self._qmp is None:
            raise QtestError("QEMU is not running", self.cmdline, self.log_path)
        try:
            return self._qmp.cmd(command, **arguments)
        except ExecuteError as e:
            raise self._err(QtestError, f"QMP {command} failed: {e}") from None
        except asyncio.TimeoutError:
            if not self.running:
                raise self._err(QtestExited, f"QEMU exited (status {self.proc.returncode})") from None
            raise self._err(QtestError, f"no answer from QEMU to QMP {command} "
                                        f"within {self.timeout:.0f} s") from None
        except (QMPError, OSError, EOFError) as e:
            self.wait(2)
            status = self.proc.returncode if self.proc else None
            raise self._err(QtestExited, f"lost QMP to QEMU during {command} ({e!r}; "
                                         f"exit status {status})") from None
        finally:
            self._collect_events()
