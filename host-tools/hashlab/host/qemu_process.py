"""What every QEMU process manager here shares: the host's QEMU binary, how a kernel panic
looks on a console, how much slower than idle the machine is now, and ``QemuProcess``, the
one QEMU process under both a guest (``machine``) and the qtest driver (``qtest``).

``QemuProcess`` holds the process itself: the socketpairs handed to QEMU as inherited fds,
a log per VM (QEMU's stdout and stderr, and our own notes), errors that carry the command
line, the log path and the log's tail, and the shutdown: QMP ``quit``, then SIGTERM, then
SIGKILL, each with a load-scaled timeout.  The subclasses add what they talk over (QMP,
qtest, the console, the agent).  The lab VM (``lab``) runs under vng, not here, but shares
the constants.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from ..errors import Exit, HashlabError

HOST_QEMU = "/usr/bin/qemu-system-x86_64"  # Debian's stock build

# A panic as the kernel prints it on the console (text for the lab VM, bytes for guests).
PANIC_PATTERN = r"Kernel panic - not syncing|---\[ end Kernel panic"
PANIC_RE = re.compile(PANIC_PATTERN)
PANIC_BYTES_RE = re.compile(PANIC_PATTERN.encode())


def load_factor() -> float:
    """How much slower than idle the machine is now (>= 1); timeouts scale with it."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        return 1.0


def die_with_parent() -> None:
    """In the child: SIGKILL it when the test process dies, however it dies (a halted
    TCG guest would otherwise outlive a SIGKILLed pytest)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def where_stuck(pid: int) -> str:
    """Each thread of PID: its name, state and kernel stack (/proc/PID/task/*/stack, root
    and CONFIG_STACKTRACE), so that a QEMU stuck in the kernel shows where."""
    out = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda p: int(p.name)):
        def read(name: str) -> str:
            try:
                return (task / name).read_text(errors="replace").strip()
            except OSError as e:
                return f"({e.strerror})"
        state = read("stat").rsplit(")", 1)[-1].split()[:1]
        out.append(f"  {task.name} {read('comm')} {''.join(state)} wchan={read('wchan')}")
        out += [f"      {ln}" for ln in read("stack").splitlines()]
    return "\n".join(out) or f"  (no /proc/{pid}/task)"


def panic_line(console: bytes) -> str:
    """The console's panic line ("" when it shows none)."""
    m = PANIC_BYTES_RE.search(console)
    return console[m.start():].split(b"\n", 1)[0].decode(errors="replace").strip() if m else ""


class QemuError(HashlabError):
    """A QEMU failure; names the command line and the (kept) log, and quotes its tail.

    ``what`` (a subclass's) prefixes the message as ``VM <what>: ``."""

    exit_status = Exit.VM_DIED
    what = ""

    def __init__(self, detail: str, cmdline: Sequence[str] = (), log_path: Path | None = None,
                 tail: str = ""):
        self.detail = detail
        self.cmdline = list(cmdline)
        self.log_path = log_path
        self.tail = tail
        msg = f"VM {self.what}: {detail}" if self.what else detail
        if log_path is not None:
            msg += f"; log: {log_path}"
        if self.cmdline:
            msg += f"\n  qemu: {shlex.join(self.cmdline)}"
        if tail:
            msg += "\n  last log lines:\n" + "\n".join("    " + ln for ln in tail.splitlines())
        super().__init__(msg)


# Shutdown, in order: (step, signal or None for QMP quit, seconds at idle to wait after it).
SHUTDOWN_STEPS: tuple[tuple[str, signal.Signals | None, float], ...] = (
    ("QMP quit", None, 5.0),
    ("SIGTERM", signal.SIGTERM, 5.0),
    ("SIGKILL", signal.SIGKILL, 10.0),
)


class QemuProcess:
    """One QEMU process and its log; the base of ``Machine`` and ``QtestMachine``.

    Use: ``open_log``, ``socketpair`` per channel, ``spawn``; ``stop`` (or, in an event
    loop, ``stop_async``) and ``release`` at the end.  Errors come from ``_err``, which
    also marks the run failed (a caller that owns the log keeps it then).
    """

    start_error: type[QemuError] = QemuError  # what a QEMU that cannot be executed raises

    def __init__(self, log_path: Path):
        self.log_path = Path(log_path)
        self.cmdline: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.failed = False
        self._log_fd = -1
        self._ours: list[socket.socket] = []
        self._theirs: list[socket.socket] = []

    # ---- timeouts, log, errors

    @staticmethod
    def scaled(seconds: float) -> float:
        """SECONDS at idle, stretched by the machine's load now."""
        return seconds * load_factor()

    def open_log(self, truncate: bool = False) -> None:
        """Open the log for QEMU's output and our notes (a no-op while it is open)."""
        if self._log_fd >= 0:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        self._log_fd = os.open(self.log_path, flags, 0o644)

    def write_log(self, data: bytes) -> None:
        if self._log_fd >= 0:
            os.write(self._log_fd, data)

    def note(self, text: str) -> None:
        """One line of ours in the log, told apart from QEMU's by its prefix."""
        self.write_log(f"[hashlab {time.strftime('%H:%M:%S')}] {text}\n".encode())

    def tail(self, n: int = 20) -> str:
        try:
            data = self.log_path.read_bytes()[-16384:]
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-n:])

    def _err(self, cls: type[QemuError], detail: str) -> QemuError:
        self.failed = True
        return cls(detail, self.cmdline, self.log_path, self.tail())

    # ---- the process

    def socketpair(self) -> tuple[socket.socket, int]:
        """A channel to QEMU: our end, and the fd number QEMU's end will have in QEMU."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._ours.append(ours)
        self._theirs.append(theirs)
        return ours, theirs.fileno()

    def spawn(self, cmdline: Sequence[str], pass_fds: Sequence[int] = ()) -> None:
        """Start QEMU with the socketpairs' fds and PASS_FDS (taps, eBPF) inherited; its
        own session (signals to us are not its), dying with us."""
        self.cmdline = list(cmdline)
        self.note(f"starting: {shlex.join(self.cmdline)}")
        try:
            self.proc = subprocess.Popen(
                self.cmdline, stdin=subprocess.DEVNULL, stdout=self._log_fd, stderr=self._log_fd,
                pass_fds=(*(s.fileno() for s in self._theirs), *pass_fds),
                start_new_session=True, preexec_fn=die_with_parent)
        except OSError as e:
            raise self._err(self.start_error, f"cannot run QEMU: cannot execute {self.cmdline[0]}: "
                                              f"{e.strerror or e}") from None
        finally:
            for s in self._theirs:  # QEMU holds them now
                s.close()
            self._theirs.clear()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> bool:
        """Whether QEMU exited within TIMEOUT seconds."""
        if self.proc is None:
            return True
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        return not self.running

    async def exited(self) -> int:
        """In an event loop: wait for QEMU to exit (a pidfd: no thread, no SIGCHLD handler);
        its exit status."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        loop = asyncio.get_running_loop()
        fd = os.pidfd_open(self.proc.pid)  # a zombie's pidfd is readable at once
        gone = loop.create_future()
        loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
        try:
            await gone
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return self.proc.wait()

    async def wait_async(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.exited(), timeout)
        return not self.running

    def _signal(self, sig: signal.Signals) -> None:
        # The whole session: whatever QEMU started goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    # ---- shutdown

    def _shutdown(self, can_quit: bool) -> Iterator[tuple[bool, float]]:
        """The shutdown steps still needed, each noted in the log and its signal sent:
        (whether it is QMP ``quit``, for the caller to send; how long to wait after it)."""
        for step, sig, idle in SHUTDOWN_STEPS:
            if not self.running or (sig is None and not can_quit):
                continue
            if sig == signal.SIGKILL:  # it outlived quit and SIGTERM: say where it is stuck
                self.note("QEMU did not stop; its threads:\n" + where_stuck(self.proc.pid))
            self.note(f"shutdown: {step}")
            if sig is not None:
                self._signal(sig)
            yield sig is None, self.scaled(idle)

    def stop(self, quit: Callable[[float], object] | None = None) -> None:
        """End QEMU: QUIT(timeout) (QMP ``quit``; skipped when None), then SIGTERM, then
        SIGKILL, each step only if QEMU is still there, each followed by a wait."""
        for is_quit, timeout in self._shutdown(quit is not None):
            if is_quit:
                with contextlib.suppress(Exception):  # gone, or not answering: go on
                    quit(timeout)
            self.wait(timeout)

    async def stop_async(self, quit: Callable[[], Awaitable[object]] | None = None) -> None:
        """``stop`` in an event loop: QUIT is a coroutine function, waits do not block."""
        for is_quit, timeout in self._shutdown(quit is not None):
            if is_quit:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(quit(), timeout)
            await self.wait_async(timeout)

    def release(self) -> None:
        """Close our ends of the channels and the log (noting QEMU's exit status).  Idempotent."""
        for s in (*self._ours, *self._theirs):
            s.close()
        self._ours.clear()
        self._theirs.clear()
        if self._log_fd >= 0:
            if self.proc is not None and self.proc.returncode is not None:
                self.note(f"QEMU exit status {self.proc.returncode}")
            os.close(self._log_fd)
            self._log_fd = -1
